"""The one sequence driver: every rnnjax layer runs its cell through :func:`scan_rnn`.

Given a step ``step(state, x_t) -> (new_state, y_t)`` and an input sequence, the driver
computes, for ``t`` in processing order (``T-1 ... 0`` when ``go_backwards``)::

    x_t     = where(m_t, x_t, 0)                # a masked step's input never reaches the numbers
    xp      = project(x)                        # many steps at once, outside the recurrence
    s', y   = step(s_{t-1}, xp_t[, constants])
    s_t     = where(m_t, s', s_{t-1})           # masked steps leave every state unchanged
    o_t     = where(m_t, y, o_{t-1})            # ... and repeat the previous output (0 at first)
            = where(m_t, y, 0)                  # with zero_output_for_mask=True

and returns ``(o_{last}, s_{last})`` or, with ``return_sequences``, all ``o_t`` in processing
order (reversed time when ``go_backwards``, as Keras does). Because masked inputs are zeroed
first, NaN or inf at masked steps give the outputs and gradients of zero padding.

How (none of it changes a number beyond float rounding): ``project`` runs on all steps at once or
on spans of steps (``project_chunk``, ``remat``); a step given as a :class:`LinearStep` gets a
hand-written backward pass, and a call that is not differentiated may run another program for the
same function (spans, the input bias added inside the loop: :func:`_primal_choice`); ``unroll`` is
a Python loop, else ``lax.scan``.

Symbolic sizes (``jax.export.symbolic_shape``, e.g. a batch ``b`` and a time axis ``t`` known only
when the exported function is called): the plan above compares sizes with thresholds, which a
symbolic size cannot answer. Then the driver takes the program that is right for every size: all
steps projected at once (no ``project_chunk`` spans, no inference spans; an explicit
``project_chunk`` too, when the time axis is symbolic), ``remat`` without its spans of
``sqrt(T)`` steps (a symbolic ``T`` has no static square root; memory O(T), as for a sequence too
short to chunk), ``scan_unroll`` 1, and
:func:`rnnjax.functional.core.gate_matmul` without its folded bias. Decisions that do not depend
on sizes (the hand-written backward passes, the unbiased projection) are the same. ``unroll=True``
with a symbolic time axis is an error (a Python loop needs its length).

Shapes: ``inputs`` is ``(*batch, T, F)`` (any number of batch dimensions, none included, so a
single unbatched sequence works and ``jax.vmap`` over it equals the batched call) or
``(T, *batch, F)`` with ``time_major=True``; ``mask`` is ``(*batch, T)`` (``(T, *batch)`` when
time-major) and boolean.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.export
import jax.numpy as jnp
from jax import lax

from rnnjax.functional.mesh import partitioned

Step = Callable[..., tuple[Any, jax.Array]]


def _expand_like(m: jax.Array, leaf: jax.Array) -> jax.Array:
    """Pads a ``(*batch,)`` mask on the right so it broadcasts against ``(*batch, ...)``."""
    return m.reshape(m.shape + (1,) * (leaf.ndim - m.ndim))


def _masked(m, new, old):
    return jax.tree_util.tree_map(lambda n, o: jnp.where(_expand_like(m, n), n, o), new, old)


def zero_masked_inputs(x: jax.Array, m: jax.Array) -> jax.Array:
    """``where(m_t, x_t, 0)``: a masked step must not touch the numbers, so its input is zeroed
    before anything reads it. (Otherwise NaN or inf there reaches every gradient: the step still
    runs on it, and the discarded branch of the masking ``where`` back-propagates ``0 * NaN``.)"""
    return jnp.where(_expand_like(m, x), x, jnp.zeros((), x.dtype))


def _mask_step(m_t, new_state, state, y, last, zero_output_for_mask):
    """The masking rule of one step (the same for every path through the driver)::

        s_t = where(m_t, s', s_{t-1});  o_t = where(m_t, y, o_{t-1} or 0)
    """
    if m_t is None:
        return new_state, y
    state = _masked(m_t, new_state, state)
    y = jnp.where(_expand_like(m_t, y), y, jnp.zeros_like(y) if zero_output_for_mask else last)
    return state, y


class LinearStep(NamedTuple):
    """A step whose only matmul with the state is ``a_t = v_{t-1} @ recurrent_kernel``.

    ``v_{t-1} = recurrent_input(h_{t-1} * rec_mask)``: ``h`` is the first leaf of the state,
    ``rec_mask`` a recurrent dropout mask ``(*batch, U)`` (optional) and ``recurrent_input`` an
    optional linear map (ConvLSTM: the convolution patches of ``h``, so that its recurrent
    convolution is a matmul; identity if None). Then ``state_t, y_t = pointwise(pw_params, xp_t,
    a_t, state_{t-1})`` is element-wise. LSTM, SimpleRNN and the reset-after GRU have this form.
    Given one, :func:`scan_rnn` runs a loop with a hand-written backward pass: the backward
    loop carries only the state cotangent and the recurrent-kernel gradient is formed after it
    as ONE matmul ``V^T @ dA`` over all steps, instead of one small accumulation per step.
    """

    recurrent_kernel: jax.Array
    pointwise: Callable
    pw_params: Any
    rec_mask: Optional[jax.Array] = None
    recurrent_input: Optional[Callable] = None
    additive: bool = False  # pointwise sees xp_t and a_t only as xp_t + a_t (then d xp_t = d a_t)
    # Sizes along the last axis: xp_t, a_t (and pw_params) reach `pointwise` as tuples of these
    # parts. On the CPU, slicing a step's input inside the loop is slow (XLA copies it); the
    # parts are split once, outside the loop (the GRU: 2.3x faster forward).
    input_splits: Optional[tuple] = None
    # recurrent_apply(v, recurrent_kernel) computes recurrent_input(v) @ recurrent_kernel another
    # way (ConvLSTM: a direct convolution, faster than patches @ kernel in the forward loop).
    recurrent_apply: Optional[Callable] = None
    # pointwise_vjp(pw, xp_t, a_t, state, (d_state, d_y)) -> (d_pw, d_xp, d_a, d_state_prev): a
    # hand-written backward of `pointwise`, used by the backward loop instead of autodiff's
    # (the LSTM: one element-wise pass instead of the several that autodiff's slices and pads
    # become on the CPU).
    pointwise_vjp: Optional[Callable] = None
    # pw_params is a bias that `pointwise` adds to a_t (same structure): its gradient is then the
    # sum of the a_t cotangents, formed once after the backward loop instead of a reduction over
    # the batch at every step (the reset-after GRU's recurrent bias).
    pw_is_bias_on_a: bool = False
    # With a pointwise_vjp: write dz_t one step late in the backward loop, as the steps without
    # one do (see _linear_scan). XLA's fusion of some hand-written backward passes still reads
    # z_t in ops that do not feed dz_t (the hard-sigmoid LSTM: ds_prev = dc·f), and an immediate
    # write then makes XLA copy the whole buffer at every step (32, 100, 128, 128: 40 vs 31 ms).
    late_dz_write: bool = False


def with_pointwise_vjp(pointwise: Callable, pointwise_vjp: Optional[Callable]) -> Callable:
    """``pointwise(pw, xp_t, a_t, state)`` whose reverse-mode derivative is the hand-written
    ``pointwise_vjp(pw, xp_t, a_t, state, (d_state, d_y)) -> (d_pw, d_xp, d_a, d_state)`` (see
    :class:`LinearStep`); ``pointwise`` itself if that is None. Reverse mode only (a
    ``jax.custom_vjp``): for the custom backward paths, which ``custom_backward=False`` turns off.
    Used by the LinearStep's backward loop and by the InputAdditiveStep forms of the LSTM and the
    ConvLSTM (one recurrent dropout mask per gate), whose loops autodiff differentiates."""
    if pointwise_vjp is None:
        return pointwise
    fn = jax.custom_vjp(pointwise)
    fn.defvjp(lambda *args: (pointwise(*args), args), lambda args, ct: pointwise_vjp(*args, ct))
    return fn


def contract_leading(a: jax.Array, b: jax.Array) -> jax.Array:
    """``Σ_{t, batch} a[t, ..., i] b[t, ..., j] -> (i, j)``: a weight gradient over every leading
    axis (time and the batch axes), as one matmul.

    On a device mesh a named-axis ``dot_general`` (a local matmul and one all-reduce); on one
    device the 2-D matmul of the rows, which XLA's CPU backend runs without copying its operands
    (see :mod:`rnnjax.functional.mesh`); the ``dot_general`` too for symbolic sizes (``jax.export``),
    whose rows jax cannot always count."""
    if partitioned(a, b) or not _static(*a.shape, *b.shape):
        lead = tuple(range(a.ndim - 1))
        return lax.dot_general(a, b, ((lead, lead), ((), ())))
    return a.reshape(-1, a.shape[-1]).T @ b.reshape(-1, b.shape[-1])


def _first_leaf(state):
    return jax.tree_util.tree_leaves(state)[0]


def _add_to_first_leaf(state, delta):
    leaves, treedef = jax.tree_util.tree_flatten(state)
    return jax.tree_util.tree_unflatten(treedef, [leaves[0] + delta] + leaves[1:])


def _linear_scan(linear: LinearStep, xs, init_state, last0, m, *, go_backwards, return_sequences,
                 zero_output_for_mask, scan_unroll, xp_bias=None):
    """Runs a :class:`LinearStep` over time-major ``xs`` with a custom VJP (see its docstring).

    ``xp_bias``: added to each step's ``xp_t`` inside the loop (``xs`` then comes from the
    unbiased projection, see ``unbiased_project`` of :func:`scan_rnn`); not differentiable (the
    driver passes it only to calls that are not differentiated)."""
    pointwise = linear.pointwise

    def cell(pw, xp_t, a_t, s_prev, last_prev, m_t, pointwise=pointwise):
        s_new, y = pointwise(pw, xp_t, a_t, s_prev)
        return _mask_step(m_t, s_new, s_prev, y, last_prev, zero_output_for_mask)

    # The pointwise part as the backward loop differentiates it (only there: reverse mode).
    pointwise_for_bwd = with_pointwise_vjp(pointwise, linear.pointwise_vjp)

    recurrent_input = linear.recurrent_input or (lambda v: v)

    splits = linear.input_splits
    cuts = None if splits is None else [sum(splits[:k + 1]) for k in range(len(splits) - 1)]

    def split(a):
        return a if cuts is None or isinstance(a, tuple) else tuple(jnp.split(a, cuts, axis=-1))

    def join(a):
        return a if cuts is None else jnp.concatenate(a, axis=-1)

    def masked_h(s, rm):
        v = _first_leaf(s)
        return v if rm is None else v * rm

    def recurrent(s, R, rm):
        if linear.recurrent_apply is not None:
            return linear.recurrent_apply(masked_h(s, rm), R)
        return recurrent_input(masked_h(s, rm)) @ R

    # Residuals for the backward pass, per step: the previous state, the previous output (only
    # with a mask: without one it is never read) and a_t (with the projected inputs xs), or for
    # an additive step only the pre-activation z_t = xp_t + a_t, written in place over xp_t in
    # the projected-input buffer. Less temporary memory is time on the CPU: XLA allocates its
    # temporaries per call, and above glibc's 32 MB mmap threshold every fresh page is a page
    # fault (~1 ns per byte on the 2-core VM of bench/README.md, as costly as the loop itself).
    keep_last = m is not None
    steps = jax.tree_util.tree_leaves(xs)[0].shape[0]
    # In place only where z_t keeps its precision in the xs buffer (not for bfloat16 inputs with
    # float32 states); otherwise a_t is stored beside xs.
    additive = linear.additive and not isinstance(xs, tuple) and jnp.result_type(
        xs.dtype, linear.recurrent_kernel.dtype, _first_leaf(init_state).dtype) == xs.dtype

    def take(buf, t):
        return lax.dynamic_index_in_dim(buf, t, 0, keepdims=False)

    def put(buf, value, t):
        return lax.dynamic_update_index_in_dim(buf, value.astype(buf.dtype), t, 0)

    def forward(R, pw, xs, s0, last0, m, rm, keep_residuals, xb=None):
        in_place = keep_residuals and additive

        def body(carry, inp):
            s, last, zbuf = carry
            xp_t, m_t, t = inp
            if xb is not None:  # fused into the step's element-wise pass
                xp_t = jax.tree_util.tree_map(lambda v, b: (v + b).astype(v.dtype), xp_t, xb)
            a = split(recurrent(s, R, rm))
            res = None
            if in_place:
                # z_t = xp_t + a_t written over xp_t, then read back from the updated buffer: the
                # old buffer has one reader, the in-place update itself (no copy by XLA).
                zbuf = put(zbuf, take(zbuf, t) + a, t)
                xp_t, a = take(zbuf, t), jnp.zeros_like(a)
                res = (None, s, last if keep_last else None)
            s_new, out = cell(pw, xp_t, a, s, last, m_t)
            if keep_residuals and not in_place:
                res = (a, s, last if keep_last else None)
            return (s_new, out, zbuf), (out if return_sequences else None, res)

        carry = (s0, last0, xs if in_place else None)
        # the step index, made here (a closed-over array would leak a tracer)
        seq = (None if in_place else xs, m, jnp.arange(steps, dtype=jnp.int32))
        (s, last, zbuf), (ys, res) = lax.scan(body, carry, seq, reverse=go_backwards, unroll=scan_unroll)
        if in_place:
            res = (zbuf,) + res[1:]
        return (ys, s, last), res

    @jax.custom_vjp
    def run(R, pw, xs, s0, last0, m, rm, xb):
        return forward(R, pw, xs, s0, last0, m, rm, False, xb)[0]

    def run_fwd(R, pw, xs, s0, last0, m, rm, xb):
        if xb is not None:
            raise AssertionError("internal: xp_bias is for calls that are not differentiated")
        out, (a_seq, s_seq, last_seq) = forward(R, pw, xs, s0, last0, m, rm, True)
        return out, (R, pw, None if additive else xs, m, rm, a_seq, s_seq, last_seq)

    def run_bwd(res, cts):
        R, pw, xs, m, rm, a_seq, s_seq, last_seq = res
        d_ys, d_s, d_last = cts
        r_t = R.T
        bias_on_a = linear.pw_is_bias_on_a and pw is not None
        t_first = 0 if go_backwards else steps - 1  # the first step the backward loop processes
        # dz_t is written at once where every read of z_t feeds it (measured: no copies; the
        # sigmoid LSTM's hand-written element-wise backward), otherwise one step later (see the
        # loop body).
        delayed = linear.pointwise_vjp is None or linear.late_dz_write

        # Without a mask the previous output is never read: its cotangent is not carried (a zero
        # array carried through the loop is a broadcast and a copy per step, 2 of the ~21 thunks
        # of a batch-1 step); d_last joins the output cotangent of the first processed step.
        carry_dlast = keep_last
        t_last = steps - 1 if go_backwards else 0  # the last step the backward loop processes
        prev_step = -1 if go_backwards else 1  # t of the step processed before t

        def body(carry, inp):
            ds, dlast, dpw, zbuf = carry
            xp_t, s_prev, last_prev, m_t, dy_t, t = inp
            if additive:  # zbuf[t] holds z_t = xp_t + a_t: the cell sees (z_t, 0)
                if delayed:
                    # The previous step's dz is written first and z_t read from the updated
                    # buffer, so the buffer's only reader in the loop is that in-place write.
                    # (Autodiff's backward of some steps, e.g. the hard-sigmoid LSTM, reads z_t
                    # in ops that do not feed dz_t; an immediate write after them made XLA copy
                    # the whole buffer on every step: 131 vs 71 ms at (32, 100, 128, 256).)
                    # Pending: the previous step's dz at t + prev_step; nothing before the first
                    # processed step, where z_t itself is written back.
                    zbuf, pend_dz = zbuf
                    first = t == t_first
                    pend_t = jnp.where(first, t, t + prev_step)
                    pend_dz = jnp.where(first, take(zbuf, t), pend_dz)
                    zbuf = put(zbuf, pend_dz, pend_t)
                xp_t = take(zbuf, t)
                a_t = jnp.zeros_like(xp_t)
            else:
                xp_t, a_t = xp_t
            if carry_dlast:
                dout = dlast if dy_t is None else dlast + dy_t
            else:
                dout = jnp.where(t == t_first, d_last, jnp.zeros_like(d_last))
                dout = dout if dy_t is None else dout + dy_t
                last_prev = d_last  # not read by the cell (no mask): any array of its shape

            def cell_at(pw, xp, a, s, l):
                return cell(pw, xp, a, s, l, m_t, pointwise_for_bwd)

            if bias_on_a:  # pw held constant here; its gradient is summed after the loop
                _, vjp = jax.vjp(lambda xp, a, s, l: cell_at(pw, xp, a, s, l), xp_t, a_t, s_prev, last_prev)
                dxp, da, ds_prev, dlast_prev = vjp((ds, dout))
                dpw_t = dpw
            else:
                _, vjp = jax.vjp(cell_at, pw, xp_t, a_t, s_prev, last_prev)
                dpw_t, dxp, da, ds_prev, dlast_prev = vjp((ds, dout))
            if not carry_dlast:
                dlast_prev = None
            h_like = _first_leaf(s_prev)
            da = join(da)  # joined once: the matmul below and the stacked output use it
            if linear.recurrent_apply is not None:  # vjp, not linear_transpose: it may have a custom_vjp
                dv = jax.vjp(lambda v: linear.recurrent_apply(v, R), h_like)[1](da)[0]
            else:
                dv = da @ r_t
                if linear.recurrent_input is not None:
                    dv = jax.linear_transpose(recurrent_input, h_like)(dv)[0]
            if rm is not None:
                dv = dv * rm
            ds_prev = _add_to_first_leaf(ds_prev, dv)
            if not bias_on_a:
                dpw = jax.tree_util.tree_map(jnp.add, dpw, dpw_t)
            if additive and delayed:  # d z_t, written over z_t at the next step (or after the loop)
                return (ds_prev, dlast_prev, dpw, (zbuf, dxp.astype(zbuf.dtype))), None
            if additive:  # d xp_t = d a_t = d z_t, written over z_t (every read of z_t feeds it)
                return (ds_prev, dlast_prev, dpw, put(zbuf, dxp, t)), None
            return (ds_prev, dlast_prev, dpw, None), (dxp, da)

        zero_pw = jax.tree_util.tree_map(jnp.zeros_like, pw)
        t_index = jnp.arange(steps, dtype=jnp.int32)
        seq = (None if additive else (xs, a_seq), s_seq, last_seq, m, d_ys if return_sequences else None, t_index)
        zbuf0 = a_seq if additive else None
        if additive and delayed:
            zbuf0 = (a_seq, jnp.zeros(a_seq.shape[1:], a_seq.dtype))
        (ds0, dlast0, dpw, zbuf), outs = lax.scan(
            body, (d_s, d_last if carry_dlast else None, zero_pw, zbuf0), seq,
            reverse=not go_backwards, unroll=scan_unroll)
        if not carry_dlast:  # the initial previous output is never read without a mask
            dlast0 = jnp.zeros_like(d_last)
        if additive:  # d xp_t = d a_t = d z_t
            if delayed:
                zbuf, pend_dz = zbuf
                zbuf = put(zbuf, pend_dz, t_last)
            dxs = da_seq = zbuf
        else:
            dxs, da_seq = outs
        if bias_on_a:
            dpw = jnp.sum(da_seq, axis=tuple(range(da_seq.ndim - 1)))
            dpw = jax.tree_util.tree_map(lambda d, p: d.astype(p.dtype), split(dpw), pw)
        v_seq = _first_leaf(s_seq)
        v_seq = recurrent_input(v_seq if rm is None else v_seq * rm)
        # one matmul over the joined (T, *batch, G*U) cotangents, also when the inputs are split
        # (one wide matmul is faster than one per part, bench/README.md)
        dR = contract_leading(v_seq, da_seq)
        return dR.astype(R.dtype), dpw, dxs, ds0, dlast0, None, None, None

    run.defvjp(run_fwd, run_bwd)
    # Split outside the custom VJP: autodiff of the split joins the cotangents back.
    pw = linear.pw_params
    if cuts is not None:
        xs = split(xs)
        pw = None if pw is None else split(pw)
        xp_bias = None if xp_bias is None else split(xp_bias)
    return run(linear.recurrent_kernel, pw, xs, init_state, last0, m, linear.rec_mask, xp_bias)


class InputAdditiveStep(NamedTuple):
    """A step whose recurrent matmuls each add to one part of the projected input.

    ``step(kernels, state, xp_t) -> ((state', y), lhs)`` with ``xp_t`` a tuple of parts (or one
    array whose equal blocks along the last axis are the parts) and ``lhs`` a tuple of the
    matmuls' left operands, such that the step uses ``xp_t[k]`` only in
    ``xp_t[k] + lhs[k] @ kernels[k]`` (the reset-before GRU: ``lhs = (h, h, r·h)``, each times
    its recurrent dropout mask; the LSTM with one recurrent dropout mask per gate:
    ``lhs = (h·m_i, h·m_f, h·m_c, h·m_o)``). Then ``d a_t[k] = d xp_t[k]``, and the gradient of
    ``kernels[k]`` is ``Σ_t lhs_t[k]ᵀ @ d xp_t[k]``: ONE matmul after the loop over the stored
    ``lhs`` and the input cotangents that the backward pass produces anyway, instead of an
    accumulation per step (autodiff's, which on the CPU also copies each outer product).

    ``parts[k]``: the part of ``xp_t`` that ``kernels[k]``'s matmul adds to (default ``k``). An
    index past the projected parts names a ghost part: the driver appends a zero input of the
    matmul's width there, the step computes that matmul as ``ghost_t + lhs[k] @ kernels[k]``, and
    the ghost's cotangent is ``d a_t[k]``, whatever the step does with ``a_t[k]`` (the reset-after
    GRU with one recurrent mask per gate: its candidate's ``r·(h·m_h @ R_h + b_h)``).
    """

    kernels: tuple
    step: Callable
    parts: Optional[tuple] = None
    # lhs_input(v): the matmul's actual left operand when the step stores a smaller one and
    # applies the kernel another way (ConvLSTM: h·m_g stored, the kernel gradient is
    # patches(h·m_g)ᵀ @ d xp_g), applied to the stored sequence after the loop.
    lhs_input: Optional[Callable] = None


def _input_additive_scan(additive: InputAdditiveStep, carry, xs, m, *, go_backwards, return_sequences,
                         zero_output_for_mask, scan_unroll):
    """``lax.scan`` of an :class:`InputAdditiveStep` (the masking rule of :func:`scan_rnn`) with
    the kernels' gradients formed after the loop (see its docstring)."""

    def scan(kernels, xs, carry, m):
        def body(carry, inp):
            state, last = carry
            x_t, m_t = inp if m is not None else (inp, None)
            (new_state, y), lhs = additive.step(kernels, state, x_t)
            state, y = _mask_step(m_t, new_state, state, y, last, zero_output_for_mask)
            return (state, y), (y if return_sequences else None, lhs)

        seq = xs if m is None else (xs, m)
        carry, (ys, lhs) = lax.scan(body, carry, seq, reverse=go_backwards, unroll=scan_unroll)
        return (carry, ys), lhs

    kernels = tuple(additive.kernels)
    parts = tuple(range(len(kernels))) if additive.parts is None else tuple(additive.parts)
    n_real = len(xs) if isinstance(xs, tuple) else len(kernels)
    ghost_ids = sorted({p for p in parts if p >= n_real})
    if ghost_ids:
        if not isinstance(xs, tuple) or ghost_ids != list(range(n_real, n_real + len(ghost_ids))):
            raise ValueError(f"InputAdditiveStep.parts {parts}: ghost parts need projected parts as a tuple, "
                             f"numbered from {n_real} on")
        lead = xs[0].shape[:-1]
        xs = xs + tuple(jnp.zeros(lead + (kernels[parts.index(j)].shape[-1],), xs[0].dtype) for j in ghost_ids)
    # The mask is an explicit argument: closure_convert hoists only values with a tangent, and a
    # boolean mask left in the closure reached the backward pass as a tracer of the forward's
    # trace (jax.export of the VJP then failed on an input it did not declare).
    scan_conv, consts = jax.closure_convert(scan, kernels, xs, carry, m)

    @jax.custom_vjp
    def run(kernels, xs, carry, m, *consts):
        return scan_conv(kernels, xs, carry, m, *consts)[0]

    def run_fwd(kernels, xs, carry, m, *consts):
        # The kernels are constants of the differentiated scan: autodiff then forms no per-step
        # kernel gradient (d lhs still flows, d h = d a @ kernelᵀ).
        out, vjp, lhs = jax.vjp(lambda x, c, *k: scan_conv(kernels, x, c, m, *k), xs, carry, *consts, has_aux=True)
        return out, (vjp, lhs, kernels)

    def run_bwd(res, ct):
        vjp, lhs, kernels = res
        dxs, dcarry, *dconsts = vjp(ct)
        blocks = dxs if isinstance(dxs, tuple) else jnp.split(dxs, len(kernels), axis=-1)
        if additive.lhs_input is not None:
            lhs = tuple(additive.lhs_input(v) for v in lhs)
        dk = tuple(contract_leading(v, blocks[p]).astype(k.dtype) for v, p, k in zip(lhs, parts, kernels))
        return (dk, dxs, dcarry, None, *dconsts)

    run.defvjp(run_fwd, run_bwd)
    return run(kernels, xs, carry, m, *consts)  # the ghost parts' cotangents go to the zeros


def _check_inputs(inputs, mask, time_major):
    if not hasattr(inputs, "ndim") or inputs.ndim < 2:
        raise ValueError(
            f"`inputs`: expected an array of shape (*batch, time, features) with at least 2 "
            f"dimensions, got {getattr(inputs, 'shape', type(inputs).__name__)}."
        )
    t_axis = 0 if time_major else inputs.ndim - 2
    steps = inputs.shape[t_axis]
    if steps == 0:
        raise ValueError(f"`inputs`: the time axis is empty (shape {inputs.shape}); a sequence needs at least one step.")
    if mask is not None:
        expected = inputs.shape[:-1]
        if tuple(mask.shape) != tuple(expected):
            raise ValueError(
                f"`mask`: expected shape {tuple(expected)} (the input's shape without the feature axis), "
                f"got {tuple(mask.shape)}."
            )
        if mask.dtype != jnp.bool_:
            raise TypeError(f"`mask`: expected a boolean array, got dtype {mask.dtype}; use `mask.astype(bool)`.")
    return steps


# Projecting the inputs PROJECT_CHUNK steps at a time, inside an outer loop, keeps the projected
# block small (fresh temporary memory costs page faults on the CPU, see _linear_scan; the
# first explanation, the cache, was wrong). Measured on a 2-core AVX-512 CPU (LSTM, 100 steps,
# 128 -> 128, medians, before the memory work of bench/README.md): at batch 128 the forward
# went from 52 to 36 ms and forward+backward from 142 to 135 ms; at batch 32 it was +-10 %, at
# batch 1-8 slower (the backward pass twice as slow at batch 1), and for 20 steps at batch 128
# the backward pass went from 22 to 26 ms. So it is on by default only from CHUNK_MIN_BATCH rows
# per step and CHUNK_MIN_STEPS steps. Rechecked after the bias fold and the in-place residuals
# (all at once -> spans; LSTM (128, 100, 128, 128): forward 45 -> 32 ms, training 131 -> 115 ms;
# (32, 1000, 128, 128): forward 108 -> 86 ms but training 320 -> 386 ms): the rule stands.
PROJECT_CHUNK = 10
CHUNK_MIN_BATCH = 64
CHUNK_MIN_STEPS = 50


# Without differentiation (inference), the inputs are projected in spans, whatever the batch,
# once the projected block of all steps reaches INFER_SPAN_MIN_BYTES: nothing has to be kept
# for a backward pass, and temporaries near glibc's 32 MB mmap threshold cost page faults. A span
# holds about INFER_SPAN_BYTES of projected inputs (2 to PROJECT_CHUNK steps). An empirical rule,
# measured on the 2-core VM (forward, three compilations each): faster with spans LSTM
# (32, 100, 128, 512), a 25 MiB block, 55 -> 50 ms; (32, 1000, 128, 128), 62 MiB, 112 -> 92 ms;
# ConvLSTM2D (8, 20, 24, 24, 4, 16, 3), 22.5 MiB, 42 -> 27 ms (2-step spans; 10 steps: 32 ms);
# GRU (32, 1000, 128, 128), 47 MiB, 74.6 vs 75.1 ms. Slower with spans: LSTM (32, 300, 128, 128),
# 18.8 MiB, 24.0 -> 26.1 ms; SimpleRNN (32, 1000, 128, 128), 15.6 MiB, 23.9 -> 28.3 ms; batch 1-8
# 10-15 %.
INFER_SPAN_MIN_BYTES = 20 * 2**20
INFER_SPAN_BYTES = 2 * 2**20


def _primal_choice(infer: Callable, train: Callable, *args):
    """``infer(*args)`` when not differentiated; when differentiated, ``train(*args)`` and its
    gradient. The two must compute the same function (they differ in how, e.g. spans).

    Values the two close over and that are differentiated are hoisted by ``jax.closure_convert``
    and passed explicitly, so their gradients flow; the backward pass is autodiff's of ``train``.
    """
    conv_train, c_train = jax.closure_convert(train, *args)
    conv_infer, c_infer = jax.closure_convert(infer, *args)
    consts = []
    for c in list(c_train) + list(c_infer):
        if not any(c is u for u in consts):
            consts.append(c)

    def where(cs):
        return [next(k for k, u in enumerate(consts) if u is c) for c in cs]

    i_train, i_infer = where(c_train), where(c_infer)
    n = len(args)

    def run_train(*a):
        return conv_train(*a[:n], *[a[n + k] for k in i_train])

    @jax.custom_vjp
    def run(*a):
        return conv_infer(*a[:n], *[a[n + k] for k in i_infer])

    def run_fwd(*a):
        return jax.vjp(run_train, *a)  # the vjp function is a pytree of its residuals

    def run_bwd(vjp, ct):
        return vjp(ct)

    run.defvjp(run_fwd, run_bwd)
    return run(*args, *consts)


def _same_struct(a, b) -> bool:
    """Whether two ``jax.eval_shape`` results have the same tree, shapes and dtypes."""
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(u.shape == v.shape and u.dtype == v.dtype for u, v in zip(la, lb))


def _add_last(xp, bias):
    """``xp + bias`` along the last axis; ``xp`` may be a tuple of equal parts (the GRU's gates),
    each getting its block of ``bias``."""
    if isinstance(xp, tuple):
        return tuple(p + b for p, b in zip(xp, jnp.split(bias, len(xp), axis=-1)))
    return xp + bias


def _static(*sizes) -> bool:
    """Whether every size is a known integer, not a symbolic dimension (``jax.export``)."""
    return not any(jax.export.is_symbolic_dim(d) for d in sizes)


def _projection_chunk(steps, project_chunk, batch_rows) -> int:
    """Steps projected at once (``steps``: all); with a symbolic size, all (see :func:`scan_rnn`)."""
    if project_chunk is None:
        wanted = _static(steps, batch_rows) and batch_rows >= CHUNK_MIN_BATCH and steps >= CHUNK_MIN_STEPS
        project_chunk = PROJECT_CHUNK if wanted else 0
    if isinstance(project_chunk, bool) or not isinstance(project_chunk, int) or project_chunk < 0:
        raise ValueError(f"`project_chunk`: expected a non-negative integer, got {project_chunk!r}.")
    return steps if project_chunk == 0 or not _static(steps) else project_chunk


def _remat_chunk(steps) -> int:
    """Chunk length for ``remat``: about ``sqrt(steps)`` (1 for sequences too short to chunk, and
    for a symbolic number of steps)."""
    return max(1, math.isqrt(steps)) if _static(steps) and steps >= 4 else 1


def scan_rnn(
    step: Step,
    inputs: jax.Array,
    initial_state: Any,
    *,
    project: Optional[Callable[[jax.Array], Any]] = None,
    mask: Optional[jax.Array] = None,
    constants: Any = None,
    go_backwards: bool = False,
    return_sequences: bool = False,
    zero_output_for_mask: bool = False,
    unroll: bool = False,
    scan_unroll: int = 1,
    remat: bool = False,
    time_major: bool = False,
    linear: Optional[LinearStep] = None,
    project_chunk: Optional[int] = None,
    unbiased_project: Optional[tuple] = None,
    additive: Optional["InputAdditiveStep"] = None,
):
    """Runs ``step`` over the time axis of ``inputs``.

    Args:
      step: ``step(state, xp_t) -> (state, y_t)``, or ``step(state, xp_t, constants)`` when
        ``constants`` is given. ``state`` is any pytree of ``(*batch, ...)`` arrays.
      inputs: ``(*batch, T, F)`` (``(T, *batch, F)`` if ``time_major``).
      initial_state: the state pytree before the first processed step.
      project: applied once to the whole time-major input ``(T, *batch, F)`` before the loop
        (the input projection ``x @ kernel + bias`` of all steps in one matmul); identity if None.
      mask: boolean ``(*batch, T)``; False steps are skipped (see module docstring).
      constants: passed unchanged to every step.
      go_backwards: process from the last step to the first; outputs in processing order.
      return_sequences: return every step's output instead of the last one.
      zero_output_for_mask: output zeros at masked steps instead of repeating the last output.
      unroll: a Python loop over the (static) time steps instead of ``lax.scan`` (an error for a
        symbolic number of steps).
      scan_unroll: ``lax.scan``'s partial unroll factor (performance only; 1 for a symbolic number
        of steps).
      remat: rematerialise the loop in the backward pass: steps run in chunks of about
        ``sqrt(T)`` and only chunk boundaries are stored, so memory grows as ``sqrt(T)``
        instead of ``T`` for about one extra forward pass of compute (``project`` then runs
        per chunk, inside the checkpoint; inputs and returned sequences remain O(T)). With a
        symbolic ``T``: no chunks (memory O(T), see the module docstring).
      time_major: inputs, mask and returned sequences are time-major.
      linear: the same step in :class:`LinearStep` form, when it has one; the ``lax.scan``
        path then uses the hand-written backward pass (ignored with ``unroll`` or
        ``constants``). Results equal the generic path to float rounding.
      project_chunk: project the inputs ``project_chunk`` steps at a time inside an outer loop
        (performance only: the projected block of a span stays small). None: 10 steps from
        64 batch rows and 50 steps on, else all steps at once (see :data:`PROJECT_CHUNK`), and
        for a call that is not differentiated also spans of 2-10 steps once the projected block
        of all steps reaches :data:`INFER_SPAN_MIN_BYTES`; on a device mesh a differentiated call
        of a step with a hand-written backward pass (``linear``, ``additive``) then runs all steps
        at once, so that its weight gradients are formed and reduced once. 0: all at once. A given
        ``project_chunk`` applies to every call; differentiated on a mesh, its weight gradients
        are reduced once per span. Symbolic sizes: all at once (see the module docstring).
      unbiased_project: ``(project0, bias)`` with ``project(x) == project0(x) + bias`` (``bias``
        along the last axis). A call that is not differentiated then runs ``project0`` and adds
        the bias to each step's input inside the loop, where it joins the step's element-wise
        pass (with ``linear`` and the automatic ``project_chunk`` only; see
        :func:`_primal_choice`). A differentiated call keeps ``project``, whose folded bias
        (:func:`rnnjax.functional.core.gate_matmul`) is faster for training.
      additive: the same step as an :class:`InputAdditiveStep`, when it has that form and no
        ``linear`` form (the reset-before GRU; the LSTM and the reset-after GRU with one recurrent
        dropout mask per gate): its recurrent-kernel gradients are then formed after the loop
        (ignored with ``linear``, ``unroll``, ``remat`` or ``constants``).

    Returns:
      ``(output, final_state)``: output ``(*batch, U)``, or ``(*batch, T, U)`` with
      ``return_sequences`` (``(T, *batch, U)`` when time-major).
    """
    steps = _check_inputs(inputs, mask, time_major)
    if isinstance(scan_unroll, bool) or not isinstance(scan_unroll, int) or scan_unroll < 1:
        raise ValueError(f"`scan_unroll`: expected a positive integer, got {scan_unroll!r}.")
    if not _static(steps):
        scan_unroll = 1  # lax.scan cannot split a symbolic length into unrolled blocks
    x = inputs if time_major else jnp.moveaxis(inputs, -2, 0)
    m = None
    if mask is not None:
        m = mask if time_major else jnp.moveaxis(mask, -1, 0)
        x = zero_masked_inputs(x, m)

    if constants is None:
        call = step
    else:
        def call(state, x_t):
            return step(state, x_t, constants)

    def project_span(x_span):
        return project(x_span) if project is not None else x_span

    def first_output(s, x_first):
        return call(s, jax.tree_util.tree_map(lambda a: a[0], project_span(x_first)))[1]

    out_struct = jax.eval_shape(first_output, initial_state, x[:1])
    zero_out = jnp.zeros(out_struct.shape, out_struct.dtype)

    def body(carry, inp):
        state, last = carry
        x_t, m_t = inp if m is not None else (inp, None)
        new_state, y = call(state, x_t)
        state, y = _mask_step(m_t, new_state, state, y, last, zero_output_for_mask)
        return (state, y), (y if return_sequences else None)

    carry = (initial_state, zero_out)
    use_linear = linear is not None and constants is None
    use_additive = additive is not None and not use_linear and constants is None and not remat

    if unroll:
        if not _static(steps):
            raise ValueError(f"`unroll=True`: a Python loop needs a known number of time steps, got the "
                             f"symbolic {steps}; use unroll=False (lax.scan) for a symbolic time axis.")
        xs = project_span(x)
        seq = xs if m is None else (xs, m)
        outputs = []
        order = range(steps - 1, -1, -1) if go_backwards else range(steps)
        for t in order:
            carry, y = body(carry, jax.tree_util.tree_map(lambda a: a[t], seq))
            if return_sequences:
                outputs.append(y)
        ys = jnp.stack(outputs) if return_sequences else None
    else:
        def run_span(c, raw, unbiased=None):
            """Projects a span of steps (time-major raw inputs) and runs the loop over it."""
            x_span, m_span = raw if m is not None else (raw, None)
            xs_span = project_span(x_span) if unbiased is None else unbiased[0](x_span)
            if use_linear:
                ys_span, state, last = _linear_scan(
                    linear, xs_span, c[0], c[1], m_span, go_backwards=go_backwards,
                    return_sequences=return_sequences, zero_output_for_mask=zero_output_for_mask,
                    scan_unroll=scan_unroll, xp_bias=None if unbiased is None else unbiased[1])
                return (state, last), ys_span
            seq_span = xs_span if m_span is None else (xs_span, m_span)
            if use_additive:
                return _input_additive_scan(additive, c, xs_span, m_span, go_backwards=go_backwards,
                                            return_sequences=return_sequences,
                                            zero_output_for_mask=zero_output_for_mask, scan_unroll=scan_unroll)
            return lax.scan(body, c, seq_span, reverse=go_backwards, unroll=scan_unroll)

        raw = x if m is None else (x, m)
        batch_rows = math.prod(x.shape[1:-1])
        chunk = _remat_chunk(steps) if remat else _projection_chunk(steps, project_chunk, batch_rows)

        def run_chunked(chunk, raw, carry, unbiased=None):
            if not _static(chunk) or chunk <= 1 or chunk >= steps:
                if remat and not use_linear:  # too short to chunk: checkpoint every step
                    xs = project_span(x)
                    seq = xs if m is None else (xs, m)
                    carry, ys = lax.scan(jax.checkpoint(body), carry, seq, reverse=go_backwards, unroll=scan_unroll)
                else:
                    carry, ys = run_span(carry, raw, unbiased)
            else:
                # Spans of `chunk` steps: each projected inside the outer loop (the projected block of a
                # span stays small on the CPU), and with `remat` checkpointed, so that only span
                # boundaries are stored for the backward pass (memory ~ sqrt(T)).
                span = jax.checkpoint(run_span) if remat else functools.partial(run_span, unbiased=unbiased)
                n_chunks, rest = divmod(steps, chunk)
                head = jax.tree_util.tree_map(
                    lambda a: a[:n_chunks * chunk].reshape((n_chunks, chunk) + a.shape[1:]), raw)
                tail = jax.tree_util.tree_map(lambda a: a[n_chunks * chunk:], raw)  # the last `rest` steps
                ys_tail = None
                if rest and go_backwards:  # processing order: the tail comes first
                    carry, ys_tail = span(carry, tail)
                carry, ys = lax.scan(span, carry, head, reverse=go_backwards)
                if rest and not go_backwards:
                    carry, ys_tail = span(carry, tail)
                if return_sequences:
                    ys = ys.reshape((n_chunks * chunk,) + ys.shape[2:])
                    if rest:
                        ys = jnp.concatenate([ys, ys_tail], 0)
            return carry, ys

        # On a device mesh, a differentiated step with a hand-written backward pass runs all steps
        # in one loop under the automatic plan, so that its weight gradients are formed and
        # reduced across devices once, not once per span; spans are then for inference.
        one_loop = (use_linear or use_additive) and not remat and project_chunk is None and partitioned(x)
        train_chunk = steps if one_loop else chunk
        # For a call that is not differentiated: spans (infer_chunk) and/or the unbiased projection.
        infer_chunk, unbiased = chunk, None
        if use_linear and not remat and project_chunk is None:
            one_step = jax.ShapeDtypeStruct(x[:1].shape, x.dtype)
            xp_struct = jax.eval_shape(project_span, one_step)
            if unbiased_project is not None:
                project0, bias = unbiased_project
                if _same_struct(xp_struct, jax.eval_shape(project0, one_step)) and _same_struct(
                        xp_struct, jax.eval_shape(lambda a: _add_last(project0(a), bias), one_step)):
                    unbiased = unbiased_project
            xp_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(xp_struct))
            if _static(steps, xp_bytes) and chunk >= steps and steps * xp_bytes >= INFER_SPAN_MIN_BYTES:
                span = max(2, min(PROJECT_CHUNK, INFER_SPAN_BYTES // max(xp_bytes, 1)))
                infer_chunk = span if steps > span else chunk
        if infer_chunk == train_chunk and unbiased is None:
            carry, ys = run_chunked(train_chunk, raw, carry)
        else:  # the inference program when not differentiated, the training one when differentiated
            carry, ys = _primal_choice(lambda r, c: run_chunked(infer_chunk, r, c, unbiased),
                                       lambda r, c: run_chunked(train_chunk, r, c), raw, carry)
        if return_sequences and go_backwards:
            ys = jnp.flip(ys, 0)

    final_state, last = carry
    if return_sequences:
        return (ys if time_major else jnp.moveaxis(ys, 0, -2)), final_state
    return last, final_state


def scan_spatial(step, inputs, initial_state, *, feature_ndim: int, project=None, mask=None,
                 unbiased_project=None, **kwargs):
    """:func:`scan_rnn` for inputs ``(*batch, T, *features)`` with ``feature_ndim`` feature axes.

    The sequence is handed to the driver time-major with the feature axes flattened;
    ``project`` (if given) sees ``(T, *batch, *features)``. Returned sequences are
    ``(*batch, T, ...)``.
    """
    nb = inputs.ndim - feature_ndim - 1
    if nb < 0:
        raise ValueError(f"`inputs`: expected (*batch, time, {feature_ndim} feature axes), got shape {inputs.shape}.")
    feature_shape = inputs.shape[nb + 1:]
    if mask is not None and tuple(jnp.shape(mask)) != inputs.shape[:nb + 1]:
        raise ValueError(f"`mask`: expected shape {inputs.shape[:nb + 1]} (batch, timesteps), got {tuple(jnp.shape(mask))}.")
    x = jnp.moveaxis(inputs, nb, 0)
    x = x.reshape(x.shape[:nb + 1] + (math.prod(feature_shape),))
    m = None if mask is None else jnp.moveaxis(jnp.asarray(mask), nb, 0)

    def unflat(x, project=project):
        x = x.reshape(x.shape[:-1] + tuple(feature_shape))
        return x if project is None else project(x)

    if unbiased_project is not None:
        unbiased_project = (functools.partial(unflat, project=unbiased_project[0]), unbiased_project[1])
    output, final = scan_rnn(step, x, initial_state, project=unflat, mask=m, time_major=True,
                             unbiased_project=unbiased_project, **kwargs)
    if kwargs.get("return_sequences"):
        output = jnp.moveaxis(output, 0, nb)
    return output, final
