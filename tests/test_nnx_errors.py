"""rnnjax.nnx: each bad argument gets an error naming it, what was received and what was expected."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rnnjax
import rnnjax.nnx as rnx

X = jnp.zeros((3, 7, 5))


def test_nnx_argument_order_mistake_is_explained():
    with pytest.raises(
        TypeError,
        match=r"second argument is `activation`, got the int 64.*"
        r"LSTM\(64, input_dim=8, rngs=\.\.\.\) for 8 input features and 64 units",
    ):
        rnx.LSTM(8, 64, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"LSTMCell\(64, input_dim=8"):
        rnx.LSTMCell(8, 64, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: rnx.LSTM(4, rngs=nnx.Rngs(0)), "`input_dim` is required"),
        (lambda: rnx.GRU(4, input_dim=0, rngs=nnx.Rngs(0)), r"`input_dim`: expected a positive integer.*got 0"),
        (lambda: rnx.LSTM(4, input_dim=5), r"`rngs` must be an nnx.Rngs.*got NoneType"),
        (lambda: rnx.LSTM(4, input_dim=5, rngs=0), r"`rngs` must be an nnx.Rngs.*got int"),
        (
            lambda: rnx.SimpleRNN(
                4,
                "relu",
                True,
                "glorot_uniform",
                "orthogonal",
                "zeros",
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                0.0,
                0.0,
                False,
                False,
                False,
                False,
                False,
                True,
                input_dim=5,
                rngs=nnx.Rngs(0),
            ),
            r"at most 20 positional arguments",
        ),
        (lambda: rnx.LSTM(4, bogus=1, input_dim=5, rngs=nnx.Rngs(0)), r"unexpected argument `bogus`"),
        (lambda: rnx.LSTM(4, "tanh", activation="relu", input_dim=5, rngs=nnx.Rngs(0)), r"`activation` both"),
        (
            lambda: rnx.LSTM(units=4, dropout=1.5, input_dim=5, rngs=nnx.Rngs(0)),
            r"`dropout`: expected a float in \[0, 1\)",
        ),
        (lambda: rnx.GRU(4, activation="nope", input_dim=5, rngs=nnx.Rngs(0)), r"`activation`"),
        (lambda: rnx.LSTM(-1, input_dim=5, rngs=nnx.Rngs(0)), r"`units`: expected a positive integer, got -1"),
        (lambda: rnx.LSTM(4, kernel_regularizer="l3", input_dim=5, rngs=nnx.Rngs(0)), r"`kernel_regularizer`"),
        (lambda: rnx.LSTM(4, stateful=True, input_dim=5, rngs=nnx.Rngs(0)), r"`batch_size`: a stateful layer"),
        (lambda: rnx.LSTM(4, custom_backward=1, input_dim=5, rngs=nnx.Rngs(0)), r"`custom_backward`"),
        (lambda: rnx.RNN(rnnjax.LSTMCell(4)), r"`cell`: expected an NNX cell.*got LSTMCell"),
        (lambda: rnx.RNN([]), r"`cells`: expected a non-empty list"),
        (lambda: rnx.LSTM(4, input_dim=5, rngs=nnx.Rngs(0)).reset_states(), r"reset_states: this LSTM is not stateful"),
    ],
)
def test_construction_errors(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()


def test_call_errors():
    layer = rnx.LSTM(4, input_dim=5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"`inputs`: 6 features per step, but LSTMCell was built for 5"):
        layer(jnp.zeros((3, 7, 6)))
    with pytest.raises(
        ValueError, match=r"`inputs`: expected an array \(\*batch, timesteps, features\) with at least 2"
    ):
        layer(jnp.zeros((5,)))
    with pytest.raises(ValueError, match=r"`mask`: expected shape \(3, 7\)"):
        layer(X, mask=jnp.ones((1, 7), bool))
    with pytest.raises(ValueError, match=r"`initial_state`: expected 2 state array"):
        layer(X, initial_state=[jnp.zeros((3, 4))])
    with pytest.raises(ValueError, match=r"`training`=True and `deterministic`=True contradict"):
        layer(X, training=True, deterministic=True)
    stateful = rnx.GRU(4, stateful=True, batch_size=3, input_dim=5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"keeps states for batch size 3, got a batch of 2"):
        stateful(jnp.zeros((2, 7, 5)))
    with pytest.raises(ValueError, match=r"`states`\[0\]: expected shape \(3, 4\), got \(2, 4\)"):
        stateful.reset_states([np.zeros((2, 4), np.float32)])
    with pytest.raises(ValueError, match=r"`constants`: LSTMCell does not take constants"):
        layer(X, constants=jnp.zeros((3, 2)))


def test_model_wide_reset_with_a_list_needs_one_stateful_layer():
    class Two(nnx.Module):
        def __init__(self):
            self.a = rnx.LSTM(4, stateful=True, batch_size=3, input_dim=5, rngs=nnx.Rngs(0))
            self.b = rnx.GRU(4, stateful=True, batch_size=3, input_dim=4, rngs=nnx.Rngs(0))

    with pytest.raises(ValueError, match=r"exactly one stateful layer; this one has 2 \(\['a', 'b'\]\)"):
        rnx.reset_states(Two(), [np.zeros((3, 4))])


def test_from_linen_mismatch_names_the_variables():
    layer = rnx.LSTM(4, input_dim=5, rngs=nnx.Rngs(0))
    variables = rnnjax.LSTM(3).init(__import__("jax").random.key(0), X)
    with pytest.raises(ValueError, match=r"params/cell/kernel: expected \(5, 16\), got \(5, 12\)"):
        rnx.from_linen(layer, variables)
    variables = rnnjax.RNN([rnnjax.LSTMCell(4)]).init(__import__("jax").random.key(0), X)
    with pytest.raises(ValueError, match=r"params/cell/kernel: missing.*unused linen variables.*params/cell_0/kernel"):
        rnx.from_linen(layer, variables)


def test_old_flax_is_a_clear_import_error(monkeypatch):
    import flax

    from rnnjax import nnx as package

    monkeypatch.setattr(flax, "__version__", "0.10.6")
    with pytest.raises(ImportError, match=r"rnnjax.nnx needs flax>=0.12.8.*flax 0.10.6 is installed"):
        package._check_flax()
