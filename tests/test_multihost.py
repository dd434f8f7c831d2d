"""Multi-host data parallelism: one training step run by two processes equals one process.

The test starts this file twice as a worker (``python tests/test_multihost.py worker K PORT
OUT``): each process calls ``jax.distributed.initialize`` with a coordinator on
``127.0.0.1:PORT`` (a free port, picked by binding to port 0), has 2 CPU devices of its own
(``jax_num_cpu_devices``) and the gloo CPU collectives (``jax_cpu_collectives_implementation``,
jax 0.10.2's default, set explicitly), builds the global mesh over all 4 devices and passes
only its own half of every batch (``jax.make_array_from_process_local_data``). A few optax
steps of an rnnjax LSTM classifier then give the losses and parameters of the same steps run
here on one device. The workers are bounded in time (``TIMEOUT``) and killed if they hang or
as soon as the other one fails; their output is shown when the test fails.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 120  # seconds for both workers together
PROCESSES, LOCAL_DEVICES = 2, 2
BATCH, STEPS, LR = 8, 3, 1e-2
BIND_FAILED = ("Failed to start RPC server", "Failed to add port")  # the coordinator's port was taken


def problem():
    """The data (numpy, the same in every process) and the model."""
    import flax.linen as nn

    import rnnjax

    class Classifier(nn.Module):
        @nn.compact
        def __call__(self, x, mask):
            return nn.Dense(3)(rnnjax.LSTM(6)(x, mask=mask))

    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS, BATCH, 7, 4)).astype(np.float32)
    lengths = rng.integers(1, 8, size=(STEPS, BATCH))
    mask = np.arange(7)[None, None, :] < lengths[..., None]
    y = rng.integers(0, 3, size=(STEPS, BATCH)).astype(np.int32)
    return Classifier(), x, mask, y


def train(put_batch, put_replicated):
    """``STEPS`` Adam steps; ``put_batch``/``put_replicated`` place arrays (one device or a mesh).

    Returns the losses ``(STEPS,)`` and the final parameters as a flat list of numpy arrays.
    """
    import jax
    import optax

    model, x, mask, y = problem()
    params = model.init(jax.random.key(1), x[0, :1], mask[0, :1])["params"]
    tx = optax.adam(LR)
    params = put_replicated(params)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, mask, y):
        def loss_fn(p):
            logits = model.apply({"params": p}, x, mask)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for k in range(STEPS):
        params, opt_state, loss = step(params, opt_state, *put_batch((x[k], mask[k], y[k])))
        losses.append(float(loss))  # replicated: every process holds the whole value
    return np.array(losses), [np.asarray(a) for a in jax.tree_util.tree_leaves(params)]


def worker(process_id: int, port: int, out: str):
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_num_cpu_devices", LOCAL_DEVICES)
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=PROCESSES,
        process_id=process_id,
        coordinator_bind_address=f"127.0.0.1:{port}",
        initialization_timeout=TIMEOUT // 2,
    )
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    assert jax.process_count() == PROCESSES and jax.local_device_count() == LOCAL_DEVICES
    mesh = Mesh(np.array(jax.devices()), ("data",))  # all 4 devices, both processes'
    batch, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    rows = slice(process_id * BATCH // PROCESSES, (process_id + 1) * BATCH // PROCESSES)

    def put_batch(arrays):  # this process's rows only
        return [jax.make_array_from_process_local_data(batch, a[rows], a.shape) for a in arrays]

    def put_replicated(tree):
        return jax.tree_util.tree_map(
            lambda a: jax.make_array_from_callback(a.shape, replicated, lambda i: np.asarray(a)[i]), tree
        )

    losses, params = train(put_batch, put_replicated)
    np.savez(os.path.join(out, f"worker{process_id}.npz"), *params, losses=losses)
    print(f"worker {process_id}: devices {jax.devices()}, losses {losses.tolist()}", flush=True)
    jax.distributed.shutdown()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(out: pathlib.Path, retries: int = 1):
    """Starts both workers, waits for them (``TIMEOUT``), kills what is left; returns their exit
    codes and logs. Once more on another port if the coordinator could not bind the picked one
    (taken in the meantime)."""
    codes, logs = _run_workers_on(out, _free_port())
    if retries and codes != [0] * PROCESSES and any(m in log for log in logs for m in BIND_FAILED):
        return _run_workers(out, retries - 1)
    return codes, logs


def _run_workers_on(out: pathlib.Path, port: int):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # no forced host devices there
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    logs = [out / f"worker{k}.log" for k in range(PROCESSES)]
    procs = []
    try:
        for k in range(PROCESSES):
            with open(logs[k], "w") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, __file__, "worker", str(k), str(port), str(out)],
                        cwd=ROOT,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                break  # one failed: the other would wait for it until its own timeout
            time.sleep(0.2)
        codes = [
            p.poll()
            if p.poll() is not None
            else f"killed: still running after {time.monotonic() - deadline + TIMEOUT:.0f} s"
            for p in procs
        ]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return codes, [log.read_text() for log in logs]


def test_two_processes_train_like_one(tmp_path):
    import jax

    codes, logs = _run_workers(tmp_path)
    report = "\n".join(f"--- worker {k}: exit {c}\n{log[-3000:]}" for k, (c, log) in enumerate(zip(codes, logs)))
    assert codes == [0] * PROCESSES, f"a worker failed (coordinator on 127.0.0.1):\n{report}"

    one = jax.devices()[0]
    ref_losses, ref_params = train(
        lambda arrays: [jax.device_put(a, one) for a in arrays], lambda tree: jax.device_put(tree, one)
    )
    assert ref_losses[-1] < ref_losses[0]  # it trains
    for k in range(PROCESSES):
        got = np.load(tmp_path / f"worker{k}.npz")
        np.testing.assert_allclose(got["losses"], ref_losses, rtol=1e-5, err_msg=report)
        params = [got[f"arr_{i}"] for i in range(len(ref_params))]
        for a, b in zip(params, ref_params, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=report)


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "worker":
    worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
