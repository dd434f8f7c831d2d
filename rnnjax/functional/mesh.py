"""Whether a program is partitioned over a device mesh: the one planning question about sharding.

rnnjax computes the same function on one device and on many, but two of its contractions have
a faster single-device form that a partitioned program must not use:

* a weight gradient ``Σ_{t, batch} a[t, ..., i] b[t, ..., j]`` as ONE 2-D matmul over the rows
  ``a.reshape(-1, i)``, ``b.reshape(-1, j)``: on one device XLA's CPU matmul reads those rows in
  place, while the same contraction as a ``dot_general`` over two axes makes it copy both operands
  transposed (``bench/README.md``, "Many devices"); on a mesh the reshape merges time with the
  sharded batch axis, and XLA gathers the whole sequence onto every device, while the
  ``dot_general`` is a local matmul plus one all-reduce;
* spans of steps projected inside an outer loop in training (faster on one CPU): on a mesh each
  span's weight gradient would be reduced across devices, once per span instead of once.

So the driver asks :func:`partitioned` and takes the partition-clean forms when the answer is yes.
The mesh is visible to a trace through ``jax.set_mesh(mesh)`` or through the shardings of its
(committed) inputs, e.g. arrays placed with ``jax.device_put(x, NamedSharding(mesh, P('data')))``;
a ``jax.jit(..., in_shardings=...)`` called with uncommitted host arrays hides it, and then rnnjax
plans for one device (which gathers): commit the inputs first or set the mesh.
"""

from __future__ import annotations

import jax
import jax.export
from jax import lax


def _mesh_size(mesh) -> int:
    if mesh is None or getattr(mesh, "empty", False):
        return 0
    return int(getattr(mesh, "size", 0) or 0)


def partitioned(*arrays) -> bool:
    """True when the current trace runs on a mesh of more than one device: the mesh set by
    ``jax.set_mesh``, or the mesh in the sharding of any of ``arrays`` (abstract values under
    ``jit``; every intermediate of a traced program carries its inputs' mesh)."""
    get_mesh = getattr(jax.sharding, "get_abstract_mesh", None)
    if get_mesh is not None and _mesh_size(get_mesh()) > 1:
        return True
    typeof = getattr(jax, "typeof", None)
    for a in jax.tree_util.tree_leaves(arrays):
        sharding = getattr(typeof(a), "sharding", None) if typeof is not None else getattr(a, "sharding", None)
        if _mesh_size(getattr(sharding, "mesh", None)) > 1:
            return True
    return False


def static(*sizes) -> bool:
    """Whether every size is a known integer, not a symbolic dimension (``jax.export``)."""
    return not any(jax.export.is_symbolic_dim(d) for d in sizes)


def contract_leading(a: jax.Array, b: jax.Array) -> jax.Array:
    """``Σ_{t, batch} a[t, ..., i] b[t, ..., j] -> (i, j)``: a weight gradient over every leading
    axis (time and the batch axes), as one matmul.

    On a device mesh a named-axis ``dot_general`` (a local matmul and one all-reduce); on one
    device the 2-D matmul of the rows, which XLA's CPU backend runs without copying its operands;
    the ``dot_general`` too for symbolic sizes (``jax.export``), whose rows jax cannot always count."""
    if partitioned(a, b) or not static(*a.shape, *b.shape):
        lead = tuple(range(a.ndim - 1))
        return lax.dot_general(a, b, ((lead, lead), ((), ())))
    return a.reshape(-1, a.shape[-1]).T @ b.reshape(-1, b.shape[-1])


def sum_leading(a: jax.Array) -> jax.Array:
    """``Σ_{t, batch} a[t, ..., j] -> (j,)``: a bias gradient over every leading axis. On one device
    the sum of the rows ``a.reshape(-1, j)``, the view :func:`contract_leading` reads too (with two
    views of one freshly written buffer, XLA's CPU backend computed the buffer twice, each in a
    copy: ``bench/README.md``, "GRU training memory"); on a mesh or with symbolic sizes the sum
    over the axes."""
    if partitioned(a) or not static(*a.shape):
        return a.sum(axis=tuple(range(a.ndim - 1)))
    return a.reshape(-1, a.shape[-1]).sum(axis=0)
