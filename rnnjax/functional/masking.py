"""The masking rule, in one place: every loop of the driver applies it through :func:`mask_step`.

For a boolean mask ``m_t`` of shape ``(*batch,)``::

    x_t = where(m_t, x_t, 0)             # zero_masked_inputs: a masked input never reaches the numbers
    s_t = where(m_t, s', s_{t-1})        # a masked step leaves every state unchanged
    o_t = where(m_t, y, o_{t-1})         # ... and repeats the previous output (0 before the first)
        = where(m_t, y, 0)               # with zero_output_for_mask=True
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


def mask_step(m_t, new_state, state, y, last, zero_output_for_mask):
    """The masking rule of one step: ``s_t = where(m_t, s', s_{t-1}); o_t = where(m_t, y, o_{t-1}
    or 0)``; ``(new_state, y)`` unchanged without a mask (``m_t`` None)."""
    if m_t is None:
        return new_state, y
    state = _masked(m_t, new_state, state)
    y = jnp.where(expand_like(m_t, y), y, jnp.zeros_like(y) if zero_output_for_mask else last)
    return state, y
