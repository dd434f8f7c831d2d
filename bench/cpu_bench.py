#!/usr/bin/env python
"""rnnjax against its peers on the CPU: forward and forward+backward time, compile time, memory.

Usage (from the repository root)::

    python bench/cpu_bench.py                    # full grid (~10-15 min on 2 cores)
    python bench/cpu_bench.py --quick            # LSTM and GRU on two shapes (~1 min)
    python bench/cpu_bench.py --smoke --out /tmp/b   # seconds; what tests/test_bench.py runs
    python bench/cpu_bench.py --write-readme     # ... and put the tables into bench/README.md
    python bench/cpu_bench.py --from-json bench/results/X.json --write-readme   # re-render only
    python bench/cpu_bench.py --quick --old-rev main --peers ""   # this build against main's, interleaved

Peers, all computing the same function on the same (copied) weights, ``return_sequences=True``,
float32, sigmoid gates, GRU reset-after:

* rnnjax ``SimpleRNN`` / ``GRU`` / ``LSTM`` (and ``ConvLSTM2D``, ``CuDNNLSTM``, ``CuDNNGRU`` when
  ``rnnjax`` has them), through ``layer.apply`` under ``jax.jit``;
* Flax linen ``nn.RNN`` with ``SimpleCell`` / ``GRUCell`` / ``OptimizedLSTMCell`` / ``ConvLSTMCell``;
* Keras 3 on the JAX backend, ``layer.stateless_call`` under ``jax.jit`` (and ``jax.grad``);
* PyTorch CPU eager ``nn.RNN(nonlinearity='tanh')`` / ``nn.GRU`` / ``nn.LSTM`` (``batch_first``,
  ``torch.set_num_threads`` = usable cores); forward under ``torch.no_grad()``, backward by
  ``out.sum().backward()``.

"fwd" is one call returning the output sequence; "fwdbwd" is the gradient of ``sum(output)``
with respect to all parameters and the input (what a training step pays). Before any timing, every
peer's output and input gradient are checked against rnnjax's at the benchmark shape
(:func:`guard`): output within 1e-4, input gradient within 1e-4 relative to its largest entry.
FLOP floor: forward ``2·B·T·(I+U)·G·U`` (ConvLSTM: ``2·B·T·H·W·k²·(C+F)·4F``), forward+backward 3×
that, over the float32 matmul rate of a 2048² ``jnp.matmul`` measured at the start and the end of
the same run (the higher of the two). See bench/README.md for the method.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
GATES = {"SimpleRNN": 1, "GRU": 3, "LSTM": 4, "ConvLSTM2D": 4}
OPTIONAL_RNNJAX = {"CuDNNLSTM": "LSTM", "CuDNNGRU": "GRU"}  # extra rnnjax rows in these groups
PEERS = ("flax", "keras", "torch")
TORCH_THREADS = [None]  # set by --torch-threads; None: the usable cores
OUT_TOL = 1e-4
GRAD_TOL = 1e-4

# (batch, time, input, units)
FULL_RNN_SHAPES = [
    (32, 10, 128, 128),
    (32, 100, 128, 128),
    (32, 300, 128, 128),
    (32, 1000, 128, 128),  # time sweep
    (1, 100, 128, 128),
    (8, 100, 128, 128),
    (128, 100, 128, 128),  # batch sweep
    (32, 100, 128, 32),
    (32, 100, 128, 256),
    (32, 100, 128, 512),  # units sweep
    (1, 500, 128, 128),
    (8, 50, 64, 64),
    (128, 20, 32, 128),  # performance.md
]
QUICK_RNN_SHAPES = [(32, 100, 128, 256), (1, 500, 128, 128)]
SMOKE_RNN_SHAPES = [(2, 5, 3, 4), (2, 9, 3, 4)]
# (batch, time, height, width, channels, filters, kernel)
FULL_CONV_SHAPES = [(4, 10, 16, 16, 8, 16, 3), (8, 20, 24, 24, 4, 16, 3)]
SMOKE_CONV_SHAPES = [(1, 3, 5, 5, 2, 3, 3)]


class GuardError(AssertionError):
    """A peer does not compute the same function as rnnjax: its time would not be comparable."""


# ----------------------------------------------------------------------------- shapes, FLOPs


def shape_dict(layer: str, shape) -> dict:
    if layer == "ConvLSTM2D":
        keys = ("batch", "time", "height", "width", "channels", "filters", "kernel")
    else:
        keys = ("batch", "time", "input", "units")
    return dict(zip(keys, shape))


def model_flops(layer: str, shape) -> int:
    """Forward FLOPs of the layer's matmuls/convolutions: ``2·B·T·(I+U)·G·U`` (ConvLSTM2D:
    ``2·B·T·H·W·k²·(C+F)·4F``, 'same' padding, stride 1)."""
    if layer == "ConvLSTM2D":
        b, t, h, w, c, f, k = shape
        return 2 * b * t * h * w * k * k * (c + f) * 4 * f
    b, t, i, u = shape
    return 2 * b * t * (i + u) * GATES[layer] * u


# ----------------------------------------------------------------------------- weights


def canonical_weights(layer: str, shape, seed: int = 0) -> dict:
    """Random weights in Keras layout (kernel, recurrent_kernel, bias), non-zero biases so that a
    wrong bias mapping cannot hide. GRU is reset-after: bias ``(2, 3U)``."""
    rng = np.random.default_rng(seed)
    if layer == "ConvLSTM2D":
        _, _, _, _, c, f, k = shape
        fan_in, fan_out = k * k * c, k * k * 4 * f
        lim = np.sqrt(6.0 / (fan_in + fan_out))
        kernel = rng.uniform(-lim, lim, (k, k, c, 4 * f))
        lim_r = np.sqrt(6.0 / (k * k * f + fan_out))
        recurrent = rng.uniform(-lim_r, lim_r, (k, k, f, 4 * f))
        bias = rng.normal(0, 0.1, (4 * f,))
    else:
        _, _, i, u = shape
        g = GATES[layer]
        lim = np.sqrt(6.0 / (i + g * u))
        kernel = rng.uniform(-lim, lim, (i, g * u))
        q, r = np.linalg.qr(rng.normal(size=(g * u, u)))
        recurrent = (q * np.sign(np.diag(r))).T  # (U, G·U), orthogonal rows like Keras's init
        bias = rng.normal(0, 0.1, (2, 3 * u) if layer == "GRU" else (g * u,))
    return {
        k: np.asarray(v, np.float32) for k, v in (("kernel", kernel), ("recurrent_kernel", recurrent), ("bias", bias))
    }


def make_input(layer: str, shape, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if layer == "ConvLSTM2D":
        b, t, h, w, c, _, _ = shape
        return rng.normal(size=(b, t, h, w, c)).astype(np.float32)
    b, t, i, _ = shape
    return rng.normal(size=(b, t, i)).astype(np.float32)


def to_cudnn_layout(layer: str, w: dict) -> dict:
    """Keras canonical -> Keras 2 CuDNN layer layout (see reference/keras-semantics.md): per gate
    block ``K_cudnn[:, g] = K[:, g].T.reshape(I, U)``, ``R_cudnn[:, g] = R[:, g].T``; LSTM bias
    ``(8U,) = [b/2, b/2]``, GRU bias ``(6U,) = flatten((2, 3U))``."""
    k, r, b = w["kernel"], w["recurrent_kernel"], w["bias"]
    i, gu = k.shape
    u = r.shape[0]
    g = gu // u
    kc = np.concatenate([k[:, j * u : (j + 1) * u].T.reshape(i, u) for j in range(g)], axis=1)
    rc = np.concatenate([r[:, j * u : (j + 1) * u].T for j in range(g)], axis=1)
    bc = np.concatenate([0.5 * b, 0.5 * b]) if layer == "LSTM" else b.reshape(-1)
    return {"kernel": kc, "recurrent_kernel": rc, "bias": bc.astype(np.float32)}


def _blocks(a, n, axis=-1):
    return np.split(a, n, axis=axis)


def fill_by_name(tree, values: dict, where: str):
    """Replaces the leaves of ``tree`` named like the keys of ``values`` (shapes must match)."""
    used = set()

    def walk(node):
        if isinstance(node, dict):
            out = {}
            for key, val in node.items():
                if key in values and not isinstance(val, dict):
                    if tuple(val.shape) != tuple(values[key].shape):
                        raise GuardError(
                            f"{where}: parameter `{key}` has shape {tuple(val.shape)}, the "
                            f"benchmark's weights have {tuple(values[key].shape)}."
                        )
                    used.add(key)
                    out[key] = np.asarray(values[key], dtype=val.dtype)
                else:
                    out[key] = walk(val)
            return out
        return node

    new = walk(dict(tree))
    missing = set(values) - used
    if missing:
        raise GuardError(f"{where}: no parameter named {sorted(missing)} in the layer's variables.")
    return new


# ----------------------------------------------------------------------------- implementations


@dataclass
class Built:
    """One implementation at one shape: ``run[mode]()`` blocks until done and returns
    ``(output, input_gradient or None)`` as something ``np.asarray`` accepts."""

    name: str
    run: dict[str, Callable[[], object]]
    extract: dict[str, Callable[[object], np.ndarray]]
    compile_s: dict[str, float | None] = field(default_factory=dict)
    lower_s: dict[str, float | None] = field(default_factory=dict)
    first_call_s: dict[str, float | None] = field(default_factory=dict)
    memory: dict[str, dict | None] = field(default_factory=dict)
    first_result: dict[str, object] = field(default_factory=dict)


def build_jax(name: str, apply: Callable, params, x) -> Built:
    """AOT-compiles ``apply(params, x)`` and the gradient of its sum w.r.t. ``(params, x)``."""
    import jax
    import jax.numpy as jnp

    params = jax.device_put(params)
    x = jax.device_put(jnp.asarray(x))

    def fwd(p, xx):
        return apply(p, xx)

    def loss(p, xx):
        return jnp.sum(apply(p, xx))

    fns = {"fwd": fwd, "fwdbwd": jax.grad(loss, argnums=(0, 1))}
    built = Built(name, {}, {"fwd": np.asarray, "fwdbwd": lambda g: np.asarray(g[1])})
    for mode, f in fns.items():
        t0 = time.perf_counter()
        lowered = jax.jit(f).lower(params, x)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
        built.lower_s[mode] = t1 - t0
        built.compile_s[mode] = t2 - t0
        built.memory[mode] = _common.jax_compiled_memory(compiled)

        def call(compiled=compiled):
            return jax.block_until_ready(compiled(params, x))

        t3 = time.perf_counter()
        built.first_result[mode] = call()
        built.first_call_s[mode] = time.perf_counter() - t3
        built.run[mode] = call
    return built


OLD_BUILD = {}  # {"rev": ..., "module": rnnjax_old} with --old-rev


def rnnjax_layer(layer: str, shape, extra: dict, cls_name: str | None = None, package=None):
    import rnnjax

    cls = getattr(package or rnnjax, cls_name or layer)
    if layer == "ConvLSTM2D":
        k = shape[6]
        kw = dict(
            filters=shape[5], kernel_size=(k, k), padding="same", recurrent_activation="sigmoid", return_sequences=True
        )
    elif cls_name in OPTIONAL_RNNJAX:
        kw = dict(units=shape[3], return_sequences=True)  # CuDNN layers: tanh/sigmoid fixed
    else:
        kw = dict(units=shape[3], return_sequences=True)
        if layer in ("GRU", "LSTM"):
            kw["recurrent_activation"] = "sigmoid"
        if layer == "GRU":
            kw["reset_after"] = True
    kw.update(extra)
    return cls(**kw)


def build_rnnjax(
    layer: str,
    shape,
    w: dict,
    x,
    extra: dict,
    cls_name: str | None = None,
    old: bool = False,
    label: str | None = None,
) -> Built:
    """rnnjax's layer (``old``: the same layer of the ``--old-rev`` build, named ``rnnjax@REV``;
    ``label``: another name for the row, e.g. ``rnnjax.LSTM[onednn]``)."""
    import jax

    mod = rnnjax_layer(layer, shape, extra, cls_name, OLD_BUILD["module"] if old else None)
    variables = mod.init(jax.random.key(0), x[:1])
    values = to_cudnn_layout(layer, w) if cls_name in OPTIONAL_RNNJAX else w
    variables = fill_by_name(
        jax.tree_util.tree_map(np.asarray, variables, is_leaf=lambda a: hasattr(a, "shape")),
        values,
        f"rnnjax.{cls_name or layer}",
    )
    name = label or (f"rnnjax@{OLD_BUILD['rev']}" if old else f"rnnjax.{cls_name or layer}")
    return build_jax(name, lambda v, xx: mod.apply(v, xx), variables, x)


def build_flax(layer: str, shape, w: dict, x) -> Built:
    import flax.linen as nn
    import jax

    k, r, b = w["kernel"], w["recurrent_kernel"], w["bias"]
    if layer == "SimpleRNN":
        cell = nn.SimpleCell(shape[3])
        p = {"i": {"kernel": k, "bias": b}, "h": {"kernel": r}}
    elif layer == "LSTM":
        cell = nn.OptimizedLSTMCell(shape[3])
        p = {}
        for gate, kb, rb, bb in zip("ifgo", _blocks(k, 4), _blocks(r, 4), _blocks(b, 4)):
            p["i" + gate] = {"kernel": kb}
            p["h" + gate] = {"kernel": rb, "bias": bb}
    elif layer == "GRU":
        # Flax: r = σ(x W_ir + b_ir + h W_hr); z likewise; n = tanh(x W_in + b_in + r·(h W_hn + b_hn));
        # h' = (1 − z)·n + z·h — Keras reset_after=True with the two z / r biases summed.
        cell = nn.GRUCell(shape[3])
        kz, kr, kh = _blocks(k, 3)
        rz, rr, rh = _blocks(r, 3)
        (b0z, b0r, b0h), (b1z, b1r, b1h) = _blocks(b[0], 3), _blocks(b[1], 3)
        p = {
            "iz": {"kernel": kz, "bias": b0z + b1z},
            "ir": {"kernel": kr, "bias": b0r + b1r},
            "in": {"kernel": kh, "bias": b0h},
            "hz": {"kernel": rz},
            "hr": {"kernel": rr},
            "hn": {"kernel": rh, "bias": b1h},
        }
    elif layer == "ConvLSTM2D":
        # Flax gate order i, g, f, o and f = σ(f + 1): reorder Keras's i, f, c, o and subtract 1.
        kk = shape[6]
        cell = nn.ConvLSTMCell(shape[5], kernel_size=(kk, kk))
        ki, kf, kc, ko = _blocks(k, 4)
        ri, rf, rc, ro = _blocks(r, 4)
        bi, bf, bc, bo = _blocks(b, 4)
        p = {
            "ih": {"kernel": np.concatenate([ki, kc, kf, ko], -1), "bias": np.concatenate([bi, bc, bf - 1.0, bo])},
            "hh": {"kernel": np.concatenate([ri, rc, rf, ro], -1), "bias": np.zeros_like(b)},
        }
    else:
        raise ValueError(f"`layer`: no Flax peer for {layer!r}.")
    mod = nn.RNN(cell)
    ref = mod.init(jax.random.key(0), x[:1])
    got = jax.tree_util.tree_map(np.shape, {"params": {"cell": p}})
    want = jax.tree_util.tree_map(np.shape, ref)
    if got != want:
        raise GuardError(f"flax {layer}: parameter tree {got} differs from the module's {want}.")
    params = {"params": {"cell": jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), p)}}
    return build_jax("flax", lambda v, xx: mod.apply(v, xx), params, x)


def build_keras(layer: str, shape, w: dict, x) -> Built:
    import keras

    if layer == "ConvLSTM2D":
        kk = shape[6]
        lay = keras.layers.ConvLSTM2D(
            shape[5], (kk, kk), padding="same", recurrent_activation="sigmoid", return_sequences=True
        )
    elif layer == "SimpleRNN":
        lay = keras.layers.SimpleRNN(shape[3], return_sequences=True)
    elif layer == "GRU":
        lay = keras.layers.GRU(shape[3], recurrent_activation="sigmoid", reset_after=True, return_sequences=True)
    else:
        lay = keras.layers.LSTM(shape[3], recurrent_activation="sigmoid", return_sequences=True)
    lay.build(x.shape)
    lay.set_weights([w["kernel"], w["recurrent_kernel"], w["bias"]])
    trainable = [v.value for v in lay.trainable_variables]
    non_trainable = [v.value for v in lay.non_trainable_variables]

    def apply(tv, xx):
        out, _ = lay.stateless_call(tv, non_trainable, xx)
        return out

    return build_jax("keras", apply, trainable, x)


def build_torch(layer: str, shape, w: dict, x) -> Built:
    import torch

    torch.set_num_threads(TORCH_THREADS[0] or len(os.sched_getaffinity(0)))
    k, r, b = w["kernel"], w["recurrent_kernel"], w["bias"]
    i, u = shape[2], shape[3]
    if layer == "SimpleRNN":
        mod = torch.nn.RNN(i, u, nonlinearity="tanh", batch_first=True)
        wih, whh, bih, bhh = k.T, r.T, b, np.zeros_like(b)
    elif layer == "LSTM":
        mod = torch.nn.LSTM(i, u, batch_first=True)  # gate order i, f, g, o as Keras
        wih, whh, bih, bhh = k.T, r.T, b, np.zeros_like(b)
    elif layer == "GRU":
        mod = torch.nn.GRU(i, u, batch_first=True)  # gate order r, z, n; reset-after

        def order(a):
            z, rr, h = _blocks(a, 3)
            return np.concatenate([rr, z, h], -1)

        wih, whh, bih, bhh = order(k).T, order(r).T, order(b[0]), order(b[1])
    else:
        raise ValueError(f"`layer`: no PyTorch peer for {layer!r}.")
    with torch.no_grad():
        for name, val in (("weight_ih_l0", wih), ("weight_hh_l0", whh), ("bias_ih_l0", bih), ("bias_hh_l0", bhh)):
            getattr(mod, name).copy_(torch.from_numpy(np.ascontiguousarray(val, np.float32)))
    xt = torch.from_numpy(np.ascontiguousarray(x))
    xg = xt.clone().requires_grad_(True)
    params = list(mod.parameters())

    def fwd():
        with torch.no_grad():
            return mod(xt)[0]

    def fwdbwd():
        for p in params:
            p.grad = None
        xg.grad = None
        out, _ = mod(xg)
        out.sum().backward()
        return xg.grad

    built = Built(
        "torch",
        {"fwd": fwd, "fwdbwd": fwdbwd},
        {"fwd": lambda o: o.detach().numpy(), "fwdbwd": lambda g: g.detach().numpy().copy()},
    )
    for mode, f in built.run.items():
        t0 = time.perf_counter()
        built.first_result[mode] = f()
        built.first_call_s[mode] = time.perf_counter() - t0
        built.compile_s[mode] = None
        built.memory[mode] = _common.torch_peak_memory(f)
    return built


# ----------------------------------------------------------------------------- guard


def guard(ref: Built, other: Built) -> dict:
    """Asserts ``other`` computes rnnjax's function: outputs within ``OUT_TOL`` and input
    gradients within ``GRAD_TOL`` times the largest gradient entry (at least 1)."""
    out_ref = np.asarray(ref.extract["fwd"](ref.first_result["fwd"]))
    out = np.asarray(other.extract["fwd"](other.first_result["fwd"]))
    g_ref = np.asarray(ref.extract["fwdbwd"](ref.first_result["fwdbwd"]))
    g = np.asarray(other.extract["fwdbwd"](other.first_result["fwdbwd"]))
    if out.shape != out_ref.shape or g.shape != g_ref.shape:
        raise GuardError(
            f"{other.name}: output / input-gradient shapes {out.shape} / {g.shape}, rnnjax's "
            f"{out_ref.shape} / {g_ref.shape}."
        )
    d_out = float(np.max(np.abs(out - out_ref)))
    scale = max(1.0, float(np.max(np.abs(g_ref))))
    d_grad = float(np.max(np.abs(g - g_ref))) / scale
    if not (d_out <= OUT_TOL and d_grad <= GRAD_TOL):
        raise GuardError(
            f"{other.name} disagrees with {ref.name}: max |Δoutput| = {d_out:.3g} (tolerance "
            f"{OUT_TOL}), max |Δ∂x| / scale = {d_grad:.3g} (tolerance {GRAD_TOL})."
        )
    return {"max_abs_out_diff": d_out, "max_rel_dx_diff": d_grad}


# ----------------------------------------------------------------------------- one layer group


def peers_for(layer: str, wanted) -> list[str]:
    have = {"SimpleRNN": PEERS, "GRU": PEERS, "LSTM": PEERS, "ConvLSTM2D": ("flax", "keras")}[layer]
    return [p for p in have if p in wanted]


def bench_group(layer: str, shape, args, rate_gflops: float, problems: list) -> list[dict]:
    """Builds rnnjax and the peers at one shape, guards them, times them interleaved."""
    import rnnjax

    w = canonical_weights(layer, shape)
    x = make_input(layer, shape)
    where = f"{layer} {shape}"
    ref_kw = {**args.rnnjax_kw, **({"backend": args.backends[0]} if args.backends and layer in ("GRU", "LSTM") else {})}
    ref = build_rnnjax(layer, shape, w, x, ref_kw)  # failures of rnnjax itself propagate
    built = [ref]
    guards = {ref.name: {"max_abs_out_diff": 0.0, "max_rel_dx_diff": 0.0}}
    extra = [
        c for c, grp in OPTIONAL_RNNJAX.items() if grp == layer and hasattr(rnnjax, c) and not args.no_cudnn_layers
    ]
    builders = [(f"rnnjax.{c}", lambda c=c: build_rnnjax(layer, shape, w, x, {}, c), True) for c in extra]
    if layer in ("GRU", "LSTM"):  # --backends: the same layer on each further backend, interleaved
        builders += [
            (
                f"rnnjax.{layer}[{b}]",
                lambda b=b: build_rnnjax(
                    layer, shape, w, x, {**args.rnnjax_kw, "backend": b}, label=f"rnnjax.{layer}[{b}]"
                ),
                False,
            )
            for b in args.backends[1:]
        ]
    if OLD_BUILD:  # the same layer and options in the old build: an A/B of two builds, interleaved
        builders.append(
            (f"rnnjax@{OLD_BUILD['rev']}", lambda: build_rnnjax(layer, shape, w, x, args.rnnjax_kw, old=True), False)
        )
    builders += [
        (p, lambda p=p: globals()[f"build_{p}"](layer, shape, w, x), False) for p in peers_for(layer, args.peers)
    ]
    for name, make, optional in builders:
        try:
            b = make()
            guards[b.name] = guard(ref, b)
            built.append(b)
        except Exception as exc:  # record, show, and leave the peer out of the timing
            msg = f"{where} {name}: {type(exc).__name__}: {exc}"
            print("!! " + msg, file=sys.stderr)
            problems.append({"layer": layer, "shape": list(shape), "impl": name, "error": msg, "optional": optional})
            if args.strict and not optional:
                raise
    flops = model_flops(layer, shape)
    rows = []
    for mode in ("fwd", "fwdbwd"):
        timed = _common.interleaved_medians(
            {b.name: b.run[mode] for b in built},
            target_s=args.target_seconds,
            min_reps=args.min_reps,
            max_reps=args.max_reps,
        )
        mode_flops = flops * (3 if mode == "fwdbwd" else 1)
        floor_s = mode_flops / (rate_gflops * 1e9)
        ref_t = timed[ref.name]["median_s"]
        for b in built:
            t = timed[b.name]
            first = b.first_call_s.get(mode)
            rows.append(
                {
                    "layer": layer,
                    "shape": list(shape),
                    "shape_dict": shape_dict(layer, shape),
                    "impl": b.name,
                    "mode": mode,
                    **t,
                    "ratio_to_rnnjax": t["median_s"] / ref_t,
                    "flops": mode_flops,
                    "floor_s": floor_s,
                    "times_floor": t["median_s"] / floor_s,
                    "achieved_gflops": mode_flops / t["median_s"] / 1e9,
                    "compile_s": b.compile_s.get(mode),
                    "lower_s": b.lower_s.get(mode),
                    "first_call_s": first,
                    "first_call_minus_median_s": None if first is None else first - t["median_s"],
                    "memory": b.memory.get(mode),
                    "guard": guards[b.name],
                }
            )
        line = "  ".join(f"{b.name}={timed[b.name]['median_s'] * 1e3:.2f}ms" for b in built)
        print(f"{layer:10s} {','.join(map(str, shape)):>20s} {mode:6s} floor={floor_s * 1e3:.2f}ms  {line}", flush=True)
    return rows


# ----------------------------------------------------------------------------- tables and plots

PEER_LABEL = {"flax": "Flax linen", "keras": "Keras 3 (JAX)", "torch": "PyTorch CPU"}


def _label(impl: str) -> str:
    return PEER_LABEL.get(impl, impl)


def markdown(payload: dict) -> str:
    m = payload["machine"]
    mm = payload["matmul"]
    v = m["versions"]
    load = max([m["loadavg_start"][0]] + payload.get("loadavg_end", [0.0])[:1])
    busy = load > 0.5 * m["usable_cpus"]
    lines = [
        *(
            [
                f"**Busy machine** (1-min load average up to {load:.1f} on {m['usable_cpus']} CPUs): these numbers "
                "are noisy, PyTorch's thread pool most of all; rerun on a quiet machine.",
                "",
            ]
            if busy
            else []
        ),
        f"Machine `{m['tag']}`: {m['cpu_model']}, {m['usable_cpus']} usable CPUs "
        f"(flags {', '.join(m['cpu_flags']) or '?'}), load average at start "
        f"{', '.join(f'{a:.2f}' for a in m['loadavg_start'])}, at end "
        f"{', '.join(f'{a:.2f}' for a in payload.get('loadavg_end', []))}; {m['date']}.",
        f"jax {v.get('jax')}, flax {v.get('flax')}, keras {v.get('keras')}, torch {v.get('torch')}, "
        f"rnnjax {v.get('rnnjax')}; mode `{payload['config']['mode']}`"
        + (f", rnnjax options {payload['config']['rnnjax_kw']}" if payload["config"].get("rnnjax_kw") else "")
        + ".",
        f"float32 matmul {mm['n']}² via XLA: {mm['gflops']:.0f} GFLOP/s (start {mm['start']['gflops']:.0f}, end "
        f"{mm['end']['gflops']:.0f}); the FLOP floor below uses this rate.",
        "",
        "Times in ms, median, `forward / forward+backward`. `×floor` = rnnjax time / FLOP floor. "
        "Peer cells: time and, in brackets, peer time / rnnjax time (above 1: rnnjax is faster).",
    ]
    rows = payload["results"]
    for layer in dict.fromkeys(r["layer"] for r in rows):
        lr = [r for r in rows if r["layer"] == layer]
        impls = list(dict.fromkeys(r["impl"] for r in lr))
        ref = next(i for i in impls if i == f"rnnjax.{layer}")
        others = [i for i in impls if i != ref]
        shapes = list(dict.fromkeys(tuple(r["shape"]) for r in lr))
        key = "B,T,H,W,C,F,k" if layer == "ConvLSTM2D" else "B,T,I,U"
        get = {(tuple(r["shape"]), r["impl"], r["mode"]): r for r in lr}
        lines += [
            "",
            f"#### {layer}",
            "",
            f"| {key} | floor | {ref} | ×floor | " + " | ".join(_label(o) for o in others) + " |",
            "|---" * (4 + len(others)) + "|",
        ]
        for s in shapes:
            f, b = get.get((s, ref, "fwd")), get.get((s, ref, "fwdbwd"))
            cells = [
                ",".join(map(str, s)),
                f"{_common.fmt_ms(f['floor_s'])} / {_common.fmt_ms(b['floor_s'])}",
                f"**{_common.fmt_ms(f['median_s'])} / {_common.fmt_ms(b['median_s'])}**",
                f"{f['times_floor']:.1f} / {b['times_floor']:.1f}",
            ]
            for o in others:
                of, ob = get.get((s, o, "fwd")), get.get((s, o, "fwdbwd"))
                if of is None or ob is None:
                    cells.append("–")
                else:
                    cells.append(
                        f"{_common.fmt_ms(of['median_s'])} / {_common.fmt_ms(ob['median_s'])} "
                        f"({of['ratio_to_rnnjax']:.2f}× / {ob['ratio_to_rnnjax']:.2f}×)"
                    )
            lines.append("| " + " | ".join(cells) + " |")
        # compile time and memory
        lines += [
            "",
            f"{layer}: compile seconds (trace+lower+compile, `fwd / fwdbwd`) and peak memory "
            "(`fwd / fwdbwd`; JAX: XLA temp+output, PyTorch: allocator trace)",
            "",
            f"| {key} | " + " | ".join(f"{_label(i)} compile | {_label(i)} memory" for i in impls) + " |",
            "|---" * (1 + 2 * len(impls)) + "|",
        ]
        for s in shapes:
            cells = [",".join(map(str, s))]
            for i in impls:
                f, b = get.get((s, i, "fwd")), get.get((s, i, "fwdbwd"))
                if f is None or b is None:
                    cells += ["–", "–"]
                    continue
                comp = "–" if f["compile_s"] is None else f"{f['compile_s']:.2f} / {b['compile_s']:.2f}"
                mem = " / ".join(_common.fmt_bytes((r["memory"] or {}).get("peak_bytes")) for r in (f, b))
                cells += [comp, mem]
            lines.append("| " + " | ".join(cells) + " |")
    if payload.get("problems"):
        lines += ["", "Left out of the timing (failed to build or disagreed with rnnjax):", ""]
        lines += [f"- {p['error']}" for p in payload["problems"]]
    return "\n".join(lines) + "\n"


def backends_markdown(payload: dict) -> str:
    """With ``--backends`` and the PyTorch peer: one row per layer, shape and mode with each
    backend's median and the speed ratios PyTorch time / backend time and scan time / backend time
    (above 1: that backend is faster), then their medians over the shapes."""
    rows = payload["results"]
    backends = payload["config"].get("backends") or []
    get = {(r["layer"], tuple(r["shape"]), r["impl"], r["mode"]): r["median_s"] for r in rows}
    lines = [
        "| layer | B,T,I,U | mode | "
        + " | ".join(f"{b} ms" for b in backends)
        + " | PyTorch ms | "
        + " | ".join(f"PyTorch / {b}" for b in backends)
        + " | "
        + " | ".join(f"scan / {b}" for b in backends if b != "scan")
        + " |",
        "|---" * (4 + 2 * len(backends) + len([b for b in backends if b != "scan"])) + "|",
    ]
    ratios: dict[tuple, list] = {}
    for layer, shape, mode in dict.fromkeys((r["layer"], tuple(r["shape"]), r["mode"]) for r in rows):
        times = {
            b: get.get((layer, shape, f"rnnjax.{layer}" if i == 0 else f"rnnjax.{layer}[{b}]", mode))
            for i, b in enumerate(backends)
        }
        torch_t = get.get((layer, shape, "torch", mode))
        if torch_t is None or None in times.values():
            continue
        cells = [layer, ",".join(map(str, shape)), mode] + [f"{t * 1e3:.3g}" for t in times.values()]
        cells.append(f"{torch_t * 1e3:.3g}")
        for b, t in times.items():
            ratios.setdefault((layer, mode, "torch", b), []).append(torch_t / t)
            cells.append(f"{torch_t / t:.2f}×")
        for b, t in times.items():
            if b != "scan" and "scan" in times:
                ratios.setdefault((layer, mode, "scan", b), []).append(times["scan"] / t)
                cells.append(f"{times['scan'] / t:.2f}×")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| layer | mode | " + " | ".join(f"median PyTorch / {b} (min)" for b in backends) + " |",
        "|---" * (2 + len(backends)) + "|",
    ]
    for layer, mode in dict.fromkeys((k[0], k[1]) for k in ratios):
        cells = [
            f"{np.median(ratios[(layer, mode, 'torch', b)]):.2f}× ({min(ratios[(layer, mode, 'torch', b)]):.2f}×)"
            for b in backends
        ]
        lines.append(f"| {layer} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _sweep(shapes, vary: int):
    """The largest set of shapes that differ only in position ``vary`` (at least 2), sorted."""
    groups: dict[tuple, list] = {}
    for s in shapes:
        groups.setdefault(tuple(v for j, v in enumerate(s) if j != vary), []).append(s)
    best = max(groups.values(), key=len, default=[])
    return sorted(best, key=lambda s: s[vary]) if len(best) >= 2 else []


def plot(payload: dict, stem: str) -> list[str]:
    """One PNG per recurrent layer: time against sequence length and batch size, fwd and fwdbwd."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    written = []
    rows = payload["results"]
    for layer in dict.fromkeys(r["layer"] for r in rows):
        if layer == "ConvLSTM2D":
            continue
        lr = [r for r in rows if r["layer"] == layer]
        shapes = list(dict.fromkeys(tuple(r["shape"]) for r in lr))
        sweeps = [("sequence length T", 1, _sweep(shapes, 1)), ("batch size B", 0, _sweep(shapes, 0))]
        if not any(s for _, _, s in sweeps):
            continue
        fig, axes = plt.subplots(2, 2, figsize=(11, 8), squeeze=False)
        impls = list(dict.fromkeys(r["impl"] for r in lr))
        get = {(tuple(r["shape"]), r["impl"], r["mode"]): r for r in lr}
        for col, (xlabel, pos, sweep) in enumerate(sweeps):
            for row, mode in enumerate(("fwd", "fwdbwd")):
                ax = axes[row][col]
                if not sweep:
                    ax.text(0.5, 0.5, "no sweep in this grid", ha="center", va="center", transform=ax.transAxes)
                    ax.set_axis_off()
                    continue
                xs = [s[pos] for s in sweep]
                for impl in impls:
                    ys = [get[(s, impl, mode)]["median_s"] * 1e3 if (s, impl, mode) in get else np.nan for s in sweep]
                    ax.plot(xs, ys, marker="o", lw=2.5 if impl.startswith("rnnjax") else 1.5, label=_label(impl))
                ref = f"rnnjax.{layer}"
                floor = [get[(s, ref, mode)]["floor_s"] * 1e3 for s in sweep]
                ax.plot(xs, floor, ls=":", color="gray", label="FLOP floor")
                fixed = ", ".join(f"{n}={v}" for n, v, j in zip("BTIU", sweep[0], range(4)) if j != pos)
                ax.set(
                    xscale="log",
                    yscale="log",
                    xlabel=xlabel,
                    ylabel="ms (median)",
                    title=f"{layer} {'forward' if mode == 'fwd' else 'forward+backward'} ({fixed})",
                )
                ax.set_xticks(xs, [str(v) for v in xs])
                ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(fontsize=8)
        fig.suptitle(
            f"{layer} on {payload['machine']['cpu_model']} ({payload['machine']['usable_cpus']} CPUs)", fontsize=10
        )
        fig.tight_layout()
        path = f"{stem}-{layer}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


# ----------------------------------------------------------------------------- main


def _parse_kw(items) -> dict:
    out = {}
    for item in items or ():
        if "=" not in item:
            raise SystemExit(f"--rnnjax-kw: expected KEY=VALUE, got {item!r}.")
        key, val = item.split("=", 1)
        try:
            out[key] = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            out[key] = val
    return out


def _parse_shapes(text: str):
    try:
        return [tuple(int(v) for v in part.split(",")) for part in text.split(";") if part.strip()]
    except ValueError:
        raise SystemExit(f"--shapes: expected 'B,T,I,U;B,T,I,U', got {text!r}.") from None


def plan(args) -> list[tuple]:
    """``[(layer, shape), ...]`` in run order."""
    import rnnjax

    if args.smoke and not (args.layers or args.shapes):  # ~20 compilations: LSTM time sweep, one GRU
        return [("LSTM", s) for s in SMOKE_RNN_SHAPES] + [("GRU", SMOKE_RNN_SHAPES[0])]
    if args.smoke:
        rnn, conv, layers = SMOKE_RNN_SHAPES, SMOKE_CONV_SHAPES, ["SimpleRNN", "GRU", "LSTM", "ConvLSTM2D"]
    elif args.quick:
        rnn, conv, layers = QUICK_RNN_SHAPES, [], ["LSTM", "GRU"]
    else:
        rnn, conv, layers = FULL_RNN_SHAPES, FULL_CONV_SHAPES, ["SimpleRNN", "GRU", "LSTM", "ConvLSTM2D"]
    if args.shapes:
        rnn = _parse_shapes(args.shapes)
    if args.layers:
        layers = [s.strip() for s in args.layers.split(",")]
        bad = [s for s in layers if s not in GATES]
        if bad:
            raise SystemExit(f"--layers: unknown {bad}; expected some of {list(GATES)}.")
    if "ConvLSTM2D" in layers and not hasattr(rnnjax, "ConvLSTM2D"):
        print("rnnjax has no ConvLSTM2D yet: skipped.", file=sys.stderr)
        layers = [s for s in layers if s != "ConvLSTM2D"]
    return [(layer, s) for layer in layers for s in (conv if layer == "ConvLSTM2D" else rnn)]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="LSTM and GRU at (32,100,128,256) and (1,500,128,128)")
    g.add_argument("--smoke", action="store_true", help="tiny shapes, 2-3 reps: checks the harness, not speed")
    p.add_argument("--layers", help="comma list among SimpleRNN,GRU,LSTM,ConvLSTM2D")
    p.add_argument("--shapes", help="recurrent shapes 'B,T,I,U;B,T,I,U' (replaces the grid's)")
    p.add_argument("--peers", default=",".join(PEERS), help="comma list among flax,keras,torch")
    p.add_argument(
        "--rnnjax-kw",
        action="append",
        metavar="KEY=VALUE",
        help="extra constructor argument for the rnnjax layers (repeatable), e.g. scan_unroll=4",
    )
    p.add_argument(
        "--backends",
        default="",
        help="comma list of rnnjax backends for GRU/LSTM, e.g. 'scan,onednn': the first is the reference "
        "row, each further one its own row rnnjax.LSTM[backend] (default: the layers' default)",
    )
    p.add_argument(
        "--no-cudnn-layers",
        action="store_true",
        help="leave out rnnjax.CuDNNLSTM / CuDNNGRU (always left out in --smoke)",
    )
    p.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: usable cores)")
    p.add_argument("--target-seconds", type=float, default=None, help="seconds per measurement for the slowest peer")
    p.add_argument("--min-reps", type=int, default=None)
    p.add_argument("--max-reps", type=int, default=None)
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for the JSON and PNG files")
    p.add_argument("--tag", help="machine tag in file names (default: host name)")
    p.add_argument(
        "--write-readme",
        nargs="?",
        const=os.path.join(HERE, "README.md"),
        metavar="PATH",
        help="rewrite the results section of bench/README.md (or PATH)",
    )
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--from-json", metavar="FILE", help="re-render table / plots / README from a result file")
    p.add_argument("--strict", action="store_true", help="stop at the first peer that fails to build or disagrees")
    p.add_argument(
        "--old-rev",
        metavar="REV",
        help="also time the same rnnjax layers of git revision REV (as rnnjax@REV), interleaved",
    )
    args = p.parse_args(argv)
    args.peers = [s.strip() for s in args.peers.split(",") if s.strip()]
    args.rnnjax_kw = _parse_kw(args.rnnjax_kw)
    args.backends = [s.strip() for s in args.backends.split(",") if s.strip()]
    TORCH_THREADS[0] = args.torch_threads
    args.no_cudnn_layers = args.no_cudnn_layers or args.smoke
    defaults = (0.02, 2, 3) if args.smoke else (0.5, 5, 200)
    for name, val in zip(("target_seconds", "min_reps", "max_reps"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, val)

    if args.from_json:
        import json

        with open(args.from_json) as fh:
            payload = json.load(fh)
        stem = os.path.splitext(args.from_json)[0]
    elif args.old_rev:
        with tempfile.TemporaryDirectory() as folder:
            _common.export_old(args.old_rev, folder)
            sys.path.insert(0, folder)
            import rnnjax_old

            OLD_BUILD.update(rev=args.old_rev, module=rnnjax_old)
            payload, stem = run(args)
    else:
        payload, stem = run(args)
    table = markdown(payload)
    print("\n" + table)
    if len(payload["config"].get("backends") or []) > 1 and "torch" in payload["config"].get("peers", []):
        print("\n" + backends_markdown(payload))
    if not args.no_plot:
        for path in plot(payload, stem):
            print("plot:", path)
    if args.write_readme:
        _common.replace_between_markers(args.write_readme, table)
        print("README results section rewritten:", args.write_readme)
    return payload


def run(args):
    t_start = time.perf_counter()
    machine = _common.machine_record(args.tag)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    work = plan(args)
    print(
        f"{machine['cpu_model']}, {machine['usable_cpus']} CPUs, load {machine['loadavg_start']}; "
        f"{len(work)} layer/shape groups ({mode})",
        flush=True,
    )
    mm_start = _common.matmul_gflops(n=256 if args.smoke else 2048, reps=3 if args.smoke else 15)
    print(f"float32 matmul: {mm_start['gflops']:.1f} GFLOP/s", flush=True)
    rows, problems = [], []
    group_seconds = []
    for layer, shape in work:
        t0 = time.perf_counter()
        rows += bench_group(layer, shape, args, mm_start["gflops"], problems)
        group_seconds.append({"layer": layer, "shape": list(shape), "seconds": time.perf_counter() - t0})
    mm_end = _common.matmul_gflops(n=256 if args.smoke else 2048, reps=3 if args.smoke else 15)
    rate = max(mm_start["gflops"], mm_end["gflops"])
    for r in rows:  # floors with the better of the two matmul measurements
        r["floor_s"] = r["flops"] / (rate * 1e9)
        r["times_floor"] = r["median_s"] / r["floor_s"]
    payload = {
        "machine": machine,
        "loadavg_end": list(os.getloadavg()),
        "matmul": {"n": mm_start["n"], "gflops": rate, "start": mm_start, "end": mm_end},
        "config": {
            "mode": mode,
            "peers": args.peers,
            "rnnjax_kw": args.rnnjax_kw,
            "old_rev": args.old_rev,
            "backends": args.backends,
            "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")},
            "torch_threads": args.torch_threads or machine["usable_cpus"],
            "target_seconds": args.target_seconds,
            "min_reps": args.min_reps,
            "max_reps": args.max_reps,
            "tolerances": {"output": OUT_TOL, "input_gradient_relative": GRAD_TOL},
        },
        "wall_seconds": time.perf_counter() - t_start,
        "group_seconds": group_seconds,
        "results": rows,
        "problems": problems,
    }
    date = datetime.date.today().isoformat()
    suffix = "" if mode == "full" else f"-{mode}"
    stem = os.path.join(args.out, f"{date}-{_common.safe_tag(machine['tag'])}{suffix}")
    _common.write_json(stem + ".json", payload)
    print(f"results: {stem}.json ({payload['wall_seconds']:.0f} s)", flush=True)
    return payload, stem


if __name__ == "__main__":
    try:
        main()
    except GuardError:
        traceback.print_exc()
        sys.exit(2)
