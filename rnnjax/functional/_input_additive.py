"""The loop of an :class:`~rnnjax.functional.protocol.InputAdditiveStep`: autodiff's backward
pass, except for the kernels, whose gradients are formed after the loop as
``dk = Σ_t lhs_tᵀ d xp_t`` (``docs/design.md``, "The input-additive path")."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from rnnjax.functional.masking import mask_step, restart
from rnnjax.functional.mesh import contract_leading
from rnnjax.functional.options import LoopOptions
from rnnjax.functional.protocol import InputAdditiveStep


def _with_ghost_parts(step: InputAdditiveStep, kernels, xs):
    """``(adds_to, xs)`` with a zero input appended for each ghost part (see
    :class:`InputAdditiveStep`)."""
    adds_to = tuple(range(len(kernels))) if step.adds_to is None else tuple(step.adds_to)
    n_real = len(xs) if isinstance(xs, tuple) else len(kernels)
    ghost_ids = sorted({p for p in adds_to if p >= n_real})
    if ghost_ids:
        if not isinstance(xs, tuple) or ghost_ids != list(range(n_real, n_real + len(ghost_ids))):
            raise ValueError(
                f"InputAdditiveStep.adds_to {adds_to}: ghost parts need projected parts as a tuple, "
                f"numbered from {n_real} on"
            )
        lead = xs[0].shape[:-1]
        xs = xs + tuple(jnp.zeros(lead + (kernels[adds_to.index(j)].shape[-1],), xs[0].dtype) for j in ghost_ids)
    return adds_to, xs


def scan_input_additive(step: InputAdditiveStep, carry, xs, m, r, options: LoopOptions):
    """``lax.scan`` of ``step`` over time-major ``xs`` with the restart and masking rules (``m``,
    ``r``: the mask and the restart flags ``(T, *batch)`` in processing order, or None):
    ``(carry, ys)`` (``options``: ``go_backwards``, ``return_sequences``, ``zero_output_for_mask``,
    ``scan_unroll``)."""

    def scan(kernels, xs, carry, m, r):
        def body(carry, inp):
            x_t, m_t, r_t = inp
            state, last = restart(r_t, carry)
            (new_state, y), lhs = step.step(kernels, state, x_t)
            state, y = mask_step(m_t, new_state, state, y, last, options.zero_output_for_mask)
            return (state, y), (y if options.return_sequences else None, lhs)

        carry, (ys, lhs) = lax.scan(body, carry, (xs, m, r), reverse=options.go_backwards, unroll=options.scan_unroll)
        return (carry, ys), lhs

    kernels = tuple(step.kernels)
    adds_to, xs = _with_ghost_parts(step, kernels, xs)
    # closure_convert hoists the differentiated values the loop closes over (they get gradients
    # through the custom VJP); the mask and restarts are explicit arguments, because a boolean closed
    # over would reach the backward pass as a tracer of the forward's trace (and break jax.export)
    scan_conv, consts = jax.closure_convert(scan, kernels, xs, carry, m, r)

    @jax.custom_vjp
    def run(kernels, xs, carry, m, r, *consts):
        return scan_conv(kernels, xs, carry, m, r, *consts)[0]

    def run_fwd(kernels, xs, carry, m, r, *consts):
        # The kernels are constants of the differentiated scan: autodiff then forms no per-step
        # kernel gradient (d lhs still flows, d h = d a @ kernelᵀ).
        out, vjp, lhs = jax.vjp(lambda x, c, *k: scan_conv(kernels, x, c, m, r, *k), xs, carry, *consts, has_aux=True)
        return out, (vjp, lhs, kernels)

    def run_bwd(res, ct):
        vjp, lhs, kernels = res
        dxs, dcarry, *dconsts = vjp(ct)
        parts = dxs if isinstance(dxs, tuple) else jnp.split(dxs, len(kernels), axis=-1)
        if step.kernel_lhs is not None:
            lhs = tuple(step.kernel_lhs(v) for v in lhs)
        dk = tuple(contract_leading(v, parts[p]).astype(k.dtype) for v, p, k in zip(lhs, adds_to, kernels))
        return (dk, dxs, dcarry, None, None, *dconsts)

    run.defvjp(run_fwd, run_bwd)
    return run(kernels, xs, carry, m, r, *consts)  # the ghost parts' cotangents go to the zeros
