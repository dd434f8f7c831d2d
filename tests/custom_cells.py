"""Keras-protocol cells written by a user, in linen and NNX, for the tests that run rnnjax's generic
cell path (any Flax module with ``state_size`` and ``__call__(inputs, states)``): the seed's
``MinimalRNNCell`` and a cell whose output is narrower than its state."""

import flax.linen as nn
import jax.numpy as jnp
from flax import nnx

import rnnjax


class MinimalRNNCell(nn.Module):
    """The seed's custom-cell example, as a Flax module."""

    units: int

    @property
    def state_size(self):
        return self.units

    @nn.compact
    def __call__(self, inputs, states):
        prev_output = states[0]
        kernel = self.param("kernel", rnnjax.initializers.get("uniform"), (inputs.shape[-1], self.units))
        recurrent_kernel = self.param("recurrent_kernel", rnnjax.initializers.get("uniform"), (self.units, self.units))
        h = inputs @ kernel
        output = h + prev_output @ recurrent_kernel
        return output, [output]


class NNXMinimalRNNCell(nnx.Module):
    """The seed's custom-cell example (``MinimalRNNCell``) written in NNX."""

    def __init__(self, units, *, input_dim, rngs):
        self.units = units
        init = rnnjax.initializers.get("uniform")
        self.kernel = nnx.Param(init(rngs.params(), (input_dim, units)))
        self.recurrent_kernel = nnx.Param(init(rngs.params(), (units, units)))

    @property
    def state_size(self):
        return self.units

    def __call__(self, inputs, states):
        prev_output = states[0]
        h = inputs @ self.kernel[...]
        output = h + prev_output @ self.recurrent_kernel[...]
        return output, [output]


class NarrowCell(nn.Module):
    """A Keras-protocol cell whose output (``units``) is narrower than its state (``units + 1``):
    ``s_t = tanh(x_t @ kernel + s_{t-1} @ recurrent_kernel)``, output ``s_t[..., :units]``."""

    units: int

    @property
    def state_size(self):
        return self.units + 1

    @nn.compact
    def __call__(self, inputs, states):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (inputs.shape[-1], self.units + 1))
        recurrent_kernel = self.param("recurrent_kernel", nn.initializers.orthogonal(), (self.units + 1,) * 2)
        s = jnp.tanh(inputs @ kernel + states[0] @ recurrent_kernel)
        return s[..., : self.units], [s]


class NNXNarrowCell(nnx.Module):
    """:class:`NarrowCell` in NNX (the same parameters, so ``rnnjax.nnx.from_linen`` converts them)."""

    def __init__(self, units, *, input_dim, rngs):
        self.units = units
        self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (input_dim, units + 1)))
        self.recurrent_kernel = nnx.Param(nnx.initializers.orthogonal()(rngs.params(), (units + 1,) * 2))

    @property
    def state_size(self):
        return self.units + 1

    def __call__(self, inputs, states):
        s = jnp.tanh(inputs @ self.kernel[...] + states[0] @ self.recurrent_kernel[...])
        return s[..., : self.units], [s]
