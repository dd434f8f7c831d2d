"""Shared pieces of the rnnjax benchmarks: machine record, interleaved timing, memory, output.

Nothing here knows about recurrent layers; ``cpu_bench.py`` builds the callables it times.

Timing method (:func:`interleaved_medians`): every callable is warmed up first (compilation is
never inside a timed sample). Then rounds are run; in each round every callable runs once, in a
fresh random order (seeded), so slow drifts of the machine hit all peers alike and no callable
always runs right after the same one. (A rotating order kept each callable's predecessor fixed,
and PyTorch's OpenMP threads keep spinning for a while after its call, slowing whatever runs
next: the callable after PyTorch, rnnjax's, lost up to 60 % — GRU training at (1, 100, 128, 128)
measured 2.26 ms, the same computation as rnnjax.CuDNNGRU 1.42 ms.) A callable much
faster than the slowest one runs ``k`` times back to back inside its slot, so that each slot
costs about the same; one sample is the mean of those ``k`` calls. The number of rounds is chosen
so that the slowest callable gets about ``target_s`` seconds in total, at least ``min_reps`` and
at most ``max_reps`` rounds. The reported time is the median of the samples (with the
interquartile range and the minimum for judging noise).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import socket
import subprocess
import time
from collections.abc import Callable

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def export_old(rev: str, folder: str) -> None:
    """Writes ``rnnjax/`` as of git revision ``rev`` into ``folder`` as the package ``rnnjax_old``
    (every ``rnnjax`` name in its sources renamed), so an old and a new build import side by side."""
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev, "rnnjax"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    os.rename(os.path.join(folder, "rnnjax"), os.path.join(folder, "rnnjax_old"))
    for dirpath, _, files in os.walk(os.path.join(folder, "rnnjax_old")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                with open(path) as fh:
                    src = fh.read()
                with open(path, "w") as fh:
                    fh.write(re.sub(r"\brnnjax\b", "rnnjax_old", src))


# ----------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list:
    """The SIMD flags that matter for float32 matmul speed (avx2, avx512*, amx*)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(
                        f for f in flags if re.match(r"(avx2|avx512f|avx512_bf16|avx512_vnni|amx\w*|fma)$", f)
                    )
    except OSError:
        pass
    return []


def versions() -> dict[str, str | None]:
    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "keras", "torch", "numpy", "rnnjax"):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "?")
        except Exception:  # a peer that is not installed is recorded as missing
            out[name] = None
    return out


def machine_record(tag: str | None = None) -> dict:
    """CPU model, cores, load, library versions, date: stored with every result file."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "tag": tag or socket.gethostname(),
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "loadavg_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "versions": versions(),
        "env": {k: os.environ.get(k) for k in ("XLA_FLAGS", "OMP_NUM_THREADS", "KERAS_BACKEND") if os.environ.get(k)},
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def safe_tag(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "machine"


# ----------------------------------------------------------------------------- timing


def _time_once(fn: Callable[[], object], k: int) -> float:
    t0 = time.perf_counter()
    for _ in range(k):
        fn()
    return (time.perf_counter() - t0) / k


def interleaved_medians(
    fns: dict[str, Callable[[], object]],
    *,
    target_s: float = 0.75,
    min_reps: int = 5,
    max_reps: int = 200,
    max_inner: int = 64,
    warmup: int = 1,
) -> dict[str, dict]:
    """Median seconds per call of each ``fn`` (each must block until its result is ready).

    Returns ``{name: {"median_s", "iqr_s", "min_s", "reps", "inner"}}``; see the module docstring.
    """
    names = list(fns)
    if not names:
        return {}
    for name in names:  # warm-up (compilation happened before; this settles caches / allocators)
        for _ in range(warmup):
            fns[name]()
    probe = {name: _time_once(fns[name], 1) for name in names}
    slowest = max(probe.values())
    inner = {n: int(min(max_inner, max(1, round(slowest / max(probe[n], 1e-9))))) for n in names}
    slot = max(slowest, 1e-6)
    reps = int(min(max_reps, max(min_reps, math.ceil(target_s / slot))))
    samples = {n: [] for n in names}
    rng = np.random.default_rng(0)
    for _ in range(reps):
        for i in rng.permutation(len(names)):
            samples[names[i]].append(_time_once(fns[names[i]], inner[names[i]]))
    out = {}
    for name in names:
        s = np.asarray(samples[name])
        q1, q3 = np.percentile(s, [25, 75])
        out[name] = {
            "median_s": float(np.median(s)),
            "iqr_s": float(q3 - q1),
            "min_s": float(s.min()),
            "reps": reps,
            "inner": inner[name],
        }
    return out


def matmul_gflops(n: int = 2048, reps: int = 15) -> dict:
    """Float32 ``(n, n) @ (n, n)`` rate through XLA on this machine (median of ``reps``)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    return {
        "n": n,
        "median_s": med,
        "best_s": float(min(times)),
        "gflops": 2 * n**3 / med / 1e9,
        "gflops_best": 2 * n**3 / min(times) / 1e9,
    }


# ----------------------------------------------------------------------------- memory


def jax_compiled_memory(compiled) -> dict | None:
    """``temp + output`` bytes of an XLA executable (arguments excluded), from ``memory_analysis()``."""
    try:
        m = compiled.memory_analysis()
    except Exception:
        return None
    if m is None:
        return None
    temp, output = int(m.temp_size_in_bytes), int(m.output_size_in_bytes)
    return {
        "peak_bytes": temp + output,
        "temp_bytes": temp,
        "output_bytes": output,
        "method": "xla memory_analysis temp+output",
    }


def torch_peak_memory(fn: Callable[[], object]) -> dict | None:
    """Peak bytes allocated by PyTorch's CPU allocator during one call of ``fn``, above the level
    at its start: the running sum of the allocation / free records of ``torch.profiler``
    (``profile_memory=True``), taken in time order. Counts what the call allocates (outputs,
    saved activations, workspaces, gradients), not what existed before (weights, inputs); the
    same scope as XLA's temp+output. ``tracemalloc`` cannot see these allocations (they do not go
    through Python's allocator) and ``ru_maxrss`` is a process-wide high-water mark that an
    earlier, larger run hides, so neither is used."""
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except Exception:
        return None
    events.sort(key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return {"peak_bytes": int(peak), "retained_bytes": int(cur), "method": "torch.profiler allocator trace"}


# ----------------------------------------------------------------------------- output


def write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(payload, fh, indent=1, sort_keys=False)
        fh.write("\n")


def replace_between_markers(
    path: str, text: str, start: str = "<!-- results:start -->", end: str = "<!-- results:end -->"
) -> None:
    """Rewrites the part of ``path`` between the two marker lines (markers kept)."""
    with open(path) as fh:
        doc = fh.read()
    i, j = doc.find(start), doc.find(end)
    if i < 0 or j < 0 or j < i:
        raise ValueError(
            f"`{path}`: expected the markers {start!r} ... {end!r} in this order, found start at {i} and end at {j}."
        )
    doc = doc[: i + len(start)] + "\n" + text.rstrip() + "\n" + doc[j:]
    with open(path, "w") as fh:
        fh.write(doc)


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "–"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
