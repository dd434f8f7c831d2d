"""Whole models built on the layers around the recurrent ones: Keras 3 models (a CRNN, a ConvLSTM
next-frame model ending with Conv3D, an encoder -> RepeatVector -> decoder, attention over LSTM
outputs, a chain of the sequence and merge layers) trained for a step and saved as .keras and
legacy .h5, loaded with
rnnjax.load_keras and compared with Keras 3's predictions; the Sequential ones saved back with
rnnjax.save_keras and predicted by Keras 3 (load_model in safe mode). Keras 2 files written with
h5py (tests/keras2_files.py) against float64 numpy references of Keras 2's semantics."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import keras2_files as k2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras2_files import layer  # noqa: E402

import rnnjax  # noqa: E402

L = keras.layers
TOL = 1e-5
RNG = np.random.default_rng(24)
IDS = np.array([[3, 1, 0, 4, 2, 0], [5, 6, 7, 1, 2, 3]], np.int32)  # 0: padding, holes too


def _crnn():
    return keras.Sequential(
        [
            L.Input((6, 8, 1)),
            L.Conv2D(4, 3, padding="same", activation="relu"),
            L.MaxPooling2D((2, 2)),
            L.Permute((2, 1, 3)),
            L.Reshape((4, 12)),
            L.Bidirectional(L.LSTM(3, return_sequences=True)),
            L.Dense(5, activation="softmax"),
        ]
    )


def _next_frame():
    return keras.Sequential(
        [
            L.Input((3, 5, 5, 1)),
            L.ConvLSTM2D(3, 3, padding="same", return_sequences=True),
            L.BatchNormalization(),
            L.Conv3D(1, 3, padding="same", activation="sigmoid"),
        ]
    )


def _encoder_decoder():
    return keras.Sequential(
        [L.Input((5, 3)), L.LSTM(4), L.RepeatVector(3), L.LSTM(4, return_sequences=True), L.TimeDistributed(L.Dense(2))]
    )


def _attention():
    inp = keras.Input((None,), dtype="int32")
    h = L.LSTM(4, return_sequences=True)(L.Embedding(9, 3, mask_zero=True)(inp))
    a = L.Attention(use_scale=True)([h, h])
    c = L.Concatenate()([h, a])
    return keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling1D()(c)))


def _sequence_ops():
    inp = keras.Input((6, 3))
    c = L.Conv1D(4, 3, activation="relu")(L.ZeroPadding1D(1)(inp))
    r = L.ReLU(max_value=2.0)(L.Cropping1D((1, 3))(L.UpSampling1D(2)(c)))
    h = L.LSTM(4, return_sequences=True)(L.LeakyReLU(0.1)(r))
    a = L.AdditiveAttention()([h, h])
    m = L.Maximum()([L.Multiply()([L.Subtract()([h, a]), a]), h])
    av = L.Average()([L.Minimum()([m, a]), h])
    d = L.Softmax()(L.Dot(axes=(2, 2))([av, h]))
    g = L.GlobalMaxPooling1D()(L.Add()([d, L.Dense(8)(h)]))
    return keras.Model(inp, L.Dense(2)(g))


MODELS = {
    "crnn": (_crnn, (2, 6, 8, 1)),
    "next_frame": (_next_frame, (2, 3, 5, 5, 1)),
    "encoder_decoder": (_encoder_decoder, (2, 5, 3)),
    "attention": (_attention, IDS),
    "sequence_ops": (_sequence_ops, (2, 6, 3)),
}
SEQUENTIAL = ("crnn", "next_frame", "encoder_decoder")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{name: (.keras path, .h5 path, inputs, Keras 3's predictions)}, one Keras build per model,
    compiled and fitted for a step before saving (as users save them)."""
    root, out = tmp_path_factory.mktemp("layer_models"), {}
    for name, (make, x) in MODELS.items():
        keras.utils.set_random_seed(0)
        model = make()
        for w in model.weights:
            value = RNG.normal(scale=0.5, size=w.shape)
            w.assign((np.abs(value) + 0.5 if "variance" in w.path else value).astype(np.float32))
        x = x if isinstance(x, np.ndarray) else RNG.normal(size=x).astype(np.float32)
        model.compile(optimizer="adam", loss="mse")  # a trained file: optimizer state and compile settings
        model.fit(x, np.zeros_like(model.predict(x, verbose=0)), epochs=1, batch_size=len(x), verbose=0)
        model.save(root / f"{name}.keras")
        model.save(root / f"{name}.h5")
        out[name] = (root / f"{name}.keras", root / f"{name}.h5", x, np.asarray(model.predict(x, verbose=0)))
    return out


@pytest.mark.parametrize("suffix", ["keras", "h5"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_keras3_model_loads_and_predicts_as_keras(saved, name, suffix):
    path_keras, path_h5, x, expected = saved[name]
    model, variables = rnnjax.load_keras(path_keras if suffix == "keras" else path_h5)
    got = np.asarray(model.apply(variables, jnp.asarray(x)))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_loaded_model_saves_back_and_keras3_predicts_the_same(saved, name, tmp_path):
    path, _, x, expected = saved[name]
    model, variables = rnnjax.load_keras(path)
    out = tmp_path / f"{name}.keras"
    rnnjax.save_keras(model, variables, out, input_shape=x.shape[1:])
    again = keras.saving.load_model(out, safe_mode=True)
    np.testing.assert_allclose(np.asarray(again.predict(x, verbose=0)), expected, atol=TOL, rtol=TOL)


# ---- Keras 2 (tf-keras) files, float64 references ----
def _w(*shape):
    return RNG.normal(scale=0.5, size=shape).astype(np.float32)


def _node(*names):
    return [[[n, 0, 0, {}] for n in names]]


def _functional(input_shape, layers, output):
    entries = [
        {
            **layer("InputLayer", name="input_1", batch_input_shape=[None, *input_shape], dtype="float32"),
            "name": "input_1",
            "inbound_nodes": [],
        }
    ]
    entries += [{**cfg, "name": cfg["config"]["name"], "inbound_nodes": _node(*inputs)} for cfg, inputs in layers]
    return {
        "class_name": "Functional",
        "config": {
            "name": "model",
            "layers": entries,
            "input_layers": [["input_1", 0, 0]],
            "output_layers": [[output, 0, 0]],
        },
    }


def _lstm(name, units, **extra):
    return layer(
        "LSTM",
        name=name,
        units=units,
        activation="tanh",
        recurrent_activation="sigmoid",
        time_major=False,
        **{"return_sequences": False, **extra},
    )


def _lstm_weights(name, k, r, b):
    return (
        name,
        [
            (f"{name}/lstm_cell/kernel:0", k),
            (f"{name}/lstm_cell/recurrent_kernel:0", r),
            (f"{name}/lstm_cell/bias:0", b),
        ],
    )


def _lstm_sequence(k, r, b, xs):
    step, state = k2.lstm_step(*(a.astype(np.float64) for a in (k, r, b)))
    out = []
    for x in xs:
        state = step(state, x)
        out.append(state[0])
    return np.stack(out)


def test_keras2_merges_mask_and_leaky_relu_alpha(tmp_path):
    """tf-keras merges: values ignore masks, the output mask ANDs them (Multiply/Maximum of two
    Masking branches -> LSTM); LeakyReLU's Keras 2 key ``alpha``."""
    k, r, b = _w(2, 12), _w(3, 12), _w(12)
    config = _functional(
        (6, 2),
        [
            (layer("Masking", name="zeros", mask_value=0.0), ["input_1"]),
            (layer("Masking", name="ones", mask_value=1.0), ["input_1"]),
            (layer("Multiply", name="mul"), ["zeros", "ones"]),
            (layer("Maximum", name="max"), ["mul", "zeros"]),
            (layer("LeakyReLU", name="lrelu", alpha=0.2), ["max"]),
            (_lstm("lstm", 3), ["lrelu"]),
        ],
        "lstm",
    )
    k2.write_model(
        tmp_path / "m.h5",
        config,
        [
            ("input_1", []),
            ("zeros", []),
            ("ones", []),
            ("mul", []),
            ("max", []),
            ("lrelu", []),
            _lstm_weights("lstm", k, r, b),
        ],
    )
    x = RNG.normal(size=(2, 6, 2)).astype(np.float32)
    x[0, 1], x[0, 4], x[1, 2] = 0.0, 1.0, 1.0
    model, variables = rnnjax.load_keras(tmp_path / "m.h5")
    got = np.asarray(model.apply(variables, jnp.asarray(x)))
    for row in range(2):
        xd = x[row].astype(np.float64)
        a, c = np.any(xd != 0, -1), np.any(xd != 1, -1)
        xa, xb = xd * a[:, None], xd * c[:, None]
        y = np.maximum(xa * xb, xa)
        step, s0 = k2.lstm_step(*(w.astype(np.float64) for w in (k, r, b)))
        np.testing.assert_allclose(got[row], k2.run(step, s0, np.where(y > 0, y, 0.2 * y), a & c)[0], atol=1e-5)


def _conv2d_valid(x, kernel, bias):
    kh, kw = kernel.shape[:2]
    rows, cols = x.shape[0] - kh + 1, x.shape[1] - kw + 1
    return (
        np.stack(
            [[np.einsum("hwc,hwcf->f", x[i : i + kh, j : j + kw], kernel) for j in range(cols)] for i in range(rows)]
        )
        + bias
    )


def test_keras2_crnn_encoder_decoder(tmp_path):
    """tf-keras Sequential: Conv2D -> MaxPooling2D -> Reshape -> LSTM -> RepeatVector -> LSTM ->
    TimeDistributed(Dense), list-valued kernel_size/strides/pool_size as tf-keras writes them."""
    ck, cb = _w(2, 2, 1, 3), _w(3)
    e, d = (_w(9, 8), _w(2, 8), _w(8)), (_w(2, 8), _w(2, 8), _w(8))
    dk, db = _w(2, 2), _w(2)
    config = k2.sequential(
        layer(
            "Conv2D",
            name="conv2d",
            batch_input_shape=[None, 5, 7, 1],
            filters=3,
            kernel_size=[2, 2],
            strides=[1, 1],
            padding="valid",
            data_format="channels_last",
            dilation_rate=[1, 1],
            groups=1,
            activation="relu",
            use_bias=True,
        ),
        layer(
            "MaxPooling2D",
            name="max_pooling2d",
            pool_size=[2, 2],
            strides=[2, 2],
            padding="valid",
            data_format="channels_last",
        ),
        layer("Reshape", name="reshape", target_shape=[2, 9]),
        _lstm("enc", 2),
        layer("RepeatVector", name="repeat_vector", n=3),
        _lstm("dec", 2, return_sequences=True),
        layer("TimeDistributed", name="td", layer=layer("Dense", name="dense", units=2, activation="linear")),
    )
    k2.write_model(
        tmp_path / "s.h5",
        config,
        [
            ("conv2d", [("conv2d/kernel:0", ck), ("conv2d/bias:0", cb)]),
            ("max_pooling2d", []),
            ("reshape", []),
            _lstm_weights("enc", *e),
            ("repeat_vector", []),
            _lstm_weights("dec", *d),
            ("td", [("td/kernel:0", dk), ("td/bias:0", db)]),
        ],
        version="2.9.0",
    )
    x = RNG.normal(size=(2, 5, 7, 1)).astype(np.float32)
    model, variables = rnnjax.load_keras(tmp_path / "s.h5")
    got = np.asarray(model.apply(variables, jnp.asarray(x)))
    for row in range(2):
        conv = np.maximum(_conv2d_valid(x[row].astype(np.float64), ck.astype(np.float64), cb), 0.0)  # (4, 6, 3)
        pooled = conv.reshape(2, 2, 3, 2, 3).max(axis=(1, 3))  # (2, 3, 3)
        code = _lstm_sequence(*e, pooled.reshape(2, 9))[-1]
        dec = _lstm_sequence(*d, np.repeat(code[None], 3, 0))
        np.testing.assert_allclose(got[row], dec @ dk + db, atol=1e-5)


def test_keras2_causal_attention_dot_softmax(tmp_path):
    """tf-keras <= 2.10's Attention(causal=True) config key, Dot(normalize=True) (cosine), Softmax,
    GlobalAveragePooling1D, against float64 numpy."""
    k, r, b = _w(3, 16), _w(4, 16), _w(16)
    scale, dk, db = np.float32(0.7), _w(5, 2), _w(2)
    config = _functional(
        (5, 3),
        [
            (_lstm("lstm", 4, return_sequences=True), ["input_1"]),
            (layer("Attention", name="att", use_scale=True, causal=True, dropout=0.0), ["lstm", "lstm"]),
            (layer("Dot", name="dot", axes=2, normalize=True), ["att", "lstm"]),
            (layer("Softmax", name="softmax", axis=-1), ["dot"]),
            (layer("GlobalAveragePooling1D", name="gap", data_format="channels_last"), ["softmax"]),
            (layer("Dense", name="dense", units=2), ["gap"]),
        ],
        "dense",
    )
    k2.write_model(
        tmp_path / "a.h5",
        config,
        [
            ("input_1", []),
            _lstm_weights("lstm", k, r, b),
            ("att", [("att/scale:0", np.asarray(scale))]),
            ("dot", []),
            ("softmax", []),
            ("gap", []),
            ("dense", [("dense/kernel:0", dk), ("dense/bias:0", db)]),
        ],
        version="2.6.0",
    )
    x = RNG.normal(size=(2, 5, 3)).astype(np.float32)
    model, variables = rnnjax.load_keras(tmp_path / "a.h5")
    got = np.asarray(model.apply(variables, jnp.asarray(x)))
    for row in range(2):
        h = _lstm_sequence(k, r, b, x[row].astype(np.float64))
        scores = float(scale) * h @ h.T
        scores = np.where(np.tril(np.ones((5, 5), bool)), scores, scores - 1e9)
        w = np.exp(scores - scores.max(-1, keepdims=True))
        att = (w / w.sum(-1, keepdims=True)) @ h
        unit = lambda v: v / np.sqrt(np.maximum((v * v).sum(-1, keepdims=True), 1e-12))  # noqa: E731
        dot = unit(att) @ unit(h).T
        soft = np.exp(dot - dot.max(-1, keepdims=True))
        soft /= soft.sum(-1, keepdims=True)
        np.testing.assert_allclose(got[row], soft.mean(0) @ dk + db, atol=1e-5)


def test_nnx_twins_of_a_loaded_model_predict_as_keras(saved):
    """Every layer of a loaded model exists in NNX: the CRNN rebuilt from rnnjax.nnx layers takes the
    loaded (linen) variables through from_linen and predicts what Keras 3 does."""
    from flax import nnx

    import rnnjax.nnx as rnx

    path, _, x, expected = saved["crnn"]
    model, variables = rnnjax.load_keras(path)
    r = nnx.Rngs(0)
    twin = rnx.Sequential(
        [
            rnx.Conv2D(4, 3, padding="same", activation="relu", input_dim=1, rngs=r),
            rnx.MaxPooling2D((2, 2)),
            rnx.Permute((2, 1, 3)),
            rnx.Reshape((4, 12)),
            rnx.Bidirectional(
                rnx.LSTM(3, recurrent_activation="sigmoid", return_sequences=True, input_dim=12, rngs=r), rngs=r
            ),
            rnx.Dense(5, activation="softmax", input_dim=6, rngs=r),
        ]
    )
    by_position = dict(zip(twin.names, (layer.name for layer in model.layers)))
    params = {
        ours: variables["params"][theirs] for ours, theirs in by_position.items() if theirs in variables["params"]
    }
    bi = params["bidirectional"]
    params["bidirectional"] = {
        f"{side}_lstm": next(v for k, v in bi.items() if k.startswith(side)) for side in ("forward", "backward")
    }
    rnx.from_linen(twin, {"params": params})
    np.testing.assert_allclose(np.asarray(twin(jnp.asarray(x))), expected, atol=TOL, rtol=TOL)
