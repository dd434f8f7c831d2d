"""Keras's activation layers with arguments, as Flax linen modules without parameters: ``ReLU``,
``LeakyReLU``, ``Softmax``. Each passes a mask through unchanged (Keras 2 and 3). The NNX twins
(:mod:`rnnjax.nnx.keras_layers`) call these modules.

Sources: ``keras/src/layers/activations/{relu,leaky_relu,softmax}.py`` and
``keras/src/activations/activations.py`` (``ReLU.static_call``) for Keras 3;
``tf_keras/layers/activation/{relu,leaky_relu,softmax}.py`` and ``tf_keras/backend.py::relu``
for Keras 2.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnnjax.layers.protocol import PassMask, check_keras_version


def _non_negative(value, argument: str, allow_none: bool = False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0:
        raise ValueError(
            f"`{argument}`: expected a non-negative number{' or None' if allow_none else ''}, got {value!r}."
        )


def relu(x, negative_slope: float = 0.0, max_value: float | None = None, threshold: float = 0.0):
    """Keras's ``relu`` (the same in Keras 2 and 3)::

        y = clip(x * [x > threshold], 0, max_value) - negative_slope * relu(threshold - x)

    (with ``threshold == 0``: ``clip(relu(x), 0, max_value)``; with only a slope: the leaky ReLU
    ``where(x >= 0, x, negative_slope * x)``)."""
    if negative_slope != 0.0 and max_value is None and threshold == 0:
        return jax.nn.leaky_relu(x, negative_slope)
    y = jnp.where(x > threshold, x, jnp.zeros((), x.dtype)) if threshold != 0 else jax.nn.relu(x)
    if max_value is not None:
        y = jnp.clip(y, 0.0, max_value).astype(x.dtype)
    if negative_slope != 0.0:
        y = y - jnp.asarray(negative_slope, x.dtype) * jax.nn.relu(threshold - x)
    return y


class ReLU(PassMask, nn.Module):
    """Rectified linear unit with a cap, a threshold and a slope below it:
    ``y = clip(x * [x > threshold], 0, max_value) - negative_slope * relu(threshold - x)``
    (see :func:`relu`); all three arguments non-negative (``max_value`` may be None: no cap)."""

    max_value: float | None = None
    negative_slope: float = 0.0
    threshold: float = 0.0

    def __post_init__(self):
        _non_negative(self.max_value, "max_value", allow_none=True)
        _non_negative(self.negative_slope, "negative_slope")
        _non_negative(self.threshold, "threshold")
        super().__post_init__()

    def __call__(self, inputs):
        return relu(inputs, self.negative_slope, self.max_value, self.threshold)


class LeakyReLU(PassMask, nn.Module):
    """``y = x`` for ``x >= 0``, ``negative_slope * x`` below (Keras 3's name; Keras 2 called the
    slope ``alpha``, accepted as an alias). Default slope 0.3 in both."""

    negative_slope: float = 0.3
    alpha: float | None = None

    def __post_init__(self):
        _non_negative(self.negative_slope, "negative_slope")
        _non_negative(self.alpha, "alpha", allow_none=True)
        if self.alpha is not None and self.negative_slope not in (0.3, self.alpha):
            raise ValueError(
                f"`alpha`: Keras 2's name for `negative_slope`; got both alpha={self.alpha!r} and "
                f"negative_slope={self.negative_slope!r}: give one."
            )
        super().__post_init__()

    @property
    def slope(self) -> float:
        return self.negative_slope if self.alpha is None else self.alpha

    def __call__(self, inputs):
        return jax.nn.leaky_relu(inputs, self.slope)


def _large_negative(dtype, keras_version: int) -> float:
    if jnp.dtype(dtype) == jnp.float16:
        return -30000.0 if keras_version == 3 else float(jnp.finfo(jnp.float16).min) / 2.0
    return -1e9


def check_broadcast_mask(mask, inputs, layer: str):
    """A mask that broadcasts against ``inputs`` with its axes aligned on the right (Keras 3's check)."""
    shape, ishape = tuple(getattr(mask, "shape", ())), tuple(inputs.shape)
    if (
        not hasattr(mask, "shape")
        or len(shape) > len(ishape)
        or any(m not in (1, i) for m, i in zip(shape[::-1], ishape[::-1]))
    ):
        raise ValueError(
            f"`mask`: {layer} needs a mask that broadcasts against the inputs (aligned on the last axis, each size "
            f"1 or the input's); got shape {shape or type(mask).__name__} for inputs of shape {ishape}."
        )


def masked_softmax(x, axis, mask=None, keras_version: int = 2, robust_masking: bool = False):
    """``softmax(x)`` over ``axis`` (an int or a tuple of axes), the masked entries left out:

    * Keras 3: ``y = where(m, softmax(where(m, x, -1e9)), 0)`` (a non-boolean mask means ``m > 0.5``);
    * Keras 2: ``y = softmax(x + (1 - m) * -1e9)`` (``robust_masking``: ``softmax(where(m, x, -1e9))``);
      masked entries are not zeroed, so a row masked everywhere stays ``softmax(x)``.

    ``-1e9`` is ``-3e4`` (Keras 3) or ``finfo(float16).min / 2`` (Keras 2) for float16."""
    if mask is None:
        return jax.nn.softmax(x, axis=axis)
    check_broadcast_mask(mask, x, "Softmax")
    big = jnp.asarray(_large_negative(x.dtype, keras_version), x.dtype)
    if keras_version == 2 and not robust_masking:
        return jax.nn.softmax(x + (1 - jnp.asarray(mask).astype(x.dtype)) * big, axis=axis)
    keep = mask if mask.dtype == jnp.bool_ else mask > 0.5
    y = jax.nn.softmax(jnp.where(keep, x, big), axis=axis)
    return y if keras_version == 2 else jnp.where(keep, y, jnp.zeros((), y.dtype))


class Softmax(PassMask, nn.Module):
    """``y = exp(x) / sum_axis exp(x)`` over ``axis`` (an int or a tuple of axes). A call's
    ``mask`` (broadcasting against the inputs from the right, e.g. ``(batch, 1, Tv)`` scores)
    leaves entries out, by the rule of ``keras_version`` (see :func:`masked_softmax`);
    ``robust_masking`` is tf-keras's option (Keras 2 only)."""

    axis: int | Sequence[int] = -1
    robust_masking: bool = False
    keras_version: int = 2

    def __post_init__(self):
        check_keras_version(self.keras_version)
        axes = self.axis if isinstance(self.axis, (tuple, list)) else (self.axis,)
        if not axes or any(isinstance(a, bool) or not isinstance(a, numbers.Integral) for a in axes):
            raise ValueError(f"`axis`: expected an integer or a tuple of integers, got {self.axis!r}.")
        if self.robust_masking and self.keras_version == 3:
            raise ValueError(
                "`robust_masking`: a tf-keras (Keras 2) option; Keras 3 always masks that way. "
                "Leave it False with keras_version=3."
            )
        super().__post_init__()

    def __call__(self, inputs, *, mask=None):
        axis = tuple(self.axis) if isinstance(self.axis, (tuple, list)) else self.axis
        return masked_softmax(inputs, axis, mask, self.keras_version, self.robust_masking)
