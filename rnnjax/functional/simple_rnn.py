"""SimpleRNN core: the fully connected recurrence (notation: :mod:`rnnjax.functional.protocol`).

Parameters ``SimpleRNNParams``: ``kernel W (I, U)``, ``recurrent_kernel R (U, U)``, ``bias b (U,)``
or ``None``. State ``SimpleRNNState(h)``, ``(*batch, U)``::

    xp_t = x_t @ W + b                           # SimpleRNNCore.project (all steps at once)
    h_t  = φ(xp_t + h_{t-1} @ R)                 # SimpleRNNCore.step -> pointwise; = output y_t
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from rnnjax.functional import activations
from rnnjax.functional.core import check_core_config, check_units, gate_matmul, init_weight
from rnnjax.functional.protocol import RecurrentMatmulStep, shared_mask


class SimpleRNNParams(NamedTuple):
    """SimpleRNN weights in Keras layout: ``kernel (input_dim, units)``, ``recurrent_kernel (units,
    units)``, ``bias (units,)`` (``None`` without ``use_bias``)."""

    kernel: jax.Array
    recurrent_kernel: jax.Array
    bias: jax.Array | None


class SimpleRNNState(NamedTuple):
    """The SimpleRNN state: ``h (*batch, units)``, also the output."""

    h: jax.Array


@dataclasses.dataclass(frozen=True)
class SimpleRNNCore:
    """The SimpleRNN step as pure functions (see the module docstring)."""

    units: int
    activation: Any = "tanh"
    use_bias: bool = True
    kernel_initializer: Any = "glorot_uniform"
    recurrent_initializer: Any = "orthogonal"
    bias_initializer: Any = "zeros"

    params_class = SimpleRNNParams
    gates = 1
    num_feature_axes = 1
    dropout_mask_count = 1  # one dropout mask, as Keras's SimpleRNNCell

    def __post_init__(self):
        check_units(self.units)
        check_core_config(self)

    @property
    def state_size(self) -> tuple:
        return (self.units,)

    @property
    def output_size(self) -> int:
        return self.units

    def init(self, key: jax.Array, input_dim: int, dtype: DTypeLike = jnp.float32) -> SimpleRNNParams:
        check_units(input_dim, "input_dim")
        k1, k2, k3 = jax.random.split(key, 3)
        u = self.units
        return SimpleRNNParams(
            init_weight(self.kernel_initializer, k1, (input_dim, u), dtype, "kernel_initializer"),
            init_weight(self.recurrent_initializer, k2, (u, u), dtype, "recurrent_initializer"),
            init_weight(self.bias_initializer, k3, (u,), dtype, "bias_initializer") if self.use_bias else None,
        )

    def initial_state(self, batch_shape: tuple = (), dtype: DTypeLike = jnp.float32) -> SimpleRNNState:
        return SimpleRNNState(jnp.zeros(tuple(batch_shape) + (self.units,), dtype))

    def project(self, params: SimpleRNNParams, x: jax.Array, dropout_mask: jax.Array | None = None) -> jax.Array:
        return gate_matmul(x, params.kernel, dropout_mask, 1, params.bias)

    def pointwise(
        self, pointwise_params: Any, xp_t: jax.Array, a_t: jax.Array, state: SimpleRNNState
    ) -> tuple[SimpleRNNState, jax.Array]:
        """``h_t = φ(xp_t + a_t)`` with ``a_t = h_{t-1} @ R``."""
        del pointwise_params, state
        h = activations.get(self.activation)(xp_t + a_t)
        return SimpleRNNState(h), h

    def step(
        self, params: SimpleRNNParams, state: SimpleRNNState, xp_t: Any, recurrent_dropout_mask: jax.Array | None = None
    ) -> tuple[SimpleRNNState, jax.Array]:
        a = gate_matmul(state.h, params.recurrent_kernel, recurrent_dropout_mask, 1)
        return self.pointwise(None, xp_t, a, state)

    def matmul_step(
        self, params: SimpleRNNParams, recurrent_dropout_mask: jax.Array | None = None
    ) -> RecurrentMatmulStep | None:
        """The step as a :class:`~rnnjax.functional.protocol.RecurrentMatmulStep`."""
        return RecurrentMatmulStep(
            params.recurrent_kernel, self.pointwise, None, shared_mask(recurrent_dropout_mask), reads_only_sum=True
        )

    def __call__(self, params: SimpleRNNParams, state: SimpleRNNState, x_t):
        return self.step(params, state, self.project(params, x_t))
