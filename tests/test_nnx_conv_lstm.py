"""rnnjax.nnx ConvLSTM1D/2D/3D against the linen layers (tested against Keras 3 and float64 numpy in
test_conv_lstm.py) on the same random variables: the options of those tests, outputs, states and
gradients to 1e-6; stateful channels_first; dropout modes."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from nnx_util import assert_trees_close, linen_grads, nnx_grads, twin
from test_conv_lstm import CASES

import rnnjax
import rnnjax.nnx as rnx

SPATIAL = {1: (7,), 2: (6, 5), 3: (4, 3, 5)}


def _input(rank, fmt, batch=2, steps=4, channels=2, seed=0):
    sp = SPATIAL[rank]
    shape = (batch, steps, channels) + sp if fmt == "channels_first" else (batch, steps) + sp + (channels,)
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _pair(rank, **kw):
    name = f"ConvLSTM{rank}D"
    return getattr(rnx, name)(3, **kw, input_dim=2, rngs=nnx.Rngs(0)), getattr(rnnjax, name)(3, **kw)


@pytest.mark.parametrize("rank,kw,ours_kw,use_mask", CASES)
def test_conv_lstm_matches_linen(rank, kw, ours_kw, use_mask):
    x = _input(rank, kw.get("data_format", "channels_last"))
    call = {"mask": jnp.asarray([[True, False, True, True], [False, True, True, False]])} if use_mask else {}
    ours, linen = _pair(rank, recurrent_activation="sigmoid", **kw, **ours_kw)
    variables = twin(ours, linen, x, **call)
    assert_trees_close(ours(x, **call), linen.apply(variables, x, **call))
    assert_trees_close(nnx_grads(ours, x, **call), linen_grads(linen, variables, x, **call))


def test_conv_lstm_cell_in_rnn_and_stacked_matches_linen():
    x = _input(2, "channels_last", seed=3)
    ours = rnx.RNN(
        [
            rnx.ConvLSTM2DCell(3, 3, padding="same", input_dim=2, rngs=nnx.Rngs(0)),
            rnx.ConvLSTM2DCell(2, (2, 2), input_dim=3, rngs=nnx.Rngs(1)),
        ],
        return_state=True,
    )
    linen = rnnjax.RNN(
        [rnnjax.ConvLSTM2DCell(3, 3, padding="same"), rnnjax.ConvLSTM2DCell(2, (2, 2))], return_state=True
    )
    variables = twin(ours, linen, x)
    assert_trees_close(ours(x), linen.apply(variables, x))
    assert_trees_close(nnx_grads(ours, x), linen_grads(linen, variables, x))


def test_conv_lstm_stateful_channels_first_matches_linen():
    kw = dict(padding="same", data_format="channels_first", stateful=True, return_sequences=True)
    ours = rnx.ConvLSTM2D(3, 3, **kw, batch_size=2, input_spatial_shape=SPATIAL[2], input_dim=2, rngs=nnx.Rngs(0))
    linen = rnnjax.ConvLSTM2D(3, 3, **kw)
    x1, x2 = _input(2, "channels_first", seed=1), _input(2, "channels_first", seed=2)
    variables = twin(ours, linen, x1)
    for x in (x1, x2):
        y, upd = linen.apply(variables, x, mutable=["rnn_state"])
        variables = {**variables, **upd}
        assert_trees_close(ours(x), y)
    assert_trees_close(rnx.to_linen(ours)["rnn_state"], variables["rnn_state"])
    states = [np.random.default_rng(k).normal(size=(2, 3) + SPATIAL[2]).astype(np.float32) for k in range(2)]
    ours.reset_states(states)  # channels_first, as the layer's data_format
    _, upd = linen.apply(variables, states, method="reset_states", mutable=["rnn_state"])
    variables = {**variables, **upd}
    assert_trees_close(ours.states.get_value(), variables["rnn_state"]["states"], atol=0)
    assert_trees_close(ours(x1), linen.apply(variables, x1, mutable=["rnn_state"])[0])


def test_conv_lstm_dropout_modes():
    ours, linen = _pair(1, kernel_size=3, padding="same", dropout=0.3, recurrent_dropout=0.3, return_sequences=True)
    x = _input(1, "channels_last")
    variables = twin(ours, linen, x)
    reference = linen.apply(variables, x)
    assert not np.allclose(ours(x), reference, atol=1e-3)
    ours.eval()
    assert_trees_close(ours(x), reference)
    assert not np.allclose(ours(x, training=True), reference, atol=1e-3)


def test_conv_lstm_errors():
    with pytest.raises(ValueError, match=r"`input_spatial_shape`: a stateful ConvLSTM2D"):
        rnx.ConvLSTM2D(3, 3, stateful=True, batch_size=2, input_dim=2, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"`input_dim` is required.*input channels"):
        rnx.ConvLSTM1D(3, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"`padding`"):
        rnx.ConvLSTM2D(3, 3, padding="full", input_dim=2, rngs=nnx.Rngs(0))
    layer = rnx.ConvLSTM2D(3, 3, input_dim=2, rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError,
        match=r"`inputs`: expected an array \(\*samples, time, rows, cols, channels\) with at "
        r"least 4 dimensions, got shape \(4, 5, 2\)",
    ):
        layer(jnp.zeros((4, 5, 2)))
    with pytest.raises(ValueError, match=r"`inputs`: 4 features per step, but ConvLSTM2DCell was built for 2"):
        layer(jnp.zeros((2, 4, 6, 5, 4)))
    cell = rnx.ConvLSTM2DCell(3, 3, data_format="channels_first", input_dim=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"`data_format`: an NNX ConvLSTM2DCell computes channels_last"):
        rnx.RNN(cell)(jnp.zeros((2, 4, 2, 6, 5)))
