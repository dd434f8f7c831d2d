"""rnnjax.nnx Bidirectional against the linen Bidirectional (tested against Keras 3 in
test_companions.py) on the same random variables: merge modes, masks, states, stacks, ConvLSTM,
stateful; outputs and gradients to 1e-6."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from nnx_util import assert_trees_close, linen_grads, nnx_grads, stateful_steps, twin
from test_keras_parity import HOLES

import rnnjax
import rnnjax.nnx as rnx

B, T, I, U = 3, 7, 5, 4


def _x(seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, T, I)), jnp.float32)


def _check(ours, linen, x, **call):
    variables = twin(ours, linen, x, **call)
    assert_trees_close(ours(x, **call), linen.apply(variables, x, **call))
    assert_trees_close(nnx_grads(ours, x, **call), linen_grads(linen, variables, x, **call))
    return variables


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("name", ["LSTM", "GRU", "SimpleRNN"])
def test_bidirectional_matches_linen(name, merge_mode):
    kw = dict(return_sequences=True, return_state=merge_mode in ("concat", None))
    ours = rnx.Bidirectional(
        getattr(rnx, name)(U, **kw, input_dim=I, rngs=nnx.Rngs(0)), merge_mode=merge_mode, rngs=nnx.Rngs(1)
    )
    linen = rnnjax.Bidirectional(getattr(rnnjax, name)(U, **kw), merge_mode=merge_mode)
    _check(ours, linen, _x(), mask=jnp.asarray(HOLES))


def test_bidirectional_backward_copy_has_its_own_parameters():
    bi = rnx.Bidirectional(rnx.LSTM(U, input_dim=I, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    assert set(rnx.to_linen(bi)["params"]) == {"forward_lstm", "backward_lstm"}
    assert not np.allclose(bi.forward_lstm.cell.kernel[...], bi.backward_lstm.cell.kernel[...])
    assert bi.backward_lstm.go_backwards and not bi.forward_lstm.go_backwards


def test_bidirectional_stack_backward_layer_and_initial_state():
    cells = lambda k: [rnx.LSTMCell(U, input_dim=I, rngs=nnx.Rngs(k)), rnx.GRUCell(3, input_dim=U, rngs=nnx.Rngs(k))]
    ours = rnx.Bidirectional(rnx.RNN(cells(0), return_sequences=True, return_state=True), rngs=nnx.Rngs(2))
    linen = rnnjax.Bidirectional(
        rnnjax.RNN([rnnjax.LSTMCell(U), rnnjax.GRUCell(3)], return_sequences=True, return_state=True)
    )
    _check(ours, linen, _x(1))
    ours = rnx.Bidirectional(
        rnx.GRU(U, return_sequences=True, input_dim=I, rngs=nnx.Rngs(0)),
        backward_layer=rnx.GRU(
            U, reset_after=True, go_backwards=True, return_sequences=True, input_dim=I, rngs=nnx.Rngs(1)
        ),
    )
    linen = rnnjax.Bidirectional(
        rnnjax.GRU(U, return_sequences=True),
        backward_layer=rnnjax.GRU(U, reset_after=True, go_backwards=True, return_sequences=True),
    )
    init = [jnp.asarray(np.random.default_rng(k).normal(size=(B, U)), jnp.float32) for k in range(2)]
    _check(ours, linen, _x(2), initial_state=init)


def test_bidirectional_conv_lstm_matches_linen():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4, 6, 5, 2)), jnp.float32)
    kw = dict(filters=3, kernel_size=3, padding="same", return_sequences=True)
    _check(
        rnx.Bidirectional(rnx.ConvLSTM2D(**kw, input_dim=2, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1)),
        rnnjax.Bidirectional(rnnjax.ConvLSTM2D(**kw)),
        x,
    )


def test_bidirectional_stateful_resets_as_one_layer():
    ours = rnx.Bidirectional(rnx.LSTM(U, stateful=True, batch_size=B, input_dim=I, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    linen = rnnjax.Bidirectional(rnnjax.LSTM(U, stateful=True))
    variables = twin(ours, linen, _x())
    variables = stateful_steps(ours, linen, variables, [_x(1), _x(2)])
    states = [jnp.full((B, U), float(k)) for k in range(4)]
    rnx.reset_states(ours, states)  # one stateful layer: forward (h, c), then backward (h, c)
    assert_trees_close(
        [ours.forward_lstm.states.get_value().c, ours.backward_lstm.states.get_value().h],
        [states[1], states[2]],
        atol=0,
    )


def test_bidirectional_errors():
    layer = rnx.LSTM(U, input_dim=I, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"`merge_mode`: expected one of"):
        rnx.Bidirectional(layer, merge_mode="max", rngs=nnx.Rngs(1))
    with pytest.raises(TypeError, match=r"Bidirectional: `rngs` must be an nnx.Rngs"):
        rnx.Bidirectional(layer)
    with pytest.raises(ValueError, match=r"`layer`: expected an rnnjax.nnx recurrent layer.*got Linear"):
        rnx.Bidirectional(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match=r"`backward_layer`: it must run in the other direction"):
        rnx.Bidirectional(layer, backward_layer=rnx.LSTM(U, input_dim=I, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"`initial_state`: expected an even number"):
        rnx.Bidirectional(layer, rngs=nnx.Rngs(1))(_x(), initial_state=[jnp.zeros((B, U))] * 3)
