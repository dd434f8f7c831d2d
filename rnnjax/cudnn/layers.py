"""``CuDNNLSTM`` and ``CuDNNGRU``: Keras 2's cuDNN layers, with Keras 2's weight layout.

Parameters (``params`` of the layer, exactly what Keras 2 saved, so its weights load unchanged):
``kernel (I, G*U)``, ``recurrent_kernel (U, G*U)``, ``bias (2*G*U,)`` (G = 4 for the LSTM, 3 for
the GRU); see :mod:`rnnjax.cudnn.convert` for the layout and the conversions to ``rnnjax.LSTM``/
``rnnjax.GRU`` and PyTorch.

Equations (cuDNN's; ``σ`` = sigmoid, both activations fixed, two bias vectors)::

    LSTM  i, f, g, o = split(W x + b_w + R h + b_r)
          c' = σ(f) c + σ(i) tanh(g);   h' = σ(o) tanh(c')
    GRU   z = σ(W_z x + b_wz + R_z h + b_rz);   r = σ(W_r x + b_wr + R_r h + b_rr)
          n = tanh(W_n x + b_wn + r * (R_n h + b_rn));   h' = (1 - z) n + z h

Backends (field ``backend``):

* ``'cudnn'``: the LSTM through cuDNN (``jax.experimental.rnn.lstm``); float32 only, needs a CUDA
  GPU (an error otherwise), works under ``jit`` and ``grad`` but not ``vmap``. JAX has no cuDNN
  GRU, so ``CuDNNGRU(backend='cudnn')`` is an error.
* ``'scan'``: the weights converted to the canonical layout and run by rnnjax's driver
  (``LSTMCore``/``GRUCore(reset_after=True)`` with sigmoid gates; input projection hoisted out of
  the loop). Any platform, any dtype, ``vmap``.
* ``'auto'`` (default): ``'cudnn'`` for a float32 LSTM whose input lives on a CUDA GPU (under
  ``jit``: when JAX's default backend is the GPU), else ``'scan'``, which on the CPU runs oneDNN's
  fused kernel where the ``onednn`` extra is installed and it applies (the rules of
  :mod:`rnnjax.onednn.dispatch`); always ``'scan'`` with ``custom_backward=False``.

Both backends differentiate in reverse mode only (``jax.grad``/``jax.vjp``); for forward mode
(``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``) set ``custom_backward=False``: the scan backend
then runs the generic loop (same function, slower training); ``backend='cudnn'`` with it is an
error.

Both compute the same function. The tests check the fused branch on the CPU with
``jax.experimental.rnn.lstm_ref`` standing in for the cuDNN kernel; the kernel itself only runs
on a GPU and has not been run by the test suite (see :mod:`rnnjax.cudnn.fused`).

Masks: Keras 2's CuDNN layers rejected masks; these accept right padding only, as a boolean
``mask (batch, timesteps)`` whose True steps come first in every row, or as ``seq_lengths
(batch,)``. Padded steps follow Keras's rules (state frozen, output repeats the last one, or 0
with ``zero_output_for_mask``). A mask with holes or left padding raises a ``ValueError`` when it
is concrete; under ``jax.jit`` it cannot be inspected, so such rows come out as NaN (outputs and
states) instead. Use ``rnnjax.LSTM``/``rnnjax.GRU`` for arbitrary masks.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rnnjax import constraints, regularizers
from rnnjax.cudnn import convert, fused
from rnnjax.functional.core import check_custom_backward, check_units, concrete, init_weight
from rnnjax.functional.gru import GRUCore
from rnnjax.functional.lstm import LSTMCore
from rnnjax.functional.protocol import make_params
from rnnjax.layers.base import RecurrentLayer, read_state, reset_layer_states, store_and_report
from rnnjax.layers.path import CallOptions, check_mask, check_sequence, core_cell_program, drive, finish, start_state

BACKENDS = ("auto", "cudnn", "scan")
_WEIGHTS = (("kernel", "kernel"), ("recurrent_kernel", "recurrent"), ("bias", "bias"))
_NOT_RIGHT_PADDED = (
    "the CuDNN layers take right-padded masks only (in each row every True step comes before every "
    "False step), as cuDNN's sequence lengths do; use rnnjax.LSTM(recurrent_activation='sigmoid') or "
    "rnnjax.GRU(reset_after=True, recurrent_activation='sigmoid') with weights from "
    "rnnjax.cudnn.cudnn_lstm_to_lstm / rnnjax.cudnn.cudnn_gru_to_gru for masks with holes or left padding."
)


def resolve_lengths(mask, seq_lengths, batch_shape: tuple, steps: int):
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


def _poison(tree, ok):
    """NaN in the rows where ``ok`` is False (an invalid traced mask)."""
    def one(a):
        return jnp.where(ok.reshape(ok.shape + (1,) * (a.ndim - 1)), a, jnp.nan).astype(a.dtype)
    return jax.tree_util.tree_map(one, tree)


def _to_rows(tree, batch_shape, rows: int):
    """The batch axes as one axis of ``rows`` (cuDNN takes ``(B, T, I)``); time is never merged."""
    if len(batch_shape) == 1:
        return tree
    return jax.tree_util.tree_map(lambda a: a.reshape((rows,) + a.shape[len(batch_shape):]), tree)


def _from_rows(tree, batch_shape):
    if len(batch_shape) == 1:
        return tree
    return jax.tree_util.tree_map(lambda a: a.reshape(tuple(batch_shape) + a.shape[1:]), tree)


class _CuDNNRecurrent(RecurrentLayer):
    """Shared logic of the two layers (no fields of its own). A subclass names its weight
    layout (``params_class``, ``to_canonical``), its gate count and whether cuDNN has a kernel."""

    gates = 4
    has_cudnn_kernel = True
    params_class = convert.CuDNNLSTMParams
    to_canonical = staticmethod(convert.cudnn_lstm_to_lstm)

    def declared_constraints(self) -> dict:
        """``{weight name: projection}`` for :func:`rnnjax.constraints.keras_constraints`."""
        found = {}
        for name, arg in _WEIGHTS:
            fn = constraints.get(getattr(self, f"{arg}_constraint"), f"{arg}_constraint")
            if fn is not None:
                found[name] = fn
        return found

    def scan_core(self):
        """The canonical core computing cuDNN's function (sigmoid gates, reset after)."""
        return LSTMCore(self.units, recurrent_activation="sigmoid", implementation=2)

    def _bias_init(self, key, shape, dtype):
        return init_weight(self.bias_initializer, key, shape, dtype, "bias_initializer")

    def _weights(self, input_dim: int):
        u, g = self.units, self.gates
        if self.has_variable("params", "kernel"):
            built = self.get_variable("params", "kernel").shape
            if tuple(built) != (input_dim, g * u):
                raise ValueError(
                    f"`inputs`: {input_dim} features per step, but {type(self).__name__}({u}) was built for "
                    f"kernel shape {(built[0], g * u)}, got kernel shape {tuple(built)}."
                )
        values = {
            "kernel": self.param("kernel", lambda k: init_weight(
                self.kernel_initializer, k, (input_dim, g * u), self.param_dtype, "kernel_initializer")),
            "recurrent_kernel": self.param("recurrent_kernel", lambda k: init_weight(
                self.recurrent_initializer, k, (u, g * u), self.param_dtype, "recurrent_initializer")),
            "bias": self.param("bias", lambda k: self._bias_init(k, (2 * g * u,), self.param_dtype)),
        }
        for name, arg in _WEIGHTS:
            reg = regularizers.get(getattr(self, f"{arg}_regularizer"), f"{arg}_regularizer")
            if reg is not None:
                regularizers.report(self, f"{arg}_regularizer", reg(values[name]))
        return make_params(self.params_class, values)

    def _backend(self, inputs, params) -> str:
        if self.backend not in BACKENDS:
            raise ValueError(f"`backend`: expected one of {BACKENDS}, got {self.backend!r}.")
        check_custom_backward(self.custom_backward)
        if self.backend == "cudnn" and not self.custom_backward:
            raise ValueError(
                "`custom_backward`: False (forward-mode differentiation) needs the scan backend; the cuDNN "
                "kernel is reverse-mode only. Use backend='scan' or 'auto' with custom_backward=False."
            )
        if self.backend == "scan" or not self.custom_backward:
            return "scan"
        if not self.has_cudnn_kernel:
            if self.backend == "cudnn":
                raise ValueError(
                    f"`backend`: 'cudnn' is not available for {type(self).__name__}: JAX has no cuDNN GRU binding "
                    "(jax.experimental.rnn is LSTM only). Use backend='auto' or 'scan' (same function)."
                )
            return "scan"
        why = fused.cudnn_lstm_unavailable_reason(inputs)
        dtypes = {jnp.dtype(inputs.dtype)} | {jnp.dtype(p.dtype) for p in params}
        if why is None and dtypes != {jnp.dtype(jnp.float32)}:
            why = f"jax.experimental.rnn.lstm takes float32 only, got {sorted(str(d) for d in dtypes)}"
        if self.backend == "cudnn" and why is not None:
            raise RuntimeError(f"`backend='cudnn'`: cannot run {type(self).__name__} on cuDNN: {why}. "
                               "Use backend='scan' (or 'auto'), which computes the same function anywhere.")
        return "cudnn" if why is None else "scan"

    def _run(self, params, x, init, lengths, options):
        """``(output, final state)`` for rows ``x (B, T, I)``: the cuDNN kernel, or the canonical
        weights through the layer-side path's driver call."""
        if self._backend(x, params) == "cudnn":
            return fused.fused_lstm(params, x, init, lengths, go_backwards=self.go_backwards,
                                    return_sequences=self.return_sequences,
                                    zero_output_for_mask=self.zero_output_for_mask)
        mask = None if lengths is None else jnp.arange(x.shape[1])[None, :] < lengths[:, None]
        core = self.scan_core()
        program = core_cell_program(core, self.to_canonical(params), (self.units,))
        # 'auto' lets the driver run oneDNN's CPU kernel where it applies (rnnjax.onednn.dispatch)
        return drive(program, x, init, options._replace(backend="auto" if self.backend == "auto" else "scan"),
                     mask=mask)

    @nn.compact
    def __call__(self, inputs, mask=None, initial_state=None, seq_lengths=None, training: bool = False):
        """``inputs (*batch, timesteps, features)`` -> output ``(*batch, units)`` (``(*batch,
        timesteps, units)`` with ``return_sequences``), then the final states with
        ``return_state`` (``h, c`` for the LSTM, ``h`` for the GRU). ``mask``: right-padded boolean
        ``(*batch, timesteps)``, or ``seq_lengths (*batch,)``. ``training`` is accepted and unused
        (the CuDNN layers have no dropout)."""
        del training
        check_units(self.units)
        options = CallOptions.of(self)
        seq = check_sequence(inputs)
        params = self._weights(int(seq.feature_shape[0]))
        rows = math.prod(seq.batch_shape)
        lengths, ok = resolve_lengths(mask, seq_lengths, seq.batch_shape, seq.steps)
        init = start_state(self.scan_core().initial_state, seq, inputs.dtype, initial_state=initial_state,
                           read_state=read_state(self) if self.stateful else None)
        x = inputs.reshape((rows,) + inputs.shape[-2:]) if len(seq.batch_shape) != 1 else inputs
        output, final = self._run(params, x, _to_rows(init, seq.batch_shape, rows), lengths, options)
        if ok is not None:
            output, final = _poison((output, final), ok)
        output, final = _from_rows((output, final), seq.batch_shape)
        return store_and_report(self, finish(output, final, options, seq), options)

    def reset_states(self, states=None):
        """Zeroes the stateful states, or sets them to ``states`` (``[h, c]`` / ``[h]``):
        ``_, updates = layer.apply(variables, method='reset_states', mutable=['rnn_state'])``."""
        return reset_layer_states(self, states)


class CuDNNLSTM(_CuDNNRecurrent):
    """Fast LSTM with Keras 2's ``CuDNNLSTM`` signature and weight layout (see the module docstring).

    Weights: ``kernel (I, 4U)``, ``recurrent_kernel (U, 4U)``, ``bias (8U,)`` (input biases i, f, c,
    o then recurrent biases i, f, c, o). ``unit_forget_bias=True`` initialises the bias as Keras 2
    did: ``concat(bias_initializer((5U,)), ones((U,)), bias_initializer((2U,)))``, i.e. the
    *recurrent* forget bias is 1. States ``[h, c]``; ``return_state`` returns ``(output, h, c)``.

    Fields beyond Keras 2: ``go_backwards``, ``backend`` ('auto' | 'cudnn' | 'scan'),
    ``zero_output_for_mask``, ``param_dtype``, ``scan_unroll`` (``lax.scan`` partial unroll of the
    scan backend), ``custom_backward`` (False for forward-mode differentiation, see the module
    docstring). Call: ``layer.apply(variables, x, mask=None, initial_state=None,
    seq_lengths=None)``.
    """

    units: int
    kernel_initializer: Any = "glorot_uniform"
    recurrent_initializer: Any = "orthogonal"
    bias_initializer: Any = "zeros"
    unit_forget_bias: bool = True
    kernel_regularizer: Any = None
    recurrent_regularizer: Any = None
    bias_regularizer: Any = None
    activity_regularizer: Any = None
    kernel_constraint: Any = None
    recurrent_constraint: Any = None
    bias_constraint: Any = None
    return_sequences: bool = False
    return_state: bool = False
    stateful: bool = False
    go_backwards: bool = False
    backend: str = "auto"
    zero_output_for_mask: bool = False
    param_dtype: Any = jnp.float32
    scan_unroll: int = 1
    custom_backward: bool = True

    def _bias_init(self, key, shape, dtype):
        if not self.unit_forget_bias:
            return super()._bias_init(key, shape, dtype)
        u = self.units
        k1, k2 = jax.random.split(key)
        return jnp.concatenate([
            init_weight(self.bias_initializer, k1, (5 * u,), dtype, "bias_initializer"),
            jnp.ones((u,), dtype),
            init_weight(self.bias_initializer, k2, (2 * u,), dtype, "bias_initializer"),
        ])


class CuDNNGRU(_CuDNNRecurrent):
    """Fast GRU with Keras 2's ``CuDNNGRU`` signature and weight layout (see the module docstring).

    Weights: ``kernel (I, 3U)``, ``recurrent_kernel (U, 3U)`` (blocks z, r, h), ``bias (6U,)``
    (input biases z, r, h then recurrent biases z, r, h). The reset gate acts after the recurrent
    matmul (``reset_after=True``). State ``[h]``. Always runs the scan backend (JAX has no cuDNN
    GRU); ``backend='cudnn'`` is an error. Extra fields as :class:`CuDNNLSTM`.
    """

    units: int
    kernel_initializer: Any = "glorot_uniform"
    recurrent_initializer: Any = "orthogonal"
    bias_initializer: Any = "zeros"
    kernel_regularizer: Any = None
    recurrent_regularizer: Any = None
    bias_regularizer: Any = None
    activity_regularizer: Any = None
    kernel_constraint: Any = None
    recurrent_constraint: Any = None
    bias_constraint: Any = None
    return_sequences: bool = False
    return_state: bool = False
    stateful: bool = False
    go_backwards: bool = False
    backend: str = "auto"
    zero_output_for_mask: bool = False
    param_dtype: Any = jnp.float32
    scan_unroll: int = 1
    custom_backward: bool = True

    gates = 3
    has_cudnn_kernel = False
    params_class = convert.CuDNNGRUParams
    to_canonical = staticmethod(convert.cudnn_gru_to_gru)

    def scan_core(self):
        return GRUCore(self.units, recurrent_activation="sigmoid", reset_after=True, implementation=2)


__all__ = ["CuDNNLSTM", "CuDNNGRU", "BACKENDS", "resolve_lengths"]
