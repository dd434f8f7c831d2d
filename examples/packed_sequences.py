"""Packed sequences: the digits of classify_sequences.py trained padded and packed, side by side.

The task of ``classify_sequences.py`` (8x8 digits read column by column, 2 to 8 steps each) is
trained twice from the same initial parameters on the same batches:

* **padded**: each batch of sequences padded to 8 steps, a mask skipping the padding, the LSTM's
  last output per sequence;
* **packed**: the same sequences packed end to end into rows of ``--row-length`` steps
  (``rnnjax.packing.pack_sequences``, first-fit), ``reset`` restarting the LSTM at each sequence's
  first step, the output at each sequence's last step read back with ``rnnjax.packing.last_steps``.

A packed row gives each sequence exactly what it gives alone, so both models compute the same
function: the losses agree at every step and the test accuracies agree (printed). The packed one
computes fewer padded steps; the throughput of each is printed (training steps per second and
useful tokens per second, a token being one real step of one sequence).

Run::

    python examples/packed_sequences.py               # about a minute on 2 CPU cores
    python examples/packed_sequences.py --row-length 12
    python examples/packed_sequences.py --smoke       # a few seconds (CI)

Writes ``<out>/packed_sequences.png`` (the two loss curves and the two throughputs).
"""

from __future__ import annotations

import time

import flax.linen as nn
import jax
import numpy as np
import optax
from sklearn.model_selection import train_test_split

import rnnjax
from rnnjax import packing

try:  # run as a script (python examples/x.py) or imported from the examples folder
    from _common import out_dir, parser, plt, save_figure
    from classify_sequences import digit_sequences, length_mask
except ImportError:  # pragma: no cover - imported as examples.packed_sequences
    from examples._common import out_dir, parser, plt, save_figure
    from examples.classify_sequences import digit_sequences, length_mask


OPTIMIZER = optax.adam(3e-3)


class PaddedClassifier(nn.Module):
    """LSTM over padded sequences (a mask skips the padding), Dense on the last real output."""

    units: int = 64

    @nn.compact
    def __call__(self, x, mask):
        h = rnnjax.LSTM(self.units, name="lstm")(x, mask=mask)  # (batch, units)
        return nn.Dense(10, name="dense")(h)


class PackedClassifier(nn.Module):
    """The same layers over packed rows: ``reset`` restarts the LSTM at each sequence's start, and
    each sequence's last output is read back (``row``, ``last``: where it lies)."""

    units: int = 64

    @nn.compact
    def __call__(self, x, mask, reset, row, last):
        h = rnnjax.LSTM(self.units, return_sequences=True, name="lstm")(x, mask=mask, reset=reset)
        return nn.Dense(10, name="dense")(h[row, last])  # (sequences, 10)


def make_train_step(model):
    @jax.jit
    def train_step(params, opt_state, batch, y):
        def loss_fn(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, *batch), y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = OPTIMIZER.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


def pack(x, lengths, idx, row_length, rows=None):
    """The packed batch of sequences ``idx``: ``(inputs, mask, reset, row, last)``."""
    p = packing.pack_sequences([x[i, : lengths[i]] for i in idx], row_length, rows=rows)
    return (p.inputs, p.mask, p.reset, p.row, p.start + p.length - 1), p


def train_both(models, params, batches, ys):
    """Trains each model on its form of the same batches from the same ``params``, one step of
    each in turn (so that both see the same machine load); returns per model ``(params, losses,
    seconds of the steps after the first, which compiles)``."""
    runs = []
    for model, first in zip(models, batches):
        step = make_train_step(model)
        p, opt_state, loss = step(params, OPTIMIZER.init(params), first[0], ys[0])  # compiles
        runs.append([step, p, opt_state, [float(loss)], 0.0])
    for k in range(1, len(ys)):
        for run, form in zip(runs, batches):
            step, p, opt_state, losses, seconds = run
            start = time.perf_counter()
            p, opt_state, loss = step(p, opt_state, form[k], ys[k])
            jax.block_until_ready(loss)
            run[1:] = [p, opt_state, losses + [float(loss)], seconds + time.perf_counter() - start]
    return [tuple(run[1:2] + run[3:]) for run in runs]


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--units", type=int, default=64, help="LSTM units")
    p.add_argument("--epochs", type=int, default=30, help="passes over the training set")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per training step")
    p.add_argument("--row-length", type=int, default=24, help="steps per packed row")
    args = p.parse_args(argv)
    if args.smoke:
        args.units, args.epochs = 16, 2
    out = out_dir(args.out)

    x, lengths, y = digit_sequences(256 if args.smoke else None)
    idx_tr, idx_te = train_test_split(np.arange(len(x)), test_size=0.25, random_state=args.seed)
    rng = np.random.default_rng(args.seed)
    orders = [rng.permutation(idx_tr) for _ in range(args.epochs)]
    steps = [
        o[b : b + args.batch_size] for o in orders for b in range(0, len(o) - args.batch_size + 1, args.batch_size)
    ]

    # the same batches, padded and packed (one number of rows for all, so the step compiles once)
    padded = [(x[i], length_mask(lengths[i], x.shape[1])) for i in steps]
    rows = max(len(pack(x, lengths, i, args.row_length)[1].inputs) for i in steps)
    packed = [pack(x, lengths, i, args.row_length, rows)[0] for i in steps]
    labels = [y[i] for i in steps]
    real = int(sum(lengths[i].sum() for i in steps))
    print(
        f"{len(steps)} steps of {args.batch_size} sequences: padded {args.batch_size} x {x.shape[1]} steps, "
        f"packed {rows} x {args.row_length} ({real / (len(steps) * args.batch_size * x.shape[1]):.0%} vs "
        f"{real / (len(steps) * rows * args.row_length):.0%} of the computed steps are real)"
    )

    padded_model, packed_model = PaddedClassifier(args.units), PackedClassifier(args.units)
    params = padded_model.init(jax.random.key(args.seed), *padded[0])["params"]  # the same parameters for both
    results = {}
    trained = train_both((padded_model, packed_model), params, (padded, packed), labels)
    for name, (p, losses, seconds) in zip(("padded", "packed"), trained):
        results[name] = {
            "params": p,
            "losses": losses,
            "steps_per_s": (len(steps) - 1) / seconds,
            "tokens_per_s": real * (len(steps) - 1) / len(steps) / seconds,
        }
        print(f"{name}: {len(steps)} steps, final loss {losses[-1]:.4f}")

    # test accuracy, padded and packed
    test_padded = padded_model.apply(
        {"params": results["padded"]["params"]}, x[idx_te], length_mask(lengths[idx_te], x.shape[1])
    )
    test_batch, _ = pack(x, lengths, idx_te, args.row_length)
    test_packed = packed_model.apply({"params": results["packed"]["params"]}, *test_batch)
    for name, logits in (("padded", test_padded), ("packed", test_packed)):
        results[name]["test_accuracy"] = float(np.mean(np.argmax(np.asarray(logits), -1) == y[idx_te]))
    for name in ("padded", "packed"):
        r = results[name]
        print(
            f"{name:>6}: test accuracy {r['test_accuracy']:.4f}, {r['steps_per_s']:.1f} steps/s, "
            f"{r['tokens_per_s']:,.0f} useful tokens/s"
        )
    gap = float(np.max(np.abs(np.subtract(results["padded"]["losses"], results["packed"]["losses"]))))
    print(f"largest difference of the two loss curves: {gap:.2e} (the same function, to float rounding)")

    fig, (ax_loss, ax_speed) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("padded", "packed"):
        ax_loss.plot(results[name]["losses"], label=name, alpha=0.8)
    ax_loss.set(title="training loss, same batches", xlabel="step", ylabel="cross-entropy", yscale="log")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_speed.bar(
        ["padded", "packed"], [results[n]["tokens_per_s"] for n in ("padded", "packed")], color=["tab:gray", "tab:blue"]
    )
    ax_speed.set(title="useful tokens per second (training)", ylabel="tokens/s")
    fig.suptitle(f"LSTM({args.units}) on digits: padded to {x.shape[1]} steps vs packed in rows of {args.row_length}")
    png = save_figure(fig, out / "packed_sequences.png")
    return {
        "png": png,
        "loss_gap": gap,
        "rows": rows,
        **{
            f"{k}_{n}": results[n][k]
            for n in ("padded", "packed")
            for k in ("test_accuracy", "steps_per_s", "tokens_per_s", "losses")
        },
    }


if __name__ == "__main__":
    main()
