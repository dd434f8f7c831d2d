"""The cells and their layers: Keras's reference values, float64 numpy references, gradients
(check_grads), dropout masks, constraints, regularizers, stateful bookkeeping and Keras 2 defaults."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import rnnjax
import rnnjax.functional as F
from rnnjax.functional.initializers import Constant

C = dict(kernel_initializer=Constant(0.01), recurrent_initializer=Constant(0.02), bias_initializer=Constant(0.03))
K3 = dict(recurrent_activation="sigmoid")  # Keras 3's defaults, which the public values use


def _apply(layer, x, **kw):
    v = layer.init(jax.random.key(0), x, **kw)
    return np.asarray(layer.apply(v, x, **kw))


# Keras's own test vectors (shared/reference/keras-semantics.md).
def test_public_reference_values_lstm():
    x = jnp.arange(72.0).reshape(3, 6, 4)
    np.testing.assert_allclose(
        _apply(rnnjax.LSTM(3, **C, **K3), x), np.repeat([[0.6288687], [0.86899155], [0.9460773]], 3, 1), atol=1e-6
    )
    np.testing.assert_allclose(
        _apply(rnnjax.LSTM(3, go_backwards=True, **C, **K3), x),
        np.repeat([[0.35622165], [0.74789524], [0.8872726]], 3, 1),
        atol=1e-6,
    )


def test_public_reference_values_gru():
    x = jnp.arange(72.0).reshape(3, 6, 4)
    np.testing.assert_allclose(
        _apply(rnnjax.GRU(3, reset_after=True, **C, **K3), x),
        np.repeat([[0.5217289], [0.6371659], [0.39384964]], 3, 1),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        _apply(rnnjax.GRU(3, reset_after=False, **C, **K3), x),
        np.repeat([[0.51447755], [0.6426879], [0.40208298]], 3, 1),
        atol=1e-6,
    )


def test_public_reference_values_simple_rnn_and_masked_gru():
    x = jnp.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_allclose(
        _apply(rnnjax.SimpleRNN(4, **C), x), np.repeat([[0.405432], [0.73605347]], 4, 1), atol=1e-6
    )
    x = jnp.arange(24.0).reshape(2, 4, 3)
    mask = jnp.array([[1, 1, 0, 1], [1, 0, 0, 1]], bool)
    out = _apply(rnnjax.GRU(2, reset_after=True, return_sequences=True, **C, **K3), x, mask=mask)
    expected = np.array(
        [[0.03606692, 0.09497581, 0.09497581, 0.19393763], [0.16051409, 0.16051409, 0.16051409, 0.30818558]]
    )
    np.testing.assert_allclose(out, np.repeat(expected[..., None], 2, -1), atol=1e-6)


def test_hard_sigmoid_is_keras2_definition():
    x = np.linspace(-4, 4, 101)
    expected = np.clip(0.2 * x.astype(np.float64) + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(
        np.asarray(rnnjax.activations.get("hard_sigmoid")(jnp.asarray(x, jnp.float32))), expected, atol=1e-7
    )
    keras3 = np.clip(x / 6.0 + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(
        np.asarray(rnnjax.activations.get("hard_sigmoid_keras3")(jnp.asarray(x, jnp.float32))), keras3, atol=1e-7
    )


def test_hard_sigmoid_values_and_derivatives_equal_jnp_clip():
    """The select form of the hard sigmoid (with its custom JVP) against ``jnp.clip``'s function
    and autodiff derivative, bit for bit: inside, outside, exactly at the edges (x = ±2.5, where
    the clip's derivative is 0.1), infinities and NaN; reverse and forward mode, float32 and
    bfloat16."""
    hs = rnnjax.activations.get("hard_sigmoid")

    def reference(x):
        return jnp.clip(0.2 * x + 0.5, 0.0, 1.0).astype(x.dtype)

    for dtype in (jnp.float32, jnp.bfloat16):
        x = jnp.concatenate([jnp.linspace(-4, 4, 81), jnp.array([-2.5, 2.5, jnp.inf, -jnp.inf, jnp.nan])]).astype(dtype)
        np.testing.assert_array_equal(np.asarray(hs(x), np.float32), np.asarray(reference(x), np.float32))
        assert hs(x).dtype == dtype
        grad, want = jax.vmap(jax.grad(hs))(x), jax.vmap(jax.grad(reference))(x)
        np.testing.assert_array_equal(np.asarray(grad, np.float32), np.asarray(want, np.float32))
        tangent = jnp.linspace(-1, 1, x.shape[0]).astype(dtype)
        np.testing.assert_array_equal(
            np.asarray(jax.jvp(hs, (x,), (tangent,))[1], np.float32),
            np.asarray(jax.jvp(reference, (x,), (tangent,))[1], np.float32),
        )
    assert float(jax.grad(hs)(jnp.float32(2.5))) == np.float32(0.1)


def _np_lstm(x, k, r, b, mask, sigma, phi):
    """float64 numpy LSTM with Keras 2 masking, written from the equations."""
    bsz, t, _ = x.shape
    u = r.shape[0]
    h, c, out, outs = np.zeros((bsz, u)), np.zeros((bsz, u)), np.zeros((bsz, u)), []
    for s in range(t):
        z = x[:, s] @ k + h @ r + b
        i, f, g, o = sigma(z[:, :u]), sigma(z[:, u : 2 * u]), phi(z[:, 2 * u : 3 * u]), sigma(z[:, 3 * u :])
        c_new = f * c + i * g
        h_new = o * phi(c_new)
        m = mask[:, s : s + 1]
        h, c, out = np.where(m, h_new, h), np.where(m, c_new, c), np.where(m, h_new, out)
        outs.append(out)
    return np.stack(outs, 1), h, c


def test_float32_lstm_matches_float64_numpy_with_holes():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 9, 3))
    k, r, b = rng.normal(size=(3, 20)) * 0.5, rng.normal(size=(5, 20)) * 0.5, rng.normal(size=20) * 0.5
    mask = rng.random((4, 9)) > 0.3
    hs = lambda z: np.clip(0.2 * z + 0.5, 0, 1)
    ref, h, c = _np_lstm(x, k, r, b, mask, hs, np.tanh)
    core = F.LSTMCore(5)
    params = F.LSTMParams(*(jnp.asarray(a, jnp.float32) for a in (k, r, b)))
    out, state = jax.jit(lambda p, x, m: F.rnn(core, p, x, mask=m, return_sequences=True))(
        params, jnp.asarray(x, jnp.float32), jnp.asarray(mask)
    )
    np.testing.assert_allclose(out, ref, atol=2e-5)
    np.testing.assert_allclose(state.h, h, atol=2e-5)
    np.testing.assert_allclose(state.c, c, atol=2e-5)


@pytest.mark.parametrize(
    "core",
    [
        F.SimpleRNNCore(3),
        F.LSTMCore(3, recurrent_activation="sigmoid"),
        F.GRUCore(3, recurrent_activation="sigmoid"),
        F.GRUCore(3, recurrent_activation="sigmoid", reset_after=True),
    ],
    ids=["simple", "lstm", "gru", "gru_reset_after"],
)
def test_gradients_check_grads(core):
    params = core.init(jax.random.key(1), 2)
    x = jax.random.normal(jax.random.key(2), (2, 4, 2))
    mask = jnp.array([[1, 0, 1, 1], [1, 1, 1, 0]], bool)

    def f(params, x, custom_backward=True):
        out, state = F.rnn(core, params, x, mask=mask, return_sequences=True, custom_backward=custom_backward)
        return out.sum() + sum(jnp.sum(s) for s in state)

    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
        # Reverse mode (through the hand-written backward pass where the core has one), twice.
        check_grads(f, (p64, x.astype(jnp.float64)), order=2, modes=["rev"], atol=1e-5, rtol=1e-5)
        check_grads(
            lambda p, x: f(p, x, False), (p64, x.astype(jnp.float64)), order=1, modes=["fwd"], atol=1e-5, rtol=1e-5
        )


def test_dropout_masks_are_per_sequence_inverted_and_training_only():
    # Linear SimpleRNN with R = 0, b = 0 and an input constant over time: y_t = (x * m) @ K at
    # every step, so equal outputs across t prove the mask is drawn once per sequence.
    layer = rnnjax.SimpleRNN(
        64,
        activation=None,
        use_bias=False,
        recurrent_initializer="zeros",
        kernel_initializer="identity",
        dropout=0.25,
        return_sequences=True,
    )
    x = jnp.ones((8, 5, 64))
    v = layer.init(jax.random.key(0), x)
    y = np.asarray(layer.apply(v, x, training=True, rngs={"dropout": jax.random.key(1)}))
    np.testing.assert_array_equal(y, np.broadcast_to(y[:, :1], y.shape))
    assert np.all(np.isclose(y, 0.0) | np.isclose(y, 1 / 0.75))
    assert 0.15 < (y[:, 0] == 0).mean() < 0.35
    np.testing.assert_array_equal(np.asarray(layer.apply(v, x)), 1.0)  # inference: no dropout
    y2 = np.asarray(layer.apply(v, x, training=True, rngs={"dropout": jax.random.key(1)}))
    np.testing.assert_array_equal(y, y2)  # reproducible from the RNG


def test_lstm_implementation1_uses_one_mask_per_gate():
    core = F.LSTMCore(4)
    params = core.init(jax.random.key(0), 3)
    x = jax.random.normal(jax.random.key(1), (2, 3))
    masks = F.dropout_masks(jax.random.key(2), 0.5, (2, 3), count=4)
    got = core.project(params, x, masks)
    for g in range(4):
        expected = (x * masks[g]) @ params.kernel[:, 4 * g : 4 * g + 4] + params.bias[4 * g : 4 * g + 4]
        np.testing.assert_allclose(got[:, 4 * g : 4 * g + 4], expected, atol=1e-6)


def test_recurrent_dropout_changes_output_only_in_training():
    layer = rnnjax.GRU(6, recurrent_dropout=0.4, implementation=2, return_sequences=True)
    x = jax.random.normal(jax.random.key(0), (3, 5, 2))
    v = layer.init(jax.random.key(1), x)
    a = layer.apply(v, x)
    b = layer.apply(v, x, training=True, rngs={"dropout": jax.random.key(3)})
    np.testing.assert_allclose(a, rnnjax.GRU(6, return_sequences=True).apply(v, x), atol=1e-7)
    assert np.abs(np.asarray(a - b)).max() > 1e-3


def test_keras_constraints_project_after_the_update():
    x = jax.random.normal(jax.random.key(0), (2, 4, 3))
    model = rnnjax.LSTM(
        5,
        kernel_constraint=rnnjax.constraints.MaxNorm(0.3),
        recurrent_constraint="non_neg",
        bias_constraint=rnnjax.constraints.UnitNorm(),
    )
    params = model.init(jax.random.key(1), x)["params"]
    tx = optax.chain(optax.sgd(0.5), rnnjax.keras_constraints(model, x))
    state = tx.init(params)
    grads = jax.grad(lambda p: model.apply({"params": p}, x).sum())(params)
    updates, state = tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    plain = optax.apply_updates(params, optax.sgd(0.5).update(grads, optax.sgd(0.5).init(params), params)[0])
    cell, raw = new["cell"], plain["cell"]
    np.testing.assert_allclose(cell["kernel"], rnnjax.constraints.MaxNorm(0.3)(raw["kernel"]), atol=1e-6)
    assert np.linalg.norm(np.asarray(cell["kernel"]), axis=0).max() <= 0.3 + 1e-5
    np.testing.assert_allclose(cell["recurrent_kernel"], np.maximum(np.asarray(raw["recurrent_kernel"]), 0), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(cell["bias"])), 1.0, atol=1e-5)


def test_constraints_found_in_nested_user_model():
    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = rnnjax.LSTM(4, return_sequences=True, kernel_constraint="max_norm", name="enc")(x)
            x = rnnjax.GRU(3, recurrent_constraint="non_neg", name="dec")(x)
            return nn.Dense(2)(x)

    x = jnp.ones((2, 5, 3))
    found = rnnjax.constraints.collect_constraints(Model(), x)
    assert set(found) == {("enc", "cell", "kernel"), ("dec", "cell", "recurrent_kernel")}


def test_stateful_batch_size_and_mutability_errors():
    layer = rnnjax.LSTM(3, stateful=True)
    x = jnp.ones((4, 5, 2))
    v = layer.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="batch size 4"):
        layer.apply(v, jnp.ones((3, 5, 2)), mutable=["rnn_state"])
    with pytest.raises(ValueError, match="mutable"):
        layer.apply(v, x)
    with pytest.raises(ValueError, match="shape"):
        layer.apply(v, [jnp.ones((4, 2)), jnp.ones((4, 3))], method="reset_states", mutable=["rnn_state"])


def test_reset_states_whole_model():
    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = rnnjax.LSTM(4, stateful=True, return_sequences=True)(x)
            return rnnjax.GRU(3, stateful=True)(x)

    x = jax.random.normal(jax.random.key(0), (2, 5, 3))
    m = Model()
    v = m.init(jax.random.key(1), x)
    y1, upd = m.apply(v, x, mutable=["rnn_state"])
    v = {**v, **upd}
    assert all(np.abs(np.asarray(l)).sum() > 0 for l in jax.tree_util.tree_leaves(v["rnn_state"]))
    v = rnnjax.reset_states(v)
    assert all(np.abs(np.asarray(l)).sum() == 0 for l in jax.tree_util.tree_leaves(v["rnn_state"]))
    y2, _ = m.apply(v, x, mutable=["rnn_state"])
    np.testing.assert_allclose(y1, y2, atol=1e-6)


def test_input_dim_and_input_length_are_checked():
    x = jnp.ones((2, 5, 3))
    rnnjax.LSTM(4, input_dim=3, input_length=5).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="input_dim=4"):
        rnnjax.LSTM(4, input_dim=4).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="input_length=6"):
        rnnjax.GRU(4, input_length=6).init(jax.random.key(0), x)


def test_seed_defaults():
    lstm, gru, simple = rnnjax.LSTM(2), rnnjax.GRU(2), rnnjax.SimpleRNN(2)
    assert lstm.recurrent_activation == gru.recurrent_activation == "hard_sigmoid"
    assert lstm.implementation == gru.implementation == 1
    assert gru.reset_after is False and lstm.unit_forget_bias is True
    assert simple.activation == lstm.activation == "tanh"
    assert (lstm.kernel_initializer, lstm.recurrent_initializer, lstm.bias_initializer) == (
        "glorot_uniform",
        "orthogonal",
        "zeros",
    )
    b = rnnjax.LSTM(2).init(jax.random.key(0), jnp.ones((1, 2, 3)))["params"]["cell"]["bias"]
    np.testing.assert_array_equal(b, [0, 0, 1, 1, 0, 0, 0, 0])


@pytest.mark.parametrize(
    "make",
    [lambda **kw: rnnjax.LSTM(4, return_sequences=True, **kw), lambda **kw: rnnjax.RNN(rnnjax.GRUCell(4, **kw))],
    ids=["LSTM", "GRUCell"],
)
def test_keras2_implementation_0_warns_and_runs_implementation_1(make):
    """Keras 2's deprecated ``implementation=0`` (older Keras 2 files carry it): Keras 2.3's
    warning, then implementation 1's computation, its one dropout mask per gate included."""
    x = jax.random.normal(jax.random.key(0), (2, 5, 3))
    with pytest.warns(
        UserWarning,
        match=r"`implementation=0` has been deprecated, and now defaults to "
        r"`implementation=1`",
    ):
        layer = make(implementation=0, dropout=0.3, recurrent_dropout=0.2)
    reference = make(implementation=1, dropout=0.3, recurrent_dropout=0.2)
    v = reference.init(jax.random.key(1), x)
    rngs = {"dropout": jax.random.key(2)}
    np.testing.assert_array_equal(
        layer.apply(v, x, training=True, rngs=rngs), reference.apply(v, x, training=True, rngs=rngs)
    )
    fused = make(implementation=2, dropout=0.3, recurrent_dropout=0.2)  # one mask: other numbers
    assert not np.allclose(fused.apply(v, x, training=True, rngs=rngs), reference.apply(v, x, training=True, rngs=rngs))
