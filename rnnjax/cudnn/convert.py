"""Weight conversions between the three layouts of a cuDNN-style LSTM / GRU.

**Canonical Keras** (``rnnjax.LSTM``/``rnnjax.GRU(reset_after=True)``, Keras 2 and 3):
``kernel (I, G*U)``, ``recurrent_kernel (U, G*U)`` with ``x @ kernel``; LSTM bias ``(4U,)``,
GRU bias ``(2, 3U)`` (row 0 input bias, row 1 recurrent bias). Gate blocks (columns): LSTM
``i, f, c, o``; GRU ``z, r, h``.

**Keras 2 CuDNN** (``CuDNNLSTM``/``CuDNNGRU``, what Keras 2 saved): the same shapes, but each gate
block of ``kernel`` holds the bytes of cuDNN's ``(U, I)`` matrix ``W_g`` (``W_g @ x``) reshaped to
``(I, U)`` *without transposing*, and each block of ``recurrent_kernel`` holds ``W_hg`` likewise
(a plain transpose, the block being square)::

    K_canonical[:, g] = K_cudnn[:, g].reshape(U, I).T        R_canonical[:, g] = R_cudnn[:, g].T

Bias: LSTM ``(8U,)`` = input biases ``i, f, c, o`` then recurrent biases ``i, f, c, o``; GRU
``(6U,)`` = input ``z, r, h`` then recurrent ``z, r, h`` (cuDNN's own order ``r, z, n`` only appears
in the flat buffer). These are Keras 2's rules (``keras/engine/saving.py``,
``_convert_rnn_weights``): CuDNN -> canonical sums the two LSTM biases and reshapes the GRU bias
to ``(2, 3U)``; canonical -> CuDNN splits the LSTM bias as ``tile(0.5 * b, 2)``.

**PyTorch** ``nn.LSTM``/``nn.GRU`` ``state_dict`` (layer 0, forward direction):
``weight_ih_l0 (G*U, I)``, ``weight_hh_l0 (G*U, U)``, ``bias_ih_l0 (G*U,)``, ``bias_hh_l0
(G*U,)``; rows in gate order ``i, f, g, o`` (LSTM) or ``r, z, n`` (GRU). ``weight_ih`` holds
exactly cuDNN's ``W_g`` matrices.

All functions accept numpy or JAX arrays (or ``torch`` tensors for the PyTorch side) and return
numpy arrays when every input is numpy/torch, JAX arrays otherwise (so they work under
``jax.jit``/``jax.grad``). Every conversion is a pure reshape/transpose/reorder and round-trips
exactly, except CuDNN -> canonical -> CuDNN for the LSTM bias: canonical keeps only the sum of the
two biases, so the split comes back as ``(b_ih + b_hh) / 2`` twice (same function, other split).
Canonical -> PyTorch puts the whole LSTM bias in ``bias_ih`` and zeros in ``bias_hh``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.functional.core import register_for_export
from rnnjax.functional.gru import GRUParams
from rnnjax.functional.lstm import LSTMParams


class CuDNNLSTMParams(NamedTuple):
    """Keras 2 ``CuDNNLSTM`` weights: ``kernel (I, 4U)``, ``recurrent_kernel (U, 4U)``, ``bias (8U,)``."""

    kernel: Any
    recurrent_kernel: Any
    bias: Any


class CuDNNGRUParams(NamedTuple):
    """Keras 2 ``CuDNNGRU`` weights: ``kernel (I, 3U)``, ``recurrent_kernel (U, 3U)``, ``bias (6U,)``."""

    kernel: Any
    recurrent_kernel: Any
    bias: Any


register_for_export(CuDNNLSTMParams, CuDNNGRUParams)


_TORCH_KEYS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
_GRU_TO_TORCH = (1, 0, 2)  # Keras blocks z, r, h -> torch rows r, z, n (the permutation is its own inverse)


# ----------------------------------------------------------------------------------------------
# helpers


def _array(a):
    """numpy for numpy/torch/lists, unchanged for JAX arrays (tracers included)."""
    if a is None or isinstance(a, jax.Array):
        return a
    if hasattr(a, "detach"):  # a torch tensor
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _xp(*arrays):
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def _triplet(params, what: str):
    """``(kernel, recurrent_kernel, bias)`` from a NamedTuple, a sequence of 2-3 arrays (Keras
    ``get_weights()``) or a mapping with those keys (a Flax params dict; a nested ``'cell'`` or
    ``'params'`` level is looked through)."""
    if isinstance(params, Mapping):
        for level in ("params", "cell"):
            if "kernel" not in params and level in params and isinstance(params[level], Mapping):
                params = params[level]
        missing = [k for k in ("kernel", "recurrent_kernel") if k not in params]
        if missing:
            raise ValueError(
                f"`{what}`: expected a mapping with 'kernel', 'recurrent_kernel' and 'bias', got keys {sorted(params)}."
            )
        k, r, b = params["kernel"], params["recurrent_kernel"], params.get("bias")
    elif isinstance(params, (tuple, list)) and len(params) in (2, 3):
        k, r = params[0], params[1]
        b = params[2] if len(params) == 3 else None
    else:
        raise TypeError(
            f"`{what}`: expected (kernel, recurrent_kernel, bias) as a NamedTuple, a list or a mapping, "
            f"got {type(params).__name__}."
        )
    return _array(k), _array(r), _array(b)


def _check_shapes(k, r, gates: int, what: str) -> tuple[int, int]:
    if getattr(r, "ndim", None) != 2 or r.shape[1] != gates * r.shape[0]:
        raise ValueError(f"`{what}`: recurrent_kernel must have shape (U, {gates}U), got {getattr(r, 'shape', None)}.")
    units = r.shape[0]
    if getattr(k, "ndim", None) != 2 or k.shape[1] != gates * units:
        raise ValueError(
            f"`{what}`: kernel must have shape (input_dim, {gates * units}) for units={units}, got "
            f"{getattr(k, 'shape', None)}."
        )
    return k.shape[0], units


def _check_bias(b, shapes: tuple, what: str, hint: str = ""):
    if b is not None and tuple(b.shape) not in shapes:
        raise ValueError(f"`{what}`: bias must have shape {' or '.join(map(str, shapes))}, got {tuple(b.shape)}.{hint}")


def gate_blocks(a: Any, gates: int, axis: int) -> list:
    """``a`` split into ``gates`` equal blocks along ``axis`` (0 or 1)."""
    width = a.shape[axis] // gates
    if axis == 0:
        return [a[g * width : (g + 1) * width] for g in range(gates)]
    return [a[:, g * width : (g + 1) * width] for g in range(gates)]


def _kernel_from_cudnn(k, gates, xp):
    """Keras 2 CuDNN kernel -> canonical: each block's bytes are W_g (U, I); canonical = W_g.T."""
    i, gu = k.shape
    u = gu // gates
    return xp.concatenate([blk.reshape(u, i).T for blk in gate_blocks(k, gates, 1)], axis=1)


def _kernel_to_cudnn(k, gates, xp):
    i, gu = k.shape
    u = gu // gates
    return xp.concatenate([blk.T.reshape(i, u) for blk in gate_blocks(k, gates, 1)], axis=1)


def _transpose_blocks(r, gates, xp):
    return xp.concatenate([blk.T for blk in gate_blocks(r, gates, 1)], axis=1)


def _torch_get(state_dict: Mapping, key: str, prefix: str, required: bool = True):
    full = prefix + key
    if full not in state_dict:
        if required:
            raise ValueError(
                f"`state_dict`: no entry {full!r}; expected PyTorch nn.LSTM/nn.GRU keys "
                f"{[prefix + k for k in _TORCH_KEYS]}, got {sorted(state_dict)}."
            )
        return None
    return _array(state_dict[full])


def _torch_parts(state_dict, gates, prefix, what):
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"`{what}`: expected a mapping like nn.Module.state_dict(), got {type(state_dict).__name__}.")
    w_ih = _torch_get(state_dict, "weight_ih_l0", prefix)
    w_hh = _torch_get(state_dict, "weight_hh_l0", prefix)
    b_ih = _torch_get(state_dict, "bias_ih_l0", prefix, required=False)
    b_hh = _torch_get(state_dict, "bias_hh_l0", prefix, required=False)
    if w_hh.ndim != 2 or w_hh.shape[0] != gates * w_hh.shape[1]:
        raise ValueError(f"`{what}`: weight_hh_l0 must have shape ({gates}U, U), got {tuple(w_hh.shape)}.")
    u = w_hh.shape[1]
    if w_ih.ndim != 2 or w_ih.shape[0] != gates * u:
        raise ValueError(f"`{what}`: weight_ih_l0 must have shape ({gates * u}, input_size), got {tuple(w_ih.shape)}.")
    for name, b in (("bias_ih_l0", b_ih), ("bias_hh_l0", b_hh)):
        if b is not None and tuple(b.shape) != (gates * u,):
            raise ValueError(f"`{what}`: {name} must have shape ({gates * u},), got {tuple(b.shape)}.")
    xp = _xp(w_ih, w_hh, b_ih, b_hh)
    if b_ih is None:
        b_ih = xp.zeros((gates * u,), w_ih.dtype)
    if b_hh is None:
        b_hh = xp.zeros((gates * u,), w_ih.dtype)
    return w_ih, w_hh, b_ih, b_hh, xp


def _reorder_rows(a, xp):
    """GRU rows/vector blocks z, r, h <-> r, z, n (axis 0)."""
    blocks = gate_blocks(a, 3, 0)
    return xp.concatenate([blocks[j] for j in _GRU_TO_TORCH], axis=0)


def _reorder_cols(a, xp):
    blocks = gate_blocks(a, 3, 1)
    return xp.concatenate([blocks[j] for j in _GRU_TO_TORCH], axis=1)


def _torch_dict(w_ih, w_hh, b_ih, b_hh, prefix):
    return {
        prefix + "weight_ih_l0": w_ih,
        prefix + "weight_hh_l0": w_hh,
        prefix + "bias_ih_l0": b_ih,
        prefix + "bias_hh_l0": b_hh,
    }


# ----------------------------------------------------------------------------------------------
# LSTM


def cudnn_lstm_to_lstm(params: Any) -> LSTMParams:
    """Keras 2 ``CuDNNLSTM`` weights -> canonical ``LSTMParams`` (for ``rnnjax.LSTM`` with
    ``recurrent_activation='sigmoid'``): kernels re-laid out per gate, ``bias = b[:4U] + b[4U:]``."""
    k, r, b = _triplet(params, "params")
    _, u = _check_shapes(k, r, 4, "params")
    _check_bias(b, ((8 * u,),), "params")
    xp = _xp(k, r, b)
    bias = None if b is None else b[: 4 * u] + b[4 * u :]
    return LSTMParams(_kernel_from_cudnn(k, 4, xp), _transpose_blocks(r, 4, xp), bias)


def lstm_to_cudnn_lstm(params: Any) -> CuDNNLSTMParams:
    """Canonical LSTM weights (``kernel (I, 4U)``, ``recurrent_kernel (U, 4U)``, ``bias (4U,)`` or
    None) -> Keras 2 ``CuDNNLSTM`` weights; the bias is split evenly, ``tile(0.5 * b, 2)`` (Keras 2's
    rule; only the sum matters). A missing bias becomes zeros."""
    k, r, b = _triplet(params, "params")
    _, u = _check_shapes(k, r, 4, "params")
    _check_bias(b, ((4 * u,),), "params")
    xp = _xp(k, r, b)
    bias = xp.zeros((8 * u,), k.dtype) if b is None else xp.concatenate([0.5 * b, 0.5 * b])
    return CuDNNLSTMParams(_kernel_to_cudnn(k, 4, xp), _transpose_blocks(r, 4, xp), bias)


def lstm_to_torch(params, prefix: str = "") -> dict:
    """Canonical LSTM weights -> ``nn.LSTM`` state_dict entries: ``weight_ih = kernel.T``,
    ``weight_hh = recurrent_kernel.T``, ``bias_ih = bias``, ``bias_hh = 0``."""
    k, r, b = _triplet(params, "params")
    _, u = _check_shapes(k, r, 4, "params")
    _check_bias(b, ((4 * u,),), "params")
    xp = _xp(k, r, b)
    b = xp.zeros((4 * u,), k.dtype) if b is None else b
    return _torch_dict(k.T, r.T, b, xp.zeros_like(b), prefix)


def torch_to_lstm(state_dict: Mapping, prefix: str = "") -> LSTMParams:
    """``nn.LSTM`` state_dict (layer 0) -> canonical ``LSTMParams``; ``bias = bias_ih + bias_hh``
    (missing biases, ``bias=False``, count as zeros)."""
    w_ih, w_hh, b_ih, b_hh, _ = _torch_parts(state_dict, 4, prefix, "state_dict")
    return LSTMParams(w_ih.T, w_hh.T, b_ih + b_hh)


def cudnn_lstm_to_torch(params, prefix: str = "") -> dict:
    """Keras 2 ``CuDNNLSTM`` weights -> ``nn.LSTM`` state_dict entries (exact: the same cuDNN
    matrices, ``bias_ih = b[:4U]``, ``bias_hh = b[4U:]``)."""
    k, r, b = _triplet(params, "params")
    i, u = _check_shapes(k, r, 4, "params")
    _check_bias(b, ((8 * u,),), "params")
    xp = _xp(k, r, b)
    b = xp.zeros((8 * u,), k.dtype) if b is None else b
    w_ih = xp.concatenate([blk.reshape(u, i) for blk in gate_blocks(k, 4, 1)], axis=0)
    w_hh = xp.concatenate([blk.reshape(u, u) for blk in gate_blocks(r, 4, 1)], axis=0)
    return _torch_dict(w_ih, w_hh, b[: 4 * u], b[4 * u :], prefix)


def torch_to_cudnn_lstm(state_dict: Mapping, prefix: str = "") -> CuDNNLSTMParams:
    """``nn.LSTM`` state_dict (layer 0) -> Keras 2 ``CuDNNLSTM`` weights (exact)."""
    w_ih, w_hh, b_ih, b_hh, xp = _torch_parts(state_dict, 4, prefix, "state_dict")
    u, i = w_hh.shape[1], w_ih.shape[1]
    k = xp.concatenate([blk.reshape(i, u) for blk in gate_blocks(w_ih, 4, 0)], axis=1)
    r = xp.concatenate([blk.reshape(u, u) for blk in gate_blocks(w_hh, 4, 0)], axis=1)
    return CuDNNLSTMParams(k, r, xp.concatenate([b_ih, b_hh]))


# ----------------------------------------------------------------------------------------------
# GRU


def cudnn_gru_to_gru(params: Any) -> GRUParams:
    """Keras 2 ``CuDNNGRU`` weights -> canonical ``GRUParams`` for ``rnnjax.GRU(reset_after=True,
    recurrent_activation='sigmoid')``: kernels re-laid out per gate, ``bias.reshape(2, 3U)``."""
    k, r, b = _triplet(params, "params")
    _, u = _check_shapes(k, r, 3, "params")
    _check_bias(b, ((6 * u,),), "params")
    xp = _xp(k, r, b)
    bias = None if b is None else b.reshape(2, 3 * u)
    return GRUParams(_kernel_from_cudnn(k, 3, xp), _transpose_blocks(r, 3, xp), bias)


_RESET_AFTER_HINT = (
    " A bias of shape (3U,) is a GRU with reset_after=False, which applies the reset gate before the "
    "recurrent matmul (r * h) @ R_h; cuDNN and PyTorch apply it after (r * (h @ R_h + b_hn)), so no "
    "weights reproduce it. Use rnnjax.GRU(reset_after=True, recurrent_activation='sigmoid') weights."
)


def _gru_bias(b, u, what, xp, dtype):
    if b is None:
        return xp.zeros((2, 3 * u), dtype)
    if tuple(b.shape) == (3 * u,):
        raise ValueError(f"`{what}`: got a GRU bias of shape {tuple(b.shape)}.{_RESET_AFTER_HINT}")
    _check_bias(b, ((2, 3 * u),), what)
    return b


def gru_to_cudnn_gru(params: Any) -> CuDNNGRUParams:
    """Canonical ``GRU(reset_after=True)`` weights (bias ``(2, 3U)`` or None) -> Keras 2
    ``CuDNNGRU`` weights. A ``reset_after=False`` GRU (bias ``(3U,)``) is an error: it computes a
    different function that cuDNN cannot express."""
    k, r, b = _triplet(params, "params")
    _, u = _check_shapes(k, r, 3, "params")
    xp = _xp(k, r, b)
    b = _gru_bias(b, u, "params", xp, k.dtype)
    return CuDNNGRUParams(_kernel_to_cudnn(k, 3, xp), _transpose_blocks(r, 3, xp), b.reshape(6 * u))


def gru_to_torch(params, prefix: str = "") -> dict:
    """Canonical ``GRU(reset_after=True)`` weights -> ``nn.GRU`` state_dict entries: blocks reordered
    z, r, h -> r, z, n, ``weight_ih = kernel.T``, ``bias_ih = bias[0]``, ``bias_hh = bias[1]``."""
    k, r, b = _triplet(params, "params")
    _, u = _check_shapes(k, r, 3, "params")
    xp = _xp(k, r, b)
    b = _gru_bias(b, u, "params", xp, k.dtype)
    return _torch_dict(
        _reorder_cols(k, xp).T, _reorder_cols(r, xp).T, _reorder_rows(b[0], xp), _reorder_rows(b[1], xp), prefix
    )


def torch_to_gru(state_dict: Mapping, prefix: str = "") -> GRUParams:
    """``nn.GRU`` state_dict (layer 0) -> canonical ``GRUParams`` (``reset_after=True`` layout)."""
    w_ih, w_hh, b_ih, b_hh, xp = _torch_parts(state_dict, 3, prefix, "state_dict")
    bias = xp.stack([_reorder_rows(b_ih, xp), _reorder_rows(b_hh, xp)])
    return GRUParams(_reorder_rows(w_ih, xp).T, _reorder_rows(w_hh, xp).T, bias)


def cudnn_gru_to_torch(params, prefix: str = "") -> dict:
    """Keras 2 ``CuDNNGRU`` weights -> ``nn.GRU`` state_dict entries (exact; blocks z, r, h -> r, z, n)."""
    k, r, b = _triplet(params, "params")
    i, u = _check_shapes(k, r, 3, "params")
    _check_bias(b, ((6 * u,),), "params")
    xp = _xp(k, r, b)
    b = xp.zeros((6 * u,), k.dtype) if b is None else b
    kb, rb = gate_blocks(k, 3, 1), gate_blocks(r, 3, 1)
    w_ih = xp.concatenate([kb[j].reshape(u, i) for j in _GRU_TO_TORCH], axis=0)
    w_hh = xp.concatenate([rb[j].reshape(u, u) for j in _GRU_TO_TORCH], axis=0)
    return _torch_dict(w_ih, w_hh, _reorder_rows(b[: 3 * u], xp), _reorder_rows(b[3 * u :], xp), prefix)


def torch_to_cudnn_gru(state_dict: Mapping, prefix: str = "") -> CuDNNGRUParams:
    """``nn.GRU`` state_dict (layer 0) -> Keras 2 ``CuDNNGRU`` weights (exact)."""
    w_ih, w_hh, b_ih, b_hh, xp = _torch_parts(state_dict, 3, prefix, "state_dict")
    u, i = w_hh.shape[1], w_ih.shape[1]
    wb, hb = gate_blocks(w_ih, 3, 0), gate_blocks(w_hh, 3, 0)
    k = xp.concatenate([wb[j].reshape(i, u) for j in _GRU_TO_TORCH], axis=1)
    r = xp.concatenate([hb[j].reshape(u, u) for j in _GRU_TO_TORCH], axis=1)
    return CuDNNGRUParams(k, r, xp.concatenate([_reorder_rows(b_ih, xp), _reorder_rows(b_hh, xp)]))


__all__ = [
    "CuDNNLSTMParams",
    "CuDNNGRUParams",
    "cudnn_lstm_to_lstm",
    "lstm_to_cudnn_lstm",
    "lstm_to_torch",
    "torch_to_lstm",
    "cudnn_lstm_to_torch",
    "torch_to_cudnn_lstm",
    "cudnn_gru_to_gru",
    "gru_to_cudnn_gru",
    "gru_to_torch",
    "torch_to_gru",
    "cudnn_gru_to_torch",
    "torch_to_cudnn_gru",
]
