"""The driver's fast paths, each against a reference no fast path touches (autodiff of the
generic loop, ``custom_backward=False``, or ``unroll=True``): one test per path (the
recurrent-matmul loop, the input-additive loop, ConvLSTM's forms) and one per plan switch, each
switch forced through ``rnnjax.functional.force_plan`` (docs/design.md has the table). bfloat16 inputs
with float32 states included."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from catalogue import assert_trees_close
from jaxpr_util import convolution_shapes, equations

import rnnjax
import rnnjax.functional as F
from rnnjax.functional import LoopOptions, force_plan
from rnnjax.functional._matmul_backward import plan_matmul_backward
from rnnjax.functional.driver import run_program
from rnnjax.functional.protocol import CoreProgram, InputAdditiveStep


def assert_same_function(got, want, tol=2e-5):
    """Every leaf of ``got`` equals ``want``'s to ``tol`` (same tree)."""
    assert_trees_close(got, want, atol=tol, rtol=tol)


@pytest.mark.parametrize(
    "core",
    [
        F.SimpleRNNCore(5, activation="relu"),
        F.LSTMCore(5),
        F.LSTMCore(5, recurrent_activation="sigmoid"),
        F.GRUCore(5, reset_after=True, recurrent_activation="sigmoid"),
    ],
    ids=["simple", "lstm_hard", "lstm_sigmoid", "gru_reset_after"],
)
@pytest.mark.parametrize(
    "options",
    [{}, {"go_backwards": True, "return_sequences": True}, {"zero_output_for_mask": True, "return_sequences": True}],
)
def test_custom_backward_equals_autodiff(core, options):
    """The hand-written backward pass gives autodiff's gradients (masks, dropout, go_backwards)."""
    params = core.init(jax.random.key(0), 3)
    params = jax.tree_util.tree_map(lambda a: a + 0.1, params)
    x = jax.random.normal(jax.random.key(1), (4, 9, 3))
    mask = jax.random.bernoulli(jax.random.key(2), 0.7, (4, 9))
    rmask = F.dropout_masks(jax.random.key(3), 0.3, (4, 5), count=1)
    h0 = jax.tree_util.tree_map(lambda a: a + 0.3, core.initial_state((4,)))

    def loss(p, x, h0, custom):
        out, state = F.rnn(
            core, p, x, mask=mask, initial_state=h0, recurrent_dropout_mask=rmask, custom_backward=custom, **options
        )
        w = jnp.arange(out.size, dtype=out.dtype).reshape(out.shape) / out.size
        return jnp.sum(out * w) + sum(jnp.sum(jnp.sin(s)) for s in state)

    assert core.matmul_step(params, rmask) is not None
    fast = jax.jit(jax.grad(lambda p, x, h: loss(p, x, h, True), argnums=(0, 1, 2)))(params, x, h0)
    slow = jax.jit(jax.grad(lambda p, x, h: loss(p, x, h, False), argnums=(0, 1, 2)))(params, x, h0)
    assert_same_function(fast, slow)


@pytest.mark.parametrize("recurrent_activation", ["hard_sigmoid", "sigmoid"])
def test_per_gate_lstm_uses_the_hand_written_pointwise_backward(monkeypatch, recurrent_activation):
    """The LSTM with one recurrent dropout mask per gate (InputAdditiveStep, autodiff's loop)
    differentiates its gate math by LSTMCore.pointwise_vjp (the gradients themselves are compared
    with autodiff's in test_input_additive_kernel_gradients_after_the_loop)."""
    calls = []
    original = F.LSTMCore.pointwise_vjp

    def spy(self, *args):
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(F.LSTMCore, "pointwise_vjp", spy)
    core = F.LSTMCore(5, recurrent_activation=recurrent_activation)
    params = core.init(jax.random.key(0), 3)
    x = jax.random.normal(jax.random.key(1), (2, 4, 3))
    rmask = F.dropout_masks(jax.random.key(2), 0.3, (2, 5), count=4)
    assert core.matmul_step(params, rmask) is None
    jax.grad(lambda p: jnp.sum(F.rnn(core, p, x, recurrent_dropout_mask=rmask)[0]))(params)
    assert calls
    calls.clear()
    jax.grad(lambda p: jnp.sum(F.rnn(core, p, x, recurrent_dropout_mask=rmask, custom_backward=False)[0]))(params)
    assert not calls


@pytest.mark.parametrize(
    "core, count",
    [
        (F.GRUCore(7), None),
        (F.GRUCore(7), 1),
        (F.GRUCore(7), 3),
        (F.LSTMCore(7), 4),
        (F.LSTMCore(7, recurrent_activation="sigmoid"), 4),
        (F.GRUCore(7, reset_after=True, recurrent_activation="sigmoid"), 3),
    ],
    ids=[
        "gru",
        "gru_shared_mask",
        "gru_per_gate_masks",
        "lstm_per_gate_masks",
        "lstm_sigmoid_per_gate_masks",
        "gru_reset_after_per_gate_masks",
    ],
)
@pytest.mark.parametrize(
    "options",
    [{}, {"go_backwards": True, "return_sequences": True}, {"zero_output_for_mask": True, "return_sequences": True}],
)
def test_input_additive_kernel_gradients_after_the_loop(core, count, options):
    """Steps without a RecurrentMatmulStep form but with an InputAdditiveStep form — Keras 2's default GRU
    (reset_after=False, hard sigmoid), the LSTM and the reset-after GRU (through a ghost part)
    with one recurrent dropout mask per gate — get
    their recurrent-kernel gradients after the loop, from the stored matmul operands and the
    input cotangents. Gradients (parameters, inputs, initial state) equal autodiff's
    (``custom_backward=False``) with masks, recurrent dropout and go_backwards, under vmap too;
    the backward loop holds no (U, U) kernel-gradient matmul."""
    params = jax.tree_util.tree_map(lambda a: a + 0.1, core.init(jax.random.key(0), 3))
    x = jax.random.normal(jax.random.key(1), (4, 9, 3))
    mask = jax.random.bernoulli(jax.random.key(2), 0.7, (4, 9))
    rmask = None if count is None else F.dropout_masks(jax.random.key(3), 0.3, (4, 7), count=count)
    h0 = jax.tree_util.tree_map(lambda a: a + 0.3, core.initial_state((4,)))

    def loss(p, x, h0, custom, mask=mask, rmask=rmask):
        out, state = F.rnn(
            core, p, x, mask=mask, initial_state=h0, recurrent_dropout_mask=rmask, custom_backward=custom, **options
        )
        w = jnp.arange(out.size, dtype=out.dtype).reshape(out.shape) / out.size
        return jnp.sum(out * w) + sum(jnp.sum(jnp.sin(s)) for s in state)

    assert core.matmul_step(params, rmask) is None and core.input_additive_step(params, rmask) is not None
    grad = jax.grad(lambda p, x, h, custom: loss(p, x, h, custom), argnums=(0, 1, 2))
    fast = jax.jit(lambda p, x, h: grad(p, x, h, True))(params, x, h0)
    slow = jax.jit(lambda p, x, h: grad(p, x, h, False))(params, x, h0)
    for a, b in zip(jax.tree_util.tree_leaves(fast), jax.tree_util.tree_leaves(slow)):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)

    # per example (vmap over the batch, the parameter gradients summed) equals the batched gradient
    def plain_loss(p, x, h0, mask, rmask):
        out, state = F.rnn(core, p, x, mask=mask, initial_state=h0, recurrent_dropout_mask=rmask, **options)
        return jnp.sum(jnp.sin(out)) + sum(jnp.sum(s**2) for s in state)

    def per_example(xx, hh, mm, rr):
        one = jax.tree_util.tree_map(lambda a: a[None], hh)
        return jax.grad(plain_loss)(params, xx[None], one, mm[None], None if rr is None else rr[:, None])

    per = jax.jit(jax.vmap(per_example, in_axes=(0, 0, 0, None if rmask is None else 1)))(x, h0, mask, rmask)
    batched = jax.jit(jax.grad(plain_loss))(params, x, h0, mask, rmask)
    for a, b in zip(jax.tree_util.tree_leaves(per), jax.tree_util.tree_leaves(batched)):
        np.testing.assert_allclose(jnp.sum(a, 0), b, atol=2e-5, rtol=2e-5)
    # no kernel-shaped (7, 7) matmul inside any loop of the differentiated program
    jaxpr = jax.make_jaxpr(lambda p: grad(p, x, h0, True)[0])(params).jaxpr
    loops = [e.params["jaxpr"].jaxpr for e in equations(jaxpr) if e.primitive.name == "scan"]
    assert loops
    for body in loops:
        assert not any(e.primitive.name == "dot_general" and e.outvars[0].aval.shape == (7, 7) for e in equations(body))


@pytest.mark.parametrize(
    "core",
    [F.LSTMCore(4), F.GRUCore(4), F.GRUCore(4, reset_after=True, recurrent_activation="sigmoid")],
    ids=["lstm", "gru", "gru_reset_after"],
)
@pytest.mark.parametrize("go_backwards", [False, True])
def test_projection_in_chunks_equals_all_at_once(core, go_backwards):
    """``project_chunk`` (inputs projected a span at a time inside an outer loop, with a remainder
    span) changes no number: outputs, states and gradients equal the one-projection loop."""

    def run(p, chunk):
        program = CoreProgram(
            lambda z: core.project(p, z), lambda s, xt: core.step(p, s, xt), matmul_step=core.matmul_step(p)
        )
        with force_plan(project_chunk=chunk):
            out, state = run_program(
                program,
                x,
                core.initial_state((2,)),
                LoopOptions(go_backwards=go_backwards, return_sequences=True),
                mask=mask,
            )
        return jnp.sum(out * jnp.cos(out)) + sum(jnp.sum(s) for s in state), (out, state)

    params = jax.tree_util.tree_map(lambda a: a + 0.05, core.init(jax.random.key(0), 3))
    x = jax.random.normal(jax.random.key(1), (2, 11, 3))
    mask = jax.random.bernoulli(jax.random.key(2), 0.8, (2, 11))

    (_, a), ga = jax.value_and_grad(lambda p: run(p, 0), has_aux=True)(params)
    (_, b), gb = jax.value_and_grad(lambda p: run(p, 4), has_aux=True)(params)
    for u, v in zip(jax.tree_util.tree_leaves((a, ga)), jax.tree_util.tree_leaves((b, gb))):
        np.testing.assert_allclose(u, v, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize(
    "core",
    [F.LSTMCore(8), F.GRUCore(8, reset_after=True), F.SimpleRNNCore(8)],
    ids=["lstm", "gru_reset_after", "simple"],
)
@pytest.mark.parametrize(
    "options",
    [
        {"return_sequences": True},
        {"go_backwards": True},
        {"go_backwards": True, "return_sequences": True, "zero_output_for_mask": True, "reset": True},
    ],
)
def test_inference_spans_change_no_number(core, options):
    """Not differentiated, the inputs are projected in spans of at most ``INFER_SPAN_BYTES``
    (at these sizes all steps fit one span); differentiated, all steps at once. With spans of a
    few steps and a remainder span (forced: ``infer_span=5``, 8 spans of 5 steps and one of 3;
    in the last case with restarts, some at span boundaries): the forward's temporaries shrink,
    outputs and final states equal the one-projection loop, and gradients (parameters, inputs,
    initial state), jit and vmap are unchanged."""

    params = jax.tree_util.tree_map(lambda a: a + 0.05, core.init(jax.random.key(0), 5))
    x = jax.random.normal(jax.random.key(1), (3, 43, 5))
    mask = jax.random.bernoulli(jax.random.key(2), 0.8, (3, 43))
    options = dict(options)
    reset = None
    if options.pop("reset", False):
        reset = jax.random.bernoulli(jax.random.key(4), 0.1, (3, 43)).at[:, [5, 21, 40]].set(True)
    h0 = jax.tree_util.tree_map(lambda a: a + 0.2, core.initial_state((3,)))

    def f(p, x, h0, mask=mask, reset=reset):
        return F.rnn(core, p, x, mask=mask, reset=reset, initial_state=h0, **options)

    def loss(p, x, h0):
        out, state = f(p, x, h0)
        return jnp.sum(out * jnp.cos(out)) + sum(jnp.sum(s * s) for s in state)

    def measure():
        fwd = jax.jit(lambda *a: f(*a))
        # the CPU's program (the rule is for CPU memory; on a GPU, XLA's temporaries at these tiny
        # sizes are other buffers: 12 vs 5 KB measured on an H200)
        on_cpu = jax.device_put((params, x, h0), jax.devices("cpu")[0])
        temp = fwd.lower(*on_cpu).compile().memory_analysis().temp_size_in_bytes
        grads = jax.jit(jax.grad(lambda *a: loss(*a), argnums=(0, 1, 2)))(params, x, h0)
        per_example = jax.jit(jax.vmap(lambda xx, hh, mm, rr: f(params, xx, hh, mm, rr)))(x, h0, mask, reset)
        return temp, fwd(params, x, h0), grads, per_example

    temp_all, *want = measure()
    with force_plan(infer_span=5):
        temp_spans, *got = measure()
    assert temp_spans < temp_all
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)
    # vmap of unbatched calls equals the batched call
    for a, b in zip(jax.tree_util.tree_leaves(got[2]), jax.tree_util.tree_leaves(got[0])):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)


def _folded_bias(jaxpr, input_dim) -> bool:
    """Whether a matmul takes the inputs with a column of ones, ``[x, 1]`` (``input_dim + 1`` wide)."""
    return any(
        e.primitive.name == "dot_general"
        and any(getattr(v.aval, "shape", ())[-1:] == (input_dim + 1,) for v in e.invars)
        for e in equations(jaxpr)
    )


@pytest.mark.parametrize(
    "core",
    [F.SimpleRNNCore(8), F.LSTMCore(8, recurrent_activation="sigmoid"), F.LSTMCore(8)],
    ids=["simple", "lstm", "lstm_hard_sigmoid"],
)
@pytest.mark.parametrize("shape", [(8, 40), (2, 11)], ids=["folded", "plain"])
@pytest.mark.parametrize(
    "options",
    [{"return_sequences": True}, {"go_backwards": True, "return_sequences": True, "zero_output_for_mask": True}],
)
def test_inference_bias_in_loop_changes_no_number(monkeypatch, core, shape, options):
    """A call that is not differentiated adds the input bias inside the loop
    (``core.loop_bias``) instead of in the projection: its outputs and states equal
    the training program's (the primal of ``jax.vjp``) and the program with the rule off; the
    projection of the inference program has no ``[x, 1]`` matmul (the folded bias) while the
    training program's has one (from FOLD_BIAS_MIN_ROWS rows on)."""
    from rnnjax.functional import core as core_module

    params = jax.tree_util.tree_map(lambda a: a + 0.3, core.init(jax.random.key(0), 5))
    x = jax.random.normal(jax.random.key(1), shape + (5,))
    mask = jax.random.bernoulli(jax.random.key(2), 0.8, shape)
    h0 = jax.tree_util.tree_map(lambda a: a + 0.2, core.initial_state(shape[:1]))

    def f(p, x, h0, mask=mask):
        return F.rnn(core, p, x, mask=mask, initial_state=h0, **options)

    infer = jax.jit(f)(params, x, h0)
    train = jax.jit(lambda p, x, h0: jax.vjp(lambda p: f(p, x, h0), p)[0])(params, x, h0)
    per_example = jax.jit(jax.vmap(lambda xx, hh, mm: f(params, xx, hh, mm)))(x, h0, mask)
    monkeypatch.setattr(type(core), "bias_in_loop", False, raising=False)
    plain = jax.jit(f)(params, x, h0)
    monkeypatch.undo()
    # float32 rounding of two programs over 40 recurrent steps: up to 2e-6 on a Zen 5 CPU (XLA's
    # CPU kernels differ between CPU generations); a wrong bias would be off by 1e-1
    for got in (train, plain, per_example):
        for a, b in zip(jax.tree_util.tree_leaves(infer), jax.tree_util.tree_leaves(got)):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    assert not _folded_bias(jax.make_jaxpr(f)(params, x, h0).jaxpr, 5)
    train_jaxpr = jax.make_jaxpr(lambda p: jax.vjp(lambda p: f(p, x, h0), p)[0])(params).jaxpr
    assert _folded_bias(train_jaxpr, 5) == (shape[0] * shape[1] >= core_module.FOLD_BIAS_MIN_ROWS)


@pytest.mark.parametrize(
    "core",
    [
        F.SimpleRNNCore(6),
        F.LSTMCore(6, recurrent_activation="sigmoid"),
        F.GRUCore(6, reset_after=True),
        F.GRUCore(6, use_bias=False),
    ],
    ids=["simple", "lstm", "gru_reset_after", "gru_no_bias"],
)
def test_folded_projection_equals_plain_matmul(core, monkeypatch):
    """From FOLD_BIAS_MIN_ROWS rows on, the projection is ``[x, 1] @ [[K], [b]]`` on 2-D rows (per
    gate for the GRU): outputs and gradients equal the plain ``x @ K + b`` path."""
    from rnnjax.functional import core as core_module

    params = jax.tree_util.tree_map(lambda a: a + 0.1, core.init(jax.random.key(0), 5))
    x = jax.random.normal(jax.random.key(1), (8, 40, 5))  # 320 rows
    assert 8 * 40 >= core_module.FOLD_BIAS_MIN_ROWS

    def loss(p, x):
        out, _ = F.rnn(core, p, x, return_sequences=True)
        return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape)))

    folded = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
    monkeypatch.setattr(core_module, "FOLD_BIAS_MIN_ROWS", 10**9)
    plain = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
    for a, b in zip(jax.tree_util.tree_leaves(folded), jax.tree_util.tree_leaves(plain)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("rec", ["sigmoid", "hard_sigmoid"])
def test_lstm_pointwise_vjp_equals_autodiff(rec):
    """The LSTM's hand-written element-wise backward gives autodiff's cotangents, including the
    hard sigmoid's clip edges (0.2·z + 0.5 exactly 0 or 1, where autodiff's slope is 0.1)."""
    core = F.LSTMCore(4, recurrent_activation=rec)
    assert core.has_fast_vjp
    keys = jax.random.split(jax.random.key(0), 6)
    xp = 3 * jax.random.normal(keys[0], (3, 16))
    xp = xp.at[0, :8].set(jnp.array([-2.5, 2.5, 0.0, -3.0, 3.0, 2.5, -2.5, 1.0]))
    a = jax.random.normal(keys[1], (3, 16)).at[0, :8].set(0.0)
    state = F.LSTMState(jax.random.normal(keys[2], (3, 4)), jax.random.normal(keys[3], (3, 4)))
    ct = (F.LSTMState(jax.random.normal(keys[4], (3, 4)), jax.random.normal(keys[5], (3, 4))), jnp.ones((3, 4)))
    _, vjp = jax.vjp(lambda xp, a, s: core.pointwise(None, xp, a, s), xp, a, state)
    d_xp, d_a, d_state = vjp(ct)
    _, got_xp, got_a, got_state = core.pointwise_vjp(None, xp, a, state, ct)
    for got, want in [(got_xp, d_xp), (got_a, d_a), (got_state.h, d_state.h), (got_state.c, d_state.c)]:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert not F.LSTMCore(4, recurrent_activation="relu").has_fast_vjp


@pytest.mark.parametrize("masks", [None, 1, 3])
def test_gru_loop_params_give_the_same_step(masks):
    """``GRUCore.loop_params`` (the reset-before GRU's recurrent kernel split once, before the
    loop) changes no number: a step with it equals a step with the Keras-layout params."""
    core = F.GRUCore(5, reset_after=False)
    params = core.init(jax.random.key(0), 3)
    split = core.loop_params(params)
    assert isinstance(split.recurrent_kernel, tuple) and len(split.recurrent_kernel) == 3
    assert core.loop_params(split) is split
    assert F.GRUCore(5, reset_after=True).loop_params(params) is params
    state = F.GRUState(jax.random.normal(jax.random.key(1), (2, 5)))
    xp = core.project(params, jax.random.normal(jax.random.key(2), (2, 3)))
    rm = None if masks is None else F.dropout_masks(jax.random.key(3), 0.4, (2, 5), count=masks)
    want = core.step(params, state, xp, rm)
    got = core.step(split, state, xp, rm)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: rnnjax.GRU(6, **kw),
        lambda **kw: rnnjax.LSTM(6, recurrent_dropout=0.3, dropout=0.2, **kw),
        lambda **kw: rnnjax.GRU(6, recurrent_dropout=0.3, **kw),
        lambda **kw: rnnjax.GRU(6, recurrent_dropout=0.3, reset_after=True, **kw),
    ],
    ids=["gru_default", "lstm_per_gate_dropout", "gru_per_gate_dropout", "gru_reset_after_per_gate_dropout"],
)
def test_layer_gradients_equal_the_unrolled_loop(make):
    """Layers whose training step runs an InputAdditiveStep (kernel gradients after the loop):
    in training mode (dropout masks from the same 'dropout' key), the parameter and input
    gradients equal those of the same layer with ``unroll=True`` (a Python loop, plain autodiff)."""
    x = jax.random.normal(jax.random.key(0), (3, 7, 4))
    mask = jnp.array([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 1, 1, 0]], bool)
    layer, unrolled = make(return_sequences=True), make(return_sequences=True, unroll=True)
    v = layer.init(jax.random.key(1), x)
    v = jax.tree_util.tree_map(lambda a: a + 0.05, v)

    def grads(lay):
        def loss(p, x):
            out = lay.apply({"params": p}, x, mask=mask, training=True, rngs={"dropout": jax.random.key(2)})
            return jnp.sum(jnp.sin(out) * jnp.arange(7)[None, :, None])

        return jax.jit(jax.grad(loss, argnums=(0, 1)))(v["params"], x)

    for a, b in zip(jax.tree_util.tree_leaves(grads(layer)), jax.tree_util.tree_leaves(grads(unrolled))):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)
    # the scan path forms no (U, U) kernel-gradient matmul inside its loops
    jaxpr = jax.make_jaxpr(
        jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x, training=True, rngs={"dropout": jax.random.key(2)})))
    )(v["params"]).jaxpr
    loops = [e.params["jaxpr"].jaxpr for e in equations(jaxpr) if e.primitive.name == "scan"]
    assert loops and not any(
        e.primitive.name == "dot_general" and e.outvars[0].aval.shape == (6, 6)
        for body in loops
        for e in equations(body)
    )


def test_input_additive_step_ghost_parts_are_checked():
    """Ghost parts must follow the projected parts, numbered from their count on."""
    k = jnp.eye(3)

    def step(kernels, state, xp_t):
        a, b, g = xp_t
        h = jnp.tanh(a + state @ kernels[0] + b + g + state @ kernels[1])
        return (h, h), (state, state)

    x = jnp.ones((2, 4, 3))

    def run(form):
        program = CoreProgram(
            lambda z: (z, z), lambda s, xt: step((k, k), s, xt + (0 * xt[0],))[0], input_additive_step=form
        )
        return jax.grad(lambda x: jnp.sum(run_program(program, x, jnp.zeros((2, 3)))[0]))(x)

    with pytest.raises(ValueError, match=r"adds_to \(0, 5\).*numbered from 2"):
        run(InputAdditiveStep((k, k), step, adds_to=(0, 5)))
    ref, got = run(None), run(InputAdditiveStep((k, k), step, adds_to=(0, 2)))
    np.testing.assert_allclose(got, ref, atol=1e-6)


@pytest.mark.parametrize("fmt", ["channels_last", "channels_first"])
def test_conv_lstm_inference_spans_change_no_number(fmt):
    """ConvLSTM2D's forward projects its inputs in spans when not differentiated (forced here to
    one step): smaller temporaries, the same outputs and states, and the same gradients (those
    run the one-projection program)."""
    layer = rnnjax.ConvLSTM2D(
        3,
        (3, 3),
        padding="same",
        data_format=fmt,
        return_sequences=True,
        return_state=True,
        recurrent_activation="sigmoid",
    )
    shape = (2, 9, 5, 6, 2) if fmt == "channels_last" else (2, 9, 2, 5, 6)
    x = jax.random.normal(jax.random.key(0), shape)
    v = layer.init(jax.random.key(1), x)

    def measure():
        fwd = jax.jit(lambda v, x: layer.apply(v, x))
        temp = fwd.lower(v, x).compile().memory_analysis().temp_size_in_bytes
        grads = jax.jit(jax.grad(lambda v, x: sum(jnp.sum(jnp.sin(t)) for t in layer.apply(v, x)), argnums=(0, 1)))(
            v, x
        )
        return temp, fwd(v, x), grads

    temp_all, *want = measure()
    with force_plan(infer_span=1):
        temp_spans, *got = measure()
    assert temp_spans < temp_all
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("recurrent_activation", ["hard_sigmoid", "sigmoid"])
def test_conv_lstm_hand_written_pointwise_backward_equals_autodiff(recurrent_activation):
    """The ConvLSTM's backward loop uses the LSTM's hand-written element-wise backward per pixel
    (``LSTMCore.pointwise_vjp`` on ``ConvLSTMState``); with a mask with holes, go_backwards and Keras 2's hard
    sigmoid, the gradients equal the unrolled loop's (plain autodiff)."""
    x = jax.random.normal(jax.random.key(3), (2, 5, 5, 4, 3))
    mask = jnp.array([[1, 0, 1, 1, 0], [1, 1, 1, 0, 1]], bool)

    def make(**kw):
        return rnnjax.ConvLSTM2D(
            4,
            3,
            padding="same",
            go_backwards=True,
            return_sequences=True,
            recurrent_activation=recurrent_activation,
            **kw,
        )

    layer, unrolled = make(), make(unroll=True)
    v = jax.tree_util.tree_map(lambda a: a + 0.05, layer.init(jax.random.key(1), x))
    step = F.ConvLSTMCore(4, 3, rank=2, padding="same", recurrent_activation=recurrent_activation).matmul_step(
        F.ConvLSTMParams(**v["params"]["cell"])
    )
    assert step.pointwise_vjp is not None

    def loss(lay, p, x):
        return jnp.sum(jnp.sin(lay.apply({"params": p}, x, mask=mask)))

    got = jax.jit(jax.grad(lambda p, x: loss(layer, p, x), argnums=(0, 1)))(v["params"], x)
    want = jax.jit(jax.grad(lambda p, x: loss(unrolled, p, x), argnums=(0, 1)))(v["params"], x)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("rank, recurrent_activation", [(1, "sigmoid"), (2, "sigmoid"), (2, "hard_sigmoid")])
def test_conv_lstm_per_gate_recurrent_dropout_gradients_after_the_loop(rank, recurrent_activation):
    """ConvLSTM layers draw one recurrent dropout mask per gate, which has no RecurrentMatmulStep form; as an
    InputAdditiveStep their recurrent-kernel gradients are ``patches(h·m_g)ᵀ @ dz_g`` after the
    loop, and the gate math has the LSTM's hand-written backward per pixel. In training mode (same
    'dropout' key) the gradients equal the unrolled loop's (plain autodiff), and no convolution
    with the kernel's shape is formed inside the backward loop."""
    cls = rnnjax.ConvLSTM1D if rank == 1 else rnnjax.ConvLSTM2D
    shape = (2, 5, 6, 3) if rank == 1 else (2, 5, 5, 4, 3)
    x = jax.random.normal(jax.random.key(0), shape)
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 0, 1, 1, 1]], bool)

    def make(**kw):
        return cls(
            4,
            3,
            padding="same",
            recurrent_dropout=0.3,
            recurrent_activation=recurrent_activation,
            return_sequences=True,
            **kw,
        )

    layer, unrolled = make(), make(unroll=True)
    v = jax.tree_util.tree_map(lambda a: a + 0.05, layer.init(jax.random.key(1), x))

    def loss(lay, p, x):
        out = lay.apply({"params": p}, x, mask=mask, training=True, rngs={"dropout": jax.random.key(2)})
        return jnp.sum(jnp.sin(out))

    got = jax.jit(jax.grad(lambda p, x: loss(layer, p, x), argnums=(0, 1)))(v["params"], x)
    want = jax.jit(jax.grad(lambda p, x: loss(unrolled, p, x), argnums=(0, 1)))(v["params"], x)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)
    # In the program XLA runs, no convolution produces a recurrent-kernel-shaped (…, 4, 4·k)
    # gradient, in any axis order (the input kernel's gradient, (…, 3, 16), is one). The jaxpr
    # still holds same_conv's kernel cotangent inside the backward loop, unused: XLA drops it.
    # (the CPU's program: on a GPU, convolutions are cuDNN calls)
    on_cpu = jax.device_put((v["params"], x), jax.devices("cpu")[0])
    compiled = jax.jit(jax.grad(lambda p, x: loss(layer, p, x))).lower(*on_cpu).compile().as_text()
    shapes = {tuple(sorted(s)) for s in convolution_shapes(compiled)}
    kernel_shape = tuple(v["params"]["cell"]["recurrent_kernel"].shape)
    assert tuple(sorted(kernel_shape[:-2] + (3, 16))) in shapes  # the check sees convolutions
    block = kernel_shape[:-1] + (kernel_shape[-1] // 4,)
    assert not shapes & {tuple(sorted(kernel_shape)), tuple(sorted(block))}


# The plan switches: (id, core, recurrent-mask count, mask?, forced switches[, the plan compared
# with]). Each forces a value the automatic plan does not take for that case, so the program
# changes (asserted) while every number stays the reference's.
SWITCHES = [
    ("lstm_not_in_place", F.LSTMCore(5), 1, True, {"in_place_z": False}),
    ("simple_not_in_place", F.SimpleRNNCore(5), None, True, {"in_place_z": False}),
    ("lstm_sigmoid_prefetch_z", F.LSTMCore(5, recurrent_activation="sigmoid"), None, True, {"prefetch_z": True}),
    ("lstm_hard_sigmoid_no_prefetch", F.LSTMCore(5), None, True, {"prefetch_z": False}),
    ("simple_no_prefetch", F.SimpleRNNCore(5), 1, True, {"prefetch_z": False}),
    ("gru_reset_after_no_prefetch", F.GRUCore(5, reset_after=True), 1, True, {"prefetch_z": False}),
    ("gru_reset_after_not_in_place", F.GRUCore(5, reset_after=True), None, True, {"in_place_z": False}),
    ("lstm_carry_prev_output", F.LSTMCore(5), None, False, {"carry_prev_output": True}),
    ("gru_reset_after_carry_prev_output", F.GRUCore(5, reset_after=True), 1, False, {"carry_prev_output": True}),
    ("gru_reset_after_bias_grad_per_step", F.GRUCore(5, reset_after=True), None, True, {"bias_grad_after_loop": False}),
    ("lstm_project_chunk", F.LSTMCore(5), None, True, {"project_chunk": 4}),
    ("gru_project_chunk", F.GRUCore(5), 3, True, {"project_chunk": 4}),
    ("simple_infer_span", F.SimpleRNNCore(5), None, True, {"infer_span": 2}),
    ("gru_reset_after_infer_span", F.GRUCore(5, reset_after=True), None, True, {"infer_span": 3}),
    ("lstm_no_loop_bias", F.LSTMCore(5, recurrent_activation="sigmoid"), None, True, {"loop_bias": False}),
    (
        "lstm_train_in_one_loop",
        F.LSTMCore(5),
        None,
        True,
        {"project_chunk": 4, "train_in_one_loop": True},
        {"project_chunk": 4},
    ),
]
INFERENCE_ONLY = ("infer_span", "loop_bias")


def _case(core, count, with_mask, dtype=jnp.float32):
    params = jax.tree_util.tree_map(lambda a: (a + 0.1).astype(dtype), core.init(jax.random.key(0), 3))
    x = jax.random.normal(jax.random.key(1), (4, 9, 3)).astype(dtype)
    mask = jax.random.bernoulli(jax.random.key(2), 0.7, (4, 9)) if with_mask else None
    rmask = None if count is None else F.dropout_masks(jax.random.key(3), 0.3, (4, 5), count=count, dtype=dtype)
    h0 = jax.tree_util.tree_map(lambda a: a + 0.3, core.initial_state((4,), jnp.promote_types(dtype, jnp.float32)))
    return params, x, mask, rmask, h0


def _programs(core, params, x, mask, rmask, h0, custom, **options):
    """The inference output and the training value and gradients (parameters, inputs, initial
    state), and the jaxprs of both, traced now (inside any force_plan block)."""

    def run(p, x, h0):
        return F.rnn(
            core,
            p,
            x,
            mask=mask,
            initial_state=h0,
            recurrent_dropout_mask=rmask,
            custom_backward=custom,
            return_sequences=True,
            **options,
        )

    def loss(p, x, h0):
        out, state = run(p, x, h0)
        w = jnp.arange(out.size, dtype=jnp.float32).reshape(out.shape) / out.size
        return jnp.sum(out.astype(jnp.float32) * w) + sum(jnp.sum(jnp.sin(s)) for s in state)

    train = jax.value_and_grad(loss, argnums=(0, 1, 2))
    jaxprs = (str(jax.make_jaxpr(run)(params, x, h0)), str(jax.make_jaxpr(train)(params, x, h0)))
    return (jax.jit(run)(params, x, h0), jax.jit(train)(params, x, h0)), jaxprs


@pytest.mark.parametrize("case", SWITCHES, ids=[s[0] for s in SWITCHES])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_each_plan_switch_equals_the_reference(case, go_backwards):
    """With the switch forced, outputs, states and gradients equal the generic loop's (autodiff,
    ``custom_backward=False``), and the forced program differs from the automatic one (the switch
    was taken)."""
    _, core, count, with_mask, switches, *base = case
    args = _case(core, count, with_mask)
    want, _ = _programs(core, *args, False, go_backwards=go_backwards)
    with force_plan(**(base[0] if base else {})):
        _, automatic = _programs(core, *args, True, go_backwards=go_backwards)
    with force_plan(**switches):
        got, forced = _programs(core, *args, True, go_backwards=go_backwards)
    assert_same_function(got, want)
    which = 0 if set(switches) <= set(INFERENCE_ONLY) else 1  # the inference or the training program
    assert forced[which] != automatic[which], f"forcing {switches} did not change the program"


@pytest.mark.parametrize(
    "core",
    [
        F.SimpleRNNCore(5),
        F.LSTMCore(5, recurrent_activation="sigmoid"),
        F.LSTMCore(5),
        F.GRUCore(5, reset_after=True),
        F.GRUCore(5),
    ],
    ids=["simple", "lstm_sigmoid", "lstm_hard_sigmoid", "gru_reset_after", "gru"],
)
def test_bfloat16_inputs_with_float32_states(core):
    """bfloat16 inputs and parameters with float32 states (what ``rnn`` and the layers keep): the
    recurrent-matmul loop stores ``a_t`` beside the inputs instead of ``z_t`` over them (a bfloat16
    buffer would round the float32 ``z_t``), and outputs, states and gradients equal the generic
    loop's to bfloat16 rounding."""
    args = _case(core, None, True, jnp.bfloat16)
    params, x, _, _, h0 = args
    assert all(s.dtype == jnp.float32 for s in jax.tree_util.tree_leaves(h0))
    step = core.matmul_step(params)
    if step is not None and step.reads_only_sum:
        assert not plan_matmul_backward(step, x, h0, True).in_place_z
        assert plan_matmul_backward(step, x.astype(jnp.float32), h0, True).in_place_z
    want, _ = _programs(core, *args, False)
    got, _ = _programs(core, *args, True)
    assert_same_function(got, want, tol=3e-2)


def test_forcing_a_switch_that_would_change_the_numbers_raises():
    """A forced value the step cannot take is an error, not a silent wrong plan."""
    core = F.LSTMCore(5)
    args = _case(core, None, True)
    with force_plan(carry_prev_output=False), pytest.raises(ValueError, match="carry_prev_output"):
        _programs(core, *args, True)
    # in place, a bfloat16 input buffer would round the float32 z_t
    gru = F.GRUCore(5, reset_after=True)
    with force_plan(in_place_z=True), pytest.raises(ValueError, match="in_place_z"):
        _programs(gru, *_case(gru, None, True, jnp.bfloat16), True)
    with pytest.raises(ValueError, match="unknown switch"):
        with force_plan(spans=3):
            pass
