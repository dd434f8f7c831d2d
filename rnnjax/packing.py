"""Packed sequences: several variable-length sequences end to end in one row, with ``reset``.

Padding every sequence to the longest computes the padding; packing puts sequences one after
another in rows of a fixed length and marks where each starts with ``reset`` (every rnnjax
recurrent layer, :func:`rnnjax.functional.rnn` and :func:`rnnjax.functional.scan_rnn` take it:
the state restarts from zeros there, so each sequence gives exactly what it gives alone)::

    packed = rnnjax.packing.pack_sequences(sequences, row_length=64)       # first-fit
    y = layer.apply(v, packed.inputs, mask=packed.mask, reset=packed.reset)  # (rows, 64, units)
    per_sequence = rnnjax.packing.last_steps(y, packed)                     # (n, units)

Three ways to say where sequences start, and the conversions between them (``(*rows, T)``):

* ``reset``: boolean, True at each sequence's first step;
* ``segment_ids``: integer, the sequence each step belongs to, counted from 0 in each row;
* ``lengths``: integer ``(*rows, S)``, the lengths of the sequences of each row in order, 0 for
  none (the padding of a ragged list).

The conversions are ``jax.numpy`` (``jit``-able); :func:`pack_sequences` and :func:`unpack` run on
the host (numpy), where the data is prepared.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from rnnjax.functional.core import concrete

__all__ = [
    "Packed",
    "pack_sequences",
    "unpack",
    "last_steps",
    "first_steps",
    "lengths_to_reset",
    "reset_to_lengths",
    "segment_ids_to_reset",
    "reset_to_segment_ids",
    "packing_efficiency",
]


def _integers(a, argument: str, min_ndim: int = 1):
    shape = tuple(np.shape(a))
    dtype = jnp.result_type(a) if hasattr(a, "dtype") else np.asarray(a).dtype
    if len(shape) < min_ndim or not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"`{argument}`: expected integers with at least {min_ndim} axis, got {dtype} of shape {shape}.")
    return jnp.asarray(a)


def _flags(reset, argument: str = "reset"):
    shape = tuple(np.shape(reset))
    dtype = jnp.result_type(reset) if hasattr(reset, "dtype") else np.asarray(reset).dtype
    if len(shape) < 1 or shape[-1] < 1 or dtype != jnp.bool_:
        raise TypeError(f"`{argument}`: expected a boolean array (*rows, steps), got {dtype} of shape {shape}.")
    return jnp.asarray(reset)


def segment_ids_to_reset(segment_ids):
    """``reset[..., t] = segment_ids[..., t] != segment_ids[..., t - 1]``, and True at step 0
    (each row starts a sequence; set ``reset[..., 0] = False`` to continue a state carried over
    from a previous batch instead)."""
    ids = _integers(segment_ids, "segment_ids")
    change = ids[..., 1:] != ids[..., :-1]
    return jnp.concatenate([jnp.ones(ids.shape[:-1] + (1,), bool), change], axis=-1)


def reset_to_segment_ids(reset):
    """The sequence of each step, counted from 0 in each row: ``cumsum(reset) - reset[..., 0]``
    (int32; steps before a row's first restart belong to sequence 0)."""
    reset = _flags(reset)
    counts = jnp.cumsum(reset.astype(jnp.int32), axis=-1)
    return counts - reset[..., :1].astype(jnp.int32)


def lengths_to_reset(lengths, steps: int):
    """``reset (*rows, steps)`` for rows holding sequences of ``lengths (*rows, S)`` end to end
    (0: no sequence). Also returns the ``mask`` of the
    steps the sequences cover (False on the padding after them): ``(reset, mask)``.

    Lengths must be >= 0 and sum to at most ``steps`` per row (checked when concrete)."""
    lengths = _integers(lengths, "lengths")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"`steps`: expected a positive integer, got {steps!r}.")
    value = concrete(lengths)
    if value is not None:
        totals = value.sum(axis=-1)
        if value.min(initial=0) < 0 or totals.max(initial=0) > steps:
            raise ValueError(
                f"`lengths`: expected lengths >= 0 summing to at most steps={steps} per row, got {value.tolist()}."
            )
    ends = jnp.cumsum(lengths, axis=-1)  # (*rows, S)
    starts = ends - lengths
    t = jnp.arange(steps)
    # step t starts a sequence when some sequence of positive length starts there
    reset = jnp.any((starts[..., None] == t) & (lengths[..., None] > 0), axis=-2)
    mask = t < ends[..., -1:]
    return reset, mask


def reset_to_lengths(reset, mask=None):
    """The lengths ``(*rows, steps)`` of each row's sequences (0 after the last one), counting only
    the steps where ``mask`` is True (the inverse of :func:`lengths_to_reset` with its mask)."""
    reset = _flags(reset)
    steps = reset.shape[-1]
    ids = reset_to_segment_ids(reset)
    counted = jnp.ones(reset.shape, jnp.int32) if mask is None else _flags(mask, "mask").astype(jnp.int32)
    if mask is not None and tuple(jnp.shape(mask)) != tuple(reset.shape):
        raise ValueError(f"`mask`: expected the shape of `reset` {tuple(reset.shape)}, got {tuple(jnp.shape(mask))}.")
    one_hot = ids[..., :, None] == jnp.arange(steps)  # (*rows, steps, sequence)
    return jnp.sum(one_hot * counted[..., None], axis=-2)


class Packed(NamedTuple):
    """Sequences packed into rows (:func:`pack_sequences`).

    ``inputs (rows, row_length, *features)``: the sequences end to end, zeros after the last one of
    each row; ``reset (rows, row_length)``: True at each sequence's first step; ``mask (rows,
    row_length)``: True on the sequences' steps, False on the padding after them; ``row``,
    ``start``, ``length`` ``(n,)``: where sequence ``i`` lies (``inputs[row[i], start[i]:start[i] +
    length[i]]``), in the order given."""

    inputs: np.ndarray
    reset: np.ndarray
    mask: np.ndarray
    row: np.ndarray
    start: np.ndarray
    length: np.ndarray


def _check_sequences(sequences) -> list:
    if isinstance(sequences, (str, bytes)) or not isinstance(sequences, Sequence) or not len(sequences):
        raise TypeError(
            f"`sequences`: expected a non-empty list of arrays (steps, *features), got {type(sequences).__name__}."
        )
    arrays = [np.asarray(s) for s in sequences]
    first = arrays[0]
    for i, a in enumerate(arrays):
        if a.ndim < 1 or a.shape[0] < 1:
            raise ValueError(
                f"`sequences[{i}]`: expected an array (steps, *features) with at least one step, got shape {a.shape}."
            )
        if a.shape[1:] != first.shape[1:]:
            raise ValueError(
                f"`sequences[{i}]`: its steps have shape {a.shape[1:]}, `sequences[0]`'s "
                f"{first.shape[1:]}; every sequence needs the same feature shape."
            )
        if a.dtype != first.dtype or a.dtype == object:
            raise TypeError(
                f"`sequences[{i}]`: dtype {a.dtype}, `sequences[0]`'s {first.dtype}; expected one "
                "numeric dtype for all."
            )
    return arrays


def pack_sequences(sequences, row_length: int, *, rows: int | None = None) -> Packed:
    """Packs ``sequences`` (a list of ``(length_i, *features)`` arrays) into rows of ``row_length``
    steps, first-fit: each sequence, in the order given, goes to the first row with room for it
    (a new row when none has). ``rows``: the number of rows to return (fully padded rows added, so
    that every batch has the same shape and compiles once); an error if the sequences need more.
    Returns a :class:`Packed`; :func:`unpack`, :func:`last_steps` and :func:`first_steps` read
    per-sequence results back."""
    arrays = _check_sequences(sequences)
    if isinstance(row_length, bool) or not isinstance(row_length, numbers.Integral) or row_length < 1:
        raise ValueError(f"`row_length`: expected a positive integer, got {row_length!r}.")
    lengths = np.array([a.shape[0] for a in arrays], np.int32)
    too_long = np.flatnonzero(lengths > row_length)
    if too_long.size:
        i = int(too_long[0])
        raise ValueError(
            f"`sequences[{i}]`: {lengths[i]} steps do not fit a row of row_length={row_length} "
            f"({too_long.size} sequence(s) are longer); raise row_length or split them."
        )
    free = np.zeros(0, np.int64)
    row, start = np.zeros(len(arrays), np.int32), np.zeros(len(arrays), np.int32)
    for i, n in enumerate(lengths):
        fits = np.flatnonzero(free >= n)
        if fits.size:
            r = int(fits[0])
        else:
            r, free = len(free), np.append(free, row_length)
        row[i], start[i] = r, row_length - free[r]
        free[r] -= n
    needed = len(free)
    if rows is not None:
        if isinstance(rows, bool) or not isinstance(rows, numbers.Integral) or rows < needed:
            raise ValueError(f"`rows`: the sequences need {needed} rows of {row_length} steps, got rows={rows!r}.")
        needed = int(rows)
    inputs = np.zeros((needed, row_length) + arrays[0].shape[1:], arrays[0].dtype)
    reset = np.zeros((needed, row_length), bool)
    mask = np.zeros((needed, row_length), bool)
    reset[:, 0] = True
    for a, r, s, n in zip(arrays, row, start, lengths):
        inputs[r, s : s + n] = a
        reset[r, s] = True
        mask[r, s : s + n] = True
    return Packed(inputs, reset, mask, row, start, lengths)


def _check_outputs(outputs, packed: Packed):
    if not isinstance(packed, Packed):
        raise TypeError(f"`packed`: expected the Packed of pack_sequences, got {type(packed).__name__}.")
    shape = tuple(np.shape(outputs))
    if shape[:2] != tuple(packed.mask.shape):
        raise ValueError(
            f"`outputs`: expected (rows, row_length, ...) = {tuple(packed.mask.shape)} + ..., got shape "
            f"{shape}; pass the outputs of every step (return_sequences=True), in input order."
        )


def last_steps(outputs, packed: Packed):
    """``(n, *features)``: each sequence's output at its last step (a forward layer's final output
    of that sequence), from ``outputs (rows, row_length, *features)`` in input order (flip a
    ``go_backwards`` layer's outputs first); ``jit``-able."""
    _check_outputs(outputs, packed)
    return outputs[packed.row, packed.start + packed.length - 1]


def first_steps(outputs, packed: Packed):
    """``(n, *features)``: each sequence's output at its first step (where a backward direction
    ends: ``Bidirectional``'s backward half of the final output)."""
    _check_outputs(outputs, packed)
    return outputs[packed.row, packed.start]


def unpack(outputs, packed: Packed) -> list:
    """The list of per-sequence outputs ``(length_i, *features)`` from ``outputs (rows, row_length,
    *features)`` (input order), in the order the sequences were packed."""
    _check_outputs(outputs, packed)
    return [
        outputs[r, s : s + n] for r, s, n in zip(packed.row.tolist(), packed.start.tolist(), packed.length.tolist())
    ]


def packing_efficiency(packed: Packed) -> float:
    """The fraction of the packed steps that hold a sequence's step (1: no padding)."""
    return float(packed.mask.sum()) / max(1, math.prod(packed.mask.shape))
