"""``jax.export`` of every layer: fixed shapes, a symbolic batch ``b`` and symbolic batch and time
``b, t`` (and symbolic spatial sizes for the ConvLSTM), with and without masks, forward and VJP.

Each export is serialised with ``vjp_order=1``, deserialised, and called on concrete shapes (two or
more per symbolic export, one of them above the driver's span thresholds for the LSTM); outputs and
the gradients of a weighted sum of the outputs (through the serialised VJP) must equal the jitted
layer's. The driver plans programs from sizes (spans, bias folding); with symbolic sizes it takes
the all-steps-at-once path, so equality here is to float rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from catalogue import assert_trees_close, right_padded_only
from catalogue import layer as make_layer
from jax import export

import rnnjax
from rnnjax.functional import PlanOverrides, _planner

RTOL, ATOL = 2e-5, 2e-6

SEQ_STATE = dict(return_sequences=True, return_state=True)
# name -> (catalogue variant, units, options, per-step feature shape); CuDNN: right-padded masks
LAYERS = {
    "SimpleRNN": ("simple_rnn", 4, dict(return_sequences=True, go_backwards=True), (3,)),
    "GRU": ("gru", 4, SEQ_STATE, (3,)),
    "GRU_reset_after": ("gru_reset_after", 4, dict(recurrent_activation="sigmoid", scan_unroll=2), (3,)),
    "LSTM": ("lstm", 4, SEQ_STATE, (3,)),
    "LSTM_remat": ("lstm", 4, dict(remat=True, zero_output_for_mask=True, return_sequences=True), (3,)),
    "RNN_cell": ("rnn_simple_rnn", 4, dict(return_state=True), (3,)),
    "RNN_stack": ("stack", 3, dict(return_sequences=True), (3,)),
    "ConvLSTM1D": ("conv_lstm1d", 3, dict(return_sequences=True), (5, 2)),
    "ConvLSTM2D": ("conv_lstm2d", 2, dict(return_state=True), (4, 4, 2)),
    "ConvLSTM2D_valid": ("conv_lstm2d", 2, dict(padding="valid"), (5, 5, 2)),
    "ConvLSTM3D": ("conv_lstm3d", 2, dict(kernel_size=2, data_format="channels_first"), (2, 3, 3, 3)),
    "CuDNNLSTM": ("cudnn_lstm", 4, SEQ_STATE, (3,)),
    "CuDNNGRU": ("cudnn_gru", 4, dict(return_sequences=True), (3,)),
}
FIXED = (2, 5)
# spec -> the symbolic (batch, time) and the concrete (batch, time) pairs each export is called on
SPECS = {
    "fixed": (FIXED, [FIXED]),
    "b": (("b", 5), [(1, 5), (3, 5)]),
    "b, t": (("b", "t"), [(1, 2), (3, 6)]),
}


def _build(name):
    variant, units, options, feat = LAYERS[name]
    layer = make_layer(variant, units, **options)
    mask_kind = "right" if right_padded_only(variant) else "holes"
    variables = layer.init(jax.random.key(0), jnp.ones(FIXED + feat))
    return layer, variables, feat, mask_kind


def _spec(lead, feat, dtype=jnp.float32, constraints=()):
    if all(isinstance(d, int) for d in lead + feat):
        return jax.ShapeDtypeStruct(lead + feat, dtype)
    return jax.ShapeDtypeStruct(export.symbolic_shape(", ".join(map(str, lead + feat)), constraints=constraints), dtype)


def _inputs(lead, feat, mask_kind, seed):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=lead + feat), jnp.float32)
    b, t = lead
    if mask_kind == "right":
        lengths = rng.integers(1, t + 1, size=b)
        mask = np.arange(t)[None, :] < lengths[:, None]
    else:
        mask = rng.random((b, t)) < 0.7
        mask[:, 0] = True  # at least one real step per row (not needed, but a typical mask)
    return x, jnp.asarray(mask)


def _roundtrip(fn, *specs):
    exported = export.export(jax.jit(fn))(*specs)
    return export.deserialize(exported.serialize(vjp_order=1))


def _cotangents(out, seed=1):
    """Fixed random output cotangents (each output leaf and element its own)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda o: jnp.asarray(rng.normal(size=o.shape), o.dtype), out)


def _close(actual, expected):
    assert_trees_close(actual, expected, rtol=RTOL, atol=ATOL)


def _check(fn, restored, args, diff_argnums):
    """The deserialised function equals the jitted one on ``args``, forward and the VJP of all
    outputs (one compiled program each: the outputs and the gradients of ``diff_argnums``)."""
    cts = _cotangents(jax.eval_shape(fn, *args))

    def forward_and_vjp(f):
        def run(*a):
            diff = tuple(a[i] for i in diff_argnums)

            def of_diff(*d):
                full = list(a)
                for i, v in zip(diff_argnums, d):
                    full[i] = v
                return f(*full)

            out, vjp = jax.vjp(of_diff, *diff)
            return out, vjp(cts)

        return jax.jit(run)

    _close(forward_and_vjp(restored.call)(*args), forward_and_vjp(fn)(*args))


# Every layer masked on every spec; without a mask (the driver's other programs: no previous
# output carried, no mask in the custom VJPs) on the most symbolic spec, for one layer of each
# backward form (RecurrentMatmulStep, InputAdditiveStep, generic cell, convolution, CuDNN layout).
NOMASK = ("SimpleRNN", "GRU", "GRU_reset_after", "LSTM", "RNN_cell", "ConvLSTM2D", "CuDNNGRU")
CASES = [(name, spec, True) for name in LAYERS for spec in SPECS] + [(name, "b, t", False) for name in NOMASK]


@pytest.mark.parametrize("name, spec, masked", CASES, ids=[f"{n}-{s}-{'mask' if m else 'nomask'}" for n, s, m in CASES])
def test_export_matches_jit(name, spec, masked):
    layer, variables, feat, mask_kind = _build(name)
    lead, concrete = SPECS[spec]
    if name == "LSTM" and spec == "b, t" and masked:
        concrete = concrete + [(64, 50)]  # spans and the folded bias when jitted (the driver's plan)
    x_spec = _spec(lead, feat)
    if masked:

        def fn(v, x, m):
            return layer.apply(v, x, mask=m)

        specs = (x_spec, jax.ShapeDtypeStruct(x_spec.shape[:2], jnp.bool_))  # one symbolic scope
    else:

        def fn(v, x):
            return layer.apply(v, x)

        specs = (x_spec,)
    restored = _roundtrip(fn, variables, *specs)
    assert [str(d) for d in restored.in_avals[-len(specs)].shape[:2]] == [str(d) for d in lead]
    for k, shape in enumerate(concrete):
        x, m = _inputs(shape, feat, mask_kind, seed=k)
        _check(fn, restored, (variables, x, m) if masked else (variables, x), (0, 1))


@pytest.mark.parametrize("name", ["SimpleRNN", "GRU", "LSTM", "LSTM_remat", "ConvLSTM1D", "CuDNNLSTM"])
def test_export_with_reset(name):
    """``reset`` (like the mask: ``(b, t)`` boolean, symbolic) exports with symbolic batch and time,
    forward and VJP, for each backward form (and go_backwards: SimpleRNN)."""
    layer, variables, feat, mask_kind = _build(name)
    lead, concrete = SPECS["b, t"]
    x_spec = _spec(lead, feat)

    def fn(v, x, m, r):
        return layer.apply(v, x, mask=m, reset=r)

    flags = jax.ShapeDtypeStruct(x_spec.shape[:2], jnp.bool_)
    restored = _roundtrip(fn, variables, x_spec, flags, flags)
    assert [str(d) for d in restored.in_avals[-1].shape] == [str(d) for d in lead]
    for k, shape in enumerate(concrete + ([(64, 50)] if name == "LSTM" else [])):
        x, m = _inputs(shape, feat, mask_kind, seed=k)
        r = jnp.asarray(np.random.default_rng(k + 10).random(shape) < 0.3)
        _check(fn, restored, (variables, x, m, r), (0, 1))


SPATIAL = {  # symbolic spatial sizes (padding 'same', stride 1), two concrete shapes each
    "ConvLSTM1D": ("b, t, w, 2", [(1, 2, 3, 2), (2, 4, 7, 2)]),
    "ConvLSTM2D": ("b, t, h, w, 2", [(1, 3, 2, 5, 2), (2, 2, 6, 3, 2)]),
    "ConvLSTM3D": ("b, t, 2, d, h, w", [(1, 2, 2, 2, 3, 1), (2, 3, 2, 3, 1, 4)]),
}


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("name", list(SPATIAL))
def test_conv_lstm_symbolic_spatial(name, masked):
    layer, variables, _, _ = _build(name)
    spec, shapes = SPATIAL[name]
    x_spec = jax.ShapeDtypeStruct(export.symbolic_shape(spec), jnp.float32)
    m_spec = jax.ShapeDtypeStruct(x_spec.shape[:2], jnp.bool_)
    if masked:

        def fn(v, x, m):
            return layer.apply(v, x, mask=m)
    else:

        def fn(v, x):
            return layer.apply(v, x)

    restored = _roundtrip(fn, variables, x_spec, *([m_spec] if masked else []))
    for k, shape in enumerate(shapes):
        x, m = _inputs(shape[:2], shape[2:], "holes", seed=k)
        _check(fn, restored, (variables, x, m) if masked else (variables, x), (0, 1))


def test_conv_lstm_valid_symbolic_spatial_with_a_stated_minimum():
    """'valid' padding with symbolic spatial sizes: the kernel's fit is decided from the
    constraints of the symbolic shape; the forward and the gradient export."""
    layer, variables, _, _ = _build("ConvLSTM2D_valid")
    spec = _spec(("b", "t"), ("h", "w", 2), constraints=("h >= 3", "w >= 3"))

    def fn(v, x):
        return layer.apply(v, x)

    restored = export.deserialize(export.export(jax.jit(fn))(variables, spec).serialize())
    grad = jax.grad(lambda v, x: jnp.sum(jnp.sin(fn(v, x))), argnums=(0, 1))
    restored_grad = export.deserialize(export.export(jax.jit(grad))(variables, spec).serialize())
    for k, shape in enumerate([(1, 2, 3, 4, 2), (2, 3, 6, 5, 2)]):
        x, _ = _inputs(shape[:2], shape[2:], "holes", seed=k)
        _close(restored.call(variables, x), jax.jit(fn)(variables, x))
        _close(restored_grad.call(variables, x), jax.jit(grad)(variables, x))
    with pytest.raises(ValueError, match=r"padding='valid'.*symbolic spatial shape.*constraints"):
        export.export(jax.jit(fn))(variables, _spec(("b", "t"), ("h", "w", 2)))


def test_conv_lstm_same_strided_symbolic_spatial_is_a_clear_error():
    layer = rnnjax.ConvLSTM2D(2, 3, padding="same", strides=2)
    variables = layer.init(jax.random.key(0), jnp.ones((1, 2, 5, 5, 2)))
    with pytest.raises(ValueError, match=r"`strides`.*padding='same'.*symbolic"):
        export.export(jax.jit(layer.apply))(variables, _spec(("b", "t"), ("h", "w", 2)))


@pytest.mark.parametrize("name", ["LSTM", "GRU", "GRU_reset_after"])
def test_export_training_with_dropout(name):
    """Dropout masks of a symbolic batch, drawn from a key passed in: equal to the jitted call."""
    make = {
        "LSTM": lambda: rnnjax.LSTM(4, dropout=0.3, recurrent_dropout=0.2, implementation=1),
        "GRU": lambda: rnnjax.GRU(4, dropout=0.3, recurrent_dropout=0.2),
        "GRU_reset_after": lambda: rnnjax.GRU(4, dropout=0.3, recurrent_dropout=0.2, reset_after=True),
    }[name]
    layer = make()
    variables = layer.init(jax.random.key(0), jnp.ones(FIXED + (3,)))

    def fn(v, x, key):
        return layer.apply(v, x, training=True, rngs={"dropout": key})

    key = jax.random.key(7)
    restored = _roundtrip(fn, variables, _spec(("b", "t"), (3,)), key)
    for k, shape in enumerate([(1, 3), (4, 6)]):
        x, _ = _inputs(shape, (3,), "holes", seed=k)
        _check(fn, restored, (variables, x, key), (0, 1))


@pytest.mark.parametrize("name", list(LAYERS))
def test_eval_shape_symbolic(name):
    """Shape-polymorphic tracing: output shapes carry the symbolic batch and time, forward and grad."""
    layer, variables, feat, _ = _build(name)
    x = _spec(("b", "t"), feat)
    m = jax.ShapeDtypeStruct(x.shape[:2], jnp.bool_)
    out = jax.eval_shape(lambda v, x, m: layer.apply(v, x, mask=m), variables, x, m)
    concrete = jax.eval_shape(lambda v, x: layer.apply(v, x), variables, jnp.ones((3, 6) + feat))
    b, t = x.shape[:2]

    def expected(leaf):  # the concrete shape with 3 -> b and 6 -> t on the batch/time axes
        return tuple({0: {3: b}, 1: {6: t}}.get(i, {}).get(d, d) for i, d in enumerate(leaf.shape))

    assert [tuple(o.shape) for o in jax.tree_util.tree_leaves(out)] == [
        expected(c) for c in jax.tree_util.tree_leaves(concrete)
    ]

    def loss(v, x):
        return sum(jnp.sum(o**2) for o in jax.tree_util.tree_leaves(layer.apply(v, x)))

    grads = jax.eval_shape(jax.grad(loss, argnums=(0, 1)), variables, x)
    assert tuple(grads[1].shape) == tuple(x.shape)
    assert jax.tree_util.tree_map(lambda g: g.shape, grads[0]) == jax.tree_util.tree_map(jnp.shape, variables)


def test_unroll_with_symbolic_time_is_a_clear_error():
    layer = rnnjax.LSTM(4, unroll=True)
    variables = layer.init(jax.random.key(0), jnp.ones(FIXED + (3,)))
    with pytest.raises(ValueError, match=r"`unroll=True`.*symbolic t"):
        jax.eval_shape(layer.apply, variables, _spec(("b", "t"), (3,)))
    # a symbolic batch with a known number of steps unrolls fine
    restored = _roundtrip(layer.apply, variables, _spec(("b", 5), (3,)))
    for k, shape in enumerate([(1, 5), (3, 5)]):
        x, _ = _inputs(shape, (3,), "holes", seed=k)
        _check(layer.apply, restored, (variables, x), (0, 1))


@pytest.mark.parametrize(
    "make", [lambda: rnnjax.LSTM(4, stateful=True), lambda: rnnjax.CuDNNGRU(4, stateful=True)], ids=["LSTM", "CuDNNGRU"]
)
def test_stateful_with_symbolic_batch_is_a_clear_error(make):
    layer = make()
    variables = layer.init(jax.random.key(0), jnp.ones(FIXED + (3,)))

    def fn(v, x):
        return layer.apply(v, x, mutable=[rnnjax.STATE_COLLECTION])

    with pytest.raises(ValueError, match=r"stateful layer keeps states for batch size 2, got a batch of b"):
        jax.eval_shape(fn, variables, _spec(("b", 5), (3,)))
    # a stateful layer's batch is fixed, its time axis may be symbolic
    restored = _roundtrip(fn, variables, _spec((2, "t"), (3,)))
    for k, shape in enumerate([(2, 1), (2, 7)]):
        x, _ = _inputs(shape, (3,), "holes", seed=k)
        _close(restored.call(variables, x), jax.jit(fn)(variables, x))


def test_planner_concrete_and_symbolic():
    """The plan for concrete sizes is the documented rule; a symbolic size gets all steps at once."""
    P, B, S = _planner.PROJECT_CHUNK, _planner.CHUNK_MIN_BATCH, _planner.CHUNK_MIN_STEPS
    assert _planner.projection_chunk(S, None, B) == P
    assert _planner.projection_chunk(S - 1, None, B) == S - 1
    assert _planner.projection_chunk(S, None, B - 1) == S
    assert _planner.projection_chunk(S, 0, B) == S
    assert _planner.projection_chunk(S, 7, 1) == 7
    assert [_planner.remat_chunk(n) for n in (1, 3, 4, 15, 16, 100)] == [1, 1, 2, 3, 4, 10]
    b, t = export.symbolic_shape("b, t")
    assert _planner.projection_chunk(t, None, b) is t
    assert _planner.projection_chunk(S, None, b) == S  # the batch decides: not known, no spans
    assert _planner.projection_chunk(t, 7, 1) is t  # an explicit span length needs a known time axis
    assert _planner.remat_chunk(t) == 1
    with pytest.raises(ValueError, match="`project_chunk`"):
        _planner.projection_chunk(t, -1, b)


def test_inference_span_concrete_and_symbolic():
    """Not differentiated, the steps projected at once: as many as fit in ``INFER_SPAN_BYTES``
    (at least one, at most all), the forced ``infer_span`` (0: the training program's span) where
    forced; with a symbolic size (forced or not), or ``project_chunk`` forced, the training
    program's span."""
    span, none = _planner.INFER_SPAN_BYTES, PlanOverrides()
    assert _planner.inference_span(1000, span // 8, 1000, none) == 8
    assert _planner.inference_span(1000, span // 8 + 1, 1000, none) == 7
    assert _planner.inference_span(1000, 2 * span, 1000, none) == 1
    assert _planner.inference_span(5, 1, 5, none) == 5
    assert _planner.inference_span(1000, 4, 10, PlanOverrides(infer_span=3)) == 3
    assert _planner.inference_span(1000, 4, 10, PlanOverrides(infer_span=0)) == 10
    assert _planner.inference_span(1000, 4, 10, PlanOverrides(project_chunk=10)) == 10
    b, t = export.symbolic_shape("b, t")
    assert _planner.inference_span(t, 4, t, none) is t
    assert _planner.inference_span(t, 4, t, PlanOverrides(infer_span=3)) is t  # a span needs a known time axis
    assert _planner.inference_span(1000, 4 * b, 1000, none) == 1000
    with pytest.raises(ValueError, match="`infer_span`"):
        _planner.inference_span(1000, 4, 1000, PlanOverrides(infer_span=-1))
