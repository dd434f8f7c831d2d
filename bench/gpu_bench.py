"""GPU benchmark of rnnjax's CuDNN layers against the generic layers and the peers.

One command, under five minutes on one GPU::

    python bench/gpu_bench.py                    # shapes from shared/reference/performance.md
    python bench/gpu_bench.py --smoke            # tiny shapes, 2 repetitions (runs on a CPU too)
    python bench/gpu_bench.py --json out.json --reps 30 --max-seconds 280

Times one layer, forward and forward+backward (gradients w.r.t. the input and every weight of
``sum(outputs * 1e-3)``, ``return_sequences`` outputs), float32 unless noted (TF32 matmuls
allowed, as JAX and PyTorch do by default on Ampere+), medians of ``--reps`` runs after warm-up
(compilation excluded), every implementation fed the same shapes in one process:

* rnnjax ``CuDNNLSTM`` (backend 'auto': cuDNN through ``jax.experimental.rnn`` on a GPU) and
  ``CuDNNLSTM(backend='scan')`` with ``scan_unroll`` 1 and 4; ``CuDNNGRU`` (scan, unroll 1 / 4);
* rnnjax ``LSTM``/``GRU`` (generic layers, sigmoid gates, ``reset_after=True``);
* ``jax.experimental.rnn.lstm`` called directly;
* PyTorch ``nn.LSTM``/``nn.GRU`` (cuDNN on a GPU) in float32 and float16;
* Flax linen ``nn.RNN(nn.OptimizedLSTMCell)`` and ``nn.RNN(nn.GRUCell)``.

Prints a table (ms, and the ratio peer time / rnnjax CuDNN layer time for the same cell kind) and
writes JSON (``--json``, default ``bench/results/gpu_bench.json``). An implementation that cannot
run here (e.g. cuDNN on a CPU) is listed with the reason instead of a time.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

SHAPES = [  # (batch, time, input, hidden)
    (64, 100, 512, 512),
    (16, 200, 1024, 1024),
    (256, 50, 256, 256),
    (1, 500, 128, 128),
    (16, 25, 1024, 1024),
]
SMOKE_SHAPES = [(2, 5, 4, 8)]


# ----------------------------------------------------------------------------------------------
# timing helpers


def _median_ms(fn, reps, sync):
    fn()
    sync()
    fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _jax_sync(holder):
    def sync():
        jax.block_until_ready(holder.get("out"))

    return sync


def time_jax(apply, params, x, reps):
    """``apply(params, x) -> (batch, time, hidden)``; returns (forward ms, forward+backward ms)."""
    fwd = jax.jit(apply)

    def loss(p, x):
        return jnp.sum(apply(p, x).astype(jnp.float32)) * 1e-3

    bwd = jax.jit(jax.grad(loss, argnums=(0, 1)))
    holder = {}

    def run_fwd():
        holder["out"] = fwd(params, x)

    def run_bwd():
        holder["out"] = bwd(params, x)

    sync = _jax_sync(holder)
    return _median_ms(run_fwd, reps, sync), _median_ms(run_bwd, reps, sync)


# ----------------------------------------------------------------------------------------------
# implementations: each returns (forward ms, forward+backward ms) or raises


def rnnjax_layer(make):
    def bench(shape, reps, key):
        b, t, i, u = shape
        layer = make(u)
        x = jax.random.normal(key, (b, t, i), jnp.float32)
        params = layer.init(jax.random.key(1), x)["params"]
        return time_jax(lambda p, x: layer.apply({"params": p}, x), params, x, reps)

    return bench


def jax_experimental_lstm(shape, reps, key):
    from jax.experimental import rnn

    from rnnjax.cudnn.fused import cudnn_lstm_unavailable_reason

    why = cudnn_lstm_unavailable_reason()
    if why:
        raise RuntimeError(why)
    b, t, i, u = shape
    x = jax.random.normal(key, (b, t, i), jnp.float32)
    w = rnn.init_lstm_weight(jax.random.key(1), i, u, 1, False)
    h0 = jnp.zeros((1, b, u))
    lengths = jnp.full((b,), t, jnp.int32)

    def apply(w, x):
        return rnn.lstm(x, h0, h0, w, lengths, i, u, 1, 0.0, False)[0]

    return time_jax(apply, w, x, reps)


def flax_cell(cell_name):
    def bench(shape, reps, key):
        import flax.linen as nn

        b, t, i, u = shape
        cell = getattr(nn, cell_name)(features=u)
        model = nn.RNN(cell)
        x = jax.random.normal(key, (b, t, i), jnp.float32)
        params = model.init(jax.random.key(1), x)["params"]
        return time_jax(lambda p, x: model.apply({"params": p}, x), params, x, reps)

    return bench


def torch_rnn(kind, half):
    def bench(shape, reps, key):
        import torch

        cuda = torch.cuda.is_available()
        if half and not cuda:
            raise RuntimeError("float16 RNNs need a CUDA device in PyTorch")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        device = "cuda" if cuda else "cpu"
        dtype = torch.float16 if half else torch.float32
        b, t, i, u = shape
        cls = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
        m = cls(i, u, batch_first=True).to(device=device, dtype=dtype)
        x = torch.tensor(np.asarray(jax.random.normal(key, (b, t, i))), device=device, dtype=dtype)
        xg = x.clone().requires_grad_(True)
        sync = torch.cuda.synchronize if cuda else (lambda: None)

        def run_fwd():
            with torch.no_grad():
                m(x)

        def run_bwd():
            m.zero_grad(set_to_none=True)
            xg.grad = None
            y, _ = m(xg)
            (y.float().sum() * 1e-3).backward()

        return _median_ms(run_fwd, reps, sync), _median_ms(run_bwd, reps, sync)

    return bench


def implementations():
    import rnnjax

    lstm = dict(kind="lstm")
    gru = dict(kind="gru")
    return [
        ("rnnjax CuDNNLSTM", lstm, rnnjax_layer(lambda u: rnnjax.CuDNNLSTM(u, return_sequences=True))),
        (
            "rnnjax CuDNNLSTM scan",
            lstm,
            rnnjax_layer(lambda u: rnnjax.CuDNNLSTM(u, backend="scan", return_sequences=True)),
        ),
        (
            "rnnjax CuDNNLSTM scan unroll4",
            lstm,
            rnnjax_layer(lambda u: rnnjax.CuDNNLSTM(u, backend="scan", scan_unroll=4, return_sequences=True)),
        ),
        (
            "rnnjax LSTM",
            lstm,
            rnnjax_layer(lambda u: rnnjax.LSTM(u, recurrent_activation="sigmoid", return_sequences=True)),
        ),
        ("jax.experimental.rnn lstm", lstm, jax_experimental_lstm),
        ("torch LSTM fp32", lstm, torch_rnn("lstm", False)),
        ("torch LSTM fp16", lstm, torch_rnn("lstm", True)),
        ("flax OptimizedLSTMCell", lstm, flax_cell("OptimizedLSTMCell")),
        ("rnnjax CuDNNGRU", gru, rnnjax_layer(lambda u: rnnjax.CuDNNGRU(u, return_sequences=True))),
        (
            "rnnjax CuDNNGRU unroll4",
            gru,
            rnnjax_layer(lambda u: rnnjax.CuDNNGRU(u, scan_unroll=4, return_sequences=True)),
        ),
        (
            "rnnjax GRU",
            gru,
            rnnjax_layer(
                lambda u: rnnjax.GRU(u, recurrent_activation="sigmoid", reset_after=True, return_sequences=True)
            ),
        ),
        ("torch GRU fp32", gru, torch_rnn("gru", False)),
        ("torch GRU fp16", gru, torch_rnn("gru", True)),
        ("flax GRUCell", gru, flax_cell("GRUCell")),
    ]


def device_description():
    d = jax.devices()[0]
    desc = {
        "jax_platform": d.platform,
        "jax_device": getattr(d, "device_kind", str(d)),
        "jax": jax.__version__,
        "python": platform.python_version(),
    }
    try:
        import torch

        desc["torch"] = torch.__version__
        desc["torch_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception as e:  # pragma: no cover
        desc["torch"] = f"unavailable: {e}"
    return desc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, 2 repetitions (CPU is fine)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per case (default 30; smoke 2)")
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "gpu_bench.json"))
    ap.add_argument(
        "--max-seconds",
        type=float,
        default=280.0,
        help="stop starting new cases after this many seconds (results so far are kept)",
    )
    ap.add_argument(
        "--only", default=None, help="comma-separated substrings: run only the implementations whose name contains one"
    )
    args = ap.parse_args(argv)
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    reps = args.reps or (2 if args.smoke else 30)
    start = time.time()
    info = device_description()
    print(f"# {info}", flush=True)
    results = []
    wanted = None if args.only is None else [w.strip() for w in args.only.split(",") if w.strip()]
    impls = [im for im in implementations() if wanted is None or any(w in im[0] for w in wanted)]
    for shape in shapes:
        for name, meta, bench in impls:
            row = {
                "impl": name,
                "cell": meta["kind"],
                "shape": list(shape),
                "forward_ms": None,
                "forward_backward_ms": None,
                "error": None,
            }
            if time.time() - start > args.max_seconds:
                row["error"] = "skipped: --max-seconds reached"
            else:
                try:
                    row["forward_ms"], row["forward_backward_ms"] = bench(shape, reps, jax.random.key(0))
                except Exception as e:  # record and go on: one peer failing must not hide the rest
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            results.append(row)
            _print_row(row, results)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": info, "reps": reps, "smoke": args.smoke, "results": results}, indent=1))
    print(f"# wrote {out} in {time.time() - start:.1f} s", flush=True)
    return 0


def _print_row(row, results):
    base_name = "rnnjax CuDNNLSTM" if row["cell"] == "lstm" else "rnnjax CuDNNGRU"
    base = next((r for r in results if r["impl"] == base_name and r["shape"] == row["shape"]), None)

    def fmt(v):
        return "-" if v is None else f"{v:8.3f}"

    def ratio(key):
        if base is None or base[key] is None or row[key] is None:
            return "   -"
        return f"{row[key] / base[key]:5.2f}x"

    if len(results) == 1:
        print(
            f"{'shape (B,T,I,U)':<22}{'implementation':<32}{'fwd ms':>9}{'fwd+bwd ms':>11}"
            f"{'fwd/base':>9}{'f+b/base':>9}",
            flush=True,
        )
    shape = ",".join(map(str, row["shape"]))
    tail = f"  ({row['error']})" if row["error"] else ""
    print(
        f"{shape:<22}{row['impl']:<32}{fmt(row['forward_ms']):>9}{fmt(row['forward_backward_ms']):>11}"
        f"{ratio('forward_ms'):>9}{ratio('forward_backward_ms'):>9}{tail}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
