#!/usr/bin/env python
"""Are the single-device compiled programs of two builds identical? (A speed check without timing.)

    python bench/same_programs.py --old-rev aa2f5ee

Exports ``rnnjax/`` at ``--old-rev`` into a temporary folder as the package ``rnnjax_old``,
compiles forward and training programs (``jax.jit(...).lower(...).compile()``, CPU) of the bench
grid's layer kinds with both builds, and compares their optimised HLO text after normalising
instruction names and metadata. Identical programs run at the same speed, whatever the noise of
the machine; only the programs that differ need an interleaved timing (``bench/README.md``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import ROOT, export_old  # noqa: E402


def normalised(hlo: str) -> list[str]:
    out = []
    for line in hlo.splitlines():
        if not re.match(r"^\s+%|^ENTRY|^%|^\s+ROOT", line):
            continue
        line = re.sub(r", metadata=\{[^}]*\}", "", line)
        line = re.sub(r"%[A-Za-z_.0-9-]+", "%X", line)
        line = re.sub(r"backend_config=.*", "", line)
        out.append(re.sub(r"param_[0-9]+(\.[0-9]+)?", "P", line))
    return out


def cases():
    for b, t, i, u in [
        (32, 100, 128, 256),
        (1, 500, 128, 128),
        (128, 100, 128, 128),
        (32, 300, 128, 128),
        (8, 50, 64, 64),
    ]:
        for name, kw in [
            ("LSTM", dict(recurrent_activation="sigmoid")),
            ("LSTM", {}),
            ("GRU", dict(reset_after=True)),
            ("GRU", {}),
            ("SimpleRNN", {}),
            ("LSTM", dict(dropout=0.2, recurrent_dropout=0.2)),
        ]:
            yield name, kw, (b, t, i), u
    for shape in [(4, 10, 16, 16, 8), (8, 20, 24, 24, 4)]:
        yield "ConvLSTM2D", {}, shape, 16


def programs(mod, name, kw, xshape, units):
    import jax

    if name == "ConvLSTM2D":
        layer = mod.ConvLSTM2D(units, 3, padding="same", return_sequences=True, **kw)
    else:
        layer = getattr(mod, name)(units, return_sequences=True, **kw)
    x = jax.random.normal(jax.random.key(0), xshape)
    variables = layer.init(jax.random.key(1), x)
    training = bool(kw.get("dropout"))
    rngs = {"dropout": jax.random.key(2)} if training else None

    def forward(v, x):
        return layer.apply(v, x, training=training, rngs=rngs)

    train = jax.grad(lambda v, x: forward(v, x).sum(), argnums=(0, 1))
    return [normalised(jax.jit(f).lower(variables, x).compile().as_text()) for f in (forward, train)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old-rev", required=True, help="git revision of the old build")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        export_old(args.old_rev, folder)
        sys.path.insert(0, folder)
        sys.path.insert(0, ROOT)
        import rnnjax_old

        import rnnjax

        differ = 0
        for name, kw, xshape, units in cases():
            same = [
                a == b
                for a, b in zip(
                    programs(rnnjax_old, name, kw, xshape, units), programs(rnnjax, name, kw, xshape, units)
                )
            ]
            differ += not all(same)
            verdict = " ".join(f"{mode} {'same' if s else 'DIFFERENT'}" for mode, s in zip(("fwd", "train"), same))
            print(f"{name:10s} {str(kw):45s} {str(xshape):20s} {verdict}", flush=True)
        print("all programs identical" if not differ else f"{differ} configurations differ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
