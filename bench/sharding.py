"""Data parallelism on forced host devices: per-device FLOPs and bytes moved by collectives.

For each layer and shape ``(batch, time, features, units)``, the forward pass and one training
step (gradient of ``mean(outputs ** 2)`` and an SGD update) are compiled with the batch sharded
over 1, 2, 4 and 8 devices (``NamedSharding(mesh, PartitionSpec('data'))``, parameters
replicated). From each compiled (partitioned, per-device) program:

- ``xla_flops``: ``compiled.cost_analysis()['flops']``. XLA's cost analysis counts the body of a
  ``while`` loop once, not once per iteration, so this is the per-device cost of the program
  text (the time loop's body counted once); compare it across device counts.
- ``dot_flops``: ``2 * |result| * |contracted|`` of every ``dot`` of the HLO text, each times
  the number of times its computation runs (the ``known_trip_count`` of the loops around it):
  the per-device matmul FLOPs of one call.
- collectives (all-reduce, all-gather, reduce-scatter, all-to-all, collective-permute): how many
  ops, how many executions (loops counted), their operand and result bytes, and the bytes each
  device sends by the usual ring algorithms over the ``n`` devices of the mesh (all-reduce
  ``2(n-1)/n * size``, all-gather ``(n-1)/n * result``, reduce-scatter and all-to-all
  ``(n-1)/n * operand``, collective-permute ``operand``).
- ``time_s``: the median wall time of the compiled call. Forced host devices share the CPU's
  cores: this is not a scaling measurement.

    python bench/sharding.py                          # LSTM, GRU at (64, 50, 32, 64), (16, 100, 16, 32)
    python bench/sharding.py --write-readme           # also rewrites bench/README.md's table
    python bench/sharding.py --smoke --out /tmp/x     # seconds; checks the script
    python bench/sharding.py --from-json bench/results/<file>.json --write-readme   # re-render only
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import statistics
import sys
import time

if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

import rnnjax  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
}
_ARRAY = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([\d,]*)\]")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([\w\-]+)\((.*)$")
_CALLEE = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def array_bytes(hlo_type: str) -> int:
    """Bytes of an HLO type (an array ``f32[8,4]{1,0}`` or a tuple of them)."""
    return sum(_BYTES[d] * math.prod(int(s) for s in dims.split(",") if s) for d, dims in _ARRAY.findall(hlo_type))


def _dims(hlo_type: str) -> list:
    m = _ARRAY.search(hlo_type)
    return [int(s) for s in m.group(2).split(",") if s] if m else []


def parse_hlo(text: str) -> list:
    """The computations of an HLO module text, callees first: ``[(name, [instruction, ...])]``
    with each instruction a dict ``name, type, op, rest`` (the text after the opening parenthesis)."""
    comps, current = [], None
    for line in text.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m:
                current = (m.group(1), [])
        elif line.startswith("}"):
            comps.append(current)
            current = None
        else:
            m = _INSTR.match(line)
            if m:
                current[1].append({"name": m.group(1), "type": m.group(2), "op": m.group(3), "rest": m.group(4)})
    return comps


def executions(comps: list) -> dict:
    """How many times each computation runs per call of the entry (the last one): loop bodies
    times their ``known_trip_count`` (1 where XLA does not know it)."""
    runs = {comps[-1][0]: 1}
    for name, instrs in reversed(comps):  # callers are printed after their callees
        for ins in instrs:
            trip = _TRIP.search(ins["rest"])
            for kind, callee in _CALLEE.findall(ins["rest"]):
                n = int(trip.group(1)) if trip and kind in ("body", "condition") else 1
                runs[callee] = runs.get(callee, 0) + runs.get(name, 0) * n
    return runs


def analyse(text: str, devices: int) -> dict:
    """Per-device dot FLOPs and collective traffic of one call of a compiled program."""
    comps = parse_hlo(text)
    runs = executions(comps)
    types = {ins["name"]: ins["type"] for _, instrs in comps for ins in instrs}
    dot_flops = 0
    found = {
        c: {"ops": 0, "executions": 0, "operand_bytes": 0, "result_bytes": 0, "sent_bytes": 0.0} for c in COLLECTIVES
    }
    for name, instrs in comps:
        k = runs.get(name, 0)
        for ins in instrs:
            operands = re.findall(r"%([\w.\-]+)", ins["rest"].split(")", 1)[0])
            if ins["op"] == "dot":
                lhs = _dims(types.get(operands[0], ""))
                contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins["rest"])
                axes = [int(a) for a in contracting.group(1).split(",") if a] if contracting else []
                dot_flops += k * 2 * math.prod(_dims(ins["type"])) * math.prod(lhs[a] for a in axes)
            op = ins["op"].removesuffix("-start")
            if op in found:
                entry = found[op]
                operand_bytes = sum(array_bytes(types.get(o, "")) for o in operands)
                result_bytes = array_bytes(ins["type"])
                entry["ops"] += 1
                entry["executions"] += k
                entry["operand_bytes"] += k * operand_bytes
                entry["result_bytes"] += k * result_bytes
                share = (devices - 1) / devices
                entry["sent_bytes"] += (
                    k
                    * {
                        "all-reduce": 2 * share * result_bytes,
                        "all-gather": share * result_bytes,
                        "reduce-scatter": share * operand_bytes,
                        "all-to-all": share * operand_bytes,
                        "collective-permute": operand_bytes,
                    }[op]
                )
    return {"dot_flops": dot_flops, "collectives": {c: v for c, v in found.items() if v["ops"]}}


FLAX_CELLS = {"LSTM": "OptimizedLSTMCell", "GRU": "GRUCell", "SimpleRNN": "SimpleCell"}


def programs(impl, layer_name, shape):
    """``({mode: fn}, params, x)`` for ``layer_name`` at ``(batch, time, features, units)``: rnnjax's
    layer, or Flax linen's ``nn.RNN`` over its cell (the reference: a scan whose every matmul is
    per step, so it partitions over the batch as it is)."""
    batch, steps, features, units = shape
    if impl == "flax":
        import flax.linen as nn

        layer = nn.RNN(getattr(nn, FLAX_CELLS[layer_name])(units))
    else:
        layer = getattr(rnnjax, layer_name)(units, return_sequences=True)
    x = jax.random.normal(jax.random.key(1), (batch, steps, features))
    params = layer.init(jax.random.key(0), x[:, :2])["params"]

    def forward(p, x):
        return layer.apply({"params": p}, x)

    def train_step(p, x):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean(forward(p, x) ** 2))(p)
        return jax.tree_util.tree_map(lambda a, g: a - 0.01 * g, p, grads), loss

    return {"fwd": forward, "train": train_step}, params, x


def measure(impl, layer_name, shape, devices, reps):
    fns, params, x = programs(impl, layer_name, shape)
    mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
    ps = jax.device_put(params, NamedSharding(mesh, P()))
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    rows = []
    for mode, fn in fns.items():
        compiled = jax.jit(fn).lower(ps, xs).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        jax.block_until_ready(compiled(ps, xs))
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            jax.block_until_ready(compiled(ps, xs))
            times.append(time.perf_counter() - t)
        rows.append(
            {
                "impl": impl,
                "layer": layer_name,
                "shape": list(shape),
                "mode": mode,
                "devices": devices,
                "per_device_batch": shape[0] // devices,
                "xla_flops": cost.get("flops"),
                **analyse(compiled.as_text(), devices),
                "time_s": statistics.median(times),
            }
        )
    return rows


def fmt_flops(n) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f}"


def table(rows) -> str:
    lines = [
        "| layer | impl | shape | mode | devices | per-device batch | XLA flops (loop body once) | dot FLOPs per call "
        "| vs 1 device | collectives (ops × runs) | bytes sent per device | time (ms, not scaling) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    key = lambda r: (r.get("impl", "rnnjax"), r["layer"], tuple(r["shape"]), r["mode"])  # noqa: E731
    one = {key(r): r["dot_flops"] for r in rows if r["devices"] == 1}
    for r in rows:
        base = one.get(key(r))
        ratio = f"{r['dot_flops'] / base:.3f}" if base else "–"
        coll = (
            ", ".join(
                f"{c} {v['ops']}×{v['executions'] // max(v['ops'], 1)}"
                if v["executions"] % v["ops"] == 0
                else f"{c} {v['ops']} ({v['executions']} runs)"
                for c, v in r["collectives"].items()
            )
            or "none"
        )
        sent = sum(v["sent_bytes"] for v in r["collectives"].values())
        lines.append(
            f"| {r['layer']} | {r.get('impl', 'rnnjax')} | "
            f"{','.join(map(str, r['shape']))} | {r['mode']} | {r['devices']} | "
            f"{r['per_device_batch']} | {fmt_flops(r['xla_flops'])} | {fmt_flops(r['dot_flops'])} | {ratio} | "
            f"{coll} | {_common.fmt_bytes(int(sent))} | {_common.fmt_ms(r['time_s'])} |"
        )
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="LSTM,GRU")
    ap.add_argument(
        "--shapes", default="64,50,32,64;16,100,16,32", help="batch,time,features,units; ';' between shapes"
    )
    ap.add_argument("--devices", default="1,2,4,8")
    ap.add_argument("--impls", default="rnnjax,flax", help="rnnjax and/or flax (nn.RNN, the reference)")
    ap.add_argument("--reps", type=int, default=10, help="timed calls per program")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument(
        "--write-readme",
        nargs="?",
        const=os.path.join(HERE, "README.md"),
        default=None,
        help="rewrite the table between <!-- sharding:start --> and <!-- sharding:end --> of this file",
    )
    ap.add_argument("--smoke", action="store_true", help="LSTM at (8, 5, 3, 4) on 1 and 2 devices, 2 reps")
    ap.add_argument("--from-json", default=None, help="render the table of an earlier results file, measure nothing")
    args = ap.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as fh:
            rows = json.load(fh)["results"]
        return _render(rows, args.write_readme)
    if args.smoke:
        args.layers, args.shapes, args.devices, args.reps, args.impls = "LSTM", "8,5,3,4", "1,2", 2, "rnnjax"
    counts = [int(d) for d in args.devices.split(",")]
    if max(counts) > len(jax.devices()):
        raise SystemExit(
            f"--devices: {max(counts)} requested, {len(jax.devices())} visible; set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={max(counts)} before running"
        )
    shapes = [tuple(int(s) for s in shape.split(",")) for shape in args.shapes.split(";")]
    rows = []
    for layer in args.layers.split(","):
        for shape in shapes:
            if any(shape[0] % n for n in counts):
                raise SystemExit(f"--shapes: batch {shape[0]} does not split over devices {counts}")
            for impl in args.impls.split(","):
                for n in counts:
                    rows.extend(measure(impl, layer, shape, n, args.reps))
    stem = datetime.date.today().isoformat() + ("-sharding-smoke" if args.smoke else "-sharding")
    path = os.path.join(args.out, stem + ".json")
    _common.write_json(
        path, {"machine": _common.machine_record(), "platform": jax.devices()[0].platform, "results": rows}
    )
    print(f"wrote {path}")
    return _render(rows, args.write_readme)


def _render(rows, readme):
    text = table(rows)
    print(text)
    if readme:
        _common.replace_between_markers(readme, text, "<!-- sharding:start -->", "<!-- sharding:end -->")
        print(f"rewrote the table in {readme}")
    return rows


if __name__ == "__main__":
    main()
