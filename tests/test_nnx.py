"""rnnjax.nnx behaviour: dropout and its modes, NNX and JAX transforms, penalties and constraints,
and a model of rnnjax layers and nnx.Linear trained with nnx.Optimizer against its linen twin."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from nnx_util import assert_trees_close, random_like, twin

import rnnjax
import rnnjax.functional as F
import rnnjax.nnx as rnx

B, T, I, U = 3, 7, 5, 4


def _x(seed=0, shape=(B, T, I)):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _dropped(layer, x, keys, rate=0.3, recurrent_rate=0.2):
    """The functional reference: rnnjax.functional.rnn with masks from the two keys (input, recurrent)."""
    cell = layer.cell
    core = cell.core
    # Keras draws one mask per gate only for implementation=1; SimpleRNN (no implementation) draws one
    count = core.gates if getattr(core, "implementation", 2) == 1 else 1
    assert core.dropout_mask_count == count
    return F.rnn(
        core,
        cell.params(),
        x,
        return_sequences=True,
        dropout_mask=F.dropout_masks(keys[0], rate, (B, I), count),
        recurrent_dropout_mask=F.dropout_masks(keys[1], recurrent_rate, (B, U), count),
    )[0]


@pytest.mark.parametrize("cls,kwargs", [(rnx.LSTM, {}), (rnx.GRU, {"implementation": 2}), (rnx.SimpleRNN, {})])
def test_dropout_follows_train_eval_and_training(cls, kwargs):
    layer = cls(
        U, dropout=0.3, recurrent_dropout=0.2, return_sequences=True, **kwargs, input_dim=I, rngs=nnx.Rngs(0, dropout=1)
    )
    linen = getattr(rnnjax, cls.__name__)(U, dropout=0.3, recurrent_dropout=0.2, return_sequences=True, **kwargs)
    x = _x()
    variables = twin(layer, linen, x)
    reference = linen.apply(variables, x)  # no dropout
    # training by default (as nnx.Dropout): masks from the cell's stream, drawn once per call
    stream = nnx.clone(layer.cell.rngs)
    keys = (stream(), stream())
    y = layer(x)
    assert_trees_close(y, _dropped(layer, x, keys))
    assert not np.allclose(y, reference, atol=1e-3)
    assert int(layer.cell.rngs.count[...]) == 2
    y2 = layer(x)  # fresh masks on the next call
    assert not np.allclose(y, y2, atol=1e-3)
    layer.eval()
    assert_trees_close(layer(x), reference)
    stream = nnx.clone(layer.cell.rngs)
    assert_trees_close(layer(x, training=True), _dropped(layer, x, (stream(), stream())))
    layer.train()
    assert_trees_close(layer(x, training=False), reference)
    assert_trees_close(layer(x, deterministic=True), reference)
    assert_trees_close(nnx.view(layer, deterministic=True)(x), reference)
    # an explicit key at call: split in two, the input mask's and the recurrent mask's
    key = jax.random.key(42)
    assert_trees_close(layer(x, rngs=key), _dropped(layer, x, tuple(jax.random.split(key, 2))))


def test_no_dropout_keeps_no_rng_state():
    layer = rnx.LSTM(U, input_dim=I, rngs=nnx.Rngs(0))
    assert not nnx.state(layer, nnx.RngState)
    assert {p for p, _ in nnx.to_flat_state(nnx.state(layer))} == {
        ("cell", "kernel"),
        ("cell", "recurrent_kernel"),
        ("cell", "bias"),
    }


def test_transforms_give_the_eager_numbers():
    layer = rnx.GRU(U, return_sequences=True, input_dim=I, rngs=nnx.Rngs(0))
    x = _x()
    eager = layer(x)
    assert_trees_close(nnx.jit(lambda m, x: m(x))(layer, x), eager)

    def loss(m, x):
        return jnp.sum(m(x) ** 2)

    value, grads = nnx.value_and_grad(loss)(layer, x)
    assert_trees_close(grads, nnx.grad(loss)(layer, x))
    np.testing.assert_allclose(value, jnp.sum(eager**2), rtol=1e-6)
    # plain jax.jit / jax.grad over nnx.split / nnx.merge
    graphdef, params = nnx.split(layer)
    jgrads = jax.jit(jax.grad(lambda p, x: loss(nnx.merge(graphdef, p), x)))(params, x)
    assert_trees_close(jgrads, grads)
    # nnx.vmap over a leading axis of sequences, the layer broadcast
    xs = jnp.stack([_x(1), _x(2)])
    ys = nnx.vmap(lambda m, x: m(x), in_axes=(None, 0))(layer, xs)
    assert_trees_close(ys, jnp.stack([layer(xs[0]), layer(xs[1])]))


def test_regularization_loss_matches_linen():
    regs = dict(
        kernel_regularizer=rnnjax.regularizers.L1L2(0.01, 0.02),
        recurrent_regularizer="l2",
        bias_regularizer="l1",
        activity_regularizer=rnnjax.regularizers.L2(0.05),
    )
    layer = rnx.LSTM(U, **regs, input_dim=I, rngs=nnx.Rngs(0))
    linen = rnnjax.LSTM(U, **regs)
    x = _x(6)
    variables = twin(layer, linen, x)
    _, aux = linen.apply(variables, x, mutable=["losses"])
    layer(x)
    np.testing.assert_allclose(rnx.regularization_loss(layer), rnnjax.regularization_loss(aux), rtol=1e-6)
    np.testing.assert_allclose(layer.activity_penalty[...], aux["losses"]["activity_regularizer"], rtol=1e-6)

    def total(m):
        return jnp.sum(m(x)) + rnx.regularization_loss(m)  # one call, differentiable

    def linen_total(params):
        y, aux = linen.apply({"params": params}, x, mutable=["losses"])
        return jnp.sum(y) + rnnjax.regularization_loss(aux)

    assert_trees_close(
        rnx.to_linen(layer, nnx.grad(total)(layer))["params"], jax.grad(linen_total)(variables["params"]), atol=1e-5
    )


def test_constraints_after_optimizer_update_match_linen():
    cons = dict(
        kernel_constraint=rnnjax.constraints.MaxNorm(0.5), recurrent_constraint="unit_norm", bias_constraint="non_neg"
    )
    layer = rnx.SimpleRNN(U, **cons, input_dim=I, rngs=nnx.Rngs(0))
    linen = rnnjax.SimpleRNN(U, **cons)
    x = _x(3)
    variables = twin(layer, linen, x)
    tx = optax.chain(optax.sgd(0.1), rnnjax.keras_constraints(linen, x))
    grads = jax.grad(lambda p: jnp.sum(linen.apply({"params": p}, x)))(variables["params"])
    updates, _ = tx.update(grads, tx.init(variables["params"]), variables["params"])
    expected = optax.apply_updates(variables["params"], updates)
    optimizer = nnx.Optimizer(layer, optax.sgd(0.1), wrt=nnx.Param)
    optimizer.update(layer, nnx.grad(lambda m: jnp.sum(m(x)))(layer))
    rnx.apply_constraints(layer)
    assert_trees_close(rnx.to_linen(layer)["params"], expected)
    assert float(jnp.min(layer.cell.bias[...])) >= 0.0


class NNXModel(nnx.Module):
    def __init__(self, rngs):
        self.lstm = rnx.LSTM(8, return_sequences=True, input_dim=I, rngs=rngs)
        self.gru = rnx.GRU(6, reset_after=True, input_dim=8, rngs=rngs)
        self.dense = nnx.Linear(6, 1, rngs=rngs)

    def __call__(self, x):
        return self.dense(self.gru(self.lstm(x)))[:, 0]


class LinenModel(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = rnnjax.LSTM(8, return_sequences=True, name="lstm")(x)
        return nn.Dense(1, name="dense")(rnnjax.GRU(6, reset_after=True, name="gru")(h))[:, 0]


def test_nnx_model_trains_like_its_linen_twin():
    x, y = _x(10, (16, T, I)), jnp.asarray(np.random.default_rng(11).normal(size=16), jnp.float32)
    model = NNXModel(nnx.Rngs(0))
    linen = LinenModel()
    variables = {"params": random_like(linen.init(jax.random.key(0), x)["params"], 5)}
    rnx.from_linen(model, variables)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    tx = optax.adam(1e-2)
    params, opt_state = variables["params"], tx.init(variables["params"])

    @jax.jit
    def linen_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((linen.apply({"params": p}, x) - y) ** 2))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses, linen_losses = [], []
    for _ in range(8):
        losses.append(float(step(model, optimizer, x, y)))
        params, opt_state, loss = linen_step(params, opt_state, x, y)
        linen_losses.append(float(loss))
    np.testing.assert_allclose(losses, linen_losses, rtol=1e-5)
    assert losses[-1] < 0.8 * losses[0]
    assert_trees_close(rnx.to_linen(model)["params"], params, atol=1e-5)


@pytest.mark.parametrize("cls", [rnx.LSTM, rnx.GRU])
def test_keras2_implementation_0_warns_and_is_implementation_1(cls):
    """As the linen layers: Keras 2.3's warning, then implementation 1 (one dropout mask per gate)."""

    def make(implementation):
        return cls(
            U,
            implementation=implementation,
            dropout=0.3,
            return_sequences=True,
            input_dim=I,
            rngs=nnx.Rngs(0, dropout=1),
        )

    with pytest.warns(UserWarning, match="`implementation=0` has been deprecated"):
        layer = make(0)
    x = _x()
    np.testing.assert_array_equal(layer(x), make(1)(x))
    assert not np.allclose(make(1)(x), make(2)(x))  # one mask: other numbers
