"""Whole Keras models as rnnjax ``Sequential`` against ``keras.Sequential`` of the same layers
(Keras 3, JAX backend, random weights copied across, 1e-5 float32), and the companion layers
(Embedding, Masking, Dense, Dropout, Activation, TimeDistributed) one by one."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from keras_ref import cell_weights, keras
from sharding_util import batch_mesh, collectives, compiled_text, replicate, shard_batch
from test_companions import H_SIG, HOLES, _x, assert_same, random_params

import rnnjax

B, T, U, V = 3, 7, 4, 11


def _ids(seed=0):
    ids = np.random.default_rng(seed).integers(1, V, (B, T)).astype(np.int32)
    return np.where(HOLES, ids, 0)  # padding (id 0) anywhere, holes included


def _padded_x(seed=0, features=5):
    return np.where(HOLES[..., None], _x(seed, (B, T, features)), 0.0).astype(np.float32)


def _keras_model(layers, input_shape, dtype="float32"):
    return keras.Sequential([keras.Input(input_shape, dtype=dtype), *layers])


def test_embedding_bidirectional_lstm_dense_matches_keras():
    ids = _ids()
    ours = rnnjax.Sequential(
        [
            rnnjax.Embedding(V, 6, mask_zero=True),
            rnnjax.Bidirectional(rnnjax.LSTM(U)),
            rnnjax.Dense(3, activation="softmax"),
        ]
    )
    params = random_params(ours.init(jax.random.key(0), ids))
    assert set(params) == {"embedding", "bidirectional", "dense"}
    theirs = _keras_model(
        [
            keras.layers.Embedding(V, 6, mask_zero=True),
            keras.layers.Bidirectional(keras.layers.LSTM(U, recurrent_activation=H_SIG)),
            keras.layers.Dense(3, activation="softmax"),
        ],
        (T,),
        "int32",
    )
    bi = params["bidirectional"]
    theirs.set_weights(
        [
            params["embedding"]["embeddings"],
            *cell_weights(bi["forward_lstm"]["cell"]),
            *cell_weights(bi["backward_lstm"]["cell"]),
            params["dense"]["kernel"],
            params["dense"]["bias"],
        ]
    )
    assert_same(ours.apply({"params": params}, ids), theirs(ids))


def test_masking_gru_lstm_dense_matches_keras():
    x = _padded_x()
    ours = rnnjax.Sequential([rnnjax.Masking(), rnnjax.GRU(U, return_sequences=True), rnnjax.LSTM(3), rnnjax.Dense(2)])
    params = random_params(ours.init(jax.random.key(0), x))
    theirs = _keras_model(
        [
            keras.layers.Masking(),
            keras.layers.GRU(U, return_sequences=True, recurrent_activation=H_SIG, reset_after=False),
            keras.layers.LSTM(3, recurrent_activation=H_SIG),
            keras.layers.Dense(2),
        ],
        (T, 5),
    )
    theirs.set_weights(
        [
            *cell_weights(params["gru"]["cell"]),
            *cell_weights(params["lstm"]["cell"]),
            params["dense"]["kernel"],
            params["dense"]["bias"],
        ]
    )
    assert_same(ours.apply({"params": params}, x), theirs(x))


def test_time_distributed_dropout_activation_and_numbering_match_keras():
    """Masking -> LSTM(seq) -> TimeDistributed(Dense) -> Dropout -> Activation -> SimpleRNN -> Dense:
    the mask passes through the middle layers and the second Dense is `dense_1`, as in Keras."""
    x = _padded_x(1)
    ours = rnnjax.Sequential(
        [
            rnnjax.Masking(),
            rnnjax.LSTM(U, return_sequences=True),
            rnnjax.TimeDistributed(rnnjax.Dense(3)),
            rnnjax.Dropout(0.5),
            rnnjax.Activation("tanh"),
            rnnjax.SimpleRNN(U),
            rnnjax.Dense(2),
        ]
    )
    params = random_params(ours.init(jax.random.key(0), x))
    assert set(params) == {"lstm", "time_distributed", "simple_rnn", "dense"}
    theirs = _keras_model(
        [
            keras.layers.Masking(),
            keras.layers.LSTM(U, return_sequences=True, recurrent_activation=H_SIG),
            keras.layers.TimeDistributed(keras.layers.Dense(3)),
            keras.layers.Dropout(0.5),
            keras.layers.Activation("tanh"),
            keras.layers.SimpleRNN(U),
            keras.layers.Dense(2),
        ],
        (T, 5),
    )
    td = params["time_distributed"]["dense"]
    theirs.set_weights(
        [
            *cell_weights(params["lstm"]["cell"]),
            td["kernel"],
            td["bias"],
            *cell_weights(params["simple_rnn"]["cell"]),
            params["dense"]["kernel"],
            params["dense"]["bias"],
        ]
    )
    assert_same(ours.apply({"params": params}, x), theirs(x))
    two = rnnjax.Sequential([rnnjax.Dense(3), rnnjax.Dense(2)])
    assert set(two.init(jax.random.key(0), x)["params"]) == {"dense", "dense_1"}


@pytest.mark.filterwarnings("ignore:.*does not support masking")  # Keras's outer-layer notice; the mask is used
def test_explicit_mask_at_call_matches_keras():
    x = _x(2)
    ours = rnnjax.Sequential([rnnjax.GRU(U, return_sequences=True, reset_after=True), rnnjax.Dense(2)])
    params = random_params(ours.init(jax.random.key(0), x))
    theirs = _keras_model(
        [keras.layers.GRU(U, return_sequences=True, recurrent_activation=H_SIG), keras.layers.Dense(2)], (T, 5)
    )
    theirs.set_weights([*cell_weights(params["gru"]["cell"]), params["dense"]["kernel"], params["dense"]["bias"]])
    want = np.asarray(theirs(x, mask=HOLES))
    assert_same(ours.apply({"params": params}, x, mask=HOLES), want)
    assert not np.allclose(ours.apply({"params": params}, x), want, atol=1e-2)  # the mask matters here


class ByHand(nn.Module):
    """LSTM -> Dropout -> Dense written out, under the names Sequential gives them."""

    @nn.compact
    def __call__(self, x, training):
        x = rnnjax.LSTM(U, dropout=0.3, recurrent_dropout=0.3, return_sequences=True, name="lstm")(x, training=training)
        x = rnnjax.Dropout(0.5, name="dropout")(x, training=training)
        return rnnjax.Dense(2, name="dense")(x)


@pytest.mark.parametrize("training", [False, True])
def test_training_and_rng_streams_reach_every_layer(training):
    x = jnp.asarray(_x(3))
    ours = rnnjax.Sequential(
        [
            rnnjax.LSTM(U, dropout=0.3, recurrent_dropout=0.3, return_sequences=True),
            rnnjax.Dropout(0.5),
            rnnjax.Dense(2),
        ]
    )
    params = random_params(ours.init(jax.random.key(0), x))
    rngs = {"dropout": jax.random.key(4)}
    got = ours.apply({"params": params}, x, training=training, rngs=rngs)
    assert_same(got, ByHand().apply({"params": params}, x, training=training, rngs=rngs))
    plain = ours.apply({"params": params}, x)
    assert np.allclose(got, plain) != training
    flax_dropout = rnnjax.Sequential([nn.Dropout(0.5)])  # Flax's own modules get deterministic=not training
    dropped = np.asarray(flax_dropout.apply({}, x, training=training, rngs=rngs))
    assert np.array_equal(dropped, np.asarray(x)) != training


def test_embedding_matches_keras_and_reports_penalties_and_constraints():
    ids = _ids(1)
    layer = rnnjax.Embedding(
        V,
        6,
        embeddings_regularizer=rnnjax.regularizers.L2(0.1),
        activity_regularizer=rnnjax.regularizers.L1(0.01),
        embeddings_constraint="non_neg",
    )
    v = layer.init(jax.random.key(0), ids)
    w = np.asarray(v["params"]["embeddings"])
    assert w.shape == (V, 6) and -0.05 <= w.min() and w.max() <= 0.05 and w.std() > 0.02  # Keras 2's 'uniform'
    k = keras.layers.Embedding(V, 6)
    k.build((B, T))
    k.set_weights([w])
    y, aux = layer.apply(v, ids, mutable=["losses"])
    assert_same(y, k(ids))
    np.testing.assert_allclose(
        aux["losses"]["embeddings_regularizer"], 0.1 * np.sum(w.astype(np.float64) ** 2), rtol=1e-5
    )
    np.testing.assert_allclose(aux["losses"]["activity_regularizer"], 0.01 * np.abs(np.asarray(y)).sum() / B, rtol=1e-5)
    model = rnnjax.Sequential(
        [
            layer,
            rnnjax.Bidirectional(rnnjax.LSTM(U, recurrent_constraint="unit_norm")),
            rnnjax.Dense(2, kernel_constraint="max_norm"),
        ]
    )
    found = rnnjax.constraints.collect_constraints(model, ids)
    assert set(found) == {
        ("embedding", "embeddings"),
        ("dense", "kernel"),
        *(("bidirectional", d, "cell", "recurrent_kernel") for d in ("forward_lstm", "backward_lstm")),
    }
    assert np.array_equal(np.asarray(rnnjax.Embedding(V, 6, mask_zero=True).compute_mask(ids)), ids != 0)
    assert rnnjax.Embedding(V, 6).compute_mask(ids, jnp.asarray(HOLES)) is None


def test_masking_and_dense_and_activation_match_keras():
    x = _padded_x(4)
    x[0, 1, 2] = 0.5  # one feature off the mask value: the step is kept
    k = keras.layers.Masking(0.0)
    ours = rnnjax.Masking(0.0)
    assert_same(ours.apply({}, x), k(x))
    assert np.array_equal(np.asarray(ours.compute_mask(x)), np.asarray(k.compute_mask(x)))
    for act in ["relu", "tanh", "softmax", "sigmoid", "elu", "selu", "softplus", "softsign", None]:
        d = rnnjax.Dense(3, activation=act)
        p = random_params(d.init(jax.random.key(0), x))
        kd = keras.layers.Dense(3, activation=act)
        kd.build(x.shape)
        kd.set_weights([p["kernel"], p["bias"]])
        assert_same(d.apply({"params": p}, x), kd(x))
        if act is not None:
            assert_same(rnnjax.Activation(act).apply({}, x), keras.layers.Activation(act)(x))
    d = rnnjax.Dense(3, use_bias=False)
    assert set(d.init(jax.random.key(0), x)["params"]) == {"kernel"}


def test_dropout_draws_inverted_bernoulli_masks():
    x = jnp.asarray(np.random.default_rng(0).uniform(1, 2, (40, 50, 10)).astype(np.float32))
    layer = rnnjax.Dropout(0.3)
    assert layer.apply({}, x) is x
    y = np.asarray(layer.apply({}, x, training=True, rngs={"dropout": jax.random.key(1)}))
    kept = y != 0
    np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / 0.7, rtol=1e-6)
    assert abs(kept.mean() - 0.7) < 3 * np.sqrt(0.21 / kept.size)
    shared = (
        np.asarray(
            rnnjax.Dropout(0.3, noise_shape=(None, 1, None)).apply(
                {}, x, training=True, rngs={"dropout": jax.random.key(1)}
            )
        )
        != 0
    )
    assert (shared == shared[:, :1]).all() and 0.5 < shared.mean() < 0.9  # the same features at every step
    seeded = rnnjax.Dropout(0.3, seed=7).apply({}, x, training=True, rngs={"dropout": jax.random.key(1)})
    assert not np.array_equal(np.asarray(seeded) != 0, kept)


def test_time_distributed_matches_keras_and_passes_masks():
    x = _x(5, (8, T, 3, 5))
    inner = rnnjax.TimeDistributed(rnnjax.Dense(2))
    v = inner.init(jax.random.key(0), x)
    k = keras.layers.TimeDistributed(keras.layers.Dense(2))
    k.build(x.shape)
    k.set_weights([v["params"]["dense"]["kernel"], v["params"]["dense"]["bias"]])
    assert_same(inner.apply(v, x), k(x))
    m = jnp.asarray(np.random.default_rng(1).uniform(size=(8, T)) < 0.5)
    assert np.array_equal(np.asarray(inner.compute_mask(x, m)), np.asarray(m))
    assert_same(inner.apply(v, x, mask=m), k(x, mask=m))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 3, (2, T, 4)))
    nested = rnnjax.TimeDistributed(rnnjax.Embedding(3, 2, mask_zero=True)).compute_mask(ids, None)
    assert np.array_equal(np.asarray(nested), np.asarray(ids) != 0)


def test_a_training_step_partitions_on_the_batch():
    """Batch sharded over 8 devices: the forward pass has no collective at all, the gradient of
    the parameters only the reductions over the batch (all-reduce)."""
    mesh = batch_mesh(8)
    ids = np.random.default_rng(0).integers(0, V, (8, T)).astype(np.int32)
    model = rnnjax.Sequential(
        [
            rnnjax.Embedding(V, 6, mask_zero=True),
            rnnjax.Bidirectional(rnnjax.LSTM(U, return_sequences=True)),
            rnnjax.TimeDistributed(rnnjax.Dense(3)),
            rnnjax.Masking(),
            rnnjax.GRU(U),
            rnnjax.Dense(2),
        ]
    )
    params = replicate(mesh, model.init(jax.random.key(0), ids)["params"])
    ids = shard_batch(mesh, jnp.asarray(ids))
    forward = compiled_text(lambda p, i: model.apply({"params": p}, i), params, ids)
    assert sum(collectives(forward).values()) == 0, collectives(forward)
    grad = compiled_text(jax.grad(lambda p, i: jnp.sum(model.apply({"params": p}, i) ** 2)), params, ids)
    assert set(collectives(grad)) == {"all-reduce"}, collectives(grad)


def test_reset_states_takes_keras_flat_list_for_one_stateful_layer():
    x = jnp.asarray(_x(6))
    model = rnnjax.Sequential([rnnjax.LSTM(U, stateful=True, return_sequences=True), rnnjax.Dense(2)])
    v = model.init(jax.random.key(0), x)
    h, c = (jnp.asarray(_x(s, (B, U))) for s in (7, 8))
    v = rnnjax.reset_states(v, states=[h, c])
    assert_same(list(v["rnn_state"]["lstm"]["states"]), [h, c])
    y, _ = model.apply(v, x, mutable=["rnn_state"])
    seq = rnnjax.LSTM(U, return_sequences=True).apply({"params": v["params"]["lstm"]}, x, initial_state=[h, c])
    assert_same(y, rnnjax.Dense(2).apply({"params": v["params"]["dense"]}, seq))
    with pytest.raises(ValueError, match=r"expected 2 state array\(s\).*got 1"):
        rnnjax.reset_states(v, states=[h])
    two = rnnjax.Sequential([rnnjax.GRU(U, stateful=True, return_sequences=True), rnnjax.GRU(U, stateful=True)])
    v2 = two.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="exactly one stateful layer; this one has 2"):
        rnnjax.reset_states(v2, states=[h])
    assert_same(rnnjax.reset_states(v2, states=v2["rnn_state"])["rnn_state"], v2["rnn_state"])  # the tree form
