"""Convolutional LSTM core (Keras layout, gate order i, f, c, o), for 1, 2 or 3 spatial dims
(notation: :mod:`rnnjax.functional.protocol`).

Everything here is **channels_last**: a step input is ``(*batch, *spatial, C)``, a state
``(*batch, *spatial', F)`` (``spatial'`` = the input convolution's output shape).

Parameters ``ConvLSTMParams``: ``kernel W kernel_size + (C, 4F)``, ``recurrent_kernel R
kernel_size + (F, 4F)``, ``bias b (4F,)`` or ``None``. With ``∗`` the input convolution (the
core's strides, padding and dilation) and ``⊛`` the recurrent convolution (stride 1, padding
'same', no dilation)::

    xp_t          = x_t ∗ W + b                  # ConvLSTMCore.project (one convolution, all steps)
    z_t           = xp_t + h_{t-1} ⊛ R           # ConvLSTMCore.step: (*batch, *spatial', 4F)
    i, f, c̃, o    = σ(z_i), σ(z_f), φ(z_c), σ(z_o)
    c_t           = f ⊙ c_{t-1} + i ⊙ c̃          # ConvLSTMCore.pointwise (the LSTM's, per pixel)
    h_t           = o ⊙ φ(c_t)                   # = output y_t

``project`` takes any number of leading axes (time included) and folds them into the
convolution's batch axis. :func:`rnnjax.functional.rnn` runs a core over a sequence
``(*batch, T, *spatial, C)``.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, NamedTuple, cast

import jax
import jax.export
import jax.numpy as jnp
from jax import lax
from jax.typing import DTypeLike

from rnnjax.functional.conv import (
    _DIMENSION_NUMBERS,
    _same_pads,
    check_padding,
    conv_output_length,
    normalize_tuple,
    same_conv,
    shape_ints,
)
from rnnjax.functional.core import check_core_config, check_units, init_weight, lstm_bias
from rnnjax.functional.lstm import LSTMCore, LSTMState
from rnnjax.functional.mesh import partitioned
from rnnjax.functional.protocol import (
    InputAdditiveStep,
    RecurrentMatmulStep,
    per_gate_masks,
    shared_mask,
    with_pointwise_vjp,
)


class ConvLSTMParams(NamedTuple):
    """ConvLSTM weights in Keras layout, gates in the order i, f, c, o: ``kernel (*kernel_size,
    channels, 4 filters)``, ``recurrent_kernel (*kernel_size, filters, 4 filters)``, ``bias (4 filters,)``
    (``None`` without ``use_bias``)."""

    kernel: jax.Array
    recurrent_kernel: jax.Array
    bias: jax.Array | None


class ConvLSTMState(NamedTuple):
    """The ConvLSTM state: ``h`` (the output) and ``c``, each ``(*batch, *output_spatial, filters)``."""

    h: jax.Array
    c: jax.Array


@dataclasses.dataclass(frozen=True)
class ConvLSTMCore:
    """The ConvLSTM step as pure functions (see the module docstring for the equations).

    ``kernel_size``, ``strides`` and ``dilation_rate`` take an int or a tuple of ``rank`` ints
    and are stored as tuples; ``padding`` is 'valid' or 'same' in any case. ``strides`` > 1
    together with ``dilation_rate`` > 1 is an error (as in Keras).
    """

    filters: int
    kernel_size: Any
    rank: int = 2
    strides: Any = 1
    padding: str = "valid"
    dilation_rate: Any = 1
    activation: Any = "tanh"
    recurrent_activation: Any = "hard_sigmoid"
    use_bias: bool = True
    kernel_initializer: Any = "glorot_uniform"
    recurrent_initializer: Any = "orthogonal"
    bias_initializer: Any = "zeros"
    unit_forget_bias: bool = True

    params_class = ConvLSTMParams
    gates = 4
    dropout_mask_count = 4  # one mask per gate, as Keras's ConvLSTM cells draw

    @property
    def num_feature_axes(self) -> int:
        """The spatial axes and the channels of a step's input."""
        return self.rank + 1

    def __post_init__(self):
        check_units(self.filters, "filters")
        if self.rank not in _DIMENSION_NUMBERS:
            raise ValueError(f"`rank`: expected 1, 2 or 3 spatial dimensions, got {self.rank!r}.")
        set_ = lambda n, v: object.__setattr__(self, n, v)  # noqa: E731 (frozen dataclass)
        set_("kernel_size", normalize_tuple(self.kernel_size, self.rank, "kernel_size"))
        set_("strides", normalize_tuple(self.strides, self.rank, "strides"))
        set_("dilation_rate", normalize_tuple(self.dilation_rate, self.rank, "dilation_rate"))
        set_("padding", check_padding(self.padding))
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(
                f"`strides`/`dilation_rate`: strides > 1 is incompatible with dilation_rate > 1; got "
                f"strides={self.strides} and dilation_rate={self.dilation_rate}. Use strides=1 or dilation_rate=1."
            )
        check_core_config(self)

    @property
    def state_size(self) -> tuple:
        """Channels of each state (the spatial shape depends on the input)."""
        return (self.filters, self.filters)

    @property
    def output_size(self) -> int:
        return self.filters

    def output_spatial_shape(self, spatial_shape: tuple) -> tuple:
        """Spatial shape of the outputs and states for inputs of spatial shape ``spatial_shape``."""
        spatial_shape = shape_ints(spatial_shape)
        if self.padding == "same" and any(
            jax.export.is_symbolic_dim(n) and st > 1 for n, st in zip(spatial_shape, self.strides)
        ):
            # 'same' padding of a strided convolution depends on each size's remainder
            raise ValueError(
                f"`strides`: padding='same' with strides {self.strides} needs static spatial sizes "
                f"(its padding depends on each size), got the symbolic spatial shape {spatial_shape}."
            )
        if len(spatial_shape) != self.rank:
            raise ValueError(f"`inputs`: expected {self.rank} spatial dimension(s), got spatial shape {spatial_shape}.")
        out = tuple(
            conv_output_length(n, k, self.padding, s, d)
            for n, k, s, d in zip(spatial_shape, self.kernel_size, self.strides, self.dilation_rate)
        )
        try:
            fits = all(n >= 1 for n in out)
        except jax.errors.InconclusiveDimensionOperation:
            raise ValueError(
                f"`inputs`: with padding='valid', a kernel of size {self.kernel_size} (dilation_rate "
                f"{self.dilation_rate}) may not fit the symbolic spatial shape {spatial_shape} (output shape "
                f"{out}); state the smallest size in the symbolic shape, e.g. jax.export.symbolic_shape(..., "
                f"constraints=['h >= {self.kernel_size[0]}']), or use padding='same'."
            ) from None
        if not fits:
            raise ValueError(
                f"`kernel_size`: a kernel of size {self.kernel_size} with dilation_rate {self.dilation_rate} does not "
                f"fit inputs of spatial shape {spatial_shape} with padding='valid' (output shape would be {out}); "
                "use smaller kernels, larger inputs or padding='same'."
            )
        return out

    def init(self, key: jax.Array, input_dim: int, dtype: DTypeLike = jnp.float32) -> ConvLSTMParams:
        check_units(input_dim, "input_dim")
        f = self.filters
        k1, k2, k3 = jax.random.split(key, 3)
        kernel = init_weight(
            self.kernel_initializer, k1, self.kernel_size + (input_dim, 4 * f), dtype, "kernel_initializer"
        )
        recurrent = init_weight(
            self.recurrent_initializer, k2, self.kernel_size + (f, 4 * f), dtype, "recurrent_initializer"
        )
        bias = lstm_bias(self.bias_initializer, k3, f, dtype, self.unit_forget_bias) if self.use_bias else None
        return ConvLSTMParams(kernel, recurrent, bias)

    def initial_state(
        self, batch_shape: tuple = (), dtype: DTypeLike = jnp.float32, input_spatial_shape: tuple | None = None
    ) -> ConvLSTMState:
        """Zero states ``(*batch_shape, *output_spatial_shape(input_spatial_shape), F)``."""
        if input_spatial_shape is None:
            raise ValueError(
                "`input_spatial_shape`: ConvLSTMCore.initial_state needs the inputs' spatial shape "
                f"({self.rank} ints) to size the states."
            )
        shape = tuple(batch_shape) + self.output_spatial_shape(input_spatial_shape) + (self.filters,)
        z = jnp.zeros(shape, dtype)
        return ConvLSTMState(z, z)

    def _conv(self, x, kernel, strides, padding, dilation, time_first=False):
        """One convolution over every leading axis of ``x``, folded into the convolution's batch.

        ``time_first``: the leading axes are ``(T, *batch)``; on a device mesh they are folded
        batch-major (time moved inside), so that a sharded batch axis stays the major factor of
        the folded axis and every device convolves its own rows (folding time-major makes XLA
        gather the whole input onto every device; on one device it saves two transposes)."""
        r = self.rank
        n_lead = x.ndim - r - 1
        move = time_first and n_lead > 1 and partitioned(x)
        if move:
            x = jnp.moveaxis(x, 0, n_lead - 1)
        lead = x.shape[:n_lead]
        flat = x.reshape((-1,) + x.shape[n_lead:])
        y = lax.conv_general_dilated(
            flat,
            kernel.astype(flat.dtype) if kernel.dtype != flat.dtype else kernel,
            window_strides=strides,
            padding=padding.upper(),
            rhs_dilation=dilation,
            dimension_numbers=_DIMENSION_NUMBERS[r],
        )
        y = y.reshape(lead + y.shape[1:])
        return jnp.moveaxis(y, n_lead - 1, 0) if move else y

    def _gate_conv(self, x, kernel, masks, strides, padding, dilation, time_first=False):
        """``x ∗ kernel`` with optional dropout masks on ``x``: ``None``, ``(1, *batch, *spatial, C)``
        or ``(4, ...)`` (gate g's output channels see ``x * masks[g]``, Keras's per-gate masks:
        one convolution per gate, ``(x * masks[g]) ⊛ kernel[..., g-th block]``, concatenated).

        Not one grouped convolution (``feature_group_count=4``) over the stacked masked copies,
        the same function: on the CPU its kernel gradient is much slower than the four plain
        ones' (``bench/README.md``, "ConvLSTM")."""
        if not per_gate_masks(masks):
            x = x if masks is None else x * shared_mask(masks)
            return self._conv(x, kernel, strides, padding, dilation, time_first)
        if masks.shape[0] != self.gates:
            raise ValueError(f"dropout masks: expected 1 or {self.gates} masks, got {masks.shape[0]}.")
        blocks = jnp.split(kernel, self.gates, axis=-1)
        return jnp.concatenate(
            [self._conv(x * masks[g], k, strides, padding, dilation, time_first) for g, k in enumerate(blocks)], axis=-1
        )

    def check_inputs(self, params: ConvLSTMParams, inputs: jax.Array) -> None:
        """Checks a sequence ``(*batch, T, *spatial, C)`` against the parameters (for ``rnn``)."""
        r = self.rank
        if inputs.ndim < r + 2:
            raise ValueError(
                f"`inputs`: expected (*batch, time, {r} spatial dims, channels), got shape {inputs.shape}."
            )
        self._check_x(params, inputs, "inputs")

    def _check_x(self, params, x, what):
        r = self.rank
        if x.ndim < r + 1:
            raise ValueError(
                f"`{what}`: expected (..., {r} spatial dims, channels) "
                f"with at least {r + 1} dimensions, got shape {x.shape}."
            )
        if x.shape[-1] != params.kernel.shape[-2]:
            raise ValueError(
                f"`{what}`: {x.shape[-1]} channels but the parameters were built for {params.kernel.shape[-2]} "
                f"(kernel shape {tuple(params.kernel.shape)})."
            )
        self.output_spatial_shape(x.shape[-(r + 1) : -1])

    def project(self, params: ConvLSTMParams, x: jax.Array, dropout_mask: jax.Array | None = None) -> jax.Array:
        """``x ∗ kernel + bias`` for ``x`` of shape ``(..., *spatial, C)`` (any leading axes, e.g.
        the driver's ``(T, *batch)``: folded into one convolution, the first axis innermost) ->
        ``(..., *spatial', 4F)``."""
        self._check_x(params, x, "inputs")
        z = self._gate_conv(
            x, params.kernel, dropout_mask, self.strides, self.padding, self.dilation_rate, time_first=True
        )
        if params.bias is not None:
            z = z + params.bias
        return z

    def pointwise(
        self, pointwise_params: Any, xp_t: jax.Array, a_t: jax.Array, state: ConvLSTMState
    ) -> tuple[ConvLSTMState, jax.Array]:
        """The LSTM gate math after the recurrent convolution ``a_t = h_{t-1} ⊛ R`` (the same
        element-wise function as :meth:`LSTMCore.pointwise`, per pixel)."""
        # ConvLSTMState has LSTMState's fields (h, c): the same element-wise function reads it
        (h, c), y = self._pixel_lstm().pointwise(pointwise_params, xp_t, a_t, cast(LSTMState, state))
        return ConvLSTMState(h, c), y

    def step(
        self, params: ConvLSTMParams, state: ConvLSTMState, xp_t: Any, recurrent_dropout_mask: jax.Array | None = None
    ) -> tuple[ConvLSTMState, jax.Array]:
        ones = (1,) * self.rank
        a = self._gate_conv(state.h, params.recurrent_kernel, recurrent_dropout_mask, ones, "same", ones)
        return self.pointwise(None, xp_t, a, state)

    def recurrent_patches(self, h: jax.Array) -> jax.Array:
        """``h (..., *spatial, F) -> (..., *spatial, prod(kernel_size) * F)``: the recurrent
        convolution's input windows (stride 1, 'same'), offset-major (row ``o * F + c`` for the
        kernel offset ``o`` in row-major order), so that ``h ⊛ recurrent_kernel =
        patches(h) @ recurrent_kernel.reshape(-1, 4F)``.

        Built as the zero-padded ``h``'s shifted windows, concatenated: pure data movement
        (``lax.conv_general_dilated_patches`` computes the same as a slower convolution with an
        identity kernel: ``bench/README.md``, "ConvLSTM")."""
        r = self.rank
        spatial = h.shape[-(r + 1) : -1]
        pads = _same_pads(self.kernel_size)
        hp = jnp.pad(h, [(0, 0)] * (h.ndim - r - 1) + pads + [(0, 0)])
        windows = [
            hp[(Ellipsis,) + tuple(slice(o, o + n) for o, n in zip(offset, spatial)) + (slice(None),)]
            for offset in itertools.product(*(range(k) for k in self.kernel_size))
        ]
        return jnp.concatenate(windows, axis=-1)

    def matmul_step(
        self, params: ConvLSTMParams, recurrent_dropout_mask: jax.Array | None = None
    ) -> RecurrentMatmulStep | None:
        """The step as a :class:`~rnnjax.functional.protocol.RecurrentMatmulStep`: the recurrent
        convolution as ``patches(h) @ R`` (its weight gradient then is one matmul after the loop;
        XLA's kernel-gradient convolution inside a loop is slow on the CPU, jax-ml/jax#12868).
        None with per-gate recurrent dropout masks."""
        if per_gate_masks(recurrent_dropout_mask):
            return None
        flat, recurrent_conv = self._flat_recurrent(params)
        # the element-wise backward pass by hand: the LSTM's, per pixel
        return RecurrentMatmulStep(
            flat,
            self.pointwise,
            None,
            shared_mask(recurrent_dropout_mask),
            self.recurrent_patches,
            reads_only_sum=True,
            apply_recurrent_kernel=recurrent_conv,
            **self._pixel_lstm().backward_fields(),
        )

    def _pixel_lstm(self) -> LSTMCore:
        """The LSTM of each pixel: :meth:`pointwise` is its gate math."""
        return LSTMCore(self.filters, self.activation, self.recurrent_activation)

    def _flat_recurrent(self, params: ConvLSTMParams):
        """The recurrent kernel flattened for ``patches(h) @ flat`` (offset-major rows, see
        :meth:`recurrent_patches`), and ``recurrent_conv(h, flat_block)``: the same map as
        ``patches(h) @ flat_block`` (any block of the columns), as a convolution whose backward
        pass is a convolution too (:func:`same_conv`)."""
        rk = params.recurrent_kernel
        flat = rk.reshape(-1, rk.shape[-1])

        def recurrent_conv(h, flat_kernel):
            kernel = flat_kernel.reshape(rk.shape[:-1] + flat_kernel.shape[-1:])
            r = self.rank
            lead = h.shape[: -(r + 1)]
            y = same_conv(h.reshape((-1,) + h.shape[-(r + 1) :]), kernel.astype(h.dtype))
            return y.reshape(lead + y.shape[1:])

        return flat, recurrent_conv

    def input_additive_step(
        self, params: ConvLSTMParams, recurrent_dropout_mask: jax.Array | None = None
    ) -> InputAdditiveStep | None:
        """With one recurrent dropout mask per gate (what the ConvLSTM layers draw): the step as an
        :class:`~rnnjax.functional.protocol.InputAdditiveStep` (four recurrent convolutions, each
        adding to one gate's part of the projected input), so that the kernel gradients are
        ``patches(h ⊙ m_g)ᵀ @ dz_g`` after the loop instead of XLA's kernel-gradient convolution
        inside it (jax-ml/jax#12868). None otherwise (the RecurrentMatmulStep covers it)."""
        m = recurrent_dropout_mask
        if not per_gate_masks(m):
            return None
        flat, recurrent_conv = self._flat_recurrent(params)
        # the element-wise backward pass by hand, as in matmul_step
        pointwise = with_pointwise_vjp(self.pointwise, self._pixel_lstm().backward_fields()["pointwise_vjp"])

        def step(kernels, state, xp_t):
            lhs = tuple(state.h * m[g] for g in range(4))
            a = jnp.concatenate([recurrent_conv(v, k) for v, k in zip(lhs, kernels)], axis=-1)
            return pointwise(None, xp_t, a, state), lhs

        return InputAdditiveStep(tuple(jnp.split(flat, 4, axis=-1)), step, kernel_lhs=self.recurrent_patches)

    def __call__(self, params: ConvLSTMParams, state: ConvLSTMState, x_t):
        return self.step(params, state, self.project(params, x_t))


def conv_lstm(
    core: ConvLSTMCore, params: ConvLSTMParams, inputs: jax.Array, **options
) -> tuple[jax.Array, ConvLSTMState]:
    """:func:`rnnjax.functional.rnn` for a :class:`ConvLSTMCore` (a thin alias, kept for the
    ConvLSTM shapes it documents): ``inputs (*batch, T, *spatial, C)`` (channels_last) ->
    ``(output, ConvLSTMState)``, output ``(*batch, *spatial', F)`` or, with ``return_sequences``,
    ``(*batch, T, *spatial', F)``; ``dropout_mask``/``recurrent_dropout_mask``: ``(1 or 4, *batch,
    *spatial, C)``/``(1 or 4, *batch, *spatial', F)``. The options are :func:`rnn`'s."""
    from rnnjax.functional.sequence import rnn

    if not isinstance(core, ConvLSTMCore):
        raise TypeError(f"`core`: conv_lstm runs a ConvLSTMCore, got {type(core).__name__}; use rnnjax.functional.rnn.")
    return rnn(core, params, inputs, **options)
