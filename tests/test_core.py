"""The functional core and the Flax modules: reference values, gradients, dropout, custom cells,
constraints, regularizers and stateful bookkeeping."""
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

from custom_cells import MinimalRNNCell
from jaxpr_util import equations

C = dict(kernel_initializer=Constant(0.01), recurrent_initializer=Constant(0.02), bias_initializer=Constant(0.03))
K3 = dict(recurrent_activation="sigmoid")  # Keras 3's defaults, which the public values use


def _apply(layer, x, **kw):
    v = layer.init(jax.random.key(0), x, **kw)
    return np.asarray(layer.apply(v, x, **kw))


# Keras's own test vectors (shared/reference/keras-semantics.md).
def test_public_reference_values_lstm():
    x = jnp.arange(72.0).reshape(3, 6, 4)
    np.testing.assert_allclose(_apply(rnnjax.LSTM(3, **C, **K3), x), np.repeat([[0.6288687], [0.86899155], [0.9460773]], 3, 1), atol=1e-6)
    np.testing.assert_allclose(_apply(rnnjax.LSTM(3, go_backwards=True, **C, **K3), x),
                               np.repeat([[0.35622165], [0.74789524], [0.8872726]], 3, 1), atol=1e-6)


def test_public_reference_values_gru():
    x = jnp.arange(72.0).reshape(3, 6, 4)
    np.testing.assert_allclose(_apply(rnnjax.GRU(3, reset_after=True, **C, **K3), x),
                               np.repeat([[0.5217289], [0.6371659], [0.39384964]], 3, 1), atol=1e-6)
    np.testing.assert_allclose(_apply(rnnjax.GRU(3, reset_after=False, **C, **K3), x),
                               np.repeat([[0.51447755], [0.6426879], [0.40208298]], 3, 1), atol=1e-6)


def test_public_reference_values_simple_rnn_and_masked_gru():
    x = jnp.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_allclose(_apply(rnnjax.SimpleRNN(4, **C), x), np.repeat([[0.405432], [0.73605347]], 4, 1), atol=1e-6)
    x = jnp.arange(24.0).reshape(2, 4, 3)
    mask = jnp.array([[1, 1, 0, 1], [1, 0, 0, 1]], bool)
    out = _apply(rnnjax.GRU(2, reset_after=True, return_sequences=True, **C, **K3), x, mask=mask)
    expected = np.array([[0.03606692, 0.09497581, 0.09497581, 0.19393763], [0.16051409, 0.16051409, 0.16051409, 0.30818558]])
    np.testing.assert_allclose(out, np.repeat(expected[..., None], 2, -1), atol=1e-6)


def test_hard_sigmoid_is_keras2_definition():
    x = np.linspace(-4, 4, 101)
    expected = np.clip(0.2 * x.astype(np.float64) + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(np.asarray(rnnjax.activations.get("hard_sigmoid")(jnp.asarray(x, jnp.float32))), expected, atol=1e-7)
    keras3 = np.clip(x / 6.0 + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(np.asarray(rnnjax.activations.get("hard_sigmoid_keras3")(jnp.asarray(x, jnp.float32))), keras3, atol=1e-7)


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
        np.testing.assert_array_equal(np.asarray(jax.jvp(hs, (x,), (tangent,))[1], np.float32),
                                      np.asarray(jax.jvp(reference, (x,), (tangent,))[1], np.float32))
    assert float(jax.grad(hs)(jnp.float32(2.5))) == np.float32(0.1)


def _np_lstm(x, k, r, b, mask, sigma, phi):
    """float64 numpy LSTM with Keras 2 masking, written from the equations."""
    bsz, t, _ = x.shape
    u = r.shape[0]
    h = np.zeros((bsz, u)); c = np.zeros((bsz, u)); out = np.zeros((bsz, u)); outs = []
    for s in range(t):
        z = x[:, s] @ k + h @ r + b
        i, f, g, o = sigma(z[:, :u]), sigma(z[:, u:2 * u]), phi(z[:, 2 * u:3 * u]), sigma(z[:, 3 * u:])
        c_new = f * c + i * g
        h_new = o * phi(c_new)
        m = mask[:, s:s + 1]
        h = np.where(m, h_new, h); c = np.where(m, c_new, c); out = np.where(m, h_new, out)
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
    out, state = jax.jit(lambda p, x, m: F.rnn(core, p, x, mask=m, return_sequences=True))(params, jnp.asarray(x, jnp.float32), jnp.asarray(mask))
    np.testing.assert_allclose(out, ref, atol=2e-5)
    np.testing.assert_allclose(state.h, h, atol=2e-5)
    np.testing.assert_allclose(state.c, c, atol=2e-5)


@pytest.mark.parametrize("core", [F.SimpleRNNCore(3), F.LSTMCore(3, recurrent_activation="sigmoid"),
                                  F.GRUCore(3, recurrent_activation="sigmoid"),
                                  F.GRUCore(3, recurrent_activation="sigmoid", reset_after=True)],
                         ids=["simple", "lstm", "gru", "gru_reset_after"])
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
        check_grads(lambda p, x: f(p, x, False), (p64, x.astype(jnp.float64)), order=1, modes=["fwd"],
                    atol=1e-5, rtol=1e-5)


def test_vmap_of_unbatched_equals_batched():
    core = F.GRUCore(4, reset_after=True)
    params = core.init(jax.random.key(0), 3)
    x = jax.random.normal(jax.random.key(1), (5, 6, 3))
    mask = jax.random.bernoulli(jax.random.key(2), 0.7, (5, 6))
    batched = F.rnn(core, params, x, mask=mask, return_sequences=True, go_backwards=True)
    single = jax.vmap(lambda xx, mm: F.rnn(core, params, xx, mask=mm, return_sequences=True, go_backwards=True))(x, mask)
    for a, b in zip(jax.tree_util.tree_leaves(batched), jax.tree_util.tree_leaves(single)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_custom_cell_alone_and_stacked():
    x = jax.random.normal(jax.random.key(0), (2, 6, 5))
    layer = rnnjax.RNN(MinimalRNNCell(32))
    v = layer.init(jax.random.key(1), x)
    y = layer.apply(v, x)
    assert y.shape == (2, 32)
    k, r = np.asarray(v["params"]["cell"]["kernel"]), np.asarray(v["params"]["cell"]["recurrent_kernel"])
    h = np.zeros((2, 32))
    for t in range(6):
        h = np.asarray(x[:, t]) @ k + h @ r
    np.testing.assert_allclose(y, h, rtol=1e-5, atol=1e-5)

    stacked = rnnjax.RNN([MinimalRNNCell(32), MinimalRNNCell(64)])
    vs = stacked.init(jax.random.key(1), x)
    ys = stacked.apply(vs, x)
    assert ys.shape == (2, 64)
    p0, p1 = vs["params"]["cell_0"], vs["params"]["cell_1"]
    h0, h1 = np.zeros((2, 32)), np.zeros((2, 64))
    for t in range(6):
        h0 = np.asarray(x[:, t]) @ np.asarray(p0["kernel"]) + h0 @ np.asarray(p0["recurrent_kernel"])
        h1 = h0 @ np.asarray(p1["kernel"]) + h1 @ np.asarray(p1["recurrent_kernel"])
    np.testing.assert_allclose(ys, h1, rtol=1e-4, atol=1e-4)
    # jit and grad through the generic (Flax-cell) path.
    g = jax.jit(jax.grad(lambda v: stacked.apply(v, x).sum()))(vs)
    assert np.isfinite(np.asarray(g["params"]["cell_1"]["kernel"])).all()


class AttentionCell(nn.Module):
    """A cell that takes `constants` (the seed's attention-style use)."""

    units: int

    @property
    def state_size(self):
        return self.units

    @nn.compact
    def __call__(self, inputs, states, constants):
        (context,) = constants
        k = self.param("kernel", nn.initializers.lecun_normal(), (inputs.shape[-1], self.units))
        c = self.param("context_kernel", nn.initializers.lecun_normal(), (context.shape[-1], self.units))
        out = jnp.tanh(inputs @ k + states[0] + context @ c)
        return out, [out]


def test_constants_reach_every_step():
    x = jax.random.normal(jax.random.key(0), (2, 5, 3))
    ctx = jax.random.normal(jax.random.key(1), (2, 7))
    layer = rnnjax.RNN(AttentionCell(4), return_sequences=True)
    v = layer.init(jax.random.key(2), x, constants=[ctx])
    y = layer.apply(v, x, constants=[ctx])
    p = v["params"]["cell"]
    h = np.zeros((2, 4))
    for t in range(5):
        h = np.tanh(np.asarray(x[:, t]) @ np.asarray(p["kernel"]) + h + np.asarray(ctx) @ np.asarray(p["context_kernel"]))
        np.testing.assert_allclose(y[:, t], h, atol=1e-5)
    with pytest.raises(ValueError, match="constants"):
        rnnjax.RNN(rnnjax.LSTMCell(3)).init(jax.random.key(0), x, constants=[ctx])


def test_dropout_masks_are_per_sequence_inverted_and_training_only():
    # Linear SimpleRNN with R = 0, b = 0 and an input constant over time: y_t = (x * m) @ K at
    # every step, so equal outputs across t prove the mask is drawn once per sequence.
    layer = rnnjax.SimpleRNN(64, activation=None, use_bias=False, recurrent_initializer="zeros",
                             kernel_initializer="identity", dropout=0.25, return_sequences=True)
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
        expected = (x * masks[g]) @ params.kernel[:, 4 * g:4 * g + 4] + params.bias[4 * g:4 * g + 4]
        np.testing.assert_allclose(got[:, 4 * g:4 * g + 4], expected, atol=1e-6)


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
    model = rnnjax.LSTM(5, kernel_constraint=rnnjax.constraints.MaxNorm(0.3), recurrent_constraint="non_neg",
                        bias_constraint=rnnjax.constraints.UnitNorm())
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
    assert (lstm.kernel_initializer, lstm.recurrent_initializer, lstm.bias_initializer) == ("glorot_uniform", "orthogonal", "zeros")
    b = rnnjax.LSTM(2).init(jax.random.key(0), jnp.ones((1, 2, 3)))["params"]["cell"]["bias"]
    np.testing.assert_array_equal(b, [0, 0, 1, 1, 0, 0, 0, 0])


@pytest.mark.parametrize("core", [F.SimpleRNNCore(5, activation="relu"), F.LSTMCore(5), F.LSTMCore(5, recurrent_activation="sigmoid"),
                                  F.GRUCore(5, reset_after=True, recurrent_activation="sigmoid")],
                         ids=["simple", "lstm_hard", "lstm_sigmoid", "gru_reset_after"])
@pytest.mark.parametrize("options", [{}, {"go_backwards": True, "return_sequences": True},
                                     {"zero_output_for_mask": True, "return_sequences": True}])
def test_custom_backward_equals_autodiff(core, options):
    """The hand-written backward pass gives autodiff's gradients (masks, dropout, go_backwards)."""
    params = core.init(jax.random.key(0), 3)
    params = jax.tree_util.tree_map(lambda a: a + 0.1, params)
    x = jax.random.normal(jax.random.key(1), (4, 9, 3))
    mask = jax.random.bernoulli(jax.random.key(2), 0.7, (4, 9))
    rmask = F.dropout_masks(jax.random.key(3), 0.3, (4, 5), count=1)
    h0 = jax.tree_util.tree_map(lambda a: a + 0.3, core.initial_state((4,)))

    def loss(p, x, h0, custom):
        out, state = F.rnn(core, p, x, mask=mask, initial_state=h0, recurrent_dropout_mask=rmask,
                           custom_backward=custom, **options)
        w = jnp.arange(out.size, dtype=out.dtype).reshape(out.shape) / out.size
        return jnp.sum(out * w) + sum(jnp.sum(jnp.sin(s)) for s in state)

    assert core.linear_step(params, rmask) is not None
    fast = jax.jit(jax.grad(lambda p, x, h: loss(p, x, h, True), argnums=(0, 1, 2)))(params, x, h0)
    slow = jax.jit(jax.grad(lambda p, x, h: loss(p, x, h, False), argnums=(0, 1, 2)))(params, x, h0)
    for a, b in zip(jax.tree_util.tree_leaves(fast), jax.tree_util.tree_leaves(slow)):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("recurrent_activation", ["hard_sigmoid", "sigmoid"])
def test_per_gate_lstm_uses_the_hand_written_pointwise_backward(monkeypatch, recurrent_activation):
    """The LSTM with one recurrent dropout mask per gate (InputAdditiveStep, autodiff's loop)
    differentiates its gate math by LSTMCore.pointwise_vjp (the gradients themselves are compared
    with autodiff's in test_input_additive_kernel_gradients_after_the_loop)."""
    calls = []
    original = F.LSTMCore.pointwise_vjp

    def spy(self, *args):
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(F.LSTMCore, "pointwise_vjp", spy)
    core = F.LSTMCore(5, recurrent_activation=recurrent_activation)
    params = core.init(jax.random.key(0), 3)
    x = jax.random.normal(jax.random.key(1), (2, 4, 3))
    rmask = F.dropout_masks(jax.random.key(2), 0.3, (2, 5), count=4)
    assert core.linear_step(params, rmask) is None
    jax.grad(lambda p: jnp.sum(F.rnn(core, p, x, recurrent_dropout_mask=rmask)[0]))(params)
    assert calls
    calls.clear()
    jax.grad(lambda p: jnp.sum(F.rnn(core, p, x, recurrent_dropout_mask=rmask, custom_backward=False)[0]))(params)
    assert not calls


@pytest.mark.parametrize("core, count", [(F.GRUCore(7), None), (F.GRUCore(7), 1), (F.GRUCore(7), 3), (F.LSTMCore(7), 4),
                                         (F.LSTMCore(7, recurrent_activation="sigmoid"), 4),
                                         (F.GRUCore(7, reset_after=True, recurrent_activation="sigmoid"), 3)],
                         ids=["gru", "gru_shared_mask", "gru_per_gate_masks", "lstm_per_gate_masks",
                              "lstm_sigmoid_per_gate_masks", "gru_reset_after_per_gate_masks"])
@pytest.mark.parametrize("options", [{}, {"go_backwards": True, "return_sequences": True},
                                     {"zero_output_for_mask": True, "return_sequences": True}])
def test_input_additive_kernel_gradients_after_the_loop(core, count, options):
    """Steps without a LinearStep form but with an InputAdditiveStep form — the seed's default GRU
    (reset_after=False, hard sigmoid), the LSTM and the reset-after GRU (through a ghost part)
    with one recurrent dropout mask per gate — get
    their recurrent-kernel gradients after the loop, from the stored matmul operands and the
    input cotangents. Gradients (parameters, inputs, initial state) equal autodiff's
    (``custom_backward=False``) with masks, recurrent dropout and go_backwards, under vmap too;
    the backward loop holds no (U, U) kernel-gradient matmul."""
    params = jax.tree_util.tree_map(lambda a: a + 0.1, core.init(jax.random.key(0), 3))
    x = jax.random.normal(jax.random.key(1), (4, 9, 3))
    mask = jax.random.bernoulli(jax.random.key(2), 0.7, (4, 9))
    rmask = None if count is None else F.dropout_masks(jax.random.key(3), 0.3, (4, 7), count=count)
    h0 = jax.tree_util.tree_map(lambda a: a + 0.3, core.initial_state((4,)))

    def loss(p, x, h0, custom, mask=mask, rmask=rmask):
        out, state = F.rnn(core, p, x, mask=mask, initial_state=h0, recurrent_dropout_mask=rmask,
                           custom_backward=custom, **options)
        w = jnp.arange(out.size, dtype=out.dtype).reshape(out.shape) / out.size
        return jnp.sum(out * w) + sum(jnp.sum(jnp.sin(s)) for s in state)

    assert core.linear_step(params, rmask) is None and core.additive_step(params, rmask) is not None
    grad = jax.grad(lambda p, x, h, custom: loss(p, x, h, custom), argnums=(0, 1, 2))
    fast = jax.jit(lambda p, x, h: grad(p, x, h, True))(params, x, h0)
    slow = jax.jit(lambda p, x, h: grad(p, x, h, False))(params, x, h0)
    for a, b in zip(jax.tree_util.tree_leaves(fast), jax.tree_util.tree_leaves(slow)):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)
    # per example (vmap over the batch, the parameter gradients summed) equals the batched gradient
    def plain_loss(p, x, h0, mask, rmask):
        out, state = F.rnn(core, p, x, mask=mask, initial_state=h0, recurrent_dropout_mask=rmask, **options)
        return jnp.sum(jnp.sin(out)) + sum(jnp.sum(s ** 2) for s in state)

    def per_example(xx, hh, mm, rr):
        one = jax.tree_util.tree_map(lambda a: a[None], hh)
        return jax.grad(plain_loss)(params, xx[None], one, mm[None], None if rr is None else rr[:, None])

    per = jax.jit(jax.vmap(per_example, in_axes=(0, 0, 0, None if rmask is None else 1)))(x, h0, mask, rmask)
    batched = jax.jit(jax.grad(plain_loss))(params, x, h0, mask, rmask)
    for a, b in zip(jax.tree_util.tree_leaves(per), jax.tree_util.tree_leaves(batched)):
        np.testing.assert_allclose(jnp.sum(a, 0), b, atol=2e-5, rtol=2e-5)
    # no kernel-shaped (7, 7) matmul inside any loop of the differentiated program
    jaxpr = jax.make_jaxpr(lambda p: grad(p, x, h0, True)[0])(params).jaxpr
    loops = [e.params["jaxpr"].jaxpr for e in equations(jaxpr) if e.primitive.name == "scan"]
    assert loops
    for body in loops:
        assert not any(e.primitive.name == "dot_general" and e.outvars[0].aval.shape == (7, 7)
                       for e in equations(body))


@pytest.mark.parametrize("core", [F.LSTMCore(4), F.GRUCore(4), F.GRUCore(4, reset_after=True, recurrent_activation="sigmoid")],
                         ids=["lstm", "gru", "gru_reset_after"])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_projection_in_chunks_equals_all_at_once(core, go_backwards):
    """``project_chunk`` (inputs projected a span at a time inside an outer loop, with a remainder
    span) changes no number: outputs, states and gradients equal the one-projection loop."""
    from rnnjax.functional import scan_rnn

    params = jax.tree_util.tree_map(lambda a: a + 0.05, core.init(jax.random.key(0), 3))
    x = jax.random.normal(jax.random.key(1), (2, 11, 3))
    mask = jax.random.bernoulli(jax.random.key(2), 0.8, (2, 11))

    def run(p, chunk):
        out, state = scan_rnn(lambda s, xt: core.step(p, s, xt), x, core.initial_state((2,)),
                              project=lambda z: core.project(p, z), mask=mask, go_backwards=go_backwards,
                              return_sequences=True, linear=core.linear_step(p), project_chunk=chunk)
        return jnp.sum(out * jnp.cos(out)) + sum(jnp.sum(s) for s in state), (out, state)

    (_, a), ga = jax.value_and_grad(lambda p: run(p, 0), has_aux=True)(params)
    (_, b), gb = jax.value_and_grad(lambda p: run(p, 4), has_aux=True)(params)
    for u, v in zip(jax.tree_util.tree_leaves((a, ga)), jax.tree_util.tree_leaves((b, gb))):
        np.testing.assert_allclose(u, v, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("core", [F.LSTMCore(8), F.GRUCore(8, reset_after=True), F.SimpleRNNCore(8)],
                         ids=["lstm", "gru_reset_after", "simple"])
@pytest.mark.parametrize("options", [{"return_sequences": True}, {"go_backwards": True},
                                     {"go_backwards": True, "return_sequences": True, "zero_output_for_mask": True}])
def test_inference_spans_change_no_number(monkeypatch, core, options):
    """Not differentiated, a large projected block runs in spans (``INFER_SPAN_MIN_BYTES``);
    differentiated, all steps at once. With the rule forced on (threshold 0): the forward's
    temporaries shrink, outputs and final states equal the one-projection loop, and gradients
    (parameters, inputs, initial state), jit and vmap are unchanged."""
    from rnnjax.functional import driver

    params = jax.tree_util.tree_map(lambda a: a + 0.05, core.init(jax.random.key(0), 5))
    x = jax.random.normal(jax.random.key(1), (3, 43, 5))
    mask = jax.random.bernoulli(jax.random.key(2), 0.8, (3, 43))
    h0 = jax.tree_util.tree_map(lambda a: a + 0.2, core.initial_state((3,)))

    def f(p, x, h0, mask=mask):
        return F.rnn(core, p, x, mask=mask, initial_state=h0, **options)

    def loss(p, x, h0):
        out, state = f(p, x, h0)
        return jnp.sum(out * jnp.cos(out)) + sum(jnp.sum(s * s) for s in state)

    def measure():
        fwd = jax.jit(lambda *a: f(*a))
        # the CPU's program (the rule is for CPU memory; on a GPU, XLA's temporaries at these tiny
        # sizes are other buffers: 12 vs 5 KB measured on an H200)
        on_cpu = jax.device_put((params, x, h0), jax.devices("cpu")[0])
        temp = fwd.lower(*on_cpu).compile().memory_analysis().temp_size_in_bytes
        grads = jax.jit(jax.grad(lambda *a: loss(*a), argnums=(0, 1, 2)))(params, x, h0)
        per_example = jax.jit(jax.vmap(lambda xx, hh, mm: f(params, xx, hh, mm)))(x, h0, mask)
        return temp, fwd(params, x, h0), grads, per_example

    temp_all, *want = measure()
    monkeypatch.setattr(driver, "INFER_SPAN_MIN_BYTES", 0)
    temp_spans, *got = measure()
    assert temp_spans < temp_all
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)
    # vmap of unbatched calls equals the batched call
    for a, b in zip(jax.tree_util.tree_leaves(got[2]), jax.tree_util.tree_leaves(got[0])):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)


def _folded_bias(jaxpr, input_dim) -> bool:
    """Whether a matmul takes the inputs with a column of ones, ``[x, 1]`` (``input_dim + 1`` wide)."""
    return any(e.primitive.name == "dot_general" and any(getattr(v.aval, "shape", ())[-1:] == (input_dim + 1,)
                                                         for v in e.invars)
               for e in equations(jaxpr))


@pytest.mark.parametrize("core", [F.SimpleRNNCore(8), F.LSTMCore(8, recurrent_activation="sigmoid"), F.LSTMCore(8)],
                         ids=["simple", "lstm", "lstm_hard_sigmoid"])
@pytest.mark.parametrize("shape", [(8, 40), (2, 11)], ids=["folded", "plain"])
@pytest.mark.parametrize("options", [{"return_sequences": True},
                                     {"go_backwards": True, "return_sequences": True, "zero_output_for_mask": True}])
def test_inference_bias_in_loop_changes_no_number(monkeypatch, core, shape, options):
    """A call that is not differentiated adds the input bias inside the loop
    (``core.unbiased_projection``) instead of in the projection: its outputs and states equal
    the training program's (the primal of ``jax.vjp``) and the program with the rule off; the
    projection of the inference program has no ``[x, 1]`` matmul (the folded bias) while the
    training program's has one (from FOLD_BIAS_MIN_ROWS rows on)."""
    from rnnjax.functional import core as core_module

    params = jax.tree_util.tree_map(lambda a: a + 0.3, core.init(jax.random.key(0), 5))
    x = jax.random.normal(jax.random.key(1), shape + (5,))
    mask = jax.random.bernoulli(jax.random.key(2), 0.8, shape)
    h0 = jax.tree_util.tree_map(lambda a: a + 0.2, core.initial_state(shape[:1]))

    def f(p, x, h0, mask=mask):
        return F.rnn(core, p, x, mask=mask, initial_state=h0, **options)

    infer = jax.jit(f)(params, x, h0)
    train = jax.jit(lambda p, x, h0: jax.vjp(lambda p: f(p, x, h0), p)[0])(params, x, h0)
    per_example = jax.jit(jax.vmap(lambda xx, hh, mm: f(params, xx, hh, mm)))(x, h0, mask)
    monkeypatch.setattr(type(core), "bias_in_loop", False, raising=False)
    plain = jax.jit(f)(params, x, h0)
    monkeypatch.undo()
    # float32 rounding of two programs over 40 recurrent steps: up to 2e-6 on a Zen 5 CPU (XLA's
    # CPU kernels differ between CPU generations); a wrong bias would be off by 1e-1
    for got in (train, plain, per_example):
        for a, b in zip(jax.tree_util.tree_leaves(infer), jax.tree_util.tree_leaves(got)):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    assert not _folded_bias(jax.make_jaxpr(f)(params, x, h0).jaxpr, 5)
    train_jaxpr = jax.make_jaxpr(lambda p: jax.vjp(lambda p: f(p, x, h0), p)[0])(params).jaxpr
    assert _folded_bias(train_jaxpr, 5) == (shape[0] * shape[1] >= core_module.FOLD_BIAS_MIN_ROWS)


@pytest.mark.parametrize("core", [F.SimpleRNNCore(6), F.LSTMCore(6, recurrent_activation="sigmoid"),
                                  F.GRUCore(6, reset_after=True), F.GRUCore(6, use_bias=False)],
                         ids=["simple", "lstm", "gru_reset_after", "gru_no_bias"])
def test_folded_projection_equals_plain_matmul(core, monkeypatch):
    """From FOLD_BIAS_MIN_ROWS rows on, the projection is ``[x, 1] @ [[K], [b]]`` on 2-D rows (per
    gate for the GRU): outputs and gradients equal the plain ``x @ K + b`` path."""
    from rnnjax.functional import core as core_module

    params = jax.tree_util.tree_map(lambda a: a + 0.1, core.init(jax.random.key(0), 5))
    x = jax.random.normal(jax.random.key(1), (8, 40, 5))  # 320 rows
    assert 8 * 40 >= core_module.FOLD_BIAS_MIN_ROWS

    def loss(p, x):
        out, _ = F.rnn(core, p, x, return_sequences=True)
        return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape)))

    folded = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
    monkeypatch.setattr(core_module, "FOLD_BIAS_MIN_ROWS", 10 ** 9)
    plain = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
    for a, b in zip(jax.tree_util.tree_leaves(folded), jax.tree_util.tree_leaves(plain)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("rec", ["sigmoid", "hard_sigmoid"])
def test_lstm_pointwise_vjp_equals_autodiff(rec):
    """The LSTM's hand-written element-wise backward gives autodiff's cotangents, including the
    hard sigmoid's clip edges (0.2·z + 0.5 exactly 0 or 1, where autodiff's slope is 0.1)."""
    core = F.LSTMCore(4, recurrent_activation=rec)
    assert core.has_fast_vjp
    keys = jax.random.split(jax.random.key(0), 6)
    xp = 3 * jax.random.normal(keys[0], (3, 16))
    xp = xp.at[0, :8].set(jnp.array([-2.5, 2.5, 0.0, -3.0, 3.0, 2.5, -2.5, 1.0]))
    a = jax.random.normal(keys[1], (3, 16)).at[0, :8].set(0.0)
    state = F.LSTMState(jax.random.normal(keys[2], (3, 4)), jax.random.normal(keys[3], (3, 4)))
    ct = (F.LSTMState(jax.random.normal(keys[4], (3, 4)), jax.random.normal(keys[5], (3, 4))), jnp.ones((3, 4)))
    _, vjp = jax.vjp(lambda xp, a, s: core.pointwise(None, xp, a, s), xp, a, state)
    d_xp, d_a, d_state = vjp(ct)
    _, got_xp, got_a, got_state = core.pointwise_vjp(None, xp, a, state, ct)
    for got, want in [(got_xp, d_xp), (got_a, d_a), (got_state.h, d_state.h), (got_state.c, d_state.c)]:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert not F.LSTMCore(4, recurrent_activation="relu").has_fast_vjp


@pytest.mark.parametrize("masks", [None, 1, 3])
def test_gru_loop_params_give_the_same_step(masks):
    """``GRUCore.loop_params`` (the reset-before GRU's recurrent kernel split once, before the
    loop) changes no number: a step with it equals a step with the Keras-layout params."""
    core = F.GRUCore(5, reset_after=False)
    params = core.init(jax.random.key(0), 3)
    split = core.loop_params(params)
    assert isinstance(split.recurrent_kernel, tuple) and len(split.recurrent_kernel) == 3
    assert core.loop_params(split) is split
    assert F.GRUCore(5, reset_after=True).loop_params(params) is params
    state = F.GRUState(jax.random.normal(jax.random.key(1), (2, 5)))
    xp = core.project(params, jax.random.normal(jax.random.key(2), (2, 3)))
    rm = None if masks is None else F.dropout_masks(jax.random.key(3), 0.4, (2, 5), count=masks)
    want = core.step(params, state, xp, rm)
    got = core.step(split, state, xp, rm)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("make", [lambda **kw: rnnjax.GRU(6, **kw),
                                  lambda **kw: rnnjax.LSTM(6, recurrent_dropout=0.3, dropout=0.2, **kw),
                                  lambda **kw: rnnjax.GRU(6, recurrent_dropout=0.3, **kw),
                                  lambda **kw: rnnjax.GRU(6, recurrent_dropout=0.3, reset_after=True, **kw)],
                         ids=["gru_default", "lstm_per_gate_dropout", "gru_per_gate_dropout",
                              "gru_reset_after_per_gate_dropout"])
def test_layer_gradients_equal_the_unrolled_loop(make):
    """Layers whose training step runs an InputAdditiveStep (kernel gradients after the loop):
    in training mode (dropout masks from the same 'dropout' key), the parameter and input
    gradients equal those of the same layer with ``unroll=True`` (a Python loop, plain autodiff)."""
    x = jax.random.normal(jax.random.key(0), (3, 7, 4))
    mask = jnp.array([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 1, 1, 0]], bool)
    layer, unrolled = make(return_sequences=True), make(return_sequences=True, unroll=True)
    v = layer.init(jax.random.key(1), x)
    v = jax.tree_util.tree_map(lambda a: a + 0.05, v)

    def grads(lay):
        def loss(p, x):
            out = lay.apply({"params": p}, x, mask=mask, training=True, rngs={"dropout": jax.random.key(2)})
            return jnp.sum(jnp.sin(out) * jnp.arange(7)[None, :, None])
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(v["params"], x)

    for a, b in zip(jax.tree_util.tree_leaves(grads(layer)), jax.tree_util.tree_leaves(grads(unrolled))):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)
    # the scan path forms no (U, U) kernel-gradient matmul inside its loops
    jaxpr = jax.make_jaxpr(jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x, training=True,
                                                                 rngs={"dropout": jax.random.key(2)}))))(v["params"]).jaxpr
    loops = [e.params["jaxpr"].jaxpr for e in equations(jaxpr) if e.primitive.name == "scan"]
    assert loops and not any(e.primitive.name == "dot_general" and e.outvars[0].aval.shape == (6, 6)
                             for body in loops for e in equations(body))


def test_input_additive_step_ghost_parts_are_checked():
    """Ghost parts must follow the projected parts, numbered from their count on."""
    from rnnjax.functional.driver import InputAdditiveStep, scan_rnn

    k = jnp.eye(3)

    def step(kernels, state, xp_t):
        a, b, g = xp_t
        h = jnp.tanh(a + state @ kernels[0] + b + g + state @ kernels[1])
        return (h, h), (state, state)

    x = jnp.ones((2, 4, 3))
    bad = InputAdditiveStep((k, k), step, parts=(0, 5))
    with pytest.raises(ValueError, match=r"parts \(0, 5\).*numbered from 2"):
        jax.grad(lambda x: jnp.sum(scan_rnn(lambda s, xt: step((k, k), s, xt + (0 * xt[0],))[0], x, jnp.zeros((2, 3)),
                                            project=lambda z: (z, z), additive=bad)[0]))(x)
    good = InputAdditiveStep((k, k), step, parts=(0, 2))
    ref = jax.grad(lambda x: jnp.sum(scan_rnn(lambda s, xt: step((k, k), s, xt + (0 * xt[0],))[0], x, jnp.zeros((2, 3)),
                                              project=lambda z: (z, z))[0]))(x)
    got = jax.grad(lambda x: jnp.sum(scan_rnn(lambda s, xt: step((k, k), s, xt + (0 * xt[0],))[0], x, jnp.zeros((2, 3)),
                                              project=lambda z: (z, z), additive=good)[0]))(x)
    np.testing.assert_allclose(got, ref, atol=1e-6)
