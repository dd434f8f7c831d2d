"""The one sequence driver: every rnnjax layer runs its cell through :func:`run_program` (the
CuDNN layers too, except on their cuDNN backend, which runs the fused GPU kernel), and
:func:`scan_rnn` is its public form for any step function.

Given a step ``step(state, xp_t) -> (new_state, y_t)`` and an input sequence, the driver
computes, for ``t`` in processing order (``T-1 ... 0`` when ``go_backwards``)::

    x_t     = where(m_t, x_t, 0)                # a masked step's input never reaches the numbers
    xp      = project(x)                        # many steps at once, outside the recurrence
    s_in    = where(r_t, 0, s_{t-1})            # a restart: the fresh (zero) state ...
    o_in    = where(r_t, 0, o_{t-1})            # ... and no previous output
    s', y   = step(s_in, xp_t[, constants])
    s_t     = where(m_t, s', s_in)              # masked steps leave every state unchanged
    o_t     = where(m_t, y, o_in)               # ... and repeat the previous output (0 at first)
            = where(m_t, y, 0)                  # with zero_output_for_mask=True

and returns ``(o_{last}, s_{last})`` or, with ``return_sequences``, all ``o_t`` in processing
order (reversed time when ``go_backwards``, as Keras does). Because masked inputs are zeroed
first, NaN or inf at masked steps give the outputs and gradients of zero padding
(:mod:`rnnjax.functional.masking`).

Restarts (``reset``, for episodes and packed sequences): ``reset[..., t]`` True starts a new
sequence at step ``t`` (input order); ``r_t`` is that flag in processing order
(:func:`rnnjax.functional.masking.restarts`: with ``go_backwards`` each sequence runs backwards
within itself, so ``r_t = reset[t + 1]``). The ``where`` cuts every gradient across a restart.
``reset`` is data, like the mask: it travels next to it, never in the options.

How it runs (none of it changes a number beyond float rounding) is the private planner's choice
(:mod:`rnnjax.functional._planner`): the loop (the hand-written backward passes of
:mod:`rnnjax.functional._matmul_backward` and :mod:`rnnjax.functional._input_additive`, or
autodiff's), spans of projected steps, and another program for a call that is not differentiated.
``unroll`` is a Python loop, else ``lax.scan``. ``docs/design.md`` is the map. The options of a
call are one static value, :class:`~rnnjax.functional.options.LoopOptions`, built once where the
call enters and handed down to the loops and the planner; data travels as arguments.

Symbolic sizes (``jax.export.symbolic_shape``): the driver takes the program right for every
size (all steps projected at once, ``remat`` without spans, ``scan_unroll`` 1, no folded bias);
``unroll=True`` with a symbolic time axis is an error (a Python loop needs its length).

Shapes: ``inputs`` is ``(*batch, T, F)`` (any number of batch dimensions, none included, so a
single unbatched sequence works and ``jax.vmap`` over it equals the batched call) or
``(T, *batch, F)`` with ``time_major=True``; ``mask`` is ``(*batch, T)`` (``(T, *batch)`` when
time-major) and boolean; ``reset`` likewise.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, cast

import jax
import jax.numpy as jnp
from jax import lax

from rnnjax.functional import _planner
from rnnjax.functional._input_additive import scan_input_additive
from rnnjax.functional._matmul_backward import scan_matmul_step
from rnnjax.functional.masking import check_flags, mask_step, restart, restarts, zero_masked_inputs
from rnnjax.functional.mesh import static
from rnnjax.functional.options import LoopOptions
from rnnjax.functional.protocol import CoreProgram, InputAdditiveStep, LoopBias, RecurrentMatmulStep

Step = Callable[..., tuple[Any, jax.Array]]


def scan_rnn(
    step: Step,
    inputs: jax.Array,
    initial_state: Any,
    *,
    project: Callable[[jax.Array], Any] | None = None,
    mask: jax.Array | None = None,
    reset: jax.Array | None = None,
    constants: Any = None,
    go_backwards: bool = False,
    return_sequences: bool = False,
    zero_output_for_mask: bool = False,
    unroll: bool = False,
    scan_unroll: int = 1,
    remat: bool = False,
    time_major: bool = False,
) -> tuple[jax.Array, Any]:
    """Runs ``step`` over the time axis of ``inputs``.

    Args:
      step: ``step(state, xp_t) -> (state, y_t)``, or ``step(state, xp_t, constants)`` when
        ``constants`` is given. ``state`` is any pytree of ``(*batch, ...)`` arrays.
      inputs: ``(*batch, T, F)`` (``(T, *batch, F)`` if ``time_major``).
      initial_state: the state pytree before the first processed step.
      project: applied to the time-major input ``(T, *batch, F)`` (or to spans of steps) before
        the loop: the input projection ``x @ kernel + bias`` of many steps in one matmul;
        identity if None.
      mask: boolean ``(*batch, T)``; False steps are skipped (see the module docstring).
      reset: boolean ``(*batch, T)``: True where a new sequence starts (episodes, packed
        sequences). Before step ``t`` with ``reset[..., t]`` the state is replaced by zeros (the
        fresh initial state of every rnnjax layer) and the previous output carried for masked
        steps by 0; the first sequence of a row (the steps before its first restart) continues
        from ``initial_state``, so ``reset[..., 0]`` True starts from zeros instead. With
        ``go_backwards`` each sequence is processed backwards within itself (its restart falls
        at its last step in input order; ``initial_state`` continues into the row's last
        sequence, and ``reset[..., 0]`` changes nothing), so a packed row gives exactly what
        each sequence gives alone, values and gradients: no gradient crosses a restart, and
        ``initial_state`` reaches only the first sequence processed. The final state is the
        state after the last step processed. A restart at a masked step still applies (the
        next unmasked step starts fresh); the masked step itself outputs 0, like a masked step
        at a sequence's start. The fast paths all take it (``docs/design.md``).
      constants: passed unchanged to every step.
      go_backwards: process from the last step to the first; outputs in processing order.
      return_sequences: return every step's output instead of the last one.
      zero_output_for_mask: output zeros at masked steps instead of repeating the last output.
      unroll: a Python loop over the (static) time steps instead of ``lax.scan``.
      scan_unroll: ``lax.scan``'s partial unroll factor (performance only).
      remat: rematerialise the loop in the backward pass: steps run in chunks of about
        ``sqrt(T)`` and only chunk boundaries are stored, so memory grows as ``sqrt(T)`` instead
        of ``T`` for about one extra forward pass (``project`` then runs per chunk, inside the
        checkpoint; inputs and returned sequences remain O(T)).
      time_major: inputs, mask and returned sequences are time-major.

    Returns:
      ``(output, final_state)``: output ``(*batch, U)``, or ``(*batch, T, U)`` with
      ``return_sequences`` (``(T, *batch, U)`` when time-major).
    """
    options = LoopOptions(
        go_backwards=go_backwards,
        return_sequences=return_sequences,
        zero_output_for_mask=zero_output_for_mask,
        unroll=unroll,
        scan_unroll=scan_unroll,
        remat=remat,
        time_major=time_major,
    )
    return run_program(
        CoreProgram(project, step), inputs, initial_state, options, mask=mask, reset=reset, constants=constants
    )


def run_program(
    program: CoreProgram,
    inputs: jax.Array,
    initial_state: Any,
    options: LoopOptions = LoopOptions(),
    *,
    mask: jax.Array | None = None,
    reset: jax.Array | None = None,
    constants: Any = None,
) -> tuple[jax.Array, Any]:
    """Runs a :class:`~rnnjax.functional.protocol.CoreProgram` (with its backward forms) over
    ``inputs``: the one entry of the front ends (:func:`rnnjax.functional.rnn`, the layers).

    ``inputs``, ``initial_state``, ``mask``, ``reset`` and ``constants`` are :func:`scan_rnn`'s;
    ``program.project`` and ``program.step`` are its ``project`` and ``step``; ``options`` (a
    :class:`~rnnjax.functional.options.LoopOptions`) its options. With ``options.feature_axes``
    above one (ConvLSTM: ``rank + 1``), ``inputs`` is ``(*batch, T, *features)`` (batch-major
    only), ``project`` sees ``(T, *batch, *features)`` and returned sequences are ``(*batch, T,
    ...)``. Without ``options.custom_backward`` the program's backward forms are dropped.
    """
    options = options.checked()
    if options.backend != "scan" and program.fused is not None:
        from rnnjax.onednn import dispatch  # oneDNN's fused kernels where the backend picks them

        scan = functools.partial(
            run_program, program, options=options._replace(backend="scan"), mask=mask, reset=reset, constants=constants
        )
        done = dispatch.run(
            program, inputs, initial_state, options, scan=scan, mask=mask, reset=reset, constants=constants
        )
        if done is not None:
            return done
    elif options.backend == "onednn":
        raise ValueError(
            "`backend='onednn'`: this cell has no oneDNN kernel (oneDNN runs LSTMCore and GRUCore "
            "only, not stacked cells, ConvLSTM, SimpleRNN or custom cells); use backend='auto' or 'scan'."
        )
    if not options.custom_backward:
        program = program.without_backward_forms()
    if options.feature_axes != 1:
        return _run_spatial(program, inputs, initial_state, options, mask=mask, reset=reset, constants=constants)
    _check_inputs(inputs, mask, reset, options.time_major)
    time_axis = 0 if options.time_major else inputs.ndim - 2
    return _TimeMajorRun(program, (inputs, mask, reset), initial_state, options, constants, time_axis=time_axis).run()


def _run_spatial(program: CoreProgram, inputs, initial_state, options: LoopOptions, *, mask, reset, constants):
    """:func:`run_program` for ``(*batch, T, *features)``: run time-major with the feature axes
    flattened, unflattened again before ``project``."""
    feature_axes = options.feature_axes
    nb = inputs.ndim - feature_axes - 1
    if nb < 0:
        raise ValueError(f"`inputs`: expected (*batch, time, {feature_axes} feature axes), got shape {inputs.shape}.")
    feature_shape = inputs.shape[nb + 1 :]
    check_flags(inputs.shape[: nb + 1], mask, reset)

    def unflat(x, project=program.project):
        x = x.reshape(x.shape[:-1] + tuple(feature_shape))
        return x if project is None else project(x)

    loop_bias = program.loop_bias
    if loop_bias is not None:
        loop_bias = LoopBias(functools.partial(unflat, project=loop_bias.project_without_bias), loop_bias.bias)
    program = program._replace(project=unflat, loop_bias=loop_bias)
    flags = tuple(None if f is None else jnp.asarray(f) for f in (mask, reset))
    run = _TimeMajorRun(program, (inputs, *flags), initial_state, options, constants, time_axis=nb)
    _check_inputs(run.x, None, None, True)
    return run.run()


class _TimeMajorRun:
    """One call: the loops, spans and the plan, on the time-major view ``x (T, *batch, F)`` of the
    inputs (masked steps not yet zeroed; the feature axes of a spatial step flattened). Returned
    sequences get their time axis at ``time_axis``, where the caller's inputs have it."""

    def __init__(
        self, program: CoreProgram, raw, initial_state, options: LoopOptions, constants=None, *, time_axis: int
    ):
        """``raw``: ``(inputs, mask or None, reset or None)`` in the caller's layout."""
        self.time_axis, self.feature_axes = time_axis, options.feature_axes
        inputs, mask, reset = raw
        self.x, self.m, r = self.time_major(raw)
        self.r = restarts(r, options.go_backwards)  # in processing order
        # in the caller's layout, each span's slices taken from here
        self.raw = (inputs, mask, None if reset is None else jnp.moveaxis(self.r, 0, time_axis))
        self.steps = self.x.shape[0]
        if not static(self.steps):
            options = options._replace(scan_unroll=1)  # lax.scan cannot split a symbolic length into unrolled blocks
        self.program, self.options, self.constants = program, options, constants
        self.path = _planner.choose_path(program, options, has_constants=constants is not None)
        out_struct = jax.eval_shape(self.first_output, initial_state, self.x[:1])
        self.carry = (initial_state, jnp.zeros(out_struct.shape, out_struct.dtype))

    def time_major(self, raw):
        """``(x (T, *batch, F), m, r)`` (flags ``(T, *batch)`` or None) from ``(inputs, mask,
        flags)`` in the caller's layout; the feature axes of a spatial step flattened into one."""
        inputs, *flags = raw
        x = jnp.moveaxis(inputs, self.time_axis, 0)
        if self.feature_axes != 1:
            x = x.reshape(x.shape[: x.ndim - self.feature_axes] + (math.prod(x.shape[x.ndim - self.feature_axes :]),))
        return (x, *(None if f is None else jnp.moveaxis(f, self.time_axis, 0) for f in flags))

    def call(self, state, x_t):
        if self.constants is None:
            return self.program.step(state, x_t)
        return self.program.step(state, x_t, self.constants)

    def project_span(self, x_span, m_span=None, project=None):
        """The projection of a span of raw steps, masked steps zeroed first (``project``: the
        program's, or the one without the bias of :class:`LoopBias`)."""
        if m_span is not None:
            x_span = zero_masked_inputs(x_span, m_span)
        project = project or self.program.project
        return project(x_span) if project is not None else x_span

    def first_output(self, s, x_first):
        return self.call(s, jax.tree_util.tree_map(lambda a: a[0], self.project_span(x_first)))[1]

    def body(self, carry, inp):
        """The generic loop's step (autodiff differentiates it)."""
        x_t, m_t, r_t = inp
        state, last = restart(r_t, carry)
        new_state, y = self.call(state, x_t)
        state, y = mask_step(m_t, new_state, state, y, last, self.options.zero_output_for_mask)
        return (state, y), (y if self.options.return_sequences else None)

    def run(self):
        """``(output or outputs, final state)``: the outputs in processing order, time at ``time_axis``."""
        if self.options.unroll:
            carry, ys = self.finish(*self.run_unrolled())
        else:
            carry, ys = self.run_scanned()
        final_state, last = carry
        return (ys if self.options.return_sequences else last), final_state

    def finish(self, carry, ys):
        """A loop's time-major outputs in time order (unrolled: processing order) -> processing
        order, time at ``time_axis``."""
        opts = self.options
        if opts.return_sequences:
            ys = jnp.moveaxis(jnp.flip(ys, 0) if opts.go_backwards and not opts.unroll else ys, 0, self.time_axis)
        return carry, ys

    def run_unrolled(self):
        if not static(self.steps):
            raise ValueError(
                f"`unroll=True`: a Python loop needs a known number of time steps, got the "
                f"symbolic {self.steps}; use unroll=False (lax.scan) for a symbolic time axis."
            )
        seq = (self.project_span(self.x, self.m), self.m, self.r)
        carry, outputs = self.carry, []
        order = range(self.steps - 1, -1, -1) if self.options.go_backwards else range(self.steps)
        for t in order:
            carry, y = self.body(carry, jax.tree_util.tree_map(lambda a, t=t: a[t], seq))
            if self.options.return_sequences:
                outputs.append(y)
        return carry, (jnp.stack(outputs) if self.options.return_sequences else None)

    def run_scanned(self):
        raw = (self.x, self.m, self.r)
        plan = _planner.plan_sequence(self.program, self.path, self.x, self.steps, self.options, self.project_span)

        def train(r, c):
            return self.finish(*self.run_chunked(plan.train_chunk, r, c))

        if plan.infer_chunk == plan.train_chunk and plan.loop_bias is None:
            return train(raw, self.carry)
        # the inference program when not differentiated (on the inputs in the caller's layout), the
        # training one when differentiated (on the time-major inputs)
        return _planner.infer_or_train(
            lambda r, o, c: self.run_inference(plan.infer_chunk, o, c, plan.loop_bias),
            lambda r, o, c: train(r, c),
            raw,
            self.raw,
            self.carry,
        )

    def run_span(self, carry, raw, loop_bias: LoopBias | None = None):
        """Projects a span of steps (time-major raw inputs) and runs the planned loop over it:
        ``(carry, time-major outputs in time order)``."""
        x_span, m_span, r_span = raw
        xs_span = self.project_span(x_span, m_span, None if loop_bias is None else loop_bias.project_without_bias)
        opts = self.options
        if self.path == "matmul":
            matmul_step = cast(RecurrentMatmulStep, self.program.matmul_step)  # the "matmul" path: there is one
            ys_span, state, last = scan_matmul_step(
                matmul_step,
                xs_span,
                carry[0],
                carry[1],
                m_span,
                r_span,
                opts,
                None if loop_bias is None else loop_bias.bias,
            )
            return (state, last), ys_span
        if self.path == "input_additive":
            additive = cast(InputAdditiveStep, self.program.input_additive_step)  # the path's: there is one
            return scan_input_additive(additive, carry, xs_span, m_span, r_span, opts)
        return lax.scan(self.body, carry, (xs_span, m_span, r_span), reverse=opts.go_backwards, unroll=opts.scan_unroll)

    def split_spans(self, raw, chunk):
        """``(head, tail)``: the first ``n·chunk`` steps as ``(n, chunk, ...)`` and the last ``steps mod chunk``."""
        n_chunks = self.steps // chunk
        head = jax.tree_util.tree_map(lambda a: a[: n_chunks * chunk].reshape((n_chunks, chunk) + a.shape[1:]), raw)
        return head, jax.tree_util.tree_map(lambda a: a[n_chunks * chunk :], raw)

    def run_chunked(self, chunk, raw, carry):
        """The loop over spans of ``chunk`` steps, each projected inside the outer loop (and with
        ``remat`` checkpointed: only span boundaries are stored, memory ~ sqrt(T)): ``(carry,
        time-major outputs in time order)``."""
        steps, opts = self.steps, self.options
        if not static(chunk) or chunk <= 1 or chunk >= steps:
            if opts.remat and self.path != "matmul":  # too short to chunk: checkpoint every step
                seq = (self.project_span(self.x, self.m), self.m, self.r)
                return lax.scan(
                    jax.checkpoint(self.body), carry, seq, reverse=opts.go_backwards, unroll=opts.scan_unroll
                )
            return self.run_span(carry, raw)
        span = jax.checkpoint(self.run_span) if opts.remat else self.run_span
        n_chunks, rest = divmod(steps, chunk)
        head, tail = self.split_spans(raw, chunk)
        ys_tail: Any = None
        if rest and opts.go_backwards:  # processing order: the tail comes first
            carry, ys_tail = span(carry, tail)
        carry, ys = lax.scan(span, carry, head, reverse=opts.go_backwards)
        if rest and not opts.go_backwards:
            carry, ys_tail = span(carry, tail)
        if opts.return_sequences:
            ys = ys.reshape((n_chunks * chunk,) + ys.shape[2:])
            if rest:
                ys = jnp.concatenate([ys, ys_tail], 0)
        return carry, ys

    def run_inference(self, chunk, raw, carry, loop_bias: LoopBias | None):
        """The program of a call that is not differentiated, on ``raw`` inputs in the caller's
        layout: spans of ``chunk`` steps, each sliced, projected and run inside an outer loop, its
        outputs written at once into the returned sequence (processing order, time at
        ``time_axis``), so that one span of projected steps, and neither a time-major copy of the
        inputs nor of the outputs, is alive (``bench/README.md``, "Inference memory"):
        ``(carry, outputs)``."""
        if chunk >= self.steps:
            return self.finish(*self.run_span(carry, self.time_major(raw), loop_bias))
        backwards = self.options.go_backwards
        n_chunks, rest = divmod(self.steps, chunk)
        out = None
        if self.options.return_sequences:  # zeros made from the inputs, so that they share their sharding
            lead = raw[0][(Ellipsis,) + (0,) * self.feature_axes]  # (*batch, T) or (T, *batch)
            y_features = carry[1].shape[lead.ndim - 1 :]
            # element-wise from the inputs (NaN-safe): jax 0.12's zeros_like and broadcast_to drop an
            # Explicit mesh axis; a comparison and a broadcasting add keep it
            zeros = ((lead != lead) & False).astype(carry[1].dtype)[(Ellipsis,) + (None,) * len(y_features)]
            out = zeros + jnp.zeros(y_features, carry[1].dtype)

        def span(c, t0, k=chunk):
            carry, out = c
            if self.m is None:
                # the previous output is read only at masked steps: carried into the next span, it
                # would be a loop variable of its own, copied from h at every step (bench/README.md,
                # "Batch 1")
                carry = (carry[0], jnp.zeros_like(carry[1]))
            raw_span = jax.tree_util.tree_map(lambda a: lax.dynamic_slice_in_dim(a, t0, k, self.time_axis), raw)
            carry, ys = self.run_span(carry, self.time_major(raw_span), loop_bias)
            return (carry, self.write(out, ys, t0)), None

        starts = jnp.arange(n_chunks, dtype=jnp.int32) * chunk
        c = (carry, out)
        if rest and backwards:  # processing order: the tail comes first
            c = span(c, n_chunks * chunk, rest)[0]
        c, _ = lax.scan(span, c, starts, reverse=backwards)
        if rest and not backwards:
            c = span(c, n_chunks * chunk, rest)[0]
        return c

    def write(self, out, ys, t0):
        """``out`` with a span's outputs ``ys`` (time-major, time order, from step ``t0`` on)
        written at their places in processing order."""
        if out is None:
            return None
        k = ys.shape[0]
        if self.options.go_backwards:
            ys, t0 = jnp.flip(ys, 0), self.steps - t0 - k
        return lax.dynamic_update_slice_in_dim(out, jnp.moveaxis(ys, 0, self.time_axis), t0, self.time_axis)


def _check_inputs(inputs, mask, reset, time_major):
    if not hasattr(inputs, "ndim") or inputs.ndim < 2:
        raise ValueError(
            f"`inputs`: expected an array of shape (*batch, time, features) with at least 2 "
            f"dimensions, got {getattr(inputs, 'shape', type(inputs).__name__)}."
        )
    steps = inputs.shape[0 if time_major else inputs.ndim - 2]
    if steps == 0:
        raise ValueError(
            f"`inputs`: the time axis is empty (shape {inputs.shape}); a sequence needs at least one step."
        )
    check_flags(inputs.shape[:-1], mask, reset)
    return steps
