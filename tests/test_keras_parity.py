"""rnnjax's layers against Keras 3 (JAX backend, CPU) on random weights copied across.

Keras 3 is the reference for every option it shares with the seed; where Keras 3 changed a
default (hard_sigmoid's definition) the Keras 2 function is passed to Keras explicitly.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from catalogue import DENSE, VARIANTS, assert_trees_close, keras_layer, n_states
from catalogue import layer as make_layer
from keras_ref import cell_weights, keras, keras_activation, run_keras

import rnnjax

ATOL = 1e-5
B, T, I, U = 3, 7, 5, 4


def _x(seed=0, shape=(B, T, I)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


HOLES = np.array([[1, 1, 0, 1, 0, 1, 1], [0, 1, 1, 0, 1, 1, 0], [1, 0, 0, 0, 0, 0, 1]], bool)
RIGHT_PADDED = np.array([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5], bool)


def _takes(kind, argument):
    return argument in VARIANTS[kind][0].arguments("layer")


def _keras_kwargs(kind, kwargs):
    out = {}
    for k, v in kwargs.items():
        if k in ("implementation", "scan_unroll"):
            continue
        out[k] = keras_activation(v) if k in ("activation", "recurrent_activation") else v
    if _takes(kind, "recurrent_activation") and "recurrent_activation" not in out:
        out["recurrent_activation"] = keras_activation("hard_sigmoid")  # the seed's default
    return out


def _compare(kind, kwargs=None, mask=None, initial_state=None, seed=0, x=None):
    kwargs = dict(kwargs or {})
    x = _x(seed) if x is None else x
    layer = make_layer(kind, U, **kwargs)
    call = {}
    if mask is not None:
        call["mask"] = jnp.asarray(mask)
    if initial_state is not None:
        call["initial_state"] = [jnp.asarray(s) for s in initial_state]
    variables = layer.init(jax.random.key(seed), jnp.asarray(x), **call)
    # Random (not initializer-shaped) weights, biases included, so every term matters.
    rng = np.random.default_rng(seed + 100)
    params = jax.tree_util.tree_map(
        lambda p: rng.normal(scale=0.5, size=p.shape).astype(np.float32), variables["params"]
    )
    ours = layer.apply({"params": params}, jnp.asarray(x), **call)
    klayer = keras_layer(kind, U, **_keras_kwargs(kind, kwargs))
    kcall = {}
    if mask is not None:
        kcall["mask"] = mask
    if initial_state is not None:
        kcall["initial_state"] = list(initial_state)
    theirs = run_keras(klayer, x, cell_weights(params["cell"]), **kcall)
    ours = [np.asarray(o) for o in ours] if isinstance(ours, tuple) else np.asarray(ours)
    assert isinstance(ours, list) == isinstance(theirs, list)
    assert_trees_close(ours, theirs, atol=ATOL, rtol=ATOL)
    return ours


OPTIONS = [
    {},
    {"return_sequences": True},
    {"go_backwards": True, "return_sequences": True},
    {"return_state": True},
    {"return_sequences": True, "return_state": True, "go_backwards": True},
    {"use_bias": False},
    {"activation": "relu"},
    {"activation": None},
    {"unroll": True, "return_sequences": True},
    {"implementation": 2, "return_sequences": True},
]


# Each kind with the options it takes (SimpleRNN has no `implementation` argument).
CASES = [(k, o) for k in DENSE for o in OPTIONS if all(_takes(k, a) for a in o)]


@pytest.mark.parametrize(
    "kind,options", CASES, ids=[f"{k}-" + ("-".join(f"{a}={b}" for a, b in o.items()) or "default") for k, o in CASES]
)
def test_matches_keras(kind, options):
    _compare(kind, options)


@pytest.mark.parametrize("kind", DENSE)
def test_sigmoid_gates_match_keras(kind):
    if not _takes(kind, "recurrent_activation"):
        _compare(kind, {"activation": "sigmoid", "return_sequences": True})
    else:
        _compare(kind, {"recurrent_activation": "sigmoid", "return_sequences": True})


@pytest.mark.parametrize("kind", DENSE)
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("mask", [HOLES, RIGHT_PADDED], ids=["holes", "right_padded"])
def test_masks_match_keras(kind, go_backwards, mask):
    _compare(kind, {"return_sequences": True, "go_backwards": go_backwards}, mask=mask)
    _compare(kind, {"return_state": True, "go_backwards": go_backwards}, mask=mask)


@pytest.mark.parametrize("kind", DENSE)
def test_zero_output_for_mask_matches_keras(kind):
    _compare(kind, {"return_sequences": True, "zero_output_for_mask": True}, mask=HOLES)


@pytest.mark.parametrize("kind", DENSE)
def test_initial_state_matches_keras(kind):
    rng = np.random.default_rng(7)
    init = [rng.normal(size=(B, U)).astype(np.float32) for _ in range(n_states(kind))]
    _compare(kind, {"return_sequences": True, "return_state": True}, initial_state=init)
    # With a mask whose first step is unmasked Keras 3's scan agrees with Keras 2 (see notes).
    _compare(kind, {"return_state": True}, initial_state=init, mask=RIGHT_PADDED)


def test_leading_masked_step_with_initial_state_follows_keras2():
    """Keras 2 (and Keras 3 with unroll=True) output 0 at a leading masked step; Keras 3's
    scan outputs initial_state[0] there. rnnjax follows Keras 2 in every mode."""
    mask = np.ones((B, T), bool)
    mask[:, 0] = False
    init = [np.full((B, U), 0.7, np.float32)]
    ours = _compare("simple_rnn", {"return_sequences": True, "unroll": True}, mask=mask, initial_state=init)
    np.testing.assert_array_equal(ours[:, 0], 0.0)
    layer = rnnjax.SimpleRNN(U, return_sequences=True)
    v = layer.init(jax.random.key(0), jnp.asarray(_x()))
    scan = layer.apply(v, jnp.asarray(_x()), mask=jnp.asarray(mask), initial_state=[jnp.asarray(init[0])])
    unrolled = rnnjax.SimpleRNN(U, return_sequences=True, unroll=True).apply(
        v, jnp.asarray(_x()), mask=jnp.asarray(mask), initial_state=[jnp.asarray(init[0])]
    )
    np.testing.assert_allclose(scan, unrolled, atol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru_reset_after"])
def test_stateful_matches_keras(kind):
    x1, x2, x3 = _x(1), _x(2), _x(3)
    layer = make_layer(kind, U, stateful=True, return_sequences=True)
    v = layer.init(jax.random.key(0), jnp.asarray(x1))
    klayer = keras_layer(kind, U, stateful=True, return_sequences=True, **_keras_kwargs(kind, {}))
    klayer.build(x1.shape)
    klayer.set_weights(cell_weights(v["params"]["cell"]))
    for x in (x1, x2):
        y, upd = layer.apply(v, jnp.asarray(x), mutable=["rnn_state"])
        v = {**v, **upd}
        np.testing.assert_allclose(np.asarray(y), np.asarray(klayer(x)), atol=ATOL)
    # reset_states() to zeros on both sides, then a third batch.
    _, upd = layer.apply(v, method="reset_states", mutable=["rnn_state"])
    v = {**v, **upd}
    klayer.reset_states()
    y, upd = layer.apply(v, jnp.asarray(x3), mutable=["rnn_state"])
    np.testing.assert_allclose(np.asarray(y), np.asarray(klayer(x3)), atol=ATOL)
    # Numeric reset_states(states=...) (Keras 2 API; Keras 3 dropped it: compare with initial_state).
    states = [np.random.default_rng(9 + i).normal(size=(B, U)).astype(np.float32) for i in range(n_states(kind))]
    v = {**v, **upd}
    _, upd = layer.apply(v, [jnp.asarray(s) for s in states], method="reset_states", mutable=["rnn_state"])
    v = {**v, **upd}
    y, _ = layer.apply(v, jnp.asarray(x1), mutable=["rnn_state"])
    k2 = keras_layer(kind, U, return_sequences=True, **_keras_kwargs(kind, {}))
    expected = run_keras(k2, x1, cell_weights(v["params"]["cell"]), initial_state=states)
    np.testing.assert_allclose(np.asarray(y), expected, atol=ATOL)


def test_stacked_cells_match_keras():
    x = _x(4)
    cells = [rnnjax.LSTMCell(4), rnnjax.GRUCell(3, reset_after=True), rnnjax.SimpleRNNCell(5)]
    layer = rnnjax.RNN(cells, return_sequences=True, return_state=True)
    v = layer.init(jax.random.key(0), jnp.asarray(x))
    kcells = [
        keras.layers.LSTMCell(4, recurrent_activation=keras_activation("hard_sigmoid")),
        keras.layers.GRUCell(3, reset_after=True, recurrent_activation=keras_activation("hard_sigmoid")),
        keras.layers.SimpleRNNCell(5),
    ]
    klayer = keras.layers.RNN(kcells, return_sequences=True, return_state=True)
    weights = sum((cell_weights(v["params"][f"cell_{k}"]) for k in range(3)), [])
    theirs = run_keras(klayer, x, weights)
    ours = layer.apply(v, jnp.asarray(x))
    assert len(ours) == len(theirs) == 5  # output, (h, c), h, h
    assert_trees_close(list(ours), theirs, atol=ATOL, rtol=1e-7)


def test_single_cell_step_matches_keras():
    x = _x(5)[:, 0]
    cell = rnnjax.LSTMCell(U)
    h0 = [jnp.asarray(np.random.default_rng(1).normal(size=(B, U)), jnp.float32)] * 2
    v = cell.init(jax.random.key(0), jnp.asarray(x), h0)
    out, states = cell.apply(v, jnp.asarray(x), h0)
    kcell = keras.layers.LSTMCell(U, recurrent_activation=keras_activation("hard_sigmoid"))
    kcell.build(x.shape)
    kcell.set_weights(cell_weights(v["params"]))
    kout, kstates = kcell(x, [np.asarray(h) for h in h0])
    np.testing.assert_allclose(out, np.asarray(kout), atol=ATOL)
    for a, b in zip(states, kstates):
        np.testing.assert_allclose(a, np.asarray(b), atol=ATOL)


@pytest.mark.parametrize("kind", ["simple_rnn", "lstm", "gru"])
def test_regularizer_penalties_match_keras(kind):
    x = _x(6)
    regs = dict(
        kernel_regularizer=rnnjax.regularizers.L1L2(0.01, 0.02),
        recurrent_regularizer="l2",
        bias_regularizer="l1",
        activity_regularizer=rnnjax.regularizers.L2(0.05),
    )
    layer = make_layer(kind, U, **regs)
    v = layer.init(jax.random.key(0), jnp.asarray(x))
    params = jax.tree_util.tree_map(lambda p: p + 0.1, v["params"])  # non-zero bias
    _, aux = layer.apply({"params": params}, jnp.asarray(x), mutable=["losses"])
    kregs = dict(
        kernel_regularizer=keras.regularizers.L1L2(0.01, 0.02),
        recurrent_regularizer="l2",
        bias_regularizer="l1",
        activity_regularizer=keras.regularizers.L2(0.05),
    )
    klayer = keras_layer(kind, U, **_keras_kwargs(kind, kregs))
    y = run_keras(klayer, x, cell_weights(params["cell"]))
    weight_penalty = sum(float(l) for l in klayer._get_regularization_losses())
    # Keras 3 normalises activity penalties by the batch size; its SimpleRNN forgets to pass
    # activity_regularizer on (a Keras 3 bug), so that term is computed from Keras's output.
    activity_penalty = 0.05 * float(np.sum(np.square(y.astype(np.float64)))) / x.shape[0]
    np.testing.assert_allclose(float(rnnjax.regularization_loss(aux)), weight_penalty + activity_penalty, rtol=1e-5)
    np.testing.assert_allclose(float(aux["losses"]["activity_regularizer"]), activity_penalty, rtol=1e-5)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("MaxNorm", {"max_value": 0.5}),
        ("NonNeg", {}),
        ("UnitNorm", {}),
        ("MinMaxNorm", {"min_value": 0.3, "max_value": 0.6, "rate": 0.5}),
    ],
)
def test_constraints_match_keras(name, kwargs):
    w = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
    ours = getattr(rnnjax.constraints, name)(**kwargs)(jnp.asarray(w))
    theirs = getattr(keras.constraints, name)(**kwargs)(w)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-6)


@pytest.mark.parametrize(
    "name", ["glorot_uniform", "orthogonal", "he_normal", "lecun_uniform", "zeros", "ones", "uniform"]
)
def test_initializer_statistics_match_keras(name):
    """Same distribution as Keras (values differ: different RNGs): compare mean/std and orthogonality."""
    shape = (64, 256)
    ours = np.asarray(rnnjax.initializers.get(name)(jax.random.key(0), shape))
    theirs = np.asarray(keras.initializers.get(name)(shape))
    np.testing.assert_allclose(ours.std(), theirs.std(), rtol=0.1, atol=1e-6)
    np.testing.assert_allclose(ours.mean(), theirs.mean(), atol=0.02)
    if name == "orthogonal":
        np.testing.assert_allclose(ours @ ours.T, np.eye(64), atol=1e-4)
