"""The fused GPU path of ``CuDNNLSTM``: ``jax.experimental.rnn.lstm`` (cuDNN), and what feeds it.

Everything here except the one call into cuDNN is plain JAX and is tested on the CPU by swapping
the cuDNN kernel for ``jax.experimental.rnn.lstm_ref`` (a pure-JAX LSTM taking the same flat
weights): the weight packing, the sequence lengths, ``go_backwards`` and the Keras semantics of
padded steps.

* :func:`pack_lstm_weights`: Keras 2 ``CuDNNLSTM`` weights -> cuDNN's flat buffer, exactly as
  Keras 2's ``_canonical_to_params`` built it: ``concat(K_i, K_f, K_c, K_o, R_i, ..., R_o, bias)``,
  each block flattened row-major (its bytes *are* cuDNN's ``(U, I)``/``(U, U)`` matrix).
* :func:`fused_lstm`: runs it over right-padded sequences of lengths ``seq_lengths`` and returns
  the outputs with Keras's masking rules (``rnnjax.functional.scan_rnn``): after the end of a
  sequence the state is frozen and the output repeats the last one (0 with
  ``zero_output_for_mask``); with ``go_backwards`` each sequence is read from its last valid step
  back to step 0, and the outputs come in processing order (the padded steps first, as zeros).

Limits of ``jax.experimental.rnn.lstm`` (JAX's, not rnnjax's): float32 only, one direction per
call here, no ``jax.vmap`` rule, and ``seq_lengths`` is copied to the host on every call.

Verification status: the packing, the length handling and the padded-step semantics are tested
on the CPU against the scan path and PyTorch (through ``lstm_ref``), and ``grad``/``init`` of the
layer are traced through the real ``rnn_fwd``/``rnn_bwd`` primitives. The cuDNN kernel itself
runs only on a GPU: ``bench/gpu_check.py`` checks it against the scan path there (the record is in
``bench/README.md#gpu-the-cudnn-layers-on-an-nvidia-h200-2026-11-26``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from rnnjax.cudnn.convert import CuDNNLSTMParams, gate_blocks
from rnnjax.functional.lstm import LSTMState


def _gpu_rnn_module():
    try:
        from jax._src.lib import gpu_rnn
    except ImportError:  # pragma: no cover
        return None
    return gpu_rnn


def cudnn_lstm_unavailable_reason(x: jax.Array | None = None) -> str | None:
    """``None`` when ``jax.experimental.rnn.lstm`` can run ``x`` on cuDNN, else why not.

    ``x`` concrete: the platform of its devices; traced (under ``jit``) or None: JAX's default
    backend.
    """
    gpu_rnn = _gpu_rnn_module()
    if gpu_rnn is None or not hasattr(gpu_rnn, "compute_rnn_workspace_reserve_space_sizes"):
        return "this jaxlib has no cuDNN RNN kernels (no CUDA plugin loaded: jax[cuda12] on an NVIDIA GPU is needed)"
    platform = None
    if x is not None:
        try:
            platform = next(iter(x.devices())).platform
        except Exception:  # a tracer: the device is not known at trace time
            platform = None
    if platform is None:
        platform = jax.default_backend()
    if platform not in ("gpu", "cuda"):
        return f"the input lives on the {platform!r} platform, not on a CUDA GPU"
    return None


def pack_lstm_weights(params: CuDNNLSTMParams) -> jax.Array:
    """Keras 2 ``CuDNNLSTM`` weights -> the flat ``(4U*I + 4U*U + 8U,)`` buffer of
    ``jax.experimental.rnn.lstm`` (cuDNN's layout for one layer, one direction)."""
    k, r, b = params
    parts = [blk.reshape(-1) for blk in gate_blocks(k, 4, 1)] + [blk.reshape(-1) for blk in gate_blocks(r, 4, 1)]
    return jnp.concatenate(parts + [b.reshape(-1)])


def cudnn_kernel(
    x: jax.Array,
    h0: jax.Array,
    c0: jax.Array,
    weights: jax.Array,
    seq_lengths: jax.Array | None,
    input_size: int,
    hidden_size: int,
):
    """``jax.experimental.rnn.lstm`` for one layer, one direction (``h0``/``c0``: ``(1, B, U)``)."""
    from jax.experimental import rnn

    return rnn.lstm(x, h0, c0, weights, seq_lengths, input_size, hidden_size, 1, 0.0, False)


def reference_kernel(
    x: jax.Array,
    h0: jax.Array,
    c0: jax.Array,
    weights: jax.Array,
    seq_lengths: jax.Array | None,
    input_size: int,
    hidden_size: int,
):
    """The same contract as :func:`cudnn_kernel` through ``jax.experimental.rnn.lstm_ref`` (pure
    JAX, any platform): the stand-in that tests the GPU branch on the CPU."""
    from jax.experimental import rnn

    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, input_size, hidden_size, 1, False)
    return rnn.lstm_ref(x, h0, c0, w_ih, w_hh, b_ih, b_hh, seq_lengths, input_size, hidden_size, 1, 0.0, False)


def _gather_time(a, idx):
    """``out[b, t] = a[b, idx[b, t]]`` for ``a`` of shape ``(B, T, F)``."""
    return jnp.take_along_axis(a, idx[..., None], axis=1)


def fused_lstm(
    params: CuDNNLSTMParams,
    inputs: jax.Array,
    initial_state: LSTMState,
    seq_lengths: jax.Array | None = None,
    *,
    go_backwards: bool = False,
    return_sequences: bool = False,
    zero_output_for_mask: bool = False,
    kernel: Callable | None = None,
):
    """cuDNN's LSTM (``σ = sigmoid``, ``φ = tanh``, two biases) over ``inputs (B, T, I)``.

    ``seq_lengths (B,)`` int (None: every sequence is ``T`` long) marks right padding. Returns
    ``(output, LSTMState(h, c))`` with output ``(B, U)`` or ``(B, T, U)``, identical to
    :func:`rnnjax.functional.scan_rnn` on the canonical weights with the mask
    ``t < seq_lengths``. ``kernel``: :func:`cudnn_kernel` (None, the GPU kernel) or
    :func:`reference_kernel`.
    """
    kernel = cudnn_kernel if kernel is None else kernel
    b, steps, i = inputs.shape
    u = params.recurrent_kernel.shape[0]
    weights = pack_lstm_weights(params)
    h0, c0 = initial_state
    t = jnp.arange(steps, dtype=jnp.int32)[None, :]
    if seq_lengths is None:
        lengths = jnp.full((b,), steps, jnp.int32)
        x = inputs[:, ::-1] if go_backwards else inputs
    else:
        lengths = jnp.clip(jnp.asarray(seq_lengths).astype(jnp.int32), 0, steps)
        x = inputs
        if go_backwards:  # reverse each sequence inside its own length, padding stays at the end
            x = _gather_time(inputs, jnp.where(t < lengths[:, None], lengths[:, None] - 1 - t, t))
    run_lengths = jnp.maximum(lengths, 1)  # cuDNN needs >= 1 step; empty rows are fixed below
    y, h_n, c_n = kernel(x, h0[None], c0[None], weights, run_lengths, i, u)
    h_n, c_n = h_n[0], c_n[0]
    empty = (lengths == 0)[:, None]
    h = jnp.where(empty, h0, h_n)
    c = jnp.where(empty, c0, c_n)
    state = LSTMState(h, c)
    last = jnp.where(empty, jnp.zeros_like(h_n), h_n)
    if seq_lengths is None:
        return (y if return_sequences else last), state
    if not return_sequences:
        if zero_output_for_mask and not go_backwards:
            last = jnp.where((lengths < steps)[:, None], jnp.zeros_like(last), last)
        return last, state
    valid = t < lengths[:, None]
    if go_backwards:
        # processing step p reads time T-1-p: padded (zero output) while p < T - len
        pad = steps - lengths[:, None]
        y = _gather_time(y, jnp.clip(t - pad, 0, steps - 1))
        return jnp.where((t >= pad)[..., None], y, 0.0).astype(y.dtype), state
    fill = jnp.zeros_like(last) if zero_output_for_mask else last
    return jnp.where(valid[..., None], y, fill[:, None, :]), state


__all__ = ["cudnn_lstm_unavailable_reason", "pack_lstm_weights", "fused_lstm", "cudnn_kernel", "reference_kernel"]
