"""The masking and restart rules, in one place: every loop of the driver applies them through
:func:`restart` and :func:`mask_step`.

For a boolean restart flag ``r_t`` (a new sequence starts at step ``t``, in processing order) and
a boolean mask ``m_t``, both of shape ``(*batch,)``::

    x_t = where(m_t, x_t, 0)             # zero_masked_inputs: a masked input never reaches the numbers
    s_in = where(r_t, 0, s_{t-1})        # restart: the fresh (zero) state ...
    o_in = where(r_t, 0, o_{t-1})        # ... and no previous output, as at a sequence's start
    s', y = step(s_in, x_t)
    s_t = where(m_t, s', s_in)           # a masked step leaves every state unchanged
    o_t = where(m_t, y, o_in)            # ... and repeats the previous output (0 before the first)
        = where(m_t, y, 0)               # with zero_output_for_mask=True

A restart at a masked step still restarts (the next unmasked step starts fresh; the masked step
outputs 0, the previous output having restarted). The ``where`` also cuts every gradient across a
restart: ``d s_{t-1} = where(r_t, 0, d s_in)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def expand_like(m: jax.Array, leaf: jax.Array) -> jax.Array:
    """Pads a ``(*batch,)`` mask on the right so it broadcasts against ``(*batch, ...)``."""
    return m.reshape(m.shape + (1,) * (leaf.ndim - m.ndim))


def _masked(m, new, old):
    return jax.tree_util.tree_map(lambda n, o: jnp.where(expand_like(m, n), n, o), new, old)


def zero_masked_inputs(x: jax.Array, m: jax.Array) -> jax.Array:
    """``where(m_t, x_t, 0)``: a masked step must not touch the numbers, so its input is zeroed
    before anything reads it. (Otherwise NaN or inf there reaches every gradient: the step still
    runs on it, and the discarded branch of the masking ``where`` back-propagates ``0 * NaN``.)"""
    return jnp.where(expand_like(m, x), x, jnp.zeros((), x.dtype))


def restart(r_t, tree):
    """``where(r_t, 0, tree)`` on every array of ``tree``: before a step where a sequence starts,
    the fresh state (zeros, every layer's initial state) and no previous output; in a hand-written
    backward pass, the cotangent of the state before that step (nothing crosses a restart).
    ``tree`` unchanged without restarts (``r_t`` None)."""
    if r_t is None:
        return tree
    return _masked(r_t, jax.tree_util.tree_map(jnp.zeros_like, tree), tree)


def mask_step(m_t, new_state, state, y, last, zero_output_for_mask):
    """The masking rule of one step: ``s_t = where(m_t, s', s_{t-1}); o_t = where(m_t, y, o_{t-1}
    or 0)``; ``(new_state, y)`` unchanged without a mask (``m_t`` None)."""
    if m_t is None:
        return new_state, y
    state = _masked(m_t, new_state, state)
    y = jnp.where(expand_like(m_t, y), y, jnp.zeros_like(y) if zero_output_for_mask else last)
    return state, y


def restarts(reset, go_backwards: bool):
    """The restart flags ``r_t`` in processing order from time-major ``reset (T, *batch)``
    (``reset[t]``: a sequence starts at step ``t``, in input order): ``r_t`` restarts before step
    ``t`` is processed. Forward, ``r = reset``. With ``go_backwards`` each sequence is processed
    backwards within itself, from its last step to its first, so the restart falls before its
    last step: ``r_t = reset[t + 1]``, and ``r_{T-1}`` is False (the first processed step
    continues from the initial state; ``reset[0]`` starts the sequence that ends the processing)."""
    if reset is None or not go_backwards:
        return reset
    return jnp.concatenate([reset[1:], jnp.zeros_like(reset[:1])], axis=0)


def check_flags(expected, mask=None, reset=None) -> None:
    """``mask`` and ``reset`` are each None or a boolean array of exactly the ``expected`` shape
    (the input's shape without the feature axes); the error names the argument."""
    for flags, name in ((mask, "mask"), (reset, "reset")):
        if flags is None:
            continue
        if tuple(jnp.shape(flags)) != tuple(expected):
            raise ValueError(
                f"`{name}`: expected shape {tuple(expected)} (the input's shape without the feature "
                f"axis), got {tuple(jnp.shape(flags))}."
            )
        if jnp.result_type(flags) != jnp.bool_:
            raise TypeError(
                f"`{name}`: expected a boolean array, got dtype {jnp.result_type(flags)}; use `{name}.astype(bool)`."
            )
