"""Flax cells with Keras 2's signatures: ``SimpleRNNCell``, ``GRUCell``, ``LSTMCell``.

Each owns its parameters (Keras names ``kernel``, ``recurrent_kernel``, ``bias``), its
dropout masks (the ``'dropout'`` RNG stream, drawn once per sequence, only in training) and its
weight penalties, and hands the driver a :class:`~rnnjax.functional.protocol.CoreProgram` built from a
functional core. Called directly, a cell runs one step the Keras way::

    output, new_states = cell(x_t, states)       # states: list of (batch, units) arrays
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from rnnjax import constraints, regularizers
from rnnjax.functional.core import check_rate, dropout_masks
from rnnjax.functional.gru import GRUCore
from rnnjax.functional.lstm import LSTMCore
from rnnjax.functional.simple_rnn import SimpleRNNCore
from rnnjax.layers.base import single_step
from rnnjax.functional.protocol import PARAM_NAMES as _WEIGHTS, CoreProgram, make_params
from rnnjax.layers.path import core_cell_program

_ARG = {"kernel": "kernel", "recurrent_kernel": "recurrent", "bias": "bias"}  # Keras argument prefixes


def check_cell_config(obj, core_class) -> None:
    """Validates the Keras arguments of a cell, or of a layer with the same fields, so that bad
    values fail when the module is constructed, naming the argument (as Keras does)."""
    names = {f.name for f in dataclasses.fields(core_class)}
    core_class(**{n: getattr(obj, n) for n in names if hasattr(obj, n)})  # units, activations, initializers
    check_rate(obj.dropout, "dropout")
    check_rate(obj.recurrent_dropout, "recurrent_dropout")
    for name in _WEIGHTS:
        regularizers.get(getattr(obj, f"{_ARG[name]}_regularizer"), f"{_ARG[name]}_regularizer")
        constraints.get(getattr(obj, f"{_ARG[name]}_constraint"), f"{_ARG[name]}_constraint")


class KerasCell(nn.Module):
    """Shared machinery of the built-in cells (no fields of its own)."""

    core_class = None  # the functional core this cell wraps

    def __post_init__(self):
        if self.core_class is not None:
            check_cell_config(self, self.core_class)
        super().__post_init__()

    def core(self):
        names = {f.name for f in dataclasses.fields(self.core_class)}
        return self.core_class(**{n: getattr(self, n) for n in names if hasattr(self, n)})

    @property
    def state_size(self):
        sizes = self.core().state_size
        return sizes[0] if len(sizes) == 1 else list(sizes)

    @property
    def output_size(self):
        return self.units

    def declared_constraints(self) -> dict:
        """``{weight name: projection}`` for :func:`rnnjax.constraints.keras_constraints`."""
        found = {}
        for name in _WEIGHTS:
            if name == "bias" and not self.use_bias:
                continue
            fn = constraints.get(getattr(self, f"{_ARG[name]}_constraint"), f"{_ARG[name]}_constraint")
            if fn is not None:
                found[name] = fn
        return found

    def weights(self, input_dim: int):
        """Creates (at init) or fetches the parameters, reporting their penalties."""
        core = self.core()
        if self.has_variable("params", "kernel"):  # before `param`, whose own shape check names no argument
            built = self.get_variable("params", "kernel").shape
            if built[-2] != input_dim:
                raise ValueError(
                    f"`inputs`: {input_dim} features per step, but {type(self).__name__} was built for "
                    f"{built[-2]} (kernel shape {tuple(built)})."
                )

        def make(name):
            return self.param(name, lambda key: getattr(core.init(key, input_dim, self.param_dtype), name))

        values = {name: make(name) for name in _WEIGHTS if name != "bias" or self.use_bias}
        for name, value in values.items():
            reg = regularizers.get(getattr(self, f"{_ARG[name]}_regularizer"))
            if reg is not None:
                regularizers.report(self, f"{_ARG[name]}_regularizer", reg(value))
        return values

    def dropout_masks(self, input_shape, state_shape, count, dtype, training):
        """This call's ``(input mask, recurrent mask)``, ``(count, *shape)`` each (None outside
        training or at rate 0), drawn once per sequence from the ``'dropout'`` stream."""
        in_mask = rec_mask = None
        if training and self.dropout > 0:
            in_mask = dropout_masks(self.make_rng("dropout"), self.dropout, input_shape, count, dtype)
        if training and self.recurrent_dropout > 0:
            rec_mask = dropout_masks(self.make_rng("dropout"), self.recurrent_dropout, state_shape, count, dtype)
        return in_mask, rec_mask

    @nn.compact
    def prepare(self, input_shape, batch_shape, dtype, training) -> CoreProgram:
        """Creates/fetches the weights, draws this call's dropout masks, returns the program."""
        if len(input_shape) != 1:
            raise ValueError(
                f"`inputs`: {type(self).__name__} takes (*batch, features) per step, got per-step shape {tuple(input_shape)}."
            )
        input_dim = int(input_shape[0])
        core = self.core()
        values = self.weights(input_dim)
        params = make_params(core.params_class, values)
        in_mask, rec_mask = self.dropout_masks(tuple(batch_shape) + (input_dim,), tuple(batch_shape) + (self.units,),
                                               core.dropout_mask_count, dtype, training)
        return core_cell_program(core, params, (self.units,), in_mask, rec_mask)

    def get_initial_state(self, batch_size: int, dtype=jnp.float32):
        """Zero states, a flat list in Keras order."""
        return list(self.core().initial_state((batch_size,), dtype))

    def __call__(self, inputs, states, training: bool = False):
        """One step on ``inputs (*batch, features)``: ``(output (*batch, units), new_states list)``."""
        return single_step(self, inputs, states, None, training)


class SimpleRNNCell(KerasCell):
    """Cell class for SimpleRNN: ``h_t = φ(x_t @ kernel + bias + h_{t-1} @ recurrent_kernel)``.

    Parameters ``kernel (I, U)``, ``recurrent_kernel (U, U)``, ``bias (U,)``; state ``[h]``.
    ``param_dtype`` (not in Keras) sets the parameters' dtype.
    """

    units: int
    activation: Any = "tanh"
    use_bias: bool = True
    kernel_initializer: Any = "glorot_uniform"
    recurrent_initializer: Any = "orthogonal"
    bias_initializer: Any = "zeros"
    kernel_regularizer: Any = None
    recurrent_regularizer: Any = None
    bias_regularizer: Any = None
    kernel_constraint: Any = None
    recurrent_constraint: Any = None
    bias_constraint: Any = None
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    param_dtype: Any = jnp.float32

    core_class = SimpleRNNCore


class GRUCell(KerasCell):
    """Cell class for the GRU layer (gate order z, r, h).

    ``reset_after=False`` (Keras 2's default; bias ``(3U,)``)::

        z = σ(x W_z + b_z + h U_z);  r = σ(x W_r + b_r + h U_r)
        ĥ = φ(x W_h + b_h + (r ⊙ h) U_h)
    ``reset_after=True`` (Keras 3 / cuDNN; bias ``(2, 3U)``: input row, recurrent row)::

        ĥ = φ(x W_h + b⁰_h + r ⊙ (h U_h + b¹_h))
    then ``h_t = z ⊙ h + (1 − z) ⊙ ĥ``. ``implementation=1`` draws one dropout mask per gate,
    ``2`` one shared mask; both compute the same function.
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
    kernel_constraint: Any = None
    recurrent_constraint: Any = None
    bias_constraint: Any = None
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    implementation: int = 1
    reset_after: bool = False
    param_dtype: Any = jnp.float32

    core_class = GRUCore


class LSTMCell(KerasCell):
    """Cell class for the LSTM layer (gate order i, f, c, o)::

        z = x @ kernel + bias + h @ recurrent_kernel;  i, f, c̃, o = split(z, 4)
        c_t = σ(f) ⊙ c + σ(i) ⊙ φ(c̃);  h_t = σ(o) ⊙ φ(c_t)

    Parameters ``kernel (I, 4U)``, ``recurrent_kernel (U, 4U)``, ``bias (4U,)``; states
    ``[h, c]``. ``unit_forget_bias`` initialises the forget block of the bias to 1.
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
    kernel_constraint: Any = None
    recurrent_constraint: Any = None
    bias_constraint: Any = None
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    implementation: int = 1
    param_dtype: Any = jnp.float32

    core_class = LSTMCore
