"""``rnnjax.packing``: sequences packed first-fit into rows, the conversions between ``reset``,
segment ids and lengths, and a packed layer call against each sequence run alone."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax import packing


def _sequences(lengths, features=2, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, features)).astype(np.float32) for n in lengths]


def test_first_fit_layout():
    seqs = _sequences([4, 3, 2, 5, 1])
    p = packing.pack_sequences(seqs, row_length=6)
    # first-fit in order: [4, 2], [3, 1], [5] (the 1 goes to the first row with room: row 0 has 0 left)
    np.testing.assert_array_equal(p.row, [0, 1, 0, 2, 1])
    np.testing.assert_array_equal(p.start, [0, 0, 4, 0, 3])
    np.testing.assert_array_equal(p.length, [4, 3, 2, 5, 1])
    np.testing.assert_array_equal(p.reset, [[1, 0, 0, 0, 1, 0], [1, 0, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(p.mask, [[1] * 6, [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]])
    for s, r, st, n in zip(seqs, p.row, p.start, p.length):
        np.testing.assert_array_equal(p.inputs[r, st : st + n], s)
    assert not p.inputs[~p.mask].any()
    assert packing.packing_efficiency(p) == pytest.approx(15 / 18)
    # unpack is the inverse on the inputs themselves, last/first steps pick the ends
    for got, want in zip(packing.unpack(p.inputs, p), seqs):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(packing.last_steps(p.inputs, p), np.stack([s[-1] for s in seqs]))
    np.testing.assert_array_equal(packing.first_steps(p.inputs, p), np.stack([s[0] for s in seqs]))
    # a fixed number of rows: padded rows, all masked
    fixed = packing.pack_sequences(seqs, row_length=6, rows=5)
    assert fixed.inputs.shape == (5, 6, 2) and not fixed.mask[3:].any()
    np.testing.assert_array_equal(fixed.inputs[:3], p.inputs)


def test_conversions_round_trip():
    lengths = jnp.array([[3, 2, 1, 0], [6, 0, 0, 0], [1, 1, 1, 2]])
    reset, mask = packing.lengths_to_reset(lengths, 6)
    np.testing.assert_array_equal(reset, [[1, 0, 0, 1, 0, 1], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(mask, [[1] * 6, [1] * 6, [1, 1, 1, 1, 1, 0]])
    ids = packing.reset_to_segment_ids(reset)
    np.testing.assert_array_equal(ids, [[0, 0, 0, 1, 1, 2], [0] * 6, [0, 1, 2, 3, 3, 3]])
    np.testing.assert_array_equal(packing.segment_ids_to_reset(ids), reset)
    back = packing.reset_to_lengths(reset, mask)
    np.testing.assert_array_equal(back[:, :4], lengths)
    assert not back[:, 4:].any()
    # steps before a row's first restart are sequence 0; jit works
    np.testing.assert_array_equal(
        jax.jit(packing.reset_to_segment_ids)(jnp.array([[0, 0, 1, 0, 1]], bool)), [[0, 0, 1, 1, 2]]
    )
    np.testing.assert_array_equal(jax.jit(packing.lengths_to_reset, static_argnums=1)(lengths, 6)[0], reset)


def test_packed_layer_call_equals_each_sequence_alone():
    """The three-line form: a padded model becomes a packed one with the same per-sequence results
    (a Bidirectional LSTM: its forward half at each sequence's last step, backward half at its first;
    the reference: each sequence alone in its own right-padded row, masked, without reset)."""
    seqs = _sequences([3, 5, 2, 4, 1], features=3)
    layer = rnnjax.Bidirectional(rnnjax.LSTM(4, return_sequences=True), merge_mode=None)
    p = packing.pack_sequences(seqs, row_length=8)
    v = layer.init(jax.random.key(0), p.inputs)
    run = jax.jit(lambda x, m, r: layer.apply(v, x, mask=m, reset=r))
    forward, backward = run(p.inputs, p.mask, p.reset)
    alone = np.stack([np.pad(s, ((0, 8 - len(s)), (0, 0))) for s in seqs])
    lengths = np.array([len(s) for s in seqs])
    alone_f, alone_b = run(alone, np.arange(8)[None, :] < lengths[:, None], None)
    final_f, final_b = packing.last_steps(forward, p), packing.first_steps(backward, p)
    for k, (f, b) in enumerate(zip(packing.unpack(forward, p), packing.unpack(backward, p))):
        np.testing.assert_allclose(f, alone_f[k, : lengths[k]], atol=1e-6)
        np.testing.assert_allclose(b, alone_b[k, : lengths[k]], atol=1e-6)
        np.testing.assert_allclose(final_f[k], alone_f[k, lengths[k] - 1], atol=1e-6)
        np.testing.assert_allclose(final_b[k], alone_b[k, 0], atol=1e-6)


def test_errors_name_the_argument():
    seqs = _sequences([3, 9, 2])
    with pytest.raises(ValueError, match=r"`sequences\[1\]`: 9 steps do not fit a row of row_length=8"):
        packing.pack_sequences(seqs, row_length=8)
    with pytest.raises(ValueError, match=r"`sequences\[1\]`: its steps have shape \(3,\), `sequences\[0\]`'s \(2,\)"):
        packing.pack_sequences([np.zeros((2, 2)), np.zeros((2, 3))], row_length=8)
    with pytest.raises(TypeError, match=r"`sequences\[1\]`: dtype float64, `sequences\[0\]`'s float32"):
        packing.pack_sequences([np.zeros((2, 2), np.float32), np.zeros((2, 2))], row_length=8)
    with pytest.raises(ValueError, match=r"`sequences\[0\]`: expected an array \(steps, \*features\) with at least"):
        packing.pack_sequences([np.zeros((0, 2))], row_length=8)
    with pytest.raises(TypeError, match="`sequences`: expected a non-empty list"):
        packing.pack_sequences([], row_length=8)
    with pytest.raises(ValueError, match="`row_length`: expected a positive integer, got 0"):
        packing.pack_sequences(seqs, row_length=0)
    with pytest.raises(ValueError, match="`rows`: the sequences need 2 rows of 9 steps, got rows=1"):
        packing.pack_sequences(seqs, row_length=9, rows=1)
    with pytest.raises(ValueError, match="`lengths`: expected lengths >= 0 summing to at most steps=4"):
        packing.lengths_to_reset(jnp.array([[3, 2]]), 4)
    with pytest.raises(TypeError, match="`lengths`: expected integers"):
        packing.lengths_to_reset(jnp.array([[3.0]]), 4)
    with pytest.raises(TypeError, match="`reset`: expected a boolean array"):
        packing.reset_to_segment_ids(jnp.array([[1, 0]]))
    with pytest.raises(TypeError, match="`segment_ids`: expected integers"):
        packing.segment_ids_to_reset(jnp.array([[0.0, 1.0]]))
    p = packing.pack_sequences(seqs, row_length=9)
    with pytest.raises(ValueError, match=r"`outputs`: expected \(rows, row_length, ...\) = \(2, 9\)"):
        packing.last_steps(np.zeros((2, 4)), p)
