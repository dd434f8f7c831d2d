"""Helpers of the NNX tests: an NNX layer and its linen twin on the same random variables."""

import jax
import jax.numpy as jnp
import numpy as np
from catalogue import assert_trees_close
from flax import nnx

import rnnjax.nnx as rnx


def random_like(tree, seed):
    """Random (not initializer-shaped) values, biases included, so every term matters."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(scale=0.5, size=np.shape(p)), jnp.float32), tree)


def twin(nnx_layer, linen_layer, x, seed=0, **call):
    """Linen variables with random parameters, loaded into ``nnx_layer``; returns them."""
    variables = dict(linen_layer.init(jax.random.key(seed), x, **call))
    variables["params"] = random_like(variables["params"], seed + 100)
    rnx.from_linen(nnx_layer, variables)
    return variables


def linen_grads(linen_layer, variables, x, **call):
    """Gradients of ``sum(outputs)`` with respect to the linen params."""

    def loss(params):
        out = linen_layer.apply({**variables, "params": params}, x, **call)
        return sum(jnp.sum(o) for o in jax.tree_util.tree_leaves(out))

    return jax.grad(loss)(variables["params"])


def nnx_grads(layer, x, **call):
    """Gradients of ``sum(outputs)`` with respect to the NNX params, in linen layout."""

    def loss(model):
        out = model(x, **call)
        return sum(jnp.sum(o) for o in jax.tree_util.tree_leaves(out))

    grads = nnx.grad(loss)(layer)
    return rnx.to_linen(layer, grads)["params"]


def stateful_steps(ours, linen, variables, batches):
    """Runs the stateful ``ours`` and ``linen`` (with ``variables``) over ``batches`` in turn, asserting
    the same outputs after each and the same stored states at the end; returns the linen variables."""
    for x in batches:
        y, upd = linen.apply(variables, x, mutable=["rnn_state"])
        variables = {**variables, **upd}
        assert_trees_close(ours(x), y)
    assert_trees_close(rnx.to_linen(ours)["rnn_state"], variables["rnn_state"])
    return variables
