"""The Flax linen front end of the layer-side path: cell programs of linen cells, ``RNN``,
``StackedRNNCells``, and the linen side of a layer call (where stateful states and penalties live).

A *cell program* (:class:`~rnnjax.functional.protocol.CoreProgram`) is what a cell module hands the
driver for one layer call: pure functions closed over the cell's parameters and this call's
dropout masks. rnnjax's own cells build theirs from a functional core (:mod:`rnnjax.functional`);
any other Flax module with ``state_size`` and ``__call__(inputs, states[, constants])`` returning
``(output, new_states)`` (the Keras cell protocol, e.g. Keras 2's ``MinimalRNNCell`` example) is
wrapped generically. Everything else a layer call does is in :mod:`rnnjax.layers.path`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnnjax import regularizers
from rnnjax.functional.protocol import CoreProgram
from rnnjax.layers.contract import keras_cell_program, num_feature_axes, one_step
from rnnjax.layers.path import (
    CallOptions,
    LayerCall,
    check_sequence,
    reset_value,
    run_layer,
    stack_programs,
    zero_states,
)

STATE_COLLECTION = "rnn_state"
"""The Flax variable collection that holds stateful layers' states (``variables['rnn_state']``)."""


def generic_program(
    cell: nn.Module, feature_shape: Sequence[int], batch_shape: Sequence[int], dtype: Any, constants: Any = None
) -> CoreProgram:
    """The program of a Keras-protocol linen cell (``state_size``, ``__call__(inputs, states[,
    constants])``): the cell's variables are created by one call at init, and every step applies
    the unbound cell to them (:func:`rnnjax.layers.contract.keras_cell_program`)."""
    kwargs = {} if constants is None else {"constants": constants}
    if hasattr(cell, "state_size") and cell.is_initializing():  # creates the cell's variables
        x0 = jnp.zeros(tuple(batch_shape) + tuple(feature_shape), dtype)
        cell(x0, list(zero_states(cell.state_size, batch_shape, dtype)), **kwargs)
    variables, unbound = cell.variables, cell.clone(parent=None)

    def call(x_t, states, constants):
        return unbound.apply(variables, x_t, states, **({} if constants is None else {"constants": constants}))

    return keras_cell_program(cell, call, feature_shape, batch_shape, dtype, constants)


def cell_program(
    cell: Any,
    feature_shape: Sequence[int],
    batch_shape: Sequence[int],
    dtype: Any,
    *,
    training: bool = False,
    constants: Any = None,
) -> CoreProgram:
    """The program of ``cell`` (an rnnjax cell or stack: its ``program``; any other Keras-protocol
    cell: :func:`generic_program`) for inputs of per-step feature shape ``feature_shape``."""
    if hasattr(cell, "program"):
        return cell.program(feature_shape, batch_shape, dtype, training=training, constants=constants)
    return generic_program(cell, feature_shape, batch_shape, dtype, constants)


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

    @property
    def num_feature_axes(self) -> int:
        return num_feature_axes(self.cells)

    @nn.compact
    def program(
        self,
        feature_shape: Sequence[int],
        batch_shape: Sequence[int],
        dtype: Any,
        *,
        training: bool = False,
        constants: Any = None,
    ) -> CoreProgram:
        """The cells' programs in a stack (:func:`rnnjax.layers.path.stack_programs`), each built for
        the output shape of the one below."""
        programs: list[CoreProgram] = []
        shape: Sequence[int] = tuple(feature_shape)
        for cell in self.cells:
            programs.append(cell_program(cell, shape, batch_shape, dtype, training=training, constants=constants))
            shape = cast(tuple, programs[-1].output_shape)  # a cell's program always states its output shape
        return stack_programs(programs, tuple(batch_shape), dtype)

    def __call__(self, inputs: jax.Array, states: Any, *, constants: Any = None, training: bool = False):
        """One step of the stack (Keras cell protocol): ``states`` flat as in Keras."""
        return one_step(
            self,
            inputs,
            states,
            lambda f, b, d: self.program(f, b, d, training=training, constants=constants),
            constants,
        )


def read_state(module: nn.Module):
    """The stateful layer's stored state, created (at init) from the zero template: the path's
    ``read_state`` for a linen layer."""
    return lambda template: module.variable(STATE_COLLECTION, "states", lambda: template).value


def store_and_report(module: nn.Module, call: LayerCall, options: CallOptions):
    """The linen side of the end of a layer call: stores the final state of a stateful layer in
    the ``'rnn_state'`` collection (not at init) and reports the activity penalty into
    ``'losses'``; returns the Keras results."""
    if options.stateful and not module.is_initializing():
        if not module.is_mutable_collection(STATE_COLLECTION):
            raise ValueError(
                f"stateful=True: call `apply(..., mutable=['{STATE_COLLECTION}'])` so the layer can store its "
                "final states for the next batch."
            )
        module.put_variable(STATE_COLLECTION, "states", call.state)
    if call.activity_penalty is not None:
        regularizers.report(module, "activity_regularizer", call.activity_penalty)
    return call.results


def run_recurrent(
    module: nn.Module,
    cell: Any,
    inputs: jax.Array,
    *,
    mask: jax.Array | None = None,
    reset: jax.Array | None = None,
    initial_state: Any = None,
    constants: Any = None,
    training: bool = False,
    options: CallOptions | None = None,
    layout: str | None = None,
):
    """A linen recurrent layer's call: ``cell`` run over ``inputs`` with the layer's Keras options
    (``options``, by default read from ``module``'s fields). ``custom_backward=False`` drops the
    cell program's hand-written backward forms (the generic loop, which forward-mode autodiff can
    differentiate)."""
    options = CallOptions.of(module) if options is None else options
    seq = check_sequence(
        inputs,
        feature_ndim=num_feature_axes(cell),
        input_dim=options.input_dim,
        input_length=options.input_length,
        layout=cast(str, layout or getattr(cell, "sequence_layout", "(*batch, timesteps, features)")),
    )
    program = cell_program(
        cell, seq.feature_shape, seq.batch_shape, inputs.dtype, training=training, constants=constants
    )
    call = run_layer(
        program,
        inputs,
        seq,
        options,
        cell=cell,
        mask=mask,
        reset=reset,
        initial_state=initial_state,
        read_state=read_state(module),
        constants=constants,
    )
    return store_and_report(module, call, options)


class RecurrentLayer(nn.Module):
    """What every rnnjax recurrent layer shares outside the driver (no fields of its own): Keras's
    mask rule, which the containers (:class:`rnnjax.Sequential`, :class:`rnnjax.Bidirectional`) read,
    and ``num_feature_axes``, the axes after time in its inputs and returned sequences (1; ConvLSTM:
    rank + 1), which locate the time axis ``-(num_feature_axes + 1)`` behind any batch axes.
    """

    @property
    def num_feature_axes(self) -> int:
        """1: one feature axis after time (ConvLSTM's layers: ``rank + 1``)."""
        return 1

    def compute_mask(self, inputs: jax.Array, mask: jax.Array | None = None):
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

    Call: ``layer(inputs, *, mask=None, initial_state=None, constants=None, training=False,
    reset=None)`` with inputs ``(*batch, timesteps, features)`` (any number of batch axes, none
    included, so ``jax.vmap`` over unbatched sequences equals the batched call), a boolean
    ``mask`` ``(*batch, timesteps)`` and a boolean ``reset`` ``(*batch, timesteps)``: True where a
    new sequence starts (episodes, packed sequences; the state restarts from zeros there, see
    :func:`rnnjax.functional.scan_rnn`; a stateful layer's stored state continues into a row's
    first sequence and stores the state after the last step). Returns the output ``(*batch, units)``
    (``(*batch, timesteps, units)`` with ``return_sequences``), followed by the final states (flat,
    Keras order) with ``return_state``. The layer-side semantics are :mod:`rnnjax.layers.path`'s.
    Stateful layers keep their states in the ``'rnn_state'`` collection:
    ``apply(..., mutable=['rnn_state'])``; see :func:`rnnjax.reset_states`.
    """

    cell: Any
    return_sequences: bool = False
    return_state: bool = False
    go_backwards: bool = False
    stateful: bool = False
    unroll: bool = False
    input_dim: int | None = None
    input_length: int | None = None
    zero_output_for_mask: bool = False
    activity_regularizer: Any = None
    scan_unroll: int = 1
    remat: bool = False
    custom_backward: bool = True

    def _cell(self):
        if isinstance(self.cell, (list, tuple)):
            return StackedRNNCells(tuple(self.cell), name="cells")
        return self.cell

    @property
    def num_feature_axes(self) -> int:
        return num_feature_axes(self.cell)

    @nn.compact
    def __call__(
        self,
        inputs: jax.Array,
        *,
        mask: jax.Array | None = None,
        initial_state: Any = None,
        constants: Any = None,
        training: bool = False,
        reset: jax.Array | None = None,
    ):
        return run_recurrent(
            self,
            self._cell(),
            inputs,
            mask=mask,
            reset=reset,
            initial_state=initial_state,
            constants=constants,
            training=training,
        )

    def reset_states(self, states: Any = None):
        """Sets the stateful states to zeros, or to ``states`` (a list of arrays, Keras order).

        Use as ``_, updates = layer.apply(variables, method='reset_states',
        mutable=['rnn_state'])``, or :func:`rnnjax.reset_states` for a whole model.
        """
        return reset_layer_states(self, states)


def reset_layer_states(module: nn.Module, states: Any = None):
    """``reset_states`` of a linen layer: stores :func:`~rnnjax.layers.path.reset_value`."""
    if not module.stateful:
        raise ValueError("reset_states: the layer is not stateful (stateful=False).")
    if not module.has_variable(STATE_COLLECTION, "states"):
        raise ValueError("reset_states: the layer has no states yet; initialise it first (`init`).")
    current: Any = module.get_variable(STATE_COLLECTION, "states")
    module.put_variable(STATE_COLLECTION, "states", reset_value(current, states))
    return None
