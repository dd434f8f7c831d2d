"""Property-based tests (hypothesis) over random small shapes, options and weights.

Invariants checked (every cell kind: SimpleRNN, GRU both variants, LSTM, a stack of cells):

* ``lax.scan`` equals ``unroll=True``;
* a right-padded masked batch gives each sequence's final state as if run unpadded alone;
* a mask with holes equals dropping the masked steps;
* ``go_backwards`` equals running on the reversed sequence (outputs in processing order);
* a stateful layer fed a sequence in chunks equals one call on the whole sequence;
* ``jax.vmap`` of unbatched ``rnnjax.functional.rnn`` equals the batched call;
* ``jax.jit`` equals eager;
* ``implementation=1`` with identical per-gate dropout masks equals ``implementation=2``;
* the float32 result is within tolerance of an independent float64 numpy implementation of the
  Keras equations (``np_rnn`` below, written from the equations in keras-semantics.md).

Profiles are in ``conftest.py``: ``ci`` (default, few examples), ``dev`` (``HYPOTHESIS_PROFILE=dev``).
Shapes are tiny so that compilation dominates little.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from catalogue import assert_trees_close, layer
from hypothesis import given
from hypothesis import strategies as st

import rnnjax.functional as F

KINDS = ["simple_rnn", "gru", "gru_reset_after", "lstm", "stack"]
FUNCTIONAL_KINDS = ["simple_rnn", "gru", "gru_reset_after", "lstm"]
GATES = {"gru": 3, "gru_reset_after": 3, "lstm": 4}
TOL = dict(rtol=2e-5, atol=2e-6)


def make_layer(kind, units, recurrent_activation="hard_sigmoid", implementation=1, **kw):
    """A layer of catalogue variant ``kind`` with ``units`` units; ``kw`` are RNN options
    (return_sequences, ...); the gate options reach the cells that have them."""
    return layer(kind, units, recurrent_activation=recurrent_activation, implementation=implementation, **kw)


def make_core(kind, units, recurrent_activation="hard_sigmoid", implementation=1):
    if kind == "simple_rnn":
        return F.SimpleRNNCore(units)
    ra = dict(recurrent_activation=recurrent_activation, implementation=implementation)
    if kind == "lstm":
        return F.LSTMCore(units, **ra)
    return F.GRUCore(units, reset_after=(kind == "gru_reset_after"), **ra)


def randomize(params, rng):
    """Random weights of the initialised shapes: initialiser values plus noise, so that the
    (default zero) biases are random too."""
    return jax.tree_util.tree_map(lambda a: a + jnp.asarray(rng.normal(0, 0.4, a.shape), a.dtype), params)


_PARAMS = {}


def initial_params(kind, features, units, ra):
    """Parameters of a layer (cached per structure: creating them costs a trace and a QR)."""
    key = (kind, features, units, ra)
    if key not in _PARAMS:
        layer = make_layer(kind, units, ra, unroll=True)
        _PARAMS[key] = layer.init(jax.random.key(0), jnp.zeros((1, 1, features)))["params"]
    return _PARAMS[key]


@st.composite
def cases(draw, kinds=KINDS, max_t=6):
    return dict(
        kind=draw(st.sampled_from(kinds)),
        batch=draw(st.integers(1, 3)),
        steps=draw(st.integers(1, max_t)),
        features=draw(st.integers(1, 3)),
        units=draw(st.integers(1, 4)),
        seed=draw(st.integers(0, 2**31 - 1)),
        scale=draw(st.sampled_from([0.1, 1.0, 3.0])),
        recurrent_activation=draw(st.sampled_from(["hard_sigmoid", "sigmoid"])),
    )


def build(case, **layer_kw):
    rng = np.random.default_rng(case["seed"])
    x = jnp.asarray(rng.normal(0, case["scale"], (case["batch"], case["steps"], case["features"])), jnp.float32)
    layer = make_layer(case["kind"], case["units"], case["recurrent_activation"], **layer_kw)
    params = initial_params(case["kind"], case["features"], case["units"], case["recurrent_activation"])
    variables = {"params": randomize(params, rng)}
    return rng, x, layer, variables


def random_mask(rng, batch, steps, holes=True):
    """Boolean (batch, steps) with at least one True per row."""
    if holes:
        m = rng.random((batch, steps)) < 0.6
        m[np.arange(batch), rng.integers(0, steps, batch)] = True
    else:
        lengths = rng.integers(1, steps + 1, batch)
        m = np.arange(steps)[None, :] < lengths[:, None]
    return jnp.asarray(m)


def close(a, b, **tol):
    assert_trees_close(a, b, **(tol or TOL), same_tree=False)


# ----- float64 numpy reference ---------------------------------------------------------------


def _np_act(name):
    return {
        "tanh": np.tanh,
        "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
        "hard_sigmoid": lambda z: np.clip(0.2 * z + 0.5, 0.0, 1.0),
    }[name]


def np_step(kind, p, state, x, ra):
    """One step of the Keras equations in float64; ``state`` is a tuple of (B, U) arrays."""
    K, R, b = (np.asarray(p[n], np.float64) for n in ("kernel", "recurrent_kernel", "bias"))
    s = _np_act(ra)
    if kind == "simple_rnn":
        h = np.tanh(x @ K + b + state[0] @ R)
        return (h,), h
    if kind == "lstm":
        h, c = state
        u = h.shape[-1]
        z = x @ K + b + h @ R
        i, f, g, o = (z[:, k * u : (k + 1) * u] for k in range(4))
        c = s(f) * c + s(i) * np.tanh(g)
        h = s(o) * np.tanh(c)
        return (h, c), h
    (h,) = state
    u = h.shape[-1]
    if kind == "gru":
        xp = x @ K + b
        z = s(xp[:, :u] + h @ R[:, :u])
        r = s(xp[:, u : 2 * u] + h @ R[:, u : 2 * u])
        hh = np.tanh(xp[:, 2 * u :] + (r * h) @ R[:, 2 * u :])
    else:  # reset_after
        xp = x @ K + b[0]
        rec = h @ R + b[1]
        z = s(xp[:, :u] + rec[:, :u])
        r = s(xp[:, u : 2 * u] + rec[:, u : 2 * u])
        hh = np.tanh(xp[:, 2 * u :] + r * rec[:, 2 * u :])
    h = z * h + (1 - z) * hh
    return (h,), h


def np_rnn(kind, p, x, mask, go_backwards, ra):
    """Keras 2 sequence semantics in float64: returns (outputs in processing order, states)."""
    x = np.asarray(x, np.float64)
    batch, steps, _ = x.shape
    u = p["recurrent_kernel"].shape[0]
    state = tuple(np.zeros((batch, u)) for _ in range(2 if kind == "lstm" else 1))
    last = np.zeros((batch, u))
    outs = []
    order = range(steps - 1, -1, -1) if go_backwards else range(steps)
    for t in order:
        new, y = np_step(kind, p, state, x[:, t], ra)
        m = np.ones((batch, 1), bool) if mask is None else np.asarray(mask)[:, t : t + 1]
        state = tuple(np.where(m, n, o) for n, o in zip(new, state))
        last = np.where(m, y, last)
        outs.append(last)
    return np.stack(outs, 1), state


# ----- properties ----------------------------------------------------------------------------
# Cost control: every distinct shape compiles the scan once, so the side of a comparison that is
# not under test (per-sequence references, parameter creation) runs the unrolled twin eagerly
# (cheap op-by-op dispatch); ``scan == unroll`` is itself a property below.


def twin(case, **kw):
    """The same layer with ``unroll=True`` (and ``kw`` options)."""
    return make_layer(case["kind"], case["units"], case["recurrent_activation"], unroll=True, **kw)


@given(cases(), st.booleans(), st.booleans(), st.sampled_from([None, "holes", "padded"]), st.booleans(), st.booleans())
def test_scan_equals_unroll(case, go_backwards, return_sequences, masking, zero_output, remat):
    """Also with ``remat`` (chunked checkpointing when T has a divisor, per-step otherwise): the
    forward values and the gradients equal the unrolled loop's."""
    opts = dict(
        go_backwards=go_backwards,
        return_sequences=return_sequences,
        return_state=True,
        zero_output_for_mask=zero_output,
    )
    rng, x, layer, v = build(case, remat=remat, **opts)
    mask = None if masking is None else random_mask(rng, case["batch"], case["steps"], masking == "holes")
    unrolled = twin(case, **opts)

    def loss(lay, p):
        return sum(jnp.sum(jnp.sin(o)) for o in lay.apply({"params": p}, x, mask=mask))

    @jax.jit  # one compilation per example (both sides), instead of many op-by-op ones
    def both(v):
        out = (layer.apply(v, x, mask=mask), unrolled.apply(v, x, mask=mask))
        if remat:
            out += (jax.grad(lambda p: loss(layer, p))(v["params"]), jax.grad(lambda p: loss(unrolled, p))(v["params"]))
        return out

    res = both(v)
    close(res[0], res[1])
    if remat:
        close(res[2], res[3], rtol=1e-4, atol=1e-5)


@given(cases())
def test_right_padded_batch_equals_each_sequence_alone(case):
    rng, x, layer, v = build(case, return_state=True, return_sequences=True, zero_output_for_mask=True)
    mask = random_mask(rng, case["batch"], case["steps"], holes=False)
    lengths = np.asarray(mask).sum(1)
    alone_layer = twin(case, return_state=True, return_sequences=True)

    @jax.jit
    def both(v):
        return layer.apply(v, x, mask=mask), [alone_layer.apply(v, x[b : b + 1, :n]) for b, n in enumerate(lengths)]

    (out, *states), alone_runs = both(v)
    for b, (n, (alone, *alone_states)) in enumerate(zip(lengths, alone_runs)):
        close(out[b, :n], alone[0])
        assert not np.any(np.asarray(out[b, n:])), "padded steps must output zeros (zero_output_for_mask)"
        close([s[b] for s in states], [s[0] for s in alone_states])


@given(cases())
def test_mask_with_holes_equals_dropping_steps(case):
    rng, x, layer, v = build(case, return_state=True)
    mask = random_mask(rng, case["batch"], case["steps"], holes=True)
    keep = np.asarray(mask)
    alone_layer = twin(case, return_state=True)

    @jax.jit
    def both(v):
        return layer.apply(v, x, mask=mask), [alone_layer.apply(v, x[b : b + 1][:, keep[b]]) for b in range(len(keep))]

    (out, *states), alone_runs = both(v)
    for b, (alone, *alone_states) in enumerate(alone_runs):
        close(out[b], alone[0])
        close([s[b] for s in states], [s[0] for s in alone_states])


@given(cases(), st.booleans())
def test_go_backwards_equals_reversed_sequence(case, masked):
    rng, x, layer, v = build(case, go_backwards=True, return_sequences=True, return_state=True)
    mask = random_mask(rng, case["batch"], case["steps"]) if masked else None
    forward = twin(case, return_sequences=True, return_state=True)

    @jax.jit
    def both(v):
        return layer.apply(v, x, mask=mask), forward.apply(
            v, jnp.flip(x, 1), mask=None if mask is None else jnp.flip(mask, 1)
        )

    back, rev = both(v)
    # outputs in processing order: step k of the backward run read x[:, T-1-k]
    close(back, rev)


@given(cases(max_t=8), st.lists(st.integers(1, 8), min_size=1, max_size=3), st.booleans())
def test_stateful_chunks_equal_whole_sequence(case, cuts, masked):
    """States carry over exactly. Outputs at masked steps are compared with
    ``zero_output_for_mask=True``: the "repeat the previous output" rule restarts from 0 at each
    call (as in Keras: only the states are carried, not the last output)."""
    opts = dict(return_sequences=True, return_state=True, zero_output_for_mask=masked)
    rng, x, whole_layer, v = build(case, **opts)
    steps = case["steps"]
    chunks = np.split(np.arange(steps), sorted({c % steps for c in cuts} - {0}))
    mask = random_mask(rng, case["batch"], steps) if masked else None
    stateful = make_layer(case["kind"], case["units"], case["recurrent_activation"], stateful=True, **opts)
    sv = {**twin(case, stateful=True, **opts).init(jax.random.key(0), x[:, chunks[0]]), "params": v["params"]}
    assert not any(np.any(np.asarray(s)) for s in jax.tree_util.tree_leaves(sv["rnn_state"]))
    outs = []
    for idx in chunks:
        m = None if mask is None else mask[:, idx]
        (y, *states), upd = stateful.apply(sv, x[:, idx], mask=m, mutable=["rnn_state"])
        sv = {**sv, **upd}
        outs.append(y)
    y_whole, *states_whole = twin(case, **opts).apply(v, x, mask=mask)
    close(jnp.concatenate(outs, 1), y_whole)
    close(states, states_whole)
    close(jax.tree_util.tree_leaves(sv["rnn_state"]), states_whole)


@given(cases(kinds=FUNCTIONAL_KINDS), st.booleans(), st.booleans(), st.booleans())
def test_vmap_of_unbatched_equals_batched(case, go_backwards, return_sequences, masked):
    rng = np.random.default_rng(case["seed"])
    core = make_core(case["kind"], case["units"], case["recurrent_activation"])
    params = randomize(core.init(jax.random.key(case["seed"] % 1000), case["features"]), rng)
    x = jnp.asarray(rng.normal(0, case["scale"], (case["batch"], case["steps"], case["features"])), jnp.float32)
    mask = random_mask(rng, case["batch"], case["steps"]) if masked else None
    opts = dict(go_backwards=go_backwards, return_sequences=return_sequences)

    @jax.jit
    def both(x, mask):
        batched = F.rnn(core, params, x, mask=mask, **opts)
        mapped = jax.vmap(
            lambda xb, mb: F.rnn(core, params, xb, mask=mb, **opts), in_axes=(0, None if mask is None else 0)
        )(x, mask)
        return batched, mapped

    batched, mapped = both(x, mask)
    assert mapped[0].shape == batched[0].shape
    close(mapped, batched)


@given(cases(), st.booleans(), st.booleans())
def test_jit_equals_eager(case, go_backwards, masked):
    rng, x, layer, v = build(case, go_backwards=go_backwards, return_sequences=True, return_state=True)
    mask = random_mask(rng, case["batch"], case["steps"]) if masked else None
    close(jax.jit(layer.apply)(v, x, mask=mask), layer.apply(v, x, mask=mask))


@given(cases(kinds=["gru", "gru_reset_after", "lstm"]), st.sampled_from([0.0, 0.3]), st.sampled_from([0.0, 0.4]))
def test_implementation_1_equals_2(case, rate, rec_rate):
    """Same parameters; implementation 1 given ``gates`` copies of implementation 2's dropout
    masks (so each gate's matmul sees the same mask) must compute the same function."""
    rng = np.random.default_rng(case["seed"])
    c1 = make_core(case["kind"], case["units"], case["recurrent_activation"], implementation=1)
    c2 = make_core(case["kind"], case["units"], case["recurrent_activation"], implementation=2)
    params = randomize(c1.init(jax.random.key(case["seed"] % 1000), case["features"]), rng)
    b, f, u = case["batch"], case["features"], case["units"]
    x = jnp.asarray(rng.normal(0, case["scale"], (b, case["steps"], f)), jnp.float32)
    k1, k2 = jax.random.split(jax.random.key(case["seed"] % 977))
    dm = F.dropout_masks(k1, rate, (b, f)) if rate else None
    rm = F.dropout_masks(k2, rec_rate, (b, u)) if rec_rate else None
    rep = lambda m: None if m is None else jnp.repeat(m, GATES[case["kind"]], 0)  # noqa: E731
    y1, s1 = F.rnn(c1, params, x, return_sequences=True, dropout_mask=rep(dm), recurrent_dropout_mask=rep(rm))
    y2, s2 = F.rnn(c2, params, x, return_sequences=True, dropout_mask=dm, recurrent_dropout_mask=rm)
    close((y1, s1), (y2, s2))


@given(cases(kinds=FUNCTIONAL_KINDS), st.booleans(), st.booleans())
def test_float32_close_to_float64_reference(case, go_backwards, masked):
    rng, x, layer, v = build(case, go_backwards=go_backwards, return_sequences=True, return_state=True)
    mask = random_mask(rng, case["batch"], case["steps"]) if masked else None
    y, *states = layer.apply(v, x, mask=mask)
    p = {k: np.asarray(a, np.float64) for k, a in v["params"]["cell"].items()}
    y_ref, states_ref = np_rnn(case["kind"], p, np.asarray(x), mask, go_backwards, case["recurrent_activation"])
    tol = dict(rtol=1e-4, atol=1e-5)
    close(y, y_ref, **tol)
    close(states, states_ref, **tol)


@pytest.mark.parametrize("kind", FUNCTIONAL_KINDS)
def test_reference_matches_keras_public_values(kind):
    """Anchors ``np_rnn`` itself to Keras's published test vectors (keras-semantics.md)."""
    u = 3 if kind != "simple_rnn" else 4
    x = np.arange(72, dtype=np.float64).reshape(3, 6, 4) if kind != "simple_rnn" else np.arange(24.0).reshape(2, 3, 4)
    i = x.shape[-1]
    g = {"simple_rnn": 1, "gru": 3, "gru_reset_after": 3, "lstm": 4}[kind]
    p = {
        "kernel": np.full((i, g * u), 0.01),
        "recurrent_kernel": np.full((u, g * u), 0.02),
        "bias": np.full((2, g * u) if kind == "gru_reset_after" else (g * u,), 0.03),
    }
    if kind == "lstm":
        p["bias"][u : 2 * u] = 1.0  # unit_forget_bias: the forget block starts at exactly 1
    y, _ = np_rnn(kind, p, x, None, False, "sigmoid")
    expected = {
        "simple_rnn": [0.405432, 0.73605347],
        "gru": [0.51447755, 0.6426879, 0.40208298],
        "gru_reset_after": [0.5217289, 0.6371659, 0.39384964],
        "lstm": [0.6288687, 0.86899155, 0.9460773],
    }
    np.testing.assert_allclose(y[:, -1, 0], expected[kind], rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("implementation", [1, 2])
def test_training_dropout_runs_for_every_implementation(kind, implementation):
    """Layer-level dropout (per-gate masks with implementation=1): finite, different from
    inference, deterministic for a given 'dropout' rng, and the identity at rate 0."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 3)), jnp.float32)

    def mk(rate):
        return make_layer(kind, 3, "sigmoid", implementation, dropout=rate, recurrent_dropout=rate)

    v = mk(0.0).init(jax.random.key(0), x)
    rngs = {"dropout": jax.random.key(5)}
    infer = mk(0.5).apply(v, x)
    y1 = mk(0.5).apply(v, x, training=True, rngs=rngs)
    y2 = mk(0.5).apply(v, x, training=True, rngs=rngs)
    assert np.all(np.isfinite(np.asarray(y1)))
    assert not np.allclose(np.asarray(y1), np.asarray(infer))
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))
    np.testing.assert_array_equal(np.asarray(mk(0.0).apply(v, x, training=True, rngs=rngs)), np.asarray(infer))
