"""MinimalRNN core: Keras 2's ``MinimalRNNCell`` example (the seed's custom cell) as a built-in core,
the worked example of ``docs/design.md`` ("Adding a cell"; notation: :mod:`rnnjax.functional.protocol`).

Parameters ``MinimalRNNParams``: ``kernel W (I, U)``, ``recurrent_kernel R (U, U)``, no bias
(``bias`` is None). State ``MinimalRNNState(h)``, ``(*batch, U)``::

    xp_t = x_t @ W                               # MinimalRNNCore.project (all steps at once)
    h_t  = xp_t + h_{t-1} @ R                    # MinimalRNNCore.step -> pointwise; = output y_t
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax.functional import initializers
from rnnjax.functional.core import check_units, gate_matmul, init_weight, register_for_export
from rnnjax.functional.protocol import RecurrentMatmulStep, shared_mask


class MinimalRNNParams(NamedTuple):
    kernel: jax.Array
    recurrent_kernel: jax.Array
    bias: jax.Array | None


class MinimalRNNState(NamedTuple):
    h: jax.Array


@dataclasses.dataclass(frozen=True)
class MinimalRNNCore:
    """The MinimalRNN step as pure functions (see the module docstring); Keras's example draws both
    weights from ``'uniform'``."""

    units: int
    kernel_initializer: Any = "uniform"
    recurrent_initializer: Any = "uniform"

    params_class = MinimalRNNParams
    gates = 1
    num_feature_axes = 1
    dropout_mask_count = 1  # one dropout mask (the cell has no dropout arguments)

    def __post_init__(self):
        check_units(self.units)
        for name in ("kernel_initializer", "recurrent_initializer"):
            initializers.get(getattr(self, name), name)

    state_size = property(lambda self: (self.units,), doc="Units of the one state ``h``.")
    output_size = property(lambda self: self.units, doc="Units of the output (the state ``h``).")

    def init(self, key: jax.Array, input_dim: int, dtype: Any = jnp.float32) -> MinimalRNNParams:
        check_units(input_dim, "input_dim")
        k1, k2 = jax.random.split(key)
        return MinimalRNNParams(
            init_weight(self.kernel_initializer, k1, (input_dim, self.units), dtype, "kernel_initializer"),
            init_weight(self.recurrent_initializer, k2, (self.units, self.units), dtype, "recurrent_initializer"),
            None,
        )

    def initial_state(self, batch_shape: tuple = (), dtype: Any = jnp.float32) -> MinimalRNNState:
        return MinimalRNNState(jnp.zeros(tuple(batch_shape) + (self.units,), dtype))

    def project(self, params: MinimalRNNParams, x: jax.Array, dropout_mask: jax.Array | None = None) -> jax.Array:
        return gate_matmul(x, params.kernel, dropout_mask, 1)

    def pointwise(self, pointwise_params, xp_t: jax.Array, a_t: jax.Array, state: MinimalRNNState):
        """``h_t = xp_t + a_t`` with ``a_t = h_{t-1} @ R``."""
        del pointwise_params, state
        return MinimalRNNState(xp_t + a_t), xp_t + a_t

    def step(
        self,
        params: MinimalRNNParams,
        state: MinimalRNNState,
        xp_t: jax.Array,
        recurrent_dropout_mask: jax.Array | None = None,
    ):
        return self.pointwise(
            None, xp_t, gate_matmul(state.h, params.recurrent_kernel, recurrent_dropout_mask, 1), state
        )

    def matmul_step(self, params: MinimalRNNParams, recurrent_dropout_mask: jax.Array | None = None):
        """The step as a :class:`~rnnjax.functional.protocol.RecurrentMatmulStep` (the driver's
        fast path: ``dR`` as one matmul after the backward loop)."""
        return RecurrentMatmulStep(
            params.recurrent_kernel, self.pointwise, None, shared_mask(recurrent_dropout_mask), reads_only_sum=True
        )


register_for_export(MinimalRNNParams, MinimalRNNState)
