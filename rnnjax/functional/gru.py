"""GRU core (Keras layout, gate order z, r, h), both variants (notation:
:mod:`rnnjax.functional.protocol`).

Parameters ``GRUParams``: ``kernel W (I, 3U)``, ``recurrent_kernel R = [R_z, R_r, R_h] (U, 3U)``,
``bias`` ``b (3U,)`` for ``reset_after=False`` or ``(2, 3U)`` for ``reset_after=True`` (row 0 the
input bias ``b``, row 1 the recurrent bias ``b_rec``), or ``None``. State ``GRUState(h)``::

    xz, xr, xh = x_t @ W + b                     # GRUCore.project_parts (all steps at once)

    reset_after=False (Keras 2's default)        # GRUCore._reset_before_step
      z  = σ(xz + h_{t-1} @ R_z)
      r  = σ(xr + h_{t-1} @ R_r)
      ĥ  = φ(xh + (r ⊙ h_{t-1}) @ R_h)
    reset_after=True (Keras 3's default, cuDNN's GRU)   # GRUCore.pointwise
      az, ar, ah = h_{t-1} @ R + b_rec
      z  = σ(xz + az);  r = σ(xr + ar)
      ĥ  = φ(xh + r ⊙ ah)

    h_t = z ⊙ h_{t-1} + (1 - z) ⊙ ĥ              # = output y_t
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from rnnjax.functional import activations
from rnnjax.functional.core import check_core_config, check_units, gate_matmul, gate_matmul_parts, init_weight
from rnnjax.functional.protocol import InputAdditiveStep, RecurrentMatmulStep, per_gate_masks, shared_mask


class GRUParams(NamedTuple):
    """GRU weights in Keras layout, gates in the order z, r, h: ``kernel (input_dim, 3 units)``,
    ``recurrent_kernel (units, 3 units)``, ``bias (3 units,)``, or ``(2, 3 units)`` (input and
    recurrent biases) with ``reset_after=True``; ``None`` without ``use_bias``."""

    kernel: jax.Array
    recurrent_kernel: jax.Array
    bias: jax.Array | None


class GRUState(NamedTuple):
    """The GRU state: ``h (*batch, units)``, also the output."""

    h: jax.Array


def _gate_blocks(recurrent_kernel: Any) -> tuple[jax.Array, ...]:
    """``(R_z, R_r, R_h)``: the recurrent kernel's three gate blocks (kept if already split)."""
    if isinstance(recurrent_kernel, tuple):
        return recurrent_kernel
    return tuple(jnp.split(recurrent_kernel, 3, axis=-1))


@dataclasses.dataclass(frozen=True)
class GRUCore:
    """The GRU step as pure functions (see the module docstring for the equations)."""

    units: int
    activation: Any = "tanh"
    recurrent_activation: Any = "hard_sigmoid"
    use_bias: bool = True
    kernel_initializer: Any = "glorot_uniform"
    recurrent_initializer: Any = "orthogonal"
    bias_initializer: Any = "zeros"
    implementation: int = 1
    reset_after: bool = False

    params_class = GRUParams
    gates = 3
    num_feature_axes = 1
    # Inference keeps the bias in the projection (see core.loop_bias): in the loop, the GRU's
    # three-part step is no faster (bench/README.md, "The bias in the loop").
    bias_in_loop = False

    def __post_init__(self):
        check_units(self.units)
        check_core_config(self)

    @property
    def state_size(self) -> tuple:
        return (self.units,)

    @property
    def output_size(self) -> int:
        return self.units

    def init(self, key: jax.Array, input_dim: int, dtype: DTypeLike = jnp.float32) -> GRUParams:
        check_units(input_dim, "input_dim")
        u = self.units
        k1, k2, k3 = jax.random.split(key, 3)
        bias = None
        if self.use_bias:
            shape = (2, 3 * u) if self.reset_after else (3 * u,)
            bias = init_weight(self.bias_initializer, k3, shape, dtype, "bias_initializer")
        return GRUParams(
            init_weight(self.kernel_initializer, k1, (input_dim, 3 * u), dtype, "kernel_initializer"),
            init_weight(self.recurrent_initializer, k2, (u, 3 * u), dtype, "recurrent_initializer"),
            bias,
        )

    def initial_state(self, batch_shape: tuple = (), dtype: DTypeLike = jnp.float32) -> GRUState:
        return GRUState(jnp.zeros(tuple(batch_shape) + (self.units,), dtype))

    @property
    def dropout_mask_count(self) -> int:
        """Dropout masks per call: one per gate with ``implementation=1`` (Keras), else one."""
        return 1 if self.implementation == 2 else self.gates

    def input_bias(self, params: GRUParams) -> jax.Array | None:
        """``b``, added to ``x @ W``: the bias, or row 0 of the reset-after ``(2, 3U)`` bias (None
        without a bias)."""
        if params.bias is not None and self.reset_after:
            return params.bias[0]
        return params.bias

    def recurrent_bias(self, params: GRUParams) -> jax.Array | None:
        """``b_rec``, added to ``h @ R``: row 1 of the reset-after bias (None without one, and for
        ``reset_after=False``)."""
        return params.bias[1] if params.bias is not None and self.reset_after else None

    def project(self, params: GRUParams, x: jax.Array, dropout_mask: jax.Array | None = None) -> jax.Array:
        return gate_matmul(x, params.kernel, dropout_mask, 3, self.input_bias(params))

    def loop_params(self, params: GRUParams) -> GRUParams:
        """``params`` as :meth:`step` takes them inside a loop, prepared once before it: for
        ``reset_after=False`` the recurrent kernel as its three gate blocks. (Sliced inside the
        loop, XLA copies the blocks at every step and, in the backward pass, pads their
        gradients back to ``(U, 3U)`` at every step.)"""
        if self.reset_after or isinstance(params.recurrent_kernel, tuple):
            return params
        # the loop form holds the gate blocks where the field's type says one array (step() takes either)
        return params._replace(recurrent_kernel=cast(Any, _gate_blocks(params.recurrent_kernel)))

    def step(
        self, params: GRUParams, state: GRUState, xp_t: Any, recurrent_dropout_mask: jax.Array | None = None
    ) -> tuple[GRUState, jax.Array]:
        """One step; ``xp_t`` is the projected input ``(..., 3U)`` or its parts ``(xz, xr, xh)``
        (see :meth:`split_inputs`); ``params`` as given or from :meth:`loop_params`."""
        h = state.h
        rk = params.recurrent_kernel
        masks = recurrent_dropout_mask
        if self.reset_after:
            return self.pointwise(self.recurrent_bias(params), xp_t, gate_matmul(h, rk, masks, 3), state)
        return self._reset_before_step(_gate_blocks(rk), state, xp_t, masks)[0]

    def _reset_before_step(self, kernels, state: GRUState, xp_t, masks):
        """The reset-before step (``reset_after=False``) on the kernel blocks ``(R_z, R_r, R_h)``:
        ``((state, y), lhs)`` with ``lhs = (h ⊙ m_z, h ⊙ m_r, r ⊙ h ⊙ m_h)``, the left operands of
        its three matmuls."""
        h = state.h
        rk_z, rk_r, rk_h = kernels
        if not per_gate_masks(masks):
            h_z = h_r = h_h = h if masks is None else h * masks[0]
        else:
            h_z, h_r, h_h = h * masks[0], h * masks[1], h * masks[2]
        xz, xr, xh = self.split_inputs(xp_t)
        sigma = activations.get(self.recurrent_activation)
        z = sigma(xz + h_z @ rk_z)
        r = sigma(xr + h_r @ rk_r)
        rh = r * h_h
        hh = activations.get(self.activation)(xh + rh @ rk_h)
        h = z * h + (1.0 - z) * hh
        return (GRUState(h), h), (h_z, h_r, rh)

    def input_additive_step(
        self, params: GRUParams, recurrent_dropout_mask: jax.Array | None = None
    ) -> InputAdditiveStep | None:
        """The step as a :class:`~rnnjax.functional.protocol.InputAdditiveStep` where it has no
        RecurrentMatmulStep form: the reset-before step (its three matmuls each add to one gate's
        projected input), and the reset-after step with one recurrent dropout mask per gate (the
        candidate's matmul through a ghost part); None otherwise. Its kernel gradients are then
        formed after the loop (``bench/README.md``, "Kernel gradients after the loop")."""
        masks = recurrent_dropout_mask
        if not self.reset_after:
            return InputAdditiveStep(
                _gate_blocks(params.recurrent_kernel),
                lambda kernels, state, xp_t: self._reset_before_step(kernels, state, xp_t, masks),
            )
        if not per_gate_masks(masks):
            return None  # the RecurrentMatmulStep covers it
        # reset_after with one recurrent mask per gate: three matmuls; the candidate's, multiplied
        # by r, adds to a ghost part (see InputAdditiveStep.adds_to). The recurrent bias blocks
        # (b_z, b_r, b_h) are kernels too, of left operand 1, adding to the same parts: their
        # gradients are then sums after the loop, not a reduction over the batch at every step
        # (which, with the batch sharded over a device mesh, is a collective at every step).
        kernels = tuple(jnp.split(params.recurrent_kernel, 3, axis=-1))
        rec_bias = self.recurrent_bias(params)
        n_bias = 0 if rec_bias is None else 3
        if rec_bias is not None:
            kernels += tuple(b[None] for b in jnp.split(rec_bias, 3))

        def step(kernels, state, xp_t):
            xz, xr, xh, ghost = xp_t
            lhs = tuple(state.h * masks[k] for k in range(3))
            a = [lhs[0] @ kernels[0], lhs[1] @ kernels[1], ghost + lhs[2] @ kernels[2]]
            if n_bias:  # 1 @ b_k, the bias of a_t's block k
                lhs += (jnp.ones(state.h.shape[:-1] + (1,), state.h.dtype),) * 3
                a = [a_k + b_k for a_k, b_k in zip(a, kernels[3:])]
            return self.pointwise(None, (xz, xr, xh), tuple(a), state), lhs

        return InputAdditiveStep(kernels, step, adds_to=(0, 1, 3) * (1 + n_bias // 3))

    def project_parts(self, params: GRUParams, x: jax.Array, dropout_mask: jax.Array | None = None) -> tuple:
        """:meth:`project` as its three gate blocks ``(xz, xr, xh)``, each from its own matmul (for
        a whole sequence this is faster than splitting ``(..., 3U)`` afterwards: no copies)."""
        return gate_matmul_parts(x, params.kernel, dropout_mask, 3, self.input_bias(params))

    def split_inputs(self, xp: Any) -> tuple:
        """``(..., 3U) -> (xz, xr, xh)``. Splitting the projected inputs of all steps once, before
        the loop, is faster on the CPU than slicing each step's input inside it."""
        return xp if isinstance(xp, tuple) else tuple(jnp.split(xp, 3, axis=-1))

    def pointwise(self, rec_bias: jax.Array | None, xp_t: Any, a_t: Any, state: GRUState) -> tuple[GRUState, jax.Array]:
        """The reset-after GRU (``reset_after=True``) after its recurrent matmul ``a_t = h_{t-1} @ R``;
        ``rec_bias``: ``b_rec``, added to ``a_t``."""
        sigma, phi = activations.get(self.recurrent_activation), activations.get(self.activation)
        (xz, xr, xh), (az, ar, ah) = self.split_inputs(xp_t), self.split_inputs(a_t)
        if rec_bias is not None:
            bz, br, bh = self.split_inputs(rec_bias)
            az, ar, ah = az + bz, ar + br, ah + bh
        z = sigma(xz + az)
        r = sigma(xr + ar)
        hh = phi(xh + r * ah)
        h = z * state.h + (1.0 - z) * hh
        return GRUState(h), h

    def matmul_step(
        self, params: GRUParams, recurrent_dropout_mask: jax.Array | None = None
    ) -> RecurrentMatmulStep | None:
        """The reset-after step as a :class:`~rnnjax.functional.protocol.RecurrentMatmulStep`; None
        for ``reset_after=False`` (its candidate needs a second matmul, on ``r ⊙ h``) and for
        per-gate recurrent dropout masks."""
        if not self.reset_after or per_gate_masks(recurrent_dropout_mask):
            return None
        return RecurrentMatmulStep(
            params.recurrent_kernel,
            self.pointwise,
            self.recurrent_bias(params),
            shared_mask(recurrent_dropout_mask),
            part_sizes=(self.units,) * 3,
            pointwise_params_is_recurrent_bias=True,
            reads_only_sum=(True, True, False),
        )

    def __call__(self, params: GRUParams, state: GRUState, x_t):
        return self.step(params, state, self.project(params, x_t))
