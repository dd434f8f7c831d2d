"""The layer-side path (rnnjax/layers/path.py) against Keras 3 (JAX backend): stateful states over
batch axes, the forms ``initial_state`` takes, and activity penalties divided by the number of
sequences; and the path's own functions, which a second front end calls, on their contracts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from catalogue import keras_layer, n_states
from catalogue import layer as make_layer
from keras_ref import cell_weights, keras, keras_activation, run_keras

import rnnjax
from rnnjax import kinds
from rnnjax.functional.lstm import LSTMState
from rnnjax.layers import path

ATOL = 1e-5
B1, B2, T, I, U = 2, 3, 6, 4, 5
KEY = jax.random.key(0)


def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _random_params(variables, seed=1):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda p: rng.normal(scale=0.5, size=p.shape).astype(np.float32), variables["params"])


def _keras(kind, **kwargs):
    return keras_layer(kind, U, recurrent_activation=keras_activation("hard_sigmoid"), **kwargs)


@pytest.mark.parametrize("kind", ["lstm", "gru_reset_after"])
def test_stateful_over_two_batch_axes_matches_keras(kind):
    """States of batch shape (2, 3) carry over chunks as Keras's batch of 6 does, and
    reset_states (to zeros and to given arrays) is Keras's."""
    layer = make_layer(kind, U, stateful=True, return_sequences=True)
    chunks = [_x((B1, B2, T, I), seed) for seed in range(3)]
    variables = layer.init(KEY, jnp.asarray(chunks[0]))
    params = _random_params(variables)
    state = {k: v for k, v in variables.items() if k != "params"}
    klayer = _keras(kind, stateful=True, return_sequences=True)
    klayer.build((B1 * B2, T, I))
    klayer.set_weights(cell_weights(params["cell"]))
    for x in chunks[:2]:
        ours, state = layer.apply({"params": params, **state}, jnp.asarray(x), mutable=[rnnjax.STATE_COLLECTION])
        theirs = np.asarray(klayer(x.reshape(B1 * B2, T, I)))
        np.testing.assert_allclose(ours, theirs.reshape(ours.shape), atol=ATOL)
    given = [_x((B1, B2, U), 10 + k) for k in range(n_states(kind))]
    state = rnnjax.reset_states(state, given)
    klayer.reset_states()
    for s, g in zip(klayer.states, given):
        s.assign(g.reshape(B1 * B2, U))
    ours, _ = layer.apply({"params": params, **state}, jnp.asarray(chunks[2]), mutable=[rnnjax.STATE_COLLECTION])
    theirs = np.asarray(klayer(chunks[2].reshape(B1 * B2, T, I)))
    np.testing.assert_allclose(ours, theirs.reshape(ours.shape), atol=ATOL)


@pytest.mark.parametrize("form", ["list", "tuple", "pytree"])
def test_initial_state_forms_match_keras(form):
    """Keras's flat list [h, c], a tuple, or the state pytree LSTMState(h, c): one meaning."""
    layer = rnnjax.LSTM(U, return_sequences=True, return_state=True)
    x = _x((B1 * B2, T, I))
    h, c = _x((B1 * B2, U), 3), _x((B1 * B2, U), 4)
    variables = layer.init(KEY, jnp.asarray(x))
    params = _random_params(variables)
    given = {"list": [h, c], "tuple": (h, c), "pytree": LSTMState(jnp.asarray(h), jnp.asarray(c))}[form]
    ours = layer.apply({"params": params}, jnp.asarray(x), initial_state=given)
    theirs = run_keras(
        _keras("lstm", return_sequences=True, return_state=True), x, cell_weights(params["cell"]), initial_state=[h, c]
    )
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=ATOL)
    # over two batch axes: the same numbers
    two = layer.apply(
        {"params": params},
        jnp.asarray(x.reshape(B1, B2, T, I)),
        initial_state=[h.reshape(B1, B2, U), c.reshape(B1, B2, U)],
    )
    for a, b in zip(two, theirs):
        np.testing.assert_allclose(a, b.reshape(a.shape), atol=ATOL)
    # one array for a one-state layer
    gru = rnnjax.GRU(U, reset_after=True)
    gv = gru.init(KEY, jnp.asarray(x))
    gp = _random_params(gv, 2)
    np.testing.assert_allclose(
        gru.apply({"params": gp}, jnp.asarray(x), initial_state=jnp.asarray(h)),
        run_keras(_keras("gru_reset_after"), x, cell_weights(gp["cell"]), initial_state=[h]),
        atol=ATOL,
    )


def test_activity_penalty_over_batch_axes_matches_keras():
    """Keras divides an activity penalty by the batch size: with batch axes (2, 3) that is 6
    sequences, and an unbatched sequence is one."""
    reg = dict(activity_regularizer=rnnjax.regularizers.L2(0.05))
    layer = rnnjax.LSTM(U, return_sequences=True, **reg)
    x = _x((B1 * B2, T, I))
    params = _random_params(layer.init(KEY, jnp.asarray(x)))
    klayer = _keras("lstm", return_sequences=True, activity_regularizer=keras.regularizers.L2(0.05))
    y = run_keras(klayer, x, cell_weights(params["cell"]))
    keras_penalty = float(sum(float(l) for l in klayer.losses))
    np.testing.assert_allclose(keras_penalty, 0.05 * np.sum(np.square(y.astype(np.float64))) / (B1 * B2), rtol=1e-5)
    for shape in [(B1 * B2, T, I), (B1, B2, T, I)]:
        _, aux = layer.apply({"params": params}, jnp.asarray(x.reshape(shape)), mutable=["losses"])
        np.testing.assert_allclose(float(aux["losses"]["activity_regularizer"]), keras_penalty, rtol=1e-5)
    _, aux = layer.apply({"params": params}, jnp.asarray(x[0]), mutable=["losses"])
    np.testing.assert_allclose(
        float(aux["losses"]["activity_regularizer"]), 0.05 * np.sum(np.square(y[0].astype(np.float64))), rtol=1e-5
    )


def test_start_state_precedence_and_checks():
    """initial_state > stored state > zeros, in the states' dtype; shapes are checked."""
    seq = path.check_sequence(jnp.zeros((B1, B2, T, I), jnp.bfloat16))
    assert seq == path.Sequence((B1, B2), T, (I,))

    def zeros(batch_shape, dtype):
        return LSTMState(jnp.zeros(batch_shape + (U,), dtype), jnp.zeros(batch_shape + (U,), dtype))

    stored = LSTMState(jnp.ones((B1, B2, U)), 2 * jnp.ones((B1, B2, U)))
    given = [3 * np.ones((B1, B2, U), np.float64), 4 * np.ones((B1, B2, U), np.float64)]
    z = path.start_state(zeros, seq, jnp.bfloat16)
    assert z.h.dtype == jnp.float32 and float(jnp.abs(z.h).sum()) == 0.0
    s = path.start_state(zeros, seq, jnp.bfloat16, read_state=lambda template: stored)
    np.testing.assert_array_equal(s.c, stored.c)
    g = path.start_state(zeros, seq, jnp.bfloat16, initial_state=given, read_state=lambda template: stored)
    assert isinstance(g, LSTMState) and g.h.dtype == jnp.float32
    np.testing.assert_array_equal(g.c, given[1].astype(np.float32))
    with pytest.raises(ValueError, match=r"keeps states for batch size 6, got a batch of shape \(2, 3\)"):
        path.start_state(zeros, seq, jnp.float32, read_state=lambda template: zeros((6,), jnp.float32))
    with pytest.raises(ValueError, match=r"`initial_state`\[1\]: expected shape \(2, 3, 5\), got \(2, 5\)"):
        path.start_state(zeros, seq, jnp.float32, initial_state=[given[0], np.zeros((2, 5))])


def test_finish_and_reset_value():
    options = path.CallOptions.of(rnnjax.LSTM(U, return_state=True, activity_regularizer="l1"))
    assert options.return_state and options.activity_regularizer == "l1" and not options.stateful
    seq = path.Sequence((B1, B2), T, (I,))
    out, final = jnp.full((B1, B2, U), -2.0), LSTMState(jnp.ones((B1, B2, U)), jnp.zeros((B1, B2, U)))
    call = path.finish(out, final, options, seq)
    assert len(call.results) == 3 and call.state is final
    # Keras's l1 default 0.01, over output and states, divided by the 6 sequences
    np.testing.assert_allclose(float(call.activity_penalty), 0.01 * (2 * 30 + 30) / 6, rtol=1e-6)
    assert path.finish(out, final, options._replace(activity_regularizer=None), seq).activity_penalty is None
    reset = path.reset_value(final, [np.full((B1, B2, U), 5.0, np.float64), np.zeros((B1, B2, U))])
    assert isinstance(reset, LSTMState) and reset.h.dtype == jnp.float32 and float(reset.h[0, 0, 0]) == 5.0
    assert float(jnp.abs(path.reset_value(final).h).sum()) == 0.0
    with pytest.raises(ValueError, match=r"`states`: expected 2 state array"):
        path.reset_value(final, [np.zeros((B1, B2, U))])


def _field_names(cls) -> set:
    import dataclasses

    return {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}


@pytest.mark.parametrize("kind", kinds.KINDS + (kinds.MINIMAL_RNN,), ids=lambda k: k.name)
def test_layer_fields_are_the_cell_fields_and_the_rnn_options(kind):
    """A layer forwards its cell's fields by name and reads the rest through CallOptions.of: the
    field lists the record gives both must stay the same lists (a ConvLSTM layer has no
    input_dim/input_length, as in Keras)."""
    absent = {"input_dim", "input_length"} if kind.rank else set()
    # options some kinds own (``backend``: the LSTM's and GRU's) are fields of those kinds' layers only
    owned = {a for k in kinds.KINDS for a in k.own_layer_arguments}
    absent |= owned - set(kind.own_layer_arguments)
    layer_cls, cell_cls = kind.linen_layer, kind.linen_cell
    assert _field_names(layer_cls) == _field_names(cell_cls) | (set(path.CallOptions._fields) - absent)
    assert _field_names(rnnjax.RNN) == {"cell"} | (set(path.CallOptions._fields) - owned)
