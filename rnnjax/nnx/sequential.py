"""NNX ``Sequential``: a plain stack of layers that carries a mask from layer to layer, as Keras
(and :class:`rnnjax.Sequential`, whose call it shares) does::

    model = rnx.Sequential([rnx.Embedding(100, 8, mask_zero=True, rngs=rngs),
                            rnx.Bidirectional(rnx.LSTM(16, return_sequences=True, input_dim=8, rngs=rngs), rngs=rngs),
                            rnx.TimeDistributed(rnx.Dense(3, input_dim=32, rngs=rngs))])
    y = model(ids)                        # ids (batch, T) -> (batch, T, 3), padding (id 0) masked
"""

from __future__ import annotations

from flax import nnx

from rnnjax.layers.protocol import snake_case
from rnnjax.layers.sequential import run_stack, unique_names


class Sequential(nnx.Module):
    """``Sequential(layers, *, rngs=None)``: ``y = layer_n(... layer_1(x))`` with Keras's mask rule
    (``m_k = layer_k.compute_mask(x_{k-1}, m_{k-1})``; each layer that takes a ``mask`` gets
    ``m_{k-1}``; see :class:`rnnjax.Sequential`). The layers live under their Keras names, numbered
    per class (``embedding``, ``bidirectional``, ``dense``, ``dense_1``), the linen twin's parameter
    paths, so :func:`rnnjax.nnx.from_linen`/:func:`~rnnjax.nnx.to_linen` convert a whole model.
    Call: ``model(inputs, *, mask=None, training=None)``; ``training`` (None: the mode set by
    ``train()``/``eval()``) reaches every layer that takes it. Stateful models:
    :func:`rnnjax.nnx.reset_states`."""

    def __init__(self, layers, *, rngs=None):
        del rngs  # the layers hold their own parameters; accepted for a uniform signature
        if not isinstance(layers, (list, tuple)) or not layers:
            raise ValueError(f"`layers`: expected a non-empty list of NNX modules, got {layers!r}.")
        for i, layer in enumerate(layers):
            if not isinstance(layer, nnx.Module):
                raise ValueError(f"`layers`[{i}]: expected an NNX module, got {type(layer).__name__}.")
        self.names = unique_names([snake_case(type(layer).__name__) for layer in layers])
        for name, layer in zip(self.names, layers):
            setattr(self, name, layer)

    @property
    def layers(self) -> list:
        return [getattr(self, name) for name in self.names]

    def __call__(self, inputs, *, mask=None, training: bool | None = None):
        return run_stack(self.names, self.layers, inputs, mask, training)
