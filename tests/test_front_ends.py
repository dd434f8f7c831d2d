"""One model list through both front ends: each model built in linen and in NNX, the NNX one given
the linen variables (``rnnjax.nnx.from_linen``), the same outputs and final states (the linen
layers themselves are checked against Keras 3, PyTorch and numpy elsewhere). Both front ends
share one contract (``rnnjax.layers.contract``); a cell whose output is narrower than its state,
stacked before ``LSTMCell(5)``, is also checked against a float64 numpy step loop. Every model's
call takes the agreed options (``mask=``, ``initial_state=``, ``training=``, ``reset=``) by
keyword only, in both front ends."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from catalogue import COMPOSED, KINDS, assert_trees_close, feature_shape, layer, n_states, right_padded_only, x
from custom_cells import NarrowCell, NNXNarrowCell
from flax import nnx
from nnx_util import random_like

import rnnjax
import rnnjax.nnx as rnx

B, T, I, U = 2, 5, 3, 4
MASK = np.array([[1, 1, 0, 1, 1], [1, 1, 1, 0, 0]], bool)  # a hole in row 0; row 1 right-padded
RIGHT = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)


def _narrow(front):
    if front == "linen":
        return rnnjax.RNN([NarrowCell(3), rnnjax.LSTMCell(5)], return_state=True)
    return rnx.RNN(
        [NNXNarrowCell(3, input_dim=I, rngs=nnx.Rngs(0)), rnx.LSTMCell(5, input_dim=3, rngs=nnx.Rngs(1))],
        return_state=True,
    )


def _model(name, front):
    if name == "narrow_then_lstm":
        return _narrow(front)
    if name == "conv_lstm2d_channels_first":
        kw = dict(data_format="channels_first", return_sequences=True, return_state=True)
        return layer("conv_lstm2d", 2, front, **kw, **({"input_dim": I, "rngs": nnx.Rngs(0)} if front == "nnx" else {}))
    kw = {"return_sequences": True, "return_state": True}
    if name == "bidirectional_lstm":
        kw = {"return_sequences": True}
    nnx_kw = {"input_dim": I, "rngs": nnx.Rngs(0)} if front == "nnx" else {}
    return layer(name, U, front, **kw, **nnx_kw)


MODELS = KINDS + ("minimal_rnn",) + COMPOSED + ("narrow_then_lstm", "conv_lstm2d_channels_first")


def _input(name):
    if name == "conv_lstm2d_channels_first":
        return x((B, T, I, 4, 3), seed=1)
    return x((B, T) + feature_shape(name if name in KINDS else "lstm", I), seed=1)


@pytest.mark.parametrize("name", MODELS)
def test_linen_and_nnx_compute_the_same(name):
    linen, ours = _model(name, "linen"), _model(name, "nnx")
    inputs = _input(name)
    call = {"mask": jnp.asarray(RIGHT if right_padded_only(name) else MASK)}
    variables = dict(linen.init(jax.random.key(0), inputs, **call))
    variables["params"] = random_like(variables["params"], 7)
    rnx.from_linen(ours, variables)
    want = linen.apply(variables, inputs, **call)
    got = ours(inputs, **call)
    assert_trees_close(got, want, atol=2e-6, rtol=2e-6)
    if name in KINDS + COMPOSED and name != "bidirectional_lstm":
        assert len(want) == 1 + n_states(name)


# the agreed call options of every recurrent layer, linen and NNX: keyword-only after ``inputs``
CALL_OPTIONS = {"mask", "initial_state", "training", "reset"}


@pytest.mark.parametrize("front", ["linen", "nnx"])
def test_call_options_are_keyword_only(front):
    """Every model's call takes ``inputs`` positionally and the agreed options (``mask=``,
    ``initial_state=``, ``training=``, ``reset=``) by keyword only."""
    for name in MODELS:
        params = list(inspect.signature(type(_model(name, front)).__call__).parameters.values())
        positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        keyword = {p.name for p in params if p.kind is p.KEYWORD_ONLY}
        assert positional == ["self", "inputs"], (name, positional)
        assert CALL_OPTIONS <= keyword, (name, sorted(CALL_OPTIONS - keyword))


def _np_lstm_step(p, x_t, h, c):
    """Keras 2's LSTM step (hard sigmoid ``clip(0.2 z + 0.5, 0, 1)``, gates i, f, c, o), float64."""
    z = x_t @ p["kernel"] + h @ p["recurrent_kernel"] + p["bias"]
    i, f, g, o = np.split(z, 4, axis=-1)
    hs = lambda v: np.clip(0.2 * v + 0.5, 0.0, 1.0)  # noqa: E731
    c = hs(f) * c + hs(i) * np.tanh(g)
    return hs(o) * np.tanh(c), c


def test_narrow_output_cell_before_lstm_matches_numpy():
    """The custom cell outputs 3 of its 4 state units; the LSTM above it is built for 3 inputs
    (its width measured with jax.eval_shape, not taken from the state), in init and in apply."""
    model = _narrow("linen")
    inputs = x((B, T, I), seed=2)
    variables = model.init(jax.random.key(0), inputs)
    out, _, h_last, c_last = model.apply(variables, inputs)
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables["params"])
    s, h, c = np.zeros((B, 4)), np.zeros((B, 5)), np.zeros((B, 5))
    for t in range(T):
        s = np.tanh(np.asarray(inputs[:, t], np.float64) @ p["cell_0"]["kernel"] + s @ p["cell_0"]["recurrent_kernel"])
        h, c = _np_lstm_step(p["cell_1"], s[:, :3], h, c)
    assert p["cell_1"]["kernel"].shape == (3, 20)
    np.testing.assert_allclose(np.asarray(out), h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(h_last), h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(c_last), c, rtol=1e-5, atol=1e-6)
