"""Keras's convolution layers ``Conv1D``, ``Conv2D``, ``Conv3D`` as Flax linen modules, their
computation in :func:`conv` (shared with the NNX twins in :mod:`rnnjax.nnx.keras_layers`).

Sources: ``keras/src/layers/convolutional/{base_conv,conv1d}.py`` (Keras 3) and
``tf_keras/layers/convolutional/base_conv.py`` (Keras 2), which compute the same. The output
has no mask (Keras 3 drops it; Keras 2 refused masked inputs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnnjax.functional import activations
from rnnjax.functional.conv import check_data_format, normalize_tuple
from rnnjax.functional.core import check_units
from rnnjax.layers.basic import _Weighted
from rnnjax.layers.protocol import DropMask

_SPATIAL = {1: "W", 2: "HW", 3: "DHW"}


def check_conv_args(spec) -> None:
    """Keras's checks of a convolution's arguments (``spec``: a linen ``Conv*D``)."""
    rank = spec.rank
    check_units(spec.filters, "filters")
    check_units(spec.groups, "groups")
    normalize_tuple(spec.kernel_size, rank, "kernel_size")
    strides = normalize_tuple(spec.strides, rank, "strides")
    dilation = normalize_tuple(spec.dilation_rate, rank, "dilation_rate")
    allowed = ("valid", "same", "causal") if rank == 1 else ("valid", "same")
    if not isinstance(spec.padding, str) or spec.padding.lower() not in allowed:
        raise ValueError(f"`padding`: expected one of {list(allowed)} (any case), got {spec.padding!r}.")
    check_data_format(spec.data_format)
    if spec.filters % spec.groups:
        raise ValueError(f"`filters`: {spec.filters} is not divisible by groups={spec.groups}.")
    if max(strides) > 1 and max(dilation) > 1:
        raise ValueError(
            f"`dilation_rate`: {dilation} with strides {strides}: Keras does not allow strides > 1 "
            "together with dilation_rate > 1."
        )
    activations.get(spec.activation, "activation")


def input_channels(spec, inputs) -> int:
    """The channel count of ``inputs`` (``(batch, *spatial, channels)`` or channels first), checked."""
    rank = spec.rank
    if getattr(inputs, "ndim", None) != rank + 2:
        what = (
            "(batch, channels, *spatial)"
            if check_data_format(spec.data_format) == "channels_first"
            else "(batch, *spatial, channels)"
        )
        raise ValueError(
            f"`inputs`: Conv{rank}D expects an array {what} ({rank + 2} axes), got shape "
            f"{getattr(inputs, 'shape', type(inputs).__name__)}."
        )
    channels = inputs.shape[1 if check_data_format(spec.data_format) == "channels_first" else -1]
    if channels % spec.groups:
        raise ValueError(f"`inputs`: {channels} channels are not divisible by groups={spec.groups}.")
    return int(channels)


def kernel_shape(spec, channels: int) -> tuple:
    return normalize_tuple(spec.kernel_size, spec.rank, "kernel_size") + (channels // spec.groups, spec.filters)


def conv(spec, inputs, kernel, bias):
    """``y = activation(x ⊛ kernel + bias)``, Keras's cross-correlation: for channels last,
    ``y[b, p, f] = sum_{k, c} x[b, p*s + k*d - pad, c] kernel[k, c, f] + bias[f]`` with ``p``,
    ``k`` spatial positions, ``c`` the input channels of ``f``'s group; ``kernel (*kernel_size,
    channels // groups, filters)``. ``padding``: ``'valid'``, ``'same'`` (TensorFlow's split:
    ``floor(total/2)`` before, the rest after) or ``'causal'`` (1-D: ``d * (k - 1)`` zeros before).
    ``spec``: the layer's configuration (a linen ``Conv*D``)."""
    channels = input_channels(spec, inputs)
    want = kernel_shape(spec, channels)
    if tuple(kernel.shape) != want:
        raise ValueError(
            f"`inputs`: {channels} channels need a kernel of shape {want}; the layer has {tuple(kernel.shape)}."
        )
    rank, first = spec.rank, check_data_format(spec.data_format) == "channels_first"
    sizes = normalize_tuple(spec.kernel_size, rank, "kernel_size")
    dilation = normalize_tuple(spec.dilation_rate, rank, "dilation_rate")
    padding = spec.padding.lower()
    pads = [(dilation[0] * (sizes[0] - 1), 0)] if padding == "causal" else padding.upper()
    s = _SPATIAL[rank]
    layout = f"NC{s}" if first else f"N{s}C"
    y = jax.lax.conv_general_dilated(
        inputs,
        kernel.astype(inputs.dtype),
        normalize_tuple(spec.strides, rank, "strides"),
        pads,
        rhs_dilation=dilation,
        dimension_numbers=(layout, f"{s}IO", layout),
        feature_group_count=spec.groups,
    )
    if bias is not None:
        y = y + jnp.reshape(bias, (-1,) + (1,) * rank if first else (-1,)).astype(y.dtype)
    return activations.get(spec.activation)(y)


class _Conv(DropMask, _Weighted, nn.Module):
    """A Keras convolution layer of ``rank`` spatial axes (see :func:`conv`); Keras's arguments
    in Keras's order, ``param_dtype`` (not in Keras) the parameters' dtype."""

    rank: ClassVar[int]  # set by each subclass: the spatial axes
    filters: int
    kernel_size: int | Sequence[int]
    strides: int | Sequence[int] = 1
    padding: str = "valid"
    data_format: str = "channels_last"
    dilation_rate: int | Sequence[int] = 1
    groups: int = 1
    activation: Any = None
    use_bias: bool = True
    kernel_initializer: Any = "glorot_uniform"
    bias_initializer: Any = "zeros"
    kernel_regularizer: Any = None
    bias_regularizer: Any = None
    activity_regularizer: Any = None
    kernel_constraint: Any = None
    bias_constraint: Any = None
    param_dtype: Any = jnp.float32

    weight_args = (("kernel", "kernel"), ("bias", "bias"))

    def __post_init__(self):
        check_conv_args(self)
        self._check_args()
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs):
        kernel = self._weight("kernel", "kernel", kernel_shape(self, input_channels(self, inputs)))
        bias = self._weight("bias", "bias", (self.filters,)) if self.use_bias else None
        return self._activity(conv(self, inputs, kernel, bias))


class Conv1D(_Conv):
    """1-D convolution over time: ``(batch, steps, channels) -> (batch, new_steps, filters)``
    (channels first: ``(batch, channels, steps)``); ``padding='causal'`` keeps step ``t`` from
    seeing later steps. See :func:`conv`."""

    rank = 1


class Conv2D(_Conv):
    """2-D convolution: ``(batch, rows, cols, channels) -> (batch, new_rows, new_cols, filters)``
    (channels first: ``(batch, channels, rows, cols)``). See :func:`conv`."""

    rank = 2


class Conv3D(_Conv):
    """3-D convolution: ``(batch, d1, d2, d3, channels) -> (batch, n1, n2, n3, filters)``
    (channels first: ``(batch, channels, d1, d2, d3)``). See :func:`conv`."""

    rank = 3
