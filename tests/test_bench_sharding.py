"""bench/sharding.py: its reading of compiled HLO (dot FLOPs, collective bytes, loop trip counts)
checked on programs whose numbers are known, and a smoke run of the script."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from bench_util import load_bench_script
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from sharding_util import batch_mesh, collectives

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench():
    return load_bench_script("sharding.py", "bench_sharding")


def test_dot_flops_count_every_loop_iteration():
    bench = _bench()
    x, w = jnp.ones((6, 5)), jnp.ones((5, 3))
    once = jax.jit(lambda x, w: x @ w).lower(x, w).compile()
    assert bench.analyse(once.as_text(), 1)["dot_flops"] == 2 * 6 * 5 * 3

    def looped(x, w):  # 7 steps of (6, 5) @ (5, 5), the carry fed back so XLA keeps the loop
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=7)[0]

    w5 = jnp.ones((5, 5)) * 0.1
    compiled = jax.jit(looped).lower(x, w5).compile()
    assert " while(" in compiled.as_text()
    assert bench.analyse(compiled.as_text(), 1)["dot_flops"] == 7 * 2 * 6 * 5 * 5
    # XLA's own cost analysis counts the loop body once: why the bench reports both
    assert compiled.cost_analysis()["flops"] < 2 * 2 * 6 * 5 * 5


def test_collective_bytes_of_known_programs():
    bench = _bench()
    mesh = batch_mesh(8)
    x = jax.device_put(jnp.ones((16, 6)), NamedSharding(mesh, P("data")))
    gather = jax.jit(lambda x: x * 2, out_shardings=NamedSharding(mesh, P())).lower(x).compile().as_text()
    assert collectives(gather)["all-gather"] == 1
    got = bench.analyse(gather, 8)["collectives"]["all-gather"]
    assert got["result_bytes"] == 16 * 6 * 4 and got["operand_bytes"] == 2 * 6 * 4
    assert got["sent_bytes"] == 7 / 8 * 16 * 6 * 4

    reduce = jax.jit(lambda x: x.sum(0)).lower(x).compile().as_text()
    got = bench.analyse(reduce, 8)["collectives"]["all-reduce"]
    assert got["ops"] == got["executions"] == 1 and got["result_bytes"] == 6 * 4
    assert got["sent_bytes"] == 2 * 7 / 8 * 6 * 4


def test_collective_inside_a_loop_counts_its_trip_count():
    bench = _bench()
    mesh = batch_mesh(8)

    def f(x):
        def body(c, _):
            c = jax.lax.with_sharding_constraint(jnp.sin(c), NamedSharding(mesh, P("data")))
            total = jax.lax.with_sharding_constraint(c.sum(0), NamedSharding(mesh, P()))  # all-reduce per step
            return c + total, None

        return jax.lax.scan(body, x, None, length=5)[0]

    x = jax.device_put(jnp.ones((16, 6)), NamedSharding(mesh, P("data")))
    text = jax.jit(f).lower(x).compile().as_text()
    got = bench.analyse(text, 8)["collectives"]["all-reduce"]
    assert got["ops"] == 1 and got["executions"] == 5 and got["result_bytes"] == 5 * 6 * 4


def test_smoke_run_writes_results(tmp_path):
    bench = _bench()
    rows = bench.main(["--smoke", "--out", str(tmp_path)])
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.endswith("-sharding-smoke.json")
    payload = json.loads(files[0].read_text())
    assert payload["machine"]["cpu_model"] and len(payload["results"]) == len(rows) == 4
    by = {(r["mode"], r["devices"]): r for r in payload["results"]}
    # the forward pass of LSTM(4) at (8, 5, 3): projection 2*40*3*16, recurrence 5 * 2*8*4*16
    assert by[("fwd", 1)]["dot_flops"] == 2 * 40 * 3 * 16 + 5 * 2 * 8 * 4 * 16
    assert by[("fwd", 2)]["dot_flops"] == by[("fwd", 1)]["dot_flops"] / 2  # each device half the batch
    assert by[("train", 2)]["collectives"].get("all-reduce", {}).get("ops", 0) >= 1
    assert np.isfinite([r["time_s"] for r in rows]).all()
