"""rnnjax.nnx layers take (*batch, T, features) through the layer-side path: zero batch axes (so
nnx.vmap / jax.vmap over unbatched sequences equal the batched call) and several, against the
linen layers on the same variables; stateful layers keep the batch shape they were built with."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from catalogue import feature_shape, layer
from flax import nnx
from nnx_util import assert_trees_close, twin

import rnnjax.nnx as rnx

B, T, I, U = 3, 6, 5, 4


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


# (catalogue variant, options)
LAYERS = [
    ("lstm", dict(return_sequences=True, return_state=True)),
    ("gru_reset_after", dict(return_state=True)),
    ("cudnn_lstm", dict(return_sequences=True, return_state=True)),
    ("conv_lstm1d", dict(return_state=True)),
]


@pytest.mark.parametrize("name,kw", LAYERS, ids=[n for n, _ in LAYERS])
def test_unbatched_and_two_batch_axes_match_linen(name, kw):
    features = feature_shape(name, 2 if name.startswith("conv") else I)
    ours = layer(name, U, "nnx", **kw, input_dim=features[-1], rngs=nnx.Rngs(0))
    linen = layer(name, U, **kw)
    x = _x((2, B, T) + features)
    variables = twin(ours, linen, x[0])
    batched = ours(x[0])
    assert_trees_close(batched, linen.apply(variables, x[0]))
    # zero batch axes, mapped: the batched call
    assert_trees_close(nnx.vmap(lambda m, s: m(s), in_axes=(None, 0))(ours, x[0]), batched)
    assert_trees_close(jax.vmap(lambda s: ours(s))(x[0]), batched)
    # two batch axes: each row of the first as its own batch
    both = ours(x)
    assert_trees_close(both, linen.apply(variables, x))
    assert_trees_close(jax.tree_util.tree_map(lambda a: a[1], both), ours(x[1]))


def test_stateful_with_two_batch_axes_keeps_its_batch_shape():
    layer = rnx.GRU(U, stateful=True, return_sequences=True, batch_size=(2, B), input_dim=I, rngs=nnx.Rngs(0))
    whole = rnx.GRU(U, return_sequences=True, input_dim=I, rngs=nnx.Rngs(0))
    x = _x((2, B, 2 * T, I), 1)
    assert layer.states.get_value().h.shape == (2, B, U)
    y = jnp.concatenate([layer(x[:, :, :T]), layer(x[:, :, T:])], axis=2)
    assert_trees_close(y, whole(x))
    with pytest.raises(ValueError, match=r"keeps states for batch shape \(2, 3\), got a batch of 3"):
        layer(x[0])
