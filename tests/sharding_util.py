"""Helpers for the partitioning tests: a batch mesh over the forced host devices and the
collectives of a compiled program, read off its HLO text.

The whole suite runs with ``--xla_force_host_platform_device_count=8`` (``conftest.py``), so
``jax.devices()`` has 8 CPU devices; everything else still runs on the first of them.
"""

import re
from collections import Counter

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

COLLECTIVES = ("all-gather", "all-to-all", "collective-permute", "all-reduce", "reduce-scatter")
# an HLO instruction: `name = type op(...)`, async forms as `op-start(`
_OP = re.compile(r"=\s*[^=]*?\s(all-gather|all-to-all|collective-permute|all-reduce|reduce-scatter)(?:-start)?\(")


def batch_mesh(n: int = 8) -> Mesh:
    """A 1-D mesh ``('data',)`` over the first ``n`` devices."""
    devices = jax.devices()
    if len(devices) < n:
        raise RuntimeError(
            f"need {n} devices, have {len(devices)}: run with "
            "XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/conftest.py sets it)"
        )
    return Mesh(np.array(devices[:n]), ("data",))


def shard_batch(mesh: Mesh, tree, axis: int = 0):
    """Puts every array of ``tree`` on ``mesh``, its axis ``axis`` sharded over ``'data'``."""

    def put(a):
        spec = [None] * np.ndim(a)
        spec[axis] = "data"
        return jax.device_put(a, NamedSharding(mesh, P(*spec)))

    return jax.tree_util.tree_map(put, tree)


def replicate(mesh: Mesh, tree):
    return jax.tree_util.tree_map(lambda a: jax.device_put(a, NamedSharding(mesh, P())), tree)


def collectives(hlo_text: str) -> Counter:
    """How many of each collective the compiled HLO text holds (``COLLECTIVES``)."""
    return Counter(m.group(1) for m in _OP.finditer(hlo_text))


def collective_sources(hlo_text: str) -> list:
    """``(collective, op_name)`` for every collective of the compiled HLO text: ``op_name`` is the
    JAX source of the operation (its metadata, e.g. ``jit(f)/transpose(jvp(LSTM))/reshape``)."""
    found = []
    for line in hlo_text.splitlines():
        m = _OP.search(line)
        if m:
            name = re.search(r'op_name="([^"]*)"', line)
            found.append((m.group(1), name.group(1) if name else ""))
    return found


def compiled_text(fn, *args) -> str:
    """The compiled (partitioned, optimised) HLO text of ``jax.jit(fn)(*args)``."""
    return jax.jit(fn).lower(*args).compile().as_text()
