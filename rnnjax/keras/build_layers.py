"""Keras configs of the layers around the recurrent ones -> rnnjax's Keras-named layers
(:data:`rnnjax.layers.KERAS_LAYERS`), key by key, as :mod:`rnnjax.keras.build` does for the
recurrent ones (this table is merged into its ``BUILDERS``).

Each builder reads the keys its layer has in Keras 2 (tf-keras) and Keras 3 configs; where the
two versions compute differently (merge masks, Softmax masks, Dot's epsilon) the layer gets the
file's ``keras_version``; where they name an argument differently (LeakyReLU's ``alpha`` /
``negative_slope``; Attention's ``causal``) both spellings are read.
"""

from __future__ import annotations

from collections.abc import Callable

import rnnjax


def _need(c, key):
    """A config key the layer cannot be built without."""
    value = c(key)
    if value is None:
        raise KeyError(f"the config has no `{key}`, which {c.cls} needs")
    return value


def _tuple(v):
    return tuple(int(i) for i in v) if isinstance(v, (list, tuple)) else int(v)


def _int(v):
    return int(v[0]) if isinstance(v, (list, tuple)) else int(v)


def _data_format(c, allowed=("channels_last", "channels_first")):
    fmt = c("data_format", "channels_last") or "channels_last"
    if fmt not in allowed:
        c.fail(f"data_format={fmt!r} is not supported (supported: {list(allowed)})")
    return fmt


def _version(c) -> int:
    return 3 if c.major >= 3 else 2


def _conv(layer):
    def make(c):
        return layer(
            int(_need(c, "filters")),
            _tuple(_need(c, "kernel_size")),
            strides=_tuple(c("strides", 1)),
            padding=c("padding", "valid"),
            data_format=_data_format(c),
            dilation_rate=_tuple(c("dilation_rate", 1)),
            groups=int(c("groups", 1)),
            activation=c.act("activation", None),
            use_bias=bool(c("use_bias", True)),
            name=c.name,
        )

    return make


def _pool(layer):
    def make(c):
        strides = c("strides", None)
        return layer(
            _tuple(c("pool_size", 2)),
            None if strides is None else _tuple(strides),
            c("padding", "valid"),
            _data_format(c),
            name=c.name,
        )

    return make


def _global_pool(layer):
    return lambda c: layer(_data_format(c), bool(c("keepdims", False)), name=c.name)


def _axes(v):
    return tuple(int(a) for a in (v if isinstance(v, (list, tuple)) else [v]))


def _batch_norm(c):
    axis = _axes(c("axis", -1))
    if len(axis) != 1:
        c.fail(f"axis={axis} is not supported (one axis)")
    return rnnjax.BatchNormalization(
        axis[0], float(c("epsilon", 1e-3)), bool(c("center", True)), bool(c("scale", True)), name=c.name
    )


def _layer_norm(c):
    return rnnjax.LayerNormalization(
        _axes(c("axis", -1)),
        float(c("epsilon", 1e-3)),
        bool(c("center", True)),
        bool(c("scale", True)),
        bool(c("rms_scaling", False)),
        name=c.name,
    )


def _leaky_relu(c):
    slope, alpha = c("negative_slope", None), c("alpha", None)  # Keras 3's name, Keras 2's
    return rnnjax.LeakyReLU(float(slope if slope is not None else alpha if alpha is not None else 0.3), name=c.name)


def _relu(c):
    top = c("max_value", None)
    return rnnjax.ReLU(
        None if top is None else float(top), float(c("negative_slope", 0.0)), float(c("threshold", 0.0)), name=c.name
    )


def _softmax(c):
    axis = c("axis", -1)
    return rnnjax.Softmax(_tuple(axis), bool(c("robust_masking", False)), _version(c), name=c.name)


def _merge(layer):
    return lambda c: layer(keras_version=_version(c), name=c.name)


def _attention(c):
    return rnnjax.Attention(
        bool(c("use_scale", False)),
        c("score_mode", "dot"),
        float(c("dropout", 0.0)),
        causal=bool(c("causal", False)),
        name=c.name,
    )


def _additive_attention(c):
    return rnnjax.AdditiveAttention(
        bool(c("use_scale", True)), float(c("dropout", 0.0)), causal=bool(c("causal", False)), name=c.name
    )


LAYER_BUILDERS: dict[str, Callable] = {
    "RepeatVector": lambda c: rnnjax.RepeatVector(int(_need(c, "n")), name=c.name),
    "Reshape": lambda c: rnnjax.Reshape(tuple(int(d) for d in _need(c, "target_shape")), name=c.name),
    "Permute": lambda c: rnnjax.Permute(tuple(int(d) for d in _need(c, "dims")), name=c.name),
    "Flatten": lambda c: rnnjax.Flatten(_data_format(c), name=c.name),
    "ZeroPadding1D": lambda c: rnnjax.ZeroPadding1D(_tuple(c("padding", 1)), _data_format(c), name=c.name),
    "Cropping1D": lambda c: rnnjax.Cropping1D(_tuple(c("cropping", (1, 1))), name=c.name),
    "UpSampling1D": lambda c: rnnjax.UpSampling1D(int(c("size", 2)), name=c.name),
    "ReLU": _relu,
    "LeakyReLU": _leaky_relu,
    "Softmax": _softmax,
    "Add": _merge(rnnjax.Add),
    "Subtract": _merge(rnnjax.Subtract),
    "Multiply": _merge(rnnjax.Multiply),
    "Average": _merge(rnnjax.Average),
    "Maximum": _merge(rnnjax.Maximum),
    "Minimum": _merge(rnnjax.Minimum),
    "Concatenate": lambda c: rnnjax.Concatenate(int(c("axis", -1)), _version(c), name=c.name),
    "Dot": lambda c: rnnjax.Dot(_tuple(_need(c, "axes")), bool(c("normalize", False)), _version(c), name=c.name),
    "Conv1D": _conv(rnnjax.Conv1D),
    "Conv2D": _conv(rnnjax.Conv2D),
    "Conv3D": _conv(rnnjax.Conv3D),
    "MaxPooling1D": _pool(rnnjax.MaxPooling1D),
    "AveragePooling1D": _pool(rnnjax.AveragePooling1D),
    "MaxPooling2D": _pool(rnnjax.MaxPooling2D),
    "AveragePooling2D": _pool(rnnjax.AveragePooling2D),
    "GlobalMaxPooling1D": _global_pool(rnnjax.GlobalMaxPooling1D),
    "GlobalAveragePooling1D": _global_pool(rnnjax.GlobalAveragePooling1D),
    "GlobalMaxPooling2D": _global_pool(rnnjax.GlobalMaxPooling2D),
    "GlobalAveragePooling2D": _global_pool(rnnjax.GlobalAveragePooling2D),
    "BatchNormalization": _batch_norm,
    "LayerNormalization": _layer_norm,
    "Attention": _attention,
    "AdditiveAttention": _additive_attention,
}
# Keras's other names for the same classes (Keras 2 aliases, kept by Keras 3 for loading).
_ALIASES = {
    "Convolution1D": "Conv1D",
    "Convolution2D": "Conv2D",
    "Convolution3D": "Conv3D",
    "MaxPool1D": "MaxPooling1D",
    "AvgPool1D": "AveragePooling1D",
    "MaxPool2D": "MaxPooling2D",
    "AvgPool2D": "AveragePooling2D",
    "GlobalMaxPool1D": "GlobalMaxPooling1D",
    "GlobalAvgPool1D": "GlobalAveragePooling1D",
    "GlobalMaxPool2D": "GlobalMaxPooling2D",
    "GlobalAvgPool2D": "GlobalAveragePooling2D",
}
LAYER_BUILDERS.update({alias: LAYER_BUILDERS[name] for alias, name in _ALIASES.items()})
