"""Dropout on a device mesh: the masks drawn for a batch-sharded input are the unsharded numbers.

A layer draws its dropout masks ``(count, batch, features)`` once per call from the
``'dropout'`` stream (``rnnjax.functional.core.dropout_masks``). JAX's random numbers do not
depend on how an array is sharded, so outputs and gradients of a training step with the batch
sharded over 8 forced host devices equal the run on one device, with
``jax_threefry_partitionable`` on (the default since jax 0.5, and in jax 0.10.2) and off. The
flag decides how the numbers are computed: on, each device draws only its own rows of the
mask; off, the counter-based generator is not partitionable and the compiled step gathers
(with ``implementation=2`` at these shapes: all-gather and collective-permute). It also
changes the numbers themselves (another bit stream), so a run is reproducible only under one
setting of the flag.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from catalogue import assert_trees_close
from catalogue import layer as make_layer
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from sharding_util import batch_mesh, collective_sources, collectives, compiled_text, replicate, shard_batch

from rnnjax.functional.core import dropout_masks

GATHERS = ("all-gather", "all-to-all", "collective-permute")
SHAPE = (8, 5, 3)  # one row per device
# (catalogue variant, implementation): one mask per gate (1) or one shared mask (2); SimpleRNN has one mask
CASES = [("lstm", 1), ("lstm", 2), ("gru", 1), ("gru", 2), ("simple_rnn", None)]


def _train_step(layer):
    def loss(params, x, mask, key):
        y = layer.apply({"params": params}, x, mask=mask, training=True, rngs={"dropout": key})
        return jnp.mean(y**2), y

    return jax.value_and_grad(loss, has_aux=True)


def _problem(name, implementation):
    kw = {} if implementation is None else {"implementation": implementation}
    layer = make_layer(name, 4, dropout=0.3, recurrent_dropout=0.4, return_sequences=True, **kw)
    kx, kp = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, SHAPE)
    mask = jnp.arange(SHAPE[1])[None, :] < jnp.array([5, 3, 5, 1, 4, 5, 2, 5])[:, None]
    params = layer.init(kp, x)["params"]
    return layer, params, x, mask


def _leaves_close(a, b):
    assert_trees_close(a, b, rtol=1e-5, atol=1e-6, same_tree=False)


@pytest.mark.parametrize("partitionable", [True, False])
@pytest.mark.parametrize("name,implementation", CASES)
def test_training_step_equals_one_device(name, implementation, partitionable):
    layer, params, x, mask = _problem(name, implementation)
    mesh = batch_mesh(8)
    key = jax.random.key(42)
    step = jax.jit(_train_step(layer))
    with jax.threefry_partitionable(partitionable):
        (loss1, y1), g1 = step(params, x, mask, key)
        (loss8, y8), g8 = step(replicate(mesh, params), *shard_batch(mesh, (x, mask)), replicate(mesh, key))
    assert y8.sharding.is_equivalent_to(NamedSharding(mesh, P("data")), y8.ndim)
    _leaves_close((loss8, y8, g8), (loss1, y1, g1))
    # the masks were really applied: the step without dropout gives other numbers
    plain = layer.apply({"params": params}, x, mask=mask)
    assert float(jnp.max(jnp.abs(plain - y1))) > 0.05


@pytest.mark.parametrize("partitionable", [True, False])
def test_masks_are_the_unsharded_numbers(partitionable):
    """The masks themselves, drawn into a batch-sharded array, are bit for bit the unsharded ones."""
    mesh = batch_mesh(8)
    key = jax.random.key(3)
    shape = (16, 6)
    draw = lambda k: dropout_masks(k, 0.5, shape, count=4)  # noqa: E731
    with jax.threefry_partitionable(partitionable):
        whole = jax.jit(draw)(key)
        sharded = jax.jit(draw, out_shardings=NamedSharding(mesh, P(None, "data")))(key)
    assert len(sharded.addressable_shards) == 8 and sharded.addressable_shards[0].data.shape == (4, 2, 6)
    np.testing.assert_array_equal(np.asarray(sharded), np.asarray(whole))
    assert set(np.unique(np.asarray(whole)).tolist()) == {0.0, 2.0}


def test_the_flag_changes_the_numbers():
    """``jax_threefry_partitionable`` selects another bit stream: masks differ between settings."""
    draw = jax.jit(lambda k: dropout_masks(k, 0.5, (16, 6), count=4))
    key = jax.random.key(3)
    with jax.threefry_partitionable(True):
        on = np.asarray(draw(key))
    with jax.threefry_partitionable(False):
        off = np.asarray(draw(key))
    assert (on != off).mean() > 0.2


def test_partitionable_is_the_default():
    assert jax.config.jax_threefry_partitionable is True


def _compiled_step(name, implementation):
    layer, params, x, mask = _problem(name, implementation)
    mesh = batch_mesh(8)
    return compiled_text(
        _train_step(layer), replicate(mesh, params), *shard_batch(mesh, (x, mask)), replicate(mesh, jax.random.key(42))
    )


@pytest.mark.parametrize("name,implementation", CASES)
def test_drawing_the_masks_moves_nothing(name, implementation):
    """With the default RNG no collective of the training step comes from drawing the masks."""
    sources = collective_sources(_compiled_step(name, implementation))
    assert sources, "expected at least the gradient's all-reduce"
    from_rng = [s for s in sources if "bernoulli" in s[1] or "random" in s[1] or "uniform" in s[1]]
    assert from_rng == []


@pytest.mark.parametrize("name,implementation", CASES)
def test_training_step_with_dropout_moves_no_activation(name, implementation):
    found = collectives(_compiled_step(name, implementation))
    assert not any(found[c] for c in GATHERS), found
    assert found["all-reduce"] + found["reduce-scatter"] >= 1, found
