"""The driver's options as one value (``LoopOptions``), plan overrides that are part of the jit
cache key (``force_plan``), and the declared core protocol the front ends read (the parameter
layout, ``CellCore``, ``SpatialCore``, ``with_pointwise_vjp``, the cell's named scope)."""

import re
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxpr_util import equations

import rnnjax.functional as F
from rnnjax.functional import LoopOptions, PlanOverrides, force_plan
from rnnjax.functional.driver import run_program

CORE = F.LSTMCore(3)
PARAMS = jax.tree_util.tree_map(lambda a: a + 0.1, CORE.init(jax.random.key(0), 2))
X = jax.random.normal(jax.random.key(1), (2, 9, 2))


def _scans(fn, *args) -> int:
    return sum(e.primitive.name == "scan" for e in equations(jax.make_jaxpr(fn)(*args).jaxpr))


def test_force_plan_is_part_of_the_jit_cache_key():
    """A jitted function traced outside a ``force_plan`` block is traced again inside it (and the
    program takes the forced spans), then outside again runs its first program: no stale plan."""
    traces = []

    @jax.jit
    def f(p, x):
        traces.append(None)
        return F.rnn(CORE, p, x, return_sequences=True)[0]

    automatic, want = f.lower(PARAMS, X).as_text(), f(PARAMS, X)
    with force_plan(project_chunk=4):
        forced, got = f.lower(PARAMS, X).as_text(), f(PARAMS, X)
    assert len(traces) == 2
    assert forced.count("stablehlo.while") > automatic.count("stablehlo.while")  # the spans' outer loop
    assert f.lower(PARAMS, X).as_text() == automatic
    f(PARAMS, X)
    assert len(traces) == 2
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_force_plan_nests_is_per_thread_and_an_explicit_plan_wins():
    seen = {}
    with force_plan(in_place_z=False):
        with force_plan(loop_bias=False):
            worker = threading.Thread(target=lambda: seen.update(other=LoopOptions().checked().plan))
            worker.start()
            worker.join()
            seen["here"] = LoopOptions().checked().plan
        explicit = LoopOptions(plan=PlanOverrides(project_chunk=4)).checked().plan
    assert seen == {"other": PlanOverrides(), "here": PlanOverrides(in_place_z=False, loop_bias=False)}
    assert explicit == PlanOverrides(project_chunk=4)

    program = F.core.core_program(CORE, PARAMS)
    state = CORE.initial_state((2,))
    with force_plan(project_chunk=0):
        whole = _scans(lambda x: run_program(program, x, state), X)
        spans = _scans(lambda x: run_program(program, x, state, LoopOptions(plan=PlanOverrides(project_chunk=4))), X)
    assert spans > whole


@pytest.mark.parametrize(
    "options, match",
    [
        (LoopOptions(scan_unroll=0), "`scan_unroll`"),
        (LoopOptions(feature_axes=0), "`feature_axes`"),
        (LoopOptions(feature_axes=3, time_major=True), "`time_major`"),
        (LoopOptions(custom_backward=1), "`custom_backward`"),
        (LoopOptions(plan={"project_chunk": 4}), "`plan`"),
    ],
)
def test_loop_options_name_the_bad_argument(options, match):
    with pytest.raises((ValueError, TypeError), match=match):
        options.checked()


@pytest.mark.parametrize(
    "core",
    [F.SimpleRNNCore(4), F.LSTMCore(4), F.LSTMCore(4, implementation=2), F.GRUCore(4), F.ConvLSTMCore(4, 3, rank=1)],
    ids=["simple", "lstm", "lstm_impl2", "gru", "conv_lstm1d"],
)
def test_built_in_cores_declare_what_the_front_ends_read(core):
    """Keras's dropout-mask counts (SimpleRNN 1; implementation=1 one per gate; ConvLSTM one per
    gate), the parameter layout, and the spatial protocol exactly for cores with spatial axes."""
    assert isinstance(core, F.CellCore)
    want = 1 if isinstance(core, F.SimpleRNNCore) or getattr(core, "implementation", 1) == 2 else core.gates
    assert core.dropout_mask_count == want
    assert core.params_class._fields == F.PARAM_NAMES
    assert isinstance(core, F.SpatialCore) == (core.num_feature_axes > 1)


def test_make_params_builds_by_name_and_names_a_bad_layout():
    k, r = jnp.ones((2, 8)), jnp.ones((2, 8))
    assert F.make_params(F.GRUParams, {"recurrent_kernel": r, "kernel": k}) == F.GRUParams(k, r, None)
    with pytest.raises(TypeError, match="`params_class`.*fields"):
        F.make_params(F.GRUState, {"kernel": k})
    with pytest.raises(ValueError, match="parameters: .*'gamma'"):
        F.make_params(F.GRUParams, {"kernel": k, "gamma": k})


def test_rnn_names_a_spatial_core_without_the_spatial_protocol():
    class FlatConv:
        def __getattr__(self, name):
            if name in ("check_inputs", "output_spatial_shape"):
                raise AttributeError(name)
            return getattr(F.ConvLSTMCore(2, 1, rank=1), name)

    with pytest.raises(TypeError, match="`core`: a core with 2 feature axes must be a rnnjax.functional.SpatialCore"):
        F.rnn(FlatConv(), None, jnp.ones((1, 2, 3, 1)))


def test_public_with_pointwise_vjp_is_the_derivative():
    """``with_pointwise_vjp`` (its public home) with the LSTM's hand-written VJP gives autodiff's
    reverse-mode derivative of the plain ``pointwise``."""
    core = F.LSTMCore(2, recurrent_activation="sigmoid")
    fn = F.with_pointwise_vjp(core.pointwise, core.pointwise_vjp)
    xp, a, h, c = np.random.default_rng(0).normal(size=(4, 3, 8)).astype(np.float32)
    state = F.LSTMState(h[:, :2], c[:, :2])

    def vjp(pointwise, *args):
        out, back = jax.vjp(lambda *a: pointwise(None, *a), *args)
        return back(jax.tree_util.tree_map(jnp.cos, out))

    got = jax.jit(lambda *args: vjp(fn, *args))(xp, a, state)
    want = jax.jit(lambda *args: vjp(core.pointwise, *args))(xp, a, state)
    for u, v in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(u, v, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("core", [F.LSTMCore(3), F.GRUCore(3)], ids=["matmul_path", "input_additive_path"])
@pytest.mark.parametrize("custom_backward", [True, False])
def test_the_step_runs_in_a_scope_named_after_the_cell(core, custom_backward):
    """Operations of the step carry ``<Core>/`` in their names (the locations of the source lines,
    ``LSTMCore.pointwise``, do not count)."""
    params = core.init(jax.random.key(0), 2)
    text = (
        jax.jit(jax.grad(lambda p: jnp.sum(F.rnn(core, p, X, custom_backward=custom_backward)[0])))
        .lower(params)
        .as_text(debug_info=True)
    )
    name = type(core).__name__
    assert re.search(rf"\b{name}/", text)
