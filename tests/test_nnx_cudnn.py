"""rnnjax.nnx CuDNNLSTM / CuDNNGRU against the linen layers (tested against PyTorch in test_cudnn.py)
on the same random variables: options, right-padded masks and seq_lengths, initial and stateful
states, penalties; outputs, states and gradients to 1e-6."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from nnx_util import assert_trees_close, linen_grads, nnx_grads, stateful_steps, twin

import rnnjax
import rnnjax.nnx as rnx

B, T, I, U = 3, 6, 5, 4
LENGTHS = jnp.asarray([6, 3, 1], jnp.int32)


def _x(seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, T, I)), jnp.float32)


def _pair(kind, **kw):
    name = {"lstm": "CuDNNLSTM", "gru": "CuDNNGRU"}[kind]
    return getattr(rnx, name)(U, **kw, input_dim=I, rngs=nnx.Rngs(0)), getattr(rnnjax, name)(U, **kw)


OPTIONS = [
    ({}, {}),
    ({"return_sequences": True, "go_backwards": True}, {}),
    (
        {"return_state": True, "zero_output_for_mask": True, "return_sequences": True},
        {"mask": jnp.arange(T)[None, :] < LENGTHS[:, None]},
    ),
    ({"return_state": True, "go_backwards": True}, {"seq_lengths": LENGTHS}),
    ({"return_sequences": True, "custom_backward": False, "unit_forget_bias": False}, {}),
]


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("options,call", OPTIONS)
def test_cudnn_layers_match_linen(kind, options, call):
    if kind == "gru":
        options = {k: v for k, v in options.items() if k != "unit_forget_bias"}
    ours, linen = _pair(kind, **options)
    x = _x()
    variables = twin(ours, linen, x, **call)
    assert_trees_close(ours(x, **call), linen.apply(variables, x, **call))
    assert_trees_close(nnx_grads(ours, x, **call), linen_grads(linen, variables, x, **call))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cudnn_initial_and_stateful_states_match_linen(kind):
    n = 2 if kind == "lstm" else 1
    init = [jnp.asarray(np.random.default_rng(k).normal(size=(B, U)), jnp.float32) for k in range(n)]
    ours, linen = _pair(kind, return_state=True)
    variables = twin(ours, linen, _x())
    assert_trees_close(ours(_x(), initial_state=init), linen.apply(variables, _x(), initial_state=init))
    ours = getattr(rnx, type(ours).__name__)(U, stateful=True, batch_size=B, input_dim=I, rngs=nnx.Rngs(0))
    linen = getattr(rnnjax, type(ours).__name__)(U, stateful=True)
    variables = twin(ours, linen, _x())
    variables = stateful_steps(ours, linen, variables, [_x(1), _x(2)])
    ours.reset_states()
    assert not any(np.any(s) for s in ours.states.get_value())


def test_cudnn_penalties_and_errors():
    regs = dict(kernel_regularizer="l2", bias_regularizer="l1", activity_regularizer=rnnjax.regularizers.L2(0.1))
    ours, linen = _pair("lstm", **regs)
    variables = twin(ours, linen, _x())
    _, aux = linen.apply(variables, _x(), mutable=["losses"])
    ours(_x())
    np.testing.assert_allclose(rnx.regularization_loss(ours), rnnjax.regularization_loss(aux), rtol=1e-6)
    with pytest.raises(ValueError, match=r"`backend`: expected one of"):
        rnx.CuDNNLSTM(U, backend="fast", input_dim=I, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"second argument is `kernel_initializer`, got the int 4"):
        rnx.CuDNNGRU(I, U, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"rows \[1\] are not right-padded"):
        ours(_x(), mask=jnp.asarray([[True] * T, [False, True] + [True] * 4, [True] * T]))
    with pytest.raises(ValueError, match=r"`inputs`: 6 features per step, but CuDNNLSTM was built for 5"):
        ours(jnp.zeros((B, T, 6)))
