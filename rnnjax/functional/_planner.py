"""The driver's private planner: which loop runs, how the projection is cut into spans, and which
program runs when a call is not differentiated. None of it changes a number beyond float rounding.

* **Path** (:func:`choose_path`): the recurrent-matmul loop (a ``matmul_step``), the
  input-additive loop (an ``input_additive_step``), or the generic loop (autodiff's backward).
* **Projection spans** (:func:`projection_chunk`): from ``CHUNK_MIN_BATCH`` batch rows and
  ``CHUNK_MIN_STEPS`` steps on, the inputs are projected ``PROJECT_CHUNK`` steps at a time inside
  an outer loop, so that the projected block stays small (fresh temporary memory costs page faults
  on the CPU: ``bench/README.md``, "Projection spans").
* **Inference spans and the bias in the loop** (:func:`plan_sequence`, :func:`inference_span`): a
  call that is not differentiated keeps nothing for a backward pass, so it projects as many steps
  at once as fit in ``INFER_SPAN_BYTES`` (at least one; its memory is then the outputs and one
  span) and may add the input bias inside the loop (:class:`~rnnjax.functional.protocol.LoopBias`);
  :func:`infer_or_train` runs that program when not differentiated and the training program when
  differentiated.
* **One loop on a mesh**: differentiated on a device mesh, a step with a hand-written backward
  pass runs all steps in one loop, so that its weight gradients are reduced across devices once.
* **Remat** (:func:`remat_chunk`): spans of about ``sqrt(T)`` steps, each checkpointed.

Symbolic sizes (``jax.export``) cannot be compared with thresholds: then every choice is the one
right for all sizes (all steps at once, no remat spans, no folded bias).

:class:`~rnnjax.functional.options.PlanOverrides` forces any switch (for tests): each call's
:class:`~rnnjax.functional.options.LoopOptions` carries one (``plan``), read here and in
:func:`rnnjax.functional._matmul_backward.plan_matmul_backward` and nowhere else; it is filled from
``with rnnjax.functional.force_plan(in_place_z=False): ...`` blocks, whose value is part of every
jit cache key (a traced function never keeps a stale plan). Nothing here is global state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import jax

from rnnjax.functional.mesh import partitioned, static
from rnnjax.functional.options import LoopOptions, PlanOverrides
from rnnjax.functional.protocol import CoreProgram, LoopBias

# Projection spans: PROJECT_CHUNK steps at a time, from CHUNK_MIN_BATCH rows and CHUNK_MIN_STEPS
# steps on (smaller batches and shorter sequences are slower in spans: bench/README.md,
# "Projection spans").
PROJECT_CHUNK = 10
CHUNK_MIN_BATCH = 64
CHUNK_MIN_STEPS = 50

# Inference spans: a call that is not differentiated projects as many steps at once as fit in
# INFER_SPAN_BYTES (at least one), so its memory is the outputs and one span (bench/README.md,
# "Inference memory").
INFER_SPAN_BYTES = 256 * 2**10


def projection_chunk(steps, project_chunk, batch_rows) -> int:
    """Steps projected at once (``steps``: all); with a symbolic size, all."""
    if project_chunk is None:
        wanted = static(steps, batch_rows) and batch_rows >= CHUNK_MIN_BATCH and steps >= CHUNK_MIN_STEPS
        project_chunk = PROJECT_CHUNK if wanted else 0
    if isinstance(project_chunk, bool) or not isinstance(project_chunk, int) or project_chunk < 0:
        raise ValueError(f"`project_chunk`: expected a non-negative integer, got {project_chunk!r}.")
    return steps if project_chunk == 0 or not static(steps) else project_chunk


def remat_chunk(steps) -> int:
    """Chunk length for ``remat``: about ``sqrt(steps)`` (1 for sequences too short to chunk, and
    for a symbolic number of steps)."""
    return max(1, math.isqrt(steps)) if static(steps) and steps >= 4 else 1


def choose_path(program: CoreProgram, options: LoopOptions, *, has_constants: bool) -> str:
    """``'matmul'``, ``'input_additive'`` or ``'generic'`` (``docs/design.md`` has the table)."""
    if program.matmul_step is not None and not has_constants:
        return "matmul"
    if program.input_additive_step is not None and not has_constants and not options.remat:
        return "input_additive"
    return "generic"


class SequencePlan(NamedTuple):
    """How the scanned loop runs: spans of ``train_chunk`` steps when differentiated and of
    ``infer_chunk`` steps when not (``steps``: one loop); ``loop_bias``: added inside the loop when
    not differentiated (None: the bias stays in the projection)."""

    train_chunk: Any
    infer_chunk: Any
    loop_bias: LoopBias | None


def plan_sequence(
    program: CoreProgram, path: str, x, steps, options: LoopOptions, project_span: Callable
) -> SequencePlan:
    """The :class:`SequencePlan` of a scanned call on time-major inputs ``x (T, *batch, F)``
    (``options.plan`` complete: :meth:`LoopOptions.checked`)."""
    remat, forced = options.remat, cast(PlanOverrides, options.plan)  # checked options: never None
    project_chunk = forced.project_chunk
    chunk = remat_chunk(steps) if remat else projection_chunk(steps, project_chunk, math.prod(x.shape[1:-1]))
    fast = path != "generic"
    one_loop = fast and not remat and project_chunk is None and partitioned(x)
    one_loop = forced.choose("train_in_one_loop", one_loop)
    train_chunk = steps if one_loop else chunk
    one_step = jax.ShapeDtypeStruct(x[:1].shape, x.dtype)
    xp_struct = jax.eval_shape(project_span, one_step)
    loop_bias = None
    if path == "matmul" and not remat and project_chunk is None:
        usable = _usable_loop_bias(program.loop_bias, xp_struct, one_step)
        use_loop_bias = forced.choose("loop_bias", usable is not None, allowed=(False, usable is not None))
        loop_bias = usable if use_loop_bias else None
    step_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(xp_struct))
    return SequencePlan(train_chunk, inference_span(steps, step_bytes, chunk, forced), loop_bias)


def inference_span(steps, step_bytes, chunk, forced: PlanOverrides) -> Any:
    """Steps projected at once by a call that is not differentiated: as many as fit in
    ``INFER_SPAN_BYTES`` of projected inputs (at least 1; all when they all fit). Forced:
    ``forced.infer_span`` (0: the training program's ``chunk``); with ``project_chunk`` forced,
    ``chunk``; with a symbolic size, ``chunk`` even where forced (a span length needs a known
    time axis)."""
    span = forced.infer_span
    if span is not None and (isinstance(span, bool) or not isinstance(span, int) or span < 0):
        raise ValueError(f"`infer_span`: expected a non-negative integer, got {span!r}.")
    if not static(steps, step_bytes) or (span is None and forced.project_chunk is not None):
        return chunk
    if span is None:
        span = max(1, INFER_SPAN_BYTES // max(step_bytes, 1))
    return chunk if span == 0 else min(span, steps)


def _usable_loop_bias(loop_bias: LoopBias | None, xp_struct, one_step) -> LoopBias | None:
    """``loop_bias`` where ``project_without_bias`` and the bias give the projection's structure."""
    if loop_bias is None:
        return None
    without = jax.eval_shape(loop_bias.project_without_bias, one_step)
    with_bias = jax.eval_shape(lambda a: add_last(loop_bias.project_without_bias(a), loop_bias.bias), one_step)
    return loop_bias if _same_struct(xp_struct, without) and _same_struct(xp_struct, with_bias) else None


def infer_or_train(infer: Callable, train: Callable, *args):
    """``infer(*args)`` when not differentiated; when differentiated, ``train(*args)`` and its
    gradient. The two must compute the same function (they differ in how, e.g. spans).

    Values the two close over and that are differentiated are hoisted by ``jax.closure_convert``
    and passed explicitly, so their gradients flow; the backward pass is autodiff's of ``train``.
    """
    conv_train, c_train = jax.closure_convert(train, *args)
    conv_infer, c_infer = jax.closure_convert(infer, *args)
    consts: list = []
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
    return ta == tb and all(  # type: ignore[operator]  # PyTreeDef: jaxlib's _jax has no stub
        u.shape == v.shape and u.dtype == v.dtype for u, v in zip(la, lb)
    )


def add_last(xp, bias):
    """``xp + bias`` along the last axis; ``xp`` may be a tuple of equal parts (the GRU's gates),
    each getting its block of ``bias``."""
    if isinstance(xp, tuple):
        return tuple(p + b for p, b in zip(xp, jax.numpy.split(bias, len(xp), axis=-1)))
    return xp + bias
