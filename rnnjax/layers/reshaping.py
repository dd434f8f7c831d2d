"""Keras's reshaping layers, as Flax linen modules without parameters: ``RepeatVector``,
``Reshape``, ``Permute``, ``Flatten``, ``ZeroPadding1D``, ``Cropping1D``, ``UpSampling1D``.

Axis 0 is the batch axis, as in Keras. None of them passes a mask on (``compute_mask`` returns
``None``): each changes or removes the time axis, and Keras 3 drops the mask there with a
warning (Keras 2 refused such a model). The NNX twins (:mod:`rnnjax.nnx.keras_layers`) call these
modules. Sources: ``keras/src/layers/reshaping/*.py`` (Keras 3) and
``tf_keras/layers/reshaping/*.py`` (Keras 2), which compute the same.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from rnnjax.functional.conv import check_data_format
from rnnjax.functional.core import check_units
from rnnjax.layers.protocol import DropMask


def check_rank(inputs, ndim: int, layer: str, what: str):
    """``inputs`` must be an array of ``ndim`` axes (``what`` names them in the message)."""
    if getattr(inputs, "ndim", None) != ndim:
        raise ValueError(
            f"`inputs`: {layer} expects an array {what} ({ndim} axes), got shape "
            f"{getattr(inputs, 'shape', type(inputs).__name__)}."
        )


def pair(value, argument: str) -> tuple:
    """An int ``n`` -> ``(n, n)``; a pair of non-negative ints as a tuple (Keras's ``standardize_tuple``
    with ``allow_zero``)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value, value)
    try:
        out = tuple(value)
    except TypeError:
        out = ()
    if len(out) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0 for v in out):
        raise ValueError(f"`{argument}`: expected a non-negative integer or a pair of them, got {value!r}.")
    return tuple(int(v) for v in out)


class RepeatVector(DropMask, nn.Module):
    """Repeats the input ``n`` times: ``(batch, features) -> (batch, n, features)``, ``y[b, t, :] =
    x[b, :]`` (the encoder -> decoder bridge of seq2seq models)."""

    n: int

    def __post_init__(self):
        check_units(self.n, "n")
        super().__post_init__()

    def __call__(self, inputs):
        check_rank(inputs, 2, "RepeatVector", "(batch, features)")
        return jnp.repeat(inputs[:, None, :], self.n, axis=1)


class Reshape(DropMask, nn.Module):
    """``(batch, *s) -> (batch, *target_shape)`` in row-major order; one entry of
    ``target_shape`` may be ``-1`` (the size that makes the number of values fit)."""

    target_shape: Sequence[int]

    def __post_init__(self):
        shape = self.target_shape
        ok = isinstance(shape, (tuple, list)) and all(
            isinstance(d, numbers.Integral) and not isinstance(d, bool) and (int(d) > 0 or d == -1) for d in shape
        )
        if not ok or sum(d == -1 for d in shape) > 1:
            raise ValueError(
                f"`target_shape`: expected a tuple of positive integers with at most one -1, got {shape!r}."
            )
        super().__post_init__()

    def __call__(self, inputs):
        sizes = tuple(getattr(inputs, "shape", ())[1:])
        size = math.prod(sizes)
        known = math.prod(d for d in self.target_shape if d != -1)
        fits = size % known == 0 if -1 in self.target_shape else size == known
        if getattr(inputs, "ndim", 0) < 1 or not fits:
            raise ValueError(
                f"`inputs`: a sample of shape {sizes} ({size} values) cannot be reshaped to target_shape "
                f"{tuple(self.target_shape)}."
            )
        return jnp.reshape(inputs, (inputs.shape[0], *self.target_shape))


class Permute(DropMask, nn.Module):
    """Permutes the non-batch axes: ``y = transpose(x, (0, *dims))``; ``dims`` is a permutation
    of ``1..n`` (1-indexed, as in Keras), e.g. ``(2, 1)`` swaps time and features."""

    dims: Sequence[int]

    def __post_init__(self):
        dims = self.dims
        if not isinstance(dims, (tuple, list)) or sorted(dims) != list(range(1, len(dims) + 1)):
            raise ValueError(f"`dims`: expected a permutation of 1..n (the non-batch axes), got {dims!r}.")
        super().__post_init__()

    def __call__(self, inputs):
        check_rank(inputs, len(self.dims) + 1, "Permute", f"(batch, {len(self.dims)} axes)")
        return jnp.transpose(inputs, (0, *self.dims))


class Flatten(DropMask, nn.Module):
    """``(batch, ...) -> (batch, prod(...))`` in row-major order. ``channels_first`` inputs
    ``(batch, channels, *spatial)`` are first moved to channels last, so the flattened order is
    the same for both formats (Keras)."""

    data_format: str = "channels_last"

    def __post_init__(self):
        check_data_format(self.data_format)
        super().__post_init__()

    def __call__(self, inputs):
        if check_data_format(self.data_format) == "channels_first" and inputs.ndim > 2:
            inputs = jnp.moveaxis(inputs, 1, -1)
        return inputs.reshape(inputs.shape[:1] + (-1,))


class ZeroPadding1D(DropMask, nn.Module):
    """Zeros before and after the steps: ``(batch, T, features) -> (batch, left + T + right,
    features)``. ``data_format`` ``'channels_first'`` (Keras 3 only) pads the last axis of
    ``(batch, features, T)``.

    Args:
      padding: an integer (both sides) or a tuple ``(before, after)``: how many zero steps to add.
    """

    padding: int | Sequence[int] = 1
    data_format: str = "channels_last"

    def __post_init__(self):
        pair(self.padding, "padding")
        check_data_format(self.data_format)
        super().__post_init__()

    def __call__(self, inputs):
        check_rank(inputs, 3, "ZeroPadding1D", "(batch, steps, features)")
        pads = [(0, 0)] * 3
        pads[2 if check_data_format(self.data_format) == "channels_first" else 1] = pair(self.padding, "padding")
        return jnp.pad(inputs, pads)


class Cropping1D(DropMask, nn.Module):
    """Drops steps at the start and end: ``(batch, T, features) -> (batch, T - left - right,
    features)``; ``cropping`` an int (both sides) or ``(left, right)``, less than ``T`` in all."""

    cropping: int | Sequence[int] = (1, 1)

    def __post_init__(self):
        pair(self.cropping, "cropping")
        super().__post_init__()

    def __call__(self, inputs):
        check_rank(inputs, 3, "Cropping1D", "(batch, steps, features)")
        left, right = pair(self.cropping, "cropping")
        if left + right >= inputs.shape[1]:
            raise ValueError(
                f"`cropping`: {(left, right)} removes {left + right} steps, but the inputs have {inputs.shape[1]} "
                f"(shape {tuple(inputs.shape)}); at least one step must remain."
            )
        return inputs[:, left : inputs.shape[1] - right, :]


class UpSampling1D(DropMask, nn.Module):
    """Repeats each step ``size`` times: ``(batch, T, features) -> (batch, T * size, features)``,
    ``y[:, t] = x[:, t // size]``."""

    size: int = 2

    def __post_init__(self):
        check_units(self.size, "size")
        super().__post_init__()

    def __call__(self, inputs):
        check_rank(inputs, 3, "UpSampling1D", "(batch, steps, features)")
        return jnp.repeat(inputs, self.size, axis=1)
