"""Data-parallel training on every visible device: the classifier of classify_sequences.py.

The model, the data and the jitted training step are those of ``classify_sequences.py``,
unchanged: data parallelism is only where the arrays live. The devices form a 1-D
``jax.sharding.Mesh`` with the axis ``'data'``; every batch (inputs, masks, labels) is placed
with ``NamedSharding(mesh, PartitionSpec('data'))``, so each device holds ``batch / devices``
rows, and the train state (parameters, Adam moments) with ``NamedSharding(mesh,
PartitionSpec())``, a full copy on every device. ``jax.jit`` partitions the step from these
input shardings (committed arrays carry the mesh into the trace): each device runs the LSTM on
its rows, nothing else crosses devices, and the gradient is summed across devices once per step.
The same steps run again on one device; the losses agree.

On a CPU machine ``--devices 8`` makes 8 host devices (it sets
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX starts); they share the CPU's
cores, so this shows the partitioning, not a speed-up. On a machine with several GPUs or TPUs,
leave ``--devices`` out to use all of them.

Run::

    python examples/data_parallel.py --devices 8      # 8 forced host devices on a CPU
    python examples/data_parallel.py                  # every visible device
    python examples/data_parallel.py --smoke --devices 8

Writes ``<out>/data_parallel.png`` (the training loss per step, on N devices and on one).
"""

from __future__ import annotations

import os
import sys


def force_host_devices(argv) -> None:
    """``--devices N``: ask XLA for N CPU devices; only effective before JAX starts."""
    if "jax" in sys.modules:
        return
    for k, arg in enumerate(argv):
        value = (
            arg.split("=", 1)[1]
            if arg.startswith("--devices=")
            else (argv[k + 1] if arg == "--devices" and k + 1 < len(argv) else None)
        )
        if value is not None and value.isdigit():
            flags = os.environ.get("XLA_FLAGS", "")
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={value}".strip()


if __name__ == "__main__":
    force_host_devices(sys.argv[1:])

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax.training import train_state  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

try:  # run as a script (python examples/x.py) or imported from the examples folder
    from _common import out_dir, parser, plt, save_figure
    from classify_sequences import SequenceClassifier, digit_sequences, length_mask, make_train_step
except ImportError:  # pragma: no cover - imported as examples.data_parallel
    from examples._common import out_dir, parser, plt, save_figure
    from examples.classify_sequences import SequenceClassifier, digit_sequences, length_mask, make_train_step


def train(devices, model, batches, args):
    """Runs the training step over ``batches`` with the batch sharded over ``devices``.

    Returns the losses per step and the per-device shape of the first input batch.
    """
    mesh = Mesh(np.array(devices), ("data",))
    batch_sharding, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    x0, m0, _ = batches[0]
    params = model.init(jax.random.PRNGKey(args.seed), x0[:1], m0[:1])["params"]
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(args.lr))
    state = jax.device_put(state, replicated)
    train_step = make_train_step(model)
    losses, shard_shape = [], None
    for x, mask, y in batches:
        x, mask, y = jax.device_put((x, mask, y), batch_sharding)
        shard_shape = shard_shape or x.addressable_shards[0].data.shape
        state, loss, _ = train_step(state, x, mask, y)
        losses.append(float(loss))
    return np.array(losses), shard_shape


def make_batches(args):
    x, lengths, y = digit_sequences()
    if args.smoke:
        x, lengths, y = x[:256], lengths[:256], y[:256]
    mask = length_mask(lengths, x.shape[1])
    rng = np.random.default_rng(args.seed)
    batches = []
    for _ in range(args.epochs):
        order = rng.permutation(len(x))
        for b in range(len(x) // args.batch_size):
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            batches.append((x[idx], mask[idx], y[idx]))
    return batches


def main(argv=None):
    p = parser(__doc__)
    p.add_argument(
        "--devices",
        type=int,
        default=None,
        help="number of devices (default: all visible); on a CPU, that many host devices",
    )
    p.add_argument("--units", type=int, default=64, help="LSTM units")
    p.add_argument("--epochs", type=int, default=5, help="passes over the training set")
    p.add_argument("--batch-size", type=int, default=64, help="global batch, split over the devices")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    args = p.parse_args(argv)
    if args.smoke:
        args.units, args.epochs = 16, 2
    visible = jax.devices()
    n = len(visible) if args.devices is None else args.devices
    if not 1 <= n <= len(visible):
        raise SystemExit(
            f"--devices: {n} requested, {len(visible)} visible ({visible[0].platform}); on a CPU, "
            "--devices must be given on the command line, before JAX starts"
        )
    if args.batch_size % n:
        raise SystemExit(f"--batch-size: {args.batch_size} rows do not split over {n} devices; use a multiple of {n}")
    out = out_dir(args.out)

    model, batches = SequenceClassifier(units=args.units), make_batches(args)
    losses, shard = train(visible[:n], model, batches, args)
    print(
        f"{n} {visible[0].platform} devices, global batch {args.batch_size}: per-device batch "
        f"{shard[0]} rows (input shard {tuple(shard)} on each device)"
    )
    reference, _ = train(visible[:1], model, batches, args)
    diff = float(np.max(np.abs(losses - reference) / np.abs(reference)))
    same = bool(np.allclose(losses, reference, rtol=1e-4))
    print(
        f"{len(losses)} steps, final loss {losses[-1]:.6f} on {n} devices, {reference[-1]:.6f} on 1 device; "
        f"largest relative difference over all steps {diff:.1e}: equal to float rounding: {same}"
    )

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(reference, lw=3, alpha=0.4, label="1 device")
    ax.plot(losses, lw=1, label=f"{n} devices, batch sharded")
    ax.set(
        title=f"LSTM({args.units}) digit classifier, global batch {args.batch_size}",
        xlabel="step",
        ylabel="training loss (cross-entropy)",
        yscale="log",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    png = save_figure(fig, out / "data_parallel.png")
    return {
        "devices": n,
        "per_device_batch": int(shard[0]),
        "losses": losses,
        "losses_one_device": reference,
        "same_loss": same,
        "png": png,
    }


if __name__ == "__main__":
    main()
