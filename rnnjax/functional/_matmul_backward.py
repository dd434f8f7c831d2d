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

from typing import Any, NamedTuple, Optional, cast

import jax
import jax.numpy as jnp
from jax import lax

from rnnjax.functional.masking import mask_step, restart
from rnnjax.functional.mesh import contract_leading
from rnnjax.functional.options import LoopOptions, PlanOverrides
from rnnjax.functional.protocol import RecurrentMatmulStep, with_pointwise_vjp


class MatmulPlan(NamedTuple):
    """The switches of the hand-written backward pass (each forceable: :class:`PlanOverrides`).

    * ``in_place_z``: the forward loop stores ``z_t = xp_t + a_t`` over ``xp_t`` in the
      projected-input buffer (no ``a_t`` residual) and the backward loop writes ``dz_t`` over it;
      for a ``pointwise`` that reads only the sum, when ``z_t`` keeps its precision in that buffer
      (not for bfloat16 inputs with float32 states).
    * ``delayed_dz_write``: (in place only) ``dz_t`` is written one step late, so that the
      buffer's only reader in the loop is that write (see :func:`_read_z`).
    * ``carry_prev_output``: the previous outputs are stored and their cotangent carried (a mask
      reads them; without one they are never read).
    * ``bias_grad_after_loop``: ``pointwise_params`` is a bias on ``a_t``; its gradient is ``Σ d
      a_t`` after the loop instead of a reduction over the batch at every step.
    """

    in_place_z: bool
    delayed_dz_write: bool
    carry_prev_output: bool
    bias_grad_after_loop: bool


def plan_matmul_backward(step: RecurrentMatmulStep, xs, init_state, has_mask: bool,
                         forced: PlanOverrides = PlanOverrides()) -> MatmulPlan:
    """The automatic :class:`MatmulPlan`, then any switch ``forced``."""
    in_place_ok = step.reads_only_sum and not isinstance(xs, tuple)
    keeps_precision = in_place_ok and jnp.result_type(
        xs.dtype, step.recurrent_kernel.dtype, _first_leaf(init_state).dtype) == xs.dtype
    in_place = forced.choose("in_place_z", keeps_precision, allowed=(False, in_place_ok))
    # written at once where every read of z_t feeds dz_t (the sigmoid LSTM's hand-written backward)
    delay = in_place and (step.pointwise_vjp is None or step.vjp_rereads_z)
    delay = forced.choose("delayed_dz_write", delay, allowed=(False, in_place))
    carry = forced.choose("carry_prev_output", has_mask, allowed=(True, not has_mask))
    bias_ok = step.pointwise_params_is_recurrent_bias and step.pointwise_params is not None
    bias_after = forced.choose("bias_grad_after_loop", bias_ok, allowed=(False, bias_ok))
    return MatmulPlan(in_place, delay, carry, bias_after)


class StepResiduals(NamedTuple):
    """What the forward loop stores per step (None: not stored)."""

    recurrent_product: Optional[jax.Array]  # a_t (not in place)
    state: Any  # state_{t-1}
    prev_output: Optional[jax.Array]  # o_{t-1} (carry_prev_output)


class MatmulResiduals(NamedTuple):
    """The residuals of the whole loop, for its backward pass."""

    recurrent_kernel: jax.Array
    pointwise_params: Any
    inputs: Any  # xp of every step (None in place: the buffer holds z)
    mask: Optional[jax.Array]
    restarts: Optional[jax.Array]  # r_t of every step (the call's reset flags, in processing order)
    recurrent_dropout_mask: Optional[jax.Array]
    recurrent_products: Optional[jax.Array]  # a_t of every step (not in place)
    z: Optional[jax.Array]  # z_t of every step, in the inputs' buffer (in place)
    states: Any  # state_{t-1} of every step (after the restart rule)
    prev_outputs: Optional[jax.Array]  # o_{t-1} of every step (carry_prev_output)


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


def _read_z(plan: MatmulPlan, z_carry, t, t_first, prev_step):
    """The backward loop's read of ``z_t`` from the buffer: ``(buffer, z_t)``.

    With ``delayed_dz_write`` the carry is ``(buffer, pending dz)``: the previous step's ``dz``
    (at ``t + prev_step``; at the first processed step ``z_t`` itself, a no-op) is written first
    and ``z_t`` read from the updated buffer, so that the buffer's only reader in the loop is that
    in-place write. An immediate write after a read of ``z_t`` that does not feed ``dz_t`` (some
    backward passes read it twice) makes XLA copy the whole buffer at every step
    (``bench/README.md``, "The delayed dz write")."""
    if not plan.delayed_dz_write:
        return z_carry, _take(z_carry, t)
    zbuf, pending = z_carry
    first = t == t_first
    pending_t = jnp.where(first, t, t + prev_step)
    pending = jnp.where(first, _take(zbuf, t), pending)
    zbuf = _put(zbuf, pending, pending_t)
    return zbuf, _take(zbuf, t)


def _write_dz(plan: MatmulPlan, zbuf, dz, t):
    """``dz_t`` (= d xp_t = d a_t) over ``z_t``: now, or pending until the next step."""
    if plan.delayed_dz_write:
        return zbuf, dz.astype(zbuf.dtype)
    return _put(zbuf, dz, t)


def _finish_dz(plan: MatmulPlan, z_carry, t_last):
    """The buffer after the loop: the last pending ``dz`` written."""
    if not plan.delayed_dz_write:
        return z_carry
    zbuf, pending = z_carry
    return _put(zbuf, pending, t_last)


class MatmulLoop:
    """One loop of a :class:`RecurrentMatmulStep` under a :class:`MatmulPlan`."""

    def __init__(self, step: RecurrentMatmulStep, plan: MatmulPlan, steps, options: LoopOptions):
        self.step, self.plan, self.steps, self.options = step, plan, steps, options
        self.pointwise_for_backward = with_pointwise_vjp(step.pointwise, step.pointwise_vjp)
        self.recurrent_lhs = step.recurrent_lhs or (lambda v: v)
        sizes = step.part_sizes
        self.part_ends = None if sizes is None else [sum(sizes[:k + 1]) for k in range(len(sizes) - 1)]

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
                # z_t written over xp_t, then read back from the updated buffer: the old buffer has
                # one reader, the in-place update itself (no copy by XLA)
                zbuf = _put(zbuf, _take(zbuf, t) + a, t)
                xp_t, a = _take(zbuf, t), jnp.zeros_like(a)
                res = StepResiduals(None, s, last if keep_prev_output else None)
            s_new, out = self.cell(params, xp_t, a, s, last, m_t)
            if keep_residuals and not in_place:
                res = StepResiduals(a, s, last if keep_prev_output else None)
            return (s_new, out, zbuf), (out if self.options.return_sequences else None, res)

        carry = (s0, last0, xs if in_place else None)
        # the step index, made here (a closed-over array would leak a tracer)
        seq = (None if in_place else xs, m, r, jnp.arange(self.steps, dtype=jnp.int32))
        (s, last, zbuf), (ys, res) = lax.scan(body, carry, seq, reverse=self.options.go_backwards,
                                                 unroll=self.options.scan_unroll)
        if res is not None:
            res = MatmulResiduals(R, params, None if self.plan.in_place_z else xs, m, r, rec_mask,
                                  res.recurrent_product,
                                  zbuf if in_place else None, res.state, res.prev_output)
        return (ys, s, last), res

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
        t_last = self.steps - 1 if go_backwards else 0  # ... and the last
        prev_step = -1 if go_backwards else 1  # t of the step processed before t

        def body(carry, inp):
            ds, dlast, dparams, zbuf = carry
            xp_a, s_prev, last_prev, m_t, r_t, dy_t, t = inp
            if plan.in_place_z:  # the buffer holds z_t: the cell sees (z_t, 0)
                zbuf, xp_t = _read_z(plan, zbuf, t, t_first, prev_step)
                a_t = jnp.zeros_like(xp_t)
            else:
                xp_t, a_t = xp_a
            dout = self._output_cotangent(dlast, d_last, dy_t, t, t_first)
            if not plan.carry_prev_output:
                last_prev = d_last  # not read by the cell (no mask): any array of its shape
            dparams_t, dxp, da, ds_prev, dlast_prev = self._cell_vjp(
                res.pointwise_params, xp_t, a_t, s_prev, last_prev, m_t, (ds, dout), dparams)
            if not plan.carry_prev_output:
                dlast_prev = None
            da = self.join(da)  # joined once: the matmul below and the stacked output use it
            ds_prev = _add_to_first_leaf(ds_prev, self._through_matmul(da, s_prev, R, R_transposed, rec_mask))
            ds_prev, dlast_prev = restart(r_t, (ds_prev, dlast_prev))  # nothing crosses a restart
            if not plan.bias_grad_after_loop:
                dparams = jax.tree_util.tree_map(jnp.add, dparams, dparams_t)
            if plan.in_place_z:
                return (ds_prev, dlast_prev, dparams, _write_dz(plan, zbuf, dxp, t)), None
            return (ds_prev, dlast_prev, dparams, None), (dxp, da)

        zero_params = jax.tree_util.tree_map(jnp.zeros_like, res.pointwise_params)
        t_index = jnp.arange(self.steps, dtype=jnp.int32)
        xp_a = None if plan.in_place_z else (res.inputs, res.recurrent_products)
        seq = (xp_a, res.states, res.prev_outputs, res.mask, res.restarts,
               d_ys if self.options.return_sequences else None, t_index)
        zbuf0: Any = res.z
        if plan.delayed_dz_write:
            zbuf0 = (res.z, jnp.zeros(zbuf0.shape[1:], zbuf0.dtype))
        init = (d_s, d_last if plan.carry_prev_output else None, zero_params, zbuf0)
        (ds0, dlast0, dparams, zbuf), outs = lax.scan(body, init, seq, reverse=not go_backwards,
                                                      unroll=self.options.scan_unroll)
        if not plan.carry_prev_output:  # the initial previous output is never read without a mask
            dlast0 = jnp.zeros_like(d_last)
        if plan.in_place_z:  # d xp_t = d a_t = d z_t
            dxs = da_seq = _finish_dz(plan, zbuf, t_last)
        else:
            dxs, da_seq = outs
        if plan.bias_grad_after_loop:
            dparams = jnp.sum(da_seq, axis=tuple(range(da_seq.ndim - 1)))
            dparams = jax.tree_util.tree_map(lambda d, p: d.astype(p.dtype), self.split(dparams),
                                             res.pointwise_params)
        v_seq = _first_leaf(res.states)
        v_seq = self.recurrent_lhs(v_seq if rec_mask is None else v_seq * rec_mask)
        # one matmul over the joined (T, *batch, G*U) cotangents, also when the inputs are split
        dR = contract_leading(v_seq, da_seq)
        return tuple(LoopArgs(recurrent_kernel=dR.astype(R.dtype), pointwise_params=dparams, inputs=dxs,
                              initial_state=ds0, initial_output=dlast0, mask=None, restarts=None,
                              recurrent_dropout_mask=None, xp_bias=None))


def scan_matmul_step(step: RecurrentMatmulStep, xs, init_state, last0, m, r, options: LoopOptions, xp_bias=None):
    """Runs ``step`` over time-major ``xs`` with its hand-written backward pass: ``(ys, state, last)``.

    ``m``/``r``: the mask and the restart flags ``(T, *batch)`` in processing order, or None.
    ``options``: checked (:meth:`LoopOptions.checked`). ``xp_bias``: added to each step's ``xp_t``
    inside the loop (``xs`` then comes from the projection without its bias,
    :class:`~rnnjax.functional.protocol.LoopBias`); not differentiable (the planner passes it only
    to calls that are not differentiated)."""
    steps = jax.tree_util.tree_leaves(xs)[0].shape[0]
    plan = plan_matmul_backward(step, xs, init_state, m is not None,
                                cast(PlanOverrides, options.plan))  # checked options: never None
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
    return run(*LoopArgs(step.recurrent_kernel, params, xs, init_state, last0, m, r, step.recurrent_dropout_mask,
                         xp_bias))
