"""The layers around the recurrent ones (rnnjax.layers.KERAS_LAYERS: reshaping, activations,
merges, convolutions, pooling, normalization, attention) against Keras 3 on the JAX backend,
layer by layer: outputs and output masks (masks attached to the inputs as Keras 3 carries them)
with Keras's weights; the NNX twins against the linen layers with converted variables;
``check_grads`` where a layer has weights; Keras 2's semantics where they differ (float64 numpy
references); errors that name the argument."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402
from jax.test_util import check_grads  # noqa: E402
from keras.src.backend import get_keras_mask, set_keras_mask  # noqa: E402
from nnx_util import linen_grads, nnx_grads  # noqa: E402

import rnnjax  # noqa: E402
import rnnjax.nnx as rnx  # noqa: E402
from rnnjax.layers.attention import attention  # noqa: E402
from rnnjax.layers.protocol import accepts  # noqa: E402

TOL = 1e-5
B = 2
M1 = np.array([[1, 0, 1, 1], [1, 1, 1, 0]], bool)  # holes and right padding, (B, 4)
M2 = np.array([[0, 1, 1, 1], [1, 1, 0, 0]], bool)
M3 = np.array([[0, 0, 1, 1], [1, 0, 0, 0]], bool)
FULL = np.random.default_rng(5).random((B, 3, 4)) > 0.4  # a Softmax mask of the inputs' shape
FULL[0, 1] = False  # one row masked everywhere
VERSIONED = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "Dot", "Softmax"}

# (Keras class, arguments, input shapes, masks per input, input_dim of the NNX twin, call arguments)
CASES = {
    "repeat_vector": ("RepeatVector", {"n": 3}, [(B, 4)], None, None, {}),
    "reshape": ("Reshape", {"target_shape": (3, -1)}, [(B, 4, 3)], [M1], None, {}),
    "permute": ("Permute", {"dims": (2, 1)}, [(B, 4, 3)], [M1], None, {}),
    "permute_3": ("Permute", {"dims": (3, 1, 2)}, [(B, 4, 3, 2)], None, None, {}),
    "flatten_first": ("Flatten", {"data_format": "channels_first"}, [(B, 3, 2, 2)], None, None, {}),
    "zero_padding": ("ZeroPadding1D", {"padding": (1, 2)}, [(B, 4, 3)], [M1], None, {}),
    "zero_padding_first": (
        "ZeroPadding1D",
        {"padding": 2, "data_format": "channels_first"},
        [(B, 3, 4)],
        None,
        None,
        {},
    ),
    "cropping": ("Cropping1D", {"cropping": (1, 2)}, [(B, 4, 3)], [M1], None, {}),
    "up_sampling": ("UpSampling1D", {"size": 3}, [(B, 4, 3)], [M1], None, {}),
    "relu": ("ReLU", {}, [(B, 4, 3)], [M1], None, {}),
    "relu_all": ("ReLU", {"max_value": 1.5, "negative_slope": 0.2, "threshold": 0.3}, [(B, 4, 3)], None, None, {}),
    "relu_slope": ("ReLU", {"negative_slope": 0.1}, [(B, 4, 3)], None, None, {}),
    "relu6_threshold": ("ReLU", {"max_value": 6.0, "threshold": 0.5}, [(B, 4, 3)], None, None, {}),
    "leaky_relu": ("LeakyReLU", {"negative_slope": 0.2}, [(B, 4, 3)], [M1], None, {}),
    "softmax_mask": ("Softmax", {}, [(B, 3, 4)], [FULL], None, {}),
    "softmax_axes": ("Softmax", {"axis": (1, 2)}, [(B, 3, 4)], [FULL[:, :1]], None, {}),
    "add": ("Add", {}, [(B, 4, 3)] * 3, [M1, M2, M3], None, {}),
    "add_one_mask": ("Add", {}, [(B, 4, 3)] * 2, [M1, None], None, {}),
    "add_ranks": ("Add", {}, [(B, 3), (B, 4, 3)], None, None, {}),
    "subtract": ("Subtract", {}, [(B, 4, 3)] * 2, [M1, M2], None, {}),
    "multiply": ("Multiply", {}, [(B, 4, 3)] * 3, [M1, M2, M3], None, {}),
    "multiply_one_mask": ("Multiply", {}, [(B, 4, 3)] * 2, [None, M2], None, {}),
    "average": ("Average", {}, [(B, 4, 3)] * 2, [M1, M2], None, {}),
    "maximum": ("Maximum", {}, [(B, 4, 3)] * 3, [M1, M2, M3], None, {}),
    "minimum": ("Minimum", {}, [(B, 4, 3)] * 2, [M1, M2], None, {}),
    "minimum_first_unmasked": ("Minimum", {}, [(B, 4, 3)] * 2, [None, M2], None, {}),
    "concatenate": ("Concatenate", {}, [(B, 4, 3), (B, 4, 2)], [M1, None], None, {}),
    "concatenate_time": ("Concatenate", {"axis": 1}, [(B, 4, 3), (B, 4, 3)], [M1, M2], None, {}),
    "dot": ("Dot", {"axes": (2, 2)}, [(B, 3, 4), (B, 5, 4)], None, None, {}),
    "dot_cross": ("Dot", {"axes": (1, 2)}, [(B, 3, 4), (B, 5, 3)], None, None, {}),
    "dot_normalize": ("Dot", {"axes": 1, "normalize": True}, [(B, 4), (B, 4)], None, None, {}),
    "dot_rank_2_3": ("Dot", {"axes": -1}, [(B, 4), (B, 3, 4)], None, None, {}),
    "conv1d_causal": (
        "Conv1D",
        {"filters": 3, "kernel_size": 2, "padding": "causal", "dilation_rate": 2},
        [(B, 7, 2)],
        [np.ones((B, 7), bool)],
        2,
        {},
    ),
    "conv1d_groups": (
        "Conv1D",
        {"filters": 4, "kernel_size": 3, "strides": 2, "padding": "same", "groups": 2, "activation": "relu"},
        [(B, 7, 4)],
        None,
        4,
        {},
    ),
    "conv1d_first": (
        "Conv1D",
        {"filters": 2, "kernel_size": 3, "data_format": "channels_first"},
        [(B, 3, 6)],
        None,
        3,
        {},
    ),
    "conv2d": (
        "Conv2D",
        {"filters": 3, "kernel_size": (2, 3), "strides": (2, 1), "padding": "same", "activation": "tanh"},
        [(B, 5, 6, 2)],
        None,
        2,
        {},
    ),
    "conv2d_first": (
        "Conv2D",
        {"filters": 2, "kernel_size": 2, "dilation_rate": (2, 1), "use_bias": False, "data_format": "channels_first"},
        [(B, 2, 5, 4)],
        None,
        2,
        {},
    ),
    "conv3d": ("Conv3D", {"filters": 2, "kernel_size": 2, "padding": "same"}, [(B, 3, 4, 4, 1)], None, 1, {}),
    "max_pool1d": ("MaxPooling1D", {"pool_size": 2}, [(B, 7, 3)], [np.ones((B, 7), bool)], None, {}),
    "avg_pool1d_same": (
        "AveragePooling1D",
        {"pool_size": 3, "strides": 2, "padding": "same"},
        [(B, 7, 3)],
        None,
        None,
        {},
    ),
    "max_pool2d": ("MaxPooling2D", {"pool_size": (2, 2)}, [(B, 5, 5, 2)], None, None, {}),
    "avg_pool2d_first": (
        "AveragePooling2D",
        {"pool_size": 2, "strides": 1, "padding": "same", "data_format": "channels_first"},
        [(B, 2, 4, 3)],
        None,
        None,
        {},
    ),
    "global_max1d": ("GlobalMaxPooling1D", {}, [(B, 4, 3)], [M1], None, {}),
    "global_avg1d_mask": ("GlobalAveragePooling1D", {"keepdims": True}, [(B, 4, 3)], [M1], None, {}),
    "global_max2d": ("GlobalMaxPooling2D", {"keepdims": True}, [(B, 3, 4, 2)], None, None, {}),
    "global_avg2d_first": ("GlobalAveragePooling2D", {"data_format": "channels_first"}, [(B, 2, 3, 4)], None, None, {}),
    "batch_norm": ("BatchNormalization", {"axis": 1}, [(B, 4, 3)], [M1], 4, {}),
    "layer_norm": ("LayerNormalization", {"axis": (1, 2)}, [(B, 4, 3)], None, (4, 3), {}),
    "layer_norm_rms": ("LayerNormalization", {"rms_scaling": True}, [(B, 4, 3)], [M1], 3, {}),
    "attention": ("Attention", {}, [(B, 3, 4), (B, 4, 4)], [M2[:, :3], M1], None, {}),
    "attention_scaled_concat_key": (
        "Attention",
        {"use_scale": True, "score_mode": "concat"},
        [(B, 3, 4), (B, 4, 2), (B, 4, 4)],
        [None, M1],
        None,
        {"return_attention_scores": True},
    ),
    "attention_causal": (
        "Attention",
        {"use_scale": True},
        [(B, 4, 3), (B, 4, 3)],
        [M1, M1],
        None,
        {"use_causal_mask": True},
    ),
    "additive_attention": (
        "AdditiveAttention",
        {},
        [(B, 3, 4), (B, 4, 4)],
        [None, M1],
        4,
        {"return_attention_scores": True},
    ),
    "additive_attention_unscaled": (
        "AdditiveAttention",
        {"use_scale": False},
        [(B, 4, 2), (B, 4, 2)],
        [M1, M1],
        None,
        {"use_causal_mask": True},
    ),
}


def _inputs(shapes, seed):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(np.float32) for s in shapes]


def _keras_run(cls, kw, xs, masks, call):
    """Keras 3's layer (random weights), its output and its output mask."""
    layer = getattr(keras.layers, cls)(**kw)
    arrays = [jnp.asarray(x) for x in xs]
    for a, m in zip(arrays, masks or [None] * len(xs)):
        if m is not None:
            set_keras_mask(a, jnp.asarray(m))
    args = arrays if len(arrays) > 1 else arrays[0]
    layer(args, **call)  # builds the weights
    rng = np.random.default_rng(1)
    for w in layer.weights:
        value = rng.normal(scale=0.5, size=w.shape)
        w.assign((np.abs(value) + 0.5 if "variance" in w.path else value).astype(np.float32))
    out = layer(args, **call)
    first = out[0] if isinstance(out, (tuple, list)) else out
    return layer, out, get_keras_mask(first)


def _linen_variables(layer, klayer, xs, mask_kw, call):
    variables = jax.tree_util.tree_map(np.asarray, layer.init(jax.random.key(0), *xs, **mask_kw, **call))
    variables = {col: dict(tree) for col, tree in variables.items()}
    for w in klayer.weights:
        col = "batch_stats" if w.name.startswith("moving") else "params"
        assert w.name in variables.get(col, {}), (w.name, variables)
        variables[col][w.name] = np.asarray(w)
    assert sum(len(t) for t in variables.values()) == len(klayer.weights)
    return variables


def _close(a, b, atol=TOL):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for u, v in zip(la, lb):
        assert np.shape(u) == np.shape(v)
        np.testing.assert_allclose(np.asarray(u, np.float64), np.asarray(v, np.float64), atol=atol, rtol=atol)


def _twin(cls, kw, input_dim):
    extra = {} if input_dim is None else {"input_dim": input_dim}
    return getattr(rnx, cls)(**kw, **extra, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_matches_keras3_and_nnx_twin(case):
    cls, kw, shapes, masks, input_dim, call = CASES[case]
    xs = _inputs(shapes, seed=len(case))
    klayer, expected, kmask = _keras_run(cls, kw, xs, masks, call)
    ours = getattr(rnnjax, cls)(**kw, **({"keras_version": 3} if cls in VERSIONED else {}))
    args = [xs] if len(xs) > 1 else xs
    given = None if masks is None else (masks if len(xs) > 1 else masks[0])
    mask_kw = {"mask": given} if given is not None and accepts(ours, "mask") else {}
    variables = _linen_variables(ours, klayer, args, mask_kw, call)
    got = ours.apply(variables, *args, **mask_kw, **call)
    _close(got, tuple(expected) if isinstance(expected, (tuple, list)) else expected)
    mask = ours.compute_mask(args[0], given)
    assert (mask is None) == (kmask is None), (mask, kmask)
    if mask is not None:
        np.testing.assert_array_equal(np.asarray(mask), np.asarray(kmask))
    twin = _twin(cls, {**kw, **({"keras_version": 3} if cls in VERSIONED else {})}, input_dim)
    rnx.from_linen(twin, variables)
    _close(twin(*args, **mask_kw, **call), got, atol=1e-6)
    _close(rnx.to_linen(twin), {k: v for k, v in variables.items() if v})
    twin_mask = twin.compute_mask(args[0], given)
    assert (twin_mask is None) == (mask is None)


@pytest.mark.parametrize(
    "case", ["conv2d", "batch_norm", "layer_norm", "attention_scaled_concat_key", "additive_attention"]
)
def test_weighted_layer_gradients_and_nnx_twin_gradients(case):
    cls, kw, shapes, masks, _, call = CASES[case]
    layer = getattr(rnnjax, cls)(**kw)
    with jax.enable_x64(True):
        xs = [jnp.asarray(x, jnp.float64) for x in _inputs(shapes, 3)]
        args = [xs] if len(xs) > 1 else xs
        mask_kw = {"mask": masks if len(xs) > 1 else masks[0]} if masks is not None and accepts(layer, "mask") else {}
        variables = layer.init(jax.random.key(0), *args, **mask_kw, **call)
        params = jax.tree_util.tree_map(
            lambda a: jnp.asarray(np.random.default_rng(2).normal(size=a.shape)), variables["params"]
        )

        def loss(params, xs):
            out = layer.apply({**variables, "params": params}, *([xs] if len(xs) > 1 else xs), **mask_kw, **call)
            return sum(jnp.sum(jnp.sin(o)) for o in jax.tree_util.tree_leaves(out))

        check_grads(loss, (params, xs), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)
    # The NNX twin's gradients are the linen layer's, on the same (converted) variables.
    x = xs if len(xs) > 1 else xs[0]
    x = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), x)
    variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), {**variables, "params": params})
    twin = _twin(cls, kw, CASES[case][4])
    rnx.from_linen(twin, variables)
    _close(nnx_grads(twin, x, **mask_kw, **call), linen_grads(layer, variables, x, **mask_kw, **call), atol=1e-5)


def _np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_keras2_softmax_adds_a_large_negative_and_keeps_masked_rows():
    """tf-keras's Softmax: ``softmax(x + (1 - m) * -1e9)``, no zeroing, so a row masked everywhere is
    ``softmax(x)``; ``robust_masking``: ``where(m, x, -1e9)`` (tf_keras/layers/activation/softmax.py)."""
    x = _inputs([(B, 3, 4)], 7)[0].astype(np.float64)
    with jax.enable_x64(True):
        got = rnnjax.Softmax().apply({}, jnp.asarray(x), mask=jnp.asarray(FULL))
        robust = rnnjax.Softmax(robust_masking=True).apply({}, jnp.asarray(x), mask=jnp.asarray(FULL))
    want = _np_softmax(x + (1.0 - FULL) * -1e9)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-12)
    np.testing.assert_allclose(np.asarray(got)[0, 1], _np_softmax(x[0, 1]), atol=1e-12)  # masked row
    np.testing.assert_allclose(np.asarray(robust), _np_softmax(np.where(FULL, x, -1e9)), atol=1e-12)


def test_keras2_merges_and_their_masks():
    """tf-keras merges ignore masks in the values and AND the masks given (an input without one
    is left out; base_merge.py::compute_mask); Keras 2's Dot normalizes with eps 1e-12."""
    a, b = (x.astype(np.float64) for x in _inputs([(B, 4, 3)] * 2, 8))
    with jax.enable_x64(True):
        for layer, want in (
            (rnnjax.Multiply(), a * b),
            (rnnjax.Maximum(), np.maximum(a, b)),
            (rnnjax.Minimum(), np.minimum(a, b)),
            (rnnjax.Subtract(), a - b),
            (rnnjax.Average(), (a + b) / 2),
        ):
            np.testing.assert_allclose(np.asarray(layer.apply({}, [a, b], mask=[M1, M2])), want, atol=1e-12)
            np.testing.assert_array_equal(layer.compute_mask([a, b], [M1, M2]), M1 & M2)
            np.testing.assert_array_equal(layer.compute_mask([a, b], [None, M2]), M2)
        tiny = np.full((B, 4), 2e-7)  # sum of squares 1.6e-13, below Keras 2's eps, above Keras 3's
        dot2 = rnnjax.Dot(1, normalize=True).apply({}, [tiny, tiny])
        dot3 = rnnjax.Dot(1, normalize=True, keras_version=3).apply({}, [tiny, tiny])
    np.testing.assert_allclose(np.asarray(dot2), np.full((B, 1), 1.6e-13 / 1e-12), rtol=1e-9)
    np.testing.assert_allclose(np.asarray(dot3), np.ones((B, 1)), rtol=1e-9)
    mask = rnnjax.Concatenate(axis=1).compute_mask([a, b], [M1, None])
    np.testing.assert_array_equal(mask, np.concatenate([M1, np.ones_like(M2)], 1))


def test_keras2_leaky_relu_alpha_and_attention_causal():
    """Keras 2's spellings: LeakyReLU(alpha=...), Attention(causal=True) (tf-keras <= 2.10)."""
    x = _inputs([(B, 4, 3)], 9)[0].astype(np.float64)
    np.testing.assert_allclose(np.asarray(rnnjax.LeakyReLU(alpha=0.1).apply({}, x)), np.where(x > 0, x, 0.1 * x))
    q, v = (a.astype(np.float64) for a in _inputs([(B, 4, 3), (B, 4, 3)], 10))
    with jax.enable_x64(True):
        got = rnnjax.Attention(causal=True).apply({}, [q, v], mask=[None, M1])
    scores = np.einsum("bid,bjd->bij", q, v)
    keep = M1[:, None, :] & np.tril(np.ones((4, 4), bool))[None]
    np.testing.assert_allclose(
        np.asarray(got), np.einsum("bij,bjd->bid", _np_softmax(np.where(keep, scores, scores - 1e9)), v), atol=1e-12
    )


def test_attention_dropout_drops_weights_only_in_training():
    """``w * keep / (1 - rate)`` on the softmax weights (Keras 2 and 3), keep ~ Bernoulli(1 - rate)."""
    q, v = _inputs([(B, 3, 2), (B, 4, 2)], 11)
    scores = np.einsum("bid,bjd->bij", q, v).astype(np.float64)
    key = jax.random.key(4)
    with jax.enable_x64(True):
        out, weights = attention(jnp.asarray(scores), jnp.asarray(v, jnp.float64), dropout=0.25, key=key)
        kept = np.asarray(jax.random.bernoulli(key, 0.75, scores.shape))
    want = _np_softmax(scores) * kept / 0.75
    np.testing.assert_allclose(np.asarray(weights), want, atol=1e-12)
    np.testing.assert_allclose(np.asarray(out), want @ v, atol=1e-6)
    layer = rnnjax.Attention(dropout=0.5)
    eval_out = layer.apply({}, [q, v])
    np.testing.assert_allclose(np.asarray(layer.apply({}, [q, v], training=False)), eval_out)
    train = layer.apply({}, [q, v], training=True, rngs={"dropout": key})
    assert not np.allclose(np.asarray(train), np.asarray(eval_out))
    twin = rnx.Attention(dropout=0.5, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(np.asarray(twin([q, v], training=False)), eval_out, atol=1e-6)
    assert not np.allclose(np.asarray(twin([q, v], training=True)), np.asarray(eval_out))


ERRORS = [
    (lambda: rnnjax.Conv2D(2, 3, data_format="NHWC"), "`data_format`.*'NHWC'"),
    (lambda: rnnjax.Conv2D(2, 3, padding="causal"), "`padding`.*'valid', 'same'.*'causal'"),
    (lambda: rnnjax.Conv1D(2, 3, strides=2, dilation_rate=2), "`dilation_rate`.*strides"),
    (lambda: rnnjax.Conv1D(3, 3, groups=2), "`filters`: 3 is not divisible by groups=2"),
    (lambda: rnnjax.MaxPooling2D(padding="full"), "`padding`.*'full'"),
    (lambda: rnnjax.AveragePooling1D(pool_size=(2, 2)), "`pool_size`.*tuple of 1"),
    (lambda: rnnjax.Reshape((2, -1, -1)), "`target_shape`.*at most one -1.*"),
    (lambda: rnnjax.Permute((1, 3)), "`dims`.*permutation"),
    (lambda: rnnjax.RepeatVector(0), "`n`: expected a positive integer, got 0"),
    (lambda: rnnjax.Cropping1D((1, -1)), "`cropping`.*non-negative.*-1"),
    (lambda: rnnjax.ReLU(max_value=-1.0), "`max_value`.*non-negative.*-1.0"),
    (lambda: rnnjax.LeakyReLU(0.1, alpha=0.2), "`alpha`.*negative_slope"),
    (lambda: rnnjax.Softmax(robust_masking=True, keras_version=3), "`robust_masking`"),
    (lambda: rnnjax.Add(keras_version=4), "`keras_version`.*2.*3.*got 4"),
    (lambda: rnnjax.Dot(axes="last"), "`axes`.*'last'"),
    (lambda: rnnjax.Attention(score_mode="general"), "`score_mode`.*'dot', 'concat'.*'general'"),
    (lambda: rnnjax.AdditiveAttention(dropout=1.5), "`dropout`.*1.5"),
    (lambda: rnnjax.BatchNormalization(axis=(1, 2)), "`axis`: BatchNormalization.*one axis.*\\(1, 2\\)"),
    (lambda: rx_conv_without_input_dim(), "`input_dim` is required"),
]


def rx_conv_without_input_dim():
    return rnx.Conv2D(2, 3, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("make,message", ERRORS, ids=[str(i) for i in range(len(ERRORS))])
def test_bad_arguments_name_the_argument_and_value(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


CALL_ERRORS = [
    (rnnjax.Reshape((5, -1)), [np.zeros((B, 4, 3))], "`inputs`.*\\(4, 3\\).*12 values.*\\(5, -1\\)"),
    (rnnjax.RepeatVector(2), [np.zeros((B, 4, 3))], "`inputs`: RepeatVector expects.*\\(batch, features\\)"),
    (rnnjax.Cropping1D((2, 2)), [np.zeros((B, 4, 3))], "`cropping`.*removes 4 steps.*4"),
    (rnnjax.Conv2D(2, 3), [np.zeros((B, 5, 3))], "`inputs`: Conv2D expects.*4 axes.*\\(2, 5, 3\\)"),
    (rnnjax.Conv1D(2, 3, groups=2), [np.zeros((B, 5, 3))], "`inputs`: 3 channels are not divisible by groups=2"),
    (rnnjax.MaxPooling1D(4), [np.zeros((B, 3, 2))], "`pool_size`.*larger"),
    (rnnjax.Add(), [[np.zeros((B, 4, 3)), np.zeros((B, 4, 2))]], "`inputs`: Add merges.*\\(2, 4, 3\\), \\(2, 4, 2\\)"),
    (rnnjax.Subtract(), [[np.zeros((B, 3))] * 3], "`inputs`: Subtract takes 2 arrays, got 3"),
    (rnnjax.Add(), [np.zeros((B, 3))], "`inputs`: Add takes a list of arrays, got ndarray"),
    (rnnjax.Concatenate(), [[np.zeros((B, 4, 3)), np.zeros((B, 5, 3))]], "`inputs`: Concatenate.*axis=-1"),
    (rnnjax.Dot((1, 1)), [[np.zeros((B, 3, 4)), np.zeros((B, 4, 4))]], "`inputs`: Dot.*axis 1.*axis 1"),
    (
        rnnjax.Attention(),
        [[np.zeros((B, 3, 4)), np.zeros((B, 5, 2)), np.zeros((B, 5, 3))]],
        "`inputs`: Attention takes \\[query",
    ),
    (rnnjax.Softmax(), [np.zeros((B, 3, 4))], "`mask`: Softmax.*\\(2, 3\\).*\\(2, 3, 4\\)"),
]


@pytest.mark.parametrize("layer,args,message", CALL_ERRORS, ids=[str(i) for i in range(len(CALL_ERRORS))])
def test_inputs_that_do_not_fit_name_the_shapes(layer, args, message):
    kwargs = {"mask": np.ones((B, 3), bool)} if isinstance(layer, rnnjax.Softmax) else {}
    with pytest.raises(ValueError, match=message):
        layer.init(jax.random.key(0), *args, **kwargs)


def test_masks_that_do_not_fit_name_the_mask():
    with pytest.raises(ValueError, match=r"`mask`: Add takes a list of masks.*3 masks for 2 inputs"):
        rnnjax.Add().apply({}, [np.zeros((B, 3))] * 2, mask=[None] * 3)
    with pytest.raises(ValueError, match=r"`mask`: the value mask must have shape \(2, 5\), got \(2, 4\)"):
        rnnjax.Attention().apply({}, [np.zeros((B, 3, 2)), np.zeros((B, 5, 2))], mask=[None, M1])


def _richest_case_per_class():
    """One case per class, the one with the most arguments set (what the saved config must carry)."""
    best = {}
    for name in sorted(CASES):
        cls, kw = CASES[name][:2]
        if cls not in best or len(kw) > len(CASES[best[cls]][1]):
            best[cls] = name
    return sorted(best.values())


@pytest.mark.parametrize("case", _richest_case_per_class())
def test_saved_config_and_weights_rebuild_the_layer_in_keras3(case):
    """What save_keras writes for the layer (its Keras 3 config and weights, rnnjax/keras/
    save_companions.py) makes Keras 3 compute what rnnjax computes."""
    from rnnjax.keras import save_layers as sl

    cls, kw, shapes, masks, _, call = CASES[case]
    ours = getattr(rnnjax, cls)(**kw, **({"keras_version": 3} if cls in VERSIONED else {}))
    xs = _inputs(shapes, seed=len(case) + 1)
    args = [xs] if len(xs) > 1 else xs
    given = None if masks is None else (masks if len(xs) > 1 else masks[0])
    mask_kw = {"mask": given} if given is not None and accepts(ours, "mask") else {}
    variables = ours.init(jax.random.key(0), *args, **mask_kw, **call)
    variables = jax.tree_util.tree_map(
        lambda a: np.abs(np.random.default_rng(3).normal(size=a.shape)).astype(np.float32) + 0.5, variables
    )
    merged = {**variables.get("params", {}), **variables.get("batch_stats", {})}
    saved = sl.convert(ours, merged, "layer", "layer 0", sl.Context("scale", print, np.float32))
    klayer = keras.layers.deserialize(saved.config)
    arrays = [jnp.asarray(x) for x in xs]
    for a, m in zip(arrays, masks or [None] * len(xs)):
        if m is not None:
            set_keras_mask(a, jnp.asarray(m))
    kargs = arrays if len(arrays) > 1 else arrays[0]
    klayer(kargs, **call)
    klayer.set_weights(saved.node.arrays)
    out = klayer(kargs, **call)
    _close(ours.apply(variables, *args, **mask_kw, **call), tuple(out) if isinstance(out, (tuple, list)) else out)
