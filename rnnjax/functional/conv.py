"""Convolution helpers of the ConvLSTM core: the recurrent 'same' convolution with a fast
input cotangent, and the checks and output sizes of Keras's convolution arguments. Channels last.
"""

from __future__ import annotations

import numbers

import jax
import jax.export
import jax.numpy as jnp
from jax import lax

_DIMENSION_NUMBERS = {
    1: ("NWC", "WIO", "NWC"),
    2: ("NHWC", "HWIO", "NHWC"),
    3: ("NDHWC", "DHWIO", "NDHWC"),
}


def _same_pads(kernel_size) -> list:
    """The (low, high) zero padding of a stride-1 'same' convolution per spatial axis."""
    return [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel_size]


def _conv_padded(x, kernel, pads):
    r = kernel.ndim - 2
    return lax.conv_general_dilated(x, kernel, (1,) * r, pads, dimension_numbers=_DIMENSION_NUMBERS[r])


@jax.custom_vjp
def same_conv(x, kernel):
    """``x ⊛ kernel``: stride 1, 'same' zero padding, no dilation; ``x (N, *spatial, C)``,
    ``kernel (*k, C, O)``, channels last.

    Its input cotangent is the convolution of the output cotangent with the spatially flipped,
    transposed kernel (``(*k, O, C)``, padding ``(high, low)``) in the same layout: XLA's own
    transpose of the convolution, which the autodiff of ``lax.conv_general_dilated`` gives, is
    slower on the CPU inside the backward loop (``bench/README.md``, "ConvLSTM"). The kernel
    cotangent is autodiff's."""
    return _conv_padded(x, kernel, _same_pads(kernel.shape[:-2]))


def _same_conv_fwd(x, kernel):
    return same_conv(x, kernel), (x, kernel)


def _same_conv_bwd(res, dy):
    x, kernel = res
    r = kernel.ndim - 2
    flipped = jnp.swapaxes(jnp.flip(kernel, tuple(range(r))), -1, -2)
    dx = _conv_padded(dy, flipped, [(hi, lo) for lo, hi in _same_pads(kernel.shape[:r])])
    dk = jax.vjp(lambda k: _conv_padded(x, k, _same_pads(k.shape[:r])), kernel)[1](dy)[0]
    return dx, dk


same_conv.defvjp(_same_conv_fwd, _same_conv_bwd)


def normalize_tuple(value, rank: int, argument: str) -> tuple:
    """An int or a sequence of ``rank`` positive ints -> a tuple of ``rank`` ints."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (int(value),) * rank
    try:
        out = tuple(value)
    except TypeError:
        out = None
    if (
        out is None
        or len(out) != rank
        or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0 for v in out)
    ):
        raise ValueError(
            f"`{argument}`: expected a positive integer or a tuple of {rank} positive integers, got {value!r}."
        )
    return tuple(int(v) for v in out)


def shape_ints(shape) -> tuple:
    """``shape`` as Python ints; symbolic sizes (``jax.export.symbolic_shape``) stay symbolic."""
    return tuple(s if jax.export.is_symbolic_dim(s) else int(s) for s in shape)


def check_padding(padding) -> str:
    if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
        raise ValueError(f"`padding`: expected 'valid' or 'same' (any case), got {padding!r}.")
    return padding.lower()


def check_data_format(data_format) -> str:
    """``None`` -> ``'channels_last'`` (Keras's default image_data_format)."""
    if data_format is None:
        return "channels_last"
    if not isinstance(data_format, str) or data_format.lower() not in ("channels_last", "channels_first"):
        raise ValueError(f"`data_format`: expected 'channels_last', 'channels_first' or None, got {data_format!r}.")
    return data_format.lower()


def conv_output_length(length: int, kernel: int, padding: str, stride: int, dilation: int) -> int:
    """Keras/TF: 'same' -> ``ceil(L / s)``; 'valid' -> ``ceil((L - (k-1)d) / s)``."""
    if padding == "same":
        return -(-length // stride)
    return -(-(length - (kernel - 1) * dilation) // stride)
