"""The reference of the reset tests: each sequence of a packed row run alone.

A packed row ``(T,)`` with ``reset`` True at the first step of each sequence is split into its
sequences, each put in its own row of an *alone* batch of ``B * T`` rows (at most one sequence per
step), right-padded with the mask and run **without** ``reset`` (so no restart code runs). The
alone results are gathered back into the packed layout: a packed row must give exactly these
outputs and final states, and, since the gathers are differentiable, the same gradients of the
parameters, the inputs and ``initial_state`` (which only the first sequence processed receives).

With ``go_backwards`` each sequence is processed backwards within itself, so the alone row of the
last sequence of a packed row (the first one processed) takes ``initial_state``, and the final
state is that of the first sequence; forward, the first sequence takes ``initial_state`` unless
``reset[..., 0]`` restarts it, and the final state is the last sequence's.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Layout(NamedTuple):
    """Index arrays from a packed ``(B, T)`` layout to the alone one ``(N, T)``."""

    src_row: np.ndarray  # (N,) the packed row of alone row k
    src_time: np.ndarray  # (N, T) the packed step of alone step j (0 past the sequence)
    valid: np.ndarray  # (N, T) alone step j holds a step of the sequence
    takes_h0: np.ndarray  # (N,) alone row k starts from the packed row's initial state
    seq: np.ndarray  # (B, T) the alone row of packed step t
    pos: np.ndarray  # (B, T) ... and its step there
    final_row: np.ndarray  # (B,) the alone row whose final state (and last output) is the packed row's


def layout(reset, go_backwards: bool) -> Layout:
    reset = np.asarray(reset, bool)
    b, t = reset.shape
    n = b * t
    src_row, src_time = np.zeros(n, np.int32), np.zeros((n, t), np.int32)
    valid, takes_h0 = np.zeros((n, t), bool), np.zeros(n, bool)
    seq, pos, final_row = np.zeros((b, t), np.int32), np.zeros((b, t), np.int32), np.zeros(b, np.int32)
    k = 0
    for row in range(b):
        starts = [0] + [s for s in range(1, t) if reset[row, s]]
        ends = starts[1:] + [t]
        first, last = (len(starts) - 1, 0) if go_backwards else (0, len(starts) - 1)
        for j, (s, e) in enumerate(zip(starts, ends)):
            src_row[k], src_time[k, : e - s], valid[k, : e - s] = row, np.arange(s, e), True
            seq[row, s:e], pos[row, s:e] = k, np.arange(e - s)
            takes_h0[k] = j == first and (go_backwards or not reset[row, 0])
            if j == last:
                final_row[row] = k
            k += 1
    return Layout(src_row, src_time, valid, takes_h0, seq, pos, final_row)


def _expand(flags, a):
    return flags.reshape(flags.shape + (1,) * (a.ndim - flags.ndim))


def to_alone(lay: Layout, x, mask, h0):
    """``(x, mask, h0)`` of the alone batch (``h0`` a list of arrays, zeros for fresh rows)."""
    valid = jnp.asarray(lay.valid)
    xa = jnp.where(_expand(valid, x[:, :1]), x[lay.src_row[:, None], lay.src_time], 0)
    ma = valid if mask is None else valid & mask[lay.src_row[:, None], lay.src_time]
    h0a = [jnp.where(_expand(jnp.asarray(lay.takes_h0), h), h[lay.src_row], 0) for h in h0]
    return xa, ma, h0a


def from_alone(lay: Layout, out, finals, go_backwards: bool, return_sequences: bool):
    """The alone results in the packed layout: outputs (in processing order) and final states."""
    if return_sequences:
        in_time = jnp.flip(out, 1) if go_backwards else out
        out = in_time[lay.seq, lay.pos]
        out = jnp.flip(out, 1) if go_backwards else out
    else:
        out = out[lay.final_row]
    return out, [f[lay.final_row] for f in finals]


def weighted_loss(out, finals):
    """A loss that weighs every output and state entry differently."""
    total = 0.0
    for k, a in enumerate(jax.tree_util.tree_leaves((out, finals))):
        w = jnp.cos(jnp.arange(a.size, dtype=jnp.float32) * 0.37 + k).reshape(a.shape)
        total = total + jnp.sum(jnp.sin(a.astype(jnp.float32)) * w)
    return total


def packed_and_alone(run, go_backwards: bool, return_sequences: bool):
    """A jitted ``(params, x, mask, reset, h0, layout) -> (packed, alone)``, each ``((outputs, final
    states), gradients of (params, x, h0))``; the packed values are those of the call that is not
    differentiated (the driver may run another program then), checked against the differentiated
    call's. ``run(params, x, mask, reset, h0, rows) -> (output,
    list of final states)``; ``rows``: the packed row of each row of ``x`` (per-row extras such as
    dropout masks are gathered with it)."""

    def packed(p, x, h0, mask, reset, lay):
        return run(p, x, mask, reset, h0, jnp.arange(x.shape[0]))

    def alone(p, x, h0, mask, reset, lay):
        xa, ma, h0a = to_alone(lay, x, mask, h0)
        out, finals = run(p, xa, ma, None, h0a, jnp.asarray(lay.src_row))
        return from_alone(lay, out, finals, go_backwards, return_sequences)

    def both(p, x, mask, reset, h0, lay):
        results = []
        for fn in (packed, alone):

            def loss(*a, fn=fn):
                value = fn(*a, mask, reset, lay)
                return weighted_loss(*value), value

            (_, value), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(p, x, h0)
            results.append((value, grads))
        inference = packed(p, x, h0, mask, reset, lay)
        return ((inference, results[0][1]), results[1], results[0][0])

    return jax.jit(both)


def assert_trees_close(got, want, tol=2e-5):
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        b = np.asarray(b, np.float32)
        np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=tol, atol=tol * max(1.0, np.abs(b).max()))
