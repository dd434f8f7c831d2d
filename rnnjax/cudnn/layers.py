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
  :mod:`rnnjax.onednn.dispatch`); always ``'scan'`` with ``custom_backward=False`` and with ``reset``.

Resets: ``reset (*batch, timesteps)`` (True where a new sequence starts: episodes, packed
sequences; the rule is :func:`rnnjax.functional.scan_rnn`'s) runs the scan backend, since cuDNN
cannot restart a sequence mid-row; ``backend='cudnn'`` with ``reset`` is an error.

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

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax

from rnnjax import constraints, kinds, regularizers
from rnnjax.cudnn.path import (  # noqa: F401 (BACKENDS, resolve_lengths: re-exported)
    BACKENDS,
    CUDNN_GRU,
    CUDNN_LSTM,
    WEIGHTS,
    CuDNNKind,
    initial_weight,
    resolve_lengths,
    run_cudnn_layer,
)
from rnnjax.functional.core import check_units
from rnnjax.functional.protocol import make_params
from rnnjax.layers.base import RecurrentLayer, read_state, reset_layer_states, store_and_report
from rnnjax.layers.path import CallOptions


class CuDNNRecurrent(RecurrentLayer):
    """Shared logic of the two linen layers (no fields of its own; ``cudnn_kind``: the
    :class:`~rnnjax.cudnn.path.CuDNNKind`); the call is :func:`rnnjax.cudnn.path.run_cudnn_layer`'s."""

    cudnn_kind: ClassVar[CuDNNKind]  # set by cudnn_class

    def declared_constraints(self) -> dict:
        """``{weight name: projection}`` for :func:`rnnjax.constraints.keras_constraints`."""
        return constraints.declared(self, WEIGHTS)

    def _weights(self, input_dim: int):
        kind, u = self.cudnn_kind, self.units
        if self.has_variable("params", "kernel"):
            built: tuple = self.get_variable("params", "kernel").shape
            if tuple(built) != (input_dim, kind.gates * u):
                raise ValueError(
                    f"`inputs`: {input_dim} features per step, but {type(self).__name__}({u}) was built for "
                    f"kernel shape {(built[0], kind.gates * u)}, got kernel shape {tuple(built)}."
                )
        values = {
            name: self.param(name, lambda k, n=name: initial_weight(kind, self, n, k, input_dim, self.param_dtype))
            for name, _ in WEIGHTS
        }
        for name, arg in WEIGHTS:
            reg = regularizers.get(getattr(self, f"{arg}_regularizer"), f"{arg}_regularizer")
            if reg is not None:
                regularizers.report(self, f"{arg}_regularizer", reg(values[name]))
        return make_params(kind.params_class, values)

    @nn.compact
    def __call__(
        self,
        inputs: jax.Array,
        *,
        mask: jax.Array | None = None,
        initial_state: Any = None,
        seq_lengths: jax.Array | None = None,
        training: bool = False,
        reset: jax.Array | None = None,
    ):
        """``inputs (*batch, timesteps, features)`` -> output ``(*batch, units)`` (``(*batch,
        timesteps, units)`` with ``return_sequences``), then the final states with
        ``return_state`` (``h, c`` for the LSTM, ``h`` for the GRU). ``mask``: right-padded boolean
        ``(*batch, timesteps)``, or ``seq_lengths (*batch,)``; ``reset``: boolean ``(*batch,
        timesteps)``, True where a new sequence starts (the scan backend; see the module
        docstring). ``training`` is accepted and unused (the CuDNN layers have no dropout)."""
        del training
        check_units(self.units)
        options = CallOptions.of(self)
        call = run_cudnn_layer(
            self.cudnn_kind,
            self.units,
            self.backend,
            options,
            self._weights,
            inputs,
            mask=mask,
            seq_lengths=seq_lengths,
            reset=reset,
            initial_state=initial_state,
            read_state=read_state(self),
        )
        return store_and_report(self, call, options)

    def reset_states(self, states: Any = None):
        """Zeroes the stateful states, or sets them to ``states`` (``[h, c]`` / ``[h]``):
        ``_, updates = layer.apply(variables, method='reset_states', mutable=['rnn_state'])``."""
        return reset_layer_states(self, states)


_DOCS = {
    "CuDNNLSTM": """Fast LSTM with Keras 2's ``CuDNNLSTM`` signature and weight layout (see the module docstring).

    Weights: ``kernel (I, 4U)``, ``recurrent_kernel (U, 4U)``, ``bias (8U,)`` (input biases i, f, c,
    o then recurrent biases i, f, c, o). ``unit_forget_bias=True`` initialises the bias as Keras 2
    did: the *recurrent* forget bias is 1 (:func:`rnnjax.cudnn.path.initial_weight`). States
    ``[h, c]``; ``return_state`` returns ``(output, h, c)``.""",
    "CuDNNGRU": """Fast GRU with Keras 2's ``CuDNNGRU`` signature and weight layout (see the module docstring).

    Weights: ``kernel (I, 3U)``, ``recurrent_kernel (U, 3U)`` (blocks z, r, h), ``bias (6U,)``
    (input biases z, r, h then recurrent biases z, r, h). The reset gate acts after the recurrent
    matmul (``reset_after=True``). State ``[h]``. Always runs the scan backend (JAX has no cuDNN
    GRU); ``backend='cudnn'`` is an error.""",
}
_FIELDS_DOC = """

    Fields beyond Keras 2: ``go_backwards``, ``backend`` ('auto' | 'cudnn' | 'scan'),
    ``zero_output_for_mask``, ``param_dtype``, ``scan_unroll`` (``lax.scan`` partial unroll of the
    scan backend), ``custom_backward`` (False for forward-mode differentiation, see the module
    docstring). Call: ``layer.apply(variables, x, *, mask=None, initial_state=None,
    seq_lengths=None, reset=None)``.
    """


@functools.cache
def cudnn_class(kind: CuDNNKind) -> type:
    """The linen layer of ``kind``: fields its arguments (Keras 2's order and defaults, then rnnjax's)."""
    table = {**kinds.ARGUMENTS, "backend": (str, "auto")}
    namespace = {
        "__annotations__": {n: table[n][0] for n in kind.arguments},
        "__module__": __name__,
        "__qualname__": kind.name,
        "__doc__": _DOCS[kind.name] + _FIELDS_DOC,
        "cudnn_kind": kind,
    }
    namespace.update({n: table[n][1] for n in kind.arguments if table[n][1] is not kinds.REQUIRED})
    return type(kind.name, (CuDNNRecurrent,), namespace)


CuDNNLSTM, CuDNNGRU = cudnn_class(CUDNN_LSTM), cudnn_class(CUDNN_GRU)

__all__ = ["CuDNNLSTM", "CuDNNGRU", "CuDNNRecurrent", "cudnn_class", "BACKENDS", "resolve_lengths"]
