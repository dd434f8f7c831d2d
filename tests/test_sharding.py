"""Every layer partitions cleanly on a device mesh (8 forced host devices, see conftest.py).

With the batch sharded over ``'data'`` and the parameters replicated, the compiled forward and
training programs (read as HLO text after XLA's SPMD partitioner) move no activation between
devices: no all-gather, all-to-all or collective-permute. The training step reduces each
parameter's gradient once (all-reduce or reduce-scatter, outside every loop, of at most the
parameters' size), and the values equal the single-device run.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from catalogue import assert_trees_close, layer
from custom_cells import MinimalRNNCell
from sharding_util import batch_mesh, collectives, compiled_text, replicate, shard_batch

import rnnjax
import rnnjax.functional as F
from rnnjax.functional import LoopOptions, force_plan
from rnnjax.functional.driver import run_program

B, T, I, U = 8, 6, 3, 4
RTOL, ATOL = 2e-5, 2e-6
MOVES = ("all-gather", "all-to-all", "collective-permute")
REDUCTIONS = ("all-reduce", "reduce-scatter")

HOLES = np.random.default_rng(7).random((B, T)) > 0.35
RIGHT_PADDED = np.arange(T)[None, :] < np.array([6, 5, 1, 3, 6, 2, 4, 6])[:, None]
RESETS = np.random.default_rng(8).random((B, T)) > 0.6  # restarts mid-row (sharded like the batch)


# name -> (layer of catalogue variants, input shape, call options). Dropout cases run in training with
# an RNG stream.
SEQ = dict(return_sequences=True)
CASES = {
    "simple_rnn": (lambda: layer("simple_rnn", U), (B, T, I), {}),
    "simple_rnn_holes": (lambda: layer("simple_rnn", U, **SEQ), (B, T, I), {"mask": HOLES}),
    "lstm": (lambda: layer("lstm", U), (B, T, I), {}),
    "lstm_holes_seq": (lambda: layer("lstm", U, **SEQ), (B, T, I), {"mask": HOLES}),
    "lstm_right_padded_backwards": (lambda: layer("lstm", U, go_backwards=True), (B, T, I), {"mask": RIGHT_PADDED}),
    "lstm_state_initial": (lambda: layer("lstm", U, return_state=True), (B, T, I), {"initial_state": 2}),
    "lstm_many_rows": (lambda: layer("lstm", U, **SEQ), (16, 20, 4), {}),  # the projection on >= 256 rows
    # from 64 rows and 50 steps on, inference projects spans of steps; training runs one loop
    "lstm_projection_spans": (lambda: layer("lstm", U, **SEQ), (64, 50, I), {}),
    "gru_projection_spans": (lambda: layer("gru", U), (64, 50, I), {"mask": np.tile(HOLES, (8, 9))[:, :50]}),
    "lstm_sigmoid_zero_output": (
        lambda: layer("lstm", U, recurrent_activation="sigmoid", zero_output_for_mask=True, **SEQ),
        (B, T, I),
        {"mask": HOLES},
    ),
    "lstm_dropout_impl1": (
        lambda: layer("lstm", U, dropout=0.3, recurrent_dropout=0.3, **SEQ),
        (B, T, I),
        {"mask": HOLES, "dropout": True},
    ),
    "lstm_dropout_impl2": (
        lambda: layer("lstm", U, dropout=0.3, recurrent_dropout=0.3, implementation=2),
        (B, T, I),
        {"dropout": True},
    ),
    "lstm_remat": (lambda: layer("lstm", U, remat=True, **SEQ), (B, 17, I), {"mask": np.tile(HOLES, (1, 3))[:, :17]}),
    "lstm_unroll": (lambda: layer("lstm", U, unroll=True), (B, T, I), {"mask": HOLES}),
    "lstm_generic_loop": (lambda: layer("lstm", U, custom_backward=False), (B, T, I), {"mask": HOLES}),
    "gru": (lambda: layer("gru", U), (B, T, I), {}),
    "gru_holes_state": (
        lambda: layer("gru", U, return_state=True, **SEQ),
        (B, T, I),
        {"mask": HOLES, "initial_state": 1},
    ),
    "gru_dropout": (
        lambda: layer("gru", U, dropout=0.2, recurrent_dropout=0.2),
        (B, T, I),
        {"mask": HOLES, "dropout": True},
    ),
    "gru_reset_after": (lambda: layer("gru_reset_after", U, go_backwards=True, **SEQ), (B, T, I), {"mask": HOLES}),
    "gru_reset_after_dropout": (
        lambda: layer("gru_reset_after", U, recurrent_dropout=0.3),
        (B, T, I),
        {"dropout": True},
    ),
    "rnn_lstm_cell": (lambda: layer("rnn_lstm", U, **SEQ), (B, T, I), {"mask": HOLES}),
    "rnn_stacked_cells": (lambda: layer("stack", U, return_state=True), (B, T, I), {"mask": HOLES}),
    "rnn_custom_cell": (lambda: layer("custom_cell", U, **SEQ), (B, T, I), {"mask": HOLES}),
    "rnn_custom_cell_stacked": (lambda: rnnjax.RNN([MinimalRNNCell(U), rnnjax.LSTMCell(U)]), (B, T, I), {}),
    "conv_lstm1d": (lambda: layer("conv_lstm1d", 2, **SEQ), (B, T, 5, 2), {"mask": HOLES}),
    "conv_lstm2d": (lambda: layer("conv_lstm2d", 2), (B, 4, 5, 5, 2), {}),
    "conv_lstm2d_valid_dropout": (
        lambda: layer(
            "conv_lstm2d", 2, kernel_size=2, padding="valid", dropout=0.2, recurrent_dropout=0.2, go_backwards=True
        ),
        (B, 4, 5, 5, 2),
        {"mask": HOLES[:, :4], "dropout": True},
    ),
    "conv_lstm3d": (lambda: layer("conv_lstm3d", 2, kernel_size=2, return_state=True), (B, 3, 3, 3, 3, 1), {}),
    "cudnn_lstm": (lambda: layer("cudnn_lstm", U, return_sequences=True), (B, T, I), {"mask": RIGHT_PADDED}),
    "cudnn_gru": (lambda: layer("cudnn_gru", U, return_state=True), (B, T, I), {"mask": RIGHT_PADDED}),
    # reset: the recurrent-matmul and input-additive loops, the generic one, ConvLSTM, the CuDNN scan path
    "lstm_reset_holes_state": (
        lambda: layer("lstm", U, return_state=True, **SEQ),
        (B, T, I),
        {"mask": HOLES, "reset": RESETS, "initial_state": 2},
    ),
    "gru_reset_backwards": (lambda: layer("gru", U, go_backwards=True, **SEQ), (B, T, I), {"reset": RESETS}),
    "rnn_custom_cell_reset": (lambda: layer("custom_cell", U, **SEQ), (B, T, I), {"mask": HOLES, "reset": RESETS}),
    "conv_lstm1d_reset": (lambda: layer("conv_lstm1d", 2, **SEQ), (B, T, 5, 2), {"reset": RESETS}),
    "cudnn_lstm_reset": (
        lambda: layer("cudnn_lstm", U, return_sequences=True),
        (B, T, I),
        {"mask": RIGHT_PADDED, "reset": RESETS},
    ),
}


# Paths whose parameter gradients autodiff accumulates inside the time loop: the partitioner then
# reduces each step's (or, with remat, each checkpointed span's) partial gradient over the devices,
# as it does for Flax's nn.RNN; no activation moves. The hand-written backward passes of the
# built-in cells form the gradients after the loop and reduce once.
REDUCED_IN_THE_LOOP = {
    "lstm_generic_loop": "custom_backward=False: autodiff of the loop",
    "lstm_unroll": "unroll=True: autodiff of the Python loop",
    "lstm_remat": "remat: one reduction per checkpointed span",
    "rnn_custom_cell": "a custom cell: autodiff of the loop",
    "rnn_custom_cell_reset": "a custom cell: autodiff of the loop",
    "rnn_custom_cell_stacked": "a custom cell in a stack: autodiff of the loop",
    "rnn_stacked_cells": "stacked cells: autodiff of the loop",
}


def _inputs(shape, options, layer):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    call = {}
    for name in ("mask", "reset"):
        if name in options:
            call[name] = jnp.asarray(options[name])
    if "initial_state" in options:
        call["initial_state"] = [
            jnp.asarray(rng.normal(size=(shape[0], U)), jnp.float32) for _ in range(options["initial_state"])
        ]
    return x, call


def _loss_weights(out, seed=3):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.normal(size=o.shape), o.dtype) for o in jax.tree_util.tree_leaves(out)]


def _programs(layer, options, variables, x, call):
    training = bool(options.get("dropout"))
    rngs = {"dropout": jax.random.key(5)} if training else None

    def forward(params, x, call):
        return layer.apply({"params": params}, x, **call, training=training, rngs=rngs)

    weights = _loss_weights(jax.eval_shape(forward, variables["params"], x, call))

    def loss(params, x, call):
        outs = jax.tree_util.tree_leaves(forward(params, x, call))
        return sum(jnp.sum(o * w) for o, w in zip(outs, weights))

    def train(params, x, call):
        return jax.value_and_grad(loss, argnums=(0, 1))(params, x, call)

    return forward, train


def _computations(text):
    """HLO text -> {computation name: its lines}; the entry computation under 'ENTRY'."""
    comps, name = {}, None
    for line in text.splitlines():
        head = re.match(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if head and not line.startswith(" "):
            name = "ENTRY" if head.group(1) else head.group(2)
            comps[name] = []
        elif name is not None:
            comps[name].append(line)
    return comps


def _reduced_elements(text):
    """Elements reduced by every all-reduce / reduce-scatter of the program (result shapes),
    scalars (the loss's partial sums) aside."""
    total = 0
    for line in text.splitlines():
        m = re.search(r"=\s*(.*?)\s(all-reduce|reduce-scatter)(?:-start)?\(", line)
        if m:
            for dims in re.findall(r"[a-z0-9]+\[([0-9,]*)\]", m.group(1)):
                total += int(np.prod([int(d) for d in dims.split(",")])) if dims else 0
    return total


def assert_partitions_cleanly(text, *, training, n_params, steps=None):
    """No activation crosses devices; in training, the gradient is reduced once per parameter
    (``steps=None``) or, for the paths of ``REDUCED_IN_THE_LOOP``, at most once per step."""
    counts = collectives(text)
    moved = {op: counts[op] for op in MOVES if counts[op]}
    assert not moved, f"activations cross devices: {moved}"
    if training:
        assert sum(counts[op] for op in REDUCTIONS) >= 1, f"no gradient reduction in the training step: {counts}"
        if steps is not None:
            assert _reduced_elements(text) <= n_params * steps, (_reduced_elements(text), n_params)
            return
        # once per parameter: every collective outside the loops (in the entry computation), and no
        # more elements reduced than the parameters have
        entry = "\n".join(_computations(text)["ENTRY"])
        assert collectives(entry) == counts, "a collective runs inside a loop (once per step, not once)"
        assert _reduced_elements(text) <= n_params, (_reduced_elements(text), n_params)


def _close(a, b):
    """Equal to float32 rounding: the sharded program sums gradients over the batch in another
    order, so the absolute tolerance scales with each array's largest entry."""
    assert_trees_close(a, b, rtol=RTOL, atol=ATOL, atol_scaled=True, same_tree=False)


def _check(layer, shape, options, mesh, reduced_in_the_loop=False):
    x, call = _inputs(shape, options, layer)
    variables = layer.init(jax.random.key(1), x, **call)
    params = variables["params"]
    forward, train = _programs(layer, options, variables, x, call)
    want_fwd, want_train = jax.jit(forward)(params, x, call), jax.jit(train)(params, x, call)

    xs, calls, ps = shard_batch(mesh, x), shard_batch(mesh, call), replicate(mesh, params)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
    assert_partitions_cleanly(compiled_text(forward, ps, xs, calls), training=False, n_params=n_params)
    assert_partitions_cleanly(
        compiled_text(train, ps, xs, calls),
        training=True,
        n_params=n_params,
        steps=shape[1] if reduced_in_the_loop else None,
    )
    got_fwd, got_train = jax.jit(forward)(ps, xs, calls), jax.jit(train)(ps, xs, calls)
    _close(got_fwd, want_fwd)
    _close(got_train, want_train)
    # the outputs (and states) stay sharded like the batch: each device holds its rows
    for out in jax.tree_util.tree_leaves(got_fwd):
        assert out.addressable_shards[0].data.shape[0] == out.shape[0] // mesh.devices.size, out.sharding


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_partitions_cleanly(name):
    make, shape, options = CASES[name]
    _check(make(), shape, options, batch_mesh(8), reduced_in_the_loop=name in REDUCED_IN_THE_LOOP)


@pytest.mark.parametrize("devices", [2, 4])
def test_any_number_of_devices_dividing_the_batch(devices):
    _check(rnnjax.GRU(U, return_sequences=True), (B, T, I), {"mask": HOLES}, batch_mesh(devices))


def test_projection_spans_and_inference_program_partition_cleanly():
    """The driver's inference program: not differentiated, inference spans (forced: one step
    each), each sliced from the sharded inputs, with the input bias added in the loop and its
    outputs written into the sharded sequence."""
    with force_plan(infer_span=1):
        _check(
            rnnjax.LSTM(U, return_sequences=True),
            (B, 11, I),
            {"mask": HOLES[:, [0, 1, 2, 3, 4, 5] * 2][:, :11]},
            batch_mesh(8),
        )


@pytest.mark.parametrize("cell", ["lstm", "conv_lstm1d"])
def test_inference_spans_on_a_mesh_with_explicit_axes(cell):
    """Inputs committed to a mesh whose axis is ``Explicit`` (``jax.make_mesh``'s default): the
    inference program in spans (forced: 2 steps of 11) writes each span into a returned sequence
    made with the inputs' sharding; outputs and final states equal the unsharded call's and the
    outputs stay sharded over the batch."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,), devices=jax.devices()[:8])
    spatial = cell == "conv_lstm1d"
    layer = (
        rnnjax.ConvLSTM1D(U, 3, padding="same", return_sequences=True, return_state=True, go_backwards=True)
        if spatial
        else rnnjax.LSTM(U, return_sequences=True, return_state=True, go_backwards=True)
    )
    x = jnp.asarray(np.random.default_rng(3).normal(size=(B, 11, 5, I) if spatial else (B, 11, I)), jnp.float32)
    mask = jnp.asarray(HOLES[:, [0, 1, 2, 3, 4, 5] * 2][:, :11])
    variables = layer.init(jax.random.key(1), x)
    with force_plan(infer_span=2):
        want = jax.jit(lambda v, x, m: layer.apply(v, x, mask=m))(variables, x, mask)
        rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        got = jax.jit(lambda v, x, m: layer.apply(v, x, mask=m))(
            variables, jax.device_put(x, rows), jax.device_put(mask, rows)
        )
    _close(got, want)
    assert got[0].addressable_shards[0].data.shape[0] == B // 8, got[0].sharding


@pytest.mark.parametrize(
    "core",
    [F.LSTMCore(U), F.GRUCore(U), F.GRUCore(U, reset_after=True), F.SimpleRNNCore(U)],
    ids=["lstm", "gru", "gru_reset_after", "simple_rnn"],
)
@pytest.mark.parametrize("project_chunk", [None, 4])
def test_functional_scan_rnn_partitions_cleanly(core, project_chunk):
    """``rnn`` and the driver (with projection spans forced) over two batch axes, the first sharded."""
    mesh = batch_mesh(8)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(B, 2, 9, I)), jnp.float32)
    mask = jnp.asarray(np.random.default_rng(1).random((B, 2, 9)) > 0.3)
    params = core.init(jax.random.key(0), I)
    program = F.core.core_program(core, params)
    s0 = core.initial_state((B, 2))

    def forward(params, x, mask):
        if project_chunk is None:
            return F.rnn(core, params, x, mask=mask, return_sequences=True)[0]
        prog = F.core.core_program(core, params)
        with force_plan(project_chunk=project_chunk):
            return run_program(prog, x, s0, LoopOptions(return_sequences=True), mask=mask)[0]

    def train(params, x, mask):
        return jax.grad(lambda p, x: jnp.sum(jnp.sin(forward(p, x, mask))), argnums=(0, 1))(params, x)

    del program
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
    xs, ms, ps = shard_batch(mesh, x), shard_batch(mesh, mask), replicate(mesh, params)
    assert_partitions_cleanly(compiled_text(forward, ps, xs, ms), training=False, n_params=n_params)
    # a given project_chunk spans training too: one gradient reduction per span
    assert_partitions_cleanly(
        compiled_text(train, ps, xs, ms),
        training=True,
        n_params=n_params,
        steps=None if project_chunk is None else -(-9 // project_chunk),
    )
    _close(jax.jit(train)(ps, xs, ms), jax.jit(train)(params, x, mask))
    _close(jax.jit(forward)(ps, xs, ms), jax.jit(forward)(params, x, mask))


def test_the_check_sees_a_gather():
    """The HLO assertions fail on a program that merges the sharded batch with time (the old
    projection ``x.reshape(-1, F) @ kernel`` of time-major inputs)."""
    mesh = batch_mesh(8)
    kernel = jnp.ones((I, U))

    def merged(x):
        xt = jnp.swapaxes(x, 0, 1)  # (T, B, I)
        return (xt.reshape(-1, I) @ kernel).reshape(T, B, U)

    text = compiled_text(merged, shard_batch(mesh, jnp.ones((B, T, I))))
    with pytest.raises(AssertionError, match="activations cross devices"):
        assert_partitions_cleanly(text, training=False, n_params=0)


def test_a_mesh_set_with_jax_set_mesh_is_seen_through_in_shardings():
    """``jax.jit(..., in_shardings=...)`` called with uncommitted host arrays hides the mesh from
    the trace (rnnjax then plans for one device, which gathers); ``jax.set_mesh`` makes it seen."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from rnnjax.functional.mesh import partitioned

    mesh = batch_mesh(8)
    layer = rnnjax.LSTM(U, return_sequences=True)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 20, I)), jnp.float32)  # >= 256 rows
    params = layer.init(jax.random.key(0), x)["params"]
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))

    def train(p, x):
        return jax.grad(lambda p: jnp.sum(jnp.sin(layer.apply({"params": p}, x))))(p)

    step = jax.jit(train, in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))))
    assert collectives(step.lower(params, x).compile().as_text())["all-gather"] > 0
    with jax.set_mesh(mesh):
        assert_partitions_cleanly(step.lower(params, x).compile().as_text(), training=True, n_params=n_params)
        seen = jax.jit(lambda x: jnp.asarray(partitioned(x)))(x)
    assert bool(seen)
    assert not partitioned(x) and not jax.jit(lambda x: jnp.asarray(partitioned(x)))(x)
