"""LSTM core (Keras layout, gate order i, f, c, o; notation: :mod:`rnnjax.functional.protocol`).

Parameters ``LSTMParams``: ``kernel W (I, 4U)``, ``recurrent_kernel R (U, 4U)``, ``bias b (4U,)``
or ``None``. State ``LSTMState(h, c)``, each ``(*batch, U)``::

    xp_t          = x_t @ W + b                  # LSTMCore.project (all steps at once)
    z_t           = xp_t + h_{t-1} @ R           # LSTMCore.step: (*batch, 4U)
    i, f, c̃, o    = σ(z_i), σ(z_f), φ(z_c), σ(z_o)   # LSTMCore.gate_values (one pass over 4U)
    c_t           = f ⊙ c_{t-1} + i ⊙ c̃          # LSTMCore.pointwise
    h_t           = o ⊙ φ(c_t)                   # = output y_t

The backward pass of ``pointwise`` by hand is :meth:`LSTMCore.pointwise_vjp`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from rnnjax.functional import activations
from rnnjax.functional.core import check_core_config, check_units, gate_matmul, init_weight, lstm_bias
from rnnjax.functional.protocol import (
    InputAdditiveStep,
    RecurrentMatmulStep,
    per_gate_masks,
    shared_mask,
    with_pointwise_vjp,
)


class LSTMParams(NamedTuple):
    """LSTM weights in Keras layout, gates in the order i, f, c, o: ``kernel (input_dim, 4 units)``,
    ``recurrent_kernel (units, 4 units)``, ``bias (4 units,)`` (``None`` without ``use_bias``)."""

    kernel: jax.Array
    recurrent_kernel: jax.Array
    bias: jax.Array | None


class LSTMState(NamedTuple):
    """The LSTM state: ``h`` (the output) and ``c`` (the carry), each ``(*batch, units)``."""

    h: jax.Array
    c: jax.Array


@dataclasses.dataclass(frozen=True)
class LSTMCore:
    """The LSTM step as pure functions (see the module docstring for the equations)."""

    units: int
    activation: Any = "tanh"
    recurrent_activation: Any = "hard_sigmoid"
    use_bias: bool = True
    kernel_initializer: Any = "glorot_uniform"
    recurrent_initializer: Any = "orthogonal"
    bias_initializer: Any = "zeros"
    unit_forget_bias: bool = True
    implementation: int = 1

    params_class = LSTMParams
    gates = 4
    num_feature_axes = 1

    @property
    def dropout_mask_count(self) -> int:
        """Dropout masks per call: one per gate with ``implementation=1`` (Keras), else one."""
        return 1 if self.implementation == 2 else self.gates

    def __post_init__(self):
        check_units(self.units)
        check_core_config(self)

    @property
    def state_size(self) -> tuple:
        return (self.units, self.units)

    @property
    def output_size(self) -> int:
        return self.units

    def init(self, key: jax.Array, input_dim: int, dtype: DTypeLike = jnp.float32) -> LSTMParams:
        check_units(input_dim, "input_dim")
        u = self.units
        k1, k2, k3 = jax.random.split(key, 3)
        kernel = init_weight(self.kernel_initializer, k1, (input_dim, 4 * u), dtype, "kernel_initializer")
        recurrent = init_weight(self.recurrent_initializer, k2, (u, 4 * u), dtype, "recurrent_initializer")
        bias = lstm_bias(self.bias_initializer, k3, u, dtype, self.unit_forget_bias) if self.use_bias else None
        return LSTMParams(kernel, recurrent, bias)

    def initial_state(self, batch_shape: tuple = (), dtype: DTypeLike = jnp.float32) -> LSTMState:
        z = jnp.zeros(tuple(batch_shape) + (self.units,), dtype)
        return LSTMState(z, z)

    def project(self, params: LSTMParams, x: jax.Array, dropout_mask: jax.Array | None = None) -> jax.Array:
        """``x @ kernel + bias`` for ``x`` of shape ``(..., I)``; ``dropout_mask`` as in
        :func:`rnnjax.functional.core.gate_matmul`."""
        return gate_matmul(x, params.kernel, dropout_mask, 4, params.bias)

    def _tanh_scale(self, dtype):
        """``s`` of the one-tanh gate pass: 1/2 on the sigmoid blocks (i, f, o), 1 on the candidate."""
        u = self.units
        return jnp.concatenate([jnp.full((2 * u,), 0.5), jnp.ones((u,)), jnp.full((u,), 0.5)]).astype(dtype)

    def _candidate_columns(self):
        """``(4U,)`` booleans, True on the candidate block c̃."""
        u = self.units
        return jnp.arange(4 * u) // u == 2

    def gate_values(self, z: jax.Array) -> tuple:
        """``(σ(i), σ(f), φ(c̃), σ(o))`` from the pre-activations ``z (..., 4U)``.

        For the common activations all four gates come from ONE element-wise pass over the
        contiguous ``4U`` block (the same function, to float rounding): with ``s = 1/2`` on the
        sigmoid blocks and ``1`` on the candidate block, ``σ(x) = s·tanh(s·x) + 1 - s`` and
        ``tanh(x) = 1·tanh(1·x) + 0``. Keras 2's hard sigmoid with tanh: ``where(candidate column,
        tanh(z), clip(0.2·z + 0.5, 0, 1))`` over the block (the same numbers exactly, and one pass
        instead of one per block: ``bench/README.md``, "One gate pass").
        """
        u = self.units
        rec, act = self.recurrent_activation, self.activation
        if act == "tanh" and rec == "sigmoid":
            s = self._tanh_scale(z.dtype)
            g = jnp.tanh(z * s) * s + (1 - s)
            return g[..., :u], g[..., u : 2 * u], g[..., 2 * u : 3 * u], g[..., 3 * u :]
        if act == "tanh" and rec == "hard_sigmoid":
            g = jnp.where(self._candidate_columns(), jnp.tanh(z), activations.hard_sigmoid(z))
            return g[..., :u], g[..., u : 2 * u], g[..., 2 * u : 3 * u], g[..., 3 * u :]
        sigma, phi = activations.get(rec), activations.get(act)
        if rec == "hard_sigmoid":
            g = sigma(z)
            return g[..., :u], g[..., u : 2 * u], phi(z[..., 2 * u : 3 * u]), g[..., 3 * u :]
        return sigma(z[..., :u]), sigma(z[..., u : 2 * u]), phi(z[..., 2 * u : 3 * u]), sigma(z[..., 3 * u :])

    def pointwise(
        self, pointwise_params: Any, xp_t: jax.Array, a_t: jax.Array, state: LSTMState
    ) -> tuple[LSTMState, jax.Array]:
        """Everything after the recurrent matmul ``a_t = h_{t-1} @ R``, with ``z_t = xp_t + a_t``."""
        del pointwise_params  # the bias is in the input projection
        i, f, g, o = self.gate_values(xp_t + a_t)
        c = f * state.c + i * g
        h = o * activations.get(self.activation)(c)
        return LSTMState(h, c), h

    def gate_slopes(self, z: jax.Array) -> tuple:
        """The four gates and their derivatives ``dg/dz``, each a tuple ``(i, f, c̃, o)`` of
        ``(..., U)`` blocks, for tanh and a sigmoid or Keras 2 hard-sigmoid recurrent activation
        (see :meth:`has_fast_vjp`)::

            sigmoid:       t = tanh(s·z);  g = s·t + 1 - s;  dg/dz = s²(1 - t²)
            hard sigmoid:  g = clip(0.2·z + 0.5, 0, 1);  dg/dz = 0.2 inside, 0 outside (0.1 where
                           0.2·z + 0.5 is exactly 0 or 1, as autodiff of the clip);
                           candidate block: g = tanh(z), dg/dz = 1 - g²

        (``s`` is 1/2 on the sigmoid blocks and 1 on the candidate block, as in :meth:`gate_values`).
        """
        u = self.units
        blocks = [(lo, lo + u) for lo in range(0, 4 * u, u)]
        if self.recurrent_activation == "sigmoid":
            s = self._tanh_scale(z.dtype)
            t = jnp.tanh(z * s)
            g, d = t * s + (1 - s), (s * s) * (1 - t * t)
            return tuple(g[..., lo:hi] for lo, hi in blocks), tuple(d[..., lo:hi] for lo, hi in blocks)
        gates, slopes = [], []
        for k, (lo, hi) in enumerate(blocks):
            zk = z[..., lo:hi]
            if k == 2:  # the candidate
                t = jnp.tanh(zk)
                gates.append(t)
                slopes.append(1 - t * t)
            else:
                gates.append(activations.hard_sigmoid(zk))
                slopes.append(activations.hard_sigmoid_slope(zk))
        return tuple(gates), tuple(slopes)

    @property
    def has_fast_vjp(self) -> bool:
        """Whether :meth:`pointwise_vjp` covers this configuration (tanh, and sigmoid or
        Keras 2's hard sigmoid)."""
        return self.activation == "tanh" and self.recurrent_activation in ("sigmoid", "hard_sigmoid")

    def pointwise_vjp(
        self, pointwise_params: Any, xp_t: jax.Array, a_t: jax.Array, state: LSTMState, ct: tuple
    ) -> tuple:
        """The backward pass of :meth:`pointwise` by hand, with ``g = (i, f, c̃, o)`` and
        ``g' = dg/dz`` from :meth:`gate_slopes`::

            z = xp + a;  c' = f·c + i·c̃;  h = o·tanh(c')
            dh = dh' + dy;  dc' += dh·o·(1 - tanh²c');  dz = g'·(dc'·c̃, dc'·c, dc'·i, dh·tanh c')
            dc = dc'·f;  dxp = da = dz

        The state cotangent has the type of ``state`` (any ``(h, c)`` named tuple: the ConvLSTM's
        per pixel too).
        """
        del pointwise_params
        (d_state, d_y) = ct
        (i, f, g, o), (si, sf, sg, so) = self.gate_slopes(xp_t + a_t)
        c_new = f * state.c + i * g
        tc = jnp.tanh(c_new)
        dh = d_state.h + d_y
        dc = d_state.c + dh * o * (1 - tc * tc)
        dz = jnp.concatenate([dc * g * si, dc * state.c * sf, dc * i * sg, dh * tc * so], axis=-1)
        return None, dz, dz, type(state)(jnp.zeros_like(state.h), dc * f)

    def step(
        self, params: LSTMParams, state: LSTMState, xp_t: Any, recurrent_dropout_mask: jax.Array | None = None
    ) -> tuple[LSTMState, jax.Array]:
        a = gate_matmul(state.h, params.recurrent_kernel, recurrent_dropout_mask, 4)
        return self.pointwise(None, xp_t, a, state)

    def matmul_step(
        self, params: LSTMParams, recurrent_dropout_mask: jax.Array | None = None
    ) -> RecurrentMatmulStep | None:
        """The step as a :class:`~rnnjax.functional.protocol.RecurrentMatmulStep` (None with
        per-gate masks)."""
        if per_gate_masks(recurrent_dropout_mask):
            return None
        return RecurrentMatmulStep(
            params.recurrent_kernel,
            self.pointwise,
            None,
            shared_mask(recurrent_dropout_mask),
            reads_only_sum=True,
            **self.backward_fields(),
        )

    def backward_fields(self) -> dict:
        """The :class:`~rnnjax.functional.protocol.RecurrentMatmulStep` fields of the hand-written
        element-wise backward pass (also the ConvLSTM's, per pixel): ``pointwise_vjp`` where
        :meth:`has_fast_vjp`; the hard sigmoid's re-reads ``z_t``."""
        return dict(
            pointwise_vjp=self.pointwise_vjp if self.has_fast_vjp else None,
            vjp_rereads_z=self.recurrent_activation != "sigmoid",
        )

    def input_additive_step(
        self, params: LSTMParams, recurrent_dropout_mask: jax.Array | None = None
    ) -> InputAdditiveStep | None:
        """With one recurrent dropout mask per gate (``implementation=1``, Keras 2's default) the
        step has no :class:`~rnnjax.functional.protocol.RecurrentMatmulStep` form: as an
        :class:`~rnnjax.functional.protocol.InputAdditiveStep` (four matmuls, each adding to one
        gate's part of the projected input) its kernel gradients are formed after the loop, and
        its element-wise part is differentiated by :meth:`pointwise_vjp` (autodiff's backward of
        the gate math is most of the loop: ``bench/README.md``, "Per-gate recurrent dropout").
        None otherwise (the RecurrentMatmulStep covers it)."""
        m = recurrent_dropout_mask
        if not per_gate_masks(m):
            return None
        pointwise = with_pointwise_vjp(self.pointwise, self.backward_fields()["pointwise_vjp"])

        def step(kernels, state, xp_t):
            lhs = tuple(state.h * m[k] for k in range(4))
            a = jnp.concatenate([v @ k for v, k in zip(lhs, kernels)], axis=-1)
            return pointwise(None, xp_t, a, state), lhs

        return InputAdditiveStep(tuple(jnp.split(params.recurrent_kernel, 4, axis=-1)), step)

    def __call__(self, params: LSTMParams, state: LSTMState, x_t):
        return self.step(params, state, self.project(params, x_t))
