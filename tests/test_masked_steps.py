"""A masked step never touches the numbers: NaN or inf written into the masked steps of the input
give the same outputs and gradients (parameters and inputs) as zeros there, for every layer, in
both ``custom_backward`` modes, masks with holes included (hypothesis over masks and fill values).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from catalogue import DENSE, assert_trees_close, right_padded_only
from catalogue import feature_shape as catalogue_features
from catalogue import layer as make_layer
from hypothesis import given
from hypothesis import strategies as st

import rnnjax

B, T, I, U = 3, 6, 4, 3


SEQ = {"return_sequences": True}
# test id -> (catalogue variant, options, training): every dense kind returning sequences, then
# variations, compositions and the other front-end paths
LAYERS = {name: (name, SEQ, False) for name in DENSE}
LAYERS.update(
    {
        "lstm_sigmoid_backwards": (
            "lstm",
            dict(recurrent_activation="sigmoid", implementation=2, go_backwards=True),
            False,
        ),
        "lstm_dropout": ("lstm", dict(dropout=0.3, recurrent_dropout=0.3, **SEQ), True),
        "gru": ("gru", dict(zero_output_for_mask=True, **SEQ), False),
        "rnn_stacked_cells": ("stack", SEQ, False),
        "rnn_custom_cell": ("custom_cell", SEQ, False),
        "minimal_rnn": ("minimal_rnn", SEQ, False),
        "conv_lstm1d": ("conv_lstm1d", SEQ, False),
        "cudnn_lstm": ("cudnn_lstm", SEQ, False),
        "cudnn_gru": ("cudnn_gru", {}, False),
        "bidirectional_lstm": ("bidirectional_lstm", SEQ, False),
        "bidirectional_gru_sum": ("bidirectional_gru", {"merge_mode": "sum"}, False),
    }
)
_PROGRAMS = {}


def _program(name, custom_backward):
    """(params, jitted (params, x, mask) -> (outputs, gradients)) for one layer configuration."""
    key = (name, custom_backward)
    if key not in _PROGRAMS:
        variant, options, training = LAYERS[name]
        layer = make_layer(variant, U, custom_backward=custom_backward, **options)
        feature_shape = catalogue_features(variant, I)
        x0 = jnp.zeros((B, T) + feature_shape)
        mask0 = jnp.ones((B, T), bool)
        params = layer.init(jax.random.key(0), x0, mask=mask0)["params"]
        params = jax.tree_util.tree_map(lambda p: p + 0.1, params)  # no zero biases
        rngs = {"dropout": jax.random.key(1)} if training else None

        def forward(p, x, mask):
            return layer.apply({"params": p}, x, mask=mask, training=training, rngs=rngs)

        def loss(p, x, mask):
            outs = jax.tree_util.tree_leaves(forward(p, x, mask))
            return sum(jnp.sum(jnp.sin(o + k)) for k, o in enumerate(outs))

        run = jax.jit(lambda p, x, mask: (forward(p, x, mask), jax.grad(loss, argnums=(0, 1))(p, x, mask)))
        _PROGRAMS[key] = (params, run, feature_shape)
    return _PROGRAMS[key]


@st.composite
def masked_inputs(draw, right_padded):
    if right_padded:
        lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
        mask = np.arange(T)[None, :] < np.asarray(lengths)[:, None]
    else:
        mask = np.asarray(draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T))).reshape(B, T)
    fill = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e30]))
    seed = draw(st.integers(0, 2**16))
    return mask, fill, seed


@pytest.mark.parametrize("custom_backward", [True, False], ids=["custom_backward", "generic_loop"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_masked_steps_never_touch_the_numbers(name, custom_backward):
    params, run, feature_shape = _program(name, custom_backward)

    @given(masked_inputs(right_padded_only(LAYERS[name][0])))
    def check(case):
        mask, fill, seed = case
        x = np.random.default_rng(seed).normal(size=(B, T) + feature_shape).astype(np.float32)
        m = mask.reshape(mask.shape + (1,) * len(feature_shape))
        zero_padded, poisoned = np.where(m, x, 0.0), np.where(m, x, fill).astype(np.float32)
        want_out, want_grads = run(params, jnp.asarray(zero_padded), jnp.asarray(mask))
        got_out, got_grads = run(params, jnp.asarray(poisoned), jnp.asarray(mask))
        for got in jax.tree_util.tree_leaves((got_out, got_grads)):
            assert np.all(np.isfinite(got)), f"non-finite values with {fill} at masked steps"
        assert_trees_close((got_out, got_grads), (want_out, want_grads), rtol=1e-6, atol=1e-6)
        # the input gradient at masked steps is zero
        dx = np.asarray(got_grads[1])
        assert np.all(dx[~mask] == 0.0)

    check()


def test_the_property_fails_without_the_driver_rule(monkeypatch):
    """The check above sees the failure it guards against: with the driver's zeroing of masked
    inputs switched off, NaN at a masked step reaches the gradients."""
    from rnnjax.functional import driver

    monkeypatch.setattr(driver, "zero_masked_inputs", lambda x, m: x)
    layer = rnnjax.LSTM(U, return_sequences=True)
    mask = jnp.asarray(np.array([[1, 1, 0, 1, 1, 1]] * B, bool))
    x = np.ones((B, T, I), np.float32)
    x[:, 2] = np.nan
    params = layer.init(jax.random.key(0), jnp.zeros((B, T, I)), mask=mask)["params"]
    out, grads = jax.value_and_grad(lambda p: jnp.sum(layer.apply({"params": p}, jnp.asarray(x), mask=mask)))(params)
    assert np.isfinite(out)  # the outputs were right before too
    assert not all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
