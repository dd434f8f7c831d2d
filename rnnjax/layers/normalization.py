"""Keras's ``BatchNormalization`` (inference) and ``LayerNormalization`` as Flax linen modules;
their computations :func:`batch_norm` and :func:`layer_norm` are shared with the NNX twins
(:mod:`rnnjax.nnx.keras_layers`). Both pass a mask through unchanged.

Sources: ``keras/src/layers/normalization/{batch,layer}_normalization.py`` (Keras 3),
``tf_keras/layers/normalization/{batch,layer}_normalization.py`` (Keras 2).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnnjax.layers.protocol import PassMask


def _broadcast(value, ndim: int, axes: Sequence[int]):
    shape = [1] * ndim
    for a, n in zip(axes, value.shape):
        shape[a] = n
    return value.reshape(shape)


def check_axis(axis, inputs, layer: str) -> tuple:
    """``axis`` (an int or a sequence of ints) as sorted non-negative axes of ``inputs``."""
    axes = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    ndim = getattr(inputs, "ndim", 0)
    if not axes or any(
        isinstance(a, bool) or not isinstance(a, numbers.Integral) or not -ndim <= int(a) < ndim for a in axes
    ):
        raise ValueError(
            f"`axis`: {layer} got axis={axis!r}, not an axis of inputs of shape "
            f"{getattr(inputs, 'shape', type(inputs).__name__)}."
        )
    return tuple(sorted(int(a) % ndim for a in axes))


def batch_norm(inputs, axis: int, epsilon: float, mean, variance, gamma=None, beta=None):
    """``y = gamma * (x - mean) / sqrt(variance + epsilon) + beta`` with the moving statistics,
    each of shape ``(inputs.shape[axis],)`` broadcast along ``axis`` (``gamma``/``beta`` None:
    1 / 0)."""
    axes = check_axis(axis, inputs, "BatchNormalization")
    y = (inputs - _broadcast(mean, inputs.ndim, axes)) * jax.lax.rsqrt(
        _broadcast(variance, inputs.ndim, axes) + epsilon
    )
    if gamma is not None:
        y = y * _broadcast(gamma, inputs.ndim, axes)
    if beta is not None:
        y = y + _broadcast(beta, inputs.ndim, axes)
    return y.astype(inputs.dtype)


class BatchNormalization(PassMask, nn.Module):
    """Keras's ``BatchNormalization`` in inference: ``y = gamma * (x - moving_mean) /
    sqrt(moving_variance + epsilon) + beta`` along ``axis`` (see :func:`batch_norm`). The
    statistics are frozen (the ``'batch_stats'`` collection, never updated, also with
    ``training=True``): a model loaded from Keras predicts as Keras does."""

    axis: int = -1
    epsilon: float = 1e-3
    center: bool = True
    scale: bool = True

    def __post_init__(self):
        if isinstance(self.axis, bool) or not isinstance(self.axis, numbers.Integral):
            raise ValueError(f"`axis`: BatchNormalization normalizes along one axis (an integer), got {self.axis!r}.")
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs):
        n = inputs.shape[check_axis(self.axis, inputs, "BatchNormalization")[0]]
        mean = self.variable("batch_stats", "moving_mean", lambda: jnp.zeros((n,))).value
        var = self.variable("batch_stats", "moving_variance", lambda: jnp.ones((n,))).value
        gamma = self.param("gamma", nn.initializers.ones, (n,)) if self.scale else None
        beta = self.param("beta", nn.initializers.zeros, (n,)) if self.center else None
        return batch_norm(inputs, self.axis, self.epsilon, mean, var, gamma, beta)


def layer_norm(inputs, axis, epsilon: float, gamma=None, beta=None, rms_scaling: bool = False):
    """``y = gamma * (x - mean) / sqrt(var + epsilon) + beta``, the moments over ``axis`` (a tuple
    of axes; computed in at least float32), ``gamma``/``beta`` of those axes' shape (None: 1 / 0).
    ``rms_scaling`` (Keras 3): ``y = gamma * x / sqrt(var + epsilon)``, ``x`` not centred but
    divided by its standard deviation, as every Keras 3 version computes it (not the mean square
    its name suggests; ``keras/src/ops/nn.py::_layer_normalization``)."""
    axes = check_axis(axis, inputs, "LayerNormalization")
    x = inputs.astype(jnp.promote_types(inputs.dtype, jnp.float32))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    y = (x if rms_scaling else x - mean) * jax.lax.rsqrt(var + epsilon)
    if gamma is not None:
        y = y * _broadcast(gamma, inputs.ndim, axes)
    if beta is not None:
        y = y + _broadcast(beta, inputs.ndim, axes)
    return y.astype(inputs.dtype)


def layer_norm_shape(axis, inputs) -> tuple:
    """The shape of ``gamma``/``beta``: the normalized axes' sizes."""
    return tuple(inputs.shape[a] for a in check_axis(axis, inputs, "LayerNormalization"))


class LayerNormalization(PassMask, nn.Module):
    """Keras's ``LayerNormalization`` (see :func:`layer_norm`): the moments over ``axis`` (an int
    or a tuple of axes), ``gamma``/``beta`` of the shape of those axes. ``rms_scaling`` (Keras 3)
    divides the uncentred inputs by their standard deviation and keeps ``gamma`` only."""

    axis: int | Sequence[int] = -1
    epsilon: float = 1e-3
    center: bool = True
    scale: bool = True
    rms_scaling: bool = False

    @nn.compact
    def __call__(self, inputs):
        shape = layer_norm_shape(self.axis, inputs)
        gamma = self.param("gamma", nn.initializers.ones, shape) if self.scale or self.rms_scaling else None
        beta = self.param("beta", nn.initializers.zeros, shape) if self.center and not self.rms_scaling else None
        return layer_norm(inputs, self.axis, self.epsilon, gamma, beta, self.rms_scaling)
