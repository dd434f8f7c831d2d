#!/usr/bin/env python
"""Compiled peak memory of rnnjax's LSTM and GRU against Flax linen and Keras 3 (no timing).

    python bench/peak_memory.py                      # the issue-28 grid, forward and training
    python bench/peak_memory.py --old-rev main       # ... with main's build as one more column
    python bench/peak_memory.py --shapes "32,300,128,128" --layers LSTM

Every implementation computes the same function as in ``cpu_bench.py`` (its builders, weights
and guard are reused), ``return_sequences=True``, float32, sigmoid gates, reset-after GRU.
Memory is XLA's deterministic figure for the compiled program, ``compiled.memory_analysis()``:
``temp + output`` bytes (arguments excluded), the number ``cpu_bench.py`` reports as "peak".
"fwd" is the forward call; "train" is the gradient of ``sum(output)`` w.r.t. parameters and input.
rnnjax's layers run ``backend='scan'`` (``--backend``) where they take one: the memory oneDNN's
kernels allocate themselves is not in XLA's figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import cpu_bench  # noqa: E402

SHAPES = [(32, 300, 128, 128), (8, 1000, 64, 64), (64, 100, 256, 256), (1, 2000, 128, 128)]


def compiled_peaks(layer, shape, peers, old, backend="scan"):
    """``{impl: (fwd bytes, train bytes)}``: compile only, nothing run."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    w = cpu_bench.canonical_weights(layer, shape)
    x = cpu_bench.make_input(layer, shape)
    out = {}

    def peaks(apply, params):
        fwd = jax.jit(apply).lower(params, x).compile()
        train = jax.jit(jax.grad(lambda p, xx: jnp.sum(apply(p, xx)), argnums=(0, 1))).lower(params, x).compile()
        return tuple(_common.jax_compiled_memory(c)["peak_bytes"] for c in (fwd, train))

    builds = {"rnnjax": (False,)}
    if old:
        builds[f"rnnjax@{cpu_bench.OLD_BUILD['rev']}"] = (True,)
    for name, (is_old,) in builds.items():
        package = cpu_bench.OLD_BUILD["module"] if is_old else None
        cls = getattr(package or __import__("rnnjax"), layer)
        takes_backend = any(f.name == "backend" for f in dataclasses.fields(cls))
        mod = cpu_bench.rnnjax_layer(layer, shape, {"backend": backend} if takes_backend else {}, None, package)
        variables = mod.init(jax.random.key(0), x[:1])
        variables = cpu_bench.fill_by_name(jax.tree_util.tree_map(np.asarray, variables), w, name)
        out[name] = peaks(lambda v, xx, mod=mod: mod.apply(v, xx), variables)
    if "flax" in peers:
        import flax.linen as nn  # noqa: F401 (build_flax compiles; we only want its apply and params)

        b = cpu_bench.build_flax(layer, shape, w, x)
        out["flax"] = (b.memory["fwd"]["peak_bytes"], b.memory["fwdbwd"]["peak_bytes"])
    if "keras" in peers:
        b = cpu_bench.build_keras(layer, shape, w, x)
        out["keras"] = (b.memory["fwd"]["peak_bytes"], b.memory["fwdbwd"]["peak_bytes"])
    return out


def table(results, impls):
    mib = lambda n: f"{n / 2**20:.2f}"  # noqa: E731
    lines = [
        "| layer | B,T,I,U | "
        + " | ".join(f"{i} fwd / train MiB" for i in impls)
        + " | rnnjax / min(peers) fwd | rnnjax / flax train |",
        "|---" * (4 + len(impls)) + "|",
    ]
    for (layer, shape), r in results.items():
        peers = [r[p][0] for p in ("flax", "keras") if p in r]
        ratio_f = r["rnnjax"][0] / min(peers) if peers else float("nan")
        ratio_t = r["rnnjax"][1] / r["flax"][1] if "flax" in r else float("nan")
        cells = [f"{mib(r[i][0])} / {mib(r[i][1])}" for i in impls]
        lines.append(
            f"| {layer} | {','.join(map(str, shape))} | " + " | ".join(cells) + f" | {ratio_f:.2f}× | {ratio_t:.2f}× |"
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="LSTM,GRU")
    p.add_argument("--shapes", default=None, help="'B,T,I,U;...' (default: the issue-28 grid)")
    p.add_argument("--peers", default="flax,keras")
    p.add_argument("--old-rev", default=None)
    p.add_argument("--backend", default="scan", help="rnnjax's backend for GRU/LSTM where the layer takes one")
    args = p.parse_args(argv)
    shapes = cpu_bench._parse_shapes(args.shapes) if args.shapes else SHAPES
    peers = [s for s in args.peers.split(",") if s]

    def go():
        results = {}
        for layer in args.layers.split(","):
            for shape in shapes:
                results[(layer, shape)] = r = compiled_peaks(layer, shape, peers, bool(args.old_rev), args.backend)
                print(layer, shape, {k: tuple(f"{v / 2**20:.2f}" for v in vs) for k, vs in r.items()}, flush=True)
        impls = list(next(iter(results.values())))
        print()
        print(table(results, impls))

    if args.old_rev:
        with tempfile.TemporaryDirectory() as folder:
            _common.export_old(args.old_rev, folder)
            sys.path.insert(0, folder)
            import rnnjax_old

            cpu_bench.OLD_BUILD.update(rev=args.old_rev, module=rnnjax_old)
            go()
    else:
        go()


if __name__ == "__main__":
    main()
