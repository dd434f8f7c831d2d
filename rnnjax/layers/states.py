"""Stateful models: :func:`reset_states` on a whole model's variables.

A stateful rnnjax layer keeps its final states under ``variables['rnn_state'][<layer path>]
['states']``; this module resets or sets them without knowing the model's code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from rnnjax.layers.base import STATE_COLLECTION
from rnnjax.layers.path import like_state, reset_value


def _layer_paths(collection) -> list[tuple]:
    """The path of every stateful layer in an ``'rnn_state'`` collection (the keys above
    ``'states'``), in the collection's order."""
    flat = traverse_util.flatten_dict(_as_dict(collection), is_leaf=lambda _, v: not isinstance(v, Mapping))
    return [path[:-1] for path in flat if path[-1] == "states"]


def _as_dict(tree):
    return {k: _as_dict(v) if isinstance(v, Mapping) else v for k, v in tree.items()}


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _bidirectional_pair(paths) -> bool:
    """True for the two sublayers of one ``Bidirectional``: siblings ``forward_X``/``backward_X``."""
    if len(paths) != 2 or paths[0][:-1] != paths[1][:-1]:
        return False
    names = sorted(p[-1] for p in paths)
    return names[0].startswith("backward_") and names[1] == "forward_" + names[0][len("backward_") :]


def _from_flat_list(current, states):
    """Keras's flat list ``[h, c]`` (a ``Bidirectional``: forward states, then backward states) for a
    model with one stateful layer, as a new collection."""
    paths = _layer_paths(current)
    if len(paths) == 2 and _bidirectional_pair(paths):
        paths = sorted(paths, key=lambda p: not p[-1].startswith("forward_"))  # forward half first
    elif len(paths) != 1:
        raise ValueError(
            f"reset_states: `states` as a list needs a model with exactly one stateful layer; this one has "
            f"{len(paths)} ({['/'.join(p) for p in paths]}). Pass a pytree shaped like variables"
            f"['{STATE_COLLECTION}'] instead."
        )
    given = [states] if hasattr(states, "shape") else list(jax.tree_util.tree_leaves(states))
    templates = [_get(current, p)["states"] for p in paths]
    counts = [len(jax.tree_util.tree_leaves(t)) for t in templates]
    if len(given) != sum(counts):
        shapes = [tuple(a.shape) for t in templates for a in jax.tree_util.tree_leaves(t)]
        raise ValueError(f"`states`: expected {sum(counts)} state array(s) with shapes {shapes}, got {len(given)}.")
    new = _as_dict(current)  # a copy of the dicts; the arrays are replaced below
    start = 0
    for path, template, count in zip(paths, templates, counts):
        _get(new, path)["states"] = reset_value(template, given[start : start + count])
        start += count
    return new


def reset_states(variables: Any, states: Any = None):
    """Returns ``variables`` with every stateful rnnjax state of a model set to zeros (Keras's
    ``model.reset_states()``), or to ``states``.

    Works on the variables of any Flax model containing stateful rnnjax layers. ``states``
    (optional) is either

    * a pytree shaped like ``variables['rnn_state']`` (every stateful layer at once), or
    * Keras's flat list of arrays, ``[h]`` / ``[h, c]`` in the layer's Keras order, when the
      model has exactly one stateful layer; a stateful :class:`rnnjax.Bidirectional` counts as
      one, taking its forward states then its backward states (Keras's ``layer.states``). ConvLSTM
      states are given as stored, channels_last.

    Each new array keeps the sharding of the one it replaces (under ``jit``: ``out_shardings``).
    """
    if STATE_COLLECTION not in variables:
        raise ValueError(f"reset_states: `variables` has no '{STATE_COLLECTION}' collection (no stateful layer).")
    current = variables[STATE_COLLECTION]
    if states is None:
        new = jax.tree_util.tree_map(jnp.zeros_like, current)
    elif not isinstance(states, Mapping):
        new = _from_flat_list(current, states)
    else:
        cur_leaves, cur_def = jax.tree_util.tree_flatten(current)
        new_leaves, new_def = jax.tree_util.tree_flatten(states)
        if cur_def != new_def or any(  # type: ignore[operator]  # PyTreeDef: jaxlib's _jax has no stub
            a.shape != jnp.shape(b) for a, b in zip(cur_leaves, new_leaves)
        ):
            raise ValueError(
                f"reset_states: `states` must match the structure and shapes of variables['{STATE_COLLECTION}'] "
                f"({jax.tree_util.tree_map(jnp.shape, current)}), or be a flat list for a model with one "
                "stateful layer."
            )
        new = jax.tree_util.tree_unflatten(cur_def, [like_state(b, a) for a, b in zip(cur_leaves, new_leaves)])
    out = dict(variables)
    out[STATE_COLLECTION] = new
    return type(variables)(out) if not isinstance(variables, dict) else out
