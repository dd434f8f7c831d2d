"""A stateful character-level language model trained on Python's own standard library source.

Shows rnnjax's stateful mode: a ``stateful=True`` ``rnnjax.LSTM`` keeps its final states in the
``'rnn_state'`` collection, so consecutive batches continue where the previous ones stopped
(truncated backpropagation through time): row ``i`` of batch ``k + 1`` is the text that follows
row ``i`` of batch ``k``. Each training step is ``model.apply({'params': ..., 'rnn_state': ...},
x, mutable=['rnn_state'])``, and the returned state is passed to the next step;
``rnnjax.reset_states`` zeroes it at the start of every epoch.

After training, the parameters are saved with ``flax.serialization`` and restored, a batch-1
stateful model (same parameters, its own 1-row state) continues a prompt character by character,
and the restored parameters are checked to reproduce exactly the same text and logits.

The text is a handful of modules from the Python standard library (``os.py``, ``argparse.py``,
...), found next to ``os.__file__``: available offline on every machine.

Run::

    python examples/char_lm.py                     # 1-3 minutes on 2 CPU cores
    python examples/char_lm.py --epochs 10 --units 512
    python examples/char_lm.py --smoke             # a few seconds (CI)

Writes ``<out>/char_lm.png`` (loss curves), ``<out>/char_lm_params.msgpack`` (checkpoint) and
``<out>/char_lm_sample.txt`` (generated text).
"""

from __future__ import annotations

import os
import string

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from tqdm import tqdm

import rnnjax

try:  # run as a script (python examples/x.py) or imported from the examples folder
    from _common import out_dir, parser, plt, save_figure
except ImportError:  # pragma: no cover - imported as examples.char_lm
    from examples._common import out_dir, parser, plt, save_figure

MODULES = (
    "os.py",
    "argparse.py",
    "functools.py",
    "random.py",
    "textwrap.py",
    "string.py",
    "contextlib.py",
    "dataclasses.py",
    "collections/__init__.py",
)
VOCAB = string.printable  # 100 characters; anything else is read as '?'
CHAR_TO_ID = {c: i for i, c in enumerate(VOCAB)}


def load_texts(max_chars: int, val_fraction: float = 0.1) -> tuple[str, str]:
    """Source of standard-library modules (those present), up to ``max_chars`` in all, split
    into training and validation text: the last ``val_fraction`` of every module is held out."""
    root = os.path.dirname(os.__file__)
    train, val, total = [], [], 0
    for name in MODULES:
        path = os.path.join(root, name)
        if not os.path.exists(path) or total >= max_chars:
            continue
        with open(path, encoding="utf-8") as f:
            text = f.read()[: max_chars - total]
        total += len(text)
        cut = int(len(text) * (1 - val_fraction))
        train.append(text[:cut])
        val.append(text[cut:])
    return "\n".join(train), "\n".join(val)


def encode(text: str) -> np.ndarray:
    unknown = CHAR_TO_ID["?"]
    return np.array([CHAR_TO_ID.get(c, unknown) for c in text], dtype=np.int32)


def decode(ids) -> str:
    return "".join(VOCAB[int(i)] for i in ids)


def stream_batches(ids: np.ndarray, batch_size: int, seq_len: int):
    """Splits ``ids`` into ``batch_size`` contiguous streams and cuts them into consecutive
    windows: returns inputs and next-character targets, each ``(num_batches, batch, seq_len)``.
    Window ``k + 1`` of stream ``i`` starts where window ``k`` ended (what a stateful RNN needs)."""
    stream_len = (len(ids) - 1) // batch_size
    num_batches = stream_len // seq_len
    if num_batches == 0:
        raise ValueError(f"text of {len(ids)} characters is too short for batch_size={batch_size}, seq_len={seq_len}")
    n = num_batches * seq_len
    starts = np.arange(batch_size) * stream_len
    x = np.stack([ids[s : s + n] for s in starts])  # (batch, n)
    y = np.stack([ids[s + 1 : s + n + 1] for s in starts])
    to_windows = lambda a: a.reshape(batch_size, num_batches, seq_len).transpose(1, 0, 2)
    return to_windows(x), to_windows(y)


class CharLM(nn.Module):
    """Embedding -> stateful LSTM (all steps) -> Dense logits over the vocabulary."""

    vocab_size: int = len(VOCAB)
    embed_dim: int = 64
    units: int = 256

    @nn.compact
    def __call__(self, tokens):  # (batch, time) int
        x = nn.Embed(self.vocab_size, self.embed_dim)(tokens)
        h = rnnjax.LSTM(self.units, return_sequences=True, stateful=True)(x)
        return nn.Dense(self.vocab_size)(h)  # (batch, time, vocab)


def make_steps(model):
    def loss_and_state(params, rnn_state, x, y):
        logits, updates = model.apply({"params": params, "rnn_state": rnn_state}, x, mutable=["rnn_state"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, updates["rnn_state"]

    @jax.jit
    def train_step(state, rnn_state, x, y):
        (loss, rnn_state), grads = jax.value_and_grad(loss_and_state, has_aux=True)(state.params, rnn_state, x, y)
        return state.apply_gradients(grads=grads), rnn_state, loss

    eval_step = jax.jit(loss_and_state)
    return train_step, eval_step


def make_generate(model, length: int, temperature: float):
    """A jitted ``generate(params, rnn_state, prompt_ids, key)`` for a batch-1 stateful model: feeds
    the prompt ``(1, p)``, then samples ``length`` characters, feeding each back in (``lax.scan``).
    Returns the sampled ids ``(length,)`` and the logits they were drawn from ``(length, vocab)``."""

    def feed(params, rnn_state, tokens):
        logits, updates = model.apply({"params": params, "rnn_state": rnn_state}, tokens, mutable=["rnn_state"])
        return logits[:, -1], updates["rnn_state"]  # logits after the last token

    @jax.jit
    def generate(params, rnn_state, prompt_ids, key):
        def sample(carry, k):
            logits, rnn_state = carry
            token = jax.random.categorical(k, logits / temperature)  # (1,)
            return feed(params, rnn_state, token[:, None]), (token[0], logits[0])

        carry = feed(params, rnn_state, prompt_ids)
        _, (ids, logits) = jax.lax.scan(sample, carry, jax.random.split(key, length))
        return ids, logits

    return generate


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--units", type=int, default=256, help="LSTM units")
    p.add_argument("--epochs", type=int, default=4, help="passes over the text")
    p.add_argument("--batch-size", type=int, default=32, help="parallel text streams")
    p.add_argument("--seq-len", type=int, default=64, help="steps per truncated-BPTT window")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate")
    p.add_argument("--max-chars", type=int, default=300_000, help="characters of text to read")
    p.add_argument("--prompt", default="def ", help="start of the generated text")
    p.add_argument("--length", type=int, default=400, help="characters to generate")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    args = p.parse_args(argv)
    if args.smoke:
        args.units, args.epochs, args.batch_size, args.seq_len = 32, 2, 4, 16
        args.max_chars, args.length = 4000, 20
    out = out_dir(args.out)

    train_text, val_text = load_texts(args.max_chars)
    train_ids = encode(train_text)
    x_train, y_train = stream_batches(train_ids, args.batch_size, args.seq_len)
    x_val, y_val = stream_batches(encode(val_text), args.batch_size, args.seq_len)
    print(
        f"{len(train_text) + len(val_text)} characters: {len(x_train)} training and {len(x_val)} "
        f"validation windows of {args.batch_size} streams x {args.seq_len} steps"
    )

    model = CharLM(units=args.units)
    key_init, key_gen = jax.random.split(jax.random.PRNGKey(args.seed))
    variables = model.init(key_init, x_train[0])  # a stateful layer's state has the batch size of init
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(args.lr))
    state = train_state.TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx)
    rnn_state = variables["rnn_state"]
    train_step, eval_step = make_steps(model)

    bits = 1.0 / np.log(2.0)
    history = {"step_loss": [], "val_loss": []}
    bar = tqdm(total=args.epochs * len(x_train), desc="training", unit="step")
    for epoch in range(args.epochs):
        rnn_state = rnnjax.reset_states({"rnn_state": rnn_state})["rnn_state"]  # new epoch: start of the text
        for x, y in zip(x_train, y_train):
            state, rnn_state, loss = train_step(state, rnn_state, x, y)
            history["step_loss"].append(float(loss) * bits)
            bar.update()
            bar.set_postfix(epoch=epoch + 1, bits_per_char=f"{history['step_loss'][-1]:.2f}")
        val_state = rnnjax.reset_states({"rnn_state": rnn_state})["rnn_state"]  # same batch size: reusable
        val = []
        for x, y in zip(x_val, y_val):
            loss, val_state = eval_step(state.params, val_state, x, y)
            val.append(float(loss))
        history["val_loss"].append(float(np.mean(val)) * bits)
        bar.write(f"epoch {epoch + 1}: validation {history['val_loss'][-1]:.3f} bits/char")
    bar.close()

    # Checkpoint the parameters, restore them into a fresh template, and check the round trip.
    ckpt = out / "char_lm_params.msgpack"
    ckpt.write_bytes(flax.serialization.to_bytes(state.params))
    template = model.init(jax.random.PRNGKey(123), jnp.zeros((1, 1), jnp.int32))
    restored = flax.serialization.from_bytes(template["params"], ckpt.read_bytes())
    print(f"saved and restored {ckpt} ({ckpt.stat().st_size / 1e6:.1f} MB)")

    # Generation: batch-1 stateful model, states initialised (zeros) by init with a (1, 1) input.
    generate = make_generate(model, args.length, args.temperature)
    prompt = jnp.asarray(encode(args.prompt))[None]
    sample_ids, logits = generate(state.params, template["rnn_state"], prompt, key_gen)
    sample_ids2, logits2 = generate(restored, template["rnn_state"], prompt, key_gen)
    text = args.prompt + decode(sample_ids)
    identical = bool(jnp.array_equal(sample_ids, sample_ids2) and jnp.array_equal(logits, logits2))
    print(f"restored checkpoint reproduces the generated text and logits exactly: {identical}")
    (out / "char_lm_sample.txt").write_text(text)
    print("-" * 30 + " sample " + "-" * 30 + f"\n{text}\n" + "-" * 68)

    steps_per_epoch = len(x_train)
    unigram = np.bincount(train_ids, minlength=len(VOCAB)) / len(train_ids)
    unigram_bits = float(-(unigram[unigram > 0] * np.log2(unigram[unigram > 0])).sum())
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(
        np.arange(1, len(history["step_loss"]) + 1), history["step_loss"], lw=0.8, alpha=0.8, label="training batch"
    )
    ax.plot(
        steps_per_epoch * np.arange(1, args.epochs + 1), history["val_loss"], "o-", label="validation (end of epoch)"
    )
    ax.axhline(unigram_bits, color="gray", ls="--", label=f"character frequencies only ({unigram_bits:.2f})")
    ax.set(
        title=f"stateful LSTM({args.units}) on stdlib source, TBPTT windows of {args.seq_len}",
        xlabel="training step",
        ylabel="bits per character",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    png = save_figure(fig, out / "char_lm.png")

    val_bits = history["val_loss"][-1]
    print(f"final validation loss: {val_bits:.3f} bits/char (character frequencies alone: {unigram_bits:.3f})")
    return {"val_bits_per_char": val_bits, "restored_identical": identical, "sample": text, "png": png}


if __name__ == "__main__":
    main()
