"""rnnjax.nnx companion layers (Embedding, Masking, Dense, Dropout, Activation, TimeDistributed) and
Sequential against their linen twins (tested against Keras 3 in test_companions.py and
test_companion_models.py) on the same random variables: outputs, masks and gradients to 1e-6,
whole models with masks (holes included), dropout via train()/eval(), stateful models, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from nnx_util import assert_trees_close, linen_grads, nnx_grads, stateful_steps, twin
from test_keras_parity import HOLES

import rnnjax
import rnnjax.nnx as rnx

B, T, I, U, V = 3, 7, 5, 4, 11


def _x(seed=0, shape=(B, T, I)):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _ids(seed=0):
    ids = np.random.default_rng(seed).integers(1, V, (B, T)).astype(np.int32)
    return jnp.asarray(np.where(HOLES, ids, 0))  # padding (id 0) anywhere, holes included


def _check(ours, linen, x, grads=True, **call):
    variables = twin(ours, linen, x, **call)
    assert_trees_close(ours(x, **call), linen.apply(variables, x, **call))
    if grads:
        assert_trees_close(nnx_grads(ours, x, **call), linen_grads(linen, variables, x, **call))
    assert_trees_close(rnx.to_linen(ours), {k: v for k, v in variables.items() if k in ("params", "rnn_state")})
    return variables


def test_embedding_matches_linen_with_its_mask():
    ours = rnx.Embedding(V, 6, mask_zero=True, input_length=T, rngs=nnx.Rngs(0))
    linen = rnnjax.Embedding(V, 6, mask_zero=True, input_length=T)
    assert ours.embeddings.shape == (V, 6)
    _check(ours, linen, _ids())
    np.testing.assert_array_equal(ours.compute_mask(_ids()), HOLES)
    assert rnx.Embedding(V, 6, rngs=nnx.Rngs(0)).compute_mask(_ids()) is None


@pytest.mark.parametrize("kw", [{}, {"activation": "tanh", "use_bias": False}, {"activation": "softmax"}])
def test_dense_matches_linen_on_sequences(kw):
    ours = rnx.Dense(U, **kw, input_dim=I, rngs=nnx.Rngs(0))
    assert ours.kernel.shape == (I, U) and (ours.bias is None) == (kw.get("use_bias") is False)
    _check(ours, rnnjax.Dense(U, **kw), _x())
    assert ours.compute_mask(_x(), jnp.asarray(HOLES)) is not None


def test_masking_and_activation_match_linen():
    x = jnp.where(jnp.asarray(HOLES)[..., None], _x(1), 2.5)
    ours, linen = rnx.Masking(2.5), rnnjax.Masking(2.5)
    assert_trees_close(ours(x), linen.apply({}, x))
    np.testing.assert_array_equal(ours.compute_mask(x), HOLES)
    for name in ("hard_sigmoid", "softmax", "relu"):
        assert_trees_close(rnx.Activation(name)(x), rnnjax.Activation(name).apply({}, x))


def test_time_distributed_dense_and_lstm_match_linen():
    mask = jnp.asarray(HOLES)
    ours = rnx.TimeDistributed(rnx.Dense(U, activation="relu", input_dim=I, rngs=nnx.Rngs(0)))
    variables = _check(ours, rnnjax.TimeDistributed(rnnjax.Dense(U, activation="relu")), _x(), mask=mask)
    assert set(variables["params"]) == {"dense"}
    np.testing.assert_array_equal(ours.compute_mask(_x(), mask), HOLES)
    x4 = _x(2, (B, T, 6, I))  # an LSTM per step over a nested time axis, with a nested mask
    nested = jnp.asarray(np.random.default_rng(3).random((B, T, 6)) > 0.3)
    _check(
        rnx.TimeDistributed(rnx.LSTM(U, return_sequences=True, input_dim=I, rngs=nnx.Rngs(0))),
        rnnjax.TimeDistributed(rnnjax.LSTM(U, return_sequences=True)),
        x4,
        mask=nested,
    )


def _tagger(nnx_dropout=0.0):
    """Embedding(mask_zero) -> Bidirectional(LSTM) -> TimeDistributed(Dense) -> Dropout -> GRU -> Dense."""
    r = nnx.Rngs(0)
    ours = rnx.Sequential(
        [
            rnx.Embedding(V, 6, mask_zero=True, rngs=r),
            rnx.Bidirectional(rnx.LSTM(U, return_sequences=True, input_dim=6, rngs=r), rngs=r),
            rnx.TimeDistributed(rnx.Dense(5, activation="tanh", input_dim=2 * U, rngs=r)),
            rnx.Dropout(nnx_dropout, noise_shape=(None, 1, None), rngs=r),
            rnx.GRU(3, return_sequences=True, input_dim=5, rngs=r),
            rnx.Dense(2, input_dim=3, rngs=r),
            rnx.Dense(2, activation="softmax", input_dim=2, rngs=r),
        ]
    )
    linen = rnnjax.Sequential(
        [
            rnnjax.Embedding(V, 6, mask_zero=True),
            rnnjax.Bidirectional(rnnjax.LSTM(U, return_sequences=True)),
            rnnjax.TimeDistributed(rnnjax.Dense(5, activation="tanh")),
            rnnjax.Dropout(nnx_dropout, noise_shape=(None, 1, None)),
            rnnjax.GRU(3, return_sequences=True),
            rnnjax.Dense(2),
            rnnjax.Dense(2, activation="softmax"),
        ]
    )
    return ours, linen


def test_sequential_tagger_matches_linen_with_holes():
    ours, linen = _tagger()
    variables = _check(ours, linen, _ids())
    assert set(variables["params"]) == {"embedding", "bidirectional", "time_distributed", "gru", "dense", "dense_1"}
    assert ours.names == ("embedding", "bidirectional", "time_distributed", "dropout", "gru", "dense", "dense_1")


def test_sequential_masking_stack_matches_linen():
    x = jnp.where(jnp.asarray(HOLES)[..., None], _x(4), 0.0)
    r = nnx.Rngs(1)
    ours = rnx.Sequential(
        [
            rnx.Masking(),
            rnx.SimpleRNN(U, return_sequences=True, input_dim=I, rngs=r),
            rnx.Activation("relu"),
            rnx.LSTM(3, input_dim=U, rngs=r),
            rnx.Dense(2, input_dim=3, rngs=r),
        ]
    )
    linen = rnnjax.Sequential(
        [
            rnnjax.Masking(),
            rnnjax.SimpleRNN(U, return_sequences=True),
            rnnjax.Activation("relu"),
            rnnjax.LSTM(3),
            rnnjax.Dense(2),
        ]
    )
    _check(ours, linen, x)
    given = jnp.asarray(HOLES)  # a mask given at the call, without Masking
    _check(rnx.Sequential([rnx.GRU(U, input_dim=I, rngs=r)]), rnnjax.Sequential([rnnjax.GRU(U)]), _x(5), mask=given)


def test_dropout_follows_train_eval_and_training_override():
    x = _x(6, (4, 50, 8)) + 10.0  # no zeros of its own
    drop = rnx.Dropout(0.4, rngs=nnx.Rngs(0))
    y = drop(x)  # a new module trains (deterministic=False), as nnx.Dropout
    kept = np.asarray(y != 0)
    np.testing.assert_allclose(np.asarray(y)[kept], np.asarray(x)[kept] / 0.6, rtol=1e-6)
    assert abs((~kept).mean() - 0.4) < 0.05  # 1600 draws: 5 standard deviations
    assert not np.array_equal(np.asarray(drop(x) != 0), kept)  # a fresh mask per call
    drop.eval()
    assert_trees_close(drop(x), x, atol=0)
    assert not np.array_equal(np.asarray(drop(x, training=True)), np.asarray(x))
    drop.train()
    assert_trees_close(drop(x, training=False), x, atol=0)
    keyed = [drop(x, rngs=jax.random.key(7)) for _ in range(2)]  # a call's key overrides the stream
    assert_trees_close(*keyed, atol=0)
    shared = rnx.Dropout(0.5, noise_shape=(None, 1, None), rngs=nnx.Rngs(1))(x)  # one mask for every step
    assert (np.asarray(shared == 0) == np.asarray(shared[:, :1] == 0)).all()
    assert_trees_close(rnx.Dropout(0.0)(x), x, atol=0)  # rate 0: no stream needed


def test_sequential_dropout_in_eval_matches_linen_and_train_drops():
    ours, linen = _tagger(nnx_dropout=0.5)
    ours.eval()
    variables = _check(ours, linen, _ids())
    reference = linen.apply(variables, _ids())
    ours.train()
    trained = [ours(_ids()) for _ in range(2)]
    assert not np.allclose(trained[0], reference) and not np.allclose(trained[0], trained[1])
    assert_trees_close(ours(_ids(), training=False), reference)
    step = nnx.jit(lambda m, ids: m(ids))  # the stream advances under nnx.jit too
    assert not np.allclose(step(ours, _ids()), step(ours, _ids()))


def test_sequential_stateful_layers_and_reset_states_match_linen():
    r = nnx.Rngs(2)
    ours = rnx.Sequential(
        [
            rnx.LSTM(U, return_sequences=True, stateful=True, batch_size=B, input_dim=I, rngs=r),
            rnx.TimeDistributed(rnx.Dense(3, input_dim=U, rngs=r)),
            rnx.GRU(2, stateful=True, batch_size=B, input_dim=3, rngs=r),
        ]
    )
    linen = rnnjax.Sequential(
        [
            rnnjax.LSTM(U, return_sequences=True, stateful=True),
            rnnjax.TimeDistributed(rnnjax.Dense(3)),
            rnnjax.GRU(2, stateful=True),
        ]
    )
    variables = twin(ours, linen, _x())
    variables = stateful_steps(ours, linen, variables, [_x(1), _x(2)])
    rnx.reset_states(ours)
    variables = rnnjax.reset_states(variables)
    assert_trees_close(rnx.to_linen(ours)["rnn_state"], variables["rnn_state"], atol=0)
    assert not np.any(np.asarray(ours.lstm.states.get_value().c))
    assert_trees_close(ours(_x(3)), linen.apply(variables, _x(3), mutable=["rnn_state"])[0])


def test_penalties_and_constraints_match_linen():
    ours = rnx.Dense(
        U,
        kernel_regularizer=rnnjax.regularizers.L2(0.1),
        activity_regularizer=rnnjax.regularizers.L1(0.01),
        kernel_constraint="non_neg",
        input_dim=I,
        rngs=nnx.Rngs(0),
    )
    linen = rnnjax.Dense(
        U,
        kernel_regularizer=rnnjax.regularizers.L2(0.1),
        activity_regularizer=rnnjax.regularizers.L1(0.01),
        kernel_constraint="non_neg",
    )
    variables = twin(ours, linen, _x())
    _, losses = linen.apply(variables, _x(), mutable=["losses"])
    ours(_x())
    np.testing.assert_allclose(rnx.regularization_loss(ours), rnnjax.regularization_loss(losses), rtol=1e-6)
    rnx.apply_constraints(ours)
    np.testing.assert_array_equal(ours.kernel[...], np.maximum(variables["params"]["kernel"], 0))
    emb = rnx.Embedding(V, 3, embeddings_regularizer=rnnjax.regularizers.L1(0.5), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(
        rnx.regularization_loss(emb), 0.5 * np.abs(np.asarray(emb.embeddings[...])).sum(), rtol=1e-6
    )


class _NoMask(nnx.Module):
    def __call__(self, x):
        return x


@pytest.mark.parametrize(
    "make,error,match",
    [
        (
            lambda: rnx.Dense(8, 64, rngs=nnx.Rngs(0)),
            TypeError,
            r"second argument is `activation`, got the int 64.*"
            r"Dense\(64, input_dim=8",
        ),
        (lambda: rnx.Dense(4, rngs=nnx.Rngs(0)), TypeError, r"Dense: `input_dim` is required"),
        (lambda: rnx.Dense(4, input_dim=5), TypeError, r"`rngs` must be an nnx.Rngs.*got NoneType"),
        (lambda: rnx.Dense(0, input_dim=5, rngs=nnx.Rngs(0)), ValueError, r"`units`"),
        (lambda: rnx.Dense(4, activation="nope", input_dim=5, rngs=nnx.Rngs(0)), ValueError, r"`activation`"),
        (
            lambda: rnx.Dense(4, bogus=1, input_dim=5, rngs=nnx.Rngs(0)),
            TypeError,
            r"Dense: unexpected argument `bogus`",
        ),
        (
            lambda: rnx.Embedding(1, 4, mask_zero=True, rngs=nnx.Rngs(0)),
            ValueError,
            r"`input_dim`: with mask_zero=True",
        ),
        (
            lambda: rnx.Embedding(V, rngs=nnx.Rngs(0)),
            TypeError,
            r"Embedding: missing required argument\(s\) \['output_dim'\]",
        ),
        (lambda: rnx.Embedding(V, 4), TypeError, r"`rngs` must be an nnx.Rngs"),
        (lambda: rnx.Dropout(1.5, rngs=nnx.Rngs(0)), ValueError, r"`rate`"),
        (lambda: rnx.Dropout(0.5), TypeError, r"Dropout: `rngs` must be an nnx.Rngs"),
        (lambda: rnx.Activation("nope"), ValueError, r"`activation`"),
        (lambda: rnx.TimeDistributed(rnnjax.Dense(3)), ValueError, r"`layer`: expected an NNX module, got Dense"),
        (lambda: rnx.Sequential([]), ValueError, r"`layers`: expected a non-empty list"),
        (lambda: rnx.Sequential([rnx.Masking(), 3]), ValueError, r"`layers`\[1\]: expected an NNX module, got int"),
    ],
)
def test_bad_arguments_are_named(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_calls_are_named():
    dense = rnx.Dense(U, input_dim=I, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"`inputs`: 3 features, but Dense was built for 5"):
        dense(jnp.zeros((2, 3)))
    emb = rnx.Embedding(V, 3, input_length=T, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, input_dim=11\); got ids from 11 to 11"):
        emb(jnp.full((B, T), V))
    with pytest.raises(ValueError, match=r"declared with input_length=7"):
        emb(jnp.zeros((B, 3), jnp.int32))
    with pytest.raises(ValueError, match=r"`noise_shape`: expected 3 entries"):
        rnx.Dropout(0.5, noise_shape=(None, 2), rngs=nnx.Rngs(0))(_x())
    with pytest.raises(ValueError, match=r"TimeDistributed expected an array \(batch, timesteps, ...\)"):
        rnx.TimeDistributed(dense)(jnp.zeros((2, I)))
    masked = rnx.Sequential([rnx.Embedding(V, I, mask_zero=True, rngs=nnx.Rngs(0)), _NoMask()])
    with pytest.raises(TypeError, match=r"_NoMask does not support masking"):
        masked(_ids())
    states = rnx.Sequential([rnx.LSTM(U, return_state=True, input_dim=I, rngs=nnx.Rngs(0))])
    with pytest.raises(ValueError, match=r"`layers`\[0\] \(lstm, LSTM\) returned 3 outputs"):
        states(_x())
    with pytest.raises(ValueError, match=r"from_linen: `variables` do not match the model.*dense/kernel"):
        rnx.from_linen(
            rnx.Sequential([dense]), {"params": {"dense": {"kernel": jnp.zeros((3, U)), "bias": jnp.zeros(U)}}}
        )
