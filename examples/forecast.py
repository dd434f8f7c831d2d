"""Forecasting yearly sunspot numbers (1700-2008) with an rnnjax recurrent layer.

The data is the yearly sunspot series that statsmodels ships inside the package
(``statsmodels.datasets.sunspots``, a bundled CSV: no download). Each training example is a
window of the previous ``--window`` years, and the model -- ``rnnjax.GRU`` (default),
``rnnjax.SimpleRNN`` or ``rnnjax.LSTM`` then a Dense layer -- predicts the next year.
The last ``--test-years`` years are held out and forecast one step ahead; the error is compared
with two naive forecasts: "same as last year" and "same as one 11-year solar cycle ago".

Run::

    python examples/forecast.py                    # well under a minute on 2 CPU cores
    python examples/forecast.py --cell simple_rnn --units 64
    python examples/forecast.py --smoke            # a few seconds (CI)
    python examples/forecast.py --api nnx          # the same model in Flax NNX (rnnjax.nnx), nnx.Optimizer

Needs statsmodels (``pip install statsmodels``). Writes ``<out>/forecast.png`` (``forecast_nnx.png``
with ``--api nnx``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax.training import train_state
from tqdm import tqdm

import rnnjax

try:  # run as a script (python examples/x.py) or imported from the examples folder
    from _common import out_dir, parser, plt, save_figure
except ImportError:  # pragma: no cover - imported as examples.forecast
    from examples._common import out_dir, parser, plt, save_figure

LAYERS = {"gru": rnnjax.GRU, "simple_rnn": rnnjax.SimpleRNN, "lstm": rnnjax.LSTM}
CYCLE = 11  # years in a solar cycle: the seasonal-naive baseline's lag


def load_sunspots():
    from statsmodels.datasets import sunspots  # bundled CSV, read locally

    data = sunspots.load_pandas().data
    return data["YEAR"].to_numpy().astype(int), data["SUNACTIVITY"].to_numpy().astype(np.float32)


def windows(series: np.ndarray, window: int):
    """``x[i] = series[i:i + window]`` as ``(n, window, 1)``; target ``y[i] = series[i + window]``."""
    idx = np.arange(len(series) - window)[:, None] + np.arange(window)[None, :]
    return series[idx][..., None], series[window:]


class Forecaster(nn.Module):
    cell: str = "gru"
    units: int = 32

    @nn.compact
    def __call__(self, x):  # (batch, window, 1)
        h = LAYERS[self.cell](self.units)(x)  # (batch, units): state after the last year
        return nn.Dense(1)(h)[:, 0]  # (batch,) next year (scaled)


class NNXForecaster(nnx.Module):
    """The same model in Flax NNX: an rnnjax.nnx layer (input size given at construction), nnx.Linear."""

    def __init__(self, cell: str, units: int, *, rngs: nnx.Rngs):
        import rnnjax.nnx  # imported on demand: linen-only users never load it

        layer = {"gru": rnnjax.nnx.GRU, "simple_rnn": rnnjax.nnx.SimpleRNN, "lstm": rnnjax.nnx.LSTM}[cell]
        self.rnn = layer(units, input_dim=1, rngs=rngs)
        self.dense = nnx.Linear(units, 1, rngs=rngs)

    def __call__(self, x):  # (batch, window, 1)
        return self.dense(self.rnn(x))[:, 0]


def train_linen(args, x_tr, y_tr):
    """Full-batch Adam on the linen model; returns (predict function, losses)."""
    model = Forecaster(cell=args.cell, units=args.units)
    params = model.init(jax.random.PRNGKey(args.seed), x_tr[:1])["params"]
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(args.lr))

    @jax.jit
    def train_step(state, x, y):
        def loss_fn(params):
            return jnp.mean((model.apply({"params": params}, x) - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    losses = []
    bar = tqdm(range(args.steps), desc="training (linen)", unit="step")
    for i in bar:
        state, loss = train_step(state, x_tr, y_tr)
        losses.append(float(loss))
        if i % 25 == 0:
            bar.set_postfix(mse=f"{losses[-1]:.4f}")
    return (lambda x: jax.jit(model.apply)({"params": state.params}, x)), losses


def train_nnx(args, x_tr, y_tr):
    """Full-batch Adam on the NNX model with nnx.Optimizer; returns (predict function, losses)."""
    model = NNXForecaster(args.cell, args.units, rngs=nnx.Rngs(args.seed))
    optimizer = nnx.Optimizer(model, optax.adam(args.lr), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)  # in place
        return loss

    losses = []
    bar = tqdm(range(args.steps), desc="training (nnx)", unit="step")
    for i in bar:
        losses.append(float(train_step(model, optimizer, x_tr, y_tr)))
        if i % 25 == 0:
            bar.set_postfix(mse=f"{losses[-1]:.4f}")
    return (lambda x: nnx.jit(lambda m, x: m(x))(model, x)), losses


def mae(a, b):
    return float(np.mean(np.abs(np.asarray(a) - np.asarray(b))))


def rmse(a, b):
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--cell", choices=sorted(LAYERS), default="gru", help="recurrent layer")
    p.add_argument("--units", type=int, default=32, help="recurrent units")
    p.add_argument("--window", type=int, default=22, help="years of history the model sees (two cycles)")
    p.add_argument("--test-years", type=int, default=60, help="final years held out for testing")
    p.add_argument("--steps", type=int, default=1500, help="full-batch Adam steps")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument("--api", choices=["linen", "nnx"], default="linen", help="Flax API: linen modules or rnnjax.nnx")
    args = p.parse_args(argv)
    if args.smoke:
        args.units, args.steps = 8, 20
    out = out_dir(args.out)

    years, spots = load_sunspots()
    # sqrt evens out the very different heights of the cycles; then scale with training statistics.
    z = np.sqrt(spots)
    n_train = len(z) - args.test_years
    mean, std = z[:n_train].mean(), z[:n_train].std()
    scaled = (z - mean) / std
    unscale = lambda v: (np.asarray(v) * std + mean) ** 2

    x, y = windows(scaled, args.window)  # target year of x[i]: years[i + window]
    target_years = years[args.window :]
    is_test = target_years >= years[n_train]
    x_tr, y_tr, x_te = x[~is_test], y[~is_test], x[is_test]
    print(
        f"cell={args.cell}: {len(x_tr)} training windows ({target_years[0]}-{target_years[~is_test][-1]}), "
        f"{len(x_te)} test years ({target_years[is_test][0]}-{target_years[-1]})"
    )

    predict, losses = (train_nnx if args.api == "nnx" else train_linen)(args, x_tr, y_tr)
    pred = unscale(predict(x_te))
    truth = spots[-args.test_years :]
    last_year = spots[-args.test_years - 1 : -1]
    last_cycle = spots[-args.test_years - CYCLE : -CYCLE]
    scores = {
        f"{args.cell} (one step ahead)": (mae(pred, truth), rmse(pred, truth)),
        "naive: last year": (mae(last_year, truth), rmse(last_year, truth)),
        f"naive: {CYCLE} years ago": (mae(last_cycle, truth), rmse(last_cycle, truth)),
    }
    print(f"test years {years[n_train]}-{years[-1]}:")
    for name, (a, r) in scores.items():
        print(f"  {name:<26} MAE {a:6.2f}   RMSE {r:6.2f}")

    test_years = years[n_train:]
    fig, (ax_all, ax_test) = plt.subplots(2, 1, figsize=(10, 7), gridspec_kw={"height_ratios": [1, 1.3]})
    ax_all.plot(years, spots, color="0.3", lw=1, label="observed")
    ax_all.plot(test_years, pred, color="C1", lw=1.5, label="forecast (held-out years)")
    ax_all.axvspan(test_years[0] - 0.5, test_years[-1] + 0.5, color="C1", alpha=0.08)
    ax_all.set(title="yearly sunspot number", ylabel="sunspots")
    ax_all.legend(loc="upper left")
    ax_test.plot(test_years, truth, "o-", color="0.2", ms=3, label="observed")
    ax_test.plot(
        test_years,
        pred,
        "o-",
        color="C1",
        ms=3,
        label=f"{args.cell}, MAE {scores[f'{args.cell} (one step ahead)'][0]:.1f}",
    )
    ax_test.plot(
        test_years,
        last_year,
        "--",
        color="C0",
        lw=1,
        label=f"naive: last year, MAE {scores['naive: last year'][0]:.1f}",
    )
    ax_test.plot(
        test_years,
        last_cycle,
        ":",
        color="C2",
        lw=1.2,
        label=f"naive: {CYCLE} years ago, MAE {scores[f'naive: {CYCLE} years ago'][0]:.1f}",
    )
    ax_test.set(title="held-out years: one-step-ahead forecasts", xlabel="year", ylabel="sunspots")
    ax_test.grid(alpha=0.3)
    ax_test.legend(loc="upper right", fontsize=9)
    # runs keep their plots
    png = save_figure(fig, out / ("forecast.png" if args.api == "linen" else "forecast_nnx.png"))

    test_mae = scores[f"{args.cell} (one step ahead)"][0]
    print(f"final test MAE: {test_mae:.2f} (naive last-year MAE {scores['naive: last year'][0]:.2f})")
    return {"test_mae": test_mae, "naive_mae": scores["naive: last year"][0], "png": png, "losses": losses}


if __name__ == "__main__":
    main()
