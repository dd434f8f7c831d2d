"""The mask computations a Keras 3 functional graph spells out as op nodes, evaluated as written.

Keras 3 records how each mask is computed (``Embedding(mask_zero=True)``: ``NotEqual(ids, 0)``;
``Masking``: ``Any(NotEqual(x, v), axis=-1)``; ``Concatenate``: ``ExpandDims``, ``ZerosLike``,
``LogicalOr``, ``Concatenate``, ``Any``) and passes the result as a layer's ``mask=``. Only these
ops are read, each with the meaning of ``keras.ops`` of the same name; their outputs may only reach
a ``mask=`` (or another op), never a layer's data.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp


def _axis(a):
    return tuple(a) if isinstance(a, (list, tuple)) else a


def _dtype(d):
    return None if d is None else jnp.dtype(d)


# op class -> (config keys it takes, function of (positional args, **config))
_OPS: dict[str, tuple[tuple, Callable]] = {
    "NotEqual": ((), lambda a: jnp.not_equal(a[0], a[1])),
    "Any": (("axis", "keepdims"), lambda a, axis=None, keepdims=False: jnp.any(a[0], _axis(axis), keepdims=keepdims)),
    "All": (("axis", "keepdims"), lambda a, axis=None, keepdims=False: jnp.all(a[0], _axis(axis), keepdims=keepdims)),
    "ExpandDims": (("axis",), lambda a, axis: jnp.expand_dims(a[0], _axis(axis))),
    "Squeeze": (("axis",), lambda a, axis=None: jnp.squeeze(a[0], _axis(axis))),
    "ZerosLike": (("dtype",), lambda a, dtype=None: jnp.zeros_like(a[0], _dtype(dtype))),
    "OnesLike": (("dtype",), lambda a, dtype=None: jnp.ones_like(a[0], _dtype(dtype))),
    "LogicalOr": ((), lambda a: jnp.logical_or(a[0], a[1])),
    "LogicalAnd": ((), lambda a: jnp.logical_and(a[0], a[1])),
    "Concatenate": (("axis",), lambda a, axis=0: jnp.concatenate(list(a), axis=axis)),
    "BroadcastTo": (("shape",), lambda a, shape: jnp.broadcast_to(a[0], tuple(shape))),
    "Cast": (("dtype",), lambda a, dtype: jnp.asarray(a[0]).astype(_dtype(dtype))),
    # Attention.compute_mask: a dense array (sparse/ragged refused by check)
    "ConvertToTensor": (
        ("dtype", "sparse", "ragged"),
        lambda a, dtype=None, sparse=None, ragged=None: jnp.asarray(a[0], _dtype(dtype)),
    ),
}
MASK_OPS = frozenset(_OPS)
# the number of positional tensors/scalars each op takes (Concatenate: one list)
_ARITY = {"NotEqual": 2, "LogicalOr": 2, "LogicalAnd": 2}


def check(op: str, config: dict, args: tuple, listed: bool):
    """The problem with one op node's config or arguments, or ``None``."""
    keys, _ = _OPS[op]
    unknown = sorted(set(config) - set(keys))
    if unknown:
        return f"config keys {unknown} of op {op} are not supported (supported: {list(keys)})"
    if config.get("sparse") or config.get("ragged"):
        return f"op {op} with sparse or ragged tensors is not supported"
    if op == "Concatenate":
        return None if listed else "op Concatenate takes a list of tensors"
    if listed or len(args) != _ARITY.get(op, 1):
        return f"op {op} takes {_ARITY.get(op, 1)} argument(s), got {len(args)}"
    return None


def run(op: str, config: tuple, values: list):
    """The value of op ``op`` with ``config`` (``(key, value)`` pairs) on ``values``."""
    return _OPS[op][1](values, **dict(config))
