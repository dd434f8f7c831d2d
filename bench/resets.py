#!/usr/bin/env python
"""The cost of ``reset``: rnnjax with and without restarts, and Flax with a hand-written reset cell.

    python bench/resets.py                      # LSTM on the CPU grid's shapes (bench/cpu_bench.py)
    python bench/resets.py --quick              # two shapes
    python bench/resets.py --smoke              # seconds; what tests/test_bench.py runs
    python bench/resets.py --shapes "32,100,128,256" --layer GRU

Variants, on the same weights and inputs, ``return_sequences=True``, sigmoid gates (GRU:
reset-after), a restart about every 20 steps at random places in each row:

* ``rnnjax``: ``rnnjax.LSTM`` / ``rnnjax.GRU`` without ``reset`` (the baseline);
* ``rnnjax+reset``: the same layer with ``reset=``;
* ``flax+reset``: the peer JAX RL code writes by hand (purejaxrl's ``ScannedRNN``): ``nn.scan`` over
  ``(x_t, reset_t)`` of a Flax cell (``OptimizedLSTMCell`` / ``GRUCell``) whose carry is replaced by
  ``jnp.where(reset_t, zeros, carry)`` before each step.

``rnnjax+reset`` and ``flax+reset`` are checked to compute the same outputs and input gradients
first. "fwd" is one call; "fwdbwd" the gradient of ``sum(outputs)`` with respect to the parameters
and the inputs. Medians of interleaved samples (``_common.interleaved_medians``), with the
interquartile range as the noise.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flax.linen as nn  # noqa: E402
from _common import fmt_ms, interleaved_medians, machine_record  # noqa: E402
from cpu_bench import FULL_RNN_SHAPES, QUICK_RNN_SHAPES, SMOKE_RNN_SHAPES  # noqa: E402

import rnnjax  # noqa: E402

RESET_EVERY = 20  # steps per sequence, on average


class ResetScan(nn.Module):
    """Flax's hand-written reset (purejaxrl's ``ScannedRNN``): ``carry = where(reset_t, 0, carry)``
    before each step of ``cell``."""

    cell: nn.Module

    @functools.partial(nn.scan, variable_broadcast="params", split_rngs={"params": False}, in_axes=1, out_axes=1)
    @nn.compact
    def __call__(self, carry, inputs):
        x_t, r_t = inputs
        carry = jax.tree_util.tree_map(lambda c: jnp.where(r_t[:, None], jnp.zeros_like(c), c), carry)
        return self.cell(carry, x_t)


class FlaxReset(nn.Module):
    layer: str
    units: int

    @nn.compact
    def __call__(self, x, reset):
        cell = (
            nn.OptimizedLSTMCell(self.units, name="cell")
            if self.layer == "LSTM"
            else nn.GRUCell(self.units, name="cell")
        )
        carry = cell.initialize_carry(jax.random.key(0), x[:, 0].shape)
        return ResetScan(cell, name="scan")(carry, (x, reset))[1]


def flax_weights(layer, params, units):
    """rnnjax's Keras-layout weights in Flax's per-gate layout."""
    k, r, b = params["kernel"], params["recurrent_kernel"], params["bias"]
    u = units
    if layer == "LSTM":  # gates i, f, g, o; hi.. carry the bias
        cell = {}
        for g, n in enumerate("ifgo"):
            cell[f"i{n}"] = {"kernel": k[:, g * u : (g + 1) * u]}
            cell[f"h{n}"] = {"kernel": r[:, g * u : (g + 1) * u], "bias": b[g * u : (g + 1) * u]}
        return cell
    # GRU reset_after, Keras gates z, r, h; bias (2, 3U): input and recurrent. Flax: r = σ(ir x + hr h + b),
    # z likewise, n = tanh(in x + b_in + r ⊙ (hn h + b_hn)), the input biases on `i*`, hn's on `hn`.
    bi, br = b[0], b[1]
    blocks = {"z": 0, "r": 1, "n": 2}
    cell = {}
    for n, g in blocks.items():
        cols = slice(g * u, (g + 1) * u)
        cell[f"i{n}"] = {"kernel": k[:, cols], "bias": bi[cols] + (br[cols] if n != "n" else 0)}
        cell[f"h{n}"] = {"kernel": r[:, cols]} | ({"bias": br[cols]} if n == "n" else {})
    return cell


def variants(layer, b, t, i, u):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(b, t, i)), jnp.float32)
    reset = jnp.asarray(rng.random((b, t)) < 1.0 / RESET_EVERY)
    if layer == "LSTM":
        ours = rnnjax.LSTM(u, recurrent_activation="sigmoid", return_sequences=True)
    else:
        ours = rnnjax.GRU(u, recurrent_activation="sigmoid", reset_after=True, return_sequences=True)
    params = ours.init(jax.random.key(1), x)["params"]
    params = jax.tree_util.tree_map(lambda a: a + 0.05, params)
    flax_model = FlaxReset(layer, u)
    fv = {"params": {"cell": flax_weights(layer, params["cell"], u)}}
    return (
        x,
        reset,
        {
            "rnnjax": (lambda p, x: ours.apply({"params": p}, x), params),
            "rnnjax+reset": (lambda p, x: ours.apply({"params": p}, x, reset=reset), params),
            "flax+reset": (lambda p, x: flax_model.apply(p, x, reset), fv),
        },
    )


def run_shape(layer, shape, target_s):
    b, t, i, u = shape
    x, reset, fns = variants(layer, b, t, i, u)
    timed, check = {}, {}
    for name, (f, p) in fns.items():
        fwd = jax.jit(f)
        bwd = jax.jit(jax.grad(lambda p, x, f=f: f(p, x).sum(), argnums=(0, 1)))
        check[name] = (np.asarray(fwd(p, x)), np.asarray(bwd(p, x)[1]))
        timed[f"{name}/fwd"] = lambda fwd=fwd, p=p: jax.block_until_ready(fwd(p, x))
        timed[f"{name}/fwdbwd"] = lambda bwd=bwd, p=p: jax.block_until_ready(bwd(p, x))
    (out, dx), (peer_out, peer_dx) = check["rnnjax+reset"], check["flax+reset"]
    np.testing.assert_allclose(peer_out, out, atol=1e-4)  # the peer computes the same function
    np.testing.assert_allclose(peer_dx, dx, atol=1e-4 * max(1.0, float(np.abs(dx).max())))
    return interleaved_medians(timed, target_s=target_s)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layer", choices=("LSTM", "GRU"), default="LSTM")
    ap.add_argument("--shapes", help='"B,T,I,U;..." (default: the CPU grid of bench/cpu_bench.py)')
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--target-s", type=float, default=1.0, help="seconds of samples per variant and mode")
    args = ap.parse_args(argv)
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";")]
    else:
        shapes = SMOKE_RNN_SHAPES if args.smoke else QUICK_RNN_SHAPES if args.quick else FULL_RNN_SHAPES
    target = 0.02 if args.smoke else args.target_s
    rec = machine_record()
    print(
        f"# {rec['cpu_model']} · {rec['usable_cpus']} usable cores · load {rec['loadavg_start'][0]:.1f} · "
        f"jax {jax.__version__} · {rec['date']} · {args.layer}"
    )
    print(
        "| shape (B,T,I,U) | mode | rnnjax | rnnjax+reset | reset / no reset | flax+reset | flax+reset / rnnjax+reset |"
    )
    print("|---|---|---|---|---|---|---|")
    rows = []
    for shape in shapes:
        res = run_shape(args.layer, shape, target)
        for mode in ("fwd", "fwdbwd"):
            base, ours, peer = (res[f"{n}/{mode}"] for n in ("rnnjax", "rnnjax+reset", "flax+reset"))
            noise = max(base["iqr_s"] / base["median_s"], ours["iqr_s"] / ours["median_s"])
            row = {"shape": shape, "mode": mode, "rnnjax": base, "rnnjax+reset": ours, "flax+reset": peer}
            rows.append(row)
            print(
                f"| {','.join(map(str, shape))} | {mode} | {fmt_ms(base['median_s'])} | {fmt_ms(ours['median_s'])} | "
                f"{ours['median_s'] / base['median_s']:.2f} (IQR ±{noise:.0%}) | {fmt_ms(peer['median_s'])} | "
                f"{peer['median_s'] / ours['median_s']:.2f}x |",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    main()
