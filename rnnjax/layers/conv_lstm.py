"""Convolutional LSTM layers ``ConvLSTM1D``/``ConvLSTM2D``/``ConvLSTM3D`` and their cells.

The cell (:class:`ConvLSTM2DCell` etc.) is an LSTM whose input and recurrent transformations
are convolutions (:class:`rnnjax.functional.ConvLSTMCore` states the equations)::

    z = x_t ∗ kernel + bias + h_{t-1} ⊛ recurrent_kernel;  i, f, c̃, o = split(z, 4, channels)
    c_t = σ(f) ⊙ c_{t-1} + σ(i) ⊙ φ(c̃);  h_t = σ(o) ⊙ φ(c_t)

``∗`` uses the layer's strides, padding and dilation; ``⊛`` is always stride 1, 'same',
undilated. Parameters (Keras layout, under ``params['cell']``): ``kernel kernel_size + (C, 4F)``,
``recurrent_kernel kernel_size + (F, 4F)``, ``bias (4F,)``.

Shapes (2-D; 1-D and 3-D drop/add a spatial axis), ``channels_last``:
inputs ``(*samples, time, rows, cols, channels)`` (any number of sample axes), output
``(*samples, rows', cols', filters)`` or ``(*samples, time, rows', cols', filters)`` with
``return_sequences``, states ``h, c`` ``(*samples, rows', cols', filters)``. ``channels_first`` puts channels/filters right after the
time (or batch) axis. The layers compute channels_last internally: a channels_first input is
transposed once before the loop and the outputs/states once after (states in the
``'rnn_state'`` collection of a stateful layer are kept channels_last).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnnjax.functional.conv import check_data_format, shape_ints
from rnnjax.functional.conv_lstm import ConvLSTMCore
from rnnjax.layers.base import STATE_COLLECTION, RecurrentLayer, reset_layer_states, run_recurrent
from rnnjax.layers.cells import KerasCell
from rnnjax.functional.protocol import CoreProgram, make_params
from rnnjax.layers.path import check_sequence, check_state, core_cell_program


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
        check_data_format(self.data_format)  # the rest: KerasCell's check_cell_config
        super().__post_init__()

    @property
    def output_size(self):
        return self.filters

    @property
    def num_feature_axes(self) -> int:
        """Feature axes of one step: the spatial axes and the channels."""
        return self.rank + 1

    @property
    def sequence_layout(self) -> str:
        return "(*batch, timesteps, channels, *spatial)" if self._channels_first() else "(*batch, timesteps, *spatial, channels)"

    def _channels_first(self):
        return check_data_format(self.data_format) == "channels_first"

    @nn.compact
    def prepare(self, input_shape, batch_shape, dtype, training) -> CoreProgram:
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
        params = make_params(core.params_class, values)
        batch_shape = tuple(batch_shape)
        in_mask, rec_mask = self.dropout_masks(batch_shape + spatial + (channels,),
                                               batch_shape + out_spatial + (self.filters,), core.dropout_mask_count,
                                               dtype, training)

        def initial_state(batch_shape=batch_shape, dtype=dtype):
            return core.initial_state(batch_shape, dtype, spatial)

        if not cf:
            return core_cell_program(core, params, out_spatial + (self.filters,), in_mask, rec_mask, initial_state)
        return _channels_first_program(core, params, in_mask, rec_mask, initial_state, (self.filters,) + out_spatial, r)

    def get_initial_state(self, batch_size: int, input_spatial_shape=None, dtype=jnp.float32):
        """Zero states ``[h, c]`` for inputs of spatial shape ``input_spatial_shape``."""
        state = self.core().initial_state((batch_size,), dtype, input_spatial_shape)
        if self._channels_first():
            state = jax.tree_util.tree_map(lambda a: _to_first(a, 1), state)
        return list(state)


def _channels_first_program(core, params, in_mask, rec_mask, initial_state, output_shape, rank) -> CoreProgram:
    """A channels_first cell's program: the core (channels_last) with the channel axis moved at
    every step, so it has none of the core's fast forms (the ConvLSTM layers avoid it)."""
    axis = -(rank + 1)  # the channel axis of a channels_first per-step array

    def project(x):
        return core.project(params, _to_last(x, axis), in_mask)

    def step(state, xp_t):
        new, y = core.step(params, jax.tree_util.tree_map(lambda a: _to_last(a, axis), state), xp_t, rec_mask)
        return jax.tree_util.tree_map(lambda a: _to_first(a, axis), new), _to_first(y, axis)

    def first_initial_state(*args, **kwargs):
        return jax.tree_util.tree_map(lambda a: _to_first(a, axis), initial_state(*args, **kwargs))

    return CoreProgram(project, step, first_initial_state, output_shape)


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
_CELL_FIELDS = tuple(f.name for f in dataclasses.fields(ConvLSTM2DCell) if f.name not in ("parent", "name", "data_format"))


class ConvLSTM(RecurrentLayer):
    """Shared call of ``ConvLSTM1D/2D/3D`` (the fields are declared by the subclasses).

    Call: ``layer(inputs, mask=None, initial_state=None, training=False, *, reset=None)`` with
    inputs ``(*batch, time, *spatial, channels)`` (``(*batch, time, channels, *spatial)`` for
    channels_first), any number of batch axes; ``mask`` and ``reset`` (True where a new sequence
    starts, see :class:`rnnjax.RNN`) boolean ``(*batch, time)``;
    ``initial_state`` ``[h, c]`` in the layer's data_format. Returns the output, followed by
    ``h, c`` (in the layer's data_format) with ``return_state``.
    """

    rank = None

    def __post_init__(self):
        self._make_cell(parent=None)  # validates every argument at construction
        check_data_format(self.data_format)
        super().__post_init__()

    @property
    def num_feature_axes(self) -> int:
        return self.rank + 1

    def _make_cell(self, **kwargs):
        return _CELLS[self.rank](**{n: getattr(self, n) for n in _CELL_FIELDS}, data_format="channels_last", **kwargs)

    def _channels_first(self):
        return check_data_format(self.data_format) == "channels_first"

    def _layout(self, cf):
        sp = {1: "steps", 2: "rows, cols", 3: "conv_dim1, conv_dim2, conv_dim3"}[self.rank]
        return f"(*samples, time, channels, {sp})" if cf else f"(*samples, time, {sp}, channels)"

    def _states_to_last(self, states, last_shapes, argument):
        """User (channels_first) states -> channels_last, checked against the channels_last
        ``last_shapes`` (their channels_first forms are what the user is told)."""
        axis = -(self.rank + 1)
        first = [jax.ShapeDtypeStruct(_move_shape(sh, axis), jnp.float32) for sh in last_shapes]
        return [_to_last(a, axis) for a in check_state(first, states, argument)]

    @nn.compact
    def __call__(self, inputs, mask=None, initial_state=None, training: bool = False, *, reset=None):
        r, cf = self.rank, self._channels_first()
        seq = check_sequence(inputs, feature_ndim=r + 1, layout=self._layout(cf))
        axis = -(r + 1)  # the channel axis (channels_first) of inputs, outputs and states
        x = _to_last(inputs, axis) if cf else inputs
        cell = self._make_cell(name="cell")
        if initial_state is not None and cf:
            spatial = x.shape[x.ndim - r - 1:-1]
            last = seq.batch_shape + cell.core().output_spatial_shape(spatial) + (self.filters,)
            initial_state = self._states_to_last(initial_state, [last, last], "initial_state")
        result = run_recurrent(self, cell, x, mask=mask, reset=reset, initial_state=initial_state, training=training,
                               layout=self._layout(False))
        if not cf:
            return result
        return jax.tree_util.tree_map(lambda a: _to_first(a, axis), result)

    def reset_states(self, states=None):
        """Zeroes the stateful states, or sets them to ``states`` ``[h, c]`` (layer's data_format).

        ``_, updates = layer.apply(variables, method='reset_states', mutable=['rnn_state'])``.
        """
        if states is not None and self._channels_first() and self.has_variable(STATE_COLLECTION, "states"):
            stored = jax.tree_util.tree_leaves(self.get_variable(STATE_COLLECTION, "states"))
            states = self._states_to_last(states, [tuple(a.shape) for a in stored], "states")
        return reset_layer_states(self, states)


def _move_shape(shape, axis) -> tuple:
    """The shape of ``_to_first`` applied to an array of ``shape``."""
    shape = list(shape)
    shape.insert(axis % len(shape), shape.pop())
    return tuple(shape)


_LAYER_DOC = """{r}D Convolutional LSTM: an LSTM whose input and recurrent transformations are
    convolutions (see :mod:`rnnjax.layers.conv_lstm`; equations in
    :class:`rnnjax.functional.ConvLSTMCore`).

    Inputs ``(*samples, time, {sp}, channels)`` (channels_last, the default) or
    ``(*samples, time, channels, {sp})`` (channels_first), any number of sample axes (none: one
    unbatched sequence). Output ``(*samples, {sp}', filters)``, with ``return_sequences``
    ``(*samples, time, {sp}', filters)`` (filters after time/samples for channels_first), where ``{sp}'`` follow from kernel_size, strides, padding and dilation
    (Keras's conv output length). ``return_state`` adds ``h, c`` (each shaped like the last output).

    Keras 2 defaults: ``recurrent_activation='hard_sigmoid'`` (``clip(0.2x + 0.5, 0, 1)``);
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
