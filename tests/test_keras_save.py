"""rnnjax.save_keras: rnnjax model -> Keras 3 .keras archive -> keras.saving.load_model (safe
mode) -> Keras 3's predictions equal rnnjax's apply (to 1e-5), masks included; and the refusals."""

import os
import subprocess
import sys
import zipfile

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from custom_cells import MinimalRNNCell  # noqa: E402

import rnnjax  # noqa: E402
from rnnjax.keras.save_objects import _ACTIVATION_NAMES, KerasSaveError  # noqa: E402

ATOL = 1e-5
RNG = np.random.default_rng(0)


def _perturbed(variables, seed=1, scale=0.3):
    """``variables`` with every parameter moved off its initial value (biases are zeros at init)."""
    leaves, tree = jax.tree_util.tree_flatten(variables["params"])
    rng = np.random.default_rng(seed)
    moved = [np.asarray(a) + scale * rng.standard_normal(a.shape).astype(np.asarray(a).dtype) for a in leaves]
    return {**variables, "params": jax.tree_util.tree_unflatten(tree, moved)}


def _roundtrip(model, x, tmp_path, scale=0.3, **kwargs):
    """Saves, loads in safe mode, and returns (rnnjax outputs, Keras outputs) as lists."""
    variables = _perturbed(model.init(jax.random.PRNGKey(0), x), scale=scale)
    path = tmp_path / "m.keras"
    rnnjax.save_keras(model, variables, path, **kwargs)
    loaded = keras.saving.load_model(path, safe_mode=True)
    ours, theirs = model.apply(variables, x), loaded(x, training=False)
    # Keras 3 nests a stacked RNN's states per cell; rnnjax's are flat (Keras 2): compare leaves.
    ours, theirs = (
        jax.tree_util.tree_leaves(ours),
        jax.tree_util.tree_leaves(list(theirs) if isinstance(theirs, tuple) else theirs),
    )
    return [np.asarray(a) for a in ours], [np.asarray(a) for a in theirs], loaded


def _check(model, x, tmp_path, **kwargs):
    ours, theirs, loaded = _roundtrip(model, x, tmp_path, **kwargs)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)
    return loaded


def _seq(batch=2, steps=5, features=3, scale=1.0):
    return (scale * RNG.standard_normal((batch, steps, features))).astype(np.float32)


L = rnnjax
RECURRENT_ALONE = {
    "simple_rnn_relu": L.SimpleRNN(4, activation="relu", return_sequences=True),
    "simple_rnn_hard_sigmoid": L.SimpleRNN(4, activation="hard_sigmoid"),
    "simple_rnn_unroll": L.SimpleRNN(3, unroll=True),
    "gru_reset_before_default": L.GRU(4),  # Keras 2 defaults: hard_sigmoid, reset_after=False
    "gru_reset_after_sigmoid": L.GRU(4, reset_after=True, recurrent_activation="sigmoid", return_sequences=True),
    "gru_reset_after_hard_sigmoid_activation": L.GRU(4, reset_after=True, activation="hard_sigmoid"),
    "gru_no_bias_backwards": L.GRU(3, use_bias=False, go_backwards=True),
    "lstm_default": L.LSTM(4, return_sequences=True),
    "lstm_keras3_hard_sigmoid": L.LSTM(4, recurrent_activation="hard_sigmoid_keras3", unit_forget_bias=False),
    "lstm_return_state": L.LSTM(3, return_state=True, go_backwards=True),
    "gru_return_state_sequences": L.GRU(3, return_state=True, return_sequences=True, reset_after=True),
    "rnn_lstm_cell": L.RNN(L.LSTMCell(3), return_sequences=True),
    "rnn_cell_list": L.RNN([L.GRUCell(3), L.SimpleRNNCell(2), L.GRUCell(2, reset_after=True)]),
    "rnn_stacked_cells": L.RNN(L.StackedRNNCells([L.LSTMCell(2), L.LSTMCell(3)]), return_state=True),
    "cudnn_lstm": L.CuDNNLSTM(4, return_sequences=True),
    "cudnn_gru": L.CuDNNGRU(4, return_state=True),
    "bidirectional_none": L.Bidirectional(L.LSTM(3), merge_mode=None),
    "bidirectional_state": L.Bidirectional(L.GRU(3, return_state=True, reset_after=True)),
}


@pytest.mark.parametrize("name", sorted(RECURRENT_ALONE))
def test_single_recurrent_layer(name, tmp_path):
    # Large inputs saturate the (Keras 2) hard sigmoid, so its clipped regime is compared too.
    _check(RECURRENT_ALONE[name], _seq(scale=3.0), tmp_path)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave"])
def test_bidirectional_merge_modes_with_mask(merge_mode, tmp_path):
    ids = np.array([[3, 1, 4, 1, 5, 0, 0], [0, 0, 2, 6, 5, 3, 5]], np.int32)  # right and left padding
    model = L.Sequential(
        [
            L.Embedding(7, 3, mask_zero=True),
            L.Bidirectional(L.LSTM(4, return_sequences=True), merge_mode=merge_mode),
            L.Bidirectional(L.GRU(3, reset_after=True), merge_mode=merge_mode),
        ]
    )
    _check(model, ids, tmp_path)


def test_bidirectional_backwards_layer_and_explicit_backward_layer(tmp_path):
    x = _seq()
    _check(L.Bidirectional(L.SimpleRNN(3, go_backwards=True, return_sequences=True)), x, tmp_path)
    explicit = L.Bidirectional(
        L.LSTM(3, return_sequences=True), backward_layer=L.GRU(3, go_backwards=True, return_sequences=True)
    )
    _check(explicit, x, tmp_path)


@pytest.mark.parametrize("case", ["conv_lstm1d", "stacked_cells", "cudnn_gru", "named"])
def test_bidirectional_of_every_kind(case, tmp_path):
    if case == "conv_lstm1d":
        x = RNG.standard_normal((2, 3, 6, 2)).astype(np.float32)
        model = L.Sequential([L.Bidirectional(L.ConvLSTM1D(2, 3, return_sequences=True), merge_mode="ave")])
        _check(model, x, tmp_path, input_shape=(3, 6, 2))
        return
    inner = {
        "stacked_cells": L.RNN([L.GRUCell(3), L.LSTMCell(2)], return_sequences=True),
        "cudnn_gru": L.CuDNNGRU(3, return_sequences=True),
        "named": L.LSTM(3, name="encoder", return_sequences=True),
    }[case]
    model = L.Sequential(
        [
            L.Bidirectional(inner, merge_mode="mul", name="bi"),
            L.TimeDistributed(L.Dropout(0.5)),
            L.Dense(2, name="head"),
        ]
    )
    _check(model, _seq(), tmp_path)


def test_masking_with_holes_through_stack(tmp_path):
    x = _seq(steps=6, features=4)
    x[0, 2] = 0.0  # a hole
    x[1, :2] = 0.0  # leading masked steps
    model = L.Sequential(
        [
            L.Masking(0.0),
            L.GRU(4, return_sequences=True),
            L.Dropout(0.3),
            L.Activation("tanh"),
            L.TimeDistributed(L.Dense(3, activation="relu")),
            L.LSTM(3, return_sequences=True, zero_output_for_mask=True),
            L.SimpleRNN(2, return_sequences=True),
            L.Dense(2),
        ]
    )
    _check(model, x, tmp_path)


def test_embedding_cudnn_and_dense_head(tmp_path):
    ids = np.array([[3, 1, 4, 1, 0], [2, 6, 5, 0, 0]], np.int32)  # CuDNN layers take right padding only
    model = L.Sequential(
        [
            L.Embedding(7, 4, mask_zero=True),
            L.CuDNNLSTM(5, return_sequences=True),
            L.CuDNNGRU(3),
            L.Dense(4, activation="hard_sigmoid"),
            L.Dense(2, activation="softmax"),
        ]
    )
    _check(model, ids, tmp_path)


@pytest.mark.parametrize(
    "rank, data_format, padding",
    [
        (1, "channels_last", "valid"),
        (2, "channels_last", "same"),
        (2, "channels_first", "valid"),
        (3, "channels_last", "valid"),
    ],
)
def test_conv_lstm(rank, data_format, padding, tmp_path):
    layer_class = {1: L.ConvLSTM1D, 2: L.ConvLSTM2D, 3: L.ConvLSTM3D}[rank]
    spatial = {1: (7,), 2: (5, 5), 3: (4, 4, 4)}[rank]
    shape = (3,) + ((2,) + spatial if data_format == "channels_first" else spatial + (2,))
    x = RNG.standard_normal((2,) + shape).astype(np.float32)
    layer = layer_class(3, 3, padding=padding, data_format=data_format, return_sequences=rank != 3)
    _check(L.Sequential([layer]), x, tmp_path, input_shape=shape)


def test_rnn_of_a_conv_lstm_cell_saves_as_conv_lstm(tmp_path):
    x = RNG.standard_normal((2, 3, 2, 6)).astype(np.float32)
    model = L.RNN(L.ConvLSTM1DCell(2, 3, data_format="channels_first", padding="same"), return_sequences=True)
    loaded = _check(model, x, tmp_path, input_shape=(3, 2, 6))
    assert type(loaded.layers[0]).__name__ == "ConvLSTM1D"
    stacked = L.RNN([L.ConvLSTM1DCell(2, 3), L.ConvLSTM1DCell(2, 3)])
    _refused(
        stacked,
        RNG.standard_normal((2, 3, 6, 2)).astype(np.float32),
        r"cell 0.*ConvLSTM1DCell is a custom cell",
        tmp_path,
        input_shape=(3, 6, 2),
    )


def test_stateful_layer_gets_fixed_batch(tmp_path):
    x = _seq(batch=3)
    model = L.Sequential([L.GRU(4, stateful=True, return_sequences=True), L.Dense(2)])
    variables = _perturbed(model.init(jax.random.PRNGKey(0), x))
    rnnjax.save_keras(model, variables, tmp_path / "s.keras")
    loaded = keras.saving.load_model(tmp_path / "s.keras")
    assert loaded.layers[0].stateful and loaded.inputs[0].shape[0] == 3
    ours, updates = model.apply(variables, x, mutable=["rnn_state"])
    np.testing.assert_allclose(np.asarray(ours), np.asarray(loaded(x)), atol=ATOL, rtol=0)
    with pytest.warns(UserWarning, match=r"current states are not saved"):
        rnnjax.save_keras(model, {**variables, **updates}, tmp_path / "s.keras")
    with pytest.raises(KerasSaveError, match=r"`batch_size`: 4, but the states .* have batch \[3\]"):
        rnnjax.save_keras(model, variables, tmp_path / "s.keras", batch_size=4)


def test_initializers_regularizers_constraints_serialized(tmp_path):
    x = _seq(features=4)
    model = L.Sequential(
        [
            L.LSTM(
                3,
                recurrent_activation="sigmoid",
                kernel_initializer="he_normal",
                bias_initializer="ones",
                recurrent_initializer=rnnjax.initializers.Orthogonal(gain=2.0),
                kernel_regularizer="l2",
                recurrent_regularizer={"class_name": "L1L2", "config": {"l1": 0.01, "l2": 0.02}},
                kernel_constraint="max_norm",
                bias_constraint="non_neg",
                return_sequences=True,
            ),
            L.Dense(
                2, kernel_regularizer="l1", bias_constraint={"class_name": "MinMaxNorm", "config": {"max_value": 2.0}}
            ),
        ]
    )
    variables = _perturbed(model.init(jax.random.PRNGKey(0), x))
    rnnjax.save_keras(model, variables, tmp_path / "r.keras")
    loaded = keras.saving.load_model(tmp_path / "r.keras")
    cell, dense = loaded.layers[0].cell, loaded.layers[1]
    assert isinstance(cell.kernel_initializer, keras.initializers.VarianceScaling)
    assert (cell.kernel_initializer.scale, cell.kernel_initializer.mode) == (2.0, "fan_in")
    assert cell.recurrent_initializer.gain == 2.0 and isinstance(cell.bias_initializer, keras.initializers.Ones)
    assert isinstance(cell.kernel_constraint, keras.constraints.MaxNorm)
    assert isinstance(cell.bias_constraint, keras.constraints.NonNeg)
    assert dense.bias_constraint.max_value == 2.0
    # Keras 3's own penalties on the loaded weights equal rnnjax's.
    loaded(x)
    keras_penalty = float(sum(np.asarray(p) for p in loaded.losses))
    _, aux = model.apply(variables, x, mutable=["losses"])
    np.testing.assert_allclose(keras_penalty, float(rnnjax.regularization_loss(aux)), rtol=1e-5)


@pytest.mark.parametrize("name", sorted(_ACTIVATION_NAMES))
def test_activation_names_mean_the_same_function(name):
    x = np.linspace(-6, 6, 101).reshape(1, 101).astype(np.float32)
    ours = np.asarray(rnnjax.activations.get(name)(x))
    theirs = np.asarray(keras.activations.get(_ACTIVATION_NAMES[name])(x))
    np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=1e-6)


def _refused(model, x, match, tmp_path, **kwargs):
    variables = model.init(jax.random.PRNGKey(0), x)
    path = tmp_path / "bad.keras"
    with pytest.raises(KerasSaveError, match=match):
        rnnjax.save_keras(model, variables, path, **kwargs)
    assert not path.exists() and not list(tmp_path.glob("*.tmp"))  # nothing left behind


def test_refusals(tmp_path):
    x = _seq()
    import flax.linen as nn

    cases = [
        (L.Sequential([L.LSTM(3, return_sequences=True), nn.Dense(2)]), r"layer 1 \(dense, Dense\).*cannot be saved"),
        (L.RNN(MinimalRNNCell(3)), r"MinimalRNNCell is a custom cell"),
        (L.LSTM(3, activation="hard_sigmoid"), r"`activation`.*not linear in the weights"),
        (
            L.Sequential([L.GRU(3, return_sequences=True), L.Activation("hard_sigmoid")]),
            r"layer 1 \(activation.*hard_sigmoid",
        ),
        (L.SimpleRNN(3, activation="gelu"), r"'gelu' cannot be saved"),
        (L.SimpleRNN(3, activation=lambda t: t * 2), r"custom activation"),
        (L.GRU(3, recurrent_activation="sigmoid", kernel_regularizer=lambda w: w.sum()), r"custom regularizer"),
        (L.GRU(3, kernel_regularizer="l2"), r"scaling weights by 1.2.*kernel_regularizer"),
        (L.CuDNNLSTM(3, kernel_constraint="max_norm"), r"CuDNNLSTM is saved as a Keras 3 LSTM.*kernel_constraint"),
        (L.Sequential([L.Dense(2), L.LSTM(3)]), r"`input_shape`: needed.*Dense"),
    ]
    for model, match in cases:
        _refused(model, x, match, tmp_path)
    _refused(L.LSTM(3), x, r"refused because hard_sigmoid='error'", tmp_path, hard_sigmoid="error")
    conv = L.ConvLSTM2D(2, 3)
    _refused(conv, RNG.standard_normal((1, 2, 5, 5, 1)).astype(np.float32), r"ConvLSTM needs its spatial", tmp_path)


def test_argument_errors(tmp_path):
    x = _seq()
    model = L.LSTM(3, recurrent_activation="sigmoid")
    variables = model.init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match=r"`path`.*\.keras"):
        rnnjax.save_keras(model, variables, tmp_path / "m.h5")
    with pytest.raises(ValueError, match=r"`hard_sigmoid`"):
        rnnjax.save_keras(model, variables, tmp_path / "m.keras", hard_sigmoid="approximate")
    with pytest.raises(KerasSaveError, match=r"`input_shape`: the model does not run"):
        rnnjax.save_keras(model, variables, tmp_path / "m.keras", input_shape=(None, 7))
    from flax.core import freeze

    rnnjax.save_keras(model, freeze(variables), tmp_path / "frozen.keras")  # a FrozenDict is fine too
    assert keras.saving.load_model(tmp_path / "frozen.keras").layers[0].cell.units == 3
    with pytest.raises(KerasSaveError, match=r"do not have 4 x 4 columns"):
        rnnjax.save_keras(L.LSTM(4), variables, tmp_path / "m.keras")
    seq = L.Sequential([L.LSTM(3)])
    with pytest.raises(KerasSaveError, match=r"parameters \['cell'\] belong to no layer"):
        rnnjax.save_keras(seq, variables, tmp_path / "m.keras")
    with pytest.raises(KerasSaveError, match=r"layer 0 \(lstm, LSTM\) cell: expected parameters"):
        rnnjax.save_keras(seq, {"params": {}}, tmp_path / "m.keras")


def test_custom_initializer_warns_and_saves(tmp_path):
    def init(key, shape, dtype):
        return jax.random.normal(key, shape, dtype)

    with pytest.warns(UserWarning, match=r"`kernel_initializer`: custom initializer .* GlorotUniform"):
        loaded = _check(L.SimpleRNN(3, kernel_initializer=init), _seq(), tmp_path)
    assert isinstance(loaded.layers[0].cell.kernel_initializer, keras.initializers.GlorotUniform)


def test_archive_layout(tmp_path):
    model = L.Sequential([L.Embedding(5, 2), L.LSTM(3), L.Dense(1), L.Dense(1)])
    variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 4), np.int32))
    rnnjax.save_keras(model, variables, tmp_path / "a.keras")
    with zipfile.ZipFile(tmp_path / "a.keras") as zf:
        assert zf.namelist() == ["metadata.json", "config.json", "model.weights.h5"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        import io

        import h5py

        with h5py.File(io.BytesIO(zf.read("model.weights.h5")), "r") as h5:
            assert h5["layers/lstm/cell/vars/0"].shape == (2, 12)
            assert h5["layers/dense_1/vars"].attrs["name"] == "dense_1"
            assert h5["layers/embedding/vars/0"].shape == (5, 2)


def test_h5py_is_imported_only_when_saving(tmp_path):
    code = (
        "import sys, rnnjax; assert 'h5py' not in sys.modules; rnnjax.save_keras; "
        "assert 'h5py' not in sys.modules; sys.modules['h5py'] = None\n"
        "try:\n    rnnjax.save_keras(None, None, 'x.keras')\nexcept ImportError as e:\n"
        "    assert 'pip install rnnjax[keras]' in str(e); print('ok')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(rnnjax.__file__)))},
    )
    assert out.stdout.strip() == "ok", out.stderr
