"""Layers take ``(*batch, T, F)`` (ConvLSTM ``(*batch, T, *spatial, C)``): any number of batch axes,
none included, so ``jax.vmap`` over unbatched sequences equals the batched call.

For every layer kind: the vmapped unbatched call equals the batched call (outputs, states with
``return_state``, masks ``(*batch, T)``, ``initial_state``), two batch axes equal the flattened
batch, dropout with an rng equals the flattened batch with the same key (the masks are drawn over
the batch shape, whose bits do not depend on how the batch is split), and the errors name the
argument. The batched calls are checked against Keras and PyTorch in test_keras_parity.py,
test_cudnn.py and test_conv_lstm.py; these tests tie every other batch layout to them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from catalogue import assert_trees_close
from custom_cells import MinimalRNNCell

import rnnjax

KEY = jax.random.key(0)
B1, B2, T, F, U = 2, 3, 5, 4, 3


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _mask(batch, seed=1):
    m = np.random.default_rng(seed).random(batch + (T,)) > 0.3
    m[..., 0] = True
    return jnp.asarray(m)


def _right_padded(batch, seed=1):
    lengths = np.random.default_rng(seed).integers(1, T + 1, size=batch)
    return jnp.asarray(np.arange(T) < lengths[..., None])


def _close(a, b, atol=2e-6):
    assert_trees_close(a, b, atol=atol, rtol=2e-5, same_tree=False)


def _n_states(layer):
    kinds = {rnnjax.LSTM: 2, rnnjax.CuDNNLSTM: 2}
    return kinds.get(type(layer), 1)


RNN_LAYERS = {
    "SimpleRNN": lambda **kw: rnnjax.SimpleRNN(U, **kw),
    "GRU": lambda **kw: rnnjax.GRU(U, **kw),
    "GRU-reset_after": lambda **kw: rnnjax.GRU(U, reset_after=True, **kw),
    "LSTM": lambda **kw: rnnjax.LSTM(U, **kw),
    "LSTM-impl2-unroll": lambda **kw: rnnjax.LSTM(U, implementation=2, unroll=True, **kw),
    "CuDNNLSTM": lambda **kw: rnnjax.CuDNNLSTM(U, **kw),
    "CuDNNGRU": lambda **kw: rnnjax.CuDNNGRU(U, **kw),
    "RNN-stack": lambda **kw: rnnjax.RNN([rnnjax.LSTMCell(U), rnnjax.GRUCell(2)], **kw),
    "RNN-MinimalRNNCell": lambda **kw: rnnjax.RNN(MinimalRNNCell(U), **kw),
}


def _states(layer, batch):
    if isinstance(layer, rnnjax.RNN) and isinstance(layer.cell, list):
        return [_x(batch + (U,), 7), _x(batch + (U,), 8), _x(batch + (2,), 9)]
    return [_x(batch + (U,), 7 + k) for k in range(_n_states(layer))]


@pytest.mark.parametrize("name", RNN_LAYERS)
@pytest.mark.parametrize("go_backwards", [False, True])
def test_vmap_of_unbatched_calls_equals_the_batched_call(name, go_backwards):
    layer = RNN_LAYERS[name](return_sequences=True, return_state=True, go_backwards=go_backwards)
    x = _x((B1, T, F))
    mask = (_right_padded if name.startswith("CuDNN") else _mask)((B1,))
    init = _states(layer, (B1,))
    v = layer.init(KEY, x)
    batched = layer.apply(v, x, mask=mask, initial_state=init)
    mapped = jax.vmap(lambda s, m, i: layer.apply(v, s, mask=m, initial_state=i))(x, mask, init)
    _close(mapped, batched)
    # and without mask or initial state: the zero state, every step
    _close(jax.vmap(lambda s: layer.apply(v, s))(x), layer.apply(v, x))
    # one unbatched call is the batched call's row
    _close(
        layer.apply(v, x[1], mask=mask[1], initial_state=[s[1] for s in init]),
        jax.tree_util.tree_map(lambda a: a[1], batched),
    )


@pytest.mark.parametrize("name", RNN_LAYERS)
@pytest.mark.parametrize("return_sequences", [False, True])
def test_two_batch_axes_equal_the_flattened_batch(name, return_sequences):
    layer = RNN_LAYERS[name](return_sequences=return_sequences, return_state=True)
    x = _x((B1, B2, T, F))
    mask = (_right_padded if name.startswith("CuDNN") else _mask)((B1, B2))
    init = _states(layer, (B1, B2))
    v = layer.init(KEY, x)
    out = layer.apply(v, x, mask=mask, initial_state=init)
    flat = layer.apply(
        v,
        x.reshape((B1 * B2, T, F)),
        mask=mask.reshape(B1 * B2, T),
        initial_state=[s.reshape((B1 * B2,) + s.shape[2:]) for s in init],
    )
    _close(out, jax.tree_util.tree_map(lambda a: a.reshape((B1, B2) + a.shape[1:]), flat))
    # the parameters do not depend on the batch layout
    _close(v, layer.init(KEY, x[0, 0]))


@pytest.mark.parametrize("name", ["SimpleRNN", "GRU", "LSTM", "RNN-stack"])
def test_dropout_over_batch_axes(name):
    """Dropout masks are drawn over the batch shape: two batch axes get the flattened batch's masks
    (same key), and vmap over (sequence, key) gives each sequence the masks of a batch of one."""
    kw = dict(dropout=0.3, recurrent_dropout=0.2) if name != "RNN-stack" else {}
    layer = (
        RNN_LAYERS[name](return_sequences=True, **kw)
        if kw
        else rnnjax.RNN(
            [rnnjax.LSTMCell(U, dropout=0.3, recurrent_dropout=0.2), rnnjax.GRUCell(2, dropout=0.1)],
            return_sequences=True,
        )
    )
    x = _x((B1, B2, T, F))
    v = layer.init(KEY, x)
    rng = {"dropout": jax.random.key(3)}
    out = layer.apply(v, x, training=True, rngs=rng)
    flat = layer.apply(v, x.reshape((B1 * B2, T, F)), training=True, rngs=rng)
    _close(out, flat.reshape(out.shape))
    assert not np.allclose(out, layer.apply(v, x)), "dropout must change the outputs"
    keys = jax.random.split(jax.random.key(4), B1)
    mapped = jax.vmap(lambda s, k: layer.apply(v, s, training=True, rngs={"dropout": k}))(x[:, 0], keys)
    ones = [layer.apply(v, x[b, 0][None], training=True, rngs={"dropout": keys[b]})[0] for b in range(B1)]
    _close(mapped, jnp.stack(ones))


CONV = {
    "1D": (rnnjax.ConvLSTM1D, (6,), 3),
    "2D": (rnnjax.ConvLSTM2D, (5, 4), (3, 3)),
    "3D": (rnnjax.ConvLSTM3D, (3, 4, 3), 2),
}


def _conv_input(rank_key, batch, fmt, channels=2):
    _, spatial, _ = CONV[rank_key]
    shape = batch + (T,) + ((channels,) + spatial if fmt == "channels_first" else spatial + (channels,))
    return _x(shape)


@pytest.mark.parametrize("fmt", ["channels_last", "channels_first"])
@pytest.mark.parametrize("rank_key", list(CONV))
def test_conv_lstm_batch_axes(rank_key, fmt):
    cls, _, kernel = CONV[rank_key]
    layer = cls(2, kernel, padding="same", data_format=fmt, return_sequences=True, return_state=True)
    x = _conv_input(rank_key, (B1,), fmt)
    v = layer.init(KEY, x)
    mask = _mask((B1,))
    state_shape = layer.apply(v, x)[1].shape
    init = [_x(state_shape, 5), _x(state_shape, 6)]
    batched = layer.apply(v, x, mask=mask, initial_state=init)
    mapped = jax.vmap(lambda s, m, i: layer.apply(v, s, mask=m, initial_state=i))(x, mask, init)
    _close(mapped, batched, atol=1e-5)
    # two batch axes (B1, 1) and the unbatched call
    two = layer.apply(v, x[:, None], mask=mask[:, None], initial_state=[s[:, None] for s in init])
    _close(two, jax.tree_util.tree_map(lambda a: a[:, None], batched), atol=1e-5)
    _close(
        layer.apply(v, x[0], mask=mask[0], initial_state=[s[0] for s in init]),
        jax.tree_util.tree_map(lambda a: a[0], batched),
        atol=1e-5,
    )


def test_bidirectional_and_sequential_batch_axes():
    bi = rnnjax.Bidirectional(rnnjax.LSTM(U, return_sequences=True, return_state=True))
    x = _x((B1, T, F))
    mask = _mask((B1,))
    v = bi.init(KEY, x)
    _close(jax.vmap(lambda s, m: bi.apply(v, s, mask=m))(x, mask), bi.apply(v, x, mask=mask))
    conv = rnnjax.Bidirectional(rnnjax.ConvLSTM1D(2, 3, padding="same", return_sequences=True), merge_mode="sum")
    xc = _conv_input("1D", (B1,), "channels_last")
    vc = conv.init(KEY, xc)
    _close(jax.vmap(lambda s: conv.apply(vc, s))(xc), conv.apply(vc, xc), atol=1e-5)

    ids = jnp.asarray(np.random.default_rng(0).integers(0, 6, size=(B1, B2, T)))
    model = rnnjax.Sequential(
        [rnnjax.Embedding(6, F, mask_zero=True), rnnjax.LSTM(U, return_sequences=True), rnnjax.Dense(2)]
    )
    vm = model.init(KEY, ids)
    out = model.apply(vm, ids)
    _close(jax.vmap(jax.vmap(lambda s: model.apply(vm, s)))(ids), out)
    _close(out, model.apply(vm, ids.reshape(B1 * B2, T)).reshape(out.shape))
    masking = rnnjax.Sequential([rnnjax.Masking(), rnnjax.GRU(U)])
    xm = x.at[0, 3:].set(0.0)
    vmask = masking.init(KEY, xm)
    _close(jax.vmap(lambda s: masking.apply(vmask, s))(xm), masking.apply(vmask, xm))


def test_stateful_layers_keep_their_batch_shape():
    layer = rnnjax.LSTM(U, stateful=True)
    x = _x((B1, B2, T, F))
    v = layer.init(KEY, x)
    assert v[rnnjax.STATE_COLLECTION]["states"].h.shape == (B1, B2, U)
    with pytest.raises(
        ValueError,
        match=r"`inputs`: this stateful layer keeps states for batch shape \(2, 3\), "
        r"got a batch of 6",
    ):
        layer.apply(v, x.reshape(B1 * B2, T, F), mutable=[rnnjax.STATE_COLLECTION])
    with pytest.raises(ValueError, match=r"keeps states for batch shape \(2, 3\), got a batch of shape \(\)"):
        jax.vmap(lambda s: layer.apply(v, s, mutable=[rnnjax.STATE_COLLECTION]))(x[:, 0])
    one = rnnjax.GRU(U, stateful=True)
    vo = one.init(KEY, x[0, 0])  # an unbatched stateful layer
    assert vo[rnnjax.STATE_COLLECTION]["states"].h.shape == (U,)
    with pytest.raises(ValueError, match=r"keeps states for batch shape \(\), got a batch of 3"):
        one.apply(vo, x[0], mutable=[rnnjax.STATE_COLLECTION])


@pytest.mark.parametrize(
    "make",
    [lambda: rnnjax.LSTM(U), lambda: rnnjax.CuDNNGRU(U), lambda: rnnjax.ConvLSTM1D(2, 3)],
    ids=["LSTM", "CuDNNGRU", "ConvLSTM1D"],
)
def test_batch_axes_errors(make):
    layer = make()
    conv = isinstance(layer, rnnjax.ConvLSTM1D)
    x = _conv_input("1D", (B1, B2), "channels_last") if conv else _x((B1, B2, T, F))
    v = layer.init(KEY, x)
    with pytest.raises(ValueError, match=r"`mask`: expected shape \(2, 3, 5\) \(\*batch, timesteps\), got \(6, 5\)"):
        layer.apply(v, x, mask=jnp.ones((B1 * B2, T), bool))
    with pytest.raises(ValueError, match=r"`mask`: expected shape \(2, 3, 5\) \(\*batch, timesteps\), got \(3, 5\)"):
        layer.apply(v, x, mask=jnp.ones((B2, T), bool))  # would broadcast: refused
    bad = jnp.zeros((B1 * B2,) + ((6, 2) if conv else (U,)))
    with pytest.raises(ValueError, match=r"`initial_state`\[0\]: expected shape \(2, 3, "):
        layer.apply(v, x, initial_state=[bad] * (2 if not isinstance(layer, rnnjax.CuDNNGRU) else 1))
    with pytest.raises(ValueError, match=r"`inputs`: expected an array .* with at least"):
        layer.apply(v, x[(0,) * (x.ndim - 1)])


def test_cudnn_seq_lengths_over_batch_axes():
    layer = rnnjax.CuDNNLSTM(U, return_sequences=True, return_state=True)
    x = _x((B1, B2, T, F))
    v = layer.init(KEY, x)
    lengths = jnp.asarray(np.random.default_rng(0).integers(0, T + 1, size=(B1, B2)), jnp.int32)
    out = layer.apply(v, x, seq_lengths=lengths)
    _close(out, layer.apply(v, x, mask=jnp.arange(T) < lengths[..., None]))
    _close(jax.vmap(lambda s, n: layer.apply(v, s, seq_lengths=n))(x, lengths), out)
    with pytest.raises(ValueError, match=r"`seq_lengths`: expected integers of shape \(2, 3\), got int32 \(6,\)"):
        layer.apply(v, x, seq_lengths=lengths.reshape(-1))


@pytest.mark.parametrize(
    "make",
    [
        lambda: rnnjax.LSTM(U, return_sequences=True),
        lambda: rnnjax.CuDNNLSTM(U, return_sequences=True),
        lambda: rnnjax.ConvLSTM1D(2, 3, padding="same", return_sequences=True),
    ],
    ids=["LSTM", "CuDNNLSTM", "ConvLSTM1D"],
)
def test_two_batch_axes_partition_cleanly(make):
    """With the first of two batch axes sharded over 8 devices, no activation crosses devices in
    the forward or the training program (the batch axes are never merged with time), and the
    outputs stay sharded."""
    from sharding_util import batch_mesh, collectives, compiled_text, replicate, shard_batch

    layer = make()
    conv = isinstance(layer, rnnjax.ConvLSTM1D)
    x = _x((8, 2, T) + ((6, 2) if conv else (F,)))
    mask = _right_padded((8, 2))
    params = layer.init(KEY, x)["params"]

    def forward(p, x, m):
        return layer.apply({"params": p}, x, mask=m)

    def train(p, x, m):
        return jax.grad(lambda p: jnp.sum(forward(p, x, m) ** 2))(p)

    mesh = batch_mesh(8)
    ps, xs, ms = replicate(mesh, params), shard_batch(mesh, x), shard_batch(mesh, mask)
    for fn in (forward, train):
        counts = collectives(compiled_text(fn, ps, xs, ms))
        moved = {op: counts[op] for op in ("all-gather", "all-to-all", "collective-permute") if counts[op]}
        assert not moved, f"{fn.__name__}: activations cross devices: {moved}"
    y = jax.jit(forward)(ps, xs, ms)
    assert y.addressable_shards[0].data.shape[0] == 1
    _close(y, forward(params, x, mask), atol=1e-5)
    _close(jax.jit(train)(ps, xs, ms), train(params, x, mask), atol=1e-4)


@pytest.mark.parametrize(
    "make",
    [
        lambda: rnnjax.LSTMCell(U),
        lambda: rnnjax.GRUCell(U),
        lambda: rnnjax.StackedRNNCells([rnnjax.SimpleRNNCell(U), rnnjax.LSTMCell(2)]),
    ],
    ids=["LSTMCell", "GRUCell", "StackedRNNCells"],
)
def test_cell_called_directly_over_batch_axes(make):
    """One Keras-style step ``cell(x_t, states)`` on ``(*batch, F)``: vmap of unbatched steps is
    the batched step."""
    cell = make()
    x = _x((B1, F))
    sizes = [U, U] if isinstance(cell, rnnjax.LSTMCell) else [U] if isinstance(cell, rnnjax.GRUCell) else [U, 2, 2]
    states = [_x((B1, s), 20 + k) for k, s in enumerate(sizes)]
    v = cell.init(KEY, x, states)
    batched = cell.apply(v, x, states)
    _close(jax.vmap(lambda s, st: cell.apply(v, s, st))(x, states), batched)
    _close(cell.apply(v, x[None], [s[None] for s in states]), jax.tree_util.tree_map(lambda a: a[None], batched))
