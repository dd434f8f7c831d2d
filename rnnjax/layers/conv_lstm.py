"""Convolutional LSTM layers ``ConvLSTM1D``/``ConvLSTM2D``/``ConvLSTM3D`` and their cells.

The cell (:class:`ConvLSTM2DCell` etc.) is an LSTM whose input and recurrent transformations
are convolutions (:class:`rnnjax.functional.ConvLSTMCore` states the equations)::

    z = x_t ∗ kernel + bias + h_{t-1} ⊛ recurrent_kernel;  i, f, c̃, o = split(z, 4, channels)
    c_t = σ(f) ⊙ c_{t-1} + σ(i) ⊙ φ(c̃);  h_t = σ(o) ⊙ φ(c_t)

``∗`` uses the layer's strides, padding and dilation; ``⊛`` is always stride 1, 'same',
undilated. Parameters (Keras layout, under ``params['cell']``): ``kernel kernel_size + (C, 4F)``,
``recurrent_kernel kernel_size + (F, 4F)``, ``bias (4F,)``.

Shapes (2-D; 1-D and 3-D drop/add a spatial axis), ``channels_last``:
inputs ``(samples, time, rows, cols, channels)``, output ``(samples, rows', cols', filters)``
or ``(samples, time, rows', cols', filters)`` with ``return_sequences``, states ``h, c``
``(samples, rows', cols', filters)``. ``channels_first`` puts channels/filters right after the
time (or batch) axis. The layers compute channels_last internally: a channels_first input is
transposed once before the loop and the outputs/states once after (states in the
``'rnn_state'`` collection of a stateful layer are kept channels_last).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnnjax.functional import initializers
from rnnjax.functional.conv_lstm import ConvLSTMCore, ConvLSTMParams, check_data_format, shape_ints
from rnnjax.functional.core import check_rate, dropout_masks, loop_bias
from rnnjax.layers.base import CellProgram, RecurrentLayer, reset_layer_states, run_recurrent
from rnnjax.layers.cells import KerasCell


def _to_last(x, axis):
    """channels_first -> channels_last: moves ``axis`` (the channel axis) to the end."""
    return jnp.moveaxis(x, axis, -1)


def _to_first(x, axis):
    return jnp.moveaxis(x, -1, axis)


class ConvLSTMCell(KerasCell):
    """Shared ConvLSTM cell (``rank`` spatial dimensions, a class attribute of the subclasses).

    ``prepare`` receives the per-step shape ``(*spatial, C)`` (``(C, *spatial)`` for
    ``channels_first``). Dropout: 4 masks per sequence (one per gate, as Keras 2's
    ConvLSTM2DCell), shape ``(4, batch, *spatial, C)`` for the inputs and
    ``(4, batch, *spatial', F)`` for the recurrent state, only with ``training=True``.
    A channels_first cell used directly in :class:`rnnjax.RNN` transposes its state at every
    step; the ConvLSTM layers avoid that by transposing once at their boundary.
    """

    rank = None
    core_class = ConvLSTMCore

    def __post_init__(self):
        self.core()
        check_data_format(self.data_format)
        check_rate(self.dropout, "dropout")
        check_rate(self.recurrent_dropout, "recurrent_dropout")
        for name in ("kernel_initializer", "recurrent_initializer", "bias_initializer"):
            initializers.get(getattr(self, name), name)
        super().__post_init__()

    @property
    def output_size(self):
        return self.filters

    @property
    def sequence_ndim(self) -> int:
        """Rank of a sequence batch for this cell (:class:`rnnjax.RNN` checks inputs against it)."""
        return self.rank + 3

    @property
    def sequence_layout(self) -> str:
        return "(batch, timesteps, channels, *spatial)" if self._channels_first() else "(batch, timesteps, *spatial, channels)"

    def _channels_first(self):
        return check_data_format(self.data_format) == "channels_first"

    @nn.compact
    def prepare(self, input_shape, batch_shape, dtype, training) -> CellProgram:
        r = self.rank
        cf = self._channels_first()
        input_shape = shape_ints(input_shape)
        if len(input_shape) != r + 1:
            layout = "(channels, *spatial)" if cf else "(*spatial, channels)"
            raise ValueError(
                f"`inputs`: {type(self).__name__} takes {r} spatial dimensions and channels per step {layout}, "
                f"got per-step shape {input_shape}."
            )
        channels, spatial = (input_shape[0], input_shape[1:]) if cf else (input_shape[-1], input_shape[:-1])
        core = self.core()
        out_spatial = core.output_spatial_shape(spatial)
        values = self.weights(channels)
        params = ConvLSTMParams(values["kernel"], values["recurrent_kernel"], values.get("bias"))
        batch_shape = tuple(batch_shape)
        in_mask = rec_mask = None
        if training and self.dropout > 0:
            in_mask = dropout_masks(self.make_rng("dropout"), self.dropout, batch_shape + spatial + (channels,),
                                    core.gates, dtype)
        if training and self.recurrent_dropout > 0:
            rec_mask = dropout_masks(self.make_rng("dropout"), self.recurrent_dropout,
                                     batch_shape + out_spatial + (self.filters,), core.gates, dtype)
        axis = -(r + 1)  # the channel axis of a channels_first per-step array

        def project(x):
            return core.project(params, _to_last(x, axis) if cf else x, in_mask)

        def step(state, xp_t):
            if cf:
                state = jax.tree_util.tree_map(lambda a: _to_last(a, axis), state)
            new, y = core.step(params, state, xp_t, rec_mask)
            if cf:
                new = jax.tree_util.tree_map(lambda a: _to_first(a, axis), new)
                y = _to_first(y, axis)
            return new, y

        def initial_state(batch_shape=batch_shape, dtype=dtype):
            state = core.initial_state(batch_shape, dtype, spatial)
            return jax.tree_util.tree_map(lambda a: _to_first(a, axis), state) if cf else state

        output_shape = ((self.filters,) + out_spatial) if cf else (out_spatial + (self.filters,))
        # channels_first cells transpose inside the step, so only channels_last has the backward forms;
        # channels_last: project is the core's own, so its loop bias is too
        return CellProgram(project, step, initial_state, output_shape,
                           matmul_step=None if cf else core.matmul_step(params, rec_mask),
                           input_additive_step=None if cf else core.input_additive_step(params, rec_mask),
                           loop_bias=None if cf else loop_bias(core, params, in_mask))

    def get_initial_state(self, batch_size: int, input_spatial_shape=None, dtype=jnp.float32):
        """Zero states ``[h, c]`` for inputs of spatial shape ``input_spatial_shape``."""
        state = self.core().initial_state((batch_size,), dtype, input_spatial_shape)
        if self._channels_first():
            state = jax.tree_util.tree_map(lambda a: _to_first(a, 1), state)
        return list(state)


_CELL_DOC = """Cell class for the ConvLSTM{r}D layer (see :class:`ConvLSTMCell`; equations in
    :class:`rnnjax.functional.ConvLSTMCore`). Per step: inputs ``(batch, {sp}, channels)``,
    states ``[h, c]`` each ``(batch, {sp}', filters)`` (channels_last). ``param_dtype`` (not in
    Keras) sets the parameters' dtype."""


def _cell_class(rank, strides_default, spatial):
    class Cell(ConvLSTMCell):
        filters: int
        kernel_size: Any
        strides: Any = strides_default
        padding: str = "valid"
        data_format: Any = None
        dilation_rate: Any = strides_default
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
        param_dtype: Any = jnp.float32

    Cell.rank = rank
    Cell.__name__ = Cell.__qualname__ = f"ConvLSTM{rank}DCell"
    Cell.__doc__ = _CELL_DOC.format(r=rank, sp=spatial)
    Cell.__module__ = __name__
    return Cell


ConvLSTM1DCell = _cell_class(1, (1,), "steps")
ConvLSTM2DCell = _cell_class(2, (1, 1), "rows, cols")
ConvLSTM3DCell = _cell_class(3, (1, 1, 1), "conv_dim1, conv_dim2, conv_dim3")

_CELLS = {1: ConvLSTM1DCell, 2: ConvLSTM2DCell, 3: ConvLSTM3DCell}
_CELL_FIELDS = (
    "filters", "kernel_size", "strides", "padding", "dilation_rate", "activation", "recurrent_activation",
    "use_bias", "kernel_initializer", "recurrent_initializer", "bias_initializer", "unit_forget_bias",
    "kernel_regularizer", "recurrent_regularizer", "bias_regularizer", "kernel_constraint",
    "recurrent_constraint", "bias_constraint", "dropout", "recurrent_dropout", "param_dtype",
)


class ConvLSTM(RecurrentLayer):
    """Shared call of ``ConvLSTM1D/2D/3D`` (the fields are declared by the subclasses).

    Call: ``layer(inputs, mask=None, initial_state=None, training=False)``; ``mask`` boolean
    ``(samples, time)``; ``initial_state`` ``[h, c]`` in the layer's data_format. Returns the
    output, followed by ``h, c`` (in the layer's data_format) with ``return_state``.
    """

    rank = None

    def __post_init__(self):
        self._make_cell(parent=None)  # validates every argument at construction
        check_data_format(self.data_format)
        super().__post_init__()

    def _make_cell(self, **kwargs):
        return _CELLS[self.rank](**{n: getattr(self, n) for n in _CELL_FIELDS}, data_format="channels_last", **kwargs)

    def _layout(self, cf):
        sp = {1: "steps", 2: "rows, cols", 3: "conv_dim1, conv_dim2, conv_dim3"}[self.rank]
        return f"(samples, time, channels, {sp})" if cf else f"(samples, time, {sp}, channels)"

    def _states_to_last(self, states, expected_first, argument):
        """User (channels_first) states -> channels_last, checking their shapes."""
        leaves = [states] if hasattr(states, "shape") else jax.tree_util.tree_leaves(states)
        if len(leaves) != 2:
            raise ValueError(f"`{argument}`: expected 2 state arrays [h, c], got {len(leaves)}.")
        out = []
        for i, s in enumerate(leaves):
            s = jnp.asarray(s)
            if expected_first is not None and tuple(s.shape) != expected_first:
                raise ValueError(f"`{argument}`[{i}]: expected shape {expected_first} (channels_first), got {tuple(s.shape)}.")
            out.append(_to_last(s, 1))
        return out

    @nn.compact
    def __call__(self, inputs, mask=None, initial_state=None, training: bool = False):
        r = self.rank
        cf = check_data_format(self.data_format) == "channels_first"
        if not hasattr(inputs, "ndim") or inputs.ndim != r + 3:
            raise ValueError(
                f"`inputs`: expected a {r + 3}-D array {self._layout(cf)}, got shape "
                f"{getattr(inputs, 'shape', type(inputs).__name__)}."
            )
        x = jnp.moveaxis(inputs, 2, -1) if cf else inputs
        cell = self._make_cell(name="cell")
        if initial_state is not None and cf:
            out_sp = cell.core().output_spatial_shape(x.shape[2:-1])
            initial_state = self._states_to_last(initial_state, (x.shape[0], self.filters) + out_sp, "initial_state")
        result = run_recurrent(
            self, cell, x, mask=mask, initial_state=initial_state, training=training,
            return_sequences=self.return_sequences, return_state=self.return_state,
            go_backwards=self.go_backwards, stateful=self.stateful, unroll=self.unroll,
            zero_output_for_mask=self.zero_output_for_mask, activity_regularizer=self.activity_regularizer,
            scan_unroll=self.scan_unroll, remat=self.remat, custom_backward=self.custom_backward,
            input_rank=r + 3, input_layout=self._layout(False),
        )
        if not cf:
            return result
        if self.return_state:
            output, *states = result
            return (_to_first(output, 2 if self.return_sequences else 1), *[_to_first(s, 1) for s in states])
        return _to_first(result, 2 if self.return_sequences else 1)

    def reset_states(self, states=None):
        """Zeroes the stateful states, or sets them to ``states`` ``[h, c]`` (layer's data_format).

        ``_, updates = layer.apply(variables, method='reset_states', mutable=['rnn_state'])``.
        """
        if states is not None and check_data_format(self.data_format) == "channels_first":
            states = self._states_to_last(states, None, "states")
        return reset_layer_states(self, states)


_LAYER_DOC = """{r}D Convolutional LSTM: an LSTM whose input and recurrent transformations are
    convolutions (see :mod:`rnnjax.layers.conv_lstm`; equations in
    :class:`rnnjax.functional.ConvLSTMCore`).

    Inputs ``(samples, time, {sp}, channels)`` (channels_last, the default) or
    ``(samples, time, channels, {sp})`` (channels_first). Output ``(samples, {sp}', filters)``,
    with ``return_sequences`` ``(samples, time, {sp}', filters)`` (filters after time/samples for
    channels_first), where ``{sp}'`` follow from kernel_size, strides, padding and dilation
    (Keras's conv output length). ``return_state`` adds ``h, c`` (each shaped like the last output).

    Seed defaults (Keras 2): ``recurrent_activation='hard_sigmoid'`` (``clip(0.2x + 0.5, 0, 1)``);
    Keras 3 uses ``'sigmoid'``. Extra fields beyond Keras 2: ``return_state``, ``unroll``,
    ``zero_output_for_mask``, ``param_dtype``, ``scan_unroll``, ``remat``, ``custom_backward`` (see
    :class:`rnnjax.RNN`).
    ``strides`` > 1 with ``dilation_rate`` > 1, a kernel that does not fit a 'valid' input,
    unknown ``padding``/``data_format`` or non-positive ``filters`` raise ``ValueError``.
    """


def _layer_class(rank, default, spatial):
    class Layer(ConvLSTM):
        filters: int
        kernel_size: Any
        strides: Any = default
        padding: str = "valid"
        data_format: Any = None
        dilation_rate: Any = default
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
        return_sequences: bool = False
        go_backwards: bool = False
        stateful: bool = False
        dropout: float = 0.0
        recurrent_dropout: float = 0.0
        return_state: bool = False
        unroll: bool = False
        zero_output_for_mask: bool = False
        param_dtype: Any = jnp.float32
        scan_unroll: int = 1
        remat: bool = False
        custom_backward: bool = True

    Layer.rank = rank
    Layer.__name__ = Layer.__qualname__ = f"ConvLSTM{rank}D"
    Layer.__doc__ = _LAYER_DOC.format(r=rank, sp=spatial)
    Layer.__module__ = __name__
    return Layer


ConvLSTM1D = _layer_class(1, (1,), "steps")
ConvLSTM2D = _layer_class(2, (1, 1), "rows, cols")
ConvLSTM3D = _layer_class(3, (1, 1, 1), "dim1, dim2, dim3")
