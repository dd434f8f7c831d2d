"""rnnjax's NNX Variable types and the model-wide utilities that read them.

* :class:`RNNState`: the states of a stateful layer (``layer.states``), filterable like
  ``nnx.BatchStat`` (``nnx.state(model, RNNState)``); the linen collection ``'rnn_state'``.
* :class:`ActivityPenalty`: the activity penalty of a layer's last call.
* Weight penalties and constraints live on the parameters as ``nnx.Param`` metadata
  (``regularizer=``, ``constraint=``), so any model's are found by walking it:

      loss = task_loss(model(x)) + rnnjax.nnx.regularization_loss(model)   # one call
      optimizer.update(model, grads); rnnjax.nnx.apply_constraints(model)  # one call
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


class RNNState(nnx.Variable):
    """The states of a stateful rnnjax layer (a state NamedTuple, Keras order), updated in place by
    each call. An optimizer built with ``wrt=nnx.Param`` leaves it alone."""


class ActivityPenalty(nnx.Variable):
    """The activity penalty (``activity_regularizer``) of the layer's last call, a float32 scalar."""


nnx.register_variable_name("rnn_state", RNNState, overwrite=True)


def _params(model):
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Param):
            yield path, node


def regularization_loss(model: Any) -> jax.Array:
    """The sum of every penalty of ``model``: ``regularizer(w)`` of each ``nnx.Param`` with a
    ``regularizer`` metadata entry (rnnjax's ``kernel_regularizer``, ...), plus the activity
    penalties of the last call (:class:`ActivityPenalty`). A float32 scalar; call it after the
    forward pass, inside the loss function, to differentiate it."""
    total = jnp.zeros((), jnp.float32)
    for _, param in _params(model):
        reg = param.get_metadata("regularizer", None)
        if reg is not None:
            total = total + jnp.asarray(reg(param[...]), jnp.float32)
    for _, node in nnx.iter_graph(model):
        if isinstance(node, ActivityPenalty):
            total = total + node[...]
    return total


def apply_constraints(model: Any) -> None:
    """Projects, in place, every ``nnx.Param`` of ``model`` with a ``constraint`` metadata entry
    (rnnjax's ``kernel_constraint``, ...): Keras applies constraints right after each optimizer
    update, so call it after ``optimizer.update(model, grads)``."""
    for _, param in _params(model):
        fn = param.get_metadata("constraint", None)
        if fn is not None:
            param[...] = fn(param[...])


def stateful_layers(model: Any) -> list:
    """``(path, layer)`` of every stateful rnnjax layer in ``model`` (the model itself included); a
    stateful ``Bidirectional`` counts as one (its two directions are not listed)."""
    found = [
        (tuple(path), node)
        for path, node in nnx.iter_graph(model)
        if getattr(node, "stateful", False) is True and hasattr(node, "reset_states")
    ]
    return [(p, n) for p, n in found if not any(q != p and p[: len(q)] == q for q, _ in found)]


def reset_states(model: Any, states: Any = None) -> None:
    """Sets, in place, the states of every stateful rnnjax layer in ``model`` to zeros (Keras's
    ``model.reset_states()``), or to ``states``: Keras's flat list (``[h]``/``[h, c]``) when the
    model has exactly one stateful layer."""
    layers = stateful_layers(model)
    if states is None:
        for _, layer in layers:
            layer.reset_states()
        return
    if len(layers) != 1:
        raise ValueError(
            f"reset_states: `states` as a list needs a model with exactly one stateful layer; this one has "
            f"{len(layers)} ({['/'.join(map(str, p)) for p, _ in layers]}). Call layer.reset_states(states) "
            "on each."
        )
    layers[0][1].reset_states(states)
