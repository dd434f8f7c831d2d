"""The front-end contract: what the linen (:mod:`rnnjax.layers`) and NNX (:mod:`rnnjax.nnx`) cells
share beyond the layer-side path (:mod:`rnnjax.layers.path`), once, with no Flax import.

A front end differs only in where parameters, RNG streams and states live; everything about
*what* a cell computes for one call is here:

* :func:`core_of`, :func:`check_config`, :func:`cell_weights`: a cell's core, its arguments
  checked at construction, and the weights it has, from its kind's record
  (:class:`rnnjax.kinds.CellKind`) and its arguments (any object with them as attributes).
* :func:`step_shapes`: the per-step shapes of a built-in cell (its core's) for a per-step input
  shape: ``(*features)`` is ``(I,)`` for the dense cells, ``(*spatial, C)`` for ConvLSTM.
* :func:`draw_masks`: this call's dropout masks, ``(count, *batch, *shape)`` each, ``count`` the
  core's number of masks (one per gate or one shared), drawn once per sequence.
* :func:`built_cell_program`: a built-in cell's :class:`~rnnjax.functional.protocol.CoreProgram`.
* :func:`keras_cell_program`: any cell with the Keras cell protocol (``state_size`` and
  ``call(inputs, states[, constants]) -> (output, new_states)``), its output width measured with
  ``jax.eval_shape`` unless it declares ``output_size``.
* :func:`one_step`: a cell called directly, the Keras way (one step, flat states).
* :func:`num_feature_axes`: the trailing feature axes of one step of a cell (or a list of them).
* :class:`ChannelsFirst`: ConvLSTM's ``channels_first`` boundary: the layers compute channels_last
  and transpose once before and after the loop.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from rnnjax import constraints, regularizers
from rnnjax.functional.core import check_rate, dropout_masks
from rnnjax.functional.protocol import CoreProgram
from rnnjax.layers.path import check_sequence, check_state, core_cell_program, step_once, zero_states

__all__ = [
    "CellFacts",
    "core_of",
    "check_config",
    "cell_weights",
    "StepShapes",
    "step_shapes",
    "draw_masks",
    "built_cell_program",
    "keras_cell_program",
    "one_step",
    "num_feature_axes",
    "ChannelsFirst",
    "channels_first_program",
]


class _HasCore(Protocol):
    @property
    def core(self) -> Any: ...


class CellFacts:
    """What a built-in cell (linen or NNX) says about itself, from its ``core`` (mixin): Keras's
    ``state_size`` (an int for one state, a list for several), ``output_size`` and the
    ``num_feature_axes`` of one step (1; ConvLSTM: the spatial axes and the channels)."""

    @property
    def state_size(self: _HasCore):
        sizes = self.core.state_size
        return sizes[0] if len(sizes) == 1 else list(sizes)

    @property
    def output_size(self: _HasCore) -> int:
        return self.core.output_size

    @property
    def num_feature_axes(self: _HasCore) -> int:
        return self.core.num_feature_axes


def core_of(kind: Any, config: Any):
    """The functional core of a cell of ``kind`` whose arguments are ``config``'s attributes."""
    names = {f.name for f in dataclasses.fields(kind.core)}
    return kind.core(**{n: getattr(config, n) for n in names if hasattr(config, n)})


def cell_weights(kind: Any, config: Any) -> tuple:
    """``((weight name, Keras argument prefix), ...)`` of the weights a cell of ``kind`` with
    arguments ``config`` has: ``kernel``, ``recurrent_kernel``, and ``bias`` with ``use_bias``."""
    bias = "use_bias" in kind.cell_arguments and bool(config.use_bias)
    return (("kernel", "kernel"), ("recurrent_kernel", "recurrent")) + ((("bias", "bias"),) if bias else ())


def check_config(kind: Any, config: Any) -> None:
    """Validates the arguments of a cell, or of a layer with the cell's arguments, so that a bad
    value fails at construction, naming the argument (as Keras does)."""
    core_of(kind, config)  # units, activations, initializers, implementation
    for name in ("dropout", "recurrent_dropout"):
        if name in kind.cell_arguments:
            check_rate(getattr(config, name), name)
    for name in ("kernel", "recurrent", "bias"):
        if f"{name}_regularizer" in kind.cell_arguments:
            regularizers.get(getattr(config, f"{name}_regularizer"), f"{name}_regularizer")
            constraints.get(getattr(config, f"{name}_constraint"), f"{name}_constraint")


class StepShapes(NamedTuple):
    """The per-step shapes of a built-in cell's call: ``input_dim`` (features or channels, the
    kernel's input axis), the input dropout mask's ``input_shape``, the recurrent mask's
    ``state_shape``, the ``output_shape`` and ``spatial`` (the input's spatial shape; ``()`` for
    the dense cells)."""

    input_dim: int
    input_shape: tuple
    state_shape: tuple
    output_shape: tuple
    spatial: tuple = ()


def step_shapes(core: Any, feature_shape: Sequence[int], owner: str, channels_first: bool = False) -> StepShapes:
    """The :class:`StepShapes` of ``core`` for per-step inputs ``feature_shape``: ``(I,)`` for a
    dense core, ``(*spatial, C)`` (``(C, *spatial)`` with ``channels_first``) for a spatial one
    (``core.num_feature_axes > 1``). ``owner`` names the cell in the error on another shape."""
    feature_shape = tuple(int(n) if isinstance(n, numbers.Integral) else n for n in feature_shape)
    axes = int(core.num_feature_axes)
    if len(feature_shape) != axes:
        layout = (
            "(*batch, features) per step"
            if axes == 1
            else (
                f"{axes - 1} spatial dimensions and channels per step "
                + ("(channels, *spatial)" if channels_first else "(*spatial, channels)")
            )
        )
        raise ValueError(f"`inputs`: {owner} takes {layout}, got per-step shape {feature_shape}.")
    units = int(core.output_size)
    if axes == 1:
        n = feature_shape[0]
        return StepShapes(n, (n,), (units,), (units,))
    if channels_first:
        channels, spatial = feature_shape[0], feature_shape[1:]
    else:
        channels, spatial = feature_shape[-1], feature_shape[:-1]
    out = tuple(core.output_spatial_shape(spatial)) + (units,)
    return StepShapes(channels, tuple(spatial) + (channels,), out, out, tuple(spatial))


def draw_masks(
    core: Any,
    keys: Callable | None,
    dropout: float,
    recurrent_dropout: float,
    shapes: StepShapes,
    batch_shape: Sequence[int],
    dtype: Any,
) -> tuple[jax.Array | None, jax.Array | None]:
    """This call's ``(input mask, recurrent mask)``: ``(count, *batch_shape, *shape)`` each
    (``count``: the core's ``dropout_mask_count``, one per gate or one shared by every gate), or
    None at rate 0 or when ``keys`` is None (not training). ``keys()`` returns a fresh key; it is
    called once per drawn mask, input mask first."""
    in_mask = rec_mask = None
    batch_shape, count = tuple(batch_shape), int(core.dropout_mask_count)
    if keys is not None and dropout > 0:
        in_mask = dropout_masks(keys(), dropout, batch_shape + shapes.input_shape, count, dtype)
    if keys is not None and recurrent_dropout > 0:
        rec_mask = dropout_masks(keys(), recurrent_dropout, batch_shape + shapes.state_shape, count, dtype)
    return in_mask, rec_mask


def built_cell_program(
    core: Any,
    params: Any,
    shapes: StepShapes,
    batch_shape: Sequence[int],
    dtype: Any,
    masks: tuple[jax.Array | None, jax.Array | None] = (None, None),
    channels_first: bool = False,
) -> CoreProgram:
    """The program of a built-in cell: ``core`` on ``params`` with this call's ``masks``, its
    zero state for ``batch_shape`` (and the input's spatial shape). With ``channels_first`` (a
    spatial cell used directly in a layer) see :func:`channels_first_program`."""
    batch_shape = tuple(batch_shape)

    def initial_state(batch_shape=batch_shape, dtype=dtype):
        if shapes.spatial:
            return core.initial_state(batch_shape, dtype, shapes.spatial)
        return core.initial_state(batch_shape, dtype)

    if channels_first:
        return channels_first_program(core, params, masks, initial_state, shapes)
    return core_cell_program(core, params, shapes.output_shape, *masks, initial_state=initial_state)


def keras_cell_program(
    cell: Any,
    call: Callable,
    feature_shape: Sequence[int],
    batch_shape: Sequence[int],
    dtype: Any,
    constants: Any = None,
) -> CoreProgram:
    """The program of a ``cell`` with the Keras cell protocol: ``state_size`` (an int, a shape, or
    a list of them) and a step ``call(x_t, states, constants)`` (the front end's way of calling
    the cell on a flat list of states; ``constants`` None or the layer's) returning ``(output,
    new_states)``.

    The state is the tuple of zero arrays of ``state_size``; the per-step output shape is the
    cell's ``output_size`` when it declares one, else measured with ``jax.eval_shape`` on one
    step with this call's ``constants`` (so a cell whose output is narrower than its state feeds
    the next cell of a stack its true width)."""
    owner = type(cell).__name__
    if not hasattr(cell, "state_size"):
        raise TypeError(
            f"`cell`: {owner} has no `state_size`; a cell needs `state_size` (an int or a tuple of ints) "
            "and `__call__(inputs, states)` returning `(output, new_states)`."
        )
    state_size = cell.state_size
    batch_shape, feature_shape = tuple(batch_shape), tuple(feature_shape)
    count = len(zero_states(state_size, (), dtype))

    def initial_state(batch_shape=batch_shape, dtype=dtype):
        return zero_states(state_size, batch_shape, dtype)

    def step(state, x_t, constants=None):
        out, new = call(x_t, list(state), constants)
        new = tuple(new) if isinstance(new, (list, tuple)) else (new,)
        if len(new) != count:
            raise ValueError(f"`cell`: {owner} returned {len(new)} states, its state_size declares {count}.")
        return new, out

    size = getattr(cell, "output_size", None)
    if size is None:
        x0 = jax.ShapeDtypeStruct(batch_shape + feature_shape, dtype)
        size = jax.eval_shape(lambda x, c: step(initial_state(), x, c)[1], x0, constants).shape[len(batch_shape) :]
    output_shape = tuple(size) if isinstance(size, (tuple, list)) else (int(size),)
    return CoreProgram(lambda x: x, step, initial_state, output_shape, takes_constants=True)


def one_step(cell: Any, inputs: jax.Array, states: Any, program_of: Callable, constants: Any = None):
    """A cell called directly, the Keras way: one step on ``inputs (*batch, *features)`` from
    ``states`` (a flat list of arrays); returns ``(output, new states as a flat list)``.
    ``program_of(feature_shape, batch_shape, dtype)`` is the front end's program of ``cell``."""
    nf = num_feature_axes(cell)
    prog = program_of(tuple(inputs.shape[inputs.ndim - nf :]), tuple(inputs.shape[: inputs.ndim - nf]), inputs.dtype)
    return step_once(prog, cell, inputs, states, constants, nf)


def num_feature_axes(cell: Any) -> int:
    """How many trailing feature axes one step of ``cell`` takes (1; ConvLSTM cells: rank + 1);
    for a list of cells, the first's."""
    first = cell[0] if isinstance(cell, (list, tuple)) else cell
    return int(getattr(first, "num_feature_axes", 1))


def _to_last(x, axis: int):
    return jnp.moveaxis(x, axis, -1)


def _to_first(x, axis: int):
    return jnp.moveaxis(x, -1, axis)


def channels_first_program(core: Any, params: Any, masks: tuple, initial_state: Any, shapes: StepShapes) -> CoreProgram:
    """A channels_first spatial cell's program: the core (channels_last) with the channel axis
    moved at every step, so it has none of the core's fast forms (the ConvLSTM layers avoid it by
    transposing once at their boundary, :class:`ChannelsFirst`)."""
    axis = -(len(shapes.spatial) + 1)  # the channel axis of a channels_first per-step array
    in_mask, rec_mask = masks

    def project(x):
        return core.project(params, _to_last(x, axis), in_mask)

    def step(state, xp_t):
        new, y = core.step(params, jax.tree_util.tree_map(lambda a: _to_last(a, axis), state), xp_t, rec_mask)
        return jax.tree_util.tree_map(lambda a: _to_first(a, axis), new), _to_first(y, axis)

    def first_initial_state(*args, **kwargs):
        return jax.tree_util.tree_map(lambda a: _to_first(a, axis), initial_state(*args, **kwargs))

    output_shape = shapes.output_shape[-1:] + shapes.output_shape[:-1]
    return CoreProgram(project, step, first_initial_state, output_shape)


_SPATIAL = {1: "steps", 2: "rows, cols", 3: "conv_dim1, conv_dim2, conv_dim3"}


class ChannelsFirst(NamedTuple):
    """ConvLSTM's ``data_format`` boundary for a layer of ``rank`` spatial axes. The layers
    compute channels_last; a channels_first layer (``first``) moves the channel axis (right after
    time, or after the batch axes for states) last once before the loop and back once after, and
    keeps its stored states channels_last."""

    rank: int
    first: bool

    @property
    def axis(self) -> int:
        """The channel axis of a channels_first input, output or state (counted from the end)."""
        return -(self.rank + 1)

    def layout(self, first: bool | None = None) -> str:
        """The input layout the error messages name."""
        sp = _SPATIAL[self.rank]
        first = self.first if first is None else first
        return f"(*samples, time, channels, {sp})" if first else f"(*samples, time, {sp}, channels)"

    def to_last(self, x: jax.Array):
        """A channels_first array (the layer's data_format) channels_last; unchanged otherwise."""
        return _to_last(x, self.axis) if self.first else x

    def to_first(self, tree: Any):
        """Results (outputs and states, channels_last) in the layer's data_format."""
        return jax.tree_util.tree_map(lambda a: _to_first(a, self.axis), tree) if self.first else tree

    def states_to_last(self, states: Any, last_shapes: Sequence[tuple], argument: str):
        """User states (the layer's data_format) channels_last, checked against the channels_last
        ``last_shapes`` (what the user is told are their channels_first forms)."""
        if states is None or not self.first:
            return states
        first = [jax.ShapeDtypeStruct(_first_shape(sh, self.axis), jnp.float32) for sh in last_shapes]
        return [_to_last(a, self.axis) for a in check_state(first, states, argument)]

    def call(self, run: Callable, inputs: jax.Array, initial_state: Any, state_shape: Callable[[tuple], tuple]):
        """One layer call across the boundary: checks ``inputs`` against the layer's layout, then
        ``run(x, initial_state, layout)`` on the channels_last inputs and states;
        ``state_shape(spatial)`` is the channels_last state shape (without batch axes) for inputs
        of that spatial shape. Returns ``run``'s results in the layer's data_format."""
        seq = check_sequence(inputs, feature_ndim=self.rank + 1, layout=self.layout())
        x = self.to_last(inputs)
        if initial_state is not None and self.first:
            last = seq.batch_shape + tuple(state_shape(tuple(x.shape[x.ndim - self.rank - 1 : -1])))
            initial_state = self.states_to_last(initial_state, [last, last], "initial_state")
        return self.to_first(run(x, initial_state, self.layout(False)))


def _first_shape(shape, axis: int) -> tuple:
    """The shape of ``_to_first`` applied to an array of ``shape``."""
    shape = list(shape)
    shape.insert(axis % len(shape), shape.pop())
    return tuple(shape)
