"""Stateful layers on a device mesh: the ``'rnn_state'`` collection is sharded like the batch.

A batch-sharded input (``NamedSharding(mesh, P('data'))`` over the 8 forced host devices, see
``conftest.py``) and replicated parameters: the states a stateful layer returns are sharded
like the batch, threading them through a second jitted call keeps that sharding, and
``rnnjax.reset_states`` / ``layer.reset_states(states)`` keep it too. The values equal the
run on one device, and the compiled calls move no activation between devices.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from catalogue import assert_trees_close
from catalogue import layer as make_layer
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from sharding_util import batch_mesh, collectives, replicate, shard_batch

import rnnjax

GATHERS = ("all-gather", "all-to-all", "collective-permute")

# catalogue variant -> (units, input shape)
LAYERS = {"lstm": (4, (8, 5, 3)), "gru": (4, (8, 5, 3)), "conv_lstm2d": (2, (8, 3, 5, 5, 1))}


def _setup(name):
    units, shape = LAYERS[name]
    layer = make_layer(name, units, stateful=True, return_sequences=True)
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    chunks = [jax.random.normal(k1, shape), jax.random.normal(k2, shape)]
    variables = layer.init(k3, chunks[0])
    return layer, chunks, variables


def _call(layer):
    """One jitted stateful call: ``(variables, x) -> (y, variables with the new states)``."""

    def call(variables, x):
        y, updates = layer.apply(variables, x, mutable=["rnn_state"])
        return y, {**variables, **updates}

    return jax.jit(call)


def _on_mesh(mesh, variables):
    return {"params": replicate(mesh, variables["params"]), "rnn_state": shard_batch(mesh, variables["rnn_state"])}


def _assert_batch_sharded(mesh, tree):
    for a in jax.tree_util.tree_leaves(tree):
        expected = NamedSharding(mesh, P("data"))
        assert a.sharding.is_equivalent_to(expected, a.ndim), (a.shape, a.sharding)
        assert len(a.addressable_shards) == 8 and a.addressable_shards[0].data.shape[0] == a.shape[0] // 8


def _assert_close(a, b):
    assert_trees_close(a, b, rtol=1e-5, atol=1e-6, same_tree=False)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_state_sharded_like_the_batch_across_calls(name):
    layer, chunks, variables = _setup(name)
    call = _call(layer)
    mesh = batch_mesh(8)

    ref_v, ref_y = variables, []
    for x in chunks:  # one device
        y, ref_v = call(ref_v, x)
        ref_y.append(y)

    v = _on_mesh(mesh, variables)
    for k, x in enumerate(chunks):  # 8 devices, the state threaded
        y, v = call(v, shard_batch(mesh, x))
        _assert_batch_sharded(mesh, (y, v["rnn_state"]))
        _assert_close(y, ref_y[k])
    _assert_close(v["rnn_state"], ref_v["rnn_state"])
    # the states carried the first chunk into the second: not what a fresh layer gives
    fresh = layer.apply(variables, chunks[1], mutable=["rnn_state"])[0]
    assert float(jnp.max(jnp.abs(fresh - ref_y[1]))) > 1e-3


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_reset_states_keeps_the_sharding(name):
    layer, chunks, variables = _setup(name)
    mesh = batch_mesh(8)
    _, v = _call(layer)(_on_mesh(mesh, variables), shard_batch(mesh, chunks[0]))
    assert all(float(jnp.max(jnp.abs(a))) > 0 for a in jax.tree_util.tree_leaves(v["rnn_state"]))

    zeroed = rnnjax.reset_states(v)  # the whole model, to zeros
    _assert_batch_sharded(mesh, zeroed["rnn_state"])
    assert all(not np.asarray(a).any() for a in jax.tree_util.tree_leaves(zeroed["rnn_state"]))

    given = [np.full(a.shape, 0.5, np.float32) for a in jax.tree_util.tree_leaves(v["rnn_state"])]
    to_given = rnnjax.reset_states(
        v, jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(v["rnn_state"]), given)
    )  # the whole model, to given arrays
    _assert_batch_sharded(mesh, to_given["rnn_state"])
    _, updates = layer.apply(v, given, method="reset_states", mutable=["rnn_state"])  # one layer
    _assert_batch_sharded(mesh, updates["rnn_state"])
    for tree in (to_given["rnn_state"], updates["rnn_state"]):
        for a, g in zip(jax.tree_util.tree_leaves(tree), given, strict=True):
            np.testing.assert_array_equal(np.asarray(a), g)

    # inside jit the placement is jit's: out_shardings (README, "Scaling out")
    batch = NamedSharding(mesh, P("data"))
    jitted = jax.jit(rnnjax.reset_states, out_shardings={"params": NamedSharding(mesh, P()), "rnn_state": batch})(v)
    _assert_batch_sharded(mesh, jitted["rnn_state"])

    # and the next call after a reset runs from zeros, as a fresh layer does
    y, _ = _call(layer)(zeroed, shard_batch(mesh, chunks[1]))
    fresh = layer.apply(variables, chunks[1], mutable=["rnn_state"])[0]
    _assert_close(y, fresh)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_stateful_programs_move_no_activation(name):
    """The compiled stateful call and its training step: no gather of anything batch-sized."""
    layer, chunks, variables = _setup(name)
    mesh = batch_mesh(8)
    v, x = _on_mesh(mesh, variables), shard_batch(mesh, chunks[0])

    def loss(params, state, x):
        y, updates = layer.apply({"params": params, "rnn_state": state}, x, mutable=["rnn_state"])
        return jnp.mean(y**2), updates

    forward = _call(layer).lower(v, x).compile().as_text()
    train = jax.jit(jax.grad(loss, has_aux=True)).lower(v["params"], v["rnn_state"], x).compile().as_text()
    for text in (forward, train):
        found = collectives(text)
        assert not any(found[c] for c in GATHERS), found
    assert collectives(train)["all-reduce"] + collectives(train)["reduce-scatter"] >= 1
