"""Variables both ways between an NNX model and its linen twin.

The NNX modules mirror the linen ones attribute for attribute, so a parameter's NNX path is its
linen path (``cell/kernel`` in both), with linen's naming of lists (``cells_0`` for NNX's
``cells/0``; the cells of ``RNN([...])`` directly as ``cell_0``), and a stateful layer's
``states`` is its ``'rnn_state'`` entry. ``nnx.Linear`` and ``nn.Dense`` share ``kernel``/``bias``,
so user models that name their submodules alike convert whole; ``Sequential`` and
``TimeDistributed`` hold their layers under the Keras names linen gives them (``embedding``,
``dense_1``, ``time_distributed/dense``), so a whole linen ``rnnjax.Sequential`` converts::

    variables = rnnjax.nnx.to_linen(nnx_model)        # {'params': ..., 'rnn_state': ...}
    rnnjax.nnx.from_linen(nnx_model, variables)       # in place
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax.nnx.variables import RNNState

COLLECTIONS = ((nnx.Param, "params"), (RNNState, "rnn_state"), (nnx.BatchStat, "batch_stats"))


def linen_path(model: Any, path: Sequence[Any]) -> tuple:
    """The linen path (a tuple of str) of the variable at NNX ``path`` in ``model``."""
    out, node, keys, i = [], model, list(path), 0
    while i < len(keys):
        key = keys[i]
        if key == "cell" and getattr(node, "from_list", False) and keys[i + 1 : i + 2] == ["cells"]:
            k = keys[i + 2]  # RNN([...]): linen adopts the list's cells as cell_0, cell_1, ...
            out.append(f"cell_{k}")
            node, i = node.cell.cells[k], i + 3
            continue
        if isinstance(key, int):
            out[-1] = f"{out[-1]}_{key}"  # linen names the k-th module of a list `<attribute>_k`
            node = node[key]
        else:
            out.append(str(key))
            node = getattr(node, key)
        i += 1
    return tuple(out)


def _variables(model):
    for path, node in nnx.iter_graph(model):
        for vtype, collection in COLLECTIONS:
            if isinstance(node, vtype):
                yield collection, path, node


def _flatten(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def to_linen(model: Any, state: Any = None) -> dict:
    """``{'params': ..., 'rnn_state': ..., 'batch_stats': ...}`` (only collections that exist) of ``model``'s values, as
    the linen twin's ``init`` would lay them out. With ``state`` (an ``nnx.State`` of the model's
    paths, e.g. the gradients from ``nnx.grad``) its values are laid out instead."""
    values = None if state is None else {tuple(p): v for p, v in nnx.to_flat_state(state)}
    out: dict = {}
    for collection, path, var in _variables(model):
        if values is not None and tuple(path) not in values:
            continue
        value = var if values is None else values[tuple(path)]
        tree = out.setdefault(collection, {})
        *head, last = linen_path(model, path)
        for key in head:
            tree = tree.setdefault(key, {})
        tree[last] = value.get_value() if isinstance(value, nnx.Variable) else value
    return out


def from_linen(model: Any, variables: Mapping):
    """Sets ``model``'s parameters (and stateful states) in place from linen ``variables``
    (``{'params': ..., 'rnn_state': ..., 'batch_stats': ...}``, as ``init`` returns); returns ``model``. Every NNX
    variable must find a linen value of the same shape, and every linen value must be used."""
    flat = {(c,) + p: v for _, c in COLLECTIONS if c in variables for p, v in _flatten(variables[c])}
    used, problems, updates = set(), [], []
    for collection, path, var in _variables(model):
        key = (collection,) + linen_path(model, path)
        if key not in flat:
            problems.append(f"{'/'.join(key)}: missing")
            continue
        used.add(key)
        value = flat[key]
        want = jax.tree_util.tree_map(jnp.shape, var.get_value())
        got = jax.tree_util.tree_map(jnp.shape, value)
        want_def, got_def = jax.tree_util.tree_structure(want), jax.tree_util.tree_structure(got)
        if want_def != got_def or want != got:  # type: ignore[operator]  # PyTreeDef: jaxlib's _jax has no stub
            problems.append(f"{'/'.join(key)}: expected {want}, got {got}")
            continue
        updates.append((var, value))
    unused = sorted("/".join(p) for p in flat if p not in used)
    if problems or unused:
        raise ValueError(
            f"from_linen: `variables` do not match the model: {problems or ''}"
            f"{' unused linen variables ' + str(unused) if unused else ''}"
        )
    for var, value in updates:
        var.set_value(
            jax.tree_util.tree_map(lambda v, old: jnp.asarray(v, jnp.asarray(old).dtype), value, var.get_value())
        )
    return model
