"""On-GPU correctness check of ``CuDNNLSTM``'s cuDNN path at realistic sizes (run on a GPU).

``tests/test_cudnn.py`` checks the layers against PyTorch on small shapes everywhere; on a GPU its
``backend='auto'`` cases run the real cuDNN kernel. This script adds larger shapes, ragged
``seq_lengths``, ``go_backwards``, initial states and gradients, comparing on the same GPU:

* ``CuDNNLSTM(backend='cudnn')`` against ``CuDNNLSTM(backend='scan')`` (the scan path, itself
  tested against PyTorch's CPU ``nn.LSTM`` by the test suite), forward outputs, final states and
  gradients w.r.t. the input and every weight, as ``|a - b| / |b|`` (Frobenius norms);
* the cuDNN outputs against PyTorch CPU ``nn.LSTM`` in float64 on the same weights (full
  sequences only: PyTorch has no Keras masking rules);
* ``CuDNNGRU`` (scan on the GPU) against PyTorch CPU ``nn.GRU`` in float64.

Float32 with ``jax_default_matmul_precision='highest'`` on the scan side; cuDNN picks its own math
mode, so the bar is 1e-4 relative (float32 rounding over hundreds of steps), NaN never passes.
Exit status 1 if any check fails. Usage: ``python bench/gpu_check.py``.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_default_matmul_precision", "highest")

import rnnjax  # noqa: E402
from rnnjax.cudnn import convert  # noqa: E402
from rnnjax.cudnn.fused import cudnn_lstm_unavailable_reason  # noqa: E402

BAR = 1e-4
SHAPES = [(4, 7, 5, 8), (16, 120, 64, 128), (64, 50, 256, 256), (3, 400, 32, 64)]  # B, T, I, U


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not np.all(np.isfinite(a)):
        return float("inf")
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def torch_forward(kind, params, x, h0=None, c0=None):
    import torch

    to_torch = convert.cudnn_lstm_to_torch if kind == "lstm" else convert.cudnn_gru_to_torch
    sd = {k: torch.tensor(np.asarray(v, np.float64)) for k, v in to_torch(params).items()}
    cls = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
    m = cls(sd["weight_ih_l0"].shape[1], sd["weight_hh_l0"].shape[1], batch_first=True).double()
    m.load_state_dict(sd)
    xt = torch.tensor(np.asarray(x, np.float64))
    state = None
    if h0 is not None:
        h = torch.tensor(np.asarray(h0, np.float64))[None]
        state = (h, torch.tensor(np.asarray(c0, np.float64))[None]) if kind == "lstm" else h
    with torch.no_grad():
        y, _ = m(xt, state)
    return y.numpy()


def main() -> int:
    why = cudnn_lstm_unavailable_reason()
    print(f"# jax {jax.__version__} on {jax.devices()[0].device_kind}; cuDNN path: {why or 'available'}")
    if why:
        print("FAIL: no cuDNN here, nothing checked")
        return 1
    failures = []

    def report(name, value):
        ok = value <= BAR
        print(f"{name:<72} {value:10.2e}  {'ok' if ok else 'FAIL'}", flush=True)
        if not ok:
            failures.append(name)

    for n, (b, t, i, u) in enumerate(SHAPES):
        keys = jax.random.split(jax.random.key(n), 8)
        x = jax.random.normal(keys[0], (b, t, i), jnp.float32)
        lengths = jax.random.randint(keys[1], (b,), 1, t + 1).at[0].set(t)
        h0 = 0.3 * jax.random.normal(keys[2], (b, u))
        c0 = 0.3 * jax.random.normal(keys[3], (b, u))
        proj = jax.random.normal(keys[4], (b, t, u))
        for go_backwards in (False, True):
            layers = {
                be: rnnjax.CuDNNLSTM(u, return_sequences=True, return_state=True, go_backwards=go_backwards, backend=be)
                for be in ("cudnn", "scan")
            }
            params = layers["scan"].init(keys[5], x)["params"]
            params = jax.tree_util.tree_map(lambda a, k=keys[6]: a + 0.1 * jax.random.normal(k, a.shape), params)

            def run(be, p, x, layers=layers, lengths=lengths, h0=h0, c0=c0):
                return layers[be].apply({"params": p}, x, seq_lengths=lengths, initial_state=[h0, c0])

            def loss(p, x, be, proj=proj):
                return jnp.sum(run(be, p, x)[0] * proj)

            got = {be: jax.jit(lambda p, x, be=be: run(be, p, x))(params, x) for be in layers}
            grads = {
                be: jax.jit(jax.grad(lambda p, x, be=be: loss(p, x, be), argnums=(0, 1)))(params, x) for be in layers
            }
            tag = f"LSTM B,T,I,U={b},{t},{i},{u} ragged go_backwards={go_backwards}"
            for k, name in enumerate(("y", "h", "c")):
                report(f"{tag} cudnn vs scan {name}", rel(got["cudnn"][k], got["scan"][k]))
            gc, gs = grads["cudnn"], grads["scan"]
            report(f"{tag} cudnn vs scan d/dx", rel(gc[1], gs[1]))
            for w in ("kernel", "recurrent_kernel", "bias"):
                report(f"{tag} cudnn vs scan d/d{w}", rel(gc[0][w], gs[0][w]))
        # full-length sequences against PyTorch float64
        cud = rnnjax.CuDNNLSTM(u, return_sequences=True, backend="cudnn")
        p = cud.init(keys[7], x)["params"]
        y = jax.jit(lambda p, x, cud=cud, h0=h0, c0=c0: cud.apply({"params": p}, x, initial_state=[h0, c0]))(p, x)
        ref = torch_forward("lstm", convert.CuDNNLSTMParams(p["kernel"], p["recurrent_kernel"], p["bias"]), x, h0, c0)
        report(f"LSTM B,T,I,U={b},{t},{i},{u} cudnn vs torch float64 y", rel(y, ref))
        gru = rnnjax.CuDNNGRU(u, return_sequences=True)
        pg = gru.init(keys[7], x)["params"]
        yg = jax.jit(lambda p, x, gru=gru, h0=h0: gru.apply({"params": p}, x, initial_state=[h0]))(pg, x)
        refg = torch_forward("gru", convert.CuDNNGRUParams(pg["kernel"], pg["recurrent_kernel"], pg["bias"]), x, h0)
        report(f"GRU  B,T,I,U={b},{t},{i},{u} (scan on GPU) vs torch float64 y", rel(yg, refg))
    print(f"# {len(failures)} failure(s)" + (": " + "; ".join(failures) if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
