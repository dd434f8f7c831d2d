"""oneDNN's fused RNN primitives as a differentiable JAX function: :func:`fused_rnn`.

Layout (oneDNN's, with one layer and one direction)::

    x (N, T, I), h0 (N, U), c0 (N, U) (LSTM only), w_layer (I, G, U), w_iter (U, G, U), bias (Gb, U)
    -> y (N, T, U) in input time order, hT (N, U), cT (N, U) (LSTM only)

``cell``: ``"lstm"`` (G = Gb = 4, gates i, f, c, o: Keras's kernel ``(I, 4U)`` is ``w_layer``
reshaped), ``"gru"`` (Keras 2's ``reset_after=False``: G = Gb = 3, gates z, r, h) or ``"lbr_gru"``
(linear before reset, Keras's ``reset_after=True``: G = 3, Gb = 4, the bias rows ``b_z + b_rec_z,
b_r + b_rec_r, b_h, b_rec_h``). Sigmoid gates and tanh, as oneDNN computes them. ``reverse``:
the steps run from ``T - 1`` to 0 (``y`` still indexed by input time).

Two JAX primitives carry the calls, ``rnnjax_onednn_rnn_fwd`` (inference, or training with
oneDNN's workspace as an extra output) and ``rnnjax_onednn_rnn_bwd``, tied together by
``jax.custom_vjp``. Their CPU lowering is the FFI call, except in two programs where a custom call
would be wrong, which lower instead to rnnjax's scan path computing the same function
(:func:`reference`): a program lowered for ``jax.export`` (a custom call cannot be serialised), and
a program partitioned over several devices (XLA would gather every operand of a custom call onto
each device). Other platforms lower to the scan path too. ``jax.vmap`` folds the mapped axis into
the batch for the inference call (one oneDNN call) and maps the training calls one slice at a time
(their weight gradients are per slice).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import batching, mlir

from rnnjax.onednn import _build

CELLS = {"lstm": 0, "gru": 1, "lbr_gru": 2}
GATES = {"lstm": (4, 4), "gru": (3, 3), "lbr_gru": (3, 4)}  # (gates of the weights, rows of the bias)


class Spec(NamedTuple):
    """The static description of a call: ``cell`` (a key of :data:`CELLS`) and ``reverse``."""

    cell: str
    reverse: bool


def _states(cell: str) -> int:
    return 2 if cell == "lstm" else 1


fwd_p = Primitive("rnnjax_onednn_rnn_fwd")
fwd_p.multiple_results = True
bwd_p = Primitive("rnnjax_onednn_rnn_bwd")
bwd_p.multiple_results = True


def _fwd_abstract(*args, cell, reverse, training):
    x, h0 = args[0], args[1]
    n, steps, i = x.shape
    u = h0.shape[-1]
    outs = [jax.core.ShapedArray((n, steps, u), x.dtype)] + [jax.core.ShapedArray((n, u), x.dtype)] * _states(cell)
    if training:
        outs.append(jax.core.ShapedArray((_build.workspace_bytes(CELLS[cell], steps, n, i, u, reverse),), jnp.uint8))
    return outs


def _bwd_abstract(*args, cell, reverse):
    k = _states(cell)
    return [jax.core.ShapedArray(a.shape, a.dtype) for a in args[: k + 4]]


fwd_p.def_abstract_eval(_fwd_abstract)
bwd_p.def_abstract_eval(_bwd_abstract)


@functools.cache
def _jitted(prim, **params):
    return jax.jit(functools.partial(prim.bind, **params))


fwd_p.def_impl(lambda *args, **params: _jitted(fwd_p, **params)(*args))
bwd_p.def_impl(lambda *args, **params: _jitted(bwd_p, **params)(*args))


def reference(spec: Spec, x, states, w_layer, w_iter, bias):
    """:func:`fused_rnn`'s primal computed by rnnjax's scan path (any platform): ``(y, final
    states)``, ``y`` in input time order. The lowering of programs that must not hold a custom call."""
    from rnnjax.functional import GRUCore, LSTMCore
    from rnnjax.functional.core import core_program
    from rnnjax.functional.driver import run_program
    from rnnjax.functional.options import LoopOptions

    u = w_iter.shape[0]
    kernel, recurrent = w_layer.reshape(w_layer.shape[0], -1), w_iter.reshape(u, -1)
    core: Any
    if spec.cell == "lstm":
        core, b = LSTMCore(u, recurrent_activation="sigmoid"), bias.reshape(-1)
    elif spec.cell == "gru":
        core, b = GRUCore(u, recurrent_activation="sigmoid"), bias.reshape(-1)
    else:
        core = GRUCore(u, recurrent_activation="sigmoid", reset_after=True)
        b = jnp.stack([bias[:3].reshape(-1), jnp.concatenate([jnp.zeros((2 * u,), bias.dtype), bias[3]])])
    program = core_program(core, core.params_class(kernel, recurrent, b))
    init = core.initial_state((x.shape[0],), x.dtype)._make(states)
    y, final = run_program(
        program, x, init, LoopOptions(go_backwards=spec.reverse, return_sequences=True, backend="scan")
    )
    return (jnp.flip(y, 1) if spec.reverse else y), tuple(final)


def _fwd_reference(*args, cell, reverse, training):
    k = _states(cell)
    x, states, (wl, wi, b) = args[0], args[1 : 1 + k], args[1 + k :]
    y, final = reference(Spec(cell, reverse), x, states, wl, wi, b)
    outs = [y, *final]
    if training:  # nothing to keep: the backward pass of the reference recomputes
        outs.append(jnp.zeros(_fwd_abstract(*args, cell=cell, reverse=reverse, training=True)[-1].shape, jnp.uint8))
    return outs


def _bwd_reference(*args, cell, reverse):
    k = _states(cell)
    primals = args[: k + 4]
    cts = args[-(k + 1) :]  # dy, d final states

    def f(x, states, wl, wi, b):
        y, final = reference(Spec(cell, reverse), x, states, wl, wi, b)
        return y, final

    _, vjp = jax.vjp(f, primals[0], tuple(primals[1 : 1 + k]), *primals[1 + k :])
    dx, dstates, dwl, dwi, db = vjp((cts[0], tuple(cts[1:])))
    return [dx, *dstates, dwl, dwi, db]


def _needs_reference(ctx) -> bool:
    """Whether this lowering must not hold the custom call: ``jax.export``, or a partitioned program."""
    module = ctx.module_context
    if getattr(module.lowering_parameters, "for_export", False):
        return True
    return (
        int(getattr(module.axis_context, "num_devices", 1) or 1) > 1
        or type(module.axis_context).__name__ == "SPMDAxisContext"
    )


def _lowering(target, reference_fn):
    ffi_rule = jax.ffi.ffi_lowering(target)

    def rule(ctx, *args, cell, **params):
        if _needs_reference(ctx):
            return mlir.lower_fun(functools.partial(reference_fn, cell=cell, **params), multiple_results=True)(
                ctx, *args
            )
        return ffi_rule(ctx, *args, cell=np.int64(CELLS[cell]), **params)

    return rule


mlir.register_lowering(fwd_p, mlir.lower_fun(_fwd_reference, multiple_results=True))
mlir.register_lowering(bwd_p, mlir.lower_fun(_bwd_reference, multiple_results=True))
mlir.register_lowering(fwd_p, _lowering("rnnjax_onednn_fwd", _fwd_reference), platform="cpu")
mlir.register_lowering(bwd_p, _lowering("rnnjax_onednn_bwd", _bwd_reference), platform="cpu")


def _map_slices(prim, args, dims, params):
    """The primitive applied to each slice of the mapped axis (``lax.map``): the batching rule of
    the calls whose results are not per row (the training calls' workspace and weight gradients)."""
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    mapped = [i for i, d in enumerate(dims) if d is not None]

    def one(sliced):
        full = list(args)
        for i, s in zip(mapped, sliced):
            full[i] = s
        return prim.bind(*full, **params)

    del size
    outs = jax.lax.map(one, [jnp.moveaxis(args[i], dims[i], 0) for i in mapped])
    return outs, [0] * len(outs)


def _fwd_batch(args, dims, *, cell, reverse, training):
    k = _states(cell)
    if training or any(d is not None for d in dims[1 + k :]):
        return _map_slices(fwd_p, args, dims, dict(cell=cell, reverse=reverse, training=training))
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    rows = []
    for a, d in zip(args[: 1 + k], dims[: 1 + k]):
        a = jnp.broadcast_to(a, (size,) + a.shape) if d is None else jnp.moveaxis(a, d, 0)
        rows.append(a.reshape((-1,) + a.shape[2:]))
    outs = fwd_p.bind(*rows, *args[1 + k :], cell=cell, reverse=reverse, training=False)
    return [o.reshape((size, -1) + o.shape[1:]) for o in outs], [0] * len(outs)


def _bwd_batch(args, dims, *, cell, reverse):
    return _map_slices(bwd_p, args, dims, dict(cell=cell, reverse=reverse))


batching.primitive_batchers[fwd_p] = _fwd_batch
batching.primitive_batchers[bwd_p] = _bwd_batch


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def fused_rnn(spec: Spec, x, states: tuple, w_layer, w_iter, bias):
    """``(y, final states)`` of oneDNN's RNN (see the module docstring): ``y (N, T, U)`` in input
    time order, ``states``/final states ``(h,)`` or ``(h, c)``, each ``(N, U)``; float32."""
    outs = fwd_p.bind(x, *states, w_layer, w_iter, bias, cell=spec.cell, reverse=spec.reverse, training=False)
    return outs[0], tuple(outs[1:])


def _fused_fwd(spec, x, states, w_layer, w_iter, bias):
    outs = fwd_p.bind(x, *states, w_layer, w_iter, bias, cell=spec.cell, reverse=spec.reverse, training=True)
    y, final, workspace = outs[0], tuple(outs[1:-1]), outs[-1]
    return (y, final), (x, states, w_layer, w_iter, bias, y, final, workspace)


def _fused_bwd(spec, residuals, cts):
    x, states, w_layer, w_iter, bias, y, final, workspace = residuals
    dy, dfinal = cts
    grads = bwd_p.bind(
        x, *states, w_layer, w_iter, bias, y, *final, workspace, dy, *dfinal, cell=spec.cell, reverse=spec.reverse
    )
    k = len(states)
    return grads[0], tuple(grads[1 : 1 + k]), grads[1 + k], grads[2 + k], grads[3 + k]


fused_rnn.defvjp(_fused_fwd, _fused_bwd)
