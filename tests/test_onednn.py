"""The oneDNN extra (``rnnjax/onednn/``): oneDNN's fused LSTM/GRU kernels against rnnjax's scan path.

Reference: the scan path (``backend='scan'``), which the kernels, their FFI calls and the dispatch
do not touch (and which ``test_keras_parity.py`` checks against Keras 3): outputs, final states
and gradients (parameters, inputs, initial states) to 1e-5. The dispatch rules are read from the
traced program (``jax.make_jaxpr``: whether it holds oneDNN's primitive), the ``jax.export`` and
partitioned programs from their lowered text. The kernel tests skip, saying why, only where the
extra is not installed (CI installs it); where it is installed they build the kernels (on first use,
into the per-user cache) and fail with the build's message if that fails. The build's error
messages and the fallback are tested everywhere.
"""

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import rnnjax
import rnnjax.functional as F
import rnnjax.nnx as rnx
from rnnjax.layers import path
from rnnjax.onednn import _build, dispatch

needs_onednn = pytest.mark.skipif(
    not _build.installed(), reason="the oneDNN extra is not installed (pip install 'rnnjax[onednn]')"
)
TOL = dict(rtol=1e-5, atol=1e-5)
UNITS = 4
ROWS = dispatch.AUTO_INFER_MIN_WORK // UNITS  # the fewest rows 'auto' runs on oneDNN (units 4)
TRAIN_ROWS = dispatch.AUTO_TRAIN_MIN_WORK // UNITS  # ... and trains on oneDNN
PRIMITIVE = "rnnjax_onednn_rnn_fwd"

CORES = {
    "lstm": F.LSTMCore(4, recurrent_activation="sigmoid"),
    "gru_reset_after": F.GRUCore(4, recurrent_activation="sigmoid", reset_after=True),
    "gru_reset_before": F.GRUCore(4, recurrent_activation="sigmoid"),
}


def rand(seed, shape, scale=0.5):
    """Normal floats made by NumPy (no XLA program compiled per shape, as jax.random would)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32) * scale)


def init_params(core, features, seed=0):
    """Random parameters of ``core``'s shapes (bias included, so a wrong bias mapping cannot hide)."""
    leaves, tree = jax.tree_util.tree_flatten(jax.eval_shape(lambda key: core.init(key, features), jax.random.key(0)))
    return tree.unflatten([rand(seed + k, leaf.shape) for k, leaf in enumerate(leaves)])


def setup(core, batch_shape=(2, 3), steps=5, features=3):
    """Random parameters, inputs, an initial state."""
    params = init_params(core, features)
    x = rand(2, batch_shape + (steps, features), 1.0)
    init = core.initial_state(batch_shape)._make(
        rand(3 + k, batch_shape + (core.units,)) for k in range(len(core.state_size))
    )
    return params, x, init


def assert_trees_close(a, b):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), **TOL)


def takes_onednn(fn, *args, primitive=PRIMITIVE) -> bool:
    return primitive in str(jax.make_jaxpr(fn)(*args))


@needs_onednn
def test_the_installed_extra_builds_and_loads():
    """With the extra installed the kernels compile and load (else the message says what is missing)."""
    assert _build.unavailable_reason() is None


@needs_onednn
@pytest.mark.parametrize("name", list(CORES))
@pytest.mark.parametrize("go_backwards,return_sequences", [(False, True), (True, True), (True, False)])
def test_matches_the_scan_values_and_gradients(name, go_backwards, return_sequences):
    """Outputs, final states and the VJP for random cotangents (parameters, inputs with two batch
    axes, initial state), oneDNN against the scan, in one compiled program."""
    core = CORES[name]
    params, x, init = setup(core)

    def run(backend, params, x, init):
        return F.rnn(
            core,
            params,
            x,
            initial_state=init,
            go_backwards=go_backwards,
            return_sequences=return_sequences,
            backend=backend,
        )

    @jax.jit
    def both(params, x, init):
        results = []
        for backend in ("onednn", "scan"):
            out, vjp = jax.vjp(lambda p, xx, s, backend=backend: run(backend, p, xx, s), params, x, init)
            cts = jax.tree_util.tree_map(lambda a: jnp.cos(jnp.arange(a.size, dtype=a.dtype).reshape(a.shape)), out)
            results.append((out, vjp(cts)))
        return results

    assert takes_onednn(lambda p, xx, s: run("onednn", p, xx, s), params, x, init)
    fused, scanned = both(params, x, init)
    assert_trees_close(fused, scanned)


@needs_onednn
def test_vmap_folds_into_the_batch_and_per_example_gradients():
    """``vmap`` over unbatched sequences equals the batched call; per-example gradients (``vmap``
    of ``grad``, weights shared) equal the scan's."""
    core = CORES["gru_reset_after"]
    params, x, init = setup(core, batch_shape=(4,))

    def loss(backend, p, xx):
        y, s = F.rnn(core, p, xx, return_sequences=True, backend=backend)
        return jnp.sum(jnp.sin(y)) + jnp.sum(s.h**2)

    @jax.jit  # one compiled program (eager op-by-op dispatch would compile every op)
    def both(params, x):
        batched = F.rnn(core, params, x, return_sequences=True, backend="scan")
        mapped = jax.vmap(lambda xx: F.rnn(core, params, xx, return_sequences=True, backend="onednn"))(x)
        per_example = {
            b: jax.vmap(jax.grad(lambda p, xx, b=b: loss(b, p, xx)), in_axes=(None, 0))(params, x)
            for b in ("onednn", "scan")
        }
        return batched, mapped, per_example

    batched, mapped, per_example = both(params, x)
    assert_trees_close(mapped, batched)
    assert_trees_close(per_example["onednn"], per_example["scan"])


@needs_onednn
def test_layers_linen_nnx_and_shared_input_dropout():
    """The linen LSTM with ``implementation=2`` input dropout in training (one shared mask,
    applied before the kernel) and the NNX GRU: ``backend='onednn'`` equals ``'scan'``."""
    x = rand(5, (2, 6, 3), 1.0)
    kw = dict(recurrent_activation="sigmoid", implementation=2, dropout=0.3, return_sequences=True, return_state=True)
    variables = jax.jit(rnnjax.LSTM(4, **kw).init)(jax.random.key(0), x)
    rngs = {"dropout": jax.random.key(7)}

    def loss(backend, v):
        out = rnnjax.LSTM(4, backend=backend, **kw).apply(v, x, training=True, rngs=rngs)
        return sum(jnp.sum(jnp.tanh(o)) for o in out), out

    results = jax.jit(
        lambda v: {b: jax.value_and_grad(lambda v, b=b: loss(b, v), has_aux=True)(v) for b in ("onednn", "scan")}
    )(variables)
    assert_trees_close(results["onednn"], results["scan"])

    layer = rnx.GRU(
        4,
        recurrent_activation="sigmoid",
        reset_after=True,
        return_sequences=True,
        backend="onednn",
        input_dim=3,
        rngs=nnx.Rngs(0),
    )
    call = nnx.jit(lambda m, xx: m(xx))
    assert takes_onednn(lambda xx: layer(xx), x)
    fused = call(layer, x)
    layer.backend = "scan"
    assert not takes_onednn(lambda xx: layer(xx), x)
    np.testing.assert_allclose(np.asarray(fused), np.asarray(call(layer, x)), **TOL)


def _lstm_call(rows=ROWS, **options):
    """``(fn, args)``: a sigmoid LSTM call through ``rnnjax.functional.rnn`` with ``options``."""
    core = F.LSTMCore(UNITS, recurrent_activation=options.pop("recurrent_activation", "sigmoid"))
    dtype = options.pop("dtype", jnp.float32)
    params = jax.tree_util.tree_map(lambda a: a.astype(dtype), init_params(core, 3))
    shape = rows if isinstance(rows, tuple) else (rows,)
    x = rand(1, shape + (5, 3)).astype(dtype)
    return (lambda p, xx: F.rnn(core, p, xx, **options)), (params, x)


def _masks(kind):
    shape = (4, ROWS, 3) if kind == "per_gate" else (1, ROWS, 3 if kind == "shared" else 4)
    return jnp.ones(shape)


# (case, options, whether 'auto' takes oneDNN): each row that must fall back does
AUTO_CASES = [
    ("plain", {}, True),
    ("rows split over two batch axes", {"rows": (2, ROWS // 2)}, True),
    ("one row fewer than AUTO_INFER_MIN_WORK / units", {"rows": ROWS - 1}, False),
    ("hard sigmoid", {"recurrent_activation": "hard_sigmoid"}, False),
    ("a mask with holes", {"mask": jnp.arange(5) < jnp.arange(ROWS)[:, None] % 6}, False),
    ("a mask without holes", {"mask": jnp.ones((ROWS, 5), bool)}, False),
    ("a reset", {"reset": jnp.arange(5) == jnp.arange(ROWS)[:, None] % 5}, False),
    ("shared input dropout mask", {"dropout_mask": _masks("shared")}, True),
    ("per-gate input dropout masks", {"dropout_mask": _masks("per_gate")}, False),
    ("recurrent dropout", {"recurrent_dropout_mask": _masks("recurrent")}, False),
    ("custom_backward=False", {"custom_backward": False}, False),
    ("remat", {"remat": True}, False),
    ("unroll", {"unroll": True}, False),
    ("bfloat16", {"dtype": jnp.bfloat16}, False),
    ("backend='scan'", {"backend": "scan"}, False),
]


@needs_onednn
@pytest.mark.parametrize("case,options,expected", AUTO_CASES, ids=[c[0] for c in AUTO_CASES])
def test_auto_takes_onednn_only_where_it_computes_the_scan(case, options, expected):
    options = dict(options)
    rows = options.pop("rows", ROWS)
    fn, args = _lstm_call(rows, **options)
    assert takes_onednn(fn, *args) is expected, case


@needs_onednn
@pytest.mark.parametrize("rows,expected", [(ROWS, False), (TRAIN_ROWS, True)])
def test_auto_trains_on_onednn_from_its_own_size(rows, expected):
    """A differentiated call takes oneDNN's backward from AUTO_TRAIN_MIN_WORK on; below it (but
    above the inference size) its gradient is the scan's and only the undifferentiated call is oneDNN's."""
    fn, args = _lstm_call(rows)

    def loss(p, xx):  # two rows' outputs: sums of few terms, so float32 rounding stays below 1e-5
        return jnp.sum(fn(p, xx)[0][:2])

    assert takes_onednn(jax.grad(loss), *args, primitive="rnnjax_onednn_rnn_bwd") is expected
    assert takes_onednn(fn, *args)
    scan_loss = (
        lambda p, xx: jnp.sum(
            F.rnn(
                F.LSTMCore(UNITS, recurrent_activation="sigmoid"),
                p,
                xx,  # noqa: E731
                backend="scan",
            )[0][:2]
        )
    )
    assert_trees_close(*jax.jit(lambda *a: [jax.value_and_grad(f)(*a) for f in (loss, scan_loss)])(*args))


@needs_onednn
def test_auto_keeps_the_scan_on_a_mesh_and_under_export():
    """Inputs committed to a 2-device mesh: the scan at trace time. A ``jit`` partitioned by
    ``in_shardings`` alone (the trace sees one device) and ``jax.export`` (no custom call can be
    serialised): the lowering holds the scan, not the custom call, and computes the same."""
    fn, (params, x) = _lstm_call(return_sequences=True)
    expected = fn(params, x)
    mesh = jax.make_mesh((2,), ("data",), devices=jax.devices()[:2])
    rows, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    assert not takes_onednn(fn, params, jax.device_put(x, rows))
    partitioned = jax.jit(fn, in_shardings=(replicated, rows))
    assert "rnnjax_onednn" not in partitioned.lower(params, x).as_text()
    assert_trees_close(partitioned(params, x), expected)
    exported = jax.export.export(jax.jit(jax.value_and_grad(lambda p, xx: jnp.sum(fn(p, xx)[0]))))(params, x)
    assert "rnnjax_onednn" not in exported.mlir_module()
    assert "rnnjax_onednn" in jax.jit(fn).lower(params, x).as_text()  # the same call, not exported
    assert_trees_close(
        exported.call(params, x),
        jax.value_and_grad(
            lambda p, xx: jnp.sum(
                F.rnn(F.LSTMCore(4, recurrent_activation="sigmoid"), p, xx, return_sequences=True, backend="scan")[0]
            )
        )(params, x),
    )


@needs_onednn
def test_cudnn_layers_auto_uses_onednn_on_the_cpu():
    x = rand(5, (ROWS, 4, 3))
    layer = rnnjax.CuDNNGRU(4)
    variables = layer.init(jax.random.key(0), x)
    assert takes_onednn(lambda v: layer.apply(v, x), variables)
    assert not takes_onednn(lambda v: rnnjax.CuDNNGRU(4, backend="scan").apply(v, x), variables)
    np.testing.assert_allclose(
        np.asarray(layer.apply(variables, x)), np.asarray(rnnjax.CuDNNGRU(4, backend="scan").apply(variables, x)), **TOL
    )


@pytest.mark.parametrize(
    "options,message",
    [
        ({"recurrent_activation": "hard_sigmoid"}, "recurrent_activation='hard_sigmoid'"),
        ({"mask": jnp.ones((ROWS, 5), bool)}, "a mask"),
        ({"reset": jnp.zeros((ROWS, 5), bool)}, "a reset"),
        ({"recurrent_dropout_mask": _masks("recurrent")}, "recurrent dropout"),
        ({"custom_backward": False}, "custom_backward=False"),
    ],
)
def test_onednn_backend_says_why_not(options, message):
    fn, args = _lstm_call(backend="onednn", **options)
    with pytest.raises(ValueError, match=f"backend='onednn'.*{message}"):
        fn(*args)


def test_onednn_backend_errors_for_other_cells_and_bad_values():
    x = rand(1, (2, 5, 3))
    with pytest.raises(ValueError, match="SimpleRNNCore has no oneDNN kernel"):
        core = F.SimpleRNNCore(4)
        F.rnn(core, init_params(core, 3), x, backend="onednn")
    with pytest.raises(ValueError, match="`backend`: expected one of .*'auto', 'scan', 'onednn'.*got 'cudnn'"):
        F.rnn(F.LSTMCore(4), init_params(F.LSTMCore(4), 3), x, backend="cudnn")
    core = F.LSTMCore(4, recurrent_activation="sigmoid")
    program = rnnjax.functional.core.core_program(core, init_params(core, 3))
    stacked = path.stack_programs([program, program], (2,), jnp.float32)
    with pytest.raises(ValueError, match="backend='onednn'.*no oneDNN kernel"):
        path.drive(stacked, x, (core.initial_state((2,)),) * 2, path.CallOptions(backend="onednn"))


def test_unavailable_kernels_fall_back_or_say_what_is_missing(monkeypatch):
    """Without the kernels (here: made unavailable) 'auto' runs the scan, with one warning saying
    why where the extra is installed (silently where it is not), and 'onednn' names the reason."""
    monkeypatch.setattr(_build, "unavailable_reason", lambda: "no C++ compiler found (test)")
    monkeypatch.setattr(dispatch, "_warned", [])
    fn, args = _lstm_call()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not takes_onednn(fn, *args)
        assert not takes_onednn(fn, *args)
    caught = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    if _build.installed():
        assert len(caught) == 1 and "backend='auto' runs the scan path: no C++ compiler found (test)" in caught[0]
    else:
        assert caught == []
    fn, args = _lstm_call(backend="onednn")
    with pytest.raises(ValueError, match=r"backend='onednn'.*no C\+\+ compiler found \(test\)"):
        fn(*args)


def test_build_errors_name_what_is_missing_and_how_to_get_it(monkeypatch):
    monkeypatch.setattr(_build, "RUNTIME", "no-such-onednn-wheel")
    with pytest.raises(
        _build.OneDNNUnavailable, match=r"no no-such-onednn-wheel wheel found.*pip install 'rnnjax\[onednn\]'"
    ):
        _build._Plan()
    monkeypatch.undo()
    monkeypatch.setattr(_build, "_wheel_file", lambda dist, suffix: _build.Path("/x/include/oneapi/dnnl/dnnl.hpp"))
    monkeypatch.setenv("CXX", "/no/such/compiler")
    with pytest.raises(_build.OneDNNUnavailable, match=r"\$CXX is '/no/such/compiler', which is not an executable"):
        _build._Plan()
    monkeypatch.delenv("CXX")
    monkeypatch.setenv("PATH", "/no/such/folder")
    with pytest.raises(
        _build.OneDNNUnavailable,
        match=r"no C\+\+ compiler found.*g\+\+, c\+\+, clang\+\+ on "
        r"PATH.*apt-get install g\+\+",
    ):
        _build._Plan()


@needs_onednn
def test_build_is_cached_per_source(monkeypatch, tmp_path):
    """The cached library is reused (not rebuilt) and a changed source gets another file; a
    source that does not compile gives the compiler's message."""
    plan = _build._Plan()
    built = plan.build()
    stamp = os.stat(built).st_mtime_ns
    assert _build._Plan().build() == built and os.stat(built).st_mtime_ns == stamp
    monkeypatch.setenv("RNNJAX_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_build.importlib.resources, "files", lambda _: _Source(b"this is not C++"))
    broken = _build._Plan()
    assert broken.target.parent == tmp_path / "onednn" and broken.target.name != built.name
    with pytest.raises(_build.OneDNNUnavailable, match="compiling rnnjax's oneDNN kernels failed"):
        broken.build()
    assert not broken.target.exists()


class _Source:
    def __init__(self, text):
        self.text = text

    def joinpath(self, name):
        return self

    def read_bytes(self):
        return self.text
