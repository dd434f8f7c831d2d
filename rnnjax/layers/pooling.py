"""Keras's pooling layers as Flax linen modules without parameters: ``MaxPooling1D/2D``,
``AveragePooling1D/2D`` (windows) and ``GlobalMaxPooling1D/2D``, ``GlobalAveragePooling1D/2D``
(over all positions). Their computations are :func:`pool` and :func:`global_pool`.

Masks: only ``GlobalAveragePooling1D`` reads one (it averages the unmasked steps); no pooling
layer's output has a mask. Sources: ``keras/src/layers/pooling/*.py`` and
``keras/src/backend/jax/nn.py::average_pool`` (Keras 3), ``tf_keras/layers/pooling/*.py``
(Keras 2); both average a ``'same'`` window over its real (not padded) entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnnjax.functional.conv import check_data_format, check_padding, normalize_tuple
from rnnjax.layers.protocol import DropMask


def _spatial_axes(rank: int, data_format: str, ndim: int, layer: str) -> tuple:
    if ndim != rank + 2:
        what = "(batch, channels, *spatial)" if data_format == "channels_first" else "(batch, *spatial, channels)"
        raise ValueError(f"`inputs`: {layer} expects an array {what} ({rank + 2} axes), got {ndim} axes.")
    start = 2 if data_format == "channels_first" else 1
    return tuple(range(start, start + rank))


def pool(inputs, mode: str, rank: int, pool_size, strides, padding: str, data_format: str, layer: str = "pooling"):
    """Max (``mode='max'``) or average pooling over the ``rank`` spatial axes: windows of
    ``pool_size`` every ``strides`` (``None``: ``pool_size``); ``'same'`` pads as TensorFlow does
    (``ceil(n / s)`` outputs) and the average divides by the real entries of each window."""
    fmt = check_data_format(data_format)
    axes = _spatial_axes(rank, fmt, inputs.ndim, layer)
    size = normalize_tuple(pool_size, rank, "pool_size")
    step = size if strides is None else normalize_tuple(strides, rank, "strides")
    window, stride = [1] * inputs.ndim, [1] * inputs.ndim
    for a, k, s in zip(axes, size, step):
        window[a], stride[a] = k, s
    pad = check_padding(padding).upper()
    if any(inputs.shape[a] < k for a, k in zip(axes, size)) and pad == "VALID":
        raise ValueError(
            f"`pool_size`: {size} is larger than the inputs' spatial sizes "
            f"{tuple(inputs.shape[a] for a in axes)} with padding='valid'."
        )
    if mode == "max":
        return jax.lax.reduce_window(inputs, -jnp.inf, jax.lax.max, window, stride, pad)
    total = jax.lax.reduce_window(inputs, 0.0, jax.lax.add, window, stride, pad)
    ones = jnp.ones([inputs.shape[a] if a in axes else 1 for a in range(inputs.ndim)], inputs.dtype)
    return total / jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, stride, pad)


class _Pooling(DropMask, nn.Module):
    rank: ClassVar[int]  # set by each subclass: the spatial axes, "max" or "average"
    mode: ClassVar[str]
    pool_size: int | Sequence[int] = 2
    strides: int | Sequence[int] | None = None
    padding: str = "valid"
    data_format: str = "channels_last"

    def __post_init__(self):
        normalize_tuple(self.pool_size, self.rank, "pool_size")
        if self.strides is not None:
            normalize_tuple(self.strides, self.rank, "strides")
        check_padding(self.padding)
        check_data_format(self.data_format)
        super().__post_init__()

    def __call__(self, inputs):
        return pool(
            inputs,
            self.mode,
            self.rank,
            self.pool_size,
            self.strides,
            self.padding,
            self.data_format,
            type(self).__name__,
        )


class MaxPooling1D(_Pooling):
    """The maximum over windows of ``pool_size`` steps, every ``strides`` (default ``pool_size``):
    ``(batch, steps, features) -> (batch, new_steps, features)``. See :func:`pool`."""

    rank, mode = 1, "max"


class AveragePooling1D(_Pooling):
    """The mean over windows of ``pool_size`` steps (see :class:`MaxPooling1D`, :func:`pool`)."""

    rank, mode = 1, "average"


class MaxPooling2D(_Pooling):
    """The maximum over ``pool_size`` windows of rows and columns: ``(batch, rows, cols,
    channels) -> (batch, new_rows, new_cols, channels)`` (``pool_size=2`` is ``(2, 2)``). See :func:`pool`."""

    rank, mode = 2, "max"


class AveragePooling2D(_Pooling):
    """The mean over ``pool_size`` windows of rows and columns (see :class:`MaxPooling2D`, :func:`pool`)."""

    rank, mode = 2, "average"


def global_pool(inputs, mode: str, rank: int, data_format: str, keepdims: bool, mask=None, layer: str = "pooling"):
    """The max or mean over all ``rank`` spatial axes: ``(batch, *spatial, channels) -> (batch,
    channels)`` (``keepdims``: spatial axes of size 1). The 1-D mean with a ``(batch, steps)`` mask
    is ``sum_t m[b,t] x[b,t] / sum_t m[b,t]`` (Keras); other modes ignore a mask."""
    fmt = check_data_format(data_format)
    axes = _spatial_axes(rank, fmt, getattr(inputs, "ndim", 0), layer)
    if mode == "max":
        return jnp.max(inputs, axis=axes, keepdims=keepdims)
    if mask is None or rank != 1:
        return jnp.mean(inputs, axis=axes, keepdims=keepdims)
    m = jnp.expand_dims(jnp.asarray(mask, bool), 1 if fmt == "channels_first" else 2)
    # where, not Keras's inputs * mask: a masked step's NaN or inf must not reach the mean
    total = jnp.sum(jnp.where(m, inputs, jnp.zeros((), inputs.dtype)), axis=axes, keepdims=keepdims)
    return total / jnp.sum(m.astype(inputs.dtype), axis=axes, keepdims=keepdims)


class _GlobalPooling(DropMask, nn.Module):
    rank: ClassVar[int]  # set by each subclass: the spatial axes, "max" or "average"
    mode: ClassVar[str]
    data_format: str = "channels_last"
    keepdims: bool = False

    def __post_init__(self):
        check_data_format(self.data_format)
        super().__post_init__()

    def __call__(self, inputs):
        return global_pool(inputs, self.mode, self.rank, self.data_format, self.keepdims, layer=type(self).__name__)


class GlobalMaxPooling1D(_GlobalPooling):
    """``(batch, steps, features) -> (batch, features)``: the maximum over the steps (a mask is
    ignored, as in Keras). See :func:`global_pool`."""

    rank, mode = 1, "max"


class GlobalAveragePooling1D(_GlobalPooling):
    """``(batch, steps, features) -> (batch, features)``: the mean over the unmasked steps (all
    steps without a mask). See :func:`global_pool`."""

    rank, mode = 1, "average"

    def __call__(self, inputs, *, mask=None):
        return global_pool(inputs, self.mode, self.rank, self.data_format, self.keepdims, mask, type(self).__name__)


class GlobalMaxPooling2D(_GlobalPooling):
    """``(batch, rows, cols, channels) -> (batch, channels)``: the maximum over rows and columns."""

    rank, mode = 2, "max"


class GlobalAveragePooling2D(_GlobalPooling):
    """``(batch, rows, cols, channels) -> (batch, channels)``: the mean over rows and columns."""

    rank, mode = 2, "average"
