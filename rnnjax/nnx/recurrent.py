"""The NNX layers ``RNN``, ``SimpleRNN``, ``GRU`` and ``LSTM``: Keras 2's signatures and defaults
(those of the linen twins in :mod:`rnnjax.layers`), parameters built at construction::

    layer = rnnjax.nnx.LSTM(64, return_sequences=True, input_dim=8, rngs=nnx.Rngs(0))
    y = layer(x, mask=None, initial_state=None, training=None)        # x (batch, T, 8)

``stateful=True`` keeps the final states in ``layer.states`` (an :class:`RNNState`, created at
construction: pass ``batch_size``); ``layer.reset_states()`` / ``layer.reset_states([h, c])``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax import layers as linen_layers, regularizers
from rnnjax.functional.core import check_custom_backward, check_units
from rnnjax.layers.base import like_state
from rnnjax.nnx import _args, _path
from rnnjax.nnx.cells import GRUCell, LSTMCell, SimpleRNNCell, StackedRNNCells, cell_program, resolve_deterministic
from rnnjax.nnx.variables import ActivityPenalty, RNNState

# The layer options every recurrent layer stores (the rest of its arguments belong to its cell).
_DEFAULTS = {"scan_unroll": 1, "input_length": None, "custom_backward": True}
OPTIONS = ("return_sequences", "return_state", "go_backwards", "stateful", "unroll", "input_length",
           "zero_output_for_mask", "scan_unroll", "remat", "custom_backward")


class Recurrent(nnx.Module):
    """What every NNX recurrent layer shares: options, the stateful states, the activity penalty,
    the call through the layer path and ``reset_states`` (no arguments of its own)."""

    def _setup(self, config: dict, batch_size, feature_shape):
        for name in OPTIONS:
            setattr(self, name, config.get(name, _DEFAULTS.get(name, False)))
        check_custom_backward(self.custom_backward)
        if self.input_length is not None:
            check_units(self.input_length, "input_length")
        self.activity_regularizer = regularizers.get(config.get("activity_regularizer"), "activity_regularizer")
        self.activity_penalty = ActivityPenalty(jnp.zeros((), jnp.float32)) if self.activity_regularizer \
            else nnx.data(None)
        self.batch_size = None if batch_size is None and not self.stateful else _batch_size(batch_size)
        self.states = nnx.data(None)
        if self.stateful:
            self.states = RNNState(self._state_template(feature_shape))

    def _state_template(self, feature_shape):
        """Zero states for ``batch_size`` rows of per-step inputs ``feature_shape``."""
        program = cell_program(self.cell, feature_shape, (self.batch_size,), jnp.float32)
        return program.initial_state((self.batch_size,), jnp.float32)

    def _store(self, final, penalty):
        """Keeps a stateful layer's final states and the call's activity penalty."""
        if self.stateful:
            self.states.set_value(jax.tree_util.tree_map(like_state, final, self.states.get_value()))
        if penalty is not None:
            self.activity_penalty[...] = jnp.asarray(penalty, jnp.float32)

    def _program_maker(self, deterministic, rngs):
        def make(feature_shape, batch_shape, dtype):
            return cell_program(self.cell, feature_shape, batch_shape, dtype, deterministic, rngs)
        return make

    def _run(self, inputs, *, mask, initial_state, constants, training, deterministic, rngs, **layout):
        results, final, penalty = _path.run(
            self._program_maker(resolve_deterministic(training, deterministic), rngs), inputs,
            stored=self.states.get_value() if self.stateful else None, mask=mask, initial_state=initial_state,
            constants=constants, cell_name=type(self.cell).__name__, activity_regularizer=self.activity_regularizer,
            input_dim=getattr(self, "input_dim", None), **{n: getattr(self, n) for n in OPTIONS if n != "stateful"},
            **layout)
        self._store(final, penalty)
        return results

    def __call__(self, inputs, mask=None, initial_state=None, constants=None, training=None, *,
                 deterministic=None, rngs=None):
        """``inputs (batch, timesteps, features)``, boolean ``mask (batch, timesteps)`` -> the output
        (``(batch, units)``, ``(batch, timesteps, units)`` with ``return_sequences``), then the final
        states (flat, Keras order) with ``return_state``. ``training``/``deterministic`` override the
        mode set by ``train()``/``eval()``; ``rngs`` overrides the cells' dropout streams."""
        first = self.cell.cells[0] if isinstance(self.cell, StackedRNNCells) else self.cell
        ndim = getattr(first, "sequence_ndim", None)  # ConvLSTM cells: (batch, T, *spatial, channels)
        layout = {} if ndim is None else {"input_rank": ndim, "input_layout": "(batch, timesteps, *spatial, channels)"}
        return self._run(inputs, mask=mask, initial_state=initial_state, constants=constants, training=training,
                         deterministic=deterministic, rngs=rngs, **layout)

    def reset_states(self, states=None):
        """Sets the stateful states to zeros, or to ``states`` (a flat list, Keras order), in place."""
        if not self.stateful:
            raise ValueError(f"reset_states: this {type(self).__name__} is not stateful (stateful=False).")
        current = self.states.get_value()
        if states is None:
            new = jax.tree_util.tree_map(jnp.zeros_like, current)
        else:
            new = jax.tree_util.tree_map(like_state, _path.unflatten(current, states, "states"), current)
        self.states.set_value(new)

    def compute_mask(self, inputs, mask=None):
        """Keras's rule: the input mask with ``return_sequences``, else None."""
        del inputs
        return mask if self.return_sequences else None


def _batch_size(batch_size) -> int:
    if batch_size is None:
        raise ValueError("`batch_size`: a stateful layer keeps states for a fixed batch, created at construction "
                         "(Keras 2's batch_input_shape); pass batch_size=<rows per batch>.")
    return check_units(batch_size, "batch_size")


class RNN(Recurrent):
    """Base class for recurrent layers: ``RNN(cell, return_sequences=False, return_state=False,
    go_backwards=False, stateful=False, unroll=False, *, input_dim=None, input_length=None,
    zero_output_for_mask=False, activity_regularizer=None, scan_unroll=1, remat=False,
    custom_backward=True, batch_size=None)`` as :class:`rnnjax.RNN`. ``cell``: an rnnjax NNX cell,
    a list of cells (stacked), a :class:`StackedRNNCells`, or any NNX module with the Keras cell
    protocol (``state_size``, ``__call__(inputs, states[, constants])``). Each cell was built with
    its own ``input_dim``; the layer's ``input_dim``, if given, is checked against the inputs (and
    gives a custom cell's input size for a stateful layer's states)."""

    def __init__(self, *args, batch_size=None, rngs=None, **kwargs):
        del rngs  # the cells hold the parameters and streams; accepted for a uniform signature
        config = _args.bind("RNN", linen_layers.RNN, args, kwargs, "unroll", "cell")
        cell = config["cell"]
        self.from_list = isinstance(cell, (list, tuple))
        if self.from_list:
            cell = StackedRNNCells(cell)
        elif not isinstance(cell, nnx.Module):
            raise TypeError(f"`cell`: expected an NNX cell, a list of them or StackedRNNCells, got "
                            f"{type(cell).__name__} (linen cells go in rnnjax.RNN).")
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
        raise ValueError(f"`input_dim`: a stateful RNN of a {type(first).__name__} builds its states at construction; "
                         "pass input_dim=<features per step>.")
    return (input_dim,)


class _KerasRecurrent(Recurrent):
    """``RNN(<X>Cell(...))`` with the arguments of the linen twin ``linen_class``."""

    linen_class = None
    cell_class = None
    last_positional = "unroll"

    def __init__(self, *args, input_dim=None, batch_size=None, deterministic: bool = False,
                 rng_collection: str = "dropout", rngs=None, **kwargs):
        owner = type(self).__name__
        config = _args.bind(owner, self.linen_class, args, kwargs, self.last_positional, "units")
        if config.get("input_dim") is not None:
            raise TypeError(f"{owner}: `input_dim` is keyword-only and required, e.g. {owner}(64, input_dim=8, "
                            "rngs=nnx.Rngs(0)).")
        self.linen_class(**config)  # validates every argument, with the linen layer's messages
        cell_fields = {f.name for f in _args.keras_fields(self.cell_class.linen_class)}
        self.cell = self.cell_class(**{k: v for k, v in config.items() if k in cell_fields}, input_dim=input_dim,
                                    deterministic=deterministic, rng_collection=rng_collection, rngs=rngs)
        self._setup(config, batch_size, (input_dim,))


class SimpleRNN(_KerasRecurrent):
    """Fully-connected RNN where the output is fed back to the input (Keras 2; see
    :class:`rnnjax.SimpleRNN`): ``SimpleRNN(units, activation='tanh', ..., *, input_dim, rngs)``."""

    linen_class = linen_layers.SimpleRNN
    cell_class = SimpleRNNCell


class GRU(_KerasRecurrent):
    """Gated Recurrent Unit (Keras 2 defaults; see :class:`rnnjax.GRU`):
    ``GRU(units, ..., unroll=False, reset_after=False, *, input_dim, rngs)``."""

    linen_class = linen_layers.GRU
    cell_class = GRUCell
    last_positional = "reset_after"


class LSTM(_KerasRecurrent):
    """Long Short-Term Memory layer (Keras 2 defaults; see :class:`rnnjax.LSTM`):
    ``LSTM(units, ..., *, input_dim, rngs)``; ``return_state`` returns ``(output, h, c)``."""

    linen_class = linen_layers.LSTM
    cell_class = LSTMCell
