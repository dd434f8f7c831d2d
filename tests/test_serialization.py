"""Nothing lost: parameters and stateful states survive a save/restore bit for bit (Orbax and
``flax.serialization``), a restored stateful model continues its sequence exactly where it
stopped, and mixed precision (bfloat16 inputs and/or parameters, float32 states) works."""

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from catalogue import layer

KINDS = ["simple_rnn", "gru", "lstm", "stack"]


def make(kind, **kw):
    """A 4-unit layer of catalogue variant ``kind`` (a stack's ``param_dtype`` reaches its cells)."""
    return layer(kind, 4, **kw)


def _data(seed=0, shape=(2, 9, 3)):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _advance(layer, variables, x):
    """One stateful call; returns (output, updated variables)."""
    y, upd = layer.apply(variables, x, mutable=["rnn_state"])
    return y, {**variables, **upd}


def _assert_bitwise(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for u, v in zip(la, lb):
        assert u.dtype == v.dtype and u.shape == v.shape
        np.testing.assert_array_equal(np.asarray(u).view(np.uint8), np.asarray(v).view(np.uint8))


def _orbax_roundtrip(tmp_path, tree):
    path = tmp_path / "ckpt"
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path, tree)
    ckptr.wait_until_finished()
    target = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
    return ckptr.restore(path, target)


def _bytes_roundtrip(tree):
    template = jax.tree_util.tree_map(jnp.zeros_like, tree)
    return flax.serialization.from_bytes(template, flax.serialization.to_bytes(tree))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["orbax", "flax_bytes"])
@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_stateful_roundtrip_continues_exactly(tmp_path, kind, method, param_dtype):
    layer = make(kind, stateful=True, return_sequences=True, param_dtype=param_dtype)
    x = _data()
    first, second = x[:, :5], x[:, 5:]
    v = layer.init(jax.random.key(0), first)
    _, v = _advance(layer, v, first)  # states now non-zero
    assert any(np.any(np.asarray(s) != 0) for s in jax.tree_util.tree_leaves(v["rnn_state"]))
    restored = _orbax_roundtrip(tmp_path, v) if method == "orbax" else _bytes_roundtrip(v)
    _assert_bitwise(restored, v)
    y_cont, v_cont = _advance(layer, v, second)
    y_rest, v_rest = _advance(layer, restored, second)
    _assert_bitwise(y_rest, y_cont)
    _assert_bitwise(v_rest["rnn_state"], v_cont["rnn_state"])
    # ... and the continuation is the whole sequence's tail (up to float rounding of the split)
    whole = make(kind, return_sequences=True, param_dtype=param_dtype)
    y_whole = whole.apply({"params": v["params"]}, x)
    np.testing.assert_allclose(
        np.asarray(y_rest, np.float32), np.asarray(y_whole[:, 5:], np.float32), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_params_roundtrip_with_regular_model(tmp_path, kind):
    layer = make(kind, return_sequences=True, return_state=True)
    x = _data(1)
    v = layer.init(jax.random.key(3), x)
    for restored in (_orbax_roundtrip(tmp_path, v), _bytes_roundtrip(v)):
        _assert_bitwise(restored, v)
        _assert_bitwise(layer.apply(restored, x), layer.apply(v, x))


# ----- mixed precision -----------------------------------------------------------------------

BF16_TOL = dict(rtol=5e-2, atol=3e-2)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "x_dtype,param_dtype",
    [(jnp.bfloat16, jnp.float32), (jnp.float32, jnp.bfloat16), (jnp.bfloat16, jnp.bfloat16)],
    ids=["x_bf16", "p_bf16", "both_bf16"],
)
def test_mixed_precision_states_stay_float32(kind, x_dtype, param_dtype):
    x32 = _data(2)
    ref_layer = make(kind, return_sequences=True, return_state=True)
    v32 = ref_layer.init(jax.random.key(0), x32)
    ref = ref_layer.apply(v32, x32)

    layer = make(kind, return_sequences=True, return_state=True, param_dtype=param_dtype)
    v = layer.init(jax.random.key(0), x32.astype(x_dtype))
    for a in jax.tree_util.tree_leaves(v["params"]):
        assert a.dtype == param_dtype
    v = {"params": jax.tree_util.tree_map(lambda a: a.astype(param_dtype), v32["params"])}
    y, *states = layer.apply(v, x32.astype(x_dtype))
    for s in states:
        assert s.dtype == jnp.float32, s.dtype
    assert np.all(np.isfinite(np.asarray(y, np.float32)))
    for a, b in zip([y, *states], ref):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b), **BF16_TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_mixed_precision_stateful(kind):
    """bfloat16 inputs and parameters, stateful: the stored states are float32 across calls and
    the chunked run follows the float32 one."""
    x = _data(4)
    ref_layer = make(kind, stateful=True, return_sequences=True)
    v32 = ref_layer.init(jax.random.key(0), x[:, :4])
    layer = make(kind, stateful=True, return_sequences=True, param_dtype=jnp.bfloat16)
    v = layer.init(jax.random.key(0), x[:, :4].astype(jnp.bfloat16))
    v = {**v, "params": jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), v32["params"])}
    for sl in (slice(0, 4), slice(4, 9)):
        y, v = _advance(layer, v, x[:, sl].astype(jnp.bfloat16))
        y32, v32 = _advance(ref_layer, v32, x[:, sl])
        for s in jax.tree_util.tree_leaves(v["rnn_state"]):
            assert s.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y32), **BF16_TOL)
    _, updates = layer.apply(v, method="reset_states", mutable=["rnn_state"])
    for s in jax.tree_util.tree_leaves(updates["rnn_state"]):
        assert s.dtype == jnp.float32 and not np.any(np.asarray(s))
