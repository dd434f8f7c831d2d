"""Keras's merge layers, as Flax linen modules without parameters: ``Add``, ``Subtract``,
``Multiply``, ``Average``, ``Maximum``, ``Minimum``, ``Concatenate``, ``Dot``.

One calling convention for every layer with several inputs (the attention layers too)::

    y = layer([x1, x2, ...], mask=[m1, m2, ...])     # a list of arrays; masks a list (None entries allowed)
    out_mask = layer.compute_mask([x1, x2, ...], [m1, m2, ...])

Inputs of lower rank get axes inserted after the batch axis (``(b, f)`` with ``(b, t, f)``:
``(b, 1, f)``), then broadcast, as Keras does. Where Keras 2 and 3 differ, ``keras_version``
says which rule to follow (default 2, rnnjax's Keras 2 defaults):

* the output mask: Keras 2 ANDs the masks given (``None`` for an input without one is left
  out); Keras 3 ORs them, and gives no mask unless every input has one
  (``tf_keras/layers/merging/base_merge.py``, ``keras/src/layers/merging/base_merge.py``);
* the values: Keras 3's ``Multiply`` reads a masked entry as 1, ``Maximum``/``Minimum`` as the
  other inputs' value, and where every input is masked the output is 0 (``Multiply``) or the
  masked entries' result (``keras/src/layers/merging/{multiply,base_merge}.py``); Keras 2 ignores
  masks in the values.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from rnnjax.layers.protocol import check_keras_version


def merge_inputs(layer: str, inputs, mask, count=None) -> tuple:
    """``(inputs, masks)`` as lists of one length; ``count`` (an int, or ``(low, high)``) is how
    many inputs ``layer`` takes."""
    if not isinstance(inputs, (list, tuple)) or not all(hasattr(x, "shape") for x in inputs):
        raise ValueError(f"`inputs`: {layer} takes a list of arrays, got {type(inputs).__name__}.")
    low, high = (count, count) if isinstance(count, int) else (count or (1, None))
    if len(inputs) < low or (high is not None and len(inputs) > high):
        want = f"{low}" if low == high else f"{low} to {high}" if high else f"at least {low}"
        raise ValueError(f"`inputs`: {layer} takes {want} arrays, got {len(inputs)}.")
    if mask is None:
        return list(inputs), [None] * len(inputs)
    if not isinstance(mask, (list, tuple)) or len(mask) > len(inputs):
        raise ValueError(
            f"`mask`: {layer} takes a list of masks, one per input (None entries allowed), got "
            + (
                f"{len(mask)} masks for {len(inputs)} inputs."
                if isinstance(mask, (list, tuple))
                else f"{type(mask).__name__}."
            )
        )
    return list(inputs), list(mask) + [None] * (len(inputs) - len(mask))


def _broadcastable(layer: str, inputs) -> list:
    """Keras's reshape for inputs of different ranks (axes inserted at 1), checked to broadcast."""
    top = max(x.ndim for x in inputs)
    out = [jnp.reshape(x, x.shape[:1] + (1,) * (top - x.ndim) + x.shape[1:]) for x in inputs]
    try:
        np.broadcast_shapes(*(x.shape for x in out))
    except ValueError:
        raise ValueError(
            f"`inputs`: {layer} merges arrays of one shape (or sizes 1 that broadcast); got shapes "
            f"{[tuple(x.shape) for x in inputs]}."
        ) from None
    return out


def merge_mask(masks, keras_version: int):
    """The output mask of an element-wise merge: Keras 2 ANDs the given masks; Keras 3 ORs them
    when every input has one, else none."""
    given = [m for m in masks if m is not None]
    if not given or (keras_version == 3 and len(given) < len(masks)):
        return None
    out = given[0]
    for m in given[1:]:
        out = jnp.logical_and(out, m) if keras_version == 2 else jnp.logical_or(out, m)
    return out


def _spread(mask, x):
    """A ``(batch, T)`` mask as a boolean of ``x``'s shape (Keras: ``broadcast_to(mask[..., None], x.shape)``)."""
    return None if mask is None else jnp.broadcast_to(jnp.asarray(mask, bool)[..., None], x.shape)


def _masked_extremum(op, xs, masks):
    """Keras 3's ``_apply_merge_op_and_or_mask``: a masked entry takes the running result's value
    (and the running result a masked entry's), masks ORed while every input has one."""
    out, out_mask = xs[0], _spread(masks[0], xs[0])
    for x, m in zip(xs[1:], masks[1:]):
        m = _spread(m, x)
        if m is not None:
            x = jnp.where(m, x, out)
        if out_mask is not None:
            out = jnp.where(out_mask, out, x)
        out_mask = jnp.logical_or(out_mask, m) if m is not None and out_mask is not None else None
        out = op(out, x)
    return out


def _masked_product(xs, masks):
    """Keras 3's ``Multiply``: a masked entry counts as 1; where no input keeps an entry (every
    input masked), the output is 0; only when every input has a mask."""
    spread = [_spread(m, x) for m, x in zip(masks, xs)]
    out: Any = None
    keep: Any = None
    for x, m in zip(xs, spread):
        if m is not None:
            x = jnp.where(m, x, jnp.ones((), x.dtype))
            keep = m if keep is None else jnp.logical_or(keep, m)
        out = x if out is None else out * x
    if all(m is not None for m in spread):
        out = jnp.where(keep, out, jnp.zeros((), out.dtype))
    return out


class _Merge(nn.Module):
    """An element-wise merge of a list of inputs (see the module docstring)."""

    # how many inputs: None (at least 1), an int, or (low, high)
    count: ClassVar[None | int | tuple[int, int]] = None

    def __post_init__(self):
        check_keras_version(self.keras_version)
        super().__post_init__()

    def __call__(self, inputs: Sequence, *, mask=None):
        name = type(self).__name__
        xs, masks = merge_inputs(name, inputs, mask, self.count)
        same_rank = len({x.ndim for x in xs}) == 1
        xs = _broadcastable(name, xs)
        if self.keras_version == 3 and not same_rank:
            masks = [None] * len(xs)  # Keras 3 reads masks off the tensors, which its reshape replaced
        return self._merge(xs, masks)

    def compute_mask(self, inputs, mask=None):
        """The merged mask (:func:`merge_mask`), or None."""
        if mask is None:
            return None
        _, masks = merge_inputs(type(self).__name__, inputs, mask, self.count)
        return merge_mask(masks, self.keras_version)


class Add(_Merge):
    """``y = x_1 + x_2 + ...``."""

    keras_version: int = 2

    def _merge(self, xs, masks):
        del masks
        return sum(xs[1:], xs[0])


class Subtract(_Merge):
    """``y = x_1 - x_2`` (exactly two inputs)."""

    keras_version: int = 2
    count = 2

    def _merge(self, xs, masks):
        del masks
        return xs[0] - xs[1]


class Average(_Merge):
    """``y = (x_1 + ... + x_n) / n``."""

    keras_version: int = 2

    def _merge(self, xs, masks):
        del masks
        return sum(xs[1:], xs[0]) / len(xs)


class Multiply(_Merge):
    """``y = x_1 * x_2 * ...`` (Keras 3: masked entries count as 1, see the module docstring)."""

    keras_version: int = 2

    def _merge(self, xs, masks):
        if self.keras_version == 3 and any(m is not None for m in masks):
            return _masked_product(xs, masks)
        return functools.reduce(jnp.multiply, xs)


class _Extremum(_Merge):
    op: ClassVar[Callable[..., jnp.ndarray]]  # set by each subclass: jnp.maximum / jnp.minimum

    def _merge(self, xs, masks):
        op = type(self).op
        if self.keras_version == 3:
            return _masked_extremum(op, xs, masks)
        return functools.reduce(op, xs)


class Maximum(_Extremum):
    """``y = max(x_1, x_2, ...)`` element-wise (Keras 3: masked entries left out)."""

    keras_version: int = 2
    op = staticmethod(jnp.maximum)


class Minimum(_Extremum):
    """``y = min(x_1, x_2, ...)`` element-wise (Keras 3: masked entries left out)."""

    keras_version: int = 2
    op = staticmethod(jnp.minimum)


class Concatenate(nn.Module):
    """Concatenates a list of inputs along ``axis``. The output mask (when an input has one):
    each input's mask spread over its shape (all-true for an input without one), concatenated
    along ``axis``, then reduced over the last axis with AND (Keras 2) or OR (Keras 3)
    (``tf_keras/layers/merging/concatenate.py``, ``keras/src/layers/merging/concatenate.py``)."""

    axis: int = -1
    keras_version: int = 2

    def __post_init__(self):
        check_keras_version(self.keras_version)
        if isinstance(self.axis, bool) or not isinstance(self.axis, numbers.Integral):
            raise ValueError(f"`axis`: expected an integer, got {self.axis!r}.")
        super().__post_init__()

    def __call__(self, inputs: Sequence, *, mask=None):
        del mask  # the values do not depend on it
        xs, _ = merge_inputs("Concatenate", inputs, None)
        ranks = {x.ndim for x in xs}
        axis = self.axis % max(ranks) if ranks else self.axis
        if len(ranks) != 1 or any(
            x.shape[:axis] + x.shape[axis + 1 :] != xs[0].shape[:axis] + xs[0].shape[axis + 1 :] for x in xs
        ):
            raise ValueError(
                f"`inputs`: Concatenate needs arrays of one shape but along axis={self.axis}; got "
                f"shapes {[tuple(x.shape) for x in xs]}."
            )
        return jnp.concatenate(xs, axis=self.axis)

    def compute_mask(self, inputs, mask=None):
        """The inputs' masks spread over their shapes, concatenated, reduced over the last axis."""
        if mask is None:
            return None
        xs, masks = merge_inputs("Concatenate", inputs, mask)
        if all(m is None for m in masks):
            return None
        full = [
            jnp.ones(x.shape, bool)
            if m is None
            else jnp.broadcast_to(jnp.reshape(jnp.asarray(m, bool), m.shape + (1,) * (x.ndim - m.ndim)), x.shape)
            for x, m in zip(xs, masks)
        ]
        joined = jnp.concatenate(full, axis=self.axis)
        return jnp.all(joined, axis=-1) if self.keras_version == 2 else jnp.any(joined, axis=-1)


def _l2_normalize(x, axis, keras_version):
    """``x / sqrt(max(sum x^2, eps))`` over ``axis``: ``eps`` 1e-12 (Keras 2's ``tf.linalg.l2_normalize``)
    or 1e-14 (Keras 3's ``ops.normalize``: ``x * min(rsqrt(sum x^2), 1/1e-7)``)."""
    eps = 1e-12 if keras_version == 2 else 1e-14
    return x * jnp.reciprocal(jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=axis, keepdims=True), eps)))


def batch_dot(x, y, axes):
    """Keras's ``batch_dot``: per sample, ``x`` contracted with ``y`` over ``x``'s axis ``axes[0]``
    and ``y``'s ``axes[1]`` (neither 0); the output has ``x``'s remaining axes, then ``y``'s
    (batch axis once); two 2-D inputs give ``(batch, 1)`` (``keras/src/layers/merging/dot.py``)."""
    a, b = axes
    xk = jnp.moveaxis(x, a, -1)
    yk = jnp.moveaxis(y, b, 1)
    out = jnp.einsum("bmk,bkn->bmn", xk.reshape(xk.shape[0], -1, xk.shape[-1]), yk.reshape(yk.shape[:2] + (-1,)))
    out = out.reshape(xk.shape[:-1] + yk.shape[2:])
    return out[:, None] if out.ndim == 1 else out


class Dot(nn.Module):
    """The dot product of two inputs per sample over ``axes`` (an int for both, or one axis per
    input; not the batch axis): ``y[b, i.., j..] = sum_k x1[b, i.., k] x2[b, k, j..]`` (see
    :func:`batch_dot`). ``normalize``: both L2-normalized along their axis first (the cosine
    similarity; ``keras_version`` picks Keras's epsilon). No output mask."""

    axes: int | Sequence[int]
    normalize: bool = False
    keras_version: int = 2

    def __post_init__(self):
        check_keras_version(self.keras_version)
        axes = self.axes if isinstance(self.axes, (tuple, list)) else None
        ok = (
            axes is not None
            and len(axes) == 2
            and all(isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in axes)
        )
        if not ok and (isinstance(self.axes, bool) or not isinstance(self.axes, numbers.Integral)):
            raise ValueError(f"`axes`: expected an integer or a pair of integers, got {self.axes!r}.")
        super().__post_init__()

    def _axes(self, xs) -> tuple:
        axes = self.axes if isinstance(self.axes, (tuple, list)) else (self.axes, self.axes)
        out = tuple(int(a) % x.ndim for a, x in zip(axes, xs))
        if (
            any(x.ndim < 2 for x in xs)
            or 0 in out
            or xs[0].shape[out[0]] != xs[1].shape[out[1]]
            or xs[0].shape[0] != xs[1].shape[0]
        ):
            raise ValueError(
                f"`inputs`: Dot with axes={self.axes!r} contracts axis {out[0]} of the first input with axis {out[1]} "
                f"of the second (not the batch axis; of equal sizes); got shapes {[tuple(x.shape) for x in xs]}."
            )
        return out

    def __call__(self, inputs: Sequence, *, mask=None):
        del mask  # Keras's Dot ignores masks
        xs, _ = merge_inputs("Dot", inputs, None, 2)
        axes = self._axes(xs)
        if self.normalize:
            xs = [_l2_normalize(x, a, self.keras_version) for x, a in zip(xs, axes)]
        return batch_dot(xs[0], xs[1], axes)

    def compute_mask(self, inputs, mask=None):
        """None: Keras's ``Dot`` gives no mask."""
        del inputs, mask
        return None
