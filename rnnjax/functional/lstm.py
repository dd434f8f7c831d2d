"""LSTM core (Keras layout, gate order i, f, c, o).

Parameters: ``kernel (I, 4U)``, ``recurrent_kernel (U, 4U)``, ``bias (4U,)`` or ``None``.
State: ``LSTMState(h, c)``, each ``(*batch, U)``. With ``σ = recurrent_activation`` and
``φ = activation``::

    z            = x_t @ kernel + bias + h_{t-1} @ recurrent_kernel        # (*batch, 4U)
    i, f, c̃, o   = split(z, 4)
    c_t          = σ(f) * c_{t-1} + σ(i) * φ(c̃)
    h_t          = σ(o) * φ(c_t)                                         # = output y_t

``x_t @ kernel + bias`` is :meth:`LSTMCore.project` (all steps at once); the rest is
:meth:`LSTMCore.step`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from rnnjax.functional import activations
from rnnjax.functional.core import check_core_config, check_units, gate_matmul, init_weight, lstm_bias
from rnnjax.functional.driver import LinearStep


class LSTMParams(NamedTuple):
    kernel: jax.Array
    recurrent_kernel: jax.Array
    bias: Optional[jax.Array]


class LSTMState(NamedTuple):
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

    def __post_init__(self):
        check_units(self.units)
        check_core_config(self)

    @property
    def state_size(self):
        return (self.units, self.units)

    @property
    def output_size(self):
        return self.units

    def init(self, key, input_dim: int, dtype=jnp.float32) -> LSTMParams:
        check_units(input_dim, "input_dim")
        u = self.units
        k1, k2, k3 = jax.random.split(key, 3)
        kernel = init_weight(self.kernel_initializer, k1, (input_dim, 4 * u), dtype, "kernel_initializer")
        recurrent = init_weight(self.recurrent_initializer, k2, (u, 4 * u), dtype, "recurrent_initializer")
        bias = lstm_bias(self.bias_initializer, k3, u, dtype, self.unit_forget_bias) if self.use_bias else None
        return LSTMParams(kernel, recurrent, bias)

    def initial_state(self, batch_shape=(), dtype=jnp.float32) -> LSTMState:
        z = jnp.zeros(tuple(batch_shape) + (self.units,), dtype)
        return LSTMState(z, z)

    def project(self, params: LSTMParams, x, dropout_mask=None):
        """``x @ kernel + bias`` for ``x`` of shape ``(..., I)``; ``dropout_mask`` as in
        :func:`rnnjax.functional.core.gate_matmul`."""
        return gate_matmul(x, params.kernel, dropout_mask, 4, params.bias)

    def gate_values(self, z):
        """``(σ(i), σ(f), φ(c̃), σ(o))`` from the pre-activations ``z (..., 4U)``.

        For the common activations all four gates come from ONE transcendental pass over the
        contiguous ``4U`` block (the same function, to float rounding): with ``s = 1/2`` on the
        sigmoid blocks and ``1`` on the candidate block, ``σ(x) = s·tanh(s·x) + 1 - s`` and
        ``tanh(x) = 1·tanh(1·x) + 0``. Keras 2's hard sigmoid is one ``clip`` over the block.
        """
        u = self.units
        rec, act = self.recurrent_activation, self.activation
        if act == "tanh" and rec == "sigmoid":
            s = jnp.concatenate([jnp.full((2 * u,), 0.5), jnp.ones((u,)), jnp.full((u,), 0.5)]).astype(z.dtype)
            g = jnp.tanh(z * s) * s + (1 - s)
            return g[..., :u], g[..., u:2 * u], g[..., 2 * u:3 * u], g[..., 3 * u:]
        sigma, phi = activations.get(rec), activations.get(act)
        if rec == "hard_sigmoid":
            g = sigma(z)
            return g[..., :u], g[..., u:2 * u], phi(z[..., 2 * u:3 * u]), g[..., 3 * u:]
        return sigma(z[..., :u]), sigma(z[..., u:2 * u]), phi(z[..., 2 * u:3 * u]), sigma(z[..., 3 * u:])

    def pointwise(self, pw_params, xp_t, a_t, state: LSTMState):
        """Everything after the recurrent matmul ``a_t = h_{t-1} @ recurrent_kernel``."""
        del pw_params  # the bias is in the input projection
        i, f, g, o = self.gate_values(xp_t + a_t)
        c = f * state.c + i * g
        h = o * activations.get(self.activation)(c)
        return LSTMState(h, c), h

    def pointwise_vjp(self, pw_params, xp_t, a_t, state: LSTMState, ct):
        """The backward pass of :meth:`pointwise` for sigmoid gates and tanh, by hand::

            z = xp + a;  t = tanh(s·z);  (i, f, g, o) = s·t + 1 - s;  c' = f·c + i·g;  h = o·tanh(c')
            dh = dh' + dy;  dc' += dh·o·(1 - tanh²c');  dz = s²(1 - t²)·(dc'·g, dc'·c, dc'·i, dh·tanh c')
            dc = dc'·f;  dxp = da = dz

        (``s`` is 1/2 on the sigmoid blocks and 1 on the candidate block, as in :meth:`gate_values`).
        """
        del pw_params
        (d_state, d_y) = ct
        u = self.units
        z = xp_t + a_t
        s = jnp.concatenate([jnp.full((2 * u,), 0.5), jnp.ones((u,)), jnp.full((u,), 0.5)]).astype(z.dtype)
        t = jnp.tanh(z * s)
        gates = t * s + (1 - s)
        i, f, g, o = gates[..., :u], gates[..., u:2 * u], gates[..., 2 * u:3 * u], gates[..., 3 * u:]
        c_new = f * state.c + i * g
        tc = jnp.tanh(c_new)
        dh = d_state.h + d_y
        dc = d_state.c + dh * o * (1 - tc * tc)
        dgates = jnp.concatenate([dc * g, dc * state.c, dc * i, dh * tc], axis=-1)
        dz = dgates * (s * s) * (1 - t * t)
        return None, dz, dz, LSTMState(jnp.zeros_like(state.h), dc * f)

    def step(self, params: LSTMParams, state: LSTMState, xp_t, recurrent_dropout_mask=None):
        a = gate_matmul(state.h, params.recurrent_kernel, recurrent_dropout_mask, 4)
        return self.pointwise(None, xp_t, a, state)

    def linear_step(self, params: LSTMParams, recurrent_dropout_mask=None):
        """The step as a :class:`~rnnjax.functional.driver.LinearStep` (None with per-gate masks)."""
        m = recurrent_dropout_mask
        if m is not None and m.shape[0] != 1:
            return None
        fast = self.activation == "tanh" and self.recurrent_activation == "sigmoid"
        return LinearStep(params.recurrent_kernel, self.pointwise, None, None if m is None else m[0], additive=True,
                          pointwise_vjp=self.pointwise_vjp if fast else None)

    def __call__(self, params: LSTMParams, state: LSTMState, x_t):
        return self.step(params, state, self.project(params, x_t))
