"""The Flax side of the driver: cell programs, ``RNN``, ``StackedRNNCells`` and the shared
layer logic (initial and stateful states, constants, activity penalties).

A *cell program* is what a cell module hands the driver for one layer call: pure functions
closed over the cell's parameters and this call's dropout masks::

    program.project(x)                    # (..., I) -> (..., P), all steps at once
    program.step(state, xp_t, constants)  # -> (state, y_t)
    program.initial_state(batch_shape, dtype)

rnnjax's own cells build theirs from a functional core (:mod:`rnnjax.functional`); any other
Flax module with ``state_size`` and ``__call__(inputs, states[, constants])`` returning
``(output, new_states)`` (the Keras cell protocol, e.g. the seed's ``MinimalRNNCell``) is
wrapped generically.
"""
from __future__ import annotations

import numbers
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnnjax import regularizers
from rnnjax.functional.core import check_custom_backward
from rnnjax.functional.driver import run_program
from rnnjax.functional.protocol import CoreProgram

STATE_COLLECTION = "rnn_state"


CellProgram = CoreProgram  # the one program type (rnnjax.functional.protocol)


def _sizes(state_size) -> tuple:
    if isinstance(state_size, numbers.Integral):
        return (int(state_size),)
    return tuple(state_size)


def generic_program(cell: nn.Module, input_shape: tuple, batch_shape: tuple, dtype, constants) -> CellProgram:
    """Wraps a Keras-protocol Flax cell (``__call__(inputs, states[, constants])``)."""
    if not hasattr(cell, "state_size"):
        raise TypeError(
            f"`cell`: {type(cell).__name__} has no `state_size`; a cell needs `state_size` (an int or a "
            "tuple of ints) and `__call__(inputs, states)` returning `(output, new_states)`."
        )
    sizes = _sizes(cell.state_size)

    def initial_state(batch_shape=batch_shape, dtype=dtype):
        return tuple(jnp.zeros(tuple(batch_shape) + ((s,) if isinstance(s, int) else tuple(s)), dtype) for s in sizes)

    kwargs = {} if constants is None else {"constants": constants}
    x0 = jnp.zeros(tuple(batch_shape) + tuple(input_shape), dtype)
    if cell.is_initializing():
        out0, _ = cell(x0, list(initial_state()), **kwargs)
    else:
        out0 = None
    variables = cell.variables
    unbound = cell.clone(parent=None)
    output_size = getattr(cell, "output_size", None) or (out0.shape[-1] if out0 is not None else sizes[0])
    output_shape = tuple(output_size) if isinstance(output_size, (tuple, list)) else (int(output_size),)

    def step(state, x_t, constants=None):
        kw = {} if constants is None else {"constants": constants}
        out, new = unbound.apply(variables, x_t, list(state), **kw)
        new = tuple(new) if isinstance(new, (list, tuple)) else (new,)
        if len(new) != len(sizes):
            raise ValueError(f"`cell`: {type(cell).__name__} returned {len(new)} states, its state_size declares {len(sizes)}.")
        return new, out

    return CellProgram(lambda x: x, step, initial_state, output_shape, takes_constants=True)


def cell_program(cell, input_shape, batch_shape, dtype, training, constants) -> CellProgram:
    """The program of ``cell`` for inputs of per-step feature shape ``input_shape``."""
    if isinstance(cell, StackedRNNCells):
        return cell.prepare(input_shape, batch_shape, dtype, training, constants)
    if hasattr(cell, "prepare"):
        return cell.prepare(input_shape, batch_shape, dtype, training)
    return generic_program(cell, input_shape, batch_shape, dtype, constants)


class StackedRNNCells(nn.Module):
    """Wrapper allowing a stack of RNN cells to behave as a single cell.

    The state is the tuple of the cells' states in order; the output is the last cell's.
    Each step: ``y_0 = x_t``; ``s_k, y_k = cell_k(s_k, y_{k-1})``. Only the first cell's input
    projection can be hoisted out of the loop (the others depend on the cell below).
    """

    cells: Sequence[nn.Module]

    def __post_init__(self):
        if not isinstance(self.cells, (list, tuple)) or not self.cells:
            raise ValueError(f"`cells`: expected a non-empty list of cells, got {self.cells!r}.")
        super().__post_init__()

    @property
    def state_size(self):
        return tuple(c.state_size for c in self.cells)

    @nn.compact
    def prepare(self, input_shape, batch_shape, dtype, training, constants=None) -> CellProgram:
        programs = []
        shape = tuple(input_shape)
        for cell in self.cells:
            prog = cell_program(cell, shape, batch_shape, dtype, training, constants)
            programs.append(prog)
            shape = prog.output_shape

        def step(state, xp_t, constants=None):
            new_states = []
            y = None
            for k, prog in enumerate(programs):
                x_in = xp_t if k == 0 else prog.project(y)
                if constants is not None and prog.takes_constants:
                    s, y = prog.step(state[k], x_in, constants)
                else:
                    s, y = prog.step(state[k], x_in)
                new_states.append(s)
            return tuple(new_states), y

        def initial_state(batch_shape=batch_shape, dtype=dtype):
            return tuple(p.initial_state(batch_shape, dtype) for p in programs)

        return CellProgram(programs[0].project, step, initial_state, programs[-1].output_shape,
                           takes_constants=any(p.takes_constants for p in programs))

    def __call__(self, inputs, states, constants=None, training: bool = False):
        """One step of the stack (Keras cell protocol): ``states`` flat as in Keras."""
        return single_step(self, inputs, states, constants, training)


def single_step(cell, inputs, states, constants=None, training=False):
    """Keras-style one step: ``(output, new_states)`` with ``states`` a flat list of arrays."""
    batch_shape = inputs.shape[:1]
    prog = cell_program(cell, inputs.shape[1:], batch_shape, inputs.dtype, training, constants)
    template = prog.initial_state(batch_shape, _state_dtype(inputs.dtype))
    state = unflatten_states(template, states, "states")
    if constants is not None:
        if not prog.takes_constants:
            raise ValueError(f"`constants`: {type(cell).__name__} does not take constants.")
        new, y = prog.step(state, prog.project(inputs), constants)
    else:
        new, y = prog.step(state, prog.project(inputs))
    return y, jax.tree_util.tree_leaves(new)


def unflatten_states(template, given, argument: str):
    """Turns a Keras-style flat list of state arrays (or one array, or a pytree shaped like
    ``template``) into ``template``'s structure, checking count and shapes."""
    leaves, treedef = jax.tree_util.tree_flatten(template)
    if hasattr(given, "shape"):
        given = [given]
    try:
        given_leaves, given_def = jax.tree_util.tree_flatten(given)
    except Exception:  # pragma: no cover
        raise TypeError(f"`{argument}`: expected a list of arrays, got {type(given).__name__}.") from None
    if len(given_leaves) != len(leaves):
        raise ValueError(
            f"`{argument}`: expected {len(leaves)} state array(s) with shapes "
            f"{[tuple(l.shape) for l in leaves]}, got {len(given_leaves)}."
        )
    out = []
    for i, (g, t) in enumerate(zip(given_leaves, leaves)):
        g = jnp.asarray(g)
        if tuple(g.shape) != tuple(t.shape):
            raise ValueError(f"`{argument}`[{i}]: expected shape {tuple(t.shape)}, got {tuple(g.shape)}.")
        out.append(g)
    return jax.tree_util.tree_unflatten(treedef, out)


def _check_layer_inputs(inputs, input_dim, input_length, rank=3, layout="(batch, timesteps, features)"):
    if not hasattr(inputs, "ndim") or inputs.ndim != rank:
        raise ValueError(
            f"`inputs`: expected a {rank}-D array {layout}, got shape "
            f"{getattr(inputs, 'shape', type(inputs).__name__)}."
        )
    if input_dim is not None and inputs.shape[-1] != input_dim:
        raise ValueError(f"`inputs`: the layer was declared with input_dim={input_dim}, got {inputs.shape[-1]} features.")
    if input_length is not None and inputs.shape[1] != input_length:
        raise ValueError(f"`inputs`: the layer was declared with input_length={input_length}, got {inputs.shape[1]} steps.")


def run_recurrent(
    module: nn.Module,
    cell,
    inputs,
    *,
    mask=None,
    initial_state=None,
    constants=None,
    training: bool = False,
    return_sequences: bool = False,
    return_state: bool = False,
    go_backwards: bool = False,
    stateful: bool = False,
    unroll: bool = False,
    zero_output_for_mask: bool = False,
    activity_regularizer=None,
    input_dim=None,
    input_length=None,
    scan_unroll: int = 1,
    remat: bool = False,
    custom_backward: bool = True,
    input_rank: int = 3,
    input_layout: str = "(batch, timesteps, features)",
):
    """The layer logic shared by ``RNN``, ``SimpleRNN``, ``GRU``, ``LSTM`` and ``ConvLSTM``.

    Builds the cell program, picks the initial state (``initial_state`` > the stateful
    variable > zeros), runs :func:`scan_rnn`, stores the final state when ``stateful`` and
    reports the activity penalty. ``custom_backward=False`` drops the cell program's
    hand-written backward forms (the generic loop, which forward-mode autodiff can differentiate).
    """
    check_custom_backward(custom_backward)
    _check_layer_inputs(inputs, input_dim, input_length, input_rank, input_layout)
    batch_shape = (inputs.shape[0],)
    dtype = inputs.dtype
    program = cell_program(cell, inputs.shape[2:], batch_shape, dtype, training, constants)
    if constants is not None and not program.takes_constants:
        raise ValueError(
            f"`constants`: {type(cell).__name__} does not take constants; only cells whose "
            "`__call__` accepts a `constants` argument do."
        )
    if not custom_backward:
        program = program.without_backward_forms()
    template = program.initial_state(batch_shape, _state_dtype(dtype))

    state_var = None
    if stateful:
        state_var = module.variable(STATE_COLLECTION, "states", lambda: template)
        stored = jax.tree_util.tree_leaves(state_var.value)
        if stored and stored[0].shape[0] != batch_shape[0]:
            raise ValueError(
                f"`inputs`: this stateful layer keeps states for batch size {stored[0].shape[0]}, got a batch "
                f"of {batch_shape[0]}. A stateful layer needs a fixed batch size; build a new one (init) for "
                "another batch size."
            )
    if initial_state is not None:
        init = unflatten_states(template, initial_state, "initial_state")
    elif stateful:
        init = state_var.value
    else:
        init = template

    # (batch, T, *features): several feature axes for ConvLSTM
    output, final = run_program(
        program, inputs, init, mask=mask, constants=constants, go_backwards=go_backwards,
        return_sequences=return_sequences, zero_output_for_mask=zero_output_for_mask, unroll=unroll,
        scan_unroll=scan_unroll, remat=remat, feature_axes=inputs.ndim - 2,
    )

    if stateful and not module.is_initializing():
        if not module.is_mutable_collection(STATE_COLLECTION):
            raise ValueError(
                f"stateful=True: call `apply(..., mutable=['{STATE_COLLECTION}'])` so the layer can store its "
                "final states for the next batch."
            )
        state_var.value = final

    flat_states = jax.tree_util.tree_leaves(final)
    results = (output, *flat_states) if return_state else output
    reg = regularizers.get(activity_regularizer, "activity_regularizer")
    if reg is not None:
        regularizers.report(module, "activity_regularizer", regularizers.activity_penalty(reg, results))
    return results


def _state_dtype(input_dtype):
    """States are kept in at least float32 (bfloat16 inputs get float32 states)."""
    return jnp.promote_types(input_dtype, jnp.float32)


class RecurrentLayer(nn.Module):
    """What every rnnjax recurrent layer shares outside the driver (no fields of its own): Keras's
    mask rule, which the containers (:class:`rnnjax.Sequential`, :class:`rnnjax.Bidirectional`) read.
    """

    def compute_mask(self, inputs, mask=None):
        """The mask of the layer's output (Keras's ``RNN.compute_mask``): the input ``mask``
        ``(batch, timesteps)`` with ``return_sequences``, else ``None`` (the time axis is gone)."""
        del inputs
        return mask if self.return_sequences else None


class RNN(RecurrentLayer):
    """Base class for recurrent layers: runs ``cell`` (one cell or a list, stacked) over time.

    ``RNN(cell, return_sequences=False, return_state=False, go_backwards=False, stateful=False,
    unroll=False)`` as in Keras 2, plus ``input_dim``/``input_length`` (checked against the
    input), ``zero_output_for_mask``, ``activity_regularizer``, and the performance options
    ``scan_unroll`` (``lax.scan``'s partial unroll) and ``remat`` (rematerialise the time loop
    in the backward pass; see :func:`rnnjax.functional.scan_rnn`), and ``custom_backward``:
    rnnjax's own cells run with a hand-written reverse-mode backward pass (``jax.custom_vjp``),
    which ``jax.jvp``/``jax.jacfwd``/``jax.hessian`` cannot differentiate; ``custom_backward=False``
    runs the same function through the generic loop, which every JAX transformation can (the
    gradients are equal to float rounding; training is slower).

    Call: ``layer(inputs, mask=None, initial_state=None, constants=None, training=False)`` with
    inputs ``(batch, timesteps, features)`` and a boolean ``mask`` ``(batch, timesteps)``.
    Returns the output ``(batch, units)`` (``(batch, timesteps, units)`` with
    ``return_sequences``), followed by the final states (flat, Keras order) with
    ``return_state``. Stateful layers keep their states in the ``'rnn_state'`` collection:
    ``apply(..., mutable=['rnn_state'])``; see :func:`rnnjax.reset_states`.
    """

    cell: Any
    return_sequences: bool = False
    return_state: bool = False
    go_backwards: bool = False
    stateful: bool = False
    unroll: bool = False
    input_dim: Optional[int] = None
    input_length: Optional[int] = None
    zero_output_for_mask: bool = False
    activity_regularizer: Any = None
    scan_unroll: int = 1
    remat: bool = False
    custom_backward: bool = True

    def _cell(self):
        if isinstance(self.cell, (list, tuple)):
            return StackedRNNCells(tuple(self.cell), name="cells")
        return self.cell

    @nn.compact
    def __call__(self, inputs, mask=None, initial_state=None, constants=None, training: bool = False):
        return run_recurrent(
            self, self._cell(), inputs, mask=mask, initial_state=initial_state, constants=constants,
            training=training, return_sequences=self.return_sequences, return_state=self.return_state,
            go_backwards=self.go_backwards, stateful=self.stateful, unroll=self.unroll,
            zero_output_for_mask=self.zero_output_for_mask, activity_regularizer=self.activity_regularizer,
            input_dim=self.input_dim, input_length=self.input_length, scan_unroll=self.scan_unroll,
            remat=self.remat, custom_backward=self.custom_backward, **_sequence_layout(self.cell),
        )

    def reset_states(self, states=None):
        """Sets the stateful states to zeros, or to ``states`` (a list of arrays, Keras order).

        Use as ``_, updates = layer.apply(variables, method='reset_states',
        mutable=['rnn_state'])``, or :func:`rnnjax.reset_states` for a whole model.
        """
        return reset_layer_states(self, states)


def _sequence_layout(cell) -> dict:
    """``input_rank``/``input_layout`` for cells declaring ``sequence_ndim`` (ConvLSTM cells)."""
    first = cell[0] if isinstance(cell, (list, tuple)) else cell
    ndim = getattr(first, "sequence_ndim", None)
    return {} if ndim is None else {"input_rank": ndim, "input_layout": first.sequence_layout}


def reset_layer_states(module: nn.Module, states=None):
    if not module.stateful:
        raise ValueError("reset_states: the layer is not stateful (stateful=False).")
    if not module.has_variable(STATE_COLLECTION, "states"):
        raise ValueError("reset_states: the layer has no states yet; initialise it first (`init`).")
    current = module.get_variable(STATE_COLLECTION, "states")
    if states is None:
        new = jax.tree_util.tree_map(jnp.zeros_like, current)
    else:
        new = unflatten_states(current, states, "states")
        new = jax.tree_util.tree_map(like_state, new, current)
    module.put_variable(STATE_COLLECTION, "states", new)
    return None


def like_state(new, current):
    """``new`` with ``current``'s dtype and, outside ``jit``, its sharding (a state sharded like the
    batch stays so); under ``jit`` the result is placed by ``jit`` (its ``out_shardings``)."""
    new = jnp.asarray(new, current.dtype)
    traced = isinstance(current, jax.core.Tracer) or isinstance(new, jax.core.Tracer)
    return new if traced else jax.device_put(new, current.sharding)
