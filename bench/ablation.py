"""Where rnnjax's speed comes from: each optimisation switched off in turn, measured in one run.

    python bench/ablation.py            # LSTM at (32,100,128,256), (1,500,128,128), (8,50,64,64)
    python bench/ablation.py --shapes "16,200,64,128"

Variants, all computing the same function (sigmoid gates; checked against each other first):

* ``flax``: Flax linen ``nn.RNN(nn.OptimizedLSTMCell)``, both matmuls inside the loop (the peer);
* ``hoisted``: rnnjax's input projection hoisted out of the loop, per-gate activations, autodiff
  of ``lax.scan`` (what "hoisting" alone gives);
* ``+fused gates``: all four gates from one ``tanh`` pass over the ``4U`` block, autodiff;
* ``+custom backward`` (= rnnjax): the hand-written backward pass (recurrent-kernel gradient as
  one matmul after the loop).

Forward and forward+backward (gradient of ``sum(outputs)`` w.r.t. parameters and inputs) medians,
interleaved; see ``_common.interleaved_medians``.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flax.linen as nn  # noqa: E402
from _common import fmt_ms, interleaved_medians, machine_record  # noqa: E402

import rnnjax.functional as F  # noqa: E402


def _sigmoid(x):  # a callable (not the name) switches off the fused gate pass
    return jax.nn.sigmoid(x)


def variants(b, t, i, u):
    x = jax.random.normal(jax.random.key(0), (b, t, i))
    fused = F.LSTMCore(u, recurrent_activation="sigmoid")
    split = F.LSTMCore(u, recurrent_activation=_sigmoid)
    params = fused.init(jax.random.key(1), i)
    params = params._replace(bias=params.bias + 0.1)
    flax_rnn = nn.RNN(nn.OptimizedLSTMCell(u))
    fv = flax_rnn.init(jax.random.key(1), x)
    # Same weights in Flax's per-gate layout (gates i, f, g, o; hi carries the bias).
    k, r, bias = params
    names = "ifgo"
    cell = {}
    for g, n in enumerate(names):
        cell[f"i{n}"] = {"kernel": k[:, g * u : (g + 1) * u]}
        cell[f"h{n}"] = {"kernel": r[:, g * u : (g + 1) * u], "bias": bias[g * u : (g + 1) * u]}
    fv = {"params": {"cell": cell}}

    def ours(core, custom):
        return lambda p, x: F.rnn(core, p, x, return_sequences=True, custom_backward=custom)[0]

    fns = {
        "flax": (lambda p, x: flax_rnn.apply(p, x), fv),
        "hoisted": (ours(split, False), params),
        "+fused gates": (ours(fused, False), params),
        "+custom backward": (ours(fused, True), params),
    }
    return x, fns


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="32,100,128,256;1,500,128,128;8,50,64,64")
    ap.add_argument("--target-s", type=float, default=1.0)
    args = ap.parse_args(argv)
    rec = machine_record()
    print(
        f"# {rec.get('cpu_model')} · {rec.get('cores', os.cpu_count())} "
        f"cores · jax {jax.__version__} · {rec.get('date')}"
    )
    print("| shape (B,T,I,U) | variant | forward | fwd+bwd | fwd+bwd vs flax |")
    print("|---|---|---|---|---|")
    for shape in args.shapes.split(";"):
        b, t, i, u = (int(v) for v in shape.split(","))
        x, fns = variants(b, t, i, u)
        ref = None
        timed = {}
        for name, (f, p) in fns.items():
            fwd = jax.jit(f)
            bwd = jax.jit(jax.grad(lambda p, x, f=f: f(p, x).sum(), argnums=(0, 1)))
            out = np.asarray(fwd(p, x))
            ref = out if ref is None else ref
            np.testing.assert_allclose(out, ref, atol=2e-5)  # every variant computes the same function
            jax.block_until_ready(bwd(p, x))
            timed[f"{name}/fwd"] = lambda fwd=fwd, p=p, x=x: jax.block_until_ready(fwd(p, x))
            timed[f"{name}/bwd"] = lambda bwd=bwd, p=p, x=x: jax.block_until_ready(bwd(p, x))
        res = interleaved_medians(timed, target_s=args.target_s)
        base = res["flax/bwd"]["median_s"]
        for name in fns:
            f, bw = res[f"{name}/fwd"]["median_s"], res[f"{name}/bwd"]["median_s"]
            print(f"| {b},{t},{i},{u} | {name} | {fmt_ms(f)} | {fmt_ms(bw)} | {base / bw:.2f}x |")


if __name__ == "__main__":
    main()
