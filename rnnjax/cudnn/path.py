"""The CuDNN layers' call, for any front end (linen :mod:`rnnjax.cudnn.layers`, NNX
:mod:`rnnjax.nnx.cudnn`), with no Flax import: the front end owns the weights and the stored
states, everything else is here.

One call (:func:`run_cudnn_layer`), in order: the sequence checked (the layer-side path's
:func:`~rnnjax.layers.path.check_sequence`), the weights (the front end's ``params_of(input_dim)``),
the sequence lengths from a right-padded ``mask`` or ``seq_lengths`` (:func:`resolve_lengths`),
the ``reset`` checked like a mask (any ``reset`` runs the scan backend), the initial state
(:func:`~rnnjax.layers.path.start_state`), the batch axes folded into cuDNN's
rows (:func:`to_rows`; time is never merged), the backend chosen (:func:`choose_backend`) and run
(:func:`run_rows`), the rows of an invalid traced mask poisoned with NaN (:func:`poison`), the
rows unfolded (:func:`from_rows`), and the Keras results (:func:`~rnnjax.layers.path.finish`).

A :class:`CuDNNKind` is what the two layers differ in: gate count, weight layout, conversion to the
canonical layout, the canonical core computing cuDNN's function, whether JAX has a cuDNN kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.cudnn import convert, fused
from rnnjax.functional.core import check_custom_backward, concrete, init_weight
from rnnjax.functional.gru import GRUCore
from rnnjax.functional.lstm import LSTMCore
from rnnjax.layers.path import (
    CallOptions,
    LayerCall,
    check_mask,
    check_sequence,
    core_cell_program,
    drive,
    finish,
    start_state,
)

BACKENDS = ("auto", "cudnn", "scan")
_NOT_RIGHT_PADDED = (
    "the CuDNN layers take right-padded masks only (in each row every True step comes before every "
    "False step), as cuDNN's sequence lengths do; use rnnjax.LSTM(recurrent_activation='sigmoid') or "
    "rnnjax.GRU(reset_after=True, recurrent_activation='sigmoid') with weights from "
    "rnnjax.cudnn.cudnn_lstm_to_lstm / rnnjax.cudnn.cudnn_gru_to_gru for masks with holes or left padding."
)
_CUDNN_ARGUMENTS = (
    "units",
    "kernel_initializer",
    "recurrent_initializer",
    "bias_initializer",
    "unit_forget_bias",
    "kernel_regularizer",
    "recurrent_regularizer",
    "bias_regularizer",
    "activity_regularizer",
    "kernel_constraint",
    "recurrent_constraint",
    "bias_constraint",
    "return_sequences",
    "return_state",
    "stateful",
)
_CUDNN_EXTRAS = ("go_backwards", "backend", "zero_output_for_mask", "param_dtype", "scan_unroll", "custom_backward")


class CuDNNKind(NamedTuple):
    """One CuDNN layer: ``name``, ``gates`` (4 LSTM, 3 GRU), ``params_class`` (Keras 2's layout),
    ``to_canonical`` (its conversion to ``rnnjax.LSTM``/``rnnjax.GRU`` weights), ``scan_core``
    (``units -> core`` computing cuDNN's function: sigmoid gates, the GRU's reset after),
    ``has_cudnn_kernel`` and ``arguments`` (Keras 2's, then rnnjax's)."""

    name: str
    gates: int
    params_class: type
    to_canonical: Callable
    scan_core: Callable
    has_cudnn_kernel: bool
    arguments: tuple


CUDNN_LSTM = CuDNNKind(
    "CuDNNLSTM",
    4,
    convert.CuDNNLSTMParams,
    convert.cudnn_lstm_to_lstm,
    lambda units: LSTMCore(units, recurrent_activation="sigmoid", implementation=2),
    True,
    _CUDNN_ARGUMENTS + _CUDNN_EXTRAS,
)
CUDNN_GRU = CuDNNKind(
    "CuDNNGRU",
    3,
    convert.CuDNNGRUParams,
    convert.cudnn_gru_to_gru,
    lambda units: GRUCore(units, recurrent_activation="sigmoid", reset_after=True, implementation=2),
    False,
    tuple(a for a in _CUDNN_ARGUMENTS if a != "unit_forget_bias") + _CUDNN_EXTRAS,
)
WEIGHTS = (("kernel", "kernel"), ("recurrent_kernel", "recurrent"), ("bias", "bias"))


def initial_weight(kind: CuDNNKind, config: Any, name: str, key: jax.Array, input_dim: int, dtype: Any) -> jax.Array:
    """The initial value of weight ``name`` (``kernel (I, G*U)``, ``recurrent_kernel (U, G*U)``, ``bias
    (2*G*U,)``) from ``config``'s initializers. ``unit_forget_bias`` (the LSTM) initialises the bias as
    Keras 2 did: ``concat(bias_initializer((5U,)), ones((U,)), bias_initializer((2U,)))``, i.e. the
    *recurrent* forget bias is 1."""
    u, g = config.units, kind.gates
    if name == "kernel":
        return init_weight(config.kernel_initializer, key, (input_dim, g * u), dtype, "kernel_initializer")
    if name == "recurrent_kernel":
        return init_weight(config.recurrent_initializer, key, (u, g * u), dtype, "recurrent_initializer")
    if not getattr(config, "unit_forget_bias", False):
        return init_weight(config.bias_initializer, key, (2 * g * u,), dtype, "bias_initializer")
    k1, k2 = jax.random.split(key)
    return jnp.concatenate(
        [
            init_weight(config.bias_initializer, k1, (5 * u,), dtype, "bias_initializer"),
            jnp.ones((u,), dtype),
            init_weight(config.bias_initializer, k2, (2 * u,), dtype, "bias_initializer"),
        ]
    )


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"`backend`: expected one of {BACKENDS}, got {backend!r}.")
    return backend


def resolve_lengths(mask: jax.Array | None, seq_lengths: jax.Array | None, batch_shape: tuple, steps: int):
    """``(lengths (B,) int32 or None, ok (B,) bool or None)`` from a right-padded ``mask
    (*batch, T)`` or ``seq_lengths (*batch,)``, ``B`` the product of the batch axes. Concrete bad
    input raises; traced input gives ``ok`` (rows to poison)."""
    if mask is not None and seq_lengths is not None:
        raise ValueError("`mask` and `seq_lengths`: pass one of them, not both.")
    batch = math.prod(batch_shape)
    if seq_lengths is not None:
        shape, dtype = tuple(jnp.shape(seq_lengths)), jnp.result_type(seq_lengths)
        if shape != tuple(batch_shape) or not jnp.issubdtype(dtype, jnp.integer):
            raise ValueError(f"`seq_lengths`: expected integers of shape {tuple(batch_shape)}, got {dtype} {shape}.")
        seq_lengths = jnp.reshape(seq_lengths, (batch,))
        value = concrete(seq_lengths)
        if value is not None:
            if value.min(initial=0) < 0 or value.max(initial=0) > steps:
                raise ValueError(f"`seq_lengths`: expected values in [0, {steps}], got {value.tolist()}.")
            return jnp.asarray(value, jnp.int32), None
        return seq_lengths.astype(jnp.int32), (seq_lengths >= 0) & (seq_lengths <= steps)
    if mask is None:
        return None, None
    mask = check_mask(mask, tuple(batch_shape) + (steps,)).reshape(batch, steps)
    value = concrete(mask)
    if value is not None:
        lengths = value.sum(axis=1)
        bad = np.nonzero(np.any(value != (np.arange(steps)[None, :] < lengths[:, None]), axis=1))[0]
        if bad.size:
            raise ValueError(f"`mask`: rows {bad.tolist()} are not right-padded; {_NOT_RIGHT_PADDED}")
        return jnp.asarray(lengths, jnp.int32), None
    lengths = jnp.sum(mask, axis=1, dtype=jnp.int32)
    return lengths, jnp.all(mask == (jnp.arange(steps)[None, :] < lengths[:, None]), axis=1)


def poison(tree: Any, ok: Any):
    """NaN in the rows where ``ok`` is False (an invalid traced mask)."""

    def one(a):
        return jnp.where(ok.reshape(ok.shape + (1,) * (a.ndim - 1)), a, jnp.nan).astype(a.dtype)

    return jax.tree_util.tree_map(one, tree)


def to_rows(tree: Any, batch_shape: tuple):
    """The batch axes as one axis of rows (cuDNN takes ``(B, T, I)``); time is never merged."""
    if len(batch_shape) == 1:
        return tree
    rows = math.prod(batch_shape)
    return jax.tree_util.tree_map(lambda a: a.reshape((rows,) + a.shape[len(batch_shape) :]), tree)


def from_rows(tree: Any, batch_shape: tuple):
    """:func:`to_rows` undone."""
    if len(batch_shape) == 1:
        return tree
    return jax.tree_util.tree_map(lambda a: a.reshape(tuple(batch_shape) + a.shape[1:]), tree)


def choose_backend(
    kind: CuDNNKind, backend: str, custom_backward: bool, inputs: jax.Array, params: Any, reset: jax.Array | None = None
) -> str:
    """``'cudnn'`` or ``'scan'`` for this call (the rules: :mod:`rnnjax.cudnn.layers`)."""
    check_backend(backend)
    check_custom_backward(custom_backward)
    if reset is not None:  # cuDNN runs whole rows: no restart mid-sequence
        if backend == "cudnn":
            raise ValueError(
                "`reset`: the cuDNN kernel cannot restart a sequence mid-row; use backend='auto' or "
                "'scan' (the same function, which takes `reset`)."
            )
        return "scan"
    if backend == "cudnn" and not custom_backward:
        raise ValueError(
            "`custom_backward`: False (forward-mode differentiation) needs the scan backend; the cuDNN "
            "kernel is reverse-mode only. Use backend='scan' or 'auto' with custom_backward=False."
        )
    if backend == "scan" or not custom_backward:
        return "scan"
    if not kind.has_cudnn_kernel:
        if backend == "cudnn":
            raise ValueError(
                f"`backend`: 'cudnn' is not available for {kind.name}: JAX has no cuDNN GRU binding "
                "(jax.experimental.rnn is LSTM only). Use backend='auto' or 'scan' (same function)."
            )
        return "scan"
    why = fused.cudnn_lstm_unavailable_reason(inputs)
    dtypes = {jnp.dtype(inputs.dtype)} | {jnp.dtype(p.dtype) for p in params}
    if why is None and dtypes != {jnp.dtype(jnp.float32)}:
        why = f"jax.experimental.rnn.lstm takes float32 only, got {sorted(str(d) for d in dtypes)}"
    if backend == "cudnn" and why is not None:
        raise RuntimeError(
            f"`backend='cudnn'`: cannot run {kind.name} on cuDNN: {why}. "
            "Use backend='scan' (or 'auto'), which computes the same function anywhere."
        )
    return "cudnn" if why is None else "scan"


def run_rows(
    kind: CuDNNKind,
    units: int,
    backend: str,
    params: Any,
    x: jax.Array,
    init: Any,
    lengths: jax.Array | None,
    options: CallOptions,
    reset: jax.Array | None = None,
):
    """``(output, final state)`` for rows ``x (B, T, I)`` (``reset (B, T)`` or None): the cuDNN
    kernel, or the canonical weights through the layer-side path's driver call
    (:func:`~rnnjax.layers.path.drive`)."""
    if choose_backend(kind, backend, options.custom_backward, x, params, reset) == "cudnn":
        return fused.fused_lstm(
            params,
            x,
            init,
            lengths,
            go_backwards=options.go_backwards,
            return_sequences=options.return_sequences,
            zero_output_for_mask=options.zero_output_for_mask,
        )
    mask = None if lengths is None else jnp.arange(x.shape[1])[None, :] < lengths[:, None]
    program = core_cell_program(kind.scan_core(units), kind.to_canonical(params), (units,))
    # 'auto' lets the driver run oneDNN's CPU kernel where it applies (rnnjax.onednn.dispatch)
    return drive(
        program, x, init, options._replace(backend="auto" if backend == "auto" else "scan"), mask=mask, reset=reset
    )


def run_cudnn_layer(
    kind: CuDNNKind,
    units: int,
    backend: str,
    options: CallOptions,
    params_of: Callable,
    inputs: jax.Array,
    *,
    mask: jax.Array | None = None,
    seq_lengths: jax.Array | None = None,
    reset: jax.Array | None = None,
    initial_state: Any = None,
    read_state: Callable | None = None,
) -> LayerCall:
    """One CuDNN layer call (the sequence in the module docstring). ``params_of(input_dim)`` returns
    the weights in ``kind.params_class``'s layout; ``reset (*batch, T)``: True where a new sequence
    starts (the scan backend); ``read_state`` as in :func:`~rnnjax.layers.path.start_state` (used
    when ``options.stateful``)."""
    seq = check_sequence(inputs)
    params = params_of(int(seq.feature_shape[0]))
    lengths, ok = resolve_lengths(mask, seq_lengths, seq.batch_shape, seq.steps)
    reset = check_mask(reset, tuple(seq.batch_shape) + (seq.steps,), argument="reset")
    init = start_state(
        kind.scan_core(units).initial_state,
        seq,
        inputs.dtype,
        initial_state=initial_state,
        read_state=read_state if options.stateful else None,
    )
    x = to_rows(inputs, seq.batch_shape)
    rows_reset = None if reset is None else to_rows(reset, seq.batch_shape)
    output, final = run_rows(
        kind, units, backend, params, x, to_rows(init, seq.batch_shape), lengths, options, rows_reset
    )
    if ok is not None:
        output, final = poison((output, final), ok)
    output, final = from_rows((output, final), seq.batch_shape)
    return finish(output, final, options, seq)
