"""The seed's custom-cell example (``MinimalRNNCell``) as a Flax module, for the tests that run
rnnjax's generic cell path (any Flax module with the Keras cell protocol)."""
import flax.linen as nn

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
