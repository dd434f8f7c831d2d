"""ConvLSTM1D/2D/3D against Keras 3 (JAX backend) on random weights, a float64 numpy
re-implementation (Keras 2's hard_sigmoid default, per-gate dropout masks), Keras's public
reference value, gradients (check_grads) and argument errors."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.test_util import check_grads  # noqa: E402
from jaxpr_util import equations  # noqa: E402

import rnnjax  # noqa: E402
from rnnjax import functional as F  # noqa: E402
from rnnjax.functional.initializers import Constant  # noqa: E402

KERAS = {1: keras.layers.ConvLSTM1D, 2: keras.layers.ConvLSTM2D, 3: keras.layers.ConvLSTM3D}
OURS = {1: rnnjax.ConvLSTM1D, 2: rnnjax.ConvLSTM2D, 3: rnnjax.ConvLSTM3D}
SPATIAL = {1: (6,), 2: (5, 4), 3: (4, 3, 4)}


def random_weights(rng, rank, kernel_size, channels, filters, use_bias=True):
    ks = (kernel_size,) * rank if isinstance(kernel_size, int) else tuple(kernel_size)
    w = {
        "kernel": rng.normal(0, 0.3, ks + (channels, 4 * filters)).astype(np.float32),
        "recurrent_kernel": rng.normal(0, 0.3, ks + (filters, 4 * filters)).astype(np.float32),
    }
    if use_bias:
        w["bias"] = rng.normal(0, 0.3, (4 * filters,)).astype(np.float32)
    return w


def keras_weights(w):
    return [w[k] for k in ("kernel", "recurrent_kernel", "bias") if k in w]


def make_input(rng, rank, data_format, batch=2, steps=3, channels=2):
    shape = (batch, steps) + (
        (channels,) + SPATIAL[rank] if data_format == "channels_first" else SPATIAL[rank] + (channels,)
    )
    return rng.normal(0, 1, shape).astype(np.float32)


def run_keras(layer, x, weights, zero_output_for_mask=False, **kw):
    layer.build(tuple(x.shape))
    layer.set_weights(keras_weights(weights))
    if kw.get("mask") is not None:
        return run_keras_cell_masked(layer, x, kw.pop("mask"), zero_output_for_mask)
    out = layer(x, **kw)
    return [np.asarray(o) for o in out] if isinstance(out, (list, tuple)) else np.asarray(out)


def run_keras_cell_masked(layer, x, mask, zero_output_for_mask=False):
    """Keras 3's ConvLSTM layers fail on masks with the JAX backend (the (batch, 1) mask does not
    broadcast against 4-D/5-D states), so masked references run Keras's own cell step by step
    with Keras 2's masking rule: a masked step keeps the states and repeats the last output
    (0 before any unmasked step; always 0 with rnnjax's zero_output_for_mask)."""
    steps = range(x.shape[1] - 1, -1, -1) if layer.go_backwards else range(x.shape[1])
    state = [np.asarray(s) for s in layer.cell.get_initial_state(x.shape[0])]
    last = np.zeros_like(state[0])
    seq = []
    for t in steps:
        y, new = layer.cell(x[:, t], state)
        m = mask[:, t].reshape((-1,) + (1,) * (last.ndim - 1))
        state = [np.where(m, np.asarray(n), s) for n, s in zip(new, state)]
        last = np.where(m, np.asarray(y), 0.0 if zero_output_for_mask else last)
        seq.append(last)
    out = np.stack(seq, 1) if layer.return_sequences else last
    return [out] + state if layer.return_state else out


CASES = [
    # rank, kwargs for both layers (besides filters=3, recurrent_activation='sigmoid'), rnnjax-only kwargs, mask
    (2, dict(kernel_size=3, padding="valid", return_sequences=True), dict(remat=True, scan_unroll=2), False),
    (
        2,
        dict(kernel_size=(3, 2), padding="SAME", strides=2, data_format="channels_first", return_state=True),
        {},
        False,
    ),
    (
        2,
        dict(kernel_size=2, padding="same", dilation_rate=2, go_backwards=True, return_sequences=True, use_bias=False),
        dict(unroll=True),
        False,
    ),
    (
        2,
        dict(kernel_size=3, padding="same", go_backwards=True, return_sequences=True, return_state=True),
        dict(unroll=True),
        True,
    ),
    (1, dict(kernel_size=3, padding="valid", strides=2, return_sequences=True, return_state=True), {}, False),
    (
        1,
        dict(
            kernel_size=2,
            padding="same",
            dilation_rate=2,
            data_format="channels_first",
            go_backwards=True,
            return_sequences=True,
        ),
        dict(zero_output_for_mask=True),
        True,
    ),
    (
        3,
        dict(
            kernel_size=(2, 1, 2), padding="valid", strides=(1, 2, 1), data_format="channels_first", return_state=True
        ),
        {},
        False,
    ),
]


@pytest.mark.parametrize("rank,kw,ours_kw,use_mask", CASES)
def test_matches_keras3(rank, kw, ours_kw, use_mask):
    rng = np.random.default_rng(len(str(kw)) + rank)
    fmt = kw.get("data_format", "channels_last")
    x = make_input(rng, rank, fmt, steps=4)
    w = random_weights(rng, rank, kw["kernel_size"], 2, 3, kw.get("use_bias", True))
    mask = np.array([[True, False, True, True], [False, True, True, False]]) if use_mask else None
    ours = OURS[rank](3, recurrent_activation="sigmoid", **kw, **ours_kw)
    got = ours.apply({"params": {"cell": w}}, x, mask=mask)
    want = run_keras(
        KERAS[rank](3, recurrent_activation="sigmoid", **kw),
        x,
        w,
        mask=mask,
        zero_output_for_mask=ours_kw.get("zero_output_for_mask", False),
    )
    got = list(got) if isinstance(got, tuple) else [got]
    want = want if isinstance(want, list) else [want]
    assert len(got) == len(want) == (3 if kw.get("return_state") else 1)
    for g, k in zip(got, want):
        assert g.shape == k.shape
        np.testing.assert_allclose(np.asarray(g), k, atol=1e-5, rtol=1e-5)


def test_keras_reference_value():
    """Keras's own test vector: ConvLSTM2D(2, 3, C) with Keras 3 defaults (sigmoid)."""
    x = np.arange(480, dtype=np.float32).reshape(2, 3, 4, 4, 5) / 100
    layer = rnnjax.ConvLSTM2D(
        2,
        3,
        recurrent_activation="sigmoid",
        kernel_initializer=Constant(0.01),
        recurrent_initializer=Constant(0.02),
        bias_initializer=Constant(0.03),
    )
    y = layer.apply(layer.init(jax.random.key(0), x), x)
    assert y.shape == (2, 2, 2, 2)
    want = np.array([[0.48694518, 0.50237733], [0.5461202, 0.5598283]], np.float32)
    np.testing.assert_allclose(y[0], np.repeat(want[..., None], 2, axis=-1), atol=1e-6)


# ---------------- float64 numpy re-implementation (Keras 2 equations) ----------------


def np_conv2d(x, w, strides, padding, dilation):
    """NHWC x HWIO -> NHWC, TF/Keras 'same'/'valid' padding."""
    _, h, wd, _ = x.shape
    kh, kw = w.shape[:2]
    ek = [(kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1]
    if padding == "same":
        out = [-(-h // strides[0]), -(-wd // strides[1])]
        pads = [max((out[i] - 1) * strides[i] + ek[i] - (h, wd)[i], 0) for i in range(2)]
        x = np.pad(x, ((0, 0), (pads[0] // 2, pads[0] - pads[0] // 2), (pads[1] // 2, pads[1] - pads[1] // 2), (0, 0)))
    else:
        out = [(h - ek[0]) // strides[0] + 1, (wd - ek[1]) // strides[1] + 1]
    y = np.zeros((x.shape[0], out[0], out[1], w.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            a, b = i * dilation[0], j * dilation[1]
            patch = x[
                :,
                a : a + (out[0] - 1) * strides[0] + 1 : strides[0],
                b : b + (out[1] - 1) * strides[1] + 1 : strides[1],
            ]
            y += patch @ w[i, j]
    return y


def np_conv_lstm2d(x, w, strides, padding, dilation, in_masks=None, rec_masks=None):
    """Keras 2 ConvLSTM2DCell, float64, hard_sigmoid = clip(0.2x + 0.5, 0, 1), per-gate masks."""
    hs = lambda v: np.clip(0.2 * v + 0.5, 0.0, 1.0)  # noqa: E731
    x = x.astype(np.float64)
    k, r = w["kernel"].astype(np.float64), w["recurrent_kernel"].astype(np.float64)
    b = w["bias"].astype(np.float64)
    f = r.shape[-2]
    h = None
    seq = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        zs = []
        for g in range(4):
            xg = xt * (in_masks[g] if in_masks is not None else 1.0)
            zs.append(np_conv2d(xg, k[..., g * f : (g + 1) * f], strides, padding, dilation) + b[g * f : (g + 1) * f])
        if h is None:
            h = np.zeros(zs[0].shape)
            c = np.zeros(zs[0].shape)
        for g in range(4):
            hg = h * (rec_masks[g] if rec_masks is not None else 1.0)
            zs[g] = zs[g] + np_conv2d(hg, r[..., g * f : (g + 1) * f], (1, 1), "same", (1, 1))
        i, fg, o = hs(zs[0]), hs(zs[1]), hs(zs[3])
        c = fg * c + i * np.tanh(zs[2])
        h = o * np.tanh(c)
        seq.append(h)
    return np.stack(seq, 1)


@pytest.mark.parametrize("kw", [dict(padding="same", strides=(2, 1)), dict(padding="valid", dilation_rate=(1, 2))])
def test_default_hard_sigmoid_matches_numpy_float64(kw):
    rng = np.random.default_rng(7)
    x = make_input(rng, 2, "channels_last", steps=3)
    w = random_weights(rng, 2, 2, 2, 3)
    layer = rnnjax.ConvLSTM2D(3, 2, return_sequences=True, **kw)  # seed default: hard_sigmoid
    got = layer.apply({"params": {"cell": w}}, x)
    want = np_conv_lstm2d(x, w, kw.get("strides", (1, 1)), kw["padding"], kw.get("dilation_rate", (1, 1)))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_functional_per_gate_dropout_masks_match_numpy():
    """4 different masks per sequence (one per gate), one input convolution per gate."""
    rng = np.random.default_rng(3)
    x = make_input(rng, 2, "channels_last", steps=3)
    w = random_weights(rng, 2, 3, 2, 3)
    core = F.ConvLSTMCore(3, 3, rank=2, padding="same")
    params = F.ConvLSTMParams(jnp.asarray(w["kernel"]), jnp.asarray(w["recurrent_kernel"]), jnp.asarray(w["bias"]))
    in_m = F.dropout_masks(jax.random.key(1), 0.4, (2,) + SPATIAL[2] + (2,), 4)
    rec_m = F.dropout_masks(jax.random.key(2), 0.3, (2,) + SPATIAL[2] + (3,), 4)
    assert not np.array_equal(in_m[0], in_m[1])
    y, state = F.conv_lstm(
        core, params, jnp.asarray(x), return_sequences=True, dropout_mask=in_m, recurrent_dropout_mask=rec_m
    )
    want = np_conv_lstm2d(x, w, (1, 1), "same", (1, 1), np.asarray(in_m, np.float64), np.asarray(rec_m, np.float64))
    np.testing.assert_allclose(np.asarray(y), want, atol=1e-5)
    np.testing.assert_allclose(np.asarray(state.h), want[:, -1], atol=1e-5)


def test_layer_dropout_only_in_training():
    rng = np.random.default_rng(4)
    x = make_input(rng, 1, "channels_last")
    layer = rnnjax.ConvLSTM1D(3, 2, dropout=0.5, recurrent_dropout=0.5, recurrent_initializer="glorot_uniform")
    v = layer.init(jax.random.key(0), x)
    plain = rnnjax.ConvLSTM1D(3, 2).apply(v, x)
    np.testing.assert_array_equal(layer.apply(v, x), plain)
    a = layer.apply(v, x, training=True, rngs={"dropout": jax.random.key(5)})
    c = layer.apply(v, x, training=True, rngs={"dropout": jax.random.key(6)})
    assert not np.allclose(a, plain) and not np.allclose(a, c)


# ---------------- stateful, initial_state, cells in RNN, vmap ----------------


def test_stateful_two_batches_equal_one_call(fmt="channels_first"):
    rng = np.random.default_rng(11)
    x = make_input(rng, 2, fmt, steps=4)
    w = random_weights(rng, 2, 2, 2, 3)
    layer = rnnjax.ConvLSTM2D(
        3,
        2,
        padding="same",
        data_format=fmt,
        recurrent_activation="sigmoid",
        stateful=True,
        kernel_initializer="zeros",
        recurrent_initializer="zeros",
    )
    v = layer.init(jax.random.key(0), x[:, :2])
    v = {"params": {"cell": w}, "rnn_state": v["rnn_state"]}
    _, upd = layer.apply(v, x[:, :2], mutable=["rnn_state"])
    y2, _ = layer.apply({**v, **upd}, x[:, 2:], mutable=["rnn_state"])
    want = run_keras(
        keras.layers.ConvLSTM2D(3, 2, padding="same", data_format=fmt, recurrent_activation="sigmoid"), x, w
    )
    np.testing.assert_allclose(np.asarray(y2), want, atol=1e-5)
    # reset_states with arrays in the user's data format = Keras's initial_state
    h0 = rng.normal(0, 1, want.shape).astype(np.float32)
    c0 = rng.normal(0, 1, want.shape).astype(np.float32)
    _, upd = layer.apply(v, [h0, c0], method="reset_states", mutable=["rnn_state"])
    y, _ = layer.apply({**v, **upd}, x, mutable=["rnn_state"])
    want = run_keras(
        keras.layers.ConvLSTM2D(3, 2, padding="same", data_format=fmt, recurrent_activation="sigmoid"),
        x,
        w,
        initial_state=[h0, c0],
    )
    np.testing.assert_allclose(np.asarray(y), want, atol=1e-5)


def test_initial_state_channels_first_matches_keras():
    rng = np.random.default_rng(12)
    x = make_input(rng, 2, "channels_first")
    w = random_weights(rng, 2, 3, 2, 3)
    kw = dict(padding="valid", data_format="channels_first", recurrent_activation="sigmoid", return_state=True)
    h0 = rng.normal(0, 1, (2, 3, 3, 2)).astype(np.float32)
    c0 = rng.normal(0, 1, (2, 3, 3, 2)).astype(np.float32)
    got = rnnjax.ConvLSTM2D(3, 3, **kw).apply({"params": {"cell": w}}, x, initial_state=[h0, c0])
    want = run_keras(keras.layers.ConvLSTM2D(3, 3, **kw), x, w, initial_state=[h0, c0])
    for g, k in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), k, atol=1e-5)


def test_cell_in_rnn_channels_first_matches_keras():
    rng = np.random.default_rng(13)
    x = make_input(rng, 2, "channels_first")
    w = random_weights(rng, 2, 2, 2, 3)
    cell = rnnjax.ConvLSTM2DCell(3, 2, padding="same", data_format="channels_first", recurrent_activation="sigmoid")
    layer = rnnjax.RNN(cell, return_sequences=True, return_state=True)
    got = layer.apply({"params": {"cell": w}}, x)
    want = run_keras(
        keras.layers.ConvLSTM2D(
            3,
            2,
            padding="same",
            data_format="channels_first",
            recurrent_activation="sigmoid",
            return_sequences=True,
            return_state=True,
        ),
        x,
        w,
    )
    for g, k in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), k, atol=1e-5)


def test_functional_vmap_and_single_convolution():
    core = F.ConvLSTMCore(3, 2, rank=1, padding="same", recurrent_initializer="glorot_uniform")
    params = core.init(jax.random.key(0), 2)
    x = jnp.asarray(make_input(np.random.default_rng(1), 1, "channels_last"))
    batched, _ = F.conv_lstm(core, params, x, return_sequences=True)
    mapped, _ = jax.vmap(lambda s: F.conv_lstm(core, params, s, return_sequences=True))(x)
    np.testing.assert_allclose(mapped, batched, atol=1e-6)
    # The input convolution of all steps is one conv outside the loop; inside the loop, the
    # recurrent convolution (the backward pass forms its kernel gradient after the loop).
    jaxpr = jax.make_jaxpr(lambda p, s: F.conv_lstm(core, p, s))(params, x).jaxpr

    def walk(jp, outside, bodies):
        """Counts the primitives outside any scan (nested calls included) and collects scan bodies."""
        for e in jp.eqns:
            if e.primitive.name == "scan":
                bodies.append(e.params["jaxpr"].jaxpr)
                continue
            outside.append(e.primitive.name)
            for v in e.params.values():
                inner = getattr(v, "jaxpr", None)
                if inner is not None and hasattr(inner, "eqns"):
                    walk(inner, outside, bodies)
                elif hasattr(v, "eqns"):
                    walk(v, outside, bodies)
        return outside, bodies

    outside, bodies = walk(jaxpr, [], [])
    assert outside.count("conv_general_dilated") == 1
    (body,) = bodies
    names = [e.primitive.name for e in equations(body)]
    assert names.count("conv_general_dilated") == 1


def test_check_grads():
    core = F.ConvLSTMCore(
        2, 2, rank=1, padding="same", recurrent_activation="sigmoid", recurrent_initializer="glorot_uniform"
    )
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), core.init(jax.random.key(0), 2))
        x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, 4, 2)))
        fn = jax.jit(lambda p, s: F.conv_lstm(core, p, s, return_sequences=True)[0])
        check_grads(fn, (params, x), order=1, modes=("rev",))


@pytest.mark.parametrize("kernel_size", [(3,), (2,), (3, 2), (4, 3), (2, 1, 3)])
def test_same_conv_and_recurrent_patches(kernel_size):
    """The recurrent convolution's pieces against lax's 'SAME' convolution (odd and even kernels,
    1-3 spatial dims): same_conv's hand-written input cotangent (a flipped-kernel convolution)
    by check_grads in float64, and patches(h) @ kernel.reshape(-1, O) == h ⊛ kernel."""
    rank = len(kernel_size)
    dn = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}[rank]
    rng = np.random.default_rng(rank * 10 + sum(kernel_size))
    with jax.enable_x64(True):
        h = jnp.asarray(rng.normal(size=(2,) + (5, 4, 3)[:rank] + (3,)))
        kernel = jnp.asarray(rng.normal(size=kernel_size + (3, 8)))
        want = jax.lax.conv_general_dilated(h, kernel, (1,) * rank, "SAME", dimension_numbers=dn)
        from rnnjax.functional.conv import same_conv

        np.testing.assert_allclose(same_conv(h, kernel), want, rtol=1e-12, atol=1e-12)
        check_grads(same_conv, (h, kernel), order=2, modes=("rev",))
        core = F.ConvLSTMCore(2, kernel_size, rank=rank, padding="same")
        patches = core.recurrent_patches(h)
        assert patches.shape == h.shape[:-1] + (int(np.prod(kernel_size)) * 3,)
        np.testing.assert_allclose(patches @ kernel.reshape(-1, 8), want, rtol=1e-12, atol=1e-12)


def test_regularizers_and_constraints():
    x = make_input(np.random.default_rng(2), 1, "channels_last")
    layer = rnnjax.ConvLSTM1D(2, 2, kernel_regularizer=rnnjax.regularizers.L2(0.1), recurrent_initializer="zeros")
    v = layer.init(jax.random.key(0), x)
    _, aux = layer.apply(v, x, mutable=["losses"])
    k = np.asarray(v["params"]["cell"]["kernel"], np.float64)
    np.testing.assert_allclose(float(rnnjax.regularization_loss(aux)), 0.1 * (k**2).sum(), rtol=1e-5)
    cell = rnnjax.ConvLSTM1DCell(2, 2, bias_constraint="non_neg")
    assert set(cell.declared_constraints()) == {"bias"}


# ---------------- errors ----------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(filters=2, kernel_size=3, strides=2, dilation_rate=2), "strides"),
        (dict(filters=2, kernel_size=3, padding="full"), "padding"),
        (dict(filters=2, kernel_size=3, data_format="NHWC"), "data_format"),
        (dict(filters=0, kernel_size=3), "filters"),
        (dict(filters=2, kernel_size=(3, 3, 3)), "kernel_size"),
        (dict(filters=2, kernel_size=3, dropout=1.5), "dropout"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rnnjax.ConvLSTM2D(**kwargs)


def test_call_errors():
    x = np.zeros((2, 3, 4, 4, 2), np.float32)
    with pytest.raises(ValueError, match="kernel_size"):  # 5x5 kernel on 4x4 with 'valid'
        rnnjax.ConvLSTM2D(2, 5).init(jax.random.key(0), x)
    # (3, 4, 4, 2) is one unbatched sequence (test_batch_axes.py); 3 dimensions are too few
    with pytest.raises(ValueError, match=r"`inputs`: .* at least 4 dimensions, got shape \(4, 4, 2\)"):
        rnnjax.ConvLSTM2D(2, 3).apply(
            {"params": {"cell": random_weights(np.random.default_rng(0), 2, 3, 2, 2)}}, x[0, 0]
        )
    layer = rnnjax.ConvLSTM2D(2, 3, padding="same", data_format="channels_first")
    v = {"params": {"cell": random_weights(np.random.default_rng(0), 2, 3, 4, 2)}}  # 4 channels
    with pytest.raises(ValueError, match="mask"):
        layer.apply(v, x, mask=np.ones((2, 4), bool))
    with pytest.raises(ValueError, match="initial_state"):
        layer.apply(v, x, initial_state=[np.zeros((2, 4, 4, 2))] * 2)
    with pytest.raises(ValueError, match="built for 4"):  # 4 channels (channels_first axis 2)
        layer.apply(v, np.zeros((2, 3, 5, 4, 2), np.float32))
