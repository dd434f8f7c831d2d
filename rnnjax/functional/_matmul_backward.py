"""The loop of a :class:`~rnnjax.functional.protocol.RecurrentMatmulStep` and its hand-written
backward pass: plan, forward, backward (``docs/design.md``, "The recurrent-matmul path").

Forward, per step in processing order: the restart rule (``state_{t-1}`` and the previous
output zeroed where ``r_t``), ``a_t = v_{t-1} @ R``, ``state_t, y_t = pointwise(xp_t, a_t,
state_{t-1})`` and the masking rule. Backward, in reverse: the cotangents of the state only
(``d state_{t-1} = pointwise's vjp + (d a_t @ Rᵀ)`` through ``recurrent_lhs``, zeroed where
``r_t``: nothing crosses a restart), while ``d a_t`` is stored per step, so that after the loop::

    dR = Vᵀ dA = Σ_{t, batch} v_{t-1}ᵀ d a_t         # ONE matmul (contract_leading)

instead of one small accumulation per step. Four switches (:class:`MatmulPlan`) choose what the
forward loop stores and how the backward loop writes; each changes memory traffic, never a
number beyond float rounding.
"""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
from jax import lax

from rnnjax.functional.masking import mask_step, restart
from rnnjax.functional.mesh import contract_leading, sum_leading
from rnnjax.functional.options import LoopOptions, PlanOverrides
from rnnjax.functional.protocol import RecurrentMatmulStep, with_pointwise_vjp


class MatmulPlan(NamedTuple):
    """The switches of the hand-written backward pass (each forceable: :class:`PlanOverrides`).

    * ``in_place_z``: every buffer is written in place. The forward loop stores ``z_t = xp_t +
      a_t`` over ``xp_t`` in the projected-input buffer for the parts ``pointwise`` reads only
      through the sum (no ``a_t`` residual there; the other parts keep ``xp_t`` and store
      ``a_t``), and the backward loop writes ``d xp_t`` over the inputs' buffer and ``d a_t`` over
      the stored ``a_t``; when ``z_t`` keeps its precision in the inputs' buffer (not for
      bfloat16 inputs with float32 states). Not in place: ``a_t`` is stored and ``d xp``, ``d a``
      are new sequences.
    * ``prefetch_z``: (in place only) the backward loop reads each step's buffer values one step
      ahead, so that the buffer's only readers are the in-place write and that read (see
      :func:`_write_dz`).
    * ``carry_prev_output``: the previous outputs are stored and their cotangent carried (a mask
      reads them; without one they are never read).
    * ``bias_grad_after_loop``: ``pointwise_params`` is a bias on ``a_t``; its gradient is ``Σ d
      a_t`` after the loop instead of a reduction over the batch at every step.
    """

    in_place_z: bool
    prefetch_z: bool
    carry_prev_output: bool
    bias_grad_after_loop: bool


def plan_matmul_backward(
    step: RecurrentMatmulStep, xs, init_state, has_mask: bool, forced: PlanOverrides = PlanOverrides()
) -> MatmulPlan:
    """The automatic :class:`MatmulPlan`, then any switch ``forced``."""
    in_place_ok = any(sum_parts(step))
    keeps_precision = in_place_ok and all(
        jnp.result_type(x.dtype, step.recurrent_kernel.dtype, _first_leaf(init_state).dtype) == x.dtype
        for x in _parts(xs)
    )
    in_place = forced.choose("in_place_z", keeps_precision, allowed=(False, keeps_precision))
    # read at the step itself where every read of z_t feeds dz_t (the sigmoid LSTM's hand-written backward)
    prefetch = in_place and (step.pointwise_vjp is None or step.vjp_rereads_z)
    prefetch = forced.choose("prefetch_z", prefetch, allowed=(False, in_place))
    carry = forced.choose("carry_prev_output", has_mask, allowed=(True, not has_mask))
    bias_ok = step.pointwise_params_is_recurrent_bias and step.pointwise_params is not None
    bias_after = forced.choose("bias_grad_after_loop", bias_ok, allowed=(False, bias_ok))
    return MatmulPlan(in_place, prefetch, carry, bias_after)


def sum_parts(step: RecurrentMatmulStep) -> tuple:
    """Per part of ``xp_t`` (one without ``part_sizes``): whether ``pointwise`` reads it only through
    ``xp_t + a_t`` (:attr:`RecurrentMatmulStep.reads_only_sum`)."""
    flags = step.reads_only_sum
    if isinstance(flags, tuple):
        return tuple(bool(f) for f in flags)
    return (bool(flags),) * (1 if step.part_sizes is None else len(step.part_sizes))


def _parts(a) -> list:
    return list(a) if isinstance(a, tuple) else [a]


def _joined(parts: list):
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, -1)


def _like(template, parts: list):
    """``parts`` as a tuple where ``template`` is one, else its one element."""
    return tuple(parts) if isinstance(template, tuple) else parts[0]


class StepResiduals(NamedTuple):
    """What the forward loop stores per step (None: not stored)."""

    recurrent_product: Any  # a_t (not in place; in place: the parts not read only through the sum, None for the others)
    state: Any  # state_{t-1}
    prev_output: jax.Array | None  # o_{t-1} (carry_prev_output)


class MatmulResiduals(NamedTuple):
    """The residuals of the whole loop, for its backward pass."""

    recurrent_kernel: jax.Array
    pointwise_params: Any
    inputs: Any  # xp of every step (None in place: the buffer holds z)
    mask: jax.Array | None
    restarts: jax.Array | None  # r_t of every step (the call's reset flags, in processing order)
    recurrent_dropout_mask: jax.Array | None
    recurrent_products: Any  # a_t of every step (not in place; in place: as in StepResiduals)
    z: Any  # in place: per part, z_t (read only through the sum) or xp_t, in the inputs' buffer
    states: Any  # state_{t-1} of every step (after the restart rule)
    prev_outputs: jax.Array | None  # o_{t-1} of every step (carry_prev_output)


class LoopArgs(NamedTuple):
    """The arguments of the loop's ``custom_vjp`` in order (the backward pass returns their
    cotangents in this order)."""

    recurrent_kernel: Any
    pointwise_params: Any
    inputs: Any
    initial_state: Any
    initial_output: Any
    mask: Any
    restarts: Any
    recurrent_dropout_mask: Any
    xp_bias: Any


def _first_leaf(state):
    """``h``: the state's first leaf, the one that enters the recurrent matmul."""
    return jax.tree_util.tree_leaves(state)[0]


def _add_to_first_leaf(state, delta):
    leaves, treedef = jax.tree_util.tree_flatten(state)
    return jax.tree_util.tree_unflatten(treedef, [leaves[0] + delta] + leaves[1:])


def _take(buf, t):
    return lax.dynamic_index_in_dim(buf, t, 0, keepdims=False)


def _put(buf, value, t):
    return lax.dynamic_update_index_in_dim(buf, value.astype(buf.dtype), t, 0)


def _tree_take(tree, t):
    return jax.tree_util.tree_map(lambda b: _take(b, t), tree)


def _write_dz(plan: MatmulPlan, z_carry, dz, t, t_next):
    """``dz_t`` (= d xp_t = d a_t) written over ``z_t``; with ``prefetch_z`` (the carry is then
    ``(buffers, values at t)``) the values of step ``t_next`` (the next processed; clamped past
    the last) are then read from the updated buffer.

    Why prefetch: a read of ``z_t`` in an op that does not feed ``dz_t`` (some backward passes
    read it twice), followed in the same step by the in-place write of ``dz_t``, makes XLA copy
    the whole buffer at every step. Read one step ahead into the carry, ``z_t`` is a small array of
    its own by the time the step runs, and the buffer's only readers are the write and the read
    after it (``bench/README.md``, "The delayed dz write")."""
    zbuf = z_carry[0] if plan.prefetch_z else z_carry
    zbuf = jax.tree_util.tree_map(lambda b, d: _put(b, d, t), zbuf, dz)
    return (zbuf, _tree_take(zbuf, t_next)) if plan.prefetch_z else zbuf


class MatmulLoop:
    """One loop of a :class:`RecurrentMatmulStep` under a :class:`MatmulPlan`."""

    def __init__(self, step: RecurrentMatmulStep, plan: MatmulPlan, steps, options: LoopOptions):
        self.step, self.plan, self.steps, self.options = step, plan, steps, options
        self.pointwise_for_backward = with_pointwise_vjp(step.pointwise, step.pointwise_vjp)
        self.recurrent_lhs = step.recurrent_lhs or (lambda v: v)
        sizes = step.part_sizes
        self.part_ends = None if sizes is None else [sum(sizes[: k + 1]) for k in range(len(sizes) - 1)]
        self.sum_parts = sum_parts(step)

    def cell(self, params, xp_t, a_t, s_prev, last_prev, m_t, pointwise=None):
        s_new, y = (pointwise or self.step.pointwise)(params, xp_t, a_t, s_prev)
        return mask_step(m_t, s_new, s_prev, y, last_prev, self.options.zero_output_for_mask)

    def split(self, a):
        """An array -> the tuple of its parts (``part_sizes``)."""
        if self.part_ends is None or isinstance(a, tuple):
            return a
        return tuple(jnp.split(a, self.part_ends, axis=-1))

    def join(self, a):
        return a if self.part_ends is None else jnp.concatenate(a, axis=-1)

    def recurrent_product(self, s, R, rec_mask):
        """``a_t = recurrent_lhs(h ⊙ rec_mask) @ R``."""
        v = _first_leaf(s)
        v = v if rec_mask is None else v * rec_mask
        if self.step.apply_recurrent_kernel is not None:
            return self.step.apply_recurrent_kernel(v, R)
        return self.recurrent_lhs(v) @ R

    def forward(self, R, params, xs, s0, last0, m, r, rec_mask, keep_residuals, xp_bias=None):
        """``((ys, state, last), residuals)``; residuals only with ``keep_residuals``."""
        in_place = keep_residuals and self.plan.in_place_z
        keep_prev_output = self.plan.carry_prev_output

        def body(carry, inp):
            s, last, zbuf = carry
            xp_t, m_t, r_t, t = inp
            s, last = restart(r_t, (s, last))
            if xp_bias is not None:  # fused into the step's element-wise pass
                xp_t = jax.tree_util.tree_map(lambda v, b: (v + b).astype(v.dtype), xp_t, xp_bias)
            a = self.split(self.recurrent_product(s, R, rec_mask))
            res = None
            if in_place:
                zbuf, xp_t, a, kept = self.sum_in_place(zbuf, a, t)
                res = StepResiduals(kept, s, last if keep_prev_output else None)
            s_new, out = self.cell(params, xp_t, a, s, last, m_t)
            if keep_residuals and not in_place:
                res = StepResiduals(a, s, last if keep_prev_output else None)
            return (s_new, out, zbuf), (out if self.options.return_sequences else None, res)

        carry = (s0, last0, xs if in_place else None)
        # the step index, made here (a closed-over array would leak a tracer)
        seq = (None if in_place else xs, m, r, jnp.arange(self.steps, dtype=jnp.int32))
        (s, last, zbuf), (ys, res) = lax.scan(
            body, carry, seq, reverse=self.options.go_backwards, unroll=self.options.scan_unroll
        )
        if res is not None:
            res = MatmulResiduals(
                R,
                params,
                None if self.plan.in_place_z else xs,
                m,
                r,
                rec_mask,
                res.recurrent_product,
                zbuf if in_place else None,
                res.state,
                res.prev_output,
            )
        return (ys, s, last), res

    def sum_in_place(self, zbuf, a, t):
        """The in-place forward step: ``z_t = xp_t + a_t`` written over ``xp_t`` for the parts read
        only through the sum, then read back from the updated buffer (the old buffer has one reader,
        the in-place update itself: no copy by XLA), so the cell sees ``(z_t, 0)`` there; the other
        parts see ``(xp_t, a_t)`` and keep ``a_t``. ``(buffer, xp_t, a_t, kept a_t or None)``."""
        zs, xp, a_out, kept = _parts(zbuf), [], [], []
        for k, a_k in enumerate(_parts(a)):
            if self.sum_parts[k]:
                zs[k] = _put(zs[k], _take(zs[k], t) + a_k, t)
                a_k, keep = jnp.zeros_like(a_k), None
            else:
                keep = a_k
            xp.append(_take(zs[k], t))
            a_out.append(a_k)
            kept.append(keep)
        return _like(zbuf, zs), _like(zbuf, xp), _like(a, a_out), (None if all(self.sum_parts) else tuple(kept))

    def read_in_place(self, buffers, t):
        """The cell's ``(xp_t, a_t)`` from the backward loop's values of the buffers at ``t``:
        ``(z or xp parts, kept a parts or None)``."""
        zs, kept = buffers if not all(self.sum_parts) else (buffers, None)
        a = [jnp.zeros_like(z) if kept is None or kept[k] is None else kept[k] for k, z in enumerate(_parts(zs))]
        return zs, _like(zs, a)

    def written_in_place(self, dxp, da):
        """What the backward step writes over the buffers: ``dz_t = d xp_t`` (``= d a_t`` for the
        parts read only through the sum) over the inputs' buffer, ``d a_t`` over the kept ``a_t``."""
        if all(self.sum_parts):
            return dxp
        return dxp, tuple(None if self.sum_parts[k] else d for k, d in enumerate(_parts(da)))

    def recurrent_cotangents(self, buffers):
        """``d a`` of every step, per part, from the buffers after the backward loop."""
        if all(self.sum_parts):
            return _parts(buffers)
        dz, da = buffers
        return [dz_k if self.sum_parts[k] else da[k] for k, dz_k in enumerate(_parts(dz))]

    def _output_cotangent(self, dlast, d_last, dy_t, t, t_first):
        """The cotangent of this step's output: the carried one, or without ``carry_prev_output``
        the final output's at the first processed step (zeros elsewhere)."""
        if self.plan.carry_prev_output:
            return dlast if dy_t is None else dlast + dy_t
        dout = jnp.where(t == t_first, d_last, jnp.zeros_like(d_last))
        return dout if dy_t is None else dout + dy_t

    def _cell_vjp(self, params, xp_t, a_t, s_prev, last_prev, m_t, cotangent, dparams):
        """``(d params, d xp_t, d a_t, d state_{t-1}, d o_{t-1})`` of one step; with
        ``bias_grad_after_loop`` the parameters are held constant (``dparams`` passed through)."""

        def cell_at(p, xp, a, s, last):
            return self.cell(p, xp, a, s, last, m_t, self.pointwise_for_backward)

        if self.plan.bias_grad_after_loop:
            _, vjp = jax.vjp(lambda xp, a, s, last: cell_at(params, xp, a, s, last), xp_t, a_t, s_prev, last_prev)
            return (dparams,) + vjp(cotangent)
        _, vjp = jax.vjp(cell_at, params, xp_t, a_t, s_prev, last_prev)
        return vjp(cotangent)

    def _through_matmul(self, da, s_prev, R, R_transposed, rec_mask):
        """``d h_{t-1}`` from ``d a_t``: ``(d a_t @ Rᵀ)`` through ``recurrent_lhs`` and the mask."""
        h_like = _first_leaf(s_prev)
        apply_kernel = self.step.apply_recurrent_kernel
        if apply_kernel is not None:  # vjp, not linear_transpose: it may have a custom_vjp
            dv = jax.vjp(lambda v: apply_kernel(v, R), h_like)[1](da)[0]
        else:
            dv = da @ R_transposed
            if self.step.recurrent_lhs is not None:
                dv = jax.linear_transpose(self.recurrent_lhs, h_like)(dv)[0]
        return dv if rec_mask is None else dv * rec_mask

    def backward(self, res: MatmulResiduals, cts):
        d_ys, d_s, d_last = cts
        plan, R, rec_mask = self.plan, res.recurrent_kernel, res.recurrent_dropout_mask
        R_transposed = R.T
        go_backwards = self.options.go_backwards
        t_first = 0 if go_backwards else self.steps - 1  # the first step the backward loop processes
        prev_step = -1 if go_backwards else 1  # t of the step processed before t

        def body(carry, inp):
            ds, dlast, dparams, zbuf = carry
            xp_a, s_prev, last_prev, m_t, r_t, dy_t, t = inp
            if plan.in_place_z:  # the buffer holds z_t: the cell sees (z_t, 0) (kept parts: (xp_t, a_t))
                values = zbuf[1] if plan.prefetch_z else _tree_take(zbuf, t)  # prefetch: read by the step before
                xp_t, a_t = self.read_in_place(values, t)
            else:
                xp_t, a_t = xp_a
            dout = self._output_cotangent(dlast, d_last, dy_t, t, t_first)
            if not plan.carry_prev_output:
                last_prev = d_last  # not read by the cell (no mask): any array of its shape
            dparams_t, dxp, da, ds_prev, dlast_prev = self._cell_vjp(
                res.pointwise_params, xp_t, a_t, s_prev, last_prev, m_t, (ds, dout), dparams
            )
            if not plan.carry_prev_output:
                dlast_prev = None
            written = self.written_in_place(dxp, da) if plan.in_place_z else None
            da = self.join(da)  # joined once: the matmul below and the stacked output use it
            ds_prev = _add_to_first_leaf(ds_prev, self._through_matmul(da, s_prev, R, R_transposed, rec_mask))
            ds_prev, dlast_prev = restart(r_t, (ds_prev, dlast_prev))  # nothing crosses a restart
            if not plan.bias_grad_after_loop:
                dparams = jax.tree_util.tree_map(jnp.add, dparams, dparams_t)
            if plan.in_place_z:
                return (ds_prev, dlast_prev, dparams, _write_dz(plan, zbuf, written, t, t - prev_step)), None
            return (ds_prev, dlast_prev, dparams, None), (dxp, da)

        zero_params = jax.tree_util.tree_map(jnp.zeros_like, res.pointwise_params)
        t_index = jnp.arange(self.steps, dtype=jnp.int32)
        xp_a = None if plan.in_place_z else (res.inputs, res.recurrent_products)
        seq = (
            xp_a,
            res.states,
            res.prev_outputs,
            res.mask,
            res.restarts,
            d_ys if self.options.return_sequences else None,
            t_index,
        )
        zbuf0: Any = res.z if all(self.sum_parts) or not plan.in_place_z else (res.z, res.recurrent_products)
        if plan.prefetch_z:
            zbuf0 = (zbuf0, _tree_take(zbuf0, t_first))
        init = (d_s, d_last if plan.carry_prev_output else None, zero_params, zbuf0)
        (ds0, dlast0, dparams, zbuf), outs = lax.scan(
            body, init, seq, reverse=not go_backwards, unroll=self.options.scan_unroll
        )
        if not plan.carry_prev_output:  # the initial previous output is never read without a mask
            dlast0 = jnp.zeros_like(d_last)
        if plan.in_place_z:  # d xp_t (= d a_t = d z_t where read only through the sum)
            buffers = zbuf[0] if plan.prefetch_z else zbuf
            dxs = buffers if all(self.sum_parts) else buffers[0]
            da_parts = self.recurrent_cotangents(buffers)
        else:
            dxs, da_seq = outs
            da_parts = [da_seq]
        if plan.bias_grad_after_loop:
            sums = _joined([sum_leading(d) for d in da_parts])
            dparams = jax.tree_util.tree_map(lambda d, p: d.astype(p.dtype), self.split(sums), res.pointwise_params)
        v_seq = _first_leaf(res.states)
        v_seq = self.recurrent_lhs(v_seq if rec_mask is None else v_seq * rec_mask)
        # one matmul per stored part of the (T, *batch, G*U) cotangents (not joined: no copy)
        dR = _joined([contract_leading(v_seq, d) for d in da_parts])
        return tuple(
            LoopArgs(
                recurrent_kernel=dR.astype(R.dtype),
                pointwise_params=dparams,
                inputs=dxs,
                initial_state=ds0,
                initial_output=dlast0,
                mask=None,
                restarts=None,
                recurrent_dropout_mask=None,
                xp_bias=None,
            )
        )


def scan_matmul_step(step: RecurrentMatmulStep, xs, init_state, last0, m, r, options: LoopOptions, xp_bias=None):
    """Runs ``step`` over time-major ``xs`` with its hand-written backward pass: ``(ys, state, last)``.

    ``m``/``r``: the mask and the restart flags ``(T, *batch)`` in processing order, or None.
    ``options``: checked (:meth:`LoopOptions.checked`). ``xp_bias``: added to each step's ``xp_t``
    inside the loop (``xs`` then comes from the projection without its bias,
    :class:`~rnnjax.functional.protocol.LoopBias`); not differentiable (the planner passes it only
    to calls that are not differentiated)."""
    steps = jax.tree_util.tree_leaves(xs)[0].shape[0]
    plan = plan_matmul_backward(
        step, xs, init_state, m is not None, cast(PlanOverrides, options.plan)
    )  # checked options: never None
    loop = MatmulLoop(step, plan, steps, options)

    @jax.custom_vjp
    def run(R, params, xs, s0, last0, m, r, rec_mask, xp_bias):
        return loop.forward(R, params, xs, s0, last0, m, r, rec_mask, False, xp_bias)[0]

    def run_fwd(R, params, xs, s0, last0, m, r, rec_mask, xp_bias):
        if xp_bias is not None:
            raise AssertionError("internal: xp_bias is for calls that are not differentiated")
        return loop.forward(R, params, xs, s0, last0, m, r, rec_mask, True)

    run.defvjp(run_fwd, loop.backward)
    # Split outside the custom VJP: autodiff of the split joins the cotangents back.
    params = step.pointwise_params
    if loop.part_ends is not None:
        xs = loop.split(xs)
        params = None if params is None else loop.split(params)
        xp_bias = None if xp_bias is None else loop.split(xp_bias)
    return run(
        *LoopArgs(step.recurrent_kernel, params, xs, init_state, last0, m, r, step.recurrent_dropout_mask, xp_bias)
    )
