"""What every NNX recurrent layer shares (:class:`Recurrent`) and ``RNN``: Keras 2's signatures
and defaults (those of the linen twins in :mod:`rnnjax.layers`), parameters built at
construction::

    layer = rnnjax.nnx.RNN(rnnjax.nnx.LSTMCell(64, input_dim=8, rngs=nnx.Rngs(0)), return_sequences=True)
    y = layer(x, *, mask=None, initial_state=None, constants=None, training=None, reset=None)   # x (batch, T, 8)

Inputs ``(*batch, T, features)``: any number of batch axes, none included (the layer-side path's
rule). ``stateful=True`` keeps the final states in ``layer.states`` (an :class:`RNNState`, created
at construction: pass ``batch_size``, an int or a tuple of batch axes); ``layer.reset_states()`` /
``layer.reset_states([h, c])``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax import layers as linen_layers
from rnnjax import regularizers
from rnnjax.functional.core import check_custom_backward, check_units
from rnnjax.layers import path
from rnnjax.layers.contract import num_feature_axes
from rnnjax.nnx import _args
from rnnjax.nnx.cells import StackedRNNCells, cell_program, resolve_deterministic
from rnnjax.nnx.variables import ActivityPenalty, RNNState

# The path's options a layer stores itself (the activity regularizer resolved; input_dim: RNN only).
OPTIONS = tuple(n for n in path.CallOptions._fields if n not in ("activity_regularizer", "input_dim"))


class Recurrent(nnx.Module):
    """What every NNX recurrent layer shares: options, the stateful states, the activity penalty,
    the call through the layer-side path (:mod:`rnnjax.layers.path`) and ``reset_states`` (no
    arguments of its own). The NNX side of a call is only where things live: parameters and
    dropout streams in the cells, the stored states in ``self.states``, the penalty in
    ``self.activity_penalty``."""

    # Set by _setup (the options of OPTIONS, from the layer's configuration) and by each subclass (cell).
    return_sequences: bool
    return_state: bool
    go_backwards: bool
    stateful: bool
    unroll: bool
    zero_output_for_mask: bool
    input_length: int | None
    scan_unroll: int
    remat: bool
    custom_backward: bool
    cell: Any
    batch_shape: tuple | None
    states: Any  # an RNNState when stateful, else None
    activity_penalty: Any  # an ActivityPenalty with an activity_regularizer, else None

    def _setup(self, config: dict, batch_size, feature_shape):
        for name in OPTIONS:
            setattr(self, name, config.get(name, path.CallOptions._field_defaults[name]))
        check_custom_backward(self.custom_backward)
        if self.input_length is not None:
            check_units(self.input_length, "input_length")
        self.activity_regularizer = regularizers.get(config.get("activity_regularizer"), "activity_regularizer")
        self.activity_penalty = (
            ActivityPenalty(jnp.zeros((), jnp.float32)) if self.activity_regularizer else nnx.data(None)
        )
        self.batch_shape = None if batch_size is None and not self.stateful else _batch_shape(batch_size)
        self.states = nnx.data(None)
        if self.stateful:
            self.states = RNNState(self._state_template(feature_shape))

    def _state_template(self, feature_shape):
        """Zero states for a batch of ``batch_shape`` with per-step inputs ``feature_shape``."""
        batch_shape = cast(tuple, self.batch_shape)  # a stateful layer's (the only caller)
        program = cell_program(self.cell, feature_shape, batch_shape, jnp.float32, deterministic=True)  # no masks
        return cast(Callable, program.initial_state)(batch_shape, jnp.float32)

    def _store(self, final, penalty):
        """Keeps a stateful layer's final states and the call's activity penalty."""
        if self.stateful:
            self.states.set_value(jax.tree_util.tree_map(path.like_state, final, self.states.get_value()))
        if penalty is not None:
            self.activity_penalty[...] = jnp.asarray(penalty, jnp.float32)

    def _run(self, inputs, *, mask, initial_state, constants, training, deterministic, rngs, layout=None, reset=None):
        """One call through the layer-side path; stores the final states and the activity penalty."""
        options = path.CallOptions.of(self)
        seq = path.check_sequence(
            inputs,
            feature_ndim=num_feature_axes(self.cell),
            input_dim=options.input_dim,
            input_length=options.input_length,
            layout=layout or getattr(self.cell, "sequence_layout", "(*batch, timesteps, features)"),
        )
        program = cell_program(
            self.cell,
            seq.feature_shape,
            seq.batch_shape,
            inputs.dtype,
            deterministic=resolve_deterministic(training, deterministic),
            rngs=rngs,
            constants=constants,
        )
        call = path.run_layer(
            program,
            inputs,
            seq,
            options,
            cell=self.cell,
            mask=mask,
            reset=reset,
            initial_state=initial_state,
            read_state=lambda template: self.states.get_value(),
            constants=constants,
        )
        self._store(call.state, call.activity_penalty)
        return call.results

    def __call__(
        self,
        inputs: jax.Array,
        *,
        mask: jax.Array | None = None,
        initial_state: Any = None,
        constants: Any = None,
        training: bool | None = None,
        deterministic: bool | None = None,
        rngs: Any = None,
        reset: jax.Array | None = None,
    ):
        """``inputs (*batch, timesteps, features)``, boolean ``mask (*batch, timesteps)`` -> the output
        (``(*batch, units)``, ``(*batch, timesteps, units)`` with ``return_sequences``), then the final
        states (flat, Keras order) with ``return_state``. ``reset``: boolean ``(*batch, timesteps)``,
        True where a new sequence starts (see :class:`rnnjax.RNN`). ``training``/``deterministic``
        override the mode set by ``train()``/``eval()``; ``rngs`` overrides the cells' dropout streams."""
        return self._run(
            inputs,
            mask=mask,
            initial_state=initial_state,
            constants=constants,
            training=training,
            deterministic=deterministic,
            rngs=rngs,
            reset=reset,
        )

    def reset_states(self, states: Any = None):
        """Sets the stateful states to zeros, or to ``states`` (a flat list, Keras order), in place."""
        if not self.stateful:
            raise ValueError(f"reset_states: this {type(self).__name__} is not stateful (stateful=False).")
        self.states.set_value(path.reset_value(self.states.get_value(), states))

    def compute_mask(self, inputs: jax.Array, mask: jax.Array | None = None):
        """Keras's rule: the input mask with ``return_sequences``, else None."""
        del inputs
        return mask if self.return_sequences else None


def _batch_shape(batch_size) -> tuple:
    """``batch_size``: an int (Keras's), or a tuple of batch axes ``(*batch)``."""
    if batch_size is None:
        raise ValueError(
            "`batch_size`: a stateful layer keeps states for a fixed batch, created at construction "
            "(Keras 2's batch_input_shape); pass batch_size=<rows per batch> (or a tuple of batch axes)."
        )
    if isinstance(batch_size, tuple):
        return tuple(check_units(b, "batch_size") for b in batch_size)
    return (check_units(batch_size, "batch_size"),)


class RNN(Recurrent):
    """Base class for recurrent layers: ``RNN(cell, return_sequences=False, return_state=False,
    go_backwards=False, stateful=False, unroll=False, *, input_dim=None, input_length=None,
    zero_output_for_mask=False, activity_regularizer=None, scan_unroll=1, remat=False,
    custom_backward=True, batch_size=None)`` as :class:`rnnjax.RNN`. ``cell``: an rnnjax NNX cell,
    a list of cells (stacked), a :class:`StackedRNNCells`, or any NNX module with the Keras cell
    protocol (``state_size``, ``__call__(inputs, states[, constants])``). Each cell was built with
    its own ``input_dim``; the layer's ``input_dim``, if given, is checked against the inputs (and
    gives a custom cell's input size for a stateful layer's states)."""

    def __init__(self, *args, batch_size: Any = None, rngs: Any = None, **kwargs):
        del rngs  # the cells hold the parameters and streams; accepted for a uniform signature
        config = _args.bind("RNN", linen_layers.RNN, args, kwargs, "unroll", "cell")
        cell = config["cell"]
        self.from_list = isinstance(cell, (list, tuple))
        if self.from_list:
            cell = StackedRNNCells(cell)
        elif not isinstance(cell, nnx.Module):
            raise TypeError(
                f"`cell`: expected an NNX cell, a list of them or StackedRNNCells, got "
                f"{type(cell).__name__} (linen cells go in rnnjax.RNN)."
            )
        self.cell = cell
        self.input_dim = config["input_dim"]
        self._setup(config, batch_size, _feature_shape(cell, self.input_dim, config["stateful"]))


def _feature_shape(cell, input_dim, stateful):
    """The per-step input shape a stateful layer's states are built for."""
    first = cell.cells[0] if isinstance(cell, StackedRNNCells) else cell
    kernel = getattr(first, "kernel", None)
    if input_dim is None and kernel is not None:
        input_dim = kernel.shape[-2]
    if input_dim is None and stateful:
        raise ValueError(
            f"`input_dim`: a stateful RNN of a {type(first).__name__} builds its states at construction; "
            "pass input_dim=<features per step>."
        )
    return (input_dim,)
