"""rnnjax.nnx against the linen layers (themselves tested against Keras 3 and PyTorch) on the same
random variables, converted with rnnjax.nnx.from_linen: outputs, final states and gradients agree
to 1e-6, for every layer and option of the Keras parity tests (tests/test_keras_parity.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from catalogue import DENSE, layer, n_states
from custom_cells import MinimalRNNCell, NNXMinimalRNNCell
from flax import nnx
from nnx_util import assert_trees_close, linen_grads, nnx_grads, twin
from test_keras_parity import CASES, HOLES, RIGHT_PADDED, _takes

import rnnjax
import rnnjax.nnx as rnx

B, T, I, U = 3, 7, 5, 4


def _x(seed=0, shape=(B, T, I)):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def compare(nnx_layer, linen_layer, x, seed=0, grads=True, **call):
    variables = twin(nnx_layer, linen_layer, x, seed, **call)
    assert_trees_close(rnx.to_linen(nnx_layer)["params"], variables["params"], atol=0)
    theirs = linen_layer.apply(variables, x, **call)
    ours = nnx_layer(x, **call)
    assert_trees_close(ours, theirs)
    if grads:
        assert_trees_close(nnx_grads(nnx_layer, x, **call), linen_grads(linen_layer, variables, x, **call))
    return ours


def compare_kind(kind, kwargs=None, **call):
    kwargs = kwargs or {}
    return compare(
        layer(kind, U, "nnx", **kwargs, input_dim=I, rngs=nnx.Rngs(0)), layer(kind, U, **kwargs), _x(), **call
    )


@pytest.mark.parametrize(
    "kind,options", CASES, ids=[f"{k}-" + ("-".join(f"{a}={b}" for a, b in o.items()) or "default") for k, o in CASES]
)
def test_matches_linen(kind, options):
    compare_kind(kind, options)


@pytest.mark.parametrize("kind", DENSE)
def test_sigmoid_gates_match_linen(kind):
    compare_kind(
        kind, {"recurrent_activation": "sigmoid"} if _takes(kind, "recurrent_activation") else {"activation": "sigmoid"}
    )


@pytest.mark.parametrize("kind", DENSE)
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("mask", [HOLES, RIGHT_PADDED], ids=["holes", "right_padded"])
def test_masks_match_linen(kind, go_backwards, mask):
    compare_kind(kind, {"return_sequences": True, "go_backwards": go_backwards}, mask=jnp.asarray(mask))
    compare_kind(
        kind, {"return_state": True, "go_backwards": go_backwards, "zero_output_for_mask": True}, mask=jnp.asarray(mask)
    )


@pytest.mark.parametrize("kind", DENSE)
def test_initial_state_matches_linen(kind):
    rng = np.random.default_rng(7)
    init = [jnp.asarray(rng.normal(size=(B, U)), jnp.float32) for _ in range(n_states(kind))]
    compare_kind(kind, {"return_sequences": True, "return_state": True}, initial_state=init)
    compare_kind(kind, {"return_state": True}, initial_state=init, mask=jnp.asarray(RIGHT_PADDED))


@pytest.mark.parametrize("kind", DENSE)
def test_performance_options_match_linen(kind):
    compare_kind(kind, {"return_sequences": True, "scan_unroll": 3, "remat": True})
    compare_kind(kind, {"return_state": True, "custom_backward": False})


def test_stacked_cells_match_linen():
    x = _x(4)
    cells = [
        rnx.LSTMCell(4, input_dim=I, rngs=nnx.Rngs(0)),
        rnx.GRUCell(3, reset_after=True, input_dim=4, rngs=nnx.Rngs(1)),
        rnx.SimpleRNNCell(5, input_dim=3, rngs=nnx.Rngs(2)),
    ]
    linen_cells = [rnnjax.LSTMCell(4), rnnjax.GRUCell(3, reset_after=True), rnnjax.SimpleRNNCell(5)]
    ours = rnx.RNN(cells, return_sequences=True, return_state=True)
    out = compare(ours, rnnjax.RNN(linen_cells, return_sequences=True, return_state=True), x)
    assert len(out) == 5  # output, (h, c), h, h
    assert set(rnx.to_linen(ours)["params"]) == {"cell_0", "cell_1", "cell_2"}
    stack = rnx.StackedRNNCells(
        [rnx.LSTMCell(4, input_dim=I, rngs=nnx.Rngs(0)), rnx.SimpleRNNCell(5, input_dim=4, rngs=nnx.Rngs(1))]
    )
    compare(
        rnx.RNN(stack, return_state=True),
        rnnjax.RNN(rnnjax.StackedRNNCells([rnnjax.LSTMCell(4), rnnjax.SimpleRNNCell(5)]), return_state=True),
        x,
    )


def test_custom_nnx_cell_alone_and_stacked():
    x = _x(5)
    compare(
        rnx.RNN(NNXMinimalRNNCell(U, input_dim=I, rngs=nnx.Rngs(0)), return_sequences=True),
        rnnjax.RNN(MinimalRNNCell(U), return_sequences=True),
        x,
    )
    ours = rnx.RNN(
        [NNXMinimalRNNCell(3, input_dim=I, rngs=nnx.Rngs(0)), rnx.LSTMCell(U, input_dim=3, rngs=nnx.Rngs(1))],
        return_state=True,
    )
    compare(ours, rnnjax.RNN([MinimalRNNCell(3), rnnjax.LSTMCell(U)], return_state=True), x, mask=jnp.asarray(HOLES))


def test_single_cell_step_matches_linen():
    x = _x(5)[:, 0]
    h0 = [jnp.asarray(np.random.default_rng(1).normal(size=(B, U)), jnp.float32)] * 2
    ours = rnx.LSTMCell(U, input_dim=I, rngs=nnx.Rngs(0))
    linen = rnnjax.LSTMCell(U)
    variables = linen.init(jax.random.key(0), x, h0)
    rnx.from_linen(ours, variables)
    assert_trees_close(ours(x, h0), linen.apply(variables, x, h0))
