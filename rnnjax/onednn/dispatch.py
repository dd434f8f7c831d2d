"""Which calls run on oneDNN's fused kernels (``backend='onednn'`` or ``'auto'``), and running them.

The driver (:func:`rnnjax.functional.driver.run_program`) hands a call here when its
``LoopOptions.backend`` is not ``"scan"`` and its program has a
:class:`~rnnjax.functional.protocol.FusedForm`. :func:`run` finds the first reason the call
cannot run on oneDNN exactly as the scan path computes it, if any:

* the cell is ``LSTMCore`` or ``GRUCore`` (either ``reset_after``) with
  ``recurrent_activation='sigmoid'`` and ``activation='tanh'`` (oneDNN's fixed gate functions);
  not a stacked cell, SimpleRNN, ConvLSTM or a custom cell;
* no mask (oneDNN 3.2's RNN has no sequence lengths, so masked steps cannot be skipped), no
  ``reset`` (it cannot restart a sequence mid-row), no ``constants``, no recurrent dropout and no
  per-gate input dropout (``implementation=1`` with ``dropout > 0`` while training); one input
  dropout mask shared by the gates is applied to the inputs before the kernel, as the step does;
* the generic options: ``custom_backward=True`` (the kernel's gradient is reverse-mode only),
  ``unroll=False``, ``remat=False`` (oneDNN keeps every step for the backward pass),
  ``time_major=False``;
* float32 inputs, parameters and states, sizes known at trace time (not ``jax.export``'s symbolic
  ones), a CPU backend, and a program not partitioned over a device mesh;
* the extra installed and its kernels compiled (:func:`rnnjax.onednn.unavailable_reason`).

``"auto"`` also asks that a step be large enough for oneDNN to win, measured by its work
``rows × units`` (rows: the product of the batch axes): a call that is not differentiated runs on
oneDNN from :data:`AUTO_INFER_MIN_WORK` on; a differentiated one (training) from
:data:`AUTO_TRAIN_MIN_WORK` on, and between the two the forward of a differentiated call runs
rnnjax's scan (``_planner.infer_or_train``: the inference program on oneDNN, the training program
the scan's). Below that rnnjax's scan is as fast or faster on the CPU (``bench/README.md``,
"oneDNN"), and the tiny shapes of tests never build the kernels. ``"onednn"`` runs both on oneDNN
whatever the size, and raises a ``ValueError`` naming the reason where it cannot apply. Where the
extra is installed but its kernels cannot run (no C++ compiler, a failed build), ``"auto"`` runs the
scan and says why in one ``RuntimeWarning`` per process; without the extra it is silent.

Two cases the trace cannot see keep the scan inside the compiled program (:mod:`rnnjax.onednn.ops`
lowers its primitives to the scan path there): ``jax.export`` and a ``jax.jit`` partitioned over
several devices by ``in_shardings`` alone.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from rnnjax.functional.gru import GRUCore
from rnnjax.functional.lstm import LSTMCore
from rnnjax.functional.mesh import partitioned, static
from rnnjax.functional.protocol import CoreProgram, FusedForm, per_gate_masks

# "auto" takes oneDNN from this much work per step (rows × units) on, for a call that is not
# differentiated / for training; below, rnnjax's scan is as fast or faster (bench/README.md, "oneDNN").
AUTO_INFER_MIN_WORK = 8192
AUTO_TRAIN_MIN_WORK = 16384


def _config_reason(fused: FusedForm) -> str | None:
    core = fused.core
    if type(core) not in (LSTMCore, GRUCore):
        return (
            f"{type(core).__name__} has no oneDNN kernel (oneDNN runs LSTMCore and GRUCore only, not stacked "
            "cells, ConvLSTM, SimpleRNN or custom cells)"
        )
    if core.recurrent_activation != "sigmoid" or core.activation != "tanh":
        return (
            "oneDNN computes sigmoid gates and a tanh activation; got "
            f"recurrent_activation={core.recurrent_activation!r}, activation={core.activation!r}"
        )
    if fused.recurrent_dropout_mask is not None:
        return "recurrent dropout (oneDNN has no dropout inside its loop)"
    if per_gate_masks(fused.dropout_mask):
        return "input dropout with one mask per gate (implementation=1; implementation=2 shares one mask)"
    return None


def _options_reason(options, mask, reset, constants) -> str | None:
    if mask is not None:
        return "a mask (oneDNN 3.2's RNN has no sequence lengths to skip masked steps)"
    if reset is not None:
        return "a reset (oneDNN cannot restart a sequence mid-row)"
    if constants is not None:
        return "constants"
    for name, why in (
        ("unroll", "a Python loop"),
        ("remat", "rematerialisation (oneDNN keeps every step)"),
        ("time_major", "time-major inputs"),
    ):
        if getattr(options, name):
            return f"{name}=True ({why})"
    if not options.custom_backward:
        return "custom_backward=False (forward-mode differentiation needs the scan path)"
    return None


def _data_reason(fused: FusedForm, inputs, initial_state) -> str | None:
    leaves = [inputs, *jax.tree_util.tree_leaves(initial_state), *jax.tree_util.tree_leaves(fused.params)]
    dtypes = sorted({str(jnp.result_type(a)) for a in leaves} - {"float32"})
    if dtypes:
        return f"oneDNN's kernels take float32 only, got {dtypes}"
    if not static(*inputs.shape):
        return "symbolic shapes (jax.export keeps the scan path)"
    if math.prod(inputs.shape[:-2]) == 0:
        return "an empty batch"
    if partitioned(*leaves):
        return "a program partitioned over a device mesh (the fused kernel is for one device)"
    if jax.default_backend() != "cpu":
        return f"JAX's default backend is {jax.default_backend()!r}, not the CPU"
    devices = getattr(inputs, "devices", None)
    if devices is not None and not isinstance(inputs, jax.core.Tracer):
        platforms = {d.platform for d in devices()}
        if platforms != {"cpu"}:
            return f"the inputs live on {sorted(platforms)}, not the CPU"
    return None


def _exactness_reason(fused: FusedForm, inputs, initial_state, options, mask, reset, constants) -> str | None:
    return (
        _config_reason(fused)
        or _options_reason(options, mask, reset, constants)
        or _data_reason(fused, inputs, initial_state)
    )


def _available() -> str | None:
    from rnnjax.onednn import _build

    return _build.unavailable_reason()


_warned: list = []


def _warn_unavailable(reason: str) -> None:
    """One ``RuntimeWarning`` per process where ``'auto'`` would take oneDNN, the extra is
    installed, and its kernels cannot run (no compiler, a failed build): the scan runs instead.
    Without the extra installed ``'auto'`` is silent."""
    from rnnjax.onednn import _build

    if not _warned and _build.installed():
        _warned.append(reason)
        warnings.warn(
            f"rnnjax's oneDNN extra is installed but its kernels cannot run, so backend='auto' runs the "
            f"scan path: {reason}",
            RuntimeWarning,
            stacklevel=2,
        )


def run(
    program: CoreProgram, inputs, initial_state, options, *, scan: Callable, mask=None, reset=None, constants=None
) -> tuple | None:
    """``(output, final state)`` of the call on oneDNN where it runs there (the module docstring's
    rules, the kernels' availability last, and for ``"auto"`` its sizes; ``scan(inputs,
    initial_state)`` is the scan path, for the training program of a mid-sized call); None where
    the scan path runs it; a ``ValueError`` naming the reason under ``"onednn"``."""
    fused = program.fused
    if fused is None:  # the driver hands over only programs with a fused form
        return None
    reason = _exactness_reason(fused, inputs, initial_state, options, mask, reset, constants)
    work = math.prod(inputs.shape[:-2]) * fused.core.units if reason is None else 0
    if options.backend == "auto" and work < AUTO_INFER_MIN_WORK:
        return None
    unavailable = None if reason else _available()
    if reason or unavailable:
        if options.backend == "onednn":
            raise ValueError(
                f"`backend='onednn'`: this call cannot run on oneDNN: {reason or unavailable}. Use "
                "backend='auto' (oneDNN where it applies) or 'scan'."
            )
        if unavailable:
            _warn_unavailable(unavailable)
        return None
    if options.backend == "auto" and work < AUTO_TRAIN_MIN_WORK:
        from rnnjax.functional._planner import infer_or_train

        return infer_or_train(lambda x, s: _run(fused, x, s, options), scan, inputs, initial_state)
    return _run(fused, inputs, initial_state, options)


def onednn_weights(core: Any, params: Any) -> tuple:
    """``(cell, w_layer (I, G, U), w_iter (U, G, U), bias (Gb, U))``: Keras's weights in oneDNN's
    layout (:mod:`rnnjax.onednn.ops`). The gate orders agree (LSTM i, f, c, o; GRU z, r, h), so the
    kernels are reshaped, not permuted; the reset-after GRU's two biases become oneDNN's four rows
    ``b_z + b_rec_z, b_r + b_rec_r, b_h, b_rec_h``; no bias is zeros."""
    u = core.units
    lstm = isinstance(core, LSTMCore)
    cell = "lstm" if lstm else ("lbr_gru" if core.reset_after else "gru")
    g = 4 if lstm else 3
    w_layer = params.kernel.reshape(params.kernel.shape[0], g, u)
    w_iter = params.recurrent_kernel.reshape(u, g, u)
    if params.bias is None:
        bias = jnp.zeros((3 if cell == "gru" else 4, u), w_layer.dtype)
    elif cell == "lbr_gru":
        b, b_rec = params.bias[0].reshape(3, u), params.bias[1].reshape(3, u)
        bias = jnp.concatenate([b[:2] + b_rec[:2], b[2:], b_rec[2:]])
    else:
        bias = params.bias.reshape(g, u)
    return cell, w_layer, w_iter, bias


def _run(fused: FusedForm, inputs, initial_state, options) -> tuple:
    """The call on oneDNN: the batch axes folded into one (time untouched), the shared input
    dropout mask applied, ``go_backwards`` as oneDNN's right-to-left direction."""
    from rnnjax.onednn.ops import Spec, fused_rnn

    core = fused.core
    batch_shape, (steps, features) = inputs.shape[:-2], inputs.shape[-2:]
    rows, u = math.prod(batch_shape), core.units
    x = inputs if fused.dropout_mask is None else inputs * fused.dropout_mask[0][..., None, :]
    states = tuple(s.reshape(rows, u) for s in initial_state)
    cell, w_layer, w_iter, bias = onednn_weights(core, fused.params)
    y, final = fused_rnn(
        Spec(cell, options.go_backwards), x.reshape(rows, steps, features), states, w_layer, w_iter, bias
    )
    final = type(initial_state)(*(s.reshape(batch_shape + (u,)) for s in final))
    if not options.return_sequences:
        return final[0], final
    y = jnp.flip(y, 1) if options.go_backwards else y  # processing order, as the scan returns it
    return y.reshape(batch_shape + (steps, u)), final
