"""The Keras 3 configs of rnnjax's layers around the recurrent ones (the classes of
:data:`rnnjax.layers.KERAS_LAYERS`), for ``save_keras``: :func:`describe` gives a layer's Keras 3
class name, its config fields (every argument written out) and the names of its weights in Keras
3's order; :mod:`rnnjax.keras.save_layers` turns them into the saved object.

Where Keras 3 would compute something else, the layer is refused (Keras 2's ``causal``
constructor argument of the attention layers, which Keras 3 only takes at call time) or a
warning says so (``keras_version=2`` layers: Keras 3 combines masks by its own rule, which
changes nothing for inputs without masks).
"""

from __future__ import annotations

from typing import Any, cast

from rnnjax import layers as L
from rnnjax.functional.conv import normalize_tuple
from rnnjax.keras import save_objects as so
from rnnjax.keras.save_objects import KerasSaveError
from rnnjax.layers.reshaping import pair


def _list(value, rank):
    return list(normalize_tuple(value, rank, "size"))


def _weight_objects(layer, where, ctx, parts=("kernel", "bias")) -> dict:
    out = {}
    for p in parts:
        out[f"{p}_initializer"] = so.initializer(
            getattr(layer, f"{p}_initializer"), f"{where} `{p}_initializer`", ctx.warn
        )
    for p in parts:
        out[f"{p}_regularizer"] = so.regularizer(getattr(layer, f"{p}_regularizer"), f"{where} `{p}_regularizer`")
    out["activity_regularizer"] = so.regularizer(layer.activity_regularizer, f"{where} `activity_regularizer`")
    for p in parts:
        out[f"{p}_constraint"] = so.constraint(getattr(layer, f"{p}_constraint"), f"{where} `{p}_constraint`")
    return out


def _conv(layer, where, ctx):
    act, factor = so.activation(layer.activation, f"{where} `activation`", ctx.hard_sigmoid, True)
    r = layer.rank
    fields = {
        "filters": int(layer.filters),
        "kernel_size": _list(layer.kernel_size, r),
        "strides": _list(layer.strides, r),
        "padding": layer.padding.lower(),
        "data_format": layer.data_format or "channels_last",
        "dilation_rate": _list(layer.dilation_rate, r),
        "groups": int(layer.groups),
        "activation": act,
        "use_bias": bool(layer.use_bias),
        **_weight_objects(layer, where, ctx),
    }
    if factor != 1.0 and any(
        fields[k] is not None
        for k in ("kernel_regularizer", "bias_regularizer", "kernel_constraint", "bias_constraint")
    ):
        raise KerasSaveError(
            f"{where}: Keras 2's 'hard_sigmoid' is saved by scaling the weights by 1.2, which would "
            "change what the regularizers/constraints act on; use 'sigmoid' or drop them."
        )
    return fields, ["kernel", "bias"] if layer.use_bias else ["kernel"], factor


def _pool(layer, where, ctx):
    del where, ctx
    r = layer.rank
    return (
        {
            "pool_size": _list(layer.pool_size, r),
            "strides": None if layer.strides is None else _list(layer.strides, r),
            "padding": layer.padding.lower(),
            "data_format": layer.data_format or "channels_last",
        },
        [],
        1.0,
    )


def _global_pool(layer, where, ctx):
    del where, ctx
    return {"data_format": layer.data_format or "channels_last", "keepdims": bool(layer.keepdims)}, [], 1.0


def _warn_version(layer, where, ctx, what):
    if layer.keras_version == 2:
        ctx.warn(
            f"{where}: a keras_version=2 {type(layer).__name__} is saved as Keras 3's, which {what}; the "
            "numbers are the same where no mask reaches it."
        )


def _merge(layer, where, ctx):
    _warn_version(layer, where, ctx, "combines masks by Keras 3's rule (OR, none unless every input has one)")
    fields: dict[str, Any] = {}
    if isinstance(layer, L.Concatenate):
        fields["axis"] = int(layer.axis)
    if isinstance(layer, L.Dot):
        axes = layer.axes
        fields = {
            "axes": [int(a) for a in axes] if isinstance(axes, (tuple, list)) else int(cast(int, axes)),
            "normalize": bool(layer.normalize),
        }
    return fields, [], 1.0


def _softmax(layer, where, ctx):
    _warn_version(layer, where, ctx, "masks its inputs with where(mask, x, -1e9) and zeroes masked outputs")
    axis = layer.axis
    return {"axis": [int(a) for a in axis] if isinstance(axis, (tuple, list)) else int(axis)}, [], 1.0


def _norm(layer, where, ctx):
    del where, ctx
    defaults = {
        "beta_initializer": so.initializer("zeros", "", None),
        "gamma_initializer": so.initializer("ones", "", None),
        "beta_regularizer": None,
        "gamma_regularizer": None,
        "beta_constraint": None,
        "gamma_constraint": None,
    }
    fields = {"epsilon": float(layer.epsilon), "center": bool(layer.center), "scale": bool(layer.scale), **defaults}
    names = (["gamma"] if layer.scale else []) + (["beta"] if layer.center else [])
    if isinstance(layer, L.BatchNormalization):
        return (
            {
                "axis": int(layer.axis),
                "momentum": 0.99,
                **fields,
                "moving_mean_initializer": so.initializer("zeros", "", None),
                "moving_variance_initializer": so.initializer("ones", "", None),
            },
            names + ["moving_mean", "moving_variance"],
            1.0,
        )
    axis = layer.axis
    names = (["gamma"] if layer.scale or layer.rms_scaling else []) + (
        ["beta"] if layer.center and not layer.rms_scaling else []
    )
    return (
        {
            "axis": [int(a) for a in axis] if isinstance(axis, (tuple, list)) else int(axis),
            "rms_scaling": bool(layer.rms_scaling),
            **fields,
        },
        names,
        1.0,
    )


def _attention(layer, where, ctx):
    del ctx
    if layer.causal:
        raise KerasSaveError(
            f"{where}: causal=True (Keras 2's constructor argument) has no Keras 3 config: Keras 3 "
            "asks for causal masking at call time (use_causal_mask=True); build the layer with "
            "causal=False and call it with use_causal_mask=True."
        )
    fields = {"use_scale": bool(layer.use_scale), "dropout": float(layer.dropout), "seed": layer.seed}
    if isinstance(layer, L.Attention):
        fields["score_mode"] = layer.score_mode
        names = (["scale"] if layer.use_scale else []) + (
            ["concat_score_weight"] if layer.score_mode == "concat" else []
        )
        return fields, names, 1.0
    return fields, ["scale"] if layer.use_scale else [], 1.0


def _fields(**values):
    return lambda layer, where, ctx: ({k: f(layer) for k, f in values.items()}, [], 1.0)


_DESCRIBE = {
    L.RepeatVector: _fields(n=lambda l: int(l.n)),
    L.Reshape: _fields(target_shape=lambda l: [int(d) for d in l.target_shape]),
    L.Permute: _fields(dims=lambda l: [int(d) for d in l.dims]),
    L.Flatten: _fields(data_format=lambda l: l.data_format),
    L.ZeroPadding1D: _fields(padding=lambda l: list(pair(l.padding, "padding")), data_format=lambda l: l.data_format),
    L.Cropping1D: _fields(cropping=lambda l: list(pair(l.cropping, "cropping"))),
    L.UpSampling1D: _fields(size=lambda l: int(l.size)),
    L.ReLU: _fields(
        max_value=lambda l: None if l.max_value is None else float(l.max_value),
        negative_slope=lambda l: float(l.negative_slope),
        threshold=lambda l: float(l.threshold),
    ),
    L.LeakyReLU: _fields(negative_slope=lambda l: float(l.slope)),
    L.Softmax: _softmax,
    L.Add: _merge,
    L.Subtract: _merge,
    L.Multiply: _merge,
    L.Average: _merge,
    L.Maximum: _merge,
    L.Minimum: _merge,
    L.Concatenate: _merge,
    L.Dot: _merge,
    L.Conv1D: _conv,
    L.Conv2D: _conv,
    L.Conv3D: _conv,
    L.MaxPooling1D: _pool,
    L.AveragePooling1D: _pool,
    L.MaxPooling2D: _pool,
    L.AveragePooling2D: _pool,
    L.GlobalMaxPooling1D: _global_pool,
    L.GlobalAveragePooling1D: _global_pool,
    L.GlobalMaxPooling2D: _global_pool,
    L.GlobalAveragePooling2D: _global_pool,
    L.BatchNormalization: _norm,
    L.LayerNormalization: _norm,
    L.Attention: _attention,
    L.AdditiveAttention: _attention,
}
CLASSES = tuple(_DESCRIBE)


def describe(layer, where: str, ctx) -> tuple:
    """``(Keras 3 class name, config fields, weight names in Keras 3's order, factor)`` of one of
    :data:`CLASSES`; ``factor`` multiplies the weights (Keras 2's hard sigmoid, see
    :mod:`rnnjax.keras.save_objects`)."""
    fields, names, factor = _DESCRIBE[type(layer)](layer, where, ctx)
    return type(layer).__name__, fields, names, factor
