"""One rnnjax layer -> its Keras 3 config and weights (what ``save_keras`` writes).

Each converter returns a :class:`Saved`: the layer's Keras 3 config (``{"module", "class_name",
"config", "registered_name"}``, every argument written out, since Keras 3's defaults are not
Keras 2's) and a :class:`Node`: the layer's variables in Keras 3's order (``vars/0, 1, ...``)
and its sub-objects under the attribute names Keras 3's weights file uses (``cell``,
``forward_layer``/``backward_layer``, ``layer``, ``cells/<class>``). Models are read only through
the layers' public fields and the public variables layout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, cast

import numpy as np

from rnnjax import kinds
from rnnjax.cudnn import CuDNNGRU, CuDNNLSTM, cudnn_gru_to_gru, cudnn_lstm_to_lstm
from rnnjax.functional.protocol import PARAM_NAMES
from rnnjax.keras import save_companions
from rnnjax.keras import save_objects as so
from rnnjax.keras.save_objects import KerasSaveError
from rnnjax.layers import (
    RNN,
    Activation,
    Bidirectional,
    Dense,
    Dropout,
    Embedding,
    Masking,
    StackedRNNCells,
    TimeDistributed,
)
from rnnjax.layers.protocol import keras_name, snake_case


class Node(NamedTuple):
    """A Keras 3 saveable in the weights file: ``vars`` attribute ``name``, its arrays in order,
    and its children ``{path below this object: Node}``."""

    name: str
    arrays: list
    children: dict


class Saved(NamedTuple):
    config: dict
    node: Node


class Context(NamedTuple):
    hard_sigmoid: str  # 'scale' or 'error'
    warn: Callable[[str], None]
    dtype: Any  # numpy dtype of the written arrays


def keras_object(class_name: str, config: dict) -> dict:
    return {"module": "keras.layers", "class_name": class_name, "config": config, "registered_name": None}


def unique(base: str, used: dict) -> str:
    """Keras's per-container numbering: ``lstm``, ``lstm_1``, ``lstm_2``..."""
    count = used.get(base, 0)
    used[base] = count + 1
    return base if count == 0 else f"{base}_{count}"


def _base(name: str, ctx: Context) -> dict:
    return {"name": name, "trainable": True, "dtype": np.dtype(ctx.dtype).name}


def _weights(params, expected, where: str, ctx: Context) -> list:
    """``params[n]`` for each name in ``expected`` (nothing else), as ``ctx.dtype`` numpy arrays."""
    params = {} if params is None else dict(params)
    if set(params) != set(expected):
        raise KerasSaveError(f"{where}: expected parameters {sorted(expected)}, got {sorted(params)} in `variables`.")
    return [np.asarray(params[n], dtype=ctx.dtype) for n in expected]


_PARTS = kinds.WEIGHTS


def _cell_config(obj, kind: kinds.CellKind, ctx: Context, where: str) -> tuple[dict, list]:
    """The cell arguments of ``obj`` (a cell, or a layer with the cell's fields) and the factor
    each gate block's pre-activation must be scaled by (Keras 2 hard sigmoid, see save_objects):
    ``kind.sigma_blocks`` by ``recurrent_activation``'s, the others by ``activation``'s."""
    act, factor = so.activation(obj.activation, f"{where} `activation`", ctx.hard_sigmoid, kind.activation_linear)
    factors = [1.0 if g in kind.sigma_blocks else factor for g in range(kind.gates)]
    cfg: dict[str, Any] = {"activation": act}
    if "recurrent_activation" in kind.cell_arguments:
        cfg["recurrent_activation"], rec = so.activation(
            obj.recurrent_activation, f"{where} `recurrent_activation`", ctx.hard_sigmoid, True
        )
        for g in kind.sigma_blocks:
            factors[g] = rec
    cfg["use_bias"] = bool(obj.use_bias)
    for p in _PARTS:
        cfg[f"{p}_initializer"] = so.initializer(
            getattr(obj, f"{p}_initializer"), f"{where} `{p}_initializer`", ctx.warn
        )
    if "unit_forget_bias" in kind.cell_arguments:
        cfg["unit_forget_bias"] = bool(obj.unit_forget_bias)
    for p in _PARTS:
        cfg[f"{p}_regularizer"] = so.regularizer(getattr(obj, f"{p}_regularizer"), f"{where} `{p}_regularizer`")
        cfg[f"{p}_constraint"] = so.constraint(getattr(obj, f"{p}_constraint"), f"{where} `{p}_constraint`")
    cfg["dropout"], cfg["recurrent_dropout"] = float(obj.dropout), float(obj.recurrent_dropout)
    if "reset_after" in kind.cell_arguments:
        cfg["reset_after"] = bool(obj.reset_after)
    _check_scaling(obj, factors, where)
    return cfg, factors


def _check_scaling(obj, factors, where):
    penalties = so.any_set(obj, [f"{p}_{k}" for p in _PARTS for k in ("regularizer", "constraint")])
    if any(f != 1.0 for f in factors) and penalties:
        raise KerasSaveError(
            f"{where}: Keras 2's 'hard_sigmoid' is saved by scaling weights by 1.2, which would change what "
            f"{penalties} act on in Keras 3; use 'sigmoid'/'hard_sigmoid_keras3' or drop them."
        )


def _scale(arrays: list, factors: list) -> list:
    """Each array's last axis split into ``len(factors)`` gate blocks, block g times factors[g]."""
    if all(f == 1.0 for f in factors):
        return arrays
    out = []
    for a in arrays:
        block = a.shape[-1] // len(factors)
        out.append(a * np.repeat(np.asarray(factors, a.dtype), block))
    return out


def _cell_weights(obj, params, kind, factors, units, where, ctx) -> list:
    arrays = _weights(params, PARAM_NAMES if obj.use_bias else PARAM_NAMES[:2], where, ctx)
    gates = len(factors)
    if arrays[0].shape[-1] != gates * units or arrays[1].shape[-1] != gates * units:
        raise KerasSaveError(
            f"{where}: kernel {arrays[0].shape} / recurrent_kernel {arrays[1].shape} do not have {gates} x {units} "
            "columns as the layer's config says."
        )
    if obj.use_bias:
        expected = (2, gates * units) if getattr(obj, "reset_after", False) else (gates * units,)
        if arrays[2].shape != expected:
            raise KerasSaveError(
                f"{where}: bias of shape {arrays[2].shape}, expected {expected} for the layer's config."
            )
    return _scale(arrays, factors)


def _saved_kind(obj, role: str):
    """The record of a built-in linen cell or layer (exact class) that Keras files hold, else None."""
    kind = kinds.kind_of(obj)
    ok = (
        kind is not None
        and kind.in_keras_files
        and type(obj) is (kind.linen_cell if role == "cell" else kind.linen_layer)
    )
    return kind if ok else None


def _cell(cell, params, name, where, ctx) -> Saved:
    """A built-in dense cell (exact rnnjax class: SimpleRNNCell / GRUCell / LSTMCell) as the same
    Keras 3 cell."""
    kind = _saved_kind(cell, "cell")
    if kind is None or not kind.keras_cell:
        public = [k.keras_cell for k in kinds.KINDS if k.in_keras_files and k.keras_cell]
        raise KerasSaveError(
            f"{where}: cell {type(cell).__name__} is a custom cell (or one Keras 3 has no public class for); "
            f"only rnnjax's {', '.join(public[:-1])} and {public[-1]} can be saved in an RNN."
        )
    cfg, factors = _cell_config(cell, kind, ctx, where)
    arrays = _cell_weights(cell, params, kind, factors, cell.units, where, ctx)
    return Saved(
        keras_object(kind.keras_cell, {**_base(name, ctx), "units": int(cell.units), **cfg}), Node(name, arrays, {})
    )


def _sequence_fields(layer, ctx, where) -> dict:
    return {
        "return_sequences": bool(layer.return_sequences),
        "return_state": bool(layer.return_state),
        "go_backwards": bool(layer.go_backwards),
        "stateful": bool(layer.stateful),
        # unroll only changes speed, and Keras 3 refuses it for inputs of free length: not written.
        "unroll": False,
        "zero_output_for_mask": bool(layer.zero_output_for_mask),
        "activity_regularizer": so.regularizer(layer.activity_regularizer, f"{where} `activity_regularizer`"),
    }


def _keras_rnn(layer, params, name, where, ctx, cell=None) -> Saved:
    """SimpleRNN / GRU / LSTM / ConvLSTM1D-3D: the cell fields (of ``cell``, else of the layer,
    which has them too) plus the layer's sequence fields. ``RNN(ConvLSTM2DCell(...))`` comes here
    as a ConvLSTM2D (Keras 3 has no public ConvLSTM cell; the two compute the same)."""
    source = layer if cell is None else cell
    kind = cast(kinds.CellKind, kinds.kind_of(source))  # the dispatch sends only the built-in kinds' layers here
    conv = kind.rank
    cfg, factors = _cell_config(source, kind, ctx, where)
    units = source.filters if conv else source.units
    cell_params = None if params is None else params.get("cell")
    arrays = _cell_weights(source, cell_params, kind, factors, units, where + " cell", ctx)
    fields: dict[str, Any] = {"units": int(units)}
    if conv:
        fields = {"filters": int(source.filters)}
        for f in ("kernel_size", "strides", "dilation_rate"):
            v = getattr(source, f)
            fields[f] = [int(i) for i in v] if isinstance(v, (tuple, list)) else [int(v)] * conv
        fields["padding"] = str(source.padding).lower()
        fields["data_format"] = source.data_format or "channels_last"
    config = {**_base(name, ctx), **_sequence_fields(layer, ctx, where), **fields, **cfg}
    class_name = kind.name
    cell_name = snake_case(kind.cell_name)
    return Saved(keras_object(class_name, config), Node(name, [], {"cell": Node(cell_name, arrays, {})}))


def _cudnn(layer, params, name, where, ctx) -> Saved:
    """CuDNNLSTM -> LSTM (tanh, sigmoid) and CuDNNGRU -> GRU(reset_after=True, tanh, sigmoid), with
    rnnjax.cudnn's conversions (Keras 2's rules)."""
    lstm = isinstance(layer, CuDNNLSTM)
    blocked = so.any_set(layer, ["bias_regularizer", "kernel_constraint", "recurrent_constraint", "bias_constraint"])
    if blocked:
        raise KerasSaveError(
            f"{where}: {type(layer).__name__} is saved as a Keras 3 {'LSTM' if lstm else 'GRU'}, whose weights are "
            f"laid out (and its bias summed/reshaped) differently, so {blocked} would act on other numbers; drop them."
        )
    k, r, b = _weights(params, PARAM_NAMES, where, ctx)
    canonical = (cudnn_lstm_to_lstm if lstm else cudnn_gru_to_gru)((k, r, b))
    arrays = [np.asarray(a, ctx.dtype) for a in canonical]
    cfg = {"units": int(layer.units), "activation": "tanh", "recurrent_activation": "sigmoid", "use_bias": True}
    for p in _PARTS:
        cfg[f"{p}_initializer"] = so.initializer(
            getattr(layer, f"{p}_initializer"), f"{where} `{p}_initializer`", ctx.warn
        )
        cfg[f"{p}_constraint"] = None
    cfg["kernel_regularizer"] = so.regularizer(layer.kernel_regularizer, f"{where} `kernel_regularizer`")
    cfg["recurrent_regularizer"] = so.regularizer(layer.recurrent_regularizer, f"{where} `recurrent_regularizer`")
    cfg["bias_regularizer"] = None
    cfg["dropout"] = cfg["recurrent_dropout"] = 0.0
    if lstm:
        cfg["unit_forget_bias"] = bool(layer.unit_forget_bias)
    else:
        cfg["reset_after"] = True
    kind = "LSTM" if lstm else "GRU"
    config = {**_base(name, ctx), **_sequence_fields(layer, ctx, where), **cfg}
    return Saved(keras_object(kind, config), Node(name, [], {"cell": Node(snake_case(kind + "Cell"), arrays, {})}))


def _rnn_cells(layer, params):
    """``[(cell, its params)]`` of an ``RNN``, for its three forms: one cell (``params['cell']``),
    a list (``params['cell_<i>']``) or a ``StackedRNNCells`` (``params['cell']['cells_<i>']``)."""
    params = {} if params is None else params
    if isinstance(layer.cell, (list, tuple)):
        return [(c, params.get(f"cell_{i}")) for i, c in enumerate(layer.cell)], True
    if type(layer.cell) is StackedRNNCells:
        inner = params.get("cell") or {}
        return [(c, inner.get(f"cells_{i}")) for i, c in enumerate(layer.cell.cells)], True
    return [(layer.cell, params.get("cell"))], False


def _rnn(layer, params, name, where, ctx) -> Saved:
    cells, stacked = _rnn_cells(layer, params)
    kind = _saved_kind(cells[0][0], "cell")
    if not stacked and kind is not None and not kind.keras_cell:
        return _keras_rnn(layer, params, name, where, ctx, cell=cells[0][0])
    used: dict = {}
    saved: list = []
    for i, (cell, p) in enumerate(cells):
        cell_name = unique(snake_case(type(cell).__name__), used)
        saved.append(_cell(cell, p, cell_name, f"{where} cell {i}", ctx))
    config = {**_base(name, ctx), **_sequence_fields(layer, ctx, where)}
    if not stacked:
        config["cell"] = saved[0].config
        return Saved(keras_object("RNN", config), Node(name, [], {"cell": saved[0].node}))
    children = {f"cells/{s.node.name}": s.node for s in saved}  # Keras's container names, as the cells'
    config["cell"] = keras_object(
        "StackedRNNCells", {**_base("stacked_rnn_cells", ctx), "cells": [s.config for s in saved]}
    )
    return Saved(keras_object("RNN", config), Node(name, [], {"cell": Node("stacked_rnn_cells", [], children)}))


def _bidirectional(layer, params, name, where, ctx) -> Saved:
    """Both directions written out (``layer`` and ``backward_layer``), so Keras 3 runs the backward
    copy exactly as rnnjax does (Keras 2 flips ``go_backwards``; Keras 3 would force it True)."""
    params = {} if params is None else params
    backward = layer.backward_layer or layer.layer
    go_back = backward.go_backwards if layer.backward_layer is not None else not layer.layer.go_backwards
    zero = bool(layer.layer.return_sequences)  # Keras forces zero_output_for_mask = return_sequences
    parts = {}
    for side, sub, overrides in (
        ("forward", layer.layer, {"zero_output_for_mask": zero}),
        ("backward", backward, {"zero_output_for_mask": zero, "go_backwards": go_back}),
    ):
        keys = [k for k in params if k.startswith(side + "_")]
        if len(keys) > 1:
            raise KerasSaveError(f"{where}: several {side} parameter groups {keys} in `variables`.")
        key = keys[0] if keys else f"{side}_{keras_name(sub)}"
        parts[side] = convert(sub, params.get(key), key, f"{where} {side} layer", ctx, overrides)
    config = {
        **_base(name, ctx),
        "merge_mode": layer.merge_mode,
        "layer": parts["forward"].config,
        "backward_layer": parts["backward"].config,
    }
    children = {"forward_layer": parts["forward"].node, "backward_layer": parts["backward"].node}
    return Saved(keras_object("Bidirectional", config), Node(name, [], children))


def _time_distributed(layer, params, name, where, ctx) -> Saved:
    inner_name = keras_name(layer.layer)
    if params and len(params) == 1:  # inside a Sequential the inner layer's own name was reset (dense_1 -> dense)
        inner_name = next(iter(params))
    inner = convert(layer.layer, (params or {}).get(inner_name), inner_name, f"{where} inner layer", ctx)
    config = {**_base(name, ctx), "layer": inner.config}
    return Saved(keras_object("TimeDistributed", config), Node(name, [], {"layer": inner.node}))


def _embedding(layer, params, name, where, ctx) -> Saved:
    arrays = _weights(params, ["embeddings"], where, ctx)
    if arrays[0].shape != (layer.input_dim, layer.output_dim):
        raise KerasSaveError(
            f"{where}: embeddings of shape {arrays[0].shape}, expected (input_dim, output_dim) = "
            f"{(layer.input_dim, layer.output_dim)}."
        )
    config = {
        **_base(name, ctx),
        "input_dim": int(layer.input_dim),
        "output_dim": int(layer.output_dim),
        "embeddings_initializer": so.initializer(
            layer.embeddings_initializer, f"{where} `embeddings_initializer`", ctx.warn
        ),
        "embeddings_regularizer": so.regularizer(layer.embeddings_regularizer, f"{where} `embeddings_regularizer`"),
        "activity_regularizer": so.regularizer(layer.activity_regularizer, f"{where} `activity_regularizer`"),
        "embeddings_constraint": so.constraint(layer.embeddings_constraint, f"{where} `embeddings_constraint`"),
        "mask_zero": bool(layer.mask_zero),
    }
    return Saved(keras_object("Embedding", config), Node(name, arrays, {}))


def _dense(layer, params, name, where, ctx) -> Saved:
    act, factor = so.activation(layer.activation, f"{where} `activation`", ctx.hard_sigmoid, True)
    _check_scaling(layer, [factor], where)
    arrays = _scale(_weights(params, ["kernel"] + (["bias"] if layer.use_bias else []), where, ctx), [factor])
    config = {**_base(name, ctx), "units": int(layer.units), "activation": act, "use_bias": bool(layer.use_bias)}
    for p in ("kernel", "bias"):
        config[f"{p}_initializer"] = so.initializer(
            getattr(layer, f"{p}_initializer"), f"{where} `{p}_initializer`", ctx.warn
        )
        config[f"{p}_regularizer"] = so.regularizer(getattr(layer, f"{p}_regularizer"), f"{where} `{p}_regularizer`")
        config[f"{p}_constraint"] = so.constraint(getattr(layer, f"{p}_constraint"), f"{where} `{p}_constraint`")
    activity = so.regularizer(layer.activity_regularizer, f"{where} `activity_regularizer`")
    if activity is not None:  # Keras 3's Dense takes it (as every layer) but its get_config omits it
        config["activity_regularizer"] = activity
    return Saved(keras_object("Dense", config), Node(name, arrays, {}))


def _weightless(layer, params, name, where, ctx) -> Saved:
    _weights(params, [], where, ctx)
    fields: dict[str, Any]
    if isinstance(layer, Masking):
        class_name, fields = "Masking", {"mask_value": float(layer.mask_value)}
    elif isinstance(layer, Dropout):
        shape = None if layer.noise_shape is None else [None if d is None else int(d) for d in layer.noise_shape]
        class_name, fields = "Dropout", {"rate": float(layer.rate), "noise_shape": shape, "seed": layer.seed}
    else:
        act, _ = so.activation(layer.activation, f"{where} `activation`", ctx.hard_sigmoid, False)
        class_name, fields = "Activation", {"activation": act}
    return Saved(keras_object(class_name, {**_base(name, ctx), **fields}), Node(name, [], {}))


_SAVED_KINDS = tuple(k.linen_layer for k in kinds.KINDS if k.in_keras_files)
_CONVERTERS = {
    **{layer: _keras_rnn for layer in _SAVED_KINDS},
    CuDNNLSTM: _cudnn,
    CuDNNGRU: _cudnn,
    RNN: _rnn,
    Bidirectional: _bidirectional,
    TimeDistributed: _time_distributed,
    Embedding: _embedding,
    Dense: _dense,
    Masking: _weightless,
    Dropout: _weightless,
    Activation: _weightless,
}


def _companion(layer, params, name, where, ctx) -> Saved:
    """A layer of :data:`rnnjax.layers.KERAS_LAYERS` (:mod:`rnnjax.keras.save_companions`)."""
    class_name, fields, names, factor = save_companions.describe(layer, where, ctx)
    arrays = _scale(_weights(params, names, where, ctx), [factor])
    return Saved(keras_object(class_name, {**_base(name, ctx), **fields}), Node(name, arrays, {}))


_CONVERTERS.update(dict.fromkeys(save_companions.CLASSES, _companion))
RECURRENT = _SAVED_KINDS + (CuDNNLSTM, CuDNNGRU, RNN)


def convert(layer, params, name: str, where: str, ctx: Context, overrides: dict | None = None) -> Saved:
    """``layer`` (its parameters ``params``) as a Keras 3 layer named ``name``; ``overrides``
    replace config entries (Bidirectional's directions). Exact rnnjax classes only: a subclass
    may compute something else, so it is refused like any custom layer."""
    converter = _CONVERTERS.get(type(layer))
    if converter is None:
        raise KerasSaveError(
            f"{where}: {type(layer).__name__} cannot be saved to Keras 3: only rnnjax's "
            f"{sorted(c.__name__ for c in _CONVERTERS)} (exact classes, no custom layers or cells) can."
        )
    saved = converter(layer, params, name, where, ctx)
    if overrides:
        saved.config["config"].update(overrides)
    return saved
