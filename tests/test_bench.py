"""The CPU benchmark harness (bench/cpu_bench.py) still runs, and its correctness guard bites.

The smoke run uses tiny shapes and 2-3 repetitions: it checks the harness (every peer builds,
agrees with rnnjax on copied weights, is timed, and lands in the JSON / table / README / plot),
not speed.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from bench_util import load_bench_script
from torch_ref import torch_or_skip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench", "cpu_bench.py")


def _load_bench():
    return load_bench_script("cpu_bench.py", "cpu_bench")


def test_smoke_run_writes_consistent_results(tmp_path):
    torch_or_skip()  # PyTorch is one of the peers
    readme = tmp_path / "README.md"
    readme.write_text("head\n<!-- results:start -->\nold\n<!-- results:end -->\ntail\n")
    env = dict(os.environ, KERAS_BACKEND="jax")
    proc = subprocess.run(
        [
            sys.executable,
            BENCH,
            "--smoke",
            "--strict",
            "--out",
            str(tmp_path),
            "--tag",
            "test",
            "--write-readme",
            str(readme),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p for p in os.listdir(tmp_path) if p.endswith(".json"))
    assert len(files) == 1 and files[0].endswith("-test-smoke.json"), files
    payload = json.loads((tmp_path / files[0]).read_text())

    assert payload["machine"]["cpu_model"] and payload["machine"]["versions"]["jax"]
    assert payload["matmul"]["gflops"] > 0
    assert [p for p in payload["problems"] if not p["optional"]] == []
    rows = payload["results"]
    groups = {(r["layer"], tuple(r["shape"])) for r in rows}
    assert groups == {("LSTM", (2, 5, 3, 4)), ("LSTM", (2, 9, 3, 4)), ("GRU", (2, 5, 3, 4))}
    for layer, shape in groups:
        got = {(r["impl"], r["mode"]): r for r in rows if r["layer"] == layer and tuple(r["shape"]) == shape}
        for impl in (f"rnnjax.{layer}", "flax", "keras", "torch"):
            for mode in ("fwd", "fwdbwd"):
                assert (impl, mode) in got, (layer, shape, impl, mode)
        b, t, i, u = shape
        gates = {"LSTM": 4, "GRU": 3}[layer]
        for (impl, mode), r in got.items():
            ref = got[(f"rnnjax.{layer}", mode)]
            assert r["median_s"] > 0 and r["reps"] >= 2
            assert r["ratio_to_rnnjax"] == pytest.approx(r["median_s"] / ref["median_s"])
            fwd_flops = 2 * b * t * (i + u) * gates * u
            assert r["flops"] == fwd_flops * (3 if mode == "fwdbwd" else 1)
            assert r["floor_s"] == pytest.approx(r["flops"] / (payload["matmul"]["gflops"] * 1e9))
            assert r["guard"]["max_abs_out_diff"] <= 1e-4 and r["guard"]["max_rel_dx_diff"] <= 1e-4
            mem = r["memory"]["peak_bytes"]
            out_bytes = b * t * u * 4
            assert mem >= out_bytes, (impl, mode, mem)  # the output sequence is part of the peak
            if impl != "torch":
                assert r["compile_s"] > 0
                if mode == "fwd":
                    assert r["memory"]["output_bytes"] == out_bytes

    text = readme.read_text()
    assert text.startswith("head\n<!-- results:start -->\n") and text.endswith("<!-- results:end -->\ntail\n")
    assert "old" not in text and "#### LSTM" in text and "#### GRU" in text and "Keras 3 (JAX)" in text
    assert os.path.exists(str(tmp_path / files[0]).replace(".json", "-LSTM.png"))


def test_guard_catches_a_wrong_weight_mapping():
    """The same torch GRU passes the guard with the right gate order and fails with z, r swapped."""
    torch_or_skip()  # PyTorch is one of the peers
    bench = _load_bench()
    shape = (2, 4, 3, 5)
    w = bench.canonical_weights("GRU", shape)
    x = bench.make_input("GRU", shape)
    ref = bench.build_rnnjax("GRU", shape, w, x, {})
    ok = bench.guard(ref, bench.build_torch("GRU", shape, w, x))
    assert ok["max_abs_out_diff"] <= 1e-4

    def swap_zr(a):
        z, r, h = np.split(a, 3, axis=-1)
        return np.concatenate([r, z, h], axis=-1)

    wrong = {
        "kernel": swap_zr(w["kernel"]),
        "recurrent_kernel": swap_zr(w["recurrent_kernel"]),
        "bias": swap_zr(w["bias"]),
    }
    with pytest.raises(bench.GuardError, match="disagrees"):
        bench.guard(ref, bench.build_torch("GRU", shape, wrong, x))


def test_old_rev_times_the_old_build_beside_the_new(tmp_path):
    """``--old-rev``: the same layer of another git revision is built (as ``rnnjax@REV``),
    guarded against this build and timed interleaved with it (issue 16's speed check)."""
    if subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: --old-rev needs the repository's history")
    env = dict(os.environ, KERAS_BACKEND="jax")
    proc = subprocess.run(
        [
            sys.executable,
            BENCH,
            "--smoke",
            "--strict",
            "--layers",
            "LSTM",
            "--shapes",
            "2,5,3,4",
            "--peers",
            "",
            "--old-rev",
            "HEAD",
            "--out",
            str(tmp_path),
            "--tag",
            "ab",
            "--no-plot",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = tmp_path.glob("*-ab-smoke.json")
    payload = json.loads(path.read_text())
    assert payload["config"]["old_rev"] == "HEAD" and payload["problems"] == []
    got = {(r["impl"], r["mode"]): r for r in payload["results"]}
    assert set(got) == {(impl, mode) for impl in ("rnnjax.LSTM", "rnnjax@HEAD") for mode in ("fwd", "fwdbwd")}
    for mode in ("fwd", "fwdbwd"):
        old = got[("rnnjax@HEAD", mode)]
        assert old["guard"]["max_abs_out_diff"] <= 1e-4 and old["guard"]["max_rel_dx_diff"] <= 1e-4
        assert old["ratio_to_rnnjax"] == pytest.approx(old["median_s"] / got[("rnnjax.LSTM", mode)]["median_s"])
    assert "| rnnjax@HEAD |" in proc.stdout


def test_resets_bench_runs_and_its_guard_bites(monkeypatch):
    """bench/resets.py (the cost of ``reset``, and Flax's hand-written reset cell as the peer): a
    smoke run times every variant; a peer whose cell ignores the restarts fails the guard."""
    mod = load_bench_script("resets.py", "resets_bench")
    rows = mod.main(["--smoke", "--shapes", "2,9,3,4", "--layer", "GRU"])
    assert [r["mode"] for r in rows] == ["fwd", "fwdbwd"]
    for r in rows:
        assert all(r[v]["median_s"] > 0 for v in ("rnnjax", "rnnjax+reset", "flax+reset"))
    right = mod.flax_weights

    def swapped(layer, params, units):  # the peer's input and forget gates exchanged
        cell = right(layer, params, units)
        return {**cell, "ii": cell["if"], "if": cell["ii"]}

    monkeypatch.setattr(mod, "flax_weights", swapped)
    with pytest.raises(AssertionError):
        mod.run_shape("LSTM", (2, 9, 3, 4), 0.01)
