"""The non-recurrent layers Keras models put around recurrent ones, as Flax linen modules with
Keras's semantics, for models loaded from Keras files.

Each has Keras's ``compute_mask(inputs, mask)``: ``BatchNormalization`` and ``LayerNormalization``
pass a mask through; ``Conv1D``, the pooling layers and ``Flatten`` change or drop the time axis
and drop the mask (Keras 3 drops it with a warning; Keras 2 refused to build such a model, so no
Keras 2 file has one); ``GlobalAveragePooling1D`` averages over the unmasked steps only. The
merges ``Concatenate`` and ``Add`` take a list of inputs (in a functional graph). Weights use
Keras's names and shapes (``kernel``, ``bias``, ``gamma``, ``beta``; the moving statistics of
``BatchNormalization`` in the ``'batch_stats'`` collection).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnnjax.functional import activations


class _DropMask:
    def compute_mask(self, inputs, mask=None):
        del inputs, mask
        return None


class _PassMask:
    def compute_mask(self, inputs, mask=None):
        del inputs
        return mask


def _conv_padding(padding: str, kernel: int, dilation: int):
    if padding == "causal":
        return [(dilation * (kernel - 1), 0)]
    return padding.upper()


class Conv1D(_DropMask, nn.Module):
    """1D convolution (cross-correlation) over time, Keras's ``Conv1D`` (``channels_last``).

    ``y[b, t, f] = activation(sum_{k, c} x[b, t*s + k*d - p, c] * kernel[k, c, f] + bias[f])``
    for inputs ``(batch, steps, channels)``; ``kernel (kernel_size, channels // groups, filters)``.
    ``padding``: ``'valid'`` (no padding), ``'same'`` (TensorFlow's split, extra on the right) or
    ``'causal'`` (``d * (kernel_size - 1)`` zeros on the left).
    """

    filters: int
    kernel_size: int
    strides: int = 1
    padding: str = "valid"
    dilation_rate: int = 1
    groups: int = 1
    activation: Any = None
    use_bias: bool = True

    @nn.compact
    def __call__(self, inputs):
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (self.kernel_size, inputs.shape[-1] // self.groups, self.filters))
        y = jax.lax.conv_general_dilated(
            inputs, kernel.astype(inputs.dtype), (self.strides,),
            _conv_padding(self.padding, self.kernel_size, self.dilation_rate),
            rhs_dilation=(self.dilation_rate,), dimension_numbers=("NWC", "WIO", "NWC"),
            feature_group_count=self.groups)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.filters,)).astype(y.dtype)
        return activations.get(self.activation)(y)


class Pooling1D(_DropMask, nn.Module):
    """``MaxPooling1D`` (``mode='max'``) / ``AveragePooling1D`` (``'average'``) over time:
    windows of ``pool_size`` steps every ``strides`` steps; ``'same'`` padding pads as
    TensorFlow does and the average counts only real steps. Inputs ``(batch, steps, channels)``
    (``channels_first``: ``(batch, channels, steps)``)."""

    mode: str
    pool_size: int = 2
    strides: Optional[int] = None
    padding: str = "valid"
    data_format: str = "channels_last"

    def __call__(self, inputs):
        axis = 1 if self.data_format == "channels_last" else 2
        window = [1] * inputs.ndim
        stride = [1] * inputs.ndim
        window[axis] = self.pool_size
        stride[axis] = self.strides or self.pool_size
        pad = self.padding.upper()
        if self.mode == "max":
            return jax.lax.reduce_window(inputs, -jnp.inf, jax.lax.max, window, stride, pad)
        total = jax.lax.reduce_window(inputs, 0.0, jax.lax.add, window, stride, pad)
        count = jax.lax.reduce_window(jnp.ones(inputs.shape[axis:axis + 1], inputs.dtype), 0.0, jax.lax.add,
                                      window[axis:axis + 1], stride[axis:axis + 1], pad)
        return total / count.reshape((-1,) + (1,) * (inputs.ndim - axis - 1))


class GlobalPooling1D(nn.Module):
    """``GlobalMaxPooling1D`` (``mode='max'``) / ``GlobalAveragePooling1D`` (``'average'``):
    ``(batch, steps, features) -> (batch, features)`` (``keepdims``: ``(batch, 1, features)``).
    The average uses the mask: ``sum_t m[b,t] x[b,t] / sum_t m[b,t]`` (Keras); the max ignores it.
    The output has no mask."""

    mode: str
    data_format: str = "channels_last"
    keepdims: bool = False

    def __call__(self, inputs, *, mask=None):
        axis = 1 if self.data_format == "channels_last" else 2
        if self.mode == "max":
            return jnp.max(inputs, axis=axis, keepdims=self.keepdims)
        if mask is None:
            return jnp.mean(inputs, axis=axis, keepdims=self.keepdims)
        m = mask[:, :, None] if axis == 1 else mask[:, None, :]
        # where, not Keras's inputs * mask: a masked step's NaN or inf must not reach the mean
        total = jnp.sum(jnp.where(m, inputs, jnp.zeros((), inputs.dtype)), axis=axis, keepdims=self.keepdims)
        return total / jnp.sum(m.astype(inputs.dtype), axis=axis, keepdims=self.keepdims)

    def compute_mask(self, inputs, mask=None):
        del inputs, mask
        return None


class Flatten(_DropMask, nn.Module):
    """``(batch, ...) -> (batch, prod(...))`` in row-major order (``channels_last``), the batch
    axis kept apart."""

    def __call__(self, inputs):
        return inputs.reshape(inputs.shape[:1] + (-1,))


class BatchNormalization(_PassMask, nn.Module):
    """Keras's ``BatchNormalization`` in inference: ``y = gamma * (x - moving_mean) /
    sqrt(moving_variance + epsilon) + beta`` along ``axis``. The statistics are frozen (the
    ``'batch_stats'`` collection, never updated, also with ``training=True``)."""

    axis: int = -1
    epsilon: float = 1e-3
    center: bool = True
    scale: bool = True

    @nn.compact
    def __call__(self, inputs):
        n = inputs.shape[self.axis]
        shape = [1] * inputs.ndim
        shape[self.axis] = n
        mean = self.variable("batch_stats", "moving_mean", lambda: jnp.zeros((n,))).value
        var = self.variable("batch_stats", "moving_variance", lambda: jnp.ones((n,))).value
        y = (inputs - mean.reshape(shape)) * jax.lax.rsqrt(var.reshape(shape) + self.epsilon)
        if self.scale:
            y = y * self.param("gamma", nn.initializers.ones, (n,)).reshape(shape)
        if self.center:
            y = y + self.param("beta", nn.initializers.zeros, (n,)).reshape(shape)
        return y.astype(inputs.dtype)


class LayerNormalization(_PassMask, nn.Module):
    """Keras's ``LayerNormalization``: ``y = gamma * (x - mean) / sqrt(var + epsilon) + beta``,
    the moments over ``axis`` (a tuple of axes), ``gamma``/``beta`` of the shape of those axes.
    ``rms_scaling`` (Keras 3): ``y = gamma * x / sqrt(mean(x^2) + epsilon)``."""

    axis: Sequence[int] = (-1,)
    epsilon: float = 1e-3
    center: bool = True
    scale: bool = True
    rms_scaling: bool = False

    @nn.compact
    def __call__(self, inputs):
        axes = tuple(a % inputs.ndim for a in self.axis)
        pshape = tuple(inputs.shape[a] for a in axes)
        bshape = [inputs.shape[a] if a in axes else 1 for a in range(inputs.ndim)]
        x = inputs.astype(jnp.promote_types(inputs.dtype, jnp.float32))
        if self.rms_scaling:
            y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=axes, keepdims=True) + self.epsilon)
        else:
            mean = jnp.mean(x, axis=axes, keepdims=True)
            var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
            y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
        if self.scale or self.rms_scaling:
            y = y * self.param("gamma", nn.initializers.ones, pshape).reshape(bshape)
        if self.center and not self.rms_scaling:
            y = y + self.param("beta", nn.initializers.zeros, pshape).reshape(bshape)
        return y.astype(inputs.dtype)


def _expand(mask, x):
    """``None`` (all steps) or a ``(batch, time)`` mask, as a boolean of ``x.shape[:2]``."""
    return jnp.ones(x.shape[:2], bool) if mask is None else mask


class Concatenate(nn.Module):
    """Concatenates a list of inputs along ``axis``. The output mask (inputs with a time axis):
    the inputs' masks (all-true where an input has none) combined with ``mask_rule`` ``'all'``
    (Keras 2: a step is kept where every input keeps it) or ``'any'`` (Keras 3)."""

    axis: int = -1
    mask_rule: str = "all"

    def __call__(self, inputs: Sequence):
        return jnp.concatenate(list(inputs), axis=self.axis)

    def compute_mask(self, inputs, mask=None):
        if mask is None or all(m is None for m in mask):
            return None
        masks = jnp.stack([_expand(m, x) for m, x in zip(mask, inputs)])
        return jnp.all(masks, axis=0) if self.mask_rule == "all" else jnp.any(masks, axis=0)


class Add(nn.Module):
    """The sum of a list of inputs of one shape; the output mask is the AND of the masks given
    (inputs without a mask are left out, as in Keras)."""

    def __call__(self, inputs: Sequence):
        out = inputs[0]
        for x in inputs[1:]:
            out = out + x
        return out

    def compute_mask(self, inputs, mask=None):
        del inputs
        given = [m for m in (mask or ()) if m is not None]
        return jnp.all(jnp.stack(given), axis=0) if given else None
