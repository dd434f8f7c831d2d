"""rnnjax.load_keras / load_keras_weights on Keras 2 / tf-keras HDF5 files written with h5py in
the documented layout, against float64 numpy references of Keras 2's equations and against
rnnjax layers built by hand with the same weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from tests import keras2_files as k2
from tests.keras2_files import layer, sequential

RNG = np.random.default_rng(2)
IDS = np.array([[3, 1, 0, 4, 2, 0], [5, 6, 7, 1, 2, 3], [2, 0, 0, 0, 0, 0]], np.int32)


def _w(*shape):
    return RNG.normal(scale=0.5, size=shape).astype(np.float32)


def _init(name, cls="GlorotUniform"):
    return {"module": "keras.initializers", "class_name": cls, "config": {"seed": None}, "registered_name": None}


def _tf_keras_lstm(name, units, **extra):
    """An LSTM config as tf-keras 2.21 writes it (every key explicit)."""
    cfg = dict(
        name=name,
        trainable=True,
        dtype="float32",
        return_sequences=False,
        return_state=False,
        go_backwards=False,
        stateful=False,
        unroll=False,
        time_major=False,
        units=units,
        activation="tanh",
        recurrent_activation="hard_sigmoid",
        use_bias=True,
        kernel_initializer=_init(name),
        recurrent_initializer=_init(name, "Orthogonal"),
        bias_initializer=_init(name, "Zeros"),
        unit_forget_bias=True,
        kernel_regularizer=None,
        recurrent_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        recurrent_constraint=None,
        bias_constraint=None,
        dropout=0.0,
        recurrent_dropout=0.0,
        implementation=1,
    )
    cfg.update(extra)
    return layer("LSTM", **cfg)


def test_tf_keras_embedding_lstm_dense(tmp_path):
    """tf-keras 2.21 layout: str attributes, cell scopes, InputLayer, Keras 2's hard_sigmoid."""
    emb, (k, r, b), (dk, db) = _w(10, 4), (_w(4, 20), _w(5, 20), _w(20)), (_w(5, 3), _w(3))
    config = sequential(
        layer("InputLayer", batch_input_shape=[None, 6], dtype="int32", sparse=False, ragged=False, name="input_1"),
        layer(
            "Embedding",
            name="embedding",
            trainable=True,
            dtype="float32",
            batch_input_shape=[None, 6],
            input_dim=10,
            output_dim=4,
            embeddings_initializer=_init("e", "RandomUniform"),
            embeddings_regularizer=None,
            activity_regularizer=None,
            embeddings_constraint=None,
            mask_zero=True,
            input_length=6,
        ),
        _tf_keras_lstm("lstm", 5),
        layer(
            "Dense",
            name="dense",
            trainable=True,
            dtype="float32",
            units=3,
            activation="softmax",
            use_bias=True,
            kernel_initializer=_init("d"),
            bias_initializer=_init("d", "Zeros"),
            kernel_regularizer=None,
            bias_regularizer=None,
            activity_regularizer=None,
            kernel_constraint=None,
            bias_constraint=None,
        ),
    )
    k2.write_model(
        tmp_path / "m.h5",
        config,
        [
            ("embedding", [("embedding/embeddings:0", emb)]),
            (
                "lstm",
                [
                    ("lstm/lstm_cell/kernel:0", k),
                    ("lstm/lstm_cell/recurrent_kernel:0", r),
                    ("lstm/lstm_cell/bias:0", b),
                ],
            ),
            ("dense", [("dense/kernel:0", dk), ("dense/bias:0", db)]),
        ],
    )
    model, variables = rnnjax.load_keras(tmp_path / "m.h5")
    got = np.asarray(model.apply(variables, jnp.asarray(IDS)))
    step, s0 = k2.lstm_step(*(a.astype(np.float64) for a in (k, r, b)), act=k2.hard_sigmoid)
    for row, ids in enumerate(IDS):
        h, _ = k2.run(step, s0, emb.astype(np.float64)[ids], ids != 0)
        logits = h @ dk + db
        want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        np.testing.assert_allclose(got[row], want, atol=1e-5)


def test_multi_backend_bytes_attrs_and_bidirectional_gru_defaults(tmp_path):
    """Keras 2.2.4: bytes attributes, no cell scope, a GRU config without reset_after (False then)
    and without recurrent_activation (hard_sigmoid then), Bidirectional's forward/backward groups."""
    f, bk = (_w(3, 12), _w(4, 12), _w(12)), (_w(3, 12), _w(4, 12), _w(12))
    gru = layer("GRU", name="gru_1", units=4, return_sequences=False, go_backwards=False)
    config = sequential(
        layer("Masking", name="masking_1", batch_input_shape=[None, 5, 3], dtype="float32", mask_value=0.0),
        layer("Bidirectional", name="bidirectional_1", layer=gru, merge_mode="concat"),
    )
    names = ("kernel:0", "recurrent_kernel:0", "bias:0")
    k2.write_model(
        tmp_path / "m.h5",
        config,
        [
            ("masking_1", []),
            (
                "bidirectional_1",
                [(f"bidirectional_1/forward_gru_1/{n}", a) for n, a in zip(names, f)]
                + [(f"bidirectional_1/backward_gru_1/{n}", a) for n, a in zip(names, bk)],
            ),
        ],
        version="2.2.4",
        as_bytes=True,
    )
    x = RNG.normal(size=(2, 5, 3)).astype(np.float32)
    x[0, 3:] = 0.0
    x[1, 1] = 0.0
    model, variables = rnnjax.load_keras(tmp_path / "m.h5")
    got = np.asarray(model.apply(variables, jnp.asarray(x)))
    for row in range(2):
        mask = np.any(x[row] != 0, axis=-1)
        halves = []
        for weights, backwards in ((f, False), (bk, True)):
            step, h0 = k2.gru_step_reset_before(*(a.astype(np.float64) for a in weights))
            halves.append(k2.run(step, h0, x[row].astype(np.float64), mask, backwards))
        np.testing.assert_allclose(got[row], np.concatenate(halves), atol=1e-5)


def _cudnn_file(path):
    lk, lr, lb = _w(3, 16), _w(4, 16), _w(32)
    gk, gr, gb = _w(4, 9), _w(3, 9), _w(18)
    config = sequential(
        layer(
            "CuDNNLSTM",
            name="cu_dnnlstm",
            batch_input_shape=[None, 5, 3],
            units=4,
            return_sequences=True,
            return_state=False,
            go_backwards=False,
            stateful=False,
            kernel_initializer=_init("k"),
        ),
        layer(
            "CuDNNGRU",
            name="cu_dnngru",
            units=3,
            return_sequences=False,
            return_state=False,
            go_backwards=False,
            stateful=False,
        ),
    )
    k2.write_model(
        path,
        config,
        [
            (
                "cu_dnnlstm",
                [("cu_dnnlstm/kernel:0", lk), ("cu_dnnlstm/recurrent_kernel:0", lr), ("cu_dnnlstm/bias:0", lb)],
            ),
            ("cu_dnngru", [("cu_dnngru/kernel:0", gk), ("cu_dnngru/recurrent_kernel:0", gr), ("cu_dnngru/bias:0", gb)]),
        ],
        version="2.3.1",
    )
    return (lk, lr, lb), (gk, gr, gb)


def _cudnn_reference(x, lstm, gru):
    out = []
    for row in x.astype(np.float64):
        step, s0 = k2.cudnn_lstm_step(*(a.astype(np.float64) for a in lstm))
        hs, state = [], s0
        for t in range(len(row)):
            state = step(state, row[t])
            hs.append(state[0])
        gstep, g0 = k2.cudnn_gru_step(*(a.astype(np.float64) for a in gru))
        out.append(k2.run(gstep, g0, np.stack(hs), None))
    return np.stack(out)


def test_cudnn_layers_load_and_convert(tmp_path):
    """CuDNN bias shapes (8U, 6U) load into rnnjax's CuDNN layers unchanged, and into a user's
    LSTM / GRU(reset_after=True) through Keras 2's conversion; both give cuDNN's numbers."""
    lstm, gru = _cudnn_file(tmp_path / "c.h5")
    x = RNG.normal(size=(2, 5, 3)).astype(np.float32)
    want = _cudnn_reference(x, lstm, gru)
    model, variables = rnnjax.load_keras(tmp_path / "c.h5")
    np.testing.assert_allclose(np.asarray(model.apply(variables, jnp.asarray(x))), want, atol=1e-5)
    model, variables = rnnjax.load_keras(tmp_path / "c.h5", cudnn="canonical")
    assert [type(m).__name__ for m in model.layers] == ["LSTM", "GRU"]
    np.testing.assert_allclose(np.asarray(model.apply(variables, jnp.asarray(x))), want, atol=1e-5)
    mine = rnnjax.Sequential(
        [
            rnnjax.LSTM(4, recurrent_activation="sigmoid", return_sequences=True),
            rnnjax.GRU(3, recurrent_activation="sigmoid", reset_after=True),
        ]
    )
    loaded = rnnjax.load_keras_weights(tmp_path / "c.h5", mine, mine.init(jax.random.key(0), jnp.asarray(x)))
    assert loaded["params"]["lstm"]["cell"]["bias"].shape == (16,)
    np.testing.assert_allclose(np.asarray(mine.apply(loaded, jnp.asarray(x))), want, atol=1e-5)


def test_reset_before_gru_refused_for_cudnn_gru(tmp_path):
    _cudnn_file(tmp_path / "c.h5")
    mine = rnnjax.Sequential([rnnjax.LSTM(4, return_sequences=True), rnnjax.GRU(3, reset_after=False)])
    shapes = jax.eval_shape(mine.init, jax.random.key(0), jnp.zeros((1, 5, 3)))
    with pytest.raises(rnnjax.keras.KerasImportError, match="reset_after=False"):
        rnnjax.load_keras_weights(tmp_path / "c.h5", mine, shapes)


def test_save_weights_file_with_chunked_attributes(tmp_path):
    """tf-keras save_weights layout (groups at the root) with layer_names0/1 and weight_names0/1,
    into a user-built model; names in the file do not matter, order and shapes do."""
    k, r, b = _w(3, 2), _w(2, 2), _w(2)
    dk, db = _w(2, 1), _w(1)
    k2.write_weights_file(
        tmp_path / "w.h5",
        [
            (
                "simple_rnn_7",
                [
                    ("simple_rnn_7/simple_rnn_cell/kernel:0", k),
                    ("simple_rnn_7/simple_rnn_cell/recurrent_kernel:0", r),
                    ("simple_rnn_7/simple_rnn_cell/bias:0", b),
                ],
            ),
            ("dropout_3", []),
            ("dense_9", [("dense_9/kernel:0", dk), ("dense_9/bias:0", db)]),
        ],
        chunks=2,
    )
    mine = rnnjax.Sequential([rnnjax.SimpleRNN(2), rnnjax.Dropout(0.5), rnnjax.Dense(1)])
    x = RNG.normal(size=(2, 4, 3)).astype(np.float32)
    loaded = rnnjax.load_keras_weights(tmp_path / "w.h5", mine, mine.init(jax.random.key(0), jnp.asarray(x)))
    np.testing.assert_array_equal(loaded["params"]["simple_rnn"]["cell"]["recurrent_kernel"], r)
    want = []
    for row in x.astype(np.float64):
        h = np.zeros(2)
        for t in range(4):
            h = np.tanh(row[t] @ k + h @ r + b)
        want.append(h @ dk + db)
    np.testing.assert_allclose(np.asarray(mine.apply(loaded, jnp.asarray(x))), np.stack(want), atol=1e-5)
    with pytest.raises(rnnjax.keras.KerasImportError, match="weights-only"):
        rnnjax.load_keras(tmp_path / "w.h5")


def test_mismatches_all_listed(tmp_path):
    _cudnn_file(tmp_path / "c.h5")
    mine = rnnjax.Sequential([rnnjax.LSTM(5, return_sequences=True), rnnjax.GRU(2, reset_after=True)])
    with pytest.raises(rnnjax.keras.KerasImportError) as err:
        rnnjax.load_keras_weights(
            tmp_path / "c.h5", mine, jax.eval_shape(mine.init, jax.random.key(0), jnp.zeros((1, 5, 3)))
        )
    assert len(err.value.problems) >= 2 and "'lstm'" in str(err.value) and "'gru'" in str(err.value)


def test_functional_tf_keras_graph_and_conv_lstm2d(tmp_path):
    """A tf-keras functional config (inbound_nodes as [name, node, tensor, kwargs] lists), two
    branches concatenated; ConvLSTM2D's weights have no cell scope. Checked against the same
    rnnjax layers built by hand."""
    ck, cr, cb = _w(2, 2, 1, 8), _w(2, 2, 2, 8), _w(8)
    dk, db = _w(1, 2), _w(2)
    node = lambda *names: [[[n, 0, 0, {}] for n in names]]  # noqa: E731
    config = {
        "class_name": "Functional",
        "config": {
            "name": "model",
            "layers": [
                {
                    **layer("InputLayer", name="input_1", batch_input_shape=[None, 3, 4, 4, 1], dtype="float32"),
                    "name": "input_1",
                    "inbound_nodes": [],
                },
                {
                    **layer(
                        "ConvLSTM2D",
                        name="conv_lst_m2d",
                        filters=2,
                        kernel_size=[2, 2],
                        strides=[1, 1],
                        padding="same",
                        data_format="channels_last",
                        dilation_rate=[1, 1],
                        activation="tanh",
                        recurrent_activation="hard_sigmoid",
                        return_sequences=True,
                        time_major=False,
                    ),
                    "name": "conv_lst_m2d",
                    "inbound_nodes": node("input_1"),
                },
                {
                    **layer(
                        "TimeDistributed", name="td", layer=layer("Dense", name="dense", units=2, activation="relu")
                    ),
                    "name": "td",
                    "inbound_nodes": node("input_1"),
                },
                {
                    **layer("Concatenate", name="concatenate", axis=-1),
                    "name": "concatenate",
                    "inbound_nodes": node("conv_lst_m2d", "td"),
                },
            ],
            "input_layers": [["input_1", 0, 0]],
            "output_layers": [["concatenate", 0, 0]],
        },
    }
    k2.write_model(
        tmp_path / "f.h5",
        config,
        [
            (
                "conv_lst_m2d",
                [("conv_lst_m2d/kernel:0", ck), ("conv_lst_m2d/recurrent_kernel:0", cr), ("conv_lst_m2d/bias:0", cb)],
            ),
            ("concatenate", []),
            ("input_1", []),
            ("td", [("td/kernel:0", dk), ("td/bias:0", db)]),
        ],
    )
    x = jnp.asarray(RNG.normal(size=(2, 3, 4, 4, 1)).astype(np.float32))
    model, variables = rnnjax.load_keras(tmp_path / "f.h5")
    conv = rnnjax.ConvLSTM2D(2, (2, 2), padding="same", return_sequences=True)
    dense = rnnjax.TimeDistributed(rnnjax.Dense(2, activation="relu"))
    y1 = conv.apply({"params": {"cell": {"kernel": ck, "recurrent_kernel": cr, "bias": cb}}}, x)
    y2 = dense.apply({"params": {"dense": {"kernel": dk, "bias": db}}}, x)
    np.testing.assert_allclose(np.asarray(model.apply(variables, x)), np.concatenate([y1, y2], -1), atol=1e-6)


def test_without_h5py_the_error_says_how_to_install(tmp_path, monkeypatch):
    k2.write_weights_file(tmp_path / "w.h5", [("dense", [])])
    monkeypatch.setitem(__import__("sys").modules, "h5py", None)
    with pytest.raises(ImportError, match=r"pip install rnnjax\[keras\]"):
        rnnjax.load_keras(tmp_path / "w.h5")


def test_keras2_concatenate_keeps_a_step_only_where_every_input_does(tmp_path):
    """Keras 2's Concatenate mask is the AND of its inputs' masks (Keras 3's is the OR)."""
    k, r, b = _w(4, 12), _w(3, 12), _w(12)
    node = lambda *names: [[[n, 0, 0, {}] for n in names]]  # noqa: E731
    config = {
        "class_name": "Model",
        "config": {
            "name": "model",
            "layers": [
                {
                    **layer("InputLayer", name="input_1", batch_input_shape=[None, 6, 2], dtype="float32"),
                    "name": "input_1",
                    "inbound_nodes": [],
                },
                {**layer("Masking", name="zeros", mask_value=0.0), "name": "zeros", "inbound_nodes": node("input_1")},
                {**layer("Masking", name="ones", mask_value=1.0), "name": "ones", "inbound_nodes": node("input_1")},
                {
                    **layer("Concatenate", name="concatenate", axis=-1),
                    "name": "concatenate",
                    "inbound_nodes": node("zeros", "ones"),
                },
                {
                    **_tf_keras_lstm("lstm", 3, recurrent_activation="sigmoid"),
                    "name": "lstm",
                    "inbound_nodes": node("concatenate"),
                },
            ],
            "input_layers": [["input_1", 0, 0]],
            "output_layers": [["lstm", 0, 0]],
        },
    }
    k2.write_model(
        tmp_path / "f.h5",
        config,
        [
            ("input_1", []),
            ("zeros", []),
            ("ones", []),
            ("concatenate", []),
            (
                "lstm",
                [
                    ("lstm/lstm_cell/kernel:0", k),
                    ("lstm/lstm_cell/recurrent_kernel:0", r),
                    ("lstm/lstm_cell/bias:0", b),
                ],
            ),
        ],
        version="2.6.0",
    )
    x = RNG.normal(size=(2, 6, 2)).astype(np.float32)
    x[0, 1], x[0, 4], x[1, 2] = 0.0, 1.0, 1.0
    model, variables = rnnjax.load_keras(tmp_path / "f.h5")
    got = np.asarray(model.apply(variables, jnp.asarray(x)))
    for row in range(2):
        keep_a, keep_b = np.any(x[row] != 0, -1), np.any(x[row] != 1, -1)
        xs = np.concatenate([x[row] * keep_a[:, None], x[row] * keep_b[:, None]], -1).astype(np.float64)
        step, s0 = k2.lstm_step(*(a.astype(np.float64) for a in (k, r, b)))
        np.testing.assert_allclose(got[row], k2.run(step, s0, xs, keep_a & keep_b)[0], atol=1e-5)


def test_layer_names_flax_would_rename_keep_their_weights(tmp_path):
    """A Keras name like 'Dense_1' (which rnnjax.Sequential takes for a Flax-made name)."""
    dk, db = _w(3, 2), _w(2)
    config = sequential(layer("Dense", name="Dense_1", units=2, batch_input_shape=[None, 3]))
    k2.write_model(tmp_path / "d.h5", config, [("Dense_1", [("Dense_1/kernel:0", dk), ("Dense_1/bias:0", db)])])
    model, variables = rnnjax.load_keras(tmp_path / "d.h5")
    x = RNG.normal(size=(2, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model.apply(variables, jnp.asarray(x))), x @ dk + db, atol=1e-6)


def test_tf_keras_conv_pool_norm_before_an_lstm(tmp_path):
    """The common text-classifier shape (Conv1D -> MaxPooling1D -> LSTM) with tf-keras's configs:
    list-valued kernel_size/strides/pool_size, BatchNormalization on axis [2], SpatialDropout1D."""
    ck, cb = _w(3, 2, 4), _w(4)
    gamma, beta, mean, var = _w(4), _w(4), _w(4), np.abs(_w(4)) + 0.5
    k, r, b = _w(4, 8), _w(2, 8), _w(8)
    config = sequential(
        layer(
            "Conv1D",
            name="conv1d",
            batch_input_shape=[None, 9, 2],
            filters=4,
            kernel_size=[3],
            strides=[1],
            padding="valid",
            data_format="channels_last",
            dilation_rate=[1],
            groups=1,
            activation="relu",
            use_bias=True,
            kernel_initializer=_init("c"),
            bias_initializer=_init("c", "Zeros"),
            kernel_regularizer=None,
            bias_regularizer=None,
            activity_regularizer=None,
            kernel_constraint=None,
            bias_constraint=None,
        ),
        layer(
            "MaxPooling1D",
            name="max_pooling1d",
            pool_size=[2],
            strides=[2],
            padding="valid",
            data_format="channels_last",
        ),
        layer("SpatialDropout1D", name="spatial_dropout1d", rate=0.2, noise_shape=None, seed=None),
        layer(
            "BatchNormalization",
            name="batch_normalization",
            axis=[2],
            momentum=0.99,
            epsilon=0.001,
            center=True,
            scale=True,
            beta_initializer=_init("b", "Zeros"),
            gamma_initializer=_init("b", "Ones"),
            moving_mean_initializer=_init("b", "Zeros"),
            moving_variance_initializer=_init("b", "Ones"),
            beta_regularizer=None,
            gamma_regularizer=None,
            beta_constraint=None,
            gamma_constraint=None,
        ),
        _tf_keras_lstm("lstm", 2, recurrent_activation="sigmoid"),
    )
    k2.write_model(
        tmp_path / "c.h5",
        config,
        [
            ("conv1d", [("conv1d/kernel:0", ck), ("conv1d/bias:0", cb)]),
            ("max_pooling1d", []),
            ("spatial_dropout1d", []),
            (
                "batch_normalization",
                [
                    ("batch_normalization/gamma:0", gamma),
                    ("batch_normalization/beta:0", beta),
                    ("batch_normalization/moving_mean:0", mean),
                    ("batch_normalization/moving_variance:0", var),
                ],
            ),
            (
                "lstm",
                [
                    ("lstm/lstm_cell/kernel:0", k),
                    ("lstm/lstm_cell/recurrent_kernel:0", r),
                    ("lstm/lstm_cell/bias:0", b),
                ],
            ),
        ],
    )
    x = RNG.normal(size=(2, 9, 2)).astype(np.float32)
    model, variables = rnnjax.load_keras(tmp_path / "c.h5")
    assert variables["batch_stats"]["batch_normalization"]["moving_variance"].shape == (4,)
    got = np.asarray(model.apply(variables, jnp.asarray(x)))
    for row in range(2):
        xd = x[row].astype(np.float64)
        conv = np.maximum(np.stack([np.einsum("kc,kcf->f", xd[t : t + 3], ck) + cb for t in range(7)]), 0.0)
        pooled = np.maximum(conv[0:6:2], conv[1:6:2])
        normed = gamma * (pooled - mean) / np.sqrt(var + 1e-3) + beta
        step, s0 = k2.lstm_step(*(a.astype(np.float64) for a in (k, r, b)))
        np.testing.assert_allclose(got[row], k2.run(step, s0, normed, None)[0], atol=1e-5)


@pytest.mark.parametrize("implementation,expected", [(0, 1), (1, 1), (2, 2)])
def test_keras2_implementation_field_carried(tmp_path, implementation, expected):
    """Older Keras 2 files carry the deprecated ``implementation=0``, which Keras 2's from_config
    made 1; 2 (one dropout mask per cell) is kept, for training."""
    k, r, b = _w(3, 8), _w(2, 8), _w(8)
    gk, gr, gb = _w(2, 6), _w(2, 6), _w(6)
    config = sequential(
        layer(
            "LSTM",
            name="lstm_1",
            batch_input_shape=[None, 4, 3],
            units=2,
            return_sequences=True,
            implementation=implementation,
        ),
        layer("GRU", name="gru_1", units=2, implementation=implementation),
    )
    k2.write_model(
        tmp_path / "m.h5",
        config,
        [
            ("lstm_1", [("lstm_1/kernel:0", k), ("lstm_1/recurrent_kernel:0", r), ("lstm_1/bias:0", b)]),
            ("gru_1", [("gru_1/kernel:0", gk), ("gru_1/recurrent_kernel:0", gr), ("gru_1/bias:0", gb)]),
        ],
        version="2.2.4",
    )
    model, variables = rnnjax.load_keras(tmp_path / "m.h5")
    assert [layer.implementation for layer in model.layers] == [expected, expected]
    x = RNG.normal(size=(2, 4, 3)).astype(np.float32)
    step, s0 = k2.lstm_step(*(a.astype(np.float64) for a in (k, r, b)), act=k2.hard_sigmoid)
    gstep, g0 = k2.gru_step_reset_before(*(a.astype(np.float64) for a in (gk, gr, gb)))
    for row in range(2):
        hs, state = [], s0
        for t in range(4):
            state = step(state, x[row, t].astype(np.float64))
            hs.append(state[0])
        np.testing.assert_allclose(
            model.apply(variables, jnp.asarray(x))[row], k2.run(gstep, g0, np.stack(hs), None), atol=1e-5
        )
