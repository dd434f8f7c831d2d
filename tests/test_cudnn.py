"""CuDNNLSTM / CuDNNGRU and the cuDNN weight conversions.

References: PyTorch CPU ``nn.LSTM``/``nn.GRU`` (values and autograd gradients), Keras 2's own
conversion formula (``saving.py``: ``k.T.reshape(k.shape, order='F')`` per gate) and
``jax.experimental.rnn`` (its weight unpacking and its pure-JAX ``lstm_ref``). No GPU here: the
cuDNN kernel itself is not run; the GPU branch around it is run with ``lstm_ref`` in its place.
"""

from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn as jrnn
from torch_ref import torch_or_skip

import rnnjax
from rnnjax.cudnn import convert, fused
from rnnjax.functional.lstm import LSTMState

B, T, I, U = 3, 6, 5, 4
TOL = dict(rtol=1e-5, atol=1e-5)
# On a GPU machine (bench/gpu_check.py's run) backend='auto' takes the real cuDNN kernel; the two
# tests that expect its absence check the CPU-side behaviour there instead.
ON_GPU = fused.cudnn_lstm_unavailable_reason() is None


def rand(key, shape, scale=0.5):
    return np.asarray(jax.random.normal(jax.random.key(key), shape, jnp.float32)) * scale


def cudnn_params(kind, key=0, i=I, u=U):
    g = 4 if kind == "lstm" else 3
    return {
        "kernel": rand(key, (i, g * u)),
        "recurrent_kernel": rand(key + 1, (u, g * u)),
        "bias": rand(key + 2, (2 * g * u,)),
    }


def torch_module(kind, state_dict):
    torch = torch_or_skip()
    cls = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
    w = {k: torch.tensor(np.asarray(v)) for k, v in state_dict.items()}
    m = cls(w["weight_ih_l0"].shape[1], w["weight_hh_l0"].shape[1], batch_first=True)
    m.load_state_dict(w)
    return m


def torch_run(kind, params, x, h0=None, c0=None):
    """Outputs, states and autograd grads of ``sum(y * proj)`` from PyTorch, weights given in the
    Keras 2 CuDNN layout (grads mapped back to that layout)."""
    torch = torch_or_skip()
    to_torch = convert.cudnn_lstm_to_torch if kind == "lstm" else convert.cudnn_gru_to_torch
    m = torch_module(kind, to_torch(params))
    xt = torch.tensor(np.array(x, np.float32, order="C", copy=True), requires_grad=True)
    state = None
    if h0 is not None:
        h = torch.tensor(np.asarray(h0))[None]
        state = (h, torch.tensor(np.asarray(c0))[None]) if kind == "lstm" else h
    y, s = m(xt, state)
    h_n, c_n = (s[0][0], s[1][0]) if kind == "lstm" else (s[0], None)
    proj = torch.tensor(rand(99, tuple(y.shape)))
    (y * proj).sum().backward()
    grads = {n: p.grad.numpy() for n, p in m.named_parameters()}
    from_torch = convert.torch_to_cudnn_lstm if kind == "lstm" else convert.torch_to_cudnn_gru
    g = from_torch(grads)
    out = dict(
        y=y.detach().numpy(),
        h=h_n.detach().numpy(),
        dx=xt.grad.numpy(),
        dkernel=g.kernel,
        drecurrent=g.recurrent_kernel,
        dbias=g.bias,
        proj=proj.numpy(),
    )
    if c_n is not None:
        out["c"] = c_n.detach().numpy()
    return out


def japply(layer, variables, x, **kw):
    """``layer.apply`` under ``jax.jit`` (array keyword arguments are closed over, so concrete)."""
    return jax.jit(lambda v, x: layer.apply(v, x, **kw))(variables, x)


def layer_for(kind, **kw):
    return (rnnjax.CuDNNLSTM if kind == "lstm" else rnnjax.CuDNNGRU)(U, **kw)


# ----------------------------------------------------------------------------------------------
# parity with PyTorch and with the canonical layers


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_layer_matches_torch_values_and_gradients(kind):
    x = rand(10, (B, T, I), 1.0)
    params = cudnn_params(kind)
    ref = torch_run(kind, params, x)
    layer = layer_for(kind, return_sequences=True, return_state=True)
    out = japply(layer, {"params": params}, x)
    np.testing.assert_allclose(out[0], ref["y"], **TOL)
    np.testing.assert_allclose(out[1], ref["h"], **TOL)
    if kind == "lstm":
        np.testing.assert_allclose(out[2], ref["c"], **TOL)

    def loss(p, x):
        return jnp.sum(layer.apply({"params": p}, x)[0] * ref["proj"])

    gp, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    np.testing.assert_allclose(gx, ref["dx"], **TOL)
    np.testing.assert_allclose(gp["kernel"], ref["dkernel"], **TOL)
    np.testing.assert_allclose(gp["recurrent_kernel"], ref["drecurrent"], **TOL)
    np.testing.assert_allclose(gp["bias"], ref["dbias"], **TOL)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_canonical_layer_with_converted_weights_matches(kind):
    x = rand(11, (B, T, I), 1.0)
    params = cudnn_params(kind, key=3)
    y_cudnn = japply(layer_for(kind, return_sequences=True), {"params": params}, x)
    if kind == "lstm":
        canon = rnnjax.LSTM(U, recurrent_activation="sigmoid", return_sequences=True)
        p = convert.cudnn_lstm_to_lstm(params)
    else:
        canon = rnnjax.GRU(U, recurrent_activation="sigmoid", reset_after=True, return_sequences=True)
        p = convert.cudnn_gru_to_gru(params)
    y = japply(canon, {"params": {"cell": p._asdict()}}, x)
    ref = torch_run(kind, params, x)
    np.testing.assert_allclose(y, y_cudnn, **TOL)
    np.testing.assert_allclose(y, ref["y"], **TOL)

    def loss(cell, x):
        return jnp.sum(canon.apply({"params": {"cell": cell}}, x) * ref["proj"])

    g, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))(p._asdict(), x)
    np.testing.assert_allclose(gx, ref["dx"], **TOL)
    # the CuDNN -> canonical map permutes kernel entries, so torch's gradients map the same way
    to_canon = convert.cudnn_lstm_to_lstm if kind == "lstm" else convert.cudnn_gru_to_gru
    g_ref = to_canon((ref["dkernel"], ref["drecurrent"], ref["dbias"]))
    np.testing.assert_allclose(g["kernel"], g_ref.kernel, **TOL)
    np.testing.assert_allclose(g["recurrent_kernel"], g_ref.recurrent_kernel, **TOL)
    # canonical LSTM bias = b_ih + b_hh, so its gradient equals either half's
    bias_ref = ref["dbias"][: 4 * U] if kind == "lstm" else g_ref.bias
    np.testing.assert_allclose(g["bias"], bias_ref, **TOL)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_initial_state_and_go_backwards_match_torch(kind):
    x = rand(12, (B, T, I), 1.0)
    params = cudnn_params(kind, key=5)
    h0, c0 = rand(13, (B, U)), rand(14, (B, U))
    init = [h0, c0] if kind == "lstm" else [h0]
    ref = torch_run(kind, params, x[:, ::-1], h0, c0)
    out = japply(
        layer_for(kind, return_sequences=True, return_state=True, go_backwards=True),
        {"params": params},
        x,
        initial_state=init,
    )
    np.testing.assert_allclose(out[0], ref["y"], **TOL)  # processing order = torch on reversed time
    np.testing.assert_allclose(out[1], ref["h"], **TOL)
    last = japply(layer_for(kind, go_backwards=True), {"params": params}, x, initial_state=init)
    np.testing.assert_allclose(last, ref["h"], **TOL)


# ----------------------------------------------------------------------------------------------
# masks

LENGTHS = [6, 3, 1]


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_right_padded_mask_equals_truncated_sequences(kind, go_backwards):
    x = rand(20, (B, T, I), 1.0)
    params = cudnn_params(kind, key=7)
    mask = np.arange(T)[None, :] < np.array(LENGTHS)[:, None]
    layer = layer_for(kind, return_sequences=True, return_state=True, go_backwards=go_backwards)
    out = japply(layer, {"params": params}, x, mask=jnp.asarray(mask))
    out_len = japply(layer, {"params": params}, x, seq_lengths=jnp.array(LENGTHS))
    for a, b in zip(out, out_len):
        np.testing.assert_array_equal(a, b)
    for row, n in enumerate(LENGTHS):
        xs = x[row : row + 1, :n]
        ref = torch_run(kind, params, xs[:, ::-1] if go_backwards else xs)
        np.testing.assert_allclose(out[1][row], ref["h"][0], **TOL)
        if kind == "lstm":
            np.testing.assert_allclose(out[2][row], ref["c"][0], **TOL)
        if go_backwards:  # padded steps come first in processing order, as zeros
            np.testing.assert_array_equal(out[0][row, : T - n], 0.0)
            np.testing.assert_allclose(out[0][row, T - n :], ref["y"][0], **TOL)
        else:  # padded steps repeat the last output (Keras masking)
            np.testing.assert_allclose(out[0][row, :n], ref["y"][0], **TOL)
            np.testing.assert_allclose(out[0][row, n:], np.broadcast_to(ref["y"][0, -1], (T - n, U)), **TOL)


@pytest.mark.parametrize(
    "bad", [[True, False, True, True, True, True], [False, False, True, True, True, True]], ids=["hole", "left-padded"]
)
def test_non_right_padded_mask_is_an_error(bad):
    x = rand(21, (B, T, I))
    mask = np.ones((B, T), bool)
    mask[1] = bad
    for kind in ("lstm", "gru"):
        with pytest.raises(ValueError, match=r"rows \[1\] are not right-padded.*rnnjax\."):
            layer_for(kind).apply({"params": cudnn_params(kind)}, x, mask=jnp.asarray(mask))


def test_traced_bad_mask_poisons_only_that_row():
    x = rand(22, (B, T, I))
    mask = np.ones((B, T), bool)
    mask[1, 2] = False
    mask[2, 4:] = False
    layer = layer_for("lstm", return_state=True)
    v = {"params": cudnn_params("lstm")}
    y, h, c = jax.jit(lambda m: layer.apply(v, x, mask=m))(jnp.asarray(mask))
    assert np.isnan(y[1]).all() and np.isnan(h[1]).all() and np.isnan(c[1]).all()
    y = np.asarray(y)
    assert np.isfinite(y[[0, 2]]).all()
    ok = np.asarray(japply(layer, v, x, seq_lengths=jnp.array([6, 6, 4]))[0])
    np.testing.assert_allclose(y[[0, 2]], ok[[0, 2]], **TOL)


def test_mask_argument_errors():
    x = rand(23, (B, T, I))
    v = {"params": cudnn_params("lstm")}
    layer = layer_for("lstm")
    full = jnp.ones((B, T), bool)
    with pytest.raises(ValueError, match="`mask` and `seq_lengths`"):
        layer.apply(v, x, mask=full, seq_lengths=jnp.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"`seq_lengths`: expected values in \[0, 6\]"):
        layer.apply(v, x, seq_lengths=jnp.array([1, 7, 3]))
    with pytest.raises(ValueError, match="`seq_lengths`: expected integers of shape"):
        layer.apply(v, x, seq_lengths=jnp.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"`mask`: expected shape \(3, 6\)"):
        layer.apply(v, x, mask=jnp.ones((B, T + 1), bool))
    with pytest.raises(TypeError, match="`mask`: expected a boolean"):
        layer.apply(v, x, mask=jnp.ones((B, T), jnp.int32))


# ----------------------------------------------------------------------------------------------
# the GPU branch, run on the CPU with jax.experimental.rnn.lstm_ref in place of cuDNN


def test_packing_matches_jax_experimental_rnn_layout():
    params = convert.CuDNNLSTMParams(**cudnn_params("lstm", key=30))
    flat = fused.pack_lstm_weights(params)
    assert flat.shape == (jrnn.get_num_params_in_lstm(I, U, 1, False),)
    w_ih, w_hh, b_ih, b_hh = jrnn.unpack_lstm_weights(flat, I, U, 1, False)
    sd = convert.cudnn_lstm_to_torch(params)  # PyTorch's weight_ih is cuDNN's W_ih
    np.testing.assert_array_equal(w_ih[0], sd["weight_ih_l0"])
    np.testing.assert_array_equal(w_hh[0], sd["weight_hh_l0"])
    np.testing.assert_array_equal(b_ih[0], sd["bias_ih_l0"])
    np.testing.assert_array_equal(b_hh[0], sd["bias_hh_l0"])


FUSED_CASES = [  # (lengths given, go_backwards, zero_output_for_mask, return_sequences): every branch
    (False, False, False, True),
    (False, True, False, False),
    (True, False, False, True),
    (True, False, True, True),
    (True, False, True, False),
    (True, True, False, True),
    (True, True, True, False),
]


@pytest.mark.parametrize("with_lengths,go_backwards,zero_output_for_mask,return_sequences", FUSED_CASES)
def test_fused_branch_with_lstm_ref_equals_scan_path(
    with_lengths, go_backwards, zero_output_for_mask, return_sequences
):
    x = rand(31, (4, T, I), 1.0)
    params = cudnn_params("lstm", key=32)
    h0, c0 = rand(33, (4, U)), rand(34, (4, U))
    lens = jnp.array([6, 2, 0, 5]) if with_lengths else None  # includes an empty and a full row
    y, s = fused.fused_lstm(
        convert.CuDNNLSTMParams(**params),
        x,
        LSTMState(h0, c0),
        lens,
        go_backwards=go_backwards,
        return_sequences=return_sequences,
        zero_output_for_mask=zero_output_for_mask,
        kernel=fused.reference_kernel,
    )
    layer = layer_for(
        "lstm",
        backend="scan",
        return_sequences=return_sequences,
        return_state=True,
        go_backwards=go_backwards,
        zero_output_for_mask=zero_output_for_mask,
    )
    ref = japply(layer, {"params": params}, x, initial_state=[h0, c0], seq_lengths=lens)
    np.testing.assert_allclose(y, ref[0], **TOL)
    np.testing.assert_allclose(s.h, ref[1], **TOL)
    np.testing.assert_allclose(s.c, ref[2], **TOL)


def test_fused_branch_gradients_match_torch():
    x = rand(35, (B, T, I), 1.0)
    params = cudnn_params("lstm", key=36)
    ref = torch_run("lstm", params, x)
    zeros = LSTMState(jnp.zeros((B, U)), jnp.zeros((B, U)))

    def loss(p, x):
        y, _ = fused.fused_lstm(
            convert.CuDNNLSTMParams(**p), x, zeros, return_sequences=True, kernel=fused.reference_kernel
        )
        return jnp.sum(y * ref["proj"])

    gp, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    np.testing.assert_allclose(gx, ref["dx"], **TOL)
    np.testing.assert_allclose(gp["kernel"], ref["dkernel"], **TOL)
    np.testing.assert_allclose(gp["recurrent_kernel"], ref["drecurrent"], **TOL)
    np.testing.assert_allclose(gp["bias"], ref["dbias"], **TOL)


def test_layer_dispatches_to_fused_branch_when_cudnn_is_available(monkeypatch):
    """backend='cudnn' with the availability check and the kernel swapped for lstm_ref: the layer
    (under jit and grad, stateful) goes through fused_lstm and matches the scan backend."""
    calls = []

    def kernel(*args):
        calls.append(1)
        return fused.reference_kernel(*args)

    monkeypatch.setattr(fused, "cudnn_lstm_unavailable_reason", lambda x=None: None)
    monkeypatch.setattr(fused, "cudnn_kernel", kernel)
    x = rand(40, (B, T, I), 1.0)
    v = {"params": cudnn_params("lstm", key=41)}
    lens = jnp.array([6, 4, 1])
    outs = {}
    for backend in ("cudnn", "scan"):
        layer = layer_for("lstm", backend=backend, return_sequences=True, return_state=True)

        def loss(v, layer=layer):
            out = layer.apply(v, x, seq_lengths=lens)
            return jnp.sum(out[0] ** 2) + jnp.sum(out[2]), out

        outs[backend] = jax.jit(jax.grad(loss, has_aux=True))(v)
    assert calls, "the fused branch was not taken"
    for a, b in zip(jax.tree_util.tree_leaves(outs["cudnn"]), jax.tree_util.tree_leaves(outs["scan"])):
        np.testing.assert_allclose(a, b, **TOL)
    auto = layer_for("lstm", return_sequences=True)  # 'auto' picks the fused path when cuDNN is "there"
    calls.clear()
    jax.eval_shape(lambda x: auto.apply(v, x), x)
    assert calls
    calls.clear()
    jax.eval_shape(lambda x: auto.apply(v, x), x.astype(jnp.bfloat16))  # ... but not for bfloat16 inputs
    assert not calls


def test_real_cudnn_call_traces_under_jit_grad_and_init(monkeypatch):
    """Without a GPU the cuDNN kernel cannot lower, but the program around it can be traced: with
    the workspace-size query stubbed, ``grad`` of the layer (backend='cudnn') and Flax ``init``
    trace through ``jax.experimental.rnn.lstm``'s custom VJP (primitives rnn_fwd and rnn_bwd)."""
    import types

    monkeypatch.setattr(
        jrnn, "gpu_rnn", types.SimpleNamespace(compute_rnn_workspace_reserve_space_sizes=lambda *a: (0, 16))
    )
    monkeypatch.setattr(fused, "cudnn_lstm_unavailable_reason", lambda x=None: None)
    layer = layer_for("lstm", backend="cudnn", return_sequences=True, return_state=True)
    x = jnp.ones((B, T, I))
    params = jax.tree_util.tree_map(jnp.asarray, cudnn_params("lstm"))

    def loss(p, x):
        y, h, c = layer.apply({"params": p}, x, seq_lengths=jnp.array([6, 3, 0]))
        return jnp.sum(y) + jnp.sum(c)

    text = str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(params, x))
    assert "rnn_fwd" in text and "rnn_bwd" in text
    shapes = jax.eval_shape(layer.init, jax.random.key(0), x)["params"]
    assert shapes["bias"].shape == (8 * U,)


def test_backend_cudnn_on_cpu_is_a_clear_error():
    x = rand(42, (B, T, I))
    if ON_GPU:  # the same error for an input placed on the CPU of a GPU machine
        x = jax.device_put(x, jax.devices("cpu")[0])
        why = "the input lives on the 'cpu' platform"
    else:
        why = "no cuDNN RNN kernels"
    with pytest.raises(RuntimeError, match=f"backend='cudnn'.*{why}.*backend='scan'"):
        layer_for("lstm", backend="cudnn").apply({"params": cudnn_params("lstm")}, x)
    with pytest.raises(ValueError, match="JAX has no cuDNN GRU"):
        layer_for("gru", backend="cudnn").apply({"params": cudnn_params("gru")}, x)
    with pytest.raises(ValueError, match=r"`backend`: expected one of \('auto', 'cudnn', 'scan'\)"):
        layer_for("lstm", backend="gpu").apply({"params": cudnn_params("lstm")}, x)
    # jax.experimental.rnn.lstm itself has no CPU fallback in this JAX (the error's type differs between
    # jaxlib versions: AttributeError in 0.10.2):
    with jax.default_device(jax.devices("cpu")[0]), pytest.raises(Exception):  # noqa: B017
        fused.fused_lstm(
            convert.CuDNNLSTMParams(**cudnn_params("lstm")),
            jnp.asarray(x),
            LSTMState(jnp.zeros((B, U)), jnp.zeros((B, U))),
        )


# ----------------------------------------------------------------------------------------------
# conversions


def keras2_from_cudnn(k, gates):
    """Keras 2 saving.py: ``transform_kernels(k, transpose_input(from_cudnn=True), n_gates)``."""
    return np.hstack([b.T.reshape(b.shape, order="F") for b in np.hsplit(k, gates)])


def keras2_to_cudnn(k, gates):
    return np.hstack([b.T.reshape(b.shape, order="C") for b in np.hsplit(k, gates)])


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_conversions_follow_keras2_rules_and_round_trip_exactly(kind):
    g = 4 if kind == "lstm" else 3
    c = convert.CuDNNLSTMParams if kind == "lstm" else convert.CuDNNGRUParams
    to_canon = convert.cudnn_lstm_to_lstm if kind == "lstm" else convert.cudnn_gru_to_gru
    from_canon = convert.lstm_to_cudnn_lstm if kind == "lstm" else convert.gru_to_cudnn_gru
    canon_to_torch = convert.lstm_to_torch if kind == "lstm" else convert.gru_to_torch
    torch_to_canon = convert.torch_to_lstm if kind == "lstm" else convert.torch_to_gru
    cudnn_to_torch = convert.cudnn_lstm_to_torch if kind == "lstm" else convert.cudnn_gru_to_torch
    torch_to_cudnn = convert.torch_to_cudnn_lstm if kind == "lstm" else convert.torch_to_cudnn_gru
    p = c(**cudnn_params(kind, key=50, i=3, u=5))
    canon = to_canon(p)
    # Keras 2's own rules
    np.testing.assert_array_equal(canon.kernel, keras2_from_cudnn(p.kernel, g))
    np.testing.assert_array_equal(canon.recurrent_kernel, keras2_from_cudnn(p.recurrent_kernel, g))
    if kind == "lstm":
        np.testing.assert_array_equal(canon.bias, np.sum(np.split(p.bias, 2), axis=0))
    else:
        np.testing.assert_array_equal(canon.bias, p.bias.reshape(2, -1))
    back = from_canon(canon)
    np.testing.assert_array_equal(back.kernel, p.kernel)
    np.testing.assert_array_equal(back.kernel, keras2_to_cudnn(canon.kernel, g))
    np.testing.assert_array_equal(back.recurrent_kernel, p.recurrent_kernel)
    if kind == "lstm":
        np.testing.assert_array_equal(back.bias, np.tile(0.5 * canon.bias, 2))
        np.testing.assert_array_equal(to_canon(back).bias, canon.bias)
    else:
        np.testing.assert_array_equal(back.bias, p.bias)
    # exact round trips through PyTorch
    for a, b in zip(torch_to_cudnn(cudnn_to_torch(p)), p):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(torch_to_canon(canon_to_torch(canon)), canon):
        np.testing.assert_array_equal(a, b)
    sd = cudnn_to_torch(p)
    for k in sd:
        np.testing.assert_array_equal(cudnn_to_torch(torch_to_cudnn(sd))[k], sd[k])
    # numpy in -> numpy out; jax in -> jax out (and jit-able)
    assert all(isinstance(a, np.ndarray) for a in canon)
    jc = jax.jit(to_canon)(c(*map(jnp.asarray, p)))
    assert all(isinstance(a, jax.Array) for a in jc)
    for a, b in zip(jc, canon):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_canonical_to_torch_matches_torch_module(kind):
    x = rand(51, (B, T, I), 1.0)
    if kind == "lstm":
        layer = rnnjax.LSTM(U, recurrent_activation="sigmoid", return_sequences=True)
        to_torch = convert.lstm_to_torch
    else:
        layer = rnnjax.GRU(U, recurrent_activation="sigmoid", reset_after=True, return_sequences=True)
        to_torch = convert.gru_to_torch
    g = 4 if kind == "lstm" else 3
    cell = {
        "kernel": rand(52, (I, g * U)),
        "recurrent_kernel": rand(53, (U, g * U)),
        "bias": rand(54, (4 * U,) if kind == "lstm" else (2, 3 * U)),
    }
    y = japply(layer, {"params": {"cell": cell}}, x)
    m = torch_module(kind, to_torch(cell))
    yt, _ = m(torch_or_skip().tensor(x))
    np.testing.assert_allclose(y, yt.detach().numpy(), **TOL)


def test_conversion_errors():
    gru_false = {"kernel": rand(1, (I, 3 * U)), "recurrent_kernel": rand(2, (U, 3 * U)), "bias": rand(3, (3 * U,))}
    with pytest.raises(ValueError, match=r"reset_after=False.*no weights reproduce it"):
        convert.gru_to_cudnn_gru(gru_false)
    with pytest.raises(ValueError, match=r"reset_after=False"):
        convert.gru_to_torch(gru_false)
    p = cudnn_params("lstm")
    with pytest.raises(ValueError, match=r"recurrent_kernel must have shape \(U, 4U\)"):
        convert.cudnn_lstm_to_lstm(cudnn_params("gru"))
    with pytest.raises(ValueError, match=r"bias must have shape \(32,\), got \(16,\)"):
        convert.cudnn_lstm_to_lstm({**p, "bias": p["bias"][:16]})
    with pytest.raises(ValueError, match=r"kernel must have shape \(input_dim, 16\)"):
        convert.cudnn_lstm_to_lstm({**p, "kernel": p["kernel"][:, :12]})
    with pytest.raises(ValueError, match="no entry 'weight_hh_l0'"):
        convert.torch_to_lstm({"weight_ih_l0": np.zeros((16, 3))})
    with pytest.raises(TypeError, match="expected \\(kernel, recurrent_kernel, bias\\)"):
        convert.cudnn_lstm_to_lstm(np.zeros(3))


# ----------------------------------------------------------------------------------------------
# layer features


def test_parameters_and_unit_forget_bias_follow_keras2():
    x = jnp.zeros((2, 3, I))
    v = jax.jit(rnnjax.CuDNNLSTM(U).init)(jax.random.key(0), x)
    shapes = jax.tree_util.tree_map(jnp.shape, v["params"])
    assert shapes == {"kernel": (I, 4 * U), "recurrent_kernel": (U, 4 * U), "bias": (8 * U,)}
    expected = np.zeros(8 * U, np.float32)
    expected[5 * U : 6 * U] = 1.0  # Keras 2: bias_initializer(5U), ones(U), bias_initializer(2U)
    np.testing.assert_array_equal(v["params"]["bias"], expected)
    v = jax.jit(rnnjax.CuDNNLSTM(U, unit_forget_bias=False, bias_initializer="ones").init)(jax.random.key(0), x)
    np.testing.assert_array_equal(v["params"]["bias"], np.ones(8 * U))
    v = jax.jit(rnnjax.CuDNNGRU(U).init)(jax.random.key(0), x)
    shapes = jax.tree_util.tree_map(jnp.shape, v["params"])
    assert shapes == {"kernel": (I, 3 * U), "recurrent_kernel": (U, 3 * U), "bias": (6 * U,)}
    r = np.asarray(v["params"]["recurrent_kernel"])  # orthogonal rows
    np.testing.assert_allclose(r @ r.T, np.eye(U), atol=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_stateful_two_batches_equal_one_sequence(kind):
    x = rand(60, (B, 2 * T, I), 1.0)
    params = cudnn_params(kind, key=61)
    ref = torch_run(kind, params, x)
    layer = layer_for(kind, stateful=True, return_sequences=True)
    v = flax.core.unfreeze(jax.jit(layer.init)(jax.random.key(0), x[:, :T]))
    v["params"] = params
    step = jax.jit(lambda v, x: layer.apply(v, x, mutable=["rnn_state"]))
    y1, upd = step(v, x[:, :T])
    v["rnn_state"] = upd["rnn_state"]
    y2, upd = step(v, x[:, T:])
    np.testing.assert_allclose(np.concatenate([y1, y2], 1), ref["y"], **TOL)
    np.testing.assert_allclose(jax.tree_util.tree_leaves(upd["rnn_state"])[0], ref["h"], **TOL)
    v["rnn_state"] = upd["rnn_state"]
    reset = rnnjax.reset_states(v)
    assert all(np.all(np.asarray(a) == 0) for a in jax.tree_util.tree_leaves(reset["rnn_state"]))
    with pytest.raises(ValueError, match="mutable=\\['rnn_state'\\]"):
        layer.apply(v, x[:, :T])


def test_regularizers_constraints_and_bfloat16():
    x = rand(70, (B, T, I))
    layer = rnnjax.CuDNNLSTM(
        U,
        kernel_regularizer=rnnjax.regularizers.L2(0.1),
        bias_regularizer="l1",
        activity_regularizer=rnnjax.regularizers.L1(0.01),
        recurrent_constraint="non_neg",
    )
    params = cudnn_params("lstm", key=71)
    y, aux = japply(layer, {"params": params}, x, mutable=["losses"])
    expected = (
        0.1 * np.sum(params["kernel"] ** 2)
        + 0.01 * np.sum(np.abs(params["bias"]))
        + 0.01 * np.sum(np.abs(np.asarray(y))) / B
    )
    np.testing.assert_allclose(rnnjax.regularization_loss(aux), expected, rtol=1e-5)
    found = rnnjax.constraints.collect_constraints(layer, x)
    assert list(found) == [("recurrent_kernel",)]
    yb = japply(rnnjax.CuDNNGRU(U), {"params": cudnn_params("gru")}, x.astype(jnp.bfloat16))
    yf = japply(rnnjax.CuDNNGRU(U), {"params": cudnn_params("gru")}, x)
    np.testing.assert_allclose(np.asarray(yb, np.float32), yf, atol=3e-2)


def test_input_errors():
    v = {"params": cudnn_params("lstm")}
    with pytest.raises(
        ValueError, match=r"`inputs`: expected an array \(\*batch, timesteps, features\) with at least 2"
    ):
        layer_for("lstm").apply(v, jnp.zeros((I,)))  # (T, I) is one unbatched sequence (test_batch_axes.py)
    with pytest.raises(ValueError, match="`inputs`: 7 features per step"):
        layer_for("lstm").apply(v, jnp.zeros((B, T, 7)))
    with pytest.raises(ValueError, match="`initial_state`: expected 2 state array"):
        layer_for("lstm").apply(v, jnp.zeros((B, T, I)), initial_state=[jnp.zeros((B, U))])
    with pytest.raises(ValueError, match="`units`: expected a positive integer"):
        rnnjax.CuDNNGRU(0).init(jax.random.key(0), jnp.zeros((B, T, I)))


def test_gpu_bench_script_runs(tmp_path):
    """bench/gpu_bench.py's plumbing (timing, table, JSON, skip reasons) on a CPU subset; the whole
    ``--smoke`` run takes about a minute here, too slow for this file."""
    import importlib.util

    torch_or_skip()  # the run includes PyTorch rows
    path = Path(__file__).resolve().parents[1] / "bench" / "gpu_bench.py"
    spec = importlib.util.spec_from_file_location("gpu_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--smoke", "--only", "CuDNNGRU unroll4,torch GRU,jax.experimental", "--json", str(out)]) == 0
    import json

    rows = {r["impl"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"rnnjax CuDNNGRU unroll4", "torch GRU fp32", "torch GRU fp16", "jax.experimental.rnn lstm"}
    assert rows["rnnjax CuDNNGRU unroll4"]["forward_backward_ms"] > 0
    assert rows["torch GRU fp32"]["forward_ms"] > 0
    if ON_GPU:
        assert rows["jax.experimental.rnn lstm"]["forward_backward_ms"] > 0
    else:
        assert "no cuDNN RNN kernels" in rows["jax.experimental.rnn lstm"]["error"]
    assert {impl for impl, _, _ in bench.implementations()} >= {
        "rnnjax CuDNNLSTM",
        "rnnjax LSTM",
        "torch LSTM fp16",
        "flax OptimizedLSTMCell",
        "flax GRUCell",
    }


def test_gpu_check_script_logic_on_cpu(monkeypatch, capsys):
    """bench/gpu_check.py (run on a GPU) with the cuDNN kernel swapped for ``lstm_ref``: its
    comparisons pass on a correct kernel and fail on a wrong one."""
    import importlib.util

    torch_or_skip()  # the script compares with PyTorch too
    path = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    monkeypatch.setattr(fused, "cudnn_lstm_unavailable_reason", lambda x=None: None)
    monkeypatch.setattr(check, "cudnn_lstm_unavailable_reason", lambda x=None: None)
    monkeypatch.setattr(check, "SHAPES", check.SHAPES[:1])
    monkeypatch.setattr(fused, "cudnn_kernel", fused.reference_kernel)
    assert check.main() == 0
    assert "# 0 failure(s)" in capsys.readouterr().out

    def wrong_kernel(x, h0, c0, *args):  # drops the initial cell state
        return fused.reference_kernel(x, h0, jnp.zeros_like(c0), *args)

    monkeypatch.setattr(fused, "cudnn_kernel", wrong_kernel)
    assert check.main() == 1
    assert "FAIL" in capsys.readouterr().out
