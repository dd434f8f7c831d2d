"""Next-frame prediction of moving digits with ``rnnjax.ConvLSTM2D``.

Each sequence is one of scikit-learn's bundled 8x8 digit images (no download) moving across a
larger canvas (16x16 by default) at one pixel per frame, bouncing off the edges. A
``ConvLSTM2D(filters, kernel_size=3, padding='same', return_sequences=True)`` reads frames
``0..T-2`` (input ``(batch, time, rows, cols, channels)``) and a 1x1 convolution turns its output
at step ``t`` into a prediction of frame ``t + 1``. Training minimises the pixel-wise binary
cross-entropy with optax Adam; the test error is compared with copying the last frame.

Run::

    python examples/next_frame.py                  # 1-3 minutes on 2 CPU cores
    python examples/next_frame.py --filters 32 --steps 1500 --size 20
    python examples/next_frame.py --smoke          # a few seconds (CI)

Writes ``<out>/next_frame.png``: true frames above the predicted ones for a few test sequences,
and the training loss.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import optax
from flax.training import train_state
from sklearn.datasets import load_digits
from tqdm import tqdm

import rnnjax

try:  # run as a script (python examples/x.py) or imported from the examples folder
    from _common import out_dir, parser, plt, save_figure
except ImportError:  # pragma: no cover - imported as examples.next_frame
    from examples._common import out_dir, parser, plt, save_figure


def bounce(p, limit):
    """Positions ``p`` folded back into ``[0, limit]`` (reflection at both walls)."""
    p = np.mod(p, 2 * limit)
    return np.where(p > limit, 2 * limit - p, p)


def moving_digits(images, n, frames, size, rng):
    """``n`` sequences ``(n, frames, size, size, 1)`` of a random digit from ``images`` moving one
    pixel per frame in one of the 8 directions from a random start, bouncing off the edges."""
    h, w = images.shape[1:]
    steps = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)])
    which = rng.integers(len(images), size=n)
    start = rng.integers(0, [size - h + 1, size - w + 1], size=(n, 2))
    velocity = steps[rng.integers(len(steps), size=n)]
    t = np.arange(frames)[None, :, None]
    pos = bounce(start[:, None] + velocity[:, None] * t, np.array([size - h, size - w]))  # (n, frames, 2)
    video = np.zeros((n, frames, size, size, 1), np.float32)
    for i in range(n):
        for f, (y, x) in enumerate(pos[i]):
            video[i, f, y : y + h, x : x + w, 0] = images[which[i]]
    return video


class NextFrame(nn.Module):
    """ConvLSTM2D over the frames, then a 1x1 convolution: logits of the next frame's pixels."""

    filters: int = 16

    @nn.compact
    def __call__(self, frames):  # (batch, time, rows, cols, 1)
        # unroll=True: with only a handful of frames a Python loop is about 2x faster on the CPU
        # than lax.scan's per-step overhead (the scan path is fine too; use it for long videos).
        h = rnnjax.ConvLSTM2D(self.filters, kernel_size=3, padding="same", return_sequences=True, unroll=True)(frames)
        return nn.Conv(1, kernel_size=(1, 1))(h)  # (batch, time, rows, cols, 1)


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--filters", type=int, default=16, help="ConvLSTM2D filters")
    p.add_argument("--size", type=int, default=16, help="canvas side in pixels")
    p.add_argument("--frames", type=int, default=8, help="frames per sequence")
    p.add_argument("--train", type=int, default=2000, help="training sequences")
    p.add_argument("--steps", type=int, default=500, help="Adam steps")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per Adam step")
    p.add_argument("--lr", type=float, default=6e-3, help="Adam learning rate")
    args = p.parse_args(argv)
    if args.smoke:
        args.filters, args.train, args.steps, args.batch_size, args.frames, args.size = 4, 64, 4, 8, 5, 12
    out = out_dir(args.out)

    digits = load_digits().images.astype(np.float32) / 16.0
    rng = np.random.default_rng(args.seed)
    n_test = 16 if args.smoke else 256
    held_out = len(digits) * 4 // 5  # test sequences use digit images never seen in training
    train = moving_digits(digits[:held_out], args.train, args.frames, args.size, rng)
    test = moving_digits(digits[held_out:], n_test, args.frames, args.size, rng)
    print(f"{len(train)} training and {len(test)} test sequences of {args.frames} frames {args.size}x{args.size}")

    model = NextFrame(filters=args.filters)
    params = model.init(jax.random.PRNGKey(args.seed), train[:1, :-1])["params"]
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(args.lr))

    @jax.jit
    def train_step(state, video):
        def loss_fn(params):
            logits = model.apply({"params": params}, video[:, :-1])  # frames 0..T-2 -> 1..T-1
            return optax.sigmoid_binary_cross_entropy(logits, video[:, 1:]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    @jax.jit
    def predict(params, video):
        return jax.nn.sigmoid(model.apply({"params": params}, video[:, :-1]))

    losses = []
    bar = tqdm(range(args.steps), desc="training", unit="step")
    for i in bar:
        batch = train[rng.integers(len(train), size=args.batch_size)]
        state, loss = train_step(state, batch)
        losses.append(float(loss))
        if i % 10 == 0:
            bar.set_postfix(bce=f"{losses[-1]:.4f}")

    pred = np.asarray(predict(state.params, test))  # frames 1..T-1
    mse = float(np.mean((pred - test[:, 1:]) ** 2))
    copy_last = float(np.mean((test[:, :-1] - test[:, 1:]) ** 2))
    print(f"test MSE per pixel: ConvLSTM2D {mse:.4f}, copy the last frame {copy_last:.4f}")

    shown = min(3, len(test))
    fig = plt.figure(figsize=(1.3 * args.frames, 2.7 * shown + 2.2))
    grid = fig.add_gridspec(2 * shown + 1, args.frames, height_ratios=[1] * (2 * shown) + [1.6])
    for s in range(shown):
        for f in range(args.frames):
            for row, (image, label) in enumerate([(test[s, f], "true"), (pred[s, f - 1] if f else None, "predicted")]):
                ax = fig.add_subplot(grid[2 * s + row, f])
                ax.set_xticks([])
                ax.set_yticks([])
                if image is None:
                    ax.axis("off")
                    continue
                ax.imshow(image[..., 0], cmap="gray_r", vmin=0, vmax=1)
                if s == 0 and row == 0:
                    ax.set_title(f"t={f}", fontsize=9)
                if f == 0 or (f == 1 and row == 1):
                    ax.set_ylabel(label, fontsize=9)
    ax = fig.add_subplot(grid[-1, :])
    ax.plot(losses, lw=0.8)
    ax.set(xlabel="training step", ylabel="BCE per pixel")
    ax.grid(alpha=0.3)
    fig.suptitle(
        f"ConvLSTM2D({args.filters}, 3x3): each predicted frame uses only the true frames before it\n"
        f"test MSE {mse:.4f} vs {copy_last:.4f} for copying the last frame",
        fontsize=10,
    )
    png = save_figure(fig, out / "next_frame.png")

    print(f"final test MSE: {mse:.4f} (copy last frame: {copy_last:.4f})")
    return {"test_mse": mse, "copy_last_mse": copy_last, "png": png}


if __name__ == "__main__":
    main()
