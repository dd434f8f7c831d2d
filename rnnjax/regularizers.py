"""Weight and activity penalties by their Keras names.

A regularizer maps an array to a scalar penalty::

    L1(l1)(w)     = l1 * sum(|w|)
    L2(l2)(w)     = l2 * sum(w ** 2)
    L1L2(l1, l2)  = L1(l1) + L2(l2)

rnnjax layers report the penalties of their weights (``kernel_regularizer``,
``recurrent_regularizer``, ``bias_regularizer``) and of their outputs
(``activity_regularizer``, divided by the batch size as tf.keras and Keras 3 do) into the
``'losses'`` variable collection. A training loop collects them with one call::

    y, aux = model.apply(variables, x, mutable=['losses'])
    loss = task_loss(y) + rnnjax.regularization_loss(aux)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

LOSSES = "losses"


@dataclasses.dataclass(frozen=True)
class L1L2:
    l1: float = 0.0
    l2: float = 0.0

    def __call__(self, x):
        x = jnp.asarray(x)
        penalty = jnp.zeros((), jnp.float32)
        if self.l1:
            penalty = penalty + self.l1 * jnp.sum(jnp.abs(x)).astype(jnp.float32)
        if self.l2:
            penalty = penalty + self.l2 * jnp.sum(jnp.square(x)).astype(jnp.float32)
        return penalty


def L1(l1: float = 0.01) -> L1L2:
    return L1L2(l1=l1)


def L2(l2: float = 0.01) -> L1L2:
    return L1L2(l2=l2)


l1 = L1
l2 = L2


def l1_l2(l1: float = 0.01, l2: float = 0.01) -> L1L2:
    return L1L2(l1=l1, l2=l2)


_BY_NAME: dict[str, Callable[[], L1L2]] = {"l1": L1, "l2": L2, "l1_l2": l1_l2, "l1l2": l1_l2}


def get(identifier: None | str | Callable | Mapping, argument: str = "regularizer"):
    """Resolves ``None``, a Keras name (``'l1'``, ``'l2'``, ``'l1_l2'``), a Keras config dict
    (``{'class_name': 'L2', 'config': {'l2': 0.1}}``) or a callable ``w -> scalar``."""
    if identifier is None:
        return None
    if isinstance(identifier, Mapping):
        name = str(identifier.get("class_name", "")).lower()
        cfg = dict(identifier.get("config", {}))
        if name in ("l1", "l2", "l1l2", "l1_l2"):
            return L1L2(l1=cfg.get("l1", 0.0), l2=cfg.get("l2", 0.0))
        raise ValueError(
            f"`{argument}`: unknown regularizer config {identifier!r}; expected class_name L1, L2 or L1L2."
        )
    if isinstance(identifier, str):
        try:
            return _BY_NAME[identifier.lower()]()
        except KeyError:
            raise ValueError(
                f"`{argument}`: unknown regularizer {identifier!r}; "
                f"expected one of {sorted(_BY_NAME)}, None or a callable."
            ) from None
    if callable(identifier):
        return identifier
    raise TypeError(f"`{argument}`: expected a regularizer name, None or a callable, got {identifier!r}.")


def regularization_loss(collections: Any) -> jax.Array:
    """Sums every penalty that rnnjax layers reported during an ``apply``.

    Args:
      collections: what ``model.apply(..., mutable=['losses'])`` returned as its second
        value (a dict holding the ``'losses'`` collection), or the ``'losses'`` collection itself.
    Returns:
      A float32 scalar (0 when nothing was reported).
    """
    if isinstance(collections, Mapping) and LOSSES in collections:
        collections = collections[LOSSES]
    leaves = jax.tree_util.tree_leaves(collections)
    total = jnp.zeros((), jnp.float32)
    for leaf in leaves:
        total = total + jnp.sum(jnp.asarray(leaf, jnp.float32))
    return total


def report(module, name: str, penalty) -> None:
    """Records ``penalty`` in ``module``'s ``'losses'`` collection under ``name`` (a later call
    of the same module replaces it, so a penalty is counted once per apply)."""
    module.sow(LOSSES, name, penalty, init_fn=lambda: jnp.zeros(()), reduce_fn=lambda a, b: b)


def activity_penalty(regularizer, outputs, batch_size=None):
    """``sum(regularizer(t) / batch)`` over the arrays of ``outputs`` (Keras divides an activity
    penalty by the batch size). ``batch_size``: the number of sequences in the batch (the product
    of a recurrent layer's batch axes, 1 for an unbatched sequence); None: each array's first axis."""
    return sum(
        regularizer(t) / (t.shape[0] if batch_size is None else batch_size) for t in jax.tree_util.tree_leaves(outputs)
    )
