"""rnnjax.nnx stateful layers (against the linen twins, and a chunked run against a whole one, eager,
under nnx.jit and under plain jax.jit over split/merge) and Orbax checkpoints of nnx.state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from nnx_util import assert_trees_close, twin

import rnnjax
import rnnjax.nnx as rnx

B, T, I, U = 3, 7, 5, 4


def _x(seed=0, shape=(B, T, I)):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.mark.parametrize("kind", ["lstm", "gru", "simple"])
def test_stateful_matches_linen_over_batches_and_resets(kind):
    name = {"lstm": "LSTM", "gru": "GRU", "simple": "SimpleRNN"}[kind]
    layer = getattr(rnx, name)(U, stateful=True, return_sequences=True, batch_size=B, input_dim=I, rngs=nnx.Rngs(0))
    linen = getattr(rnnjax, name)(U, stateful=True, return_sequences=True)
    x1, x2, x3 = _x(1), _x(2), _x(3)
    variables = twin(layer, linen, x1)
    assert_trees_close(layer.states.get_value(), variables["rnn_state"]["states"], atol=0)  # zeros both
    for x in (x1, x2):
        y, upd = linen.apply(variables, x, mutable=["rnn_state"])
        variables = {**variables, **upd}
        assert_trees_close(layer(x), y)
        assert_trees_close(layer.states.get_value(), variables["rnn_state"]["states"])
    assert_trees_close(rnx.to_linen(layer)["rnn_state"], variables["rnn_state"])
    layer.reset_states()
    assert all(not np.any(s) for s in jax.tree_util.tree_leaves(layer.states.get_value()))
    _, upd = linen.apply(variables, method="reset_states", mutable=["rnn_state"])
    variables = {**variables, **upd}
    y, upd = linen.apply(variables, x3, mutable=["rnn_state"])
    assert_trees_close(layer(x3), y)
    states = [
        jnp.asarray(np.random.default_rng(9 + i).normal(size=(B, U)), jnp.float32)
        for i in range(2 if kind == "lstm" else 1)
    ]
    rnx.reset_states(layer, states)  # the model-wide function, one stateful layer: Keras's flat list
    assert_trees_close(jax.tree_util.tree_leaves(layer.states.get_value()), states, atol=0)
    assert_trees_close(layer(x1), linen.apply(variables, x1, initial_state=states, mutable=["rnn_state"])[0])


class Model(nnx.Module):
    def __init__(self, rngs, stateful=True):
        self.lstm = rnx.LSTM(U, stateful=stateful, return_sequences=True, batch_size=B, input_dim=I, rngs=rngs)
        self.gru = rnx.GRU(3, stateful=stateful, return_sequences=True, batch_size=B, input_dim=U, rngs=rngs)
        self.dense = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        return self.dense(self.gru(self.lstm(x)))


def _whole(model, x):
    """The same model without stateful layers, over the whole sequence."""
    whole = Model(nnx.Rngs(0), stateful=False)
    nnx.update(whole, nnx.state(model, nnx.Param))
    return whole(x)


def test_stateful_chunks_equal_one_run_eager_and_under_nnx_jit():
    x = _x(4, (B, 3 * T, I))
    chunks = [x[:, k * T : (k + 1) * T] for k in range(3)]
    expected = _whole(Model(nnx.Rngs(0)), x)
    for run in (lambda m, c: m(c), nnx.jit(lambda m, c: m(c))):
        model = Model(nnx.Rngs(0))
        assert_trees_close(jnp.concatenate([run(model, c) for c in chunks], axis=1), expected)
        rnx.reset_states(model)  # every stateful layer of the model back to zeros
        assert_trees_close(run(model, chunks[0]), expected[:, :T])


def test_stateful_under_plain_jax_jit_through_split_and_merge():
    """Plain jax.jit does not carry NNX state updates out: return the new state and nnx.update."""
    model = Model(nnx.Rngs(0))
    x = _x(5, (B, 2 * T, I))
    expected = _whole(model, x)
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, x):
        m = nnx.merge(graphdef, state)
        return m(x), nnx.state(m)

    outs = []
    for c in (x[:, :T], x[:, T:]):
        y, state = forward(state, c)
        outs.append(y)
    assert_trees_close(jnp.concatenate(outs, axis=1), expected)
    nnx.update(model, state)
    assert_trees_close(nnx.state(model, rnx.RNNState), nnx.state(nnx.merge(graphdef, state), rnx.RNNState), atol=0)


def test_optimizer_leaves_states_alone():
    import optax

    model = Model(nnx.Rngs(0))
    x = _x(6)
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    grads = nnx.grad(lambda m: jnp.sum(m(x)))(model)
    assert not nnx.state(grads, rnx.RNNState)
    before = jax.tree_util.tree_map(np.asarray, nnx.state(model, rnx.RNNState))
    optimizer.update(model, grads)
    assert_trees_close(nnx.state(model, rnx.RNNState), before, atol=0)


def test_checkpoint_round_trip_bit_for_bit_and_continues(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    model = Model(nnx.Rngs(0))
    model.lstm.cell.kernel[...] = model.lstm.cell.kernel[...] * 1.5  # not the initial values
    model(_x(7))  # states not zero
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp_path / "state", nnx.state(model))
    ckpt.wait_until_finished()
    abstract = nnx.eval_shape(lambda: Model(nnx.Rngs(1)))
    graphdef, abstract_state = nnx.split(abstract)
    restored = nnx.merge(graphdef, ckpt.restore(tmp_path / "state", abstract_state))
    saved, back = (jax.tree_util.tree_leaves_with_path(nnx.state(m)) for m in (model, restored))
    assert [p for p, _ in saved] == [p for p, _ in back] and len(saved) == 11  # 3 + 3 + 2 params, 2 + 1 states
    for (_, a), (_, b) in zip(saved, back):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert nnx.state(restored, rnx.RNNState) and any(
        np.any(s) for s in jax.tree_util.tree_leaves(nnx.state(restored, rnx.RNNState))
    )
    x = _x(8)
    np.testing.assert_array_equal(np.asarray(restored(x)), np.asarray(model(x)))  # continues exactly


def test_stateful_dropout_layer_draws_no_key_at_construction_and_runs_in_tree_mode():
    """Building the states draws no dropout mask; nnx.jit in tree mode (graph=False) carries the
    state and stream updates like graph mode."""
    make = lambda: rnx.LSTM(
        U, dropout=0.2, stateful=True, batch_size=B, return_sequences=True, input_dim=I, rngs=nnx.Rngs(0)
    )
    graph, tree = make(), make()
    assert int(tree.cell.rngs.count[...]) == 0
    for k in range(2):
        y_graph = nnx.jit(lambda m, x: m(x))(graph, _x(k))
        y_tree = nnx.jit(lambda m, x: m(x), graph=False)(tree, _x(k))
        assert_trees_close(y_tree, y_graph, atol=0)
    assert int(tree.cell.rngs.count[...]) == 2
    assert_trees_close(tree.states.get_value(), graph.states.get_value(), atol=0)
