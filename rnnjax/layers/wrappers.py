"""Keras 2's layer wrappers as Flax modules: ``Bidirectional`` and ``TimeDistributed``."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnnjax.layers.base import STATE_COLLECTION, RecurrentLayer
from rnnjax.layers.protocol import accepts, call_layer, check_mask, keras_name

MERGE_MODES = ("concat", "sum", "mul", "ave", None)
_COMMON = ("stateful", "return_sequences", "return_state")


def _fields(module) -> set:
    return {f.name for f in dataclasses.fields(type(module))}


def _check_recurrent(layer, argument: str) -> None:
    if isinstance(layer, RecurrentLayer):
        return
    if isinstance(layer, nn.Module) and {"go_backwards", *_COMMON} <= _fields(layer):
        return  # a user's recurrent layer with Keras's fields
    raise ValueError(
        f"`{argument}`: expected a recurrent layer (rnnjax's SimpleRNN, GRU, LSTM, RNN, ConvLSTM1D/2D/3D, "
        f"CuDNNLSTM/CuDNNGRU, or a Flax module with go_backwards, return_sequences, return_state and stateful "
        f"fields), got {type(layer).__name__}."
    )


def _copy(layer, **updates):
    """An unbound deep copy of ``layer`` (its own parameters), ``updates`` applied."""
    if "zero_output_for_mask" in _fields(layer):  # Keras forces it, in both directions
        updates["zero_output_for_mask"] = layer.return_sequences
    return layer.clone(parent=None, name=None, _deep_clone=True, _reset_names=True, **updates)


def _sublayer_name(layer, prefix: str) -> str:
    base = keras_name(layer)
    return base if base.startswith(prefix) else prefix + base.removeprefix("forward_").removeprefix("backward_")


def _shapes(states) -> list:
    return [tuple(s.shape) for s in jax.tree_util.tree_leaves(states)]


class Bidirectional(nn.Module):
    """Bidirectional wrapper for RNNs (Keras 2): runs ``layer`` forward and a copy of it backward
    over the same inputs and merges the two outputs.

    ``y_f = forward(x)``, ``y_b = backward(x)`` (the copy with ``go_backwards`` flipped, or
    ``backward_layer``); with ``return_sequences`` ``y_b`` is reversed in time back to input
    order. ``merge_mode``: ``'concat'`` (``[y_f, y_b]`` on the last axis, as Keras: for a
    channels_first ConvLSTM that is the last spatial axis), ``'sum'``
    (``y_f + y_b``), ``'mul'`` (``y_f * y_b``), ``'ave'`` (``(y_f + y_b) / 2``) or ``None`` (the
    list ``[y_f, y_b]``). With ``return_state`` the result is ``(output, *forward states,
    *backward states)`` (with ``merge_mode=None``: ``[y_f, y_b, *states]``). Both directions
    output 0 at masked steps when returning sequences (Keras forces ``zero_output_for_mask =
    return_sequences`` on both).

    Call: ``layer(inputs, *, mask=None, initial_state=None, constants=None, training=False,
    reset=None)``; ``reset (*batch, timesteps)``: True where a new sequence starts, passed to both
    directions (the backward one processes each sequence backwards within itself, so a packed row
    gives what each sequence gives alone; see :func:`rnnjax.functional.scan_rnn`);
    ``initial_state``: the forward layer's states, then the backward layer's (Keras's halves);
    ``constants`` go to both (for an ``RNN`` of cells that take them). Parameters (and stateful
    states) live under ``forward_<name>`` and ``backward_<name>``, ``<name>`` the layer's Keras
    name (``forward_lstm``, ``backward_lstm``; a name the user gave the layer is kept), each in its
    layer's own layout.

    Keras 2 vs Keras 3: the backward copy has ``go_backwards`` flipped (Keras 2; Keras 3 sets it
    True), so a ``layer`` with ``go_backwards=True`` is run backward first and then forward.
    ``backward_layer`` must have the opposite ``go_backwards`` and the same ``stateful``,
    ``return_sequences`` and ``return_state`` (``ValueError`` otherwise); where states cross the
    wrapper (``return_state``, ``stateful``) the two must have states of the same shapes.
    """

    layer: nn.Module
    merge_mode: str | None = "concat"
    backward_layer: nn.Module | None = None

    def __post_init__(self):
        if self.merge_mode not in MERGE_MODES:
            raise ValueError(f"`merge_mode`: expected one of {list(MERGE_MODES)}, got {self.merge_mode!r}.")
        _check_recurrent(self.layer, "layer")
        if self.backward_layer is not None:
            _check_recurrent(self.backward_layer, "backward_layer")
            if self.backward_layer.go_backwards == self.layer.go_backwards:
                raise ValueError(
                    f"`backward_layer`: it must run in the other direction: layer.go_backwards="
                    f"{self.layer.go_backwards} and backward_layer.go_backwards={self.backward_layer.go_backwards}."
                )
            for a in _COMMON:
                if getattr(self.layer, a) != getattr(self.backward_layer, a):
                    raise ValueError(
                        f"`backward_layer`: expected the same `{a}` as `layer` ({getattr(self.layer, a)}), got "
                        f"{getattr(self.backward_layer, a)}."
                    )
        # Names from the layers as the user built them (Flax renames a module field once adopted).
        backward = self.layer if self.backward_layer is None else self.backward_layer
        names = (_sublayer_name(self.layer, "forward_"), _sublayer_name(backward, "backward_"))
        object.__setattr__(self, "_names", names)
        super().__post_init__()

    def setup(self):
        forward = _copy(self.layer)
        if self.backward_layer is None:
            backward = _copy(self.layer, go_backwards=not self.layer.go_backwards)
        else:
            backward = _copy(self.backward_layer)
        setattr(self, self._names[0], forward)
        setattr(self, self._names[1], backward)

    def _directions(self):
        return getattr(self, self._names[0]), getattr(self, self._names[1])

    def _split_states(self, states, argument):
        given = [states] if hasattr(states, "shape") else list(jax.tree_util.tree_leaves(states))
        if len(given) % 2:
            raise ValueError(
                f"`{argument}`: expected an even number of state arrays (the forward layer's, then the backward "
                f"layer's), got {len(given)}."
            )
        return given[: len(given) // 2], given[len(given) // 2 :]

    def __call__(self, inputs, *, mask=None, initial_state=None, constants=None, training: bool = False, reset=None):
        forward, backward = self._directions()
        halves = (None, None) if initial_state is None else self._split_states(initial_state, "initial_state")
        outs = []
        for layer, state in zip((forward, backward), halves):
            extra = {} if state is None else {"initial_state": state}
            if constants is not None:
                if not accepts(layer, "constants"):
                    raise ValueError(f"`constants`: {type(layer).__name__} does not take constants.")
                extra["constants"] = constants
            if mask is not None and not accepts(layer, "mask"):
                raise ValueError(f"`mask`: {type(layer).__name__} takes no mask.")
            if reset is not None:
                if not accepts(layer, "reset"):
                    raise ValueError(f"`reset`: {type(layer).__name__} takes no reset.")
                extra["reset"] = reset
            outs.append(call_layer(layer, inputs, mask, training, **extra))
        y, y_rev = outs
        states = ()
        if self.layer.return_state:
            (y, *f_states), (y_rev, *b_states) = y, y_rev
            self._check_same_states(f_states, b_states)
            states = (*f_states, *b_states)
        elif self.layer.stateful and not self.is_initializing():
            self._check_same_states(*(l.get_variable(STATE_COLLECTION, "states") for l in (forward, backward)))
        if self.layer.return_sequences:  # the time axis, behind any batch axes
            y_rev = jnp.flip(y_rev, axis=-(getattr(forward, "num_feature_axes", 1) + 1))
        return self._merge(y, y_rev, states)

    def _check_same_states(self, f_states, b_states):
        if _shapes(f_states) != _shapes(b_states):
            raise ValueError(
                f"`backward_layer`: its states have shapes {_shapes(b_states)}, the forward layer's "
                f"{_shapes(f_states)}; Bidirectional needs the same kind of state in both directions."
            )

    def _merge(self, y, y_rev, states):
        if self.merge_mode is None:
            return [y, y_rev, *states]
        merged = {
            "concat": lambda: jnp.concatenate([y, y_rev], axis=-1),
            "sum": lambda: y + y_rev,
            "mul": lambda: y * y_rev,
            "ave": lambda: (y + y_rev) / 2,
        }[self.merge_mode]()
        return (merged, *states) if states else merged

    def compute_mask(self, inputs, mask=None):
        """Keras's rule: the input mask with ``return_sequences`` (one per output with
        ``merge_mode=None``), else ``None``."""
        del inputs
        out = mask if self.layer.return_sequences else None
        return [out, out] if self.merge_mode is None else out

    def reset_states(self, states=None):
        """Zeroes both directions' stateful states, or sets them to ``states`` (the forward
        layer's, then the backward layer's, Keras order): ``_, updates = layer.apply(variables,
        method='reset_states', mutable=['rnn_state'])``."""
        if not self.layer.stateful:
            raise ValueError("reset_states: the layer is not stateful (stateful=False).")
        halves = (None, None) if states is None else self._split_states(states, "states")
        for layer, part in zip(self._directions(), halves):
            layer.reset_states(part)


class TimeDistributed(nn.Module):
    """This wrapper applies a layer to every temporal slice of an input (Keras 2).

    ``y[:, t] = layer(x[:, t])`` for inputs ``(batch, timesteps, ...)``: the steps are folded
    into the batch, ``(batch, timesteps, ...) -> (batch * timesteps, ...)`` with the batch axis
    major (so a batch-sharded input stays sharded), ``layer`` runs once, and the result is
    unfolded. ``layer`` is any Flax module; its parameters are shared by all steps and live under
    its Keras name (``time_distributed/dense/kernel``). A mask ``(batch, timesteps)`` is passed
    on (folded, to a layer that takes ``mask``); the output mask is the layer's own, unfolded,
    when it computes one, else the input mask (Keras 2). Dropout inside draws independent noise
    per step, as Keras's folded call does.

    Call: ``layer(inputs, *, mask=None, training=False)``.
    """

    layer: Any

    def __post_init__(self):
        if not isinstance(self.layer, nn.Module):
            raise ValueError(f"`layer`: expected a Flax module, got {type(self.layer).__name__}.")
        object.__setattr__(self, "_name", keras_name(self.layer))
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs, *, mask=None, training: bool = False):
        check_steps(inputs)
        mask = check_mask(mask, inputs, "TimeDistributed", nested=True)
        inner = self.layer.clone(parent=self, name=self._name, _deep_clone=True, _reset_names=True)
        return unfold_steps(call_layer(inner, fold_steps(inputs), fold_steps(mask), training), inputs)

    def compute_mask(self, inputs, mask=None):
        return time_distributed_mask(self.layer, inputs, mask)


def check_steps(inputs) -> None:
    if not hasattr(inputs, "ndim") or inputs.ndim < 3:
        raise ValueError(
            "`inputs`: TimeDistributed expected an array (batch, timesteps, ...) with at least 3 dimensions, "
            f"got shape {getattr(inputs, 'shape', type(inputs).__name__)}."
        )


def fold_steps(a):
    """``(batch, timesteps, ...) -> (batch * timesteps, ...)``, batch major (None stays None)."""
    return None if a is None else a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:])


def unfold_steps(y, inputs):
    """The inverse of :func:`fold_steps` on every array of ``y``, for ``inputs (batch, timesteps, ...)``."""
    batch, steps = inputs.shape[:2]
    return jax.tree_util.tree_map(lambda a: a.reshape((batch, steps) + a.shape[1:]), y)


def time_distributed_mask(layer, inputs, mask):
    """``TimeDistributed``'s output mask (Keras 2): ``layer``'s own on the folded steps, unfolded, when
    it computes one, else ``mask``; shared by the linen and NNX wrappers."""
    rule = getattr(layer, "compute_mask", None)
    inner = None if rule is None else rule(fold_steps(inputs), fold_steps(mask))
    if inner is None:
        return mask
    return inner.reshape(inputs.shape[:2] + inner.shape[1:])
