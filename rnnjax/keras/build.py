"""Keras layer configs -> rnnjax modules, key by key.

Every key of a layer config is either mapped to a constructor argument, checked to have the one
value rnnjax supports, or on a list of keys that do not change the forward pass (initializers,
regularizers, constraints, performance hints); any other key is an error, so nothing in a file is
silently ignored. Missing keys take the defaults of the Keras version that wrote the file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import rnnjax
from rnnjax import kinds
from rnnjax.keras import custom
from rnnjax.keras.build_layers import LAYER_BUILDERS
from rnnjax.keras.config import CODE_CLASSES

# Keys without effect on the outputs of a loaded model (regularizers only add training losses).
_IGNORED = {
    "name",
    "trainable",
    "dtype",
    "batch_input_shape",
    "batch_shape",
    "input_shape",
    "input_dim",
    "input_length",
    "seed",
    "implementation",
    "unroll",
    "use_cudnn",
    "sparse",
    "ragged",
    "autocast",
    "lora_alpha",
    "unit_forget_bias",
    "activity_regularizer",
    "momentum",
    "moving_mean_initializer",
    "moving_variance_initializer",
    "synchronized",
    "renorm",
    "renorm_clipping",
    "renorm_momentum",
    "fused",
    "virtual_batch_size",
    "adjustment",
    "weights",
    "supports_masking",
    "cell_type",
}
_IGNORED_SUFFIXES = ("_initializer", "_regularizer", "_constraint")
_NULL = {
    "lora_rank": None,
    "quantization_config": None,
    "time_major": False,
    "renorm": False,
    "virtual_batch_size": None,
    "adjustment": None,
}
# The activation names whose meaning rnnjax's table reproduces for both Keras 2 and 3 (others:
# e.g. Keras's exact 'gelu' and 'leaky_relu' slope differ from jax.nn's defaults).
_ACTIVATIONS = {
    "linear",
    "tanh",
    "sigmoid",
    "hard_sigmoid",
    "relu",
    "relu6",
    "softmax",
    "elu",
    "selu",
    "softplus",
    "softsign",
    "exponential",
    "swish",
    "silu",
}
_FLOAT_POLICIES = {"float32", "float16", "bfloat16", "float64", "mixed_float16", "mixed_bfloat16"}


class Cfg:
    """One layer's config, recording which keys were read."""

    version: str  # the writing Keras version and the load's Context: set by Context.sub
    ctx: Context

    def __init__(self, name, cls, config, major):
        self.name, self.cls, self.d, self.major, self.used = name, cls, config, major, set()
        self.problems: list[str] = []

    def __call__(self, key, default=None):
        self.used.add(key)
        return self.d.get(key, default)

    def fail(self, message):
        self.problems.append(f"layer {self.name!r} ({self.cls}): {message}")

    def act(self, key, default):
        """An activation name in the meaning of the writing version."""
        value = self(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or value not in _ACTIVATIONS:
            self.fail(f"`{key}` {value!r} is not supported (supported: {sorted(_ACTIVATIONS)})")
            return "linear"
        return "hard_sigmoid_keras3" if value == "hard_sigmoid" and self.major >= 3 else value

    def finish(self):
        for key, value in self.d.items():
            if key in _NULL and value != _NULL[key]:
                self.fail(f"`{key}`={value!r} is not supported (expected {_NULL[key]!r})")
            elif (
                key not in self.used
                and key not in _IGNORED
                and not key.endswith(_IGNORED_SUFFIXES)
                and key not in _NULL
            ):
                self.fail(f"config key `{key}`={value!r} is not supported")
        dtype = self.d.get("dtype")
        name = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
        if name is not None and name not in _FLOAT_POLICIES:
            self.fail(f"dtype policy {name!r} is not supported (quantized layers are refused)")


def _recurrent_defaults(c: Cfg):
    """Keras 2 multi-backend defaults were hard_sigmoid/reset_after=False; tf.keras (2.4+, '-tf') and
    Keras 3 changed them to sigmoid/reset_after=True."""
    modern = c.major >= 3 or "-tf" in c.version or _minor(c.version) >= 4
    return ("sigmoid", True) if modern else ("hard_sigmoid", False)


def _minor(version: str) -> int:
    parts = version.split(".")
    try:
        return int(parts[1]) if parts[0].strip() == "2" else 99
    except (IndexError, ValueError):
        return 0


def _seq_flags(c: Cfg, state: bool = True):
    flags = dict(
        return_sequences=bool(c("return_sequences", False)),
        go_backwards=bool(c("go_backwards", False)),
        stateful=bool(c("stateful", False)),
        return_state=bool(c("return_state", False)),
    )
    if "zero_output_for_mask" in c.d:
        flags["zero_output_for_mask"] = bool(c("zero_output_for_mask"))
    return flags


def _tuple(v):
    return tuple(v) if isinstance(v, list) else v


# How a cell argument is read from a Keras config (each kind reads those of its arguments listed
# here, rnnjax.kinds; the rest keep their defaults). `rec`/`reset`: the writing version's defaults.
_READ = {
    "units": lambda c, rec, reset: int(c("units")),
    "filters": lambda c, rec, reset: c("filters"),
    "kernel_size": lambda c, rec, reset: _tuple(c("kernel_size")),
    "strides": lambda c, rec, reset: _tuple(c("strides")),
    "padding": lambda c, rec, reset: c("padding"),
    "data_format": lambda c, rec, reset: c("data_format"),
    "dilation_rate": lambda c, rec, reset: _tuple(c("dilation_rate")),
    "activation": lambda c, rec, reset: c.act("activation", "tanh"),
    "recurrent_activation": lambda c, rec, reset: c.act("recurrent_activation", rec),
    "use_bias": lambda c, rec, reset: bool(c("use_bias", True)),
    "dropout": lambda c, rec, reset: float(c("dropout", 0.0)),
    "recurrent_dropout": lambda c, rec, reset: float(c("recurrent_dropout", 0.0)),
    "reset_after": lambda c, rec, reset: bool(c("reset_after", reset)),
    # Keras 2's from_config turned the deprecated 0 into 1; 2 draws one dropout mask per cell.
    "implementation": lambda c, rec, reset: 1 if c("implementation") == 0 else c("implementation"),
}
# When an argument is read (else it keeps rnnjax's default): the convolution's only when the config
# has them; `implementation` from Keras 2 files only (in a Keras 3 file it is an ignored key).
_WHEN = {
    **dict.fromkeys(
        ("filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate"), lambda c, a: a in c.d
    ),
    "implementation": lambda c, a: c.major < 3 and a in c.d,
}


def _cell_args(c: Cfg, kind: kinds.CellKind) -> dict:
    """The arguments of a ``kind`` cell (or layer) from its Keras config."""
    rec_act, reset_after = _recurrent_defaults(c)
    return {
        a: _READ[a](c, rec_act, reset_after)
        for a in kind.cell_arguments
        if a in _READ and _WHEN.get(a, lambda c, a: True)(c, a)
    }


def _recurrent(kind: kinds.CellKind):
    return lambda c: kind.linen_layer(**_cell_args(c, kind), **_seq_flags(c), name=c.name)


_CELL_KINDS = {k.keras_cell: k for k in kinds.KINDS if k.in_keras_files and k.keras_cell}


def _cell(entry, ctx) -> Any:
    cls, cfg = entry.get("class_name"), entry.get("config", {})
    c = ctx.sub(cfg.get("name", cls), cls, cfg)
    if cls == "StackedRNNCells":
        cells = [_cell(e, ctx) for e in c("cells", [])]
        c.finish()
        return rnnjax.StackedRNNCells(cells)
    if cls not in _CELL_KINDS:
        c.fail("unsupported cell class")
        return rnnjax.SimpleRNNCell(1)  # a stand-in: the recorded problem fails the whole build
    kind = _CELL_KINDS[cls]
    cell = kind.linen_cell(**_cell_args(c, kind))
    c.finish()
    return cell


def _rnn(c: Cfg):
    cell = c("cell")
    cell = {"class_name": "StackedRNNCells", "config": {"cells": cell}} if isinstance(cell, list) else cell
    return rnnjax.RNN(_cell(cell, c.ctx), **_seq_flags(c), name=c.name)


def _cudnn(kind):
    """Keras 2's CuDNN layers, kept (``cudnn='keep'``) or as the canonical layer computing the
    same function (``'canonical'``: sigmoid gates, GRU ``reset_after=True``; any mask)."""
    layer = {"LSTM": rnnjax.CuDNNLSTM, "GRU": rnnjax.CuDNNGRU}[kind]

    def make(c: Cfg):
        if c.ctx.cudnn == "keep":
            return layer(int(c("units")), **_seq_flags(c), name=c.name)
        extra = {"reset_after": True} if kind == "GRU" else {}
        canonical = rnnjax.GRU if kind == "GRU" else rnnjax.LSTM
        return canonical(int(c("units")), recurrent_activation="sigmoid", **extra, **_seq_flags(c), name=c.name)

    return make


def _wrapped(c: Cfg, key):
    entry = c(key)
    if not isinstance(entry, dict):
        c.fail(f"`{key}` must be a layer config")
        return None
    return c.ctx.build(
        entry.get("config", {}).get("name", entry.get("class_name")),
        entry.get("class_name"),
        entry.get("config", {}),
        entry,
    )


def _bidirectional(c: Cfg):
    forward = _wrapped(c, "layer")
    backward = _wrapped(c, "backward_layer") if c.d.get("backward_layer") is not None else c("backward_layer")
    mode = c("merge_mode", "concat")
    if forward is None or c.problems:
        return None
    if backward is not None and backward.go_backwards == forward.go_backwards:
        backward = backward.clone(go_backwards=not forward.go_backwards)
    return rnnjax.Bidirectional(forward, merge_mode=mode, backward_layer=backward, name=c.name)


BUILDERS: dict[str, Callable] = {
    "Dense": lambda c: rnnjax.Dense(
        int(c("units")), activation=c.act("activation", None), use_bias=bool(c("use_bias", True)), name=c.name
    ),
    "Embedding": lambda c: rnnjax.Embedding(
        int(c("input_dim")), int(c("output_dim")), mask_zero=bool(c("mask_zero", False)), name=c.name
    ),
    "Masking": lambda c: rnnjax.Masking(float(c("mask_value", 0.0)), name=c.name),
    "Dropout": lambda c: rnnjax.Dropout(float(c("rate")), noise_shape=c("noise_shape"), name=c.name),
    "SpatialDropout1D": lambda c: (
        c("noise_shape"),
        rnnjax.Dropout(float(c("rate")), noise_shape=(None, 1, None), name=c.name),
    )[1],
    "Activation": lambda c: rnnjax.Activation(c.act("activation", None), name=c.name),
    **{kind.name: _recurrent(kind) for kind in kinds.KINDS if kind.in_keras_files},
    "RNN": _rnn,
    "CuDNNLSTM": _cudnn("LSTM"),
    "CuDNNGRU": _cudnn("GRU"),
    "Bidirectional": _bidirectional,
    "TimeDistributed": lambda c: (lambda inner: None if inner is None else rnnjax.TimeDistributed(inner, name=c.name))(
        _wrapped(c, "layer")
    ),
}
BUILDERS.update(LAYER_BUILDERS)  # the layers around the recurrent ones: rnnjax/keras/build_layers.py


class Context:
    """Builds the modules of one file, collecting every problem; ``custom``: the user's
    :class:`rnnjax.keras.custom.CustomObjects` (or ``None``)."""

    def __init__(self, major: int, version: str, cudnn: str = "keep", custom=None):
        self.major, self.version, self.cudnn, self.custom = major, version, cudnn, custom
        self.problems: list[str] = []

    def sub(self, name, cls, config) -> Cfg:
        c = Cfg(name, cls, config, self.major)
        c.version, c.ctx = self.version, self
        c.problems = self.problems
        return c

    def build(self, name, cls, config, entry=None):
        """The module for one layer, or ``None`` (the problem recorded): the user's module when
        ``custom_objects`` supplies it, else rnnjax's for Keras's own classes."""
        entry = entry or {}
        key = None if self.custom is None else self.custom.find(name, cls, entry)
        if key is not None:
            module, problem = self.custom.build(key, name, config)
            if problem is not None:
                self.problems.append(problem)
            return module
        if cls in CODE_CLASSES:
            return None  # the config scan has reported it
        if cls not in BUILDERS or custom.is_custom(cls, entry):
            self.problems.append(custom.unknown_class(name, cls, entry, config))
            return None
        c = self.sub(name, cls, config)
        before = len(self.problems)
        try:
            module = BUILDERS[cls](c)
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as err:
            c.fail(f"invalid config ({type(err).__name__}: {err})")
            return None
        c.finish()
        return module if len(self.problems) == before else None
