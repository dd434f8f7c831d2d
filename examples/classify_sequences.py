"""Variable-length sequence classification with masking: handwritten digits read column by column.

Each 8x8 image of scikit-learn's bundled digits data set (1797 images, shipped with the package,
no download) is read as a sequence of its columns, left to right, from the first to the last
column that holds any ink. Sequences are therefore 2 to 8 steps of 8 features. A batch is padded
at the end to a common length, and a boolean mask ``(batch, timesteps)`` built from the true
lengths makes the ``rnnjax.LSTM`` skip the padding: its output is the hidden state at each
sequence's last real step (Keras masking). A Dense layer on top gives the 10 class scores.

At the end the example checks that the padding really is ignored: the test set padded with 8
extra steps of random noise gets exactly the same predictions.

Run::

    python examples/classify_sequences.py              # under a minute on 2 CPU cores
    python examples/classify_sequences.py --units 128 --epochs 60
    python examples/classify_sequences.py --smoke      # a few seconds (CI)
    python examples/classify_sequences.py --export classifier.jaxexport

Writes ``<out>/classify_sequences.png`` (training loss and accuracy curves). With ``--export
PATH`` it also writes the trained classifier, ``(x (batch, timesteps, 8), mask (batch,
timesteps)) -> logits (batch, 10)``, as a serialised ``jax.export`` with a symbolic batch and
number of steps, which any process with jax loads and calls without rnnjax (README, "Export and
serve").
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax import export
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import rnnjax

try:  # run as a script (python examples/x.py) or imported from the examples folder
    from _common import out_dir, parser, plt, save_figure
except ImportError:  # pragma: no cover - imported as examples.classify_sequences
    from examples._common import out_dir, parser, plt, save_figure


def digit_sequences(limit=None):
    """Digits as variable-length sequences of columns (the first ``limit`` only, if given).

    Returns ``x`` ``(n, 8, 8)`` float32 (sequence of columns, padded with zeros at the end),
    ``lengths`` ``(n,)`` (number of inked columns) and labels ``y`` ``(n,)``.
    """
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # (n, rows, cols), values in [0, 1]
    columns = images.transpose(0, 2, 1)  # (n, cols, rows): one column per step
    inked = columns.max(axis=2) > 0  # (n, cols)
    first = inked.argmax(axis=1)
    last = columns.shape[1] - 1 - inked[:, ::-1].argmax(axis=1)
    lengths = last - first + 1
    x = np.zeros_like(columns)
    for i, (a, n) in enumerate(zip(first, lengths)):
        x[i, :n] = columns[i, a : a + n]
    return x[:limit], lengths[:limit].astype(np.int32), digits.target[:limit].astype(np.int32)


def length_mask(lengths, timesteps):
    """Boolean mask ``(batch, timesteps)``: True on the real steps, False on the padding."""
    return np.arange(timesteps)[None, :] < np.asarray(lengths)[:, None]


class SequenceClassifier(nn.Module):
    """LSTM over the masked sequence, then a Dense layer on its last real output."""

    units: int = 64
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, mask):
        h = rnnjax.LSTM(self.units)(x, mask=mask)  # (batch, units), padding skipped
        return nn.Dense(self.num_classes)(h)  # (batch, num_classes) logits


def make_train_step(model):
    @jax.jit
    def train_step(state, x, mask, y):
        def loss_fn(params):
            logits = model.apply({"params": params}, x, mask)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        return state.apply_gradients(grads=grads), loss, accuracy

    return train_step


def make_predict(model):
    @jax.jit
    def predict(params, x, mask):
        return jnp.argmax(model.apply({"params": params}, x, mask), -1)

    return predict


def export_classifier(model, params, path):
    """Serialises ``logits(x, mask)`` of the trained model, the parameters baked in, for any batch
    size ``b`` and number of steps ``t`` (``x (b, t, 8)``, ``mask (b, t)``) to ``path``."""
    b, t = export.symbolic_shape("b, t")
    specs = (jax.ShapeDtypeStruct((b, t, 8), jnp.float32), jax.ShapeDtypeStruct((b, t), jnp.bool_))
    exported = export.export(jax.jit(lambda x, mask: model.apply({"params": params}, x, mask)))(*specs)
    with open(path, "wb") as f:
        f.write(exported.serialize())
    return exported


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--units", type=int, default=64, help="LSTM units")
    p.add_argument("--epochs", type=int, default=40, help="passes over the training set")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per Adam step")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument("--export", metavar="PATH", help="also write the trained classifier as a serialised jax.export")
    args = p.parse_args(argv)
    if args.smoke:
        args.units, args.epochs = 16, 2
    out = out_dir(args.out)

    x, lengths, y = digit_sequences(256 if args.smoke else None)
    print(
        f"{len(x)} sequences, lengths {lengths.min()}..{lengths.max()} "
        f"(how many of each: {dict(zip(*map(np.ndarray.tolist, np.unique(lengths, return_counts=True))))})"
    )
    mask = length_mask(lengths, x.shape[1])
    x_tr, x_te, m_tr, m_te, y_tr, y_te = train_test_split(
        x, mask, y, test_size=0.25, random_state=args.seed, stratify=None if args.smoke else y
    )

    model = SequenceClassifier(units=args.units)
    key_init, key_noise = jax.random.split(jax.random.PRNGKey(args.seed))
    params = model.init(key_init, x_tr[:1], m_tr[:1])["params"]
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(args.lr))
    train_step, predict = make_train_step(model), make_predict(model)

    rng = np.random.default_rng(args.seed)
    n_batches = max(1, len(x_tr) // args.batch_size)
    history = {"loss": [], "train_acc": [], "test_acc": []}
    bar = tqdm(range(args.epochs), desc="training", unit="epoch")
    for _ in bar:
        order = rng.permutation(len(x_tr))
        losses, accs = [], []
        for b in range(n_batches):
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            state, loss, acc = train_step(state, x_tr[idx], m_tr[idx], y_tr[idx])
            losses.append(loss)
            accs.append(acc)
        test_acc = float(np.mean(np.asarray(predict(state.params, x_te, m_te)) == y_te))
        history["loss"].append(float(np.mean(losses)))
        history["train_acc"].append(float(np.mean(accs)))
        history["test_acc"].append(test_acc)
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", test_acc=f"{test_acc:.3f}")

    # Padding is ignored: append 8 steps of noise (masked out) and predict again.
    pred = np.asarray(predict(state.params, x_te, m_te))
    noise = np.asarray(jax.random.uniform(key_noise, (len(x_te), 8, x_te.shape[2])))
    x_long = np.concatenate([x_te, noise], axis=1)
    m_long = np.concatenate([m_te, np.zeros((len(x_te), 8), bool)], axis=1)
    same = bool(np.array_equal(pred, np.asarray(predict(state.params, x_long, m_long))))
    print(f"predictions unchanged by 8 extra masked noise steps: {same}")

    epochs = np.arange(1, args.epochs + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, history["loss"], marker=".")
    ax_loss.set(title="training loss (cross-entropy)", xlabel="epoch", ylabel="loss", yscale="log")
    ax_loss.grid(alpha=0.3)
    ax_acc.plot(epochs, history["train_acc"], marker=".", label="train")
    ax_acc.plot(epochs, history["test_acc"], marker=".", label="held-out test")
    ax_acc.set(title="accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1.01))
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(loc="lower right")
    fig.suptitle(f"LSTM({args.units}) on digits read as 2-8 masked column steps")
    png = save_figure(fig, out / "classify_sequences.png")

    test_acc = history["test_acc"][-1]
    print(f"final test accuracy: {test_acc:.4f} ({len(y_te)} held-out digits)")
    result = {"test_accuracy": test_acc, "padding_ignored": same, "png": png}
    if args.export:
        export_classifier(model, state.params, args.export)
        print(f"exported the classifier (symbolic batch and steps) to {args.export}")
        result["export"] = args.export
        result["logits"] = jax.jit(lambda x, mask: model.apply({"params": state.params}, x, mask))
    return result


if __name__ == "__main__":
    main()
