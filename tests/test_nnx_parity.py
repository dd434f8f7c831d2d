"""rnnjax.nnx against the linen layers (themselves tested against Keras 3 and PyTorch) on the same
random variables, converted with rnnjax.nnx.from_linen: outputs, final states and gradients agree
to 1e-6, for every layer and option of the Keras parity tests (tests/test_keras_parity.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rnnjax
import rnnjax.nnx as rnx
from custom_cells import MinimalRNNCell
from nnx_util import assert_trees_close, linen_grads, nnx_grads, twin
from test_keras_parity import HOLES, OPTIONS, RIGHT_PADDED

B, T, I, U = 3, 7, 5, 4
KINDS = {
    "simple": (rnx.SimpleRNN, rnnjax.SimpleRNN, {}),
    "lstm": (rnx.LSTM, rnnjax.LSTM, {}),
    "gru": (rnx.GRU, rnnjax.GRU, {"reset_after": False}),
    "gru_ra": (rnx.GRU, rnnjax.GRU, {"reset_after": True}),
}


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
    nnx_cls, linen_cls, fixed = KINDS[kind]
    kwargs = {**fixed, **(kwargs or {})}
    return compare(nnx_cls(U, **kwargs, input_dim=I, rngs=nnx.Rngs(0)), linen_cls(U, **kwargs), _x(), **call)


CASES = [(k, o) for k in KINDS for o in OPTIONS if not (k == "simple" and "implementation" in o)]


@pytest.mark.parametrize("kind,options", CASES,
                         ids=[f"{k}-" + ("-".join(f"{a}={b}" for a, b in o.items()) or "default") for k, o in CASES])
def test_matches_linen(kind, options):
    compare_kind(kind, options)


@pytest.mark.parametrize("kind", list(KINDS))
def test_sigmoid_gates_match_linen(kind):
    compare_kind(kind, {"activation": "sigmoid"} if kind == "simple" else {"recurrent_activation": "sigmoid"})


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("mask", [HOLES, RIGHT_PADDED], ids=["holes", "right_padded"])
def test_masks_match_linen(kind, go_backwards, mask):
    compare_kind(kind, {"return_sequences": True, "go_backwards": go_backwards}, mask=jnp.asarray(mask))
    compare_kind(kind, {"return_state": True, "go_backwards": go_backwards, "zero_output_for_mask": True},
                 mask=jnp.asarray(mask))


@pytest.mark.parametrize("kind", list(KINDS))
def test_initial_state_matches_linen(kind):
    rng = np.random.default_rng(7)
    init = [jnp.asarray(rng.normal(size=(B, U)), jnp.float32) for _ in range(2 if kind == "lstm" else 1)]
    compare_kind(kind, {"return_sequences": True, "return_state": True}, initial_state=init)
    compare_kind(kind, {"return_state": True}, initial_state=init, mask=jnp.asarray(RIGHT_PADDED))


@pytest.mark.parametrize("kind", list(KINDS))
def test_performance_options_match_linen(kind):
    compare_kind(kind, {"return_sequences": True, "scan_unroll": 3, "remat": True})
    compare_kind(kind, {"return_state": True, "custom_backward": False})


def test_stacked_cells_match_linen():
    x = _x(4)
    cells = [rnx.LSTMCell(4, input_dim=I, rngs=nnx.Rngs(0)), rnx.GRUCell(3, reset_after=True, input_dim=4,
             rngs=nnx.Rngs(1)), rnx.SimpleRNNCell(5, input_dim=3, rngs=nnx.Rngs(2))]
    linen_cells = [rnnjax.LSTMCell(4), rnnjax.GRUCell(3, reset_after=True), rnnjax.SimpleRNNCell(5)]
    ours = rnx.RNN(cells, return_sequences=True, return_state=True)
    out = compare(ours, rnnjax.RNN(linen_cells, return_sequences=True, return_state=True), x)
    assert len(out) == 5  # output, (h, c), h, h
    assert set(rnx.to_linen(ours)["params"]) == {"cell_0", "cell_1", "cell_2"}
    stack = rnx.StackedRNNCells([rnx.LSTMCell(4, input_dim=I, rngs=nnx.Rngs(0)),
                                 rnx.SimpleRNNCell(5, input_dim=4, rngs=nnx.Rngs(1))])
    compare(rnx.RNN(stack, return_state=True),
            rnnjax.RNN(rnnjax.StackedRNNCells([rnnjax.LSTMCell(4), rnnjax.SimpleRNNCell(5)]), return_state=True), x)


class NNXMinimalRNNCell(nnx.Module):
    """The seed's custom-cell example (``MinimalRNNCell``) written in NNX."""

    def __init__(self, units, *, input_dim, rngs):
        self.units = units
        init = rnnjax.initializers.get("uniform")
        self.kernel = nnx.Param(init(rngs.params(), (input_dim, units)))
        self.recurrent_kernel = nnx.Param(init(rngs.params(), (units, units)))

    @property
    def state_size(self):
        return self.units

    def __call__(self, inputs, states):
        prev_output = states[0]
        h = inputs @ self.kernel[...]
        output = h + prev_output @ self.recurrent_kernel[...]
        return output, [output]


def test_custom_nnx_cell_alone_and_stacked():
    x = _x(5)
    compare(rnx.RNN(NNXMinimalRNNCell(U, input_dim=I, rngs=nnx.Rngs(0)), return_sequences=True),
            rnnjax.RNN(MinimalRNNCell(U), return_sequences=True), x)
    ours = rnx.RNN([NNXMinimalRNNCell(3, input_dim=I, rngs=nnx.Rngs(0)), rnx.LSTMCell(U, input_dim=3, rngs=nnx.Rngs(1))],
                   return_state=True)
    compare(ours, rnnjax.RNN([MinimalRNNCell(3), rnnjax.LSTMCell(U)], return_state=True), x,
            mask=jnp.asarray(HOLES))


def test_single_cell_step_matches_linen():
    x = _x(5)[:, 0]
    h0 = [jnp.asarray(np.random.default_rng(1).normal(size=(B, U)), jnp.float32)] * 2
    ours = rnx.LSTMCell(U, input_dim=I, rngs=nnx.Rngs(0))
    linen = rnnjax.LSTMCell(U)
    variables = linen.init(jax.random.key(0), x, h0)
    rnx.from_linen(ours, variables)
    assert_trees_close(ours(x, h0), linen.apply(variables, x, h0))
