"""The layer-side path: what every recurrent layer does around the driver, for any front end.

A front end (Flax linen in :mod:`rnnjax.layers` and :mod:`rnnjax.cudnn`, Flax NNX in
:mod:`rnnjax.nnx`) owns parameters, RNG streams and where stateful states live; everything else a
Keras recurrent layer does happens here, once, with no Flax import (what a cell computes for one
call is :mod:`rnnjax.layers.contract`'s, the CuDNN layers' call :mod:`rnnjax.cudnn.path`'s):

1. :func:`check_sequence`: the input is ``(*batch, T, *features)``, any number of batch axes
   (zero included: one unbatched sequence, so ``jax.vmap`` over unbatched calls works), and
   matches the declared ``input_dim``/``input_length``.
2. The front end builds the cell's :class:`CoreProgram` for ``sequence.feature_shape`` and
   ``sequence.batch_shape`` (weights, this call's dropout masks).
3. :func:`run_layer` (or, for a layer with its own kernel, :func:`start_state` and
   :func:`finish`): checks the mask, the constants and the states, picks the initial state
   ``initial_state > stored state > zeros``, runs the driver (:func:`drive`, the one call into
   :mod:`rnnjax.functional.driver`), and returns a :class:`LayerCall`: the Keras results, the
   final state and the activity penalty.
4. The front end stores ``call.state`` when the layer is stateful and reports
   ``call.activity_penalty``; :func:`reset_value` gives the value ``reset_states`` stores.

States are pytrees (``LSTMState(h, c)``, a tuple per stacked cell); users pass and receive them
as Keras's flat list of arrays (``[h, c]``), which :func:`check_state` turns back into the tree.
"""

from __future__ import annotations

import math
import numbers
import typing
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp

from rnnjax import regularizers
from rnnjax.functional.core import check_state, core_program, state_dtype
from rnnjax.functional.driver import run_program
from rnnjax.functional.options import LoopOptions
from rnnjax.functional.protocol import CoreProgram

__all__ = [
    "CallOptions",
    "Sequence",
    "LayerCall",
    "check_sequence",
    "check_mask",
    "check_state",
    "check_constants",
    "state_dtype",
    "start_state",
    "run_layer",
    "finish",
    "drive",
    "reset_value",
    "like_state",
    "core_cell_program",
    "stack_programs",
    "step_once",
    "zero_states",
]


class CallOptions(NamedTuple):
    """A recurrent layer's Keras options (:meth:`of` reads them from any layer object)."""

    return_sequences: bool = False
    return_state: bool = False
    go_backwards: bool = False
    stateful: bool = False
    unroll: bool = False
    zero_output_for_mask: bool = False
    activity_regularizer: Any = None
    input_dim: int | None = None
    input_length: int | None = None
    scan_unroll: int = 1
    remat: bool = False
    custom_backward: bool = True
    backend: str = "auto"

    @classmethod
    def of(cls, layer: Any, **overrides) -> CallOptions:
        """The options from ``layer``'s attributes of the same names (defaults for missing ones)."""
        values: dict[str, Any] = {name: getattr(layer, name, default) for name, default in cls._field_defaults.items()}
        values.update(overrides)
        return cls(**values)


class Sequence(NamedTuple):
    """The checked layout of a sequence input ``(*batch, T, *feature_shape)``."""

    batch_shape: tuple
    steps: int
    feature_shape: tuple


class LayerCall(NamedTuple):
    """What a layer call returns to its front end: ``results`` (the output, followed by the flat
    final states with ``return_state``), the final ``state`` pytree (to store when stateful) and
    the ``activity_penalty`` (a float32 scalar, or None without an activity regularizer)."""

    results: Any
    state: Any
    activity_penalty: Any


def _describe(a) -> str:
    return str(tuple(a.shape)) if hasattr(a, "shape") else type(a).__name__


def check_sequence(
    inputs: jax.Array,
    *,
    feature_ndim: int = 1,
    input_dim: int | None = None,
    input_length: int | None = None,
    layout: str = "(*batch, timesteps, features)",
) -> Sequence:
    """Checks that ``inputs`` is ``(*batch, T, *features)`` with ``feature_ndim`` feature axes,
    ``T >= 1``, and (when given) ``input_dim`` features and ``input_length`` steps; returns its
    :class:`Sequence`. Errors name ``inputs`` and the expected ``layout``."""
    if not hasattr(inputs, "ndim") or not hasattr(inputs, "shape") or inputs.ndim < feature_ndim + 1:
        raise ValueError(
            f"`inputs`: expected an array {layout} with at least {feature_ndim + 1} dimensions, got shape "
            f"{_describe(inputs)}."
        )
    shape = tuple(inputs.shape)
    batch_shape, steps, features = shape[: -feature_ndim - 1], shape[-feature_ndim - 1], shape[-feature_ndim:]
    if steps == 0:
        raise ValueError(f"`inputs`: the time axis is empty (shape {shape}); a sequence needs at least one step.")
    if input_dim is not None and features[-1] != input_dim:
        raise ValueError(f"`inputs`: the layer was declared with input_dim={input_dim}, got {features[-1]} features.")
    if input_length is not None and steps != input_length:
        raise ValueError(f"`inputs`: the layer was declared with input_length={input_length}, got {steps} steps.")
    return Sequence(batch_shape, steps, features)


def check_mask(mask: jax.Array | None, expected_shape: tuple, where: str = "", argument: str = "mask"):
    """``mask`` as a boolean array of exactly ``expected_shape`` (``(*batch, T)``), or None.
    Nothing broadcasts: ``(1, T)`` for a batch of 2 is an error. ``where`` names the caller,
    ``argument`` the argument (``reset`` has the same form)."""
    if mask is None:
        return None
    label = f"`{argument}` ({where})" if where else f"`{argument}`"
    shape = tuple(jnp.shape(mask)) if hasattr(mask, "shape") else None
    if shape != tuple(expected_shape):
        raise ValueError(f"{label}: expected shape {tuple(expected_shape)} (*batch, timesteps), got {shape}.")
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise TypeError(f"{label}: expected a boolean array, got dtype {mask.dtype}; use `{argument}.astype(bool)`.")
    return mask


def check_constants(program: CoreProgram, constants: Any, cell: Any) -> None:
    """Constants only reach cells whose step takes them."""
    if constants is not None and not program.takes_constants:
        raise ValueError(
            f"`constants`: {type(cell).__name__} does not take constants; only cells whose "
            "`__call__` accepts a `constants` argument do."
        )


def _batch_words(shape) -> str:
    return f"batch size {shape[0]}" if len(shape) == 1 else f"batch shape {tuple(shape)}"


def _check_stored(stored, template, batch_shape) -> None:
    """A stateful layer keeps the batch shape its states were built with."""
    s_leaves, t_leaves = jax.tree_util.tree_leaves(stored), jax.tree_util.tree_leaves(template)
    if [tuple(a.shape) for a in s_leaves] == [tuple(a.shape) for a in t_leaves]:
        return
    kept = s_leaves[0].shape[: s_leaves[0].ndim - (t_leaves[0].ndim - len(batch_shape))] if s_leaves else ()
    got = f"a batch of {batch_shape[0]}" if len(batch_shape) == 1 else f"a batch of shape {tuple(batch_shape)}"
    raise ValueError(
        f"`inputs`: this stateful layer keeps states for {_batch_words(kept)}, got {got}. A stateful layer "
        "needs a fixed batch shape; build a new one (init) for another batch shape."
    )


def start_state(
    make_state: Callable,
    sequence: Sequence,
    dtype: Any,
    *,
    initial_state: Any = None,
    read_state: Callable | None = None,
):
    """The state before the first step: ``initial_state`` (Keras's flat list ``[h, c]``, one
    array, or a pytree like the state) > the stored state > zeros, in the states' dtype.

    ``make_state(batch_shape, dtype)`` builds the zero state (a program's ``initial_state``).
    ``read_state(template)`` (stateful layers only) returns the stored state, creating it from
    ``template`` when there is none yet; its shapes must equal ``template``'s (the batch shape
    is fixed). Returns the state pytree.
    """
    template = make_state(sequence.batch_shape, state_dtype(dtype))
    stored = None
    if read_state is not None:
        stored = read_state(template)
        _check_stored(stored, template, sequence.batch_shape)
    if initial_state is not None:
        state = check_state(template, initial_state, "initial_state")
    elif stored is not None:
        state = stored
    else:
        return template
    return jax.tree_util.tree_map(lambda a, t: jnp.asarray(a, t.dtype), state, template)


def finish(output: Any, final: Any, options: CallOptions, sequence: Sequence) -> LayerCall:
    """The :class:`LayerCall` of a driver result ``(output, final state)``: Keras's results and
    the activity penalty ``sum_k regularizer(r_k) / batch`` over the results ``r_k`` (Keras
    divides by the batch size; ``batch`` is the product of the batch axes, 1 for none)."""
    results = (output, *jax.tree_util.tree_leaves(final)) if options.return_state else output
    reg = regularizers.get(options.activity_regularizer, "activity_regularizer")
    penalty = None
    if reg is not None:
        penalty = regularizers.activity_penalty(reg, results, batch_size=math.prod(sequence.batch_shape))
    return LayerCall(results, final, penalty)


def run_layer(
    program: CoreProgram,
    inputs: jax.Array,
    sequence: Sequence,
    options: CallOptions,
    *,
    cell: Any = None,
    mask: jax.Array | None = None,
    reset: jax.Array | None = None,
    initial_state: Any = None,
    read_state: Callable | None = None,
    constants: Any = None,
) -> LayerCall:
    """One recurrent layer call: ``program`` (from the front end's cell, for ``sequence``, the
    result of :func:`check_sequence` on ``inputs``) run over ``inputs`` with Keras's semantics.

    ``mask``: boolean ``(*batch, T)``; ``reset``: boolean ``(*batch, T)``, True where a new
    sequence starts (:func:`rnnjax.functional.scan_rnn` states the rule; a stateful layer's
    stored state is the initial state of a row's first sequence); ``initial_state``/
    ``read_state``: see :func:`start_state`; ``constants``: passed to every step (``cell`` names
    the cell in errors). Returns a :class:`LayerCall`.
    """
    check_constants(program, constants, cell)
    mask = check_mask(mask, sequence.batch_shape + (sequence.steps,))
    reset = check_mask(reset, sequence.batch_shape + (sequence.steps,), argument="reset")
    init = start_state(
        cast(Callable, program.initial_state),
        sequence,  # a layer's program states its zeros
        inputs.dtype,
        initial_state=initial_state,
        read_state=read_state if options.stateful else None,
    )
    output, final = drive(
        program,
        inputs,
        init,
        options,
        feature_ndim=len(sequence.feature_shape),
        mask=mask,
        reset=reset,
        constants=constants,
    )
    return finish(output, final, options, sequence)


def drive(
    program: CoreProgram,
    inputs: jax.Array,
    initial_state: Any,
    options: CallOptions,
    *,
    feature_ndim: int = 1,
    mask: jax.Array | None = None,
    reset: jax.Array | None = None,
    constants: Any = None,
):
    """The one call from the layers into the driver: ``(output, final state)`` of ``program``
    over ``inputs (*batch, T, *features)`` (several feature axes: ConvLSTM). Without
    ``options.custom_backward`` the program's hand-written backward forms are dropped (the
    generic loop, which forward-mode autodiff can differentiate); ``options.backend`` picks the
    scan or oneDNN's fused kernel (:mod:`rnnjax.onednn.dispatch`)."""
    loop = LoopOptions(
        go_backwards=options.go_backwards,
        return_sequences=options.return_sequences,
        zero_output_for_mask=options.zero_output_for_mask,
        unroll=options.unroll,
        scan_unroll=options.scan_unroll,
        remat=options.remat,
        feature_axes=feature_ndim,
        custom_backward=options.custom_backward,
        backend=options.backend,
    )
    return run_program(program, inputs, initial_state, loop, mask=mask, reset=reset, constants=constants)


def like_state(new: Any, current: Any):
    """``new`` with ``current``'s dtype and, outside ``jit``, its sharding (a state sharded like the
    batch stays so); under ``jit`` the result is placed by ``jit`` (its ``out_shardings``)."""
    new = jnp.asarray(new, current.dtype)
    traced = isinstance(current, jax.core.Tracer) or isinstance(new, jax.core.Tracer)
    return new if traced else jax.device_put(new, current.sharding)


def reset_value(current: Any, states: Any = None, argument: str = "states"):
    """What ``reset_states(states)`` stores in place of the stored state ``current``: zeros, or
    ``states`` (Keras's flat list, checked against ``current``'s count and shapes) in
    ``current``'s dtypes and sharding."""
    if states is None:
        return jax.tree_util.tree_map(jnp.zeros_like, current)
    return jax.tree_util.tree_map(like_state, check_state(current, states, argument), current)


def core_cell_program(
    core: Any,
    params: Any,
    output_shape: tuple,
    dropout_mask: jax.Array | None = None,
    recurrent_dropout_mask: jax.Array | None = None,
    initial_state: Callable | None = None,
) -> CoreProgram:
    """The :class:`CoreProgram` of a functional core on ``params`` with this call's dropout masks
    (the built-in cells, CuDNN's scan backend): its projection, step and hand-written backward
    forms. ``initial_state`` defaults to ``core.initial_state``."""
    program = core_program(core, params, dropout_mask, recurrent_dropout_mask)
    return program._replace(initial_state=initial_state or core.initial_state, output_shape=tuple(output_shape))


def stack_programs(programs: typing.Sequence[CoreProgram], batch_shape: tuple, dtype: Any) -> CoreProgram:
    """One program for cells run in a stack: ``y_0 = x_t``; ``s_k, y_k = cell_k(s_k, y_{k-1})``.
    The state is the tuple of the cells' states; only the first cell's input projection runs
    before the loop (the others depend on the cell below)."""
    programs = tuple(programs)

    def step(state, xp_t, constants=None):
        new_states, y = [], None
        for k, prog in enumerate(programs):
            x_in = xp_t if k == 0 else cast(Callable, prog.project)(y)  # a cell's program projects
            s, y = _step(prog, state[k], x_in, constants)
            new_states.append(s)
        return tuple(new_states), y

    def initial_state(batch_shape=batch_shape, dtype=dtype):
        return tuple(cast(Callable, p.initial_state)(batch_shape, dtype) for p in programs)  # cells' programs: set

    return CoreProgram(
        programs[0].project,
        step,
        initial_state,
        programs[-1].output_shape,
        takes_constants=any(p.takes_constants for p in programs),
    )


def _step(program, state, x_t, constants):
    if constants is not None and program.takes_constants:
        return program.step(state, x_t, constants)
    return program.step(state, x_t)


def step_once(
    program: CoreProgram, cell: Any, inputs: jax.Array, states: Any, constants: Any = None, feature_ndim: int = 1
):
    """A cell called directly, the Keras way: one step on ``inputs (*batch, *features)`` from
    ``states`` (Keras's flat list); returns ``(output, new states as a flat list)``."""
    batch_shape = tuple(inputs.shape[: inputs.ndim - feature_ndim])
    # a cell's program states its zeros and projects:
    zeros, project = cast(Callable, program.initial_state), cast(Callable, program.project)
    state = check_state(zeros(batch_shape, state_dtype(inputs.dtype)), states, "states")
    if constants is not None and not program.takes_constants:
        raise ValueError(f"`constants`: {type(cell).__name__} does not take constants.")
    new, y = _step(program, state, project(inputs), constants)
    return y, jax.tree_util.tree_leaves(new)


def zero_states(state_size: Any, batch_shape: typing.Sequence[int], dtype: Any) -> tuple:
    """Zero states for a Keras ``state_size`` (an int, a shape, or a list of them)."""
    sizes = (state_size,) if isinstance(state_size, numbers.Integral) else tuple(state_size)
    return tuple(
        jnp.zeros(tuple(batch_shape) + ((int(s),) if isinstance(s, numbers.Integral) else tuple(s)), dtype)
        for s in sizes
    )
