"""The Keras 2 recurrent layers ``SimpleRNN``, ``GRU`` and ``LSTM`` as Flax modules.

Each is ``RNN(<X>Cell(...))`` with Keras 2's signature and defaults; the cell's parameters
live under ``params['cell']`` (``kernel``, ``recurrent_kernel``, ``bias``). Call::

    y = layer(inputs, mask=None, initial_state=None, training=False)   # inputs (*batch, T, F)

Extra fields beyond Keras 2: ``input_dim``/``input_length`` (checked), ``zero_output_for_mask``,
``reset_after`` (GRU), ``param_dtype``, the performance options ``scan_unroll`` and
``remat``, and ``custom_backward`` (False for forward-mode differentiation: ``jax.jvp``,
``jax.jacfwd``, ``jax.hessian``; see :class:`rnnjax.RNN`); ``GRU`` and ``LSTM`` also ``backend``:
``'auto'`` (default) runs a call on oneDNN's fused CPU kernels where the ``onednn`` extra is
installed and they compute it exactly (``recurrent_activation='sigmoid'``, ``activation='tanh'``,
no mask, no recurrent dropout, float32, one CPU device, a large enough batch:
:mod:`rnnjax.onednn.dispatch`), else the scan; ``'scan'`` always the scan; ``'onednn'`` oneDNN or a ``ValueError`` saying why not.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from rnnjax.layers.base import RecurrentLayer, reset_layer_states, run_recurrent
from rnnjax.layers.cells import GRUCell, LSTMCell, SimpleRNNCell, check_cell_config


class _KerasRecurrent(RecurrentLayer):
    """Shared call of the concrete layers (no fields of its own)."""

    cell_class = None

    def __post_init__(self):
        if self.cell_class is not None:
            check_cell_config(self, self.cell_class.core_class)
        super().__post_init__()

    def _make_cell(self):
        names = {f.name for f in dataclasses.fields(self.cell_class)} - {"parent", "name"}
        return self.cell_class(**{n: getattr(self, n) for n in names}, name="cell")

    @nn.compact
    def __call__(self, inputs, mask=None, initial_state=None, training: bool = False):
        return run_recurrent(self, self._make_cell(), inputs, mask=mask, initial_state=initial_state,
                             training=training)

    def reset_states(self, states=None):
        """Zeroes the stateful states, or sets them to ``states`` (``[h]`` or ``[h, c]``).

        ``_, updates = layer.apply(variables, method='reset_states', mutable=['rnn_state'])``.
        """
        return reset_layer_states(self, states)


class SimpleRNN(_KerasRecurrent):
    """Fully-connected RNN where the output is fed back to the input (see :class:`SimpleRNNCell`)."""

    units: int
    activation: Any = "tanh"
    use_bias: bool = True
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
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    return_sequences: bool = False
    return_state: bool = False
    go_backwards: bool = False
    stateful: bool = False
    unroll: bool = False
    input_dim: Optional[int] = None
    input_length: Optional[int] = None
    zero_output_for_mask: bool = False
    param_dtype: Any = jnp.float32
    scan_unroll: int = 1
    remat: bool = False
    custom_backward: bool = True

    cell_class = SimpleRNNCell


class GRU(_KerasRecurrent):
    """Gated Recurrent Unit - Cho et al. 2014 (see :class:`GRUCell` for the equations).

    Keras 2 defaults: ``recurrent_activation='hard_sigmoid'`` (Keras 2's ``clip(0.2x + 0.5, 0, 1)``),
    ``implementation=1``, ``reset_after=False``. For Keras 3's GRU pass
    ``recurrent_activation='sigmoid', reset_after=True``.
    """

    units: int
    activation: Any = "tanh"
    recurrent_activation: Any = "hard_sigmoid"
    use_bias: bool = True
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
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    implementation: int = 1
    return_sequences: bool = False
    return_state: bool = False
    go_backwards: bool = False
    stateful: bool = False
    unroll: bool = False
    reset_after: bool = False
    input_dim: Optional[int] = None
    input_length: Optional[int] = None
    zero_output_for_mask: bool = False
    param_dtype: Any = jnp.float32
    scan_unroll: int = 1
    remat: bool = False
    custom_backward: bool = True
    backend: str = "auto"

    cell_class = GRUCell


class LSTM(_KerasRecurrent):
    """Long Short-Term Memory layer - Hochreiter 1997 (see :class:`LSTMCell` for the equations).

    Keras 2 defaults: ``recurrent_activation='hard_sigmoid'``, ``unit_forget_bias=True``,
    ``implementation=1``. ``return_state`` returns ``(output, h, c)``.

    Examples:
        >>> import jax, jax.numpy as jnp, rnnjax
        >>> layer = rnnjax.LSTM(4, recurrent_dropout=0.2, return_sequences=True, return_state=True)
        >>> x = jnp.ones((2, 5, 3))                      # (batch, timesteps, features)
        >>> variables = layer.init(jax.random.key(0), x)
        >>> outputs, h, c = layer.apply(variables, x, training=True, rngs={"dropout": jax.random.key(1)})
        >>> outputs.shape, h.shape, c.shape
        ((2, 5, 4), (2, 4), (2, 4))
    """

    units: int
    activation: Any = "tanh"
    recurrent_activation: Any = "hard_sigmoid"
    use_bias: bool = True
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
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    implementation: int = 1
    return_sequences: bool = False
    return_state: bool = False
    go_backwards: bool = False
    stateful: bool = False
    unroll: bool = False
    input_dim: Optional[int] = None
    input_length: Optional[int] = None
    zero_output_for_mask: bool = False
    param_dtype: Any = jnp.float32
    scan_unroll: int = 1
    remat: bool = False
    custom_backward: bool = True
    backend: str = "auto"

    cell_class = LSTMCell
