"""Bidirectional against Keras 3 (JAX backend, CPU) on random weights copied across, 1e-5 float32.

Every recurrent layer kind and every merge mode, masks with holes, return_state, initial_state,
stateful over two batches; where Keras 3 has no counterpart (masked ConvLSTM, which Keras 3 fails
on; constants, which Keras 3's Bidirectional dropped; custom cells) the reference is rnnjax's own
forward layer and a hand-built backward copy, composed as Keras documents. The whole-model tests
(Sequential, Embedding, Masking, TimeDistributed, Dense) are in ``test_companion_models.py``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from catalogue import assert_trees_close
from keras_ref import cell_weights, keras, keras_activation

import rnnjax

ATOL = 1e-5
B, T, I, U = 3, 7, 5, 4
HOLES = np.array([[1, 1, 0, 1, 0, 1, 1], [0, 1, 1, 0, 1, 1, 0], [1, 0, 0, 0, 0, 0, 1]], bool)
RIGHT_PADDED = np.array([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5], bool)
MERGE_MODES = ["concat", "sum", "mul", "ave", None]
H_SIG = keras_activation("hard_sigmoid")
KINDS = {  # ours, Keras's, the Keras kwargs that give Keras 2's defaults, our extra kwargs
    "simple": (rnnjax.SimpleRNN, keras.layers.SimpleRNN, {}, {}),
    "lstm": (rnnjax.LSTM, keras.layers.LSTM, {"recurrent_activation": H_SIG}, {}),
    "gru": (rnnjax.GRU, keras.layers.GRU, {"recurrent_activation": H_SIG, "reset_after": False}, {}),
    "gru_ra": (
        rnnjax.GRU,
        keras.layers.GRU,
        {"recurrent_activation": H_SIG, "reset_after": True},
        {"reset_after": True},
    ),
}


def _x(seed=0, shape=(B, T, I)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def random_params(variables, seed=1):
    """Random (not initializer-shaped) weights, biases included, so every term matters."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda p: rng.normal(scale=0.5, size=p.shape).astype(np.float32), variables["params"])


def _leaves(out):
    return [np.asarray(o) for o in jax.tree_util.tree_leaves(list(out) if isinstance(out, (list, tuple)) else out)]


def assert_same(ours, theirs):
    assert_trees_close(_leaves(ours), _leaves(theirs), atol=ATOL, rtol=ATOL)


def _pair(kind, merge_mode="concat", **kw):
    ours_cls, keras_cls, kfixed, ofixed = KINDS[kind]
    ours = rnnjax.Bidirectional(ours_cls(U, **ofixed, **kw), merge_mode=merge_mode)
    theirs = keras.layers.Bidirectional(keras_cls(U, **kfixed, **kw), merge_mode=merge_mode)
    return ours, theirs


def _keras_weights(params, name):
    return cell_weights(params[f"forward_{name}"]["cell"]) + cell_weights(params[f"backward_{name}"]["cell"])


def _compare(kind, merge_mode="concat", x=None, call=None, **kw):
    x = _x() if x is None else x
    call = dict(call or {})
    ours, theirs = _pair(kind, merge_mode, **kw)
    jcall = {k: jax.tree_util.tree_map(jnp.asarray, v) for k, v in call.items()}
    variables = ours.init(jax.random.key(0), jnp.asarray(x), **jcall)
    params = random_params(variables)
    got = ours.apply({"params": params}, jnp.asarray(x), **jcall)
    theirs.build(x.shape)
    theirs.set_weights(
        _keras_weights(params, "gru" if kind.startswith("gru") else {"simple": "simple_rnn", "lstm": "lstm"}[kind])
    )
    assert_same(got, theirs(x, **call))
    return got


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("merge_mode", MERGE_MODES, ids=str)
def test_every_kind_and_merge_mode_matches_keras(kind, merge_mode):
    _compare(kind, merge_mode)
    _compare(kind, merge_mode, return_sequences=True)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("merge_mode", MERGE_MODES, ids=str)
def test_masks_with_holes_and_return_state_match_keras(kind, merge_mode):
    _compare(kind, merge_mode, call={"mask": HOLES}, return_sequences=True, return_state=True)
    _compare(kind, merge_mode, call={"mask": RIGHT_PADDED}, return_state=True)


@pytest.mark.parametrize("kind", list(KINDS))
def test_initial_state_halves_match_keras(kind):
    n = 2 if kind == "lstm" else 1
    rng = np.random.default_rng(7)
    states = [rng.normal(size=(B, U)).astype(np.float32) for _ in range(2 * n)]
    out = _compare(
        kind, "concat", call={"initial_state": states, "mask": HOLES}, return_sequences=True, return_state=True
    )
    assert len(out) == 1 + 2 * n


def test_layer_with_go_backwards_true_gets_a_forward_copy():
    """Keras 2 flips go_backwards for the copy; Keras 3 would set it True, so the reference is
    Keras 3 given the copy Keras 2 makes as `backward_layer`."""
    x = _x()
    ours = rnnjax.Bidirectional(rnnjax.LSTM(U, go_backwards=True, return_sequences=True))
    variables = ours.init(jax.random.key(0), x)
    params = random_params(variables)
    theirs = keras.layers.Bidirectional(
        keras.layers.LSTM(U, go_backwards=True, return_sequences=True, recurrent_activation=H_SIG),
        backward_layer=keras.layers.LSTM(U, go_backwards=False, return_sequences=True, recurrent_activation=H_SIG),
    )
    theirs.build(x.shape)
    theirs.set_weights(_keras_weights(params, "lstm"))
    assert_same(ours.apply({"params": params}, x, mask=HOLES), theirs(x, mask=HOLES))


def test_backward_layer_given_matches_keras():
    x = _x()
    ours = rnnjax.Bidirectional(
        rnnjax.GRU(U, return_sequences=True),
        backward_layer=rnnjax.GRU(U, activation="relu", go_backwards=True, return_sequences=True),
    )
    variables = ours.init(jax.random.key(0), x)
    assert set(variables["params"]) == {"forward_gru", "backward_gru"}
    params = random_params(variables)
    kw = dict(recurrent_activation=H_SIG, reset_after=False, return_sequences=True)
    theirs = keras.layers.Bidirectional(
        keras.layers.GRU(U, **kw), backward_layer=keras.layers.GRU(U, activation="relu", go_backwards=True, **kw)
    )
    theirs.build(x.shape)
    theirs.set_weights(_keras_weights(params, "gru"))
    assert_same(ours.apply({"params": params}, x, mask=HOLES), theirs(x, mask=HOLES))


def test_stacked_cells_match_keras():
    x = _x()
    ours = rnnjax.Bidirectional(
        rnnjax.RNN([rnnjax.LSTMCell(U), rnnjax.GRUCell(3)], return_sequences=True, return_state=True), merge_mode="sum"
    )
    variables = ours.init(jax.random.key(0), x)
    params = random_params(variables)
    cells = lambda: [
        keras.layers.LSTMCell(U, recurrent_activation=H_SIG),  # noqa: E731
        keras.layers.GRUCell(3, recurrent_activation=H_SIG, reset_after=False),
    ]
    theirs = keras.layers.Bidirectional(
        keras.layers.RNN(cells(), return_sequences=True, return_state=True), merge_mode="sum"
    )
    theirs.build(x.shape)
    weights = [
        w for d in ("forward_rnn", "backward_rnn") for c in ("cell_0", "cell_1") for w in cell_weights(params[d][c])
    ]
    theirs.set_weights(weights)
    assert_same(ours.apply({"params": params}, x, mask=HOLES), theirs(x, mask=HOLES))


@pytest.mark.parametrize("merge_mode", ["concat", "ave", None], ids=str)
def test_conv_lstm2d_matches_keras(merge_mode):
    """Unmasked (Keras 3's ConvLSTM fails on masks with the JAX backend; masked: below)."""
    x = _x(shape=(2, 4, 5, 6, 3))
    kw = dict(filters=2, kernel_size=(3, 3), padding="same", return_sequences=True, return_state=True)
    ours = rnnjax.Bidirectional(rnnjax.ConvLSTM2D(**kw), merge_mode=merge_mode)
    variables = ours.init(jax.random.key(0), x)
    params = random_params(variables)
    theirs = keras.layers.Bidirectional(
        keras.layers.ConvLSTM2D(recurrent_activation=H_SIG, **kw), merge_mode=merge_mode
    )
    theirs.build(x.shape)
    theirs.set_weights(_keras_weights(params, "conv_lstm2d"))
    assert_same(ours.apply({"params": params}, x), theirs(x))


class HandBuilt(nn.Module):
    """Keras's Bidirectional written out: the layer, its copy with go_backwards flipped and
    zero_output_for_mask = return_sequences, the copy's sequence flipped back, concatenated.
    Same submodule names, so the same parameters and dropout keys."""

    forward: nn.Module
    backward: nn.Module
    fname: str
    bname: str

    @nn.compact
    def __call__(self, x, **kw):
        f = self.forward.clone(parent=self, name=self.fname, _deep_clone=True, _reset_names=True)(x, **kw)
        b = self.backward.clone(parent=self, name=self.bname, _deep_clone=True, _reset_names=True)(x, **kw)
        seq = self.forward.return_sequences
        return jnp.concatenate([f, jnp.flip(b, 1) if seq else b], -1)


def _against_hand_built(layer, backward, fname, bname, x, **call):
    ours = rnnjax.Bidirectional(layer)
    hand = HandBuilt(layer, backward, fname, bname)
    rngs = {"dropout": jax.random.key(5)}
    variables = ours.init({"params": jax.random.key(0), **rngs}, x, **call)
    params = random_params(variables)
    got = ours.apply({"params": params}, x, rngs=rngs, **call)
    assert_same(got, hand.apply({"params": params}, x, rngs=rngs, **call))
    return ours, hand, params


def test_masked_conv_lstm_against_hand_built_pair():
    x = jnp.asarray(_x(shape=(3, 7, 5, 6, 2)))
    kw = dict(filters=2, kernel_size=(3, 3), return_sequences=True)
    _against_hand_built(
        rnnjax.ConvLSTM2D(**kw, zero_output_for_mask=True),
        rnnjax.ConvLSTM2D(**kw, go_backwards=True, zero_output_for_mask=True),
        "forward_conv_lstm2d",
        "backward_conv_lstm2d",
        x,
        mask=jnp.asarray(HOLES),
    )


def test_dropout_in_training_against_hand_built_pair():
    """training=True reaches both directions; each draws its own masks from the 'dropout' stream."""
    kw = dict(dropout=0.3, recurrent_dropout=0.4, return_sequences=True)
    x = jnp.asarray(_x())
    ours, _, params = _against_hand_built(
        rnnjax.LSTM(U, **kw, zero_output_for_mask=True),
        rnnjax.LSTM(U, **kw, go_backwards=True, zero_output_for_mask=True),
        "forward_lstm",
        "backward_lstm",
        x,
        mask=jnp.asarray(HOLES),
        training=True,
    )
    assert not np.allclose(
        ours.apply({"params": params}, x, training=True, rngs={"dropout": jax.random.key(5)}),
        ours.apply({"params": params}, x, training=False),
    )


class ConstantCell(nn.Module):
    """A custom cell with constants: h' = tanh(x W + h R + c V)."""

    units: int

    @property
    def state_size(self):
        return self.units

    @nn.compact
    def __call__(self, inputs, states, constants=None):
        init = nn.initializers.normal(0.5)
        h = inputs @ self.param("kernel", init, (inputs.shape[-1], self.units))
        h = h + states[0] @ self.param("recurrent_kernel", init, (self.units, self.units))
        c = constants[0] if isinstance(constants, (list, tuple)) else constants
        h = jnp.tanh(h + c @ self.param("constant_kernel", init, (c.shape[-1], self.units)))
        return h, [h]


def test_custom_cell_with_constants_against_hand_built_pair():
    x = jnp.asarray(_x())
    c = jnp.asarray(_x(3, (B, 2)))
    _against_hand_built(
        rnnjax.RNN(ConstantCell(U)),
        rnnjax.RNN(ConstantCell(U), go_backwards=True),
        "forward_rnn",
        "backward_rnn",
        x,
        mask=jnp.asarray(HOLES),
        constants=[c],
    )


def test_gradient_equals_autodiff_of_the_hand_built_pair():
    """The wrapper's gradients (rnnjax's hand-written backward pass inside) against plain autodiff
    of the two layers composed by hand (custom_backward=False: the generic loop)."""
    x = jnp.asarray(_x())
    m = jnp.asarray(HOLES)
    ours = rnnjax.Bidirectional(rnnjax.GRU(U, return_sequences=True, reset_after=True))
    hand = HandBuilt(
        *(
            rnnjax.GRU(
                U,
                return_sequences=True,
                reset_after=True,
                go_backwards=g,
                zero_output_for_mask=True,
                custom_backward=False,
            )
            for g in (False, True)
        ),
        "forward_gru",
        "backward_gru",
    )
    params = random_params(ours.init(jax.random.key(0), x))
    w = jnp.asarray(_x(9, (B, T, 2 * U)))

    def loss(module):
        return lambda p, xx: jnp.sum(w * jnp.tanh(module.apply({"params": p}, xx, mask=m)))

    got = jax.grad(loss(ours), argnums=(0, 1))(params, x)
    want = jax.grad(loss(hand), argnums=(0, 1))(params, x)
    assert_same(got, want)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cudnn_layers_match_keras_with_converted_weights(kind):
    """CuDNNLSTM/CuDNNGRU (scan backend on the CPU) against Keras's LSTM / GRU(reset_after) with
    sigmoid gates on the weights converted by rnnjax.cudnn.cudnn_*_to_*; right-padded masks (cuDNN's)."""
    x = _x()
    ours_cls, convert, keras_cls, extra = {
        "lstm": (rnnjax.CuDNNLSTM, rnnjax.cudnn.cudnn_lstm_to_lstm, keras.layers.LSTM, {}),
        "gru": (rnnjax.CuDNNGRU, rnnjax.cudnn.cudnn_gru_to_gru, keras.layers.GRU, {"reset_after": True}),
    }[kind]
    ours = rnnjax.Bidirectional(ours_cls(U, return_sequences=True, return_state=True), merge_mode="mul")
    variables = ours.init(jax.random.key(0), x)
    params = random_params(variables)
    theirs = keras.layers.Bidirectional(
        keras_cls(U, return_sequences=True, return_state=True, recurrent_activation="sigmoid", **extra),
        merge_mode="mul",
    )
    theirs.build(x.shape)
    name = "cu_dnnlstm" if kind == "lstm" else "cu_dnngru"
    weights = [np.asarray(w) for d in ("forward_", "backward_") for w in convert(params[d + name])]
    theirs.set_weights(weights)
    assert_same(ours.apply({"params": params}, x, mask=RIGHT_PADDED), theirs(x, mask=RIGHT_PADDED))


def test_stateful_over_two_batches_matches_keras_and_resets():
    x1, x2 = _x(1), _x(2)
    ours, theirs = _pair("lstm", return_sequences=True, stateful=True)
    variables = ours.init(jax.random.key(0), x1)
    params = random_params(variables)
    v = {"params": params, "rnn_state": variables["rnn_state"]}
    theirs.build(x1.shape)
    theirs.set_weights(_keras_weights(params, "lstm"))
    for x in (x1, x2):
        y, upd = ours.apply(v, x, mask=HOLES, mutable=["rnn_state"])
        v = {**v, **upd}
        assert_same(y, theirs(x, mask=HOLES))
    # Keras's states: forward h, c then backward h, c.
    assert_same([v["rnn_state"][d]["states"] for d in ("forward_lstm", "backward_lstm")], list(theirs.states))
    # Flat-list reset (Keras order) = initial_state of a stateless twin; the method does the same.
    rng = np.random.default_rng(3)
    new = [rng.normal(size=(B, U)).astype(np.float32) for _ in range(4)]
    v = rnnjax.reset_states(v, states=new)
    _, upd = ours.apply(v, method="reset_states", states=new, mutable=["rnn_state"])
    assert_same(upd["rnn_state"], v["rnn_state"])
    y, _ = ours.apply(v, x1, mutable=["rnn_state"])
    twin = rnnjax.Bidirectional(rnnjax.LSTM(U, return_sequences=True))
    assert_same(y, twin.apply({"params": params}, x1, initial_state=new))
    y0, _ = ours.apply(rnnjax.reset_states(v), x1, mutable=["rnn_state"])
    assert_same(y0, twin.apply({"params": params}, x1))


def test_compute_mask_follows_return_sequences():
    m = jnp.asarray(HOLES)
    x = jnp.asarray(_x())
    assert rnnjax.Bidirectional(rnnjax.LSTM(U)).compute_mask(x, m) is None
    assert rnnjax.Bidirectional(rnnjax.LSTM(U, return_sequences=True)).compute_mask(x, m) is m
    assert rnnjax.Bidirectional(rnnjax.LSTM(U, return_sequences=True), merge_mode=None).compute_mask(x, m) == [m, m]
