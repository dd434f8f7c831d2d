"""rnnjax.load_keras / load_keras_weights on files Keras 3 (JAX backend) writes itself, compared
with Keras 3's own predictions."""

import os
import shutil

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import rnnjax  # noqa: E402

L = keras.layers
TOL = 1e-5
RNG = np.random.default_rng(20)
# ids with padding on the right and holes in the middle (masks with holes)
IDS = np.array([[3, 1, 0, 4, 2, 0, 0], [5, 6, 7, 1, 2, 3, 4], [2, 0, 0, 0, 0, 0, 0]], np.int32)
FLOATS = RNG.normal(size=(3, 8, 3)).astype(np.float32)
FLOATS[0, 5:] = 0.0  # masked by Masking
FLOATS[1, 2] = 0.0


def _randomize(model):
    """Non-trivial weights everywhere (BatchNormalization statistics and biases included)."""
    for w in model.weights:
        value = RNG.normal(scale=0.5, size=w.shape).astype(np.float32)
        if "variance" in w.path:
            value = np.abs(value) + 0.5
        w.assign(value)


def _sequential(*layers, shape, dtype="float32"):
    return keras.Sequential([L.Input(shape, dtype=dtype), *layers])


def _functional_mixed():
    inp = keras.Input((None,), dtype="int32")
    e = L.Embedding(10, 4, mask_zero=True)(inp)
    a = L.Bidirectional(L.LSTM(3, return_sequences=True))(e)
    b = L.RNN([L.LSTMCell(2), L.GRUCell(3)], return_sequences=True)(a)
    c = L.Conv1D(4, 2, padding="same", activation="relu")(b)
    d = L.BatchNormalization()(c)
    f = L.Concatenate()([d, b])
    g = L.GlobalAveragePooling1D()(f)
    return keras.Model(inp, L.Dense(2, activation="softmax")(g))


def _functional_merges():
    inp = keras.Input((8, 3))
    m = L.Masking()(inp)
    s = L.Bidirectional(L.GRU(3, return_sequences=True), merge_mode="sum")(m)
    a = L.Bidirectional(L.SimpleRNN(3, return_sequences=True), merge_mode="ave")(m)
    p = L.Bidirectional(L.LSTM(3, return_sequences=True), merge_mode="mul")(m)
    added = L.Add()([s, a, p])
    n = L.LayerNormalization()(added)
    last = L.Bidirectional(L.GRU(2, reset_after=False))(n)
    pooled = L.GlobalMaxPooling1D()(L.TimeDistributed(L.Dense(2))(added))
    return keras.Model(inp, L.Concatenate()([last, pooled]))


MODELS = {
    "embedding_lstm_gru": (
        lambda: _sequential(
            L.Embedding(10, 4, mask_zero=True),
            L.LSTM(5, return_sequences=True),
            L.GRU(4, return_sequences=True, recurrent_activation="hard_sigmoid"),
            L.LSTM(3, go_backwards=True),
            L.Dense(2, activation="tanh"),
            shape=(None,),
            dtype="int32",
        ),
        IDS,
    ),
    "masking_simple_rnn_time_distributed": (
        lambda: _sequential(
            L.Masking(0.0),
            L.SimpleRNN(4, return_sequences=True, activation="relu"),
            L.TimeDistributed(L.Dense(3)),
            L.Dropout(0.3),
            L.Activation("sigmoid"),
            L.RNN(L.LSTMCell(3), return_sequences=True),
            L.GRU(3, reset_after=False),
            shape=(8, 3),
        ),
        FLOATS,
    ),
    "conv_pool_norm": (
        lambda: _sequential(
            L.Conv1D(4, 3, padding="same"),
            L.MaxPooling1D(2),
            L.Conv1D(3, 2, padding="causal", dilation_rate=2),
            L.AveragePooling1D(3, strides=1, padding="same"),
            L.SpatialDropout1D(0.2),
            L.LSTM(4, return_sequences=True, recurrent_activation="hard_sigmoid"),
            L.BatchNormalization(),
            L.LayerNormalization(),
            L.Flatten(),
            L.Dense(2),
            shape=(8, 3),
        ),
        FLOATS,
    ),
    "rnn_cells_global_average": (
        lambda: _sequential(
            L.RNN(L.StackedRNNCells([L.SimpleRNNCell(3), L.GRUCell(3), L.LSTMCell(2)]), return_sequences=True),
            L.GlobalAveragePooling1D(),
            shape=(8, 3),
        ),
        FLOATS,
    ),
    "conv_lstm": (
        lambda: _sequential(
            L.ConvLSTM1D(2, 3, padding="same", return_sequences=True),
            L.TimeDistributed(L.Flatten()),
            L.LSTM(2),
            shape=(4, 5, 2),
        ),
        RNG.normal(size=(2, 4, 5, 2)).astype(np.float32),
    ),
    "conv_lstm2d_3d": (
        lambda: _sequential(
            L.ConvLSTM2D(2, (2, 2), strides=(1, 1), return_sequences=False), L.Flatten(), L.Dense(2), shape=(3, 4, 4, 2)
        ),
        RNG.normal(size=(2, 3, 4, 4, 2)).astype(np.float32),
    ),
    "conv_lstm3d": (
        lambda: _sequential(L.ConvLSTM3D(2, 2, padding="same"), L.Flatten(), shape=(2, 3, 3, 3, 1)),
        RNG.normal(size=(2, 2, 3, 3, 3, 1)).astype(np.float32),
    ),
    "functional_mixed": (_functional_mixed, IDS),
    "functional_merges": (_functional_merges, FLOATS),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{name: (path of the .keras file, inputs, Keras 3's predictions, the keras model)}."""
    out = {}
    root = tmp_path_factory.mktemp("keras3")
    for name, (make, x) in MODELS.items():
        keras.utils.set_random_seed(0)
        model = make()
        _randomize(model)
        path = root / f"{name}.keras"
        model.save(path)
        out[name] = (path, x, np.asarray(model.predict(x, verbose=0)), model)
    return out


@pytest.mark.parametrize("name", sorted(MODELS))
def test_keras3_archive_predicts_as_keras(saved, name):
    path, x, expected, _ = saved[name]
    model, variables = rnnjax.load_keras(path)
    got = np.asarray(model.apply(variables, jnp.asarray(x)))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=TOL)


def test_keras3_hard_sigmoid_is_keras3s(saved):
    """Keras 3's 'hard_sigmoid' (x/6 + 1/2) must not be read as Keras 2's (0.2x + 1/2)."""
    path, x, expected, _ = saved["embedding_lstm_gru"]
    model, variables = rnnjax.load_keras(path)
    assert model.layers[2].recurrent_activation == "hard_sigmoid_keras3"
    wrong = model.layers[2].clone(recurrent_activation="hard_sigmoid")
    other = rnnjax.Sequential([*model.layers[:2], wrong, *model.layers[3:]])
    assert np.abs(np.asarray(other.apply(variables, jnp.asarray(x))) - expected).max() > 1e-4


def test_format_detected_from_content_not_suffix(saved, tmp_path):
    path, x, expected, _ = saved["rnn_cells_global_average"]
    renamed = tmp_path / "model.h5"
    shutil.copy(path, renamed)
    model, variables = rnnjax.load_keras(renamed)
    np.testing.assert_allclose(np.asarray(model.apply(variables, jnp.asarray(x))), expected, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("name", ["embedding_lstm_gru", "functional_merges"])
def test_keras3_legacy_h5(saved, tmp_path, name):
    """Keras 3's legacy .h5 (the Keras 2 layout, names without ':0', a Keras 3 config)."""
    _, x, expected, kmodel = saved[name]
    kmodel.save(tmp_path / "m.h5")
    model, variables = rnnjax.load_keras(tmp_path / "m.h5")
    np.testing.assert_allclose(np.asarray(model.apply(variables, jnp.asarray(x))), expected, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("name", ["conv_pool_norm", "functional_mixed"])
def test_keras3_weights_file_into_a_loaded_model(saved, tmp_path, name):
    """.weights.h5 (no config) into the same architecture: new weights give Keras's new numbers."""
    path, x, _, kmodel = saved[name]
    model, variables = rnnjax.load_keras(path)
    _randomize(kmodel)
    kmodel.save_weights(tmp_path / "w.weights.h5")
    expected = np.asarray(kmodel.predict(x, verbose=0))
    loaded = rnnjax.load_keras_weights(tmp_path / "w.weights.h5", model, variables)
    np.testing.assert_allclose(np.asarray(model.apply(loaded, jnp.asarray(x))), expected, atol=TOL, rtol=TOL)
    assert np.abs(np.asarray(model.apply(variables, jnp.asarray(x))) - expected).max() > 1e-3


def test_keras3_weights_into_a_user_built_sequential(saved, tmp_path):
    """A Keras 3 .weights.h5 into an rnnjax.Sequential built by hand with Keras 3's settings."""
    _, x, expected, kmodel = saved["embedding_lstm_gru"]
    kmodel.save_weights(tmp_path / "w.weights.h5")
    mine = rnnjax.Sequential(
        [
            rnnjax.Embedding(10, 4, mask_zero=True),
            rnnjax.LSTM(5, recurrent_activation="sigmoid", return_sequences=True),
            rnnjax.GRU(4, recurrent_activation="hard_sigmoid_keras3", reset_after=True, return_sequences=True),
            rnnjax.LSTM(3, recurrent_activation="sigmoid", go_backwards=True),
            rnnjax.Dense(2, activation="tanh"),
        ]
    )
    shapes = jax.eval_shape(mine.init, jax.random.key(0), jnp.asarray(x))
    loaded = rnnjax.load_keras_weights(tmp_path / "w.weights.h5", mine, shapes)
    np.testing.assert_allclose(np.asarray(mine.apply(loaded, jnp.asarray(x))), expected, atol=TOL, rtol=TOL)


def test_inspect_lists_layers_and_weights(saved, capsys):
    from rnnjax.keras.__main__ import main

    path = saved["functional_mixed"][0]
    info = rnnjax.inspect_keras(path)
    assert info["format"] == "Keras 3 .keras archive" and info["keras_version"] == keras.__version__
    assert info["problems"] == []
    by_class = {layer["class_name"]: layer for layer in info["layers"]}
    assert [w[1] for w in by_class["Embedding"]["weights"]] == [(10, 4)]
    assert sorted(w[1] for w in by_class["Bidirectional"]["weights"]) == sorted([(4, 12), (3, 12), (12,)] * 2)
    assert by_class["Embedding"]["config"]["mask_zero"] is True
    assert main(["inspect", str(path)]) == 0
    assert f"{by_class['Bidirectional']['name']} (Bidirectional)" in capsys.readouterr().out


def test_inspect_text_is_readable(saved, tmp_path, capsys):
    """The text report: a nested layer's config (Bidirectional's LSTM) one key per line, not one line
    of thousands of characters; a weights-only file says it records no classes (no 'None') and,
    for Keras 3, that its layers are listed alphabetically, not in the model's order."""
    from rnnjax.keras.__main__ import main

    path, _, _, kmodel = saved["functional_mixed"]
    main(["inspect", str(path)])
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) < 120, max(out.splitlines(), key=len)
    assert "        layer: LSTM\n" in out and "            units: 3\n" in out  # the nested LSTM, key by key
    kmodel.save_weights(tmp_path / "w.weights.h5")
    assert main(["inspect", str(tmp_path / "w.weights.h5")]) == 1
    out = capsys.readouterr().out
    assert "(None)" not in out
    assert "weights only: no layer classes recorded; layers in alphabetical order (the file does not record" in out


def test_stateful_model_starts_from_zero_states(tmp_path):
    """Keras does not save states: a loaded stateful model starts from zeros, as Keras's does
    after reset_states(), and carries them from batch to batch."""
    keras.utils.set_random_seed(3)
    kmodel = keras.Sequential(
        [L.Input(batch_shape=(3, 8, 3)), L.LSTM(4, stateful=True, return_sequences=True), L.GRU(2, stateful=True)]
    )
    _randomize(kmodel)
    kmodel.save(tmp_path / "s.keras")
    model, variables = rnnjax.load_keras(tmp_path / "s.keras")
    assert all(float(jnp.abs(s).max()) == 0.0 for s in jax.tree_util.tree_leaves(variables["rnn_state"]))
    for chunk in (FLOATS, FLOATS[:, ::-1]):
        want = np.asarray(kmodel(np.ascontiguousarray(chunk)))  # a direct call carries Keras 3's states
        got, updates = model.apply(variables, jnp.asarray(np.ascontiguousarray(chunk)), mutable=["rnn_state"])
        variables = {**variables, **updates}
        np.testing.assert_allclose(np.asarray(got), want, atol=TOL, rtol=TOL)


def test_masked_steps_do_not_reach_the_numbers(saved):
    """NaN or inf at masked steps (Masking's mask_value rows excepted) changes nothing: the
    Masking -> ... -> GlobalAveragePooling1D path of a loaded model."""
    path, x, expected, _ = saved["rnn_cells_global_average"]
    model, variables = rnnjax.load_keras(path)
    mask = np.any(FLOATS != 0, -1)
    masked = rnnjax.Sequential(list(model.layers))
    clean = np.asarray(masked.apply(variables, jnp.asarray(FLOATS), mask=jnp.asarray(mask)))
    dirty = FLOATS.copy()
    dirty[~mask] = np.nan
    dirty[0, 6, 1] = np.inf
    got = np.asarray(masked.apply(variables, jnp.asarray(dirty), mask=jnp.asarray(mask)))
    np.testing.assert_array_equal(got, clean)
    assert np.isfinite(got).all()


@pytest.mark.parametrize("name", ["conv_pool_norm", "functional_mixed"])
def test_loaded_models_partition_over_the_batch(saved, name):
    """A batch-sharded forward pass of a loaded model (Conv1D, pooling, normalization, Flatten,
    merges) compiles without a single collective: no activation crosses devices."""
    from tests.sharding_util import batch_mesh, collectives, compiled_text, replicate, shard_batch

    path, x, _, _ = saved[name]
    model, variables = rnnjax.load_keras(path)
    mesh = batch_mesh()
    xs = shard_batch(mesh, jnp.asarray(np.concatenate([x] * 3)[:8]))
    text = compiled_text(lambda v, a: model.apply(v, a), replicate(mesh, variables), xs)
    assert sum(collectives(text).values()) == 0, collectives(text)
