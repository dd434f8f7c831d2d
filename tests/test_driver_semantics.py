"""The driver's sequence semantics through the functional core and the layers: vmap of unbatched
sequences, the generic (Keras-protocol Flax cell) path, stacked cells and constants. Masking is
tests/test_masked_steps.py; bad arguments are tests/test_errors.py."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from custom_cells import MinimalRNNCell

import rnnjax
import rnnjax.functional as F


def test_vmap_of_unbatched_equals_batched():
    core = F.GRUCore(4, reset_after=True)
    params = core.init(jax.random.key(0), 3)
    x = jax.random.normal(jax.random.key(1), (5, 6, 3))
    mask = jax.random.bernoulli(jax.random.key(2), 0.7, (5, 6))
    batched = F.rnn(core, params, x, mask=mask, return_sequences=True, go_backwards=True)
    single = jax.vmap(lambda xx, mm: F.rnn(core, params, xx, mask=mm, return_sequences=True, go_backwards=True))(
        x, mask
    )
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
        h = np.tanh(
            np.asarray(x[:, t]) @ np.asarray(p["kernel"]) + h + np.asarray(ctx) @ np.asarray(p["context_kernel"])
        )
        np.testing.assert_allclose(y[:, t], h, atol=1e-5)
    with pytest.raises(ValueError, match="constants"):
        rnnjax.RNN(rnnjax.LSTMCell(3)).init(jax.random.key(0), x, constants=[ctx])


@pytest.mark.parametrize(
    "core",
    [
        F.SimpleRNNCore(4),
        F.LSTMCore(4),
        F.GRUCore(4),
        F.GRUCore(4, reset_after=True),
        F.ConvLSTMCore(4, 3, rank=2, padding="same"),
    ],
    ids=["simple", "lstm", "gru", "gru_reset_after", "conv_lstm2d"],
)
def test_every_core_declares_the_protocol(core):
    """Every core is a ``RecurrentCore`` (the declared protocol, not discovered attributes) with
    its number of feature axes."""
    assert isinstance(core, F.RecurrentCore)
    assert core.num_feature_axes == (3 if isinstance(core, F.ConvLSTMCore) else 1)


def test_rnn_names_what_a_core_lacks():
    class Partial:
        def step(self, params, state, xp_t):
            return state, xp_t

    with pytest.raises(
        TypeError,
        match=r"`core`: expected a rnnjax.functional.RecurrentCore, got Partial without "
        r"init, initial_state, project, state_size",
    ):
        F.rnn(Partial(), None, jnp.ones((2, 3, 4)))


def test_rnn_drives_a_conv_lstm_core_as_the_layer_does():
    """``rnn`` runs a ConvLSTMCore (``(*batch, T, *spatial, C)``, masks, go_backwards, initial
    state) and equals the ConvLSTM2D layer on the same parameters; ``conv_lstm`` is its alias."""
    x = jax.random.normal(jax.random.key(0), (2, 5, 6, 5, 3))
    mask = jnp.array([[1, 1, 0, 1, 1], [1, 0, 1, 1, 0]], bool)
    layer = rnnjax.ConvLSTM2D(4, 3, padding="same", return_sequences=True, return_state=True, go_backwards=True)
    v = layer.init(jax.random.key(1), x)
    h0 = [jax.random.normal(jax.random.key(2), (2, 6, 5, 4))] * 2
    want = layer.apply(v, x, mask=mask, initial_state=h0)
    core = F.ConvLSTMCore(4, 3, rank=2, padding="same")
    params = F.ConvLSTMParams(**v["params"]["cell"])
    out, state = F.rnn(core, params, x, mask=mask, initial_state=h0, return_sequences=True, go_backwards=True)
    alias = F.conv_lstm(core, params, x, mask=mask, initial_state=h0, return_sequences=True, go_backwards=True)
    for got in [(out, *state), (alias[0], *alias[1])]:
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="`core`"):
        F.conv_lstm(F.LSTMCore(4), F.LSTMCore(4).init(jax.random.key(0), 3), jnp.ones((2, 5, 3)))
