"""Peak temporary memory and time of one training step (grad of a loss) with and without ``remat``.

``remat=True`` makes the driver run the time loop in chunks of about ``sqrt(T)`` steps under
``jax.checkpoint``: only chunk boundaries are kept for the backward pass, so the per-step
residuals of the loop (gates, cell states) are recomputed instead of stored. What stays O(T) is
the hoisted input projection ``x @ kernel + bias`` and its cotangent (one large matmul each way).

Memory is XLA's own deterministic figure: ``jax.jit(grad).lower(...).compile().memory_analysis()``
``temp_size_in_bytes`` (scratch buffers of the compiled program, excluding arguments and outputs).
Time: median wall time of the compiled step (compile excluded), on whatever backend JAX uses.

    python bench/remat_memory.py                 # default grid
    python bench/remat_memory.py --steps 1000 10000 --units 4 --batch 1 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

import rnnjax
from rnnjax.functional._planner import remat_chunk as _remat_chunk


def measure(layer_cls, steps, batch, features, units, remat, repeats, return_sequences=True):
    """(temp bytes, median seconds) of ``grad(mean(output ** 2))``."""
    layer = layer_cls(units, remat=remat, return_sequences=return_sequences)
    x = jax.random.normal(jax.random.key(1), (batch, steps, features))
    params = layer.init(jax.random.key(0), x[:, :2])["params"]

    def loss(p):
        return jnp.mean(layer.apply({"params": p}, x) ** 2)

    compiled = jax.jit(jax.grad(loss)).lower(params).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    jax.block_until_ready(compiled(params))  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(params))
        times.append(time.perf_counter() - t)
    return temp, statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", default="LSTM", choices=["LSTM", "GRU", "SimpleRNN"])
    ap.add_argument("--steps", type=int, nargs="+", default=[1000, 10000, 10007, 100000])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--features", type=int, default=2)
    ap.add_argument("--units", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    cls = getattr(rnnjax, args.layer)
    print(
        f"{args.layer} grad step, batch={args.batch} features={args.features} units={args.units}, "
        f"backend={jax.default_backend()} ({jax.devices()[0].device_kind})"
    )
    print(
        "| T | loss on | remat chunk | temp bytes, remat off | temp "
        "bytes, remat on | ratio | time off (ms) | time on (ms) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for steps in args.steps:
        for seq in (True, False):
            shape = (steps, args.batch, args.features, args.units)
            off = measure(cls, *shape, False, args.repeats, seq)
            on = measure(cls, *shape, True, args.repeats, seq)
            print(
                f"| {steps} | {'all outputs' if seq else 'last output'} | {_remat_chunk(steps)} | {off[0]:,} | "
                f"{on[0]:,} | {on[0] / off[0]:.3f} | {off[1] * 1e3:.1f} | {on[1] * 1e3:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
