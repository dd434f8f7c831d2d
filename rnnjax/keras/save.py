"""``save_keras``: an rnnjax model and its variables as a Keras 3 ``.keras`` archive.

The archive is what Keras 3 itself writes (``keras/src/saving/saving_lib.py``): a zip, members
stored uncompressed, holding ``metadata.json``, ``config.json`` (a ``Sequential`` whose first
entry is an ``InputLayer``) and ``model.weights.h5`` (written with h5py: each Keras object at
the path of its attribute, ``layers/<class in snake case>[_n]/.../vars/0, 1, ...``). Only data
goes in: no code, no custom objects, so ``keras.saving.load_model(path)`` loads it in safe mode.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from rnnjax import kinds
from rnnjax.keras import save_graph
from rnnjax.keras import save_layers as sl
from rnnjax.keras.formats import import_h5py
from rnnjax.keras.graph import KerasGraph
from rnnjax.keras.save_objects import KerasSaveError
from rnnjax.layers import STATE_COLLECTION, Bidirectional, Embedding, Sequential, TimeDistributed
from rnnjax.layers.protocol import keras_name, snake_case
from rnnjax.regularizers import LOSSES

__all__ = ["save_keras", "KerasSaveError"]

BATCH_STATS = "batch_stats"  # BatchNormalization's moving statistics (rnnjax.BatchNormalization)
# The Keras 3 file layout written here (``vars`` groups carry a ``name`` attribute since 3.6).
FORMAT_KERAS_VERSION = "3.6.0"


def _layers_of(model) -> list:
    """The model's layers: a ``Sequential``'s, or a single layer saved as a one-layer Sequential."""
    if isinstance(model, Sequential):
        return list(model.layers)
    if isinstance(model, nn.Module):
        return [model]
    raise TypeError(
        f"`model`: expected an rnnjax.Sequential or an rnnjax layer (a Flax module), got {type(model).__name__}."
    )


def _names(layers) -> list:
    """Each layer's name in the variables: its Keras name, numbered per name as Sequential does."""
    used: dict = {}
    return [sl.unique(keras_name(layer), used) for layer in layers]


def _param_tree(model, variables, layers, names) -> list:
    _params(variables)
    unknown = sorted(set(variables) - {"params", STATE_COLLECTION, LOSSES, BATCH_STATS})
    if unknown:
        raise KerasSaveError(
            f"`variables`: collections {unknown} have no place in a Keras 3 file (expected 'params'"
            f" and optionally '{STATE_COLLECTION}', '{BATCH_STATS}' (BatchNormalization) and "
            f"'{LOSSES}', the penalties init reported)."
        )
    params = _with_batch_stats(variables["params"], variables.get(BATCH_STATS, {}))
    if not isinstance(model, Sequential):
        return [params]
    extra = sorted(set(params) - set(names))
    if extra:
        raise KerasSaveError(f"`variables`: parameters {extra} belong to no layer of the model (its layers: {names}).")
    return [params.get(n) for n in names]


def _with_batch_stats(params, stats):
    """``params`` with BatchNormalization's moving statistics (``'batch_stats'``) merged in by path:
    Keras 3 keeps them with the layer's other variables."""
    if not isinstance(stats, Mapping):
        return stats
    out = dict(params)
    for key, value in stats.items():
        out[key] = _with_batch_stats(out.get(key, {}), value) if isinstance(value, Mapping) else value
    return out


def _count_arrays(variables) -> int:
    return len(jax.tree_util.tree_leaves([variables["params"], variables.get(BATCH_STATS, {})]))


def _infer_input(layer, params, where) -> tuple | None:
    """(per-sample shape, dtype) of the inputs a model starting with ``layer`` takes, or None
    when ``layer`` keeps the shape (look at the next one)."""
    if isinstance(layer, Embedding):
        return (layer.input_length,), "int32"
    if isinstance(layer, Bidirectional):
        sub = next((v for k, v in (params or {}).items() if k.startswith("forward_")), None)
        return _infer_input(layer.layer, sub, where)
    kind = kinds.kind_of(layer)
    if isinstance(layer, sl.RECURRENT) and not (kind is not None and kind.rank):
        kernels = [
            a
            for path, a in jax.tree_util.tree_leaves_with_path(params or {})
            if jax.tree_util.keystr(path).endswith("['kernel']")
        ]
        if kernels and kernels[0].ndim == 2:  # a ConvLSTM cell's kernel has spatial axes too
            return (getattr(layer, "input_length", None), int(kernels[0].shape[0])), "float32"
    if isinstance(layer, TimeDistributed) and type(layer.layer).__name__ == "Dense":
        return (None, int((params or {})[keras_name(layer.layer)]["kernel"].shape[0])), "float32"
    if type(layer).__name__ in ("Masking", "Dropout", "Activation"):
        return None
    raise KerasSaveError(
        f"`input_shape`: needed to save a model that starts with {where} ({type(layer).__name__}): Keras 3 needs the "
        "input's shape per sample (None for a free length; ConvLSTM "
        "needs its spatial sizes), e.g. input_shape=(None, 8)."
    )


def _input_spec(model, variables, layers, params, input_shape, input_dtype, batch):
    if input_shape is None:
        for i, (layer, p) in enumerate(zip(layers, params)):
            found = _infer_input(layer, p, f"layer {i}")
            if found is not None:
                input_shape, inferred_dtype = found
                input_dtype = input_dtype or inferred_dtype
                break
        else:
            raise KerasSaveError("`input_shape`: the model has no layer that fixes its input shape; pass input_shape=.")
    input_shape = tuple(None if d is None else int(d) for d in input_shape)
    input_dtype = input_dtype or "float32"
    # The same shape must run through rnnjax (a free length tried as 3 steps).
    probe = jax.ShapeDtypeStruct(
        (batch or 1,) + tuple(3 if d is None else d for d in input_shape), jnp.dtype(input_dtype)
    )
    try:
        kept = {k: v for k, v in variables.items() if k != LOSSES}
        jax.eval_shape(lambda x: model.apply(kept, x, mutable=True), probe)
    except Exception as e:  # noqa: BLE001 - any failure means the shape is wrong for this model
        raise KerasSaveError(
            f"`input_shape`: the model does not run on inputs of shape (batch, *{input_shape}) "
            f"and dtype {input_dtype}: {e}"
        ) from e
    return input_shape, input_dtype


def _stateful(layer) -> bool:
    subs = [getattr(layer, a, None) for a in ("layer", "backward_layer")]
    return bool(getattr(layer, "stateful", False)) or any(s is not None and _stateful(s) for s in subs)


def _batch_size(layers, variables, batch_size):
    """Keras 3 needs the batch size of a stateful model fixed in its Input: ``batch_size``, or the
    batch of the states in ``variables['rnn_state']``."""
    if not any(_stateful(layer) for layer in layers):
        return batch_size
    leaves = jax.tree_util.tree_leaves(variables.get(STATE_COLLECTION, {}))
    found = sorted({int(a.shape[0]) for a in leaves})
    if batch_size is None:
        if len(found) != 1:
            raise KerasSaveError(
                "`batch_size`: the model is stateful, and Keras 3 needs its batch size fixed; pass batch_size= (the "
                f"states in variables['{STATE_COLLECTION}'] give {found or 'none'})."
            )
        batch_size = found[0]
    elif found and found != [batch_size]:
        raise KerasSaveError(
            f"`batch_size`: {batch_size}, but the states in variables['{STATE_COLLECTION}'] have batch {found}."
        )
    if any(np.any(np.asarray(a) != 0) for a in leaves):
        warnings.warn(
            "save_keras: the stateful layers' current states are not saved (a Keras 3 file has no place for "
            "them); the Keras model starts from zero states.",
            stacklevel=3,
        )
    return batch_size


def _dtype(params) -> np.dtype:
    """float64 when the model's parameters are, else float32 (float16/bfloat16 widen exactly)."""
    dtypes = {np.dtype(a.dtype) for a in jax.tree_util.tree_leaves(params)}
    return np.dtype("float64") if np.dtype("float64") in dtypes else np.dtype("float32")


def _count(node) -> int:
    return len(node.arrays) + sum(_count(c) for c in node.children.values())


def _write_node(h5, path: str, node: sl.Node) -> None:
    group = h5.create_group(f"{path}/vars" if path else "vars")
    group.attrs["name"] = node.name
    for i, a in enumerate(node.arrays):
        group.create_dataset(str(i), data=a)
    for key, child in node.children.items():
        _write_node(h5, f"{path}/{key}" if path else key, child)


def _weights_file(h5py, nodes) -> bytes:
    """The weights file: each ``(path, Node)`` written at ``path`` (``''``: the root)."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        for path, node in nodes:
            _write_node(h5, path, node)
    return buffer.getvalue()


def _model_config(saved, name, batch_shape, input_dtype, dtype) -> dict:
    input_layer = {
        "module": "keras.layers",
        "class_name": "InputLayer",
        "registered_name": None,
        "config": {"batch_shape": list(batch_shape), "dtype": input_dtype, "sparse": False, "name": "input_layer"},
    }
    return {
        "module": "keras",
        "class_name": "Sequential",
        "registered_name": None,
        "config": {
            "name": name,
            "trainable": True,
            "dtype": dtype.name,
            "layers": [input_layer] + [s.config for s in saved],
        },
        "build_config": {"input_shape": list(batch_shape)},
        "compile_config": None,
    }


def _write_archive(path: str, members: dict) -> None:
    """Writes the zip next to ``path`` and renames it into place: never a partial file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=".keras.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
            for member, data in members.items():
                zf.writestr(zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0)), data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_keras(
    model, variables, path, *, input_shape=None, input_dtype=None, batch_size=None, hard_sigmoid: str = "scale"
) -> None:
    """Writes ``model`` with ``variables`` as a Keras 3 ``.keras`` archive at ``path``, which
    ``keras.saving.load_model(path)`` loads (safe mode) into a ``keras.Sequential`` (or, for a
    :class:`rnnjax.keras.KerasGraph`, a functional ``keras.Model``) predicting what
    ``model.apply(variables, ...)`` does.

    Args:
      model: an ``rnnjax.Sequential`` of rnnjax layers (SimpleRNN, GRU, LSTM, RNN of cells or
        stacked cells, ConvLSTM1D/2D/3D, CuDNNLSTM/CuDNNGRU, Bidirectional, TimeDistributed,
        Embedding, Masking, Dense, Dropout, Activation, and the layers of
        ``rnnjax.layers.KERAS_LAYERS``: Conv2D, Reshape, RepeatVector, ...), or one such layer
        alone (its ``return_state`` outputs become the Keras model's outputs), or a ``KerasGraph``
        (from :func:`rnnjax.load_keras`) of those layers and nested graphs: its inputs, outputs,
        shared layers, states and masks passed between layers as they are.
      variables: ``model.init(...)``'s result: ``'params'`` (and ``'batch_stats'``, saved with
        BatchNormalization; ``'rnn_state'``, not saved).
      path: the file to write; must end in ``.keras`` (Keras 3 requires it). Replaced atomically.
      input_shape: per-sample input shape (``None`` for a free length; not for a ``KerasGraph``,
        whose inputs are its own); inferred from the first
        layer that fixes it (Embedding: ``(input_length,)`` int32; recurrent: ``(input_length,
        features)``), required for a model starting with Dense or ConvLSTM (static spatial sizes).
      input_dtype: the input dtype (default: int32 after an Embedding, else float32).
      batch_size: the fixed batch a stateful model needs in Keras 3 (default: the states' batch).
      hard_sigmoid: Keras 2's ``'hard_sigmoid'`` (rnnjax's default ``recurrent_activation``)
        has no Keras 3 name. ``'scale'`` (default) saves it exactly as Keras 3's ``'hard_sigmoid'``
        with the weights feeding it scaled by 1.2 (``clip(0.2x+0.5) = clip(1.2x/6+0.5)``), where
        that pre-activation is linear in the weights (gates, Dense); ``'error'`` refuses it.

    Conversions: CuDNNLSTM -> LSTM(tanh, sigmoid) and CuDNNGRU -> GRU(reset_after=True, sigmoid),
    weights by :func:`rnnjax.cudnn.cudnn_lstm_to_lstm` / :func:`rnnjax.cudnn.cudnn_gru_to_gru`. Refused with
    :class:`KerasSaveError` naming the layer: custom layers, cells or activations, activations
    whose Keras 3 namesake differs (``gelu``, ``leaky_relu``), Keras 2's hard sigmoid where it
    cannot be scaled (an LSTM's ``activation``, ``Activation``), custom regularizers/constraints,
    and regularizers/constraints on weights that a conversion re-lays out.
    """
    if hard_sigmoid not in ("scale", "error"):
        raise ValueError(f"`hard_sigmoid`: expected 'scale' or 'error', got {hard_sigmoid!r}.")
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"`path`: Keras 3 loads .keras archives only by that suffix; got {path!r}.")
    h5py = import_h5py("rnnjax.save_keras (writing the weights file)")
    ctx = sl.Context(
        hard_sigmoid, lambda m: warnings.warn(f"save_keras: {m}", stacklevel=4), _dtype(_params(variables))
    )
    if isinstance(model, KerasGraph):
        if (input_shape, input_dtype, batch_size) != (None, None, None):
            raise ValueError(
                "`input_shape`/`input_dtype`/`batch_size`: a KerasGraph's inputs are its own "
                f"(model.inputs = {list(model.inputs)}); leave them unset."
            )
        name = model.name or "functional"
        params = _param_tree(model, variables, [], [])[0]
        config, node = save_graph.graph_members(model, variables, params, ctx, name)
        nodes = [("", sl.Node(name, [], {}))] + list(node.children.items())
    else:
        config, saved, name = _sequential(model, variables, ctx, input_shape, input_dtype, batch_size)
        nodes = [("", sl.Node(name, [], {}))] + [("layers/" + p, s.node) for p, s in saved]
    metadata = {
        "keras_version": FORMAT_KERAS_VERSION,
        "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        "writer": "rnnjax.save_keras",
    }
    _write_archive(
        path,
        {
            "metadata.json": json.dumps(metadata),
            "config.json": json.dumps(config),
            "model.weights.h5": _weights_file(h5py, nodes),
        },
    )


def _params(variables):
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise ValueError(
            f"`variables`: expected the dict returned by `model.init` (with 'params'), got {type(variables).__name__}."
        )
    return variables["params"]


def _sequential(model, variables, ctx, input_shape, input_dtype, batch_size):
    """``(config.json object, [(path under layers/, Saved)], model name)`` of a Sequential or one layer."""
    layers = _layers_of(model)
    names = _names(layers)
    params = _param_tree(model, variables, layers, names)
    saved = []
    for i, (layer, name, p) in enumerate(zip(layers, names, params)):
        saved.append(sl.convert(layer, p, name, f"layer {i} ({name}, {type(layer).__name__})", ctx))
    written, total = sum(_count(s.node) for s in saved), _count_arrays(variables)
    if written != total:
        raise KerasSaveError(f"`variables`: {total} parameter arrays, but the model's layers account for {written}.")
    batch = _batch_size(layers, variables, batch_size)
    shape, dtype = _input_spec(model, variables, layers, params, input_shape, input_dtype, batch)
    name = keras_name(model) if isinstance(model, Sequential) else "sequential"
    config = _model_config(saved, name, (batch,) + shape, dtype, ctx.dtype)
    used: dict = {}
    return config, [(sl.unique(snake_case(s.config["class_name"]), used), s) for s in saved], name
