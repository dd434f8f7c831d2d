"""Functional Keras graphs (several inputs and outputs, states between layers, masks from another
input, nested and shared layers) and custom layers: Keras 3 (JAX backend) builds and saves the
models, ``load_keras`` predicts what Keras 3 does, and ``save_keras`` writes the graphs back for
Keras 3 to load in safe mode; Keras 2 graph configs written with h5py to the documented layout
against float64 numpy references."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import rnnjax  # noqa: E402
from rnnjax.keras import KerasImportError  # noqa: E402
from tests import keras2_files as k2  # noqa: E402
from tests.keras2_files import inbound, input_layer, layer  # noqa: E402

L = keras.layers
TOL = 1e-5
RNG = np.random.default_rng(24)


def _f32(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def _randomize(model):
    for w in model.weights:
        value = RNG.normal(scale=0.5, size=w.shape).astype(np.float32)
        w.assign(np.abs(value) + 0.5 if "variance" in w.path else value)


def _seq2seq():
    """The canonical Keras seq2seq: the training model, its inference encoder ([h, c]) and its
    decoder (three inputs, three outputs), sharing the layers."""
    enc_in, dec_in = keras.Input((None, 3), name="enc_in"), keras.Input((None, 2), name="dec_in")
    encoder = L.LSTM(4, return_state=True, name="encoder")
    decoder = L.LSTM(4, return_sequences=True, return_state=True, name="decoder")
    dense = L.Dense(2, activation="softmax", name="out")
    _, h, c = encoder(enc_in)
    y, _, _ = decoder(dec_in, initial_state=[h, c])
    training = keras.Model([enc_in, dec_in], dense(y))
    _randomize(training)
    h_in, c_in = keras.Input((4,), name="h_in"), keras.Input((4,), name="c_in")
    y2, h2, c2 = decoder(dec_in, initial_state=[h_in, c_in])
    xe, xd = _f32(2, 5, 3), _f32(2, 4, 2)
    return {
        "seq2seq": (training, [xe, xd]),
        "encoder": (keras.Model(enc_in, [h, c]), [xe]),
        "decoder": (keras.Model([dec_in, h_in, c_in], [dense(y2), h2, c2]), [xd, _f32(2, 4), _f32(2, 4)]),
    }


def _mask_input():
    x, m = keras.Input((5, 3), name="x"), keras.Input((5,), dtype="bool", name="m")
    model = keras.Model([x, m], L.GRU(2)(L.GRU(3, return_sequences=True)(x, mask=m)))
    return model, [_f32(2, 5, 3), np.array([[1, 0, 1, 1, 0], [0, 1, 1, 1, 1]], bool)]


def _two_embeddings():
    a, b = keras.Input((None,), dtype="int32", name="a"), keras.Input((None,), dtype="int32", name="b")
    merged = L.concatenate([L.Embedding(10, 3, mask_zero=True)(a), L.Embedding(7, 2, mask_zero=True)(b)])
    ids_a = np.array([[1, 2, 0, 3], [4, 0, 0, 0]], np.int32)
    ids_b = np.array([[0, 2, 0, 3], [1, 1, 0, 0]], np.int32)  # step 2 of row 0 masked in both
    return keras.Model([a, b], L.LSTM(3)(merged)), [ids_a, ids_b]


def _nested():
    """A Sequential used as a layer, and a two-input, two-output functional model with a frozen
    layer, both inside a functional model."""
    inner = keras.Sequential([keras.Input((None, 3)), L.LSTM(4, return_sequences=True), L.Dense(2)], name="inner")
    ia, ib = keras.Input((None, 3)), keras.Input((None, 3))
    frozen = L.Dense(2, name="frozen")
    frozen.trainable = False
    pair = keras.Model([ia, ib], [L.SimpleRNN(2, return_sequences=True, name="il")(ia), frozen(ib)], name="pair")
    x1, x2 = keras.Input((4, 3)), keras.Input((4, 3))
    p, q = pair([x1, x2])
    return keras.Model([x1, x2], L.Concatenate()([inner(x1), p, q])), [_f32(2, 4, 3), _f32(2, 4, 3)]


def _nested_batch_norm():
    """Keras 3's legacy .h5 groups a nested model's weights as Keras 2 did: trainable, then the
    moving statistics."""
    ia = keras.Input((None, 3))
    inner = keras.Model(ia, L.LSTM(2, return_sequences=True)(L.BatchNormalization()(ia)), name="inner_bn")
    x = keras.Input((4, 3))
    return keras.Model(x, L.GRU(2)(inner(x))), [_f32(2, 4, 3)]


def _shared():
    x1, x2 = keras.Input((4, 3)), keras.Input((4, 3))
    shared, block = L.LSTM(2, name="shared"), keras.Sequential([keras.Input((4, 3)), L.Dense(3)], name="block")
    return keras.Model([x1, x2], L.Add()([shared(block(x1)), shared(block(x2))])), [_f32(2, 4, 3), _f32(2, 4, 3)]


def _repeat_seq2seq():
    """The encoder -> RepeatVector -> decoder model (a sequence autoencoder), with a mask."""
    x = keras.Input((None, 3))
    code = L.LSTM(4)(L.Masking()(x))
    y = L.TimeDistributed(L.Dense(3))(L.GRU(4, return_sequences=True)(L.RepeatVector(3)(code)))
    xs = _f32(2, 5, 3)
    xs[0, 3:] = 0.0
    return keras.Model(x, y), [xs]


def _crnn():
    """A CRNN (OCR, speech): conv stack -> reshape to a sequence of columns -> Bidirectional(LSTM),
    and the image's width as a second output's input."""
    image = keras.Input((8, 6, 1), name="image")
    f = L.MaxPooling2D((2, 1))(L.Conv2D(2, 3, padding="same", activation="relu")(image))
    seq = L.Reshape((6, 8))(L.Permute((2, 1, 3))(f))
    y = L.Bidirectional(L.LSTM(3, return_sequences=True))(seq)
    return keras.Model(image, [L.Dense(4, activation="softmax")(y), L.GlobalAveragePooling1D()(y)]), [_f32(2, 8, 6, 1)]


def _build():
    models = _seq2seq()
    for name, make in (
        ("mask_input", _mask_input),
        ("two_embeddings", _two_embeddings),
        ("nested", _nested),
        ("nested_batch_norm", _nested_batch_norm),
        ("shared", _shared),
        ("repeat_seq2seq", _repeat_seq2seq),
        ("crnn", _crnn),
    ):
        model, xs = make()
        _randomize(model)
        models[name] = (model, xs)
    return models


NAMES = [
    "seq2seq",
    "encoder",
    "decoder",
    "mask_input",
    "two_embeddings",
    "nested",
    "nested_batch_norm",
    "shared",
    "repeat_seq2seq",
    "crnn",
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{name: (path without suffix, inputs, Keras 3's predictions as a list, the Keras model)};
    each saved as .keras and as legacy .h5."""
    root, out = tmp_path_factory.mktemp("graphs"), {}
    keras.utils.set_random_seed(0)
    for name, (model, xs) in _build().items():
        model.save(root / f"{name}.keras")
        model.save(root / f"{name}.h5")
        expected = model.predict(xs, verbose=0)
        out[name] = (
            root / name,
            xs,
            [np.asarray(e) for e in (expected if isinstance(expected, list) else [expected])],
            model,
        )
    return out


def _close(got, expected):
    got = got if isinstance(got, list) else [got]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(np.asarray(g), e, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("name", NAMES)
def test_loads_from_both_formats_and_saves_back(saved, name, tmp_path):
    """The .keras and .h5 files give the same graph and Keras 3's predictions (a list for several
    outputs); ``save_keras`` writes it back for Keras 3's safe mode, predicting the same."""
    stem, xs, expected, _ = saved[name]
    model, variables = rnnjax.load_keras(f"{stem}.keras")
    model_h5, variables_h5 = rnnjax.load_keras(f"{stem}.h5")
    assert model_h5 == model
    apply = jax.jit(model.apply)
    for v in (variables, variables_h5):
        got = apply(v, *map(jnp.asarray, xs))
        assert isinstance(got, list) == (len(expected) > 1)
        _close(got, expected)
    rnnjax.save_keras(model, variables, tmp_path / "back.keras")
    _close(keras.saving.load_model(tmp_path / "back.keras", safe_mode=True).predict(xs, verbose=0), expected)


def test_optimizer_slots_follow_keras_order_in_nested_models(saved):
    """``load_keras_optimizer`` matches slots to parameters in ``model.trainable_weights``'s order:
    a nested model's layers in its own order, a frozen layer left out."""
    from rnnjax.keras import config as kconfig
    from rnnjax.keras import formats, optimizer_import

    stem, _, _, km = saved["nested"]
    archive = formats.read_zip(f"{stem}.keras")
    spec = kconfig.parse_model(archive["config"], archive["metadata"]["keras_version"])
    _, variables = rnnjax.load_keras(f"{stem}.keras")
    order, frozen = optimizer_import._order(spec, variables["params"])
    assert [shape for _, shape in order] == [tuple(w.shape) for w in km.trainable_weights]
    assert frozen == ["pair/frozen"]


def test_inputs_by_name_or_as_a_list(saved):
    stem, (xe, xd), expected, _ = saved["seq2seq"]
    model, variables = rnnjax.load_keras(f"{stem}.keras")
    assert model.input_names == ["enc_in", "dec_in"]
    _close(model.apply(variables, {"dec_in": xd, "enc_in": xe}), expected)
    _close(model.apply(variables, [xe, xd]), expected)
    with pytest.raises(ValueError, match=r"takes 2 input\(s\) \['enc_in', 'dec_in'\], got 1"):
        model.apply(variables, xe)
    with pytest.raises(ValueError, match="expected the keys"):
        model.apply(variables, {"enc_in": xe})


def test_seq2seq_inference_loop_matches_keras(saved):
    """Encoder once, then the decoder model one step at a time with its own states, as Keras
    users decode."""
    (enc_stem, (xe,), _, k_enc), (dec_stem, _, _, k_dec) = saved["encoder"], saved["decoder"]
    enc, ve = rnnjax.load_keras(f"{enc_stem}.keras")
    dec, vd = rnnjax.load_keras(f"{dec_stem}.h5")
    step = jax.jit(dec.apply)
    h, c = enc.apply(ve, xe)
    kh, kc = k_enc.predict(xe, verbose=0)
    token = np.zeros((2, 1, 2), np.float32)
    for _ in range(3):
        y, h, c = step(vd, token, h, c)
        ky, kh, kc = k_dec.predict([token, kh, kc], verbose=0)
        _close([y, h, c], [ky, kh, kc])
        token = np.asarray(jax.nn.one_hot(jnp.argmax(y, -1), 2))


# ---- custom layers ----
class Scale(L.Layer):
    """A custom Keras layer with weights: ``x @ w + b``."""

    def __init__(self, units=2, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1], self.units), name="w")
        self.b = self.add_weight(shape=(self.units,), name="b", initializer="ones")

    def call(self, x):
        return x @ self.w + self.b

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class FlaxScale(nn.Module):
    """The user's Flax version of ``Scale``; its weights in the order Keras created them."""

    units: int
    keras_weight_order = ("w", "b")

    @nn.compact
    def __call__(self, x):
        return x @ self.param("w", nn.initializers.zeros, (x.shape[-1], self.units)) + self.param(
            "b", nn.initializers.zeros, (self.units,)
        )


def _is_json(value):
    if type(value) is dict:
        return all(type(k) is str and _is_json(v) for k, v in value.items())
    if type(value) is list:
        return all(_is_json(v) for v in value)
    return type(value) in (str, int, float, bool, type(None))


@pytest.fixture(scope="module")
def custom_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("custom")
    x = keras.Input((4, 3))
    model = keras.Model(x, L.LSTM(2)(Scale(3, name="scale")(x)))
    _randomize(model)
    model.save(root / "c.keras")
    model.save(root / "c.h5")
    xs = _f32(2, 4, 3)
    return root, xs, model.predict(xs, verbose=0)


@pytest.mark.parametrize("ext", ["keras", "h5"])
def test_custom_layer_from_a_factory(custom_model, ext):
    root, xs, expected = custom_model
    received = []

    def factory(config):
        received.append(config)
        return FlaxScale(config["units"])

    model, variables = rnnjax.load_keras(root / f"c.{ext}", custom_objects={"Scale": factory})
    _close(model.apply(variables, xs), [expected])
    assert len(received) == 1 and _is_json(received[0]) and received[0]["units"] == 3
    assert variables["params"]["scale"]["w"].shape == (3, 3)


def test_custom_layer_without_a_factory_and_unmatched_keys(custom_model):
    root, _, _ = custom_model
    with pytest.raises(KerasImportError) as err:
        rnnjax.load_keras(root / "c.keras")
    assert "class 'Scale'" in str(err.value) and "['dtype', 'name', 'trainable', 'units']" in str(err.value)
    assert "custom_objects={'Scale': factory}" in str(err.value)
    with pytest.raises(KerasImportError, match="custom_objects key 'Scal' matches no layer"):
        rnnjax.load_keras(root / "c.keras", custom_objects={"Scale": lambda c: FlaxScale(3), "Scal": print})
    with pytest.raises(KerasImportError, match=r"'scale'.*weight .* has shape \(3, 3\), the model expects \(3, 2\)"):
        rnnjax.load_keras(root / "c.h5", custom_objects={"scale": lambda c: FlaxScale(2)})
    with pytest.raises(TypeError, match=r"`custom_objects\['Scale'\]`: expected a callable"):
        rnnjax.load_keras(root / "c.h5", custom_objects={"Scale": 3})


def test_lambda_only_by_its_layer_name(tmp_path):
    x = keras.Input((3,))
    keras.Model(x, L.Dense(2)(L.Lambda(lambda t: t * 2.0, name="double")(x))).save(tmp_path / "l.keras")

    class Double(nn.Module):
        def __call__(self, x):
            return x * 2.0

    with pytest.raises(KerasImportError, match="custom_objects key 'Lambda' matches no layer"):
        rnnjax.load_keras(tmp_path / "l.keras", custom_objects={"Lambda": lambda c: Double()})
    model, variables = rnnjax.load_keras(tmp_path / "l.keras", custom_objects={"double": lambda c: Double()})
    xs = _f32(2, 3)
    expected = keras.saving.load_model(tmp_path / "l.keras", safe_mode=False).predict(xs, verbose=0)
    _close(model.apply(variables, xs), [expected])


def test_one_refusal_lists_every_problem_the_same_in_both_formats(tmp_path):
    @keras.saving.register_keras_serializable(package="mine")
    class Registered(Scale):
        pass

    x = keras.Input((4, 3))
    y = L.Lambda(lambda t: t + 1.0, name="plus_one")(x)
    y = Registered(3, name="registered")(Scale(3, name="scale")(y))
    y = L.GRU(2, activation="gelu", return_sequences=True, name="gru")(L.UnitNormalization(name="unit")(y))
    model = keras.Model(x, y)
    model.save(tmp_path / "m.keras")
    model.save(tmp_path / "m.h5")
    found = []
    for ext in ("keras", "h5"):
        with pytest.raises(KerasImportError) as err:
            rnnjax.load_keras(tmp_path / f"m.{ext}")
        found.append(set(err.value.problems))
        assert set(rnnjax.inspect_keras(tmp_path / f"m.{ext}")["problems"]) == found[-1]
    assert found[0] == found[1] and len(found[0]) == 5, found
    text = "\n".join(found[0])
    for part in (
        "'plus_one' (Lambda)",
        "class 'Scale'",
        "custom class 'mine>Registered'",
        "class 'UnitNormalization'",
        "'gru' (GRU): `activation` 'gelu'",
    ):
        assert part in text


def test_subclassed_model_says_how_to_load_its_weights(tmp_path):
    class Sub(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.rnn, self.head = L.LSTM(3, name="rnn"), L.Dense(2, name="head")

        def call(self, x):
            return self.head(self.rnn(x))

    sub, xs = Sub(), _f32(2, 4, 3)
    sub(xs)
    _randomize(sub)
    sub.save(tmp_path / "sub.keras")
    with pytest.raises(KerasImportError, match=r"class 'Sub'.*subclassed.*rnnjax.load_keras_weights"):
        rnnjax.load_keras(tmp_path / "sub.keras")
    mine = rnnjax.Sequential([rnnjax.LSTM(3, recurrent_activation="sigmoid", name="rnn"), rnnjax.Dense(2, name="head")])
    variables = rnnjax.load_keras_weights(tmp_path / "sub.keras", mine, mine.init(jax.random.key(0), xs))
    _close(mine.apply(variables, xs), [sub.predict(xs, verbose=0)])


def test_keras3_drops_a_mask_a_module_cannot_take_and_keras2_refuses(tmp_path):
    ids = keras.Input((None,), dtype="int32")
    keras.Model(ids, L.GlobalMaxPooling1D()(Scale(2, name="scale")(L.Embedding(5, 3, mask_zero=True)(ids)))).save(
        tmp_path / "m.keras"
    )
    model, variables = rnnjax.load_keras(tmp_path / "m.keras", custom_objects={"Scale": lambda c: FlaxScale(2)})
    with pytest.warns(UserWarning, match="does not support masking; the mask it was passed is dropped"):
        model.apply(variables, jnp.array([[1, 2, 0]]))
    emb = layer("Embedding", name="embedding", input_dim=5, output_dim=3, mask_zero=True)
    config = k2.functional(
        [
            (input_layer("ids", [None], "int32"), []),
            (emb, [inbound("ids")]),
            (layer("Scale", name="scale", units=2), [inbound("embedding")]),
        ],
        ["ids"],
        [("scale", 0, 0)],
    )
    k2.write_model(
        tmp_path / "k2.h5",
        config,
        [
            ("ids", []),
            ("embedding", [("embedding/embeddings:0", _f32(5, 3))]),
            ("scale", [("scale/w:0", _f32(3, 2)), ("scale/b:0", _f32(2))]),
        ],
    )
    with pytest.raises(KerasImportError, match="'scale' .Scale. call 0: FlaxScale does not support masking"):
        rnnjax.load_keras(tmp_path / "k2.h5", custom_objects={"Scale": lambda c: FlaxScale(2)})


# ---- Keras 2 (tf-keras) graph configs ----
def _lstm(name, units, **extra):
    return layer("LSTM", name=name, units=units, recurrent_activation="sigmoid", time_major=False, **extra)


def _lstm_weights(name, i, u):
    k, r, b = _f32(i, 4 * u) * 0.5, _f32(u, 4 * u) * 0.5, _f32(4 * u) * 0.5
    return (name, [(f"{name}/lstm_cell/{w}:0", a) for w, a in zip(("kernel", "recurrent_kernel", "bias"), (k, r, b))])


def _f64(weights):
    return [a.astype(np.float64) for _, a in weights[1]]


def test_keras2_seq2seq_states_written_after_the_sequence(tmp_path):
    """tf-keras writes ``decoder(x, initial_state=[h, c])`` as the inbound entries [x, h, c]."""
    enc_w, dec_w = _lstm_weights("encoder", 3, 4), _lstm_weights("decoder", 2, 4)
    config = k2.functional(
        [
            (input_layer("enc_in", [None, 3]), []),
            (input_layer("dec_in", [None, 2]), []),
            (_lstm("encoder", 4, return_state=True), [inbound("enc_in")]),
            (
                _lstm("decoder", 4, return_sequences=True, return_state=True),
                [inbound("dec_in", ("encoder", 0, 1), ("encoder", 0, 2))],
            ),
        ],
        ["enc_in", "dec_in"],
        [("decoder", 0, 0), ("decoder", 0, 2)],
    )
    k2.write_model(tmp_path / "s.h5", config, [("enc_in", []), ("dec_in", []), enc_w, dec_w])
    xe, xd = _f32(2, 5, 3), _f32(2, 3, 2)
    model, variables = rnnjax.load_keras(tmp_path / "s.h5")
    ys, cs = model.apply(variables, xe, xd)
    for row in range(2):
        step, s0 = k2.lstm_step(*_f64(enc_w))
        state = k2.run(step, s0, xe[row].astype(np.float64), None)
        step, _ = k2.lstm_step(*_f64(dec_w))
        seq, (h, c) = k2.outputs_of(step, state, xd[row].astype(np.float64))
        np.testing.assert_allclose(ys[row], seq, atol=TOL)
        np.testing.assert_allclose(cs[row], c, atol=TOL)


def test_keras2_mask_from_another_input_and_a_shared_layer(tmp_path):
    """``lstm(x, mask=m)`` and ``lstm(x2)`` (one LSTM, two calls: kwargs as [layer, node, tensor])."""
    w = _lstm_weights("lstm", 3, 2)
    config = k2.functional(
        [
            (input_layer("x", [5, 3]), []),
            (input_layer("m", [5], "bool"), []),
            (input_layer("x2", [5, 3]), []),
            (_lstm("lstm", 2), [inbound("x", mask=["m", 0, 0]), inbound("x2")]),
            (layer("Add", name="add"), [inbound(("lstm", 0, 0), ("lstm", 1, 0))]),
        ],
        ["x", "m", "x2"],
        [("add", 0, 0)],
    )
    k2.write_model(tmp_path / "m.h5", config, [("x", []), ("m", []), ("x2", []), w, ("add", [])])
    x, x2 = _f32(2, 5, 3), _f32(2, 5, 3)
    m = np.array([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]], bool)
    model, variables = rnnjax.load_keras(tmp_path / "m.h5")
    got = np.asarray(model.apply(variables, {"x": x, "m": m, "x2": x2}))
    step, s0 = k2.lstm_step(*_f64(w))
    for row in range(2):
        expected = (
            k2.run(step, s0, x[row].astype(np.float64), m[row])[0]
            + k2.run(step, s0, x2[row].astype(np.float64), None)[0]
        )
        np.testing.assert_allclose(got[row], expected, atol=TOL)


def test_keras2_nested_sequential_weights_trainable_first(tmp_path):
    """A nested model's group lists all its trainable weights, then the non-trainable ones (here
    a frozen Dense before the LSTM moves to the end)."""
    dk, db = _f32(3, 3), _f32(3)
    lw = _lstm_weights("lstm_1", 3, 2)
    inner = {
        "class_name": "Sequential",
        "config": {
            "name": "inner",
            "layers": [
                input_layer("inner_in", [4, 3]),
                layer("Dense", name="frozen", units=3, trainable=False),
                _lstm("lstm_1", 2),
            ],
        },
    }
    config = k2.functional([(input_layer("x", [4, 3]), []), (inner, [inbound("x")])], ["x"], [("inner", 0, 0)])
    k2.write_model(
        tmp_path / "n.h5", config, [("x", []), ("inner", lw[1] + [("frozen/kernel:0", dk), ("frozen/bias:0", db)])]
    )
    x = _f32(2, 4, 3)
    model, variables = rnnjax.load_keras(tmp_path / "n.h5")
    got = np.asarray(model.apply(variables, x))
    step, s0 = k2.lstm_step(*_f64(lw))
    for row in range(2):
        np.testing.assert_allclose(got[row], k2.run(step, s0, x[row] @ dk.astype(np.float64) + db, None)[0], atol=TOL)
