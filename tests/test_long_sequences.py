"""Long sequences and extreme inputs.

* A training step (grad of a loss) over 10,000+ steps is finite, and ``remat=True`` (the
  driver's chunked sqrt(T) checkpointing) gives the same gradients as without while XLA's
  compiled temp memory (``memory_analysis().temp_size_in_bytes``, deterministic) drops.
* Extreme inputs: magnitudes 1e4 give finite outputs and gradients; all-masked rows output
  zeros and keep their initial states; a single time step; a batch of 1.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from catalogue import assert_trees_close, keras_layer, layer

import rnnjax

KINDS = ["simple_rnn", "gru", "gru_reset_after", "lstm", "stack"]


def make(kind, ra="sigmoid", **kw):
    """A 3-unit layer of catalogue variant ``kind`` (``ra``: recurrent_activation of the gated cells)."""
    return layer(kind, 3, **({"recurrent_activation": ra} if ra else {}), **kw)


def _grad_fn(layer, x, mask=None):
    def loss(params):
        y = layer.apply({"params": params}, x, mask=mask)
        return jnp.mean(y**2)

    return jax.jit(jax.value_and_grad(loss))


@pytest.mark.parametrize("kind,steps", [("lstm", 10_000), ("gru", 10_007), ("stack", 10_000)])
def test_long_sequence_grad_remat_equals_plain(kind, steps):
    """10,000+ steps, with and without remat: same loss and gradients, all finite. 10,007 is
    prime: 100 chunks of 100 steps and a remainder of 7."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, steps, 2)), jnp.float32)
    mask = jnp.asarray(rng.random((2, steps)) < 0.9)
    plain = make(kind, return_sequences=True)
    remat = make(kind, return_sequences=True, remat=True)
    params = plain.init(jax.random.key(0), x[:, :3])["params"]
    lp, gp = _grad_fn(plain, x, mask)(params)
    lr, gr = _grad_fn(remat, x, mask)(params)
    assert np.isfinite(float(lp))
    for a in jax.tree_util.tree_leaves(gp):
        assert np.all(np.isfinite(np.asarray(a)))
        assert np.any(np.asarray(a) != 0)
    np.testing.assert_allclose(float(lr), float(lp), rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(gr), jax.tree_util.tree_leaves(gp)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)


def test_long_sequence_grad_matches_finite_differences():
    """The 10,000-step gradient is a real gradient: a directional finite difference (float64
    inputs are not needed: a central difference on a smooth loss, step 1e-2) agrees with it."""
    layer = make("gru_reset_after", remat=True)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 10_000, 2)), jnp.float32)
    params = layer.init(jax.random.key(0), x[:, :3])["params"]
    f = _grad_fn(layer, x)
    _, g = f(params)
    direction = jax.tree_util.tree_map(
        lambda a: jnp.asarray(np.random.default_rng(2).normal(size=a.shape), a.dtype), params
    )
    eps = 1e-2
    shift = lambda s: jax.tree_util.tree_map(lambda p, d: p + s * eps * d, params, direction)  # noqa: E731
    fd = (float(f(shift(1.0))[0]) - float(f(shift(-1.0))[0])) / (2 * eps)
    analytic = sum(
        float(jnp.sum(a * d)) for a, d in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(direction))
    )
    np.testing.assert_allclose(analytic, fd, rtol=2e-2, atol=1e-5)


@pytest.mark.parametrize("return_sequences", [True, False])
def test_remat_reduces_compiled_temp_memory(return_sequences):
    """XLA's temp buffer size of the compiled training step: remat must store far less than the
    per-step residuals of the plain scan (measured ratios are in bench/remat_memory.py)."""
    steps = 10_000
    x = jnp.zeros((1, steps, 2), jnp.float32)
    plain = rnnjax.LSTM(4, return_sequences=return_sequences)
    remat = rnnjax.LSTM(4, return_sequences=return_sequences, remat=True)
    params = plain.init(jax.random.key(0), x[:, :3])["params"]
    temp = {}
    for name, lstm in (("plain", plain), ("remat", remat)):
        temp[name] = _grad_fn(lstm, x).lower(params).compile().memory_analysis().temp_size_in_bytes
    # the plain scan keeps at least h, c and four gates per step (6 * 4 floats)
    assert temp["plain"] >= steps * 6 * 4 * 4
    assert temp["remat"] < 0.25 * temp["plain"], temp


# ----- extreme inputs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind,ra",
    [
        ("simple_rnn", None),
        ("gru", "hard_sigmoid"),
        ("gru_reset_after", "sigmoid"),
        ("lstm", "hard_sigmoid"),
        ("lstm", "sigmoid"),
        ("stack", "sigmoid"),
    ],
)
def test_large_magnitude_inputs_are_finite(kind, ra):
    layer = make(kind, ra, return_sequences=True, return_state=True)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.choice([-1.0, 1.0], size=(2, 20, 4)) * 1e4, jnp.float32)
    v = layer.init(jax.random.key(0), x)
    out = layer.apply(v, x)
    for a in jax.tree_util.tree_leaves(out):
        assert np.all(np.isfinite(np.asarray(a)))
    # h is a product/convex mix of tanh-bounded values: |h| <= 1
    assert np.all(np.abs(np.asarray(out[0])) <= 1.0 + 1e-6)
    g = jax.grad(lambda p: jnp.sum(layer.apply({**v, "params": p}, x)[0]))(v["params"])
    for a in jax.tree_util.tree_leaves(g):
        assert np.all(np.isfinite(np.asarray(a)))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("unroll,go_backwards", [(False, False), (True, False), (False, True)])
def test_all_masked_rows(kind, unroll, go_backwards):
    """Row 1 fully masked: zero outputs (also with the default 'repeat last output' rule) and the
    given initial states returned unchanged; row 0 unaffected by row 1."""
    layer = make(kind, return_sequences=True, return_state=True, unroll=unroll, go_backwards=go_backwards)
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 5, 3)), jnp.float32)
    v = layer.init(jax.random.key(0), x)
    sizes = [s.shape[-1] for s in layer.apply(v, x)[1:]]
    init = [jnp.asarray(rng.normal(size=(2, n)), jnp.float32) for n in sizes]
    mask = jnp.asarray([[True, False, True, True, False], [False] * 5])
    y, *states = layer.apply(v, x, mask=mask, initial_state=init)
    assert np.all(np.asarray(y[1]) == 0.0)
    for s, s0 in zip(states, init):
        np.testing.assert_array_equal(np.asarray(s[1]), np.asarray(s0[1]))
        assert not np.allclose(np.asarray(s[0]), np.asarray(s0[0]))
    y0, *states0 = layer.apply(v, x[:1], mask=mask[:1], initial_state=[s[:1] for s in init])
    np.testing.assert_allclose(np.asarray(y[0]), np.asarray(y0[0]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_fully_masked_batch(kind):
    """Every step of every row masked: zeros out, zeros states (no initial state given)."""
    layer = make(kind, return_sequences=False, return_state=True)
    x = jnp.ones((2, 4, 3))
    v = layer.init(jax.random.key(0), x)
    y, *states = layer.apply(v, x, mask=jnp.zeros((2, 4), bool))
    assert np.all(np.asarray(y) == 0.0)
    assert all(np.all(np.asarray(s) == 0.0) for s in states)


def _keras_layer(kind, **kw):
    return keras_layer(kind, 3, **({} if kind == "simple_rnn" else {"recurrent_activation": "sigmoid"}), **kw)


@pytest.mark.parametrize("kind", ["simple_rnn", "gru_reset_after", "lstm"])
@pytest.mark.parametrize("batch,steps", [(1, 1), (1, 7), (4, 1)])
def test_single_step_and_batch_of_one_match_keras(kind, batch, steps):
    """T=1 and B=1 against Keras 3 (JAX backend) on the same random weights."""
    from keras_ref import cell_weights, run_keras

    layer = make(kind, return_sequences=True, return_state=True)
    rng = np.random.default_rng(5)
    x = np.asarray(rng.normal(size=(batch, steps, 2)), np.float32)
    v = layer.init(jax.random.key(1), jnp.asarray(x))
    p = dict(v["params"]["cell"])
    p["bias"] = p["bias"] + jnp.asarray(rng.normal(size=p["bias"].shape), jnp.float32)
    ours = layer.apply({"params": {"cell": p}}, jnp.asarray(x))
    ref = run_keras(_keras_layer(kind, return_sequences=True, return_state=True), x, cell_weights(p))
    assert ours[0].shape == (batch, steps, 3)
    assert_trees_close(list(ours), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("steps", [7, 10, 23])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_remat_with_remainder_chunk_equals_plain(steps, go_backwards):
    """Lengths that sqrt(T) chunks do not divide: the remainder runs as its own chunk, in the
    right processing order; outputs, states and gradients equal the plain loop."""
    import rnnjax.functional as F

    core = F.LSTMCore(3, recurrent_activation="sigmoid")
    params = core.init(jax.random.key(0), 2)
    x = jax.random.normal(jax.random.key(1), (2, steps, 2))
    mask = jax.random.bernoulli(jax.random.key(2), 0.8, (2, steps))

    def f(p, remat):
        out, state = F.rnn(core, p, x, mask=mask, go_backwards=go_backwards, return_sequences=True, remat=remat)
        return jnp.sum(out * jnp.arange(out.size).reshape(out.shape) / out.size) + jnp.sum(state.c), (out, state)

    (l1, aux1), g1 = jax.value_and_grad(lambda p: f(p, False), has_aux=True)(params)
    (l2, aux2), g2 = jax.value_and_grad(lambda p: f(p, True), has_aux=True)(params)
    for a, b in zip(jax.tree_util.tree_leaves((aux1, g1)), jax.tree_util.tree_leaves((aux2, g2))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
