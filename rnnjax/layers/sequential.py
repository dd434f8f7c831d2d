"""``Sequential``: a plain stack of layers that carries a mask from layer to layer, as Keras does."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn

from rnnjax.layers.protocol import call_layer, check_mask, keras_name, output_mask


def unique_names(bases) -> tuple:
    """Keras's names from the layers' base names: ``lstm``, ``lstm_1``, ``lstm_2``... per base (shared
    by the linen and NNX ``Sequential``)."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for base in bases:
        count = seen.get(base, 0)
        seen[base] = count + 1
        names.append(base if count == 0 else f"{base}_{count}")
    if len(set(names)) != len(names):
        raise ValueError(f"`layers`: two layers have the same name: {names}.")
    return tuple(names)


class Sequential(nn.Module):
    """A linear stack of layers (Keras 2's ``Sequential``) that propagates masks the Keras way.

    ``y = layer_n(... layer_2(layer_1(x)))``, and alongside it the mask ``m_0 = mask`` (the
    call's ``mask=``, boolean ``(batch, timesteps)``, or ``None``), ``m_k = layer_k.compute_mask(
    x_{k-1}, m_{k-1})``; each layer that takes a ``mask`` gets ``m_{k-1}``:

    * ``Embedding(mask_zero=True)`` and ``Masking`` produce a mask (replacing the one before);
    * recurrent layers (and ``Bidirectional``) consume it and pass it on only with
      ``return_sequences=True``;
    * ``Dense``, ``Dropout``, ``Activation`` and ``TimeDistributed`` pass it through;
    * a Flax module without ``compute_mask`` may only be reached by no mask (Keras 2 raised "does
      not support masking"): wrap it in ``TimeDistributed`` to run it per step.

    Call: ``model(inputs, *, mask=None, training=False)``; ``training`` reaches every layer that
    takes it (``deterministic=not training`` for Flax's own modules), and RNG streams
    (``'dropout'``) reach every layer. Each layer must return one array (no ``return_state``,
    no ``merge_mode=None``). Parameters live under each layer's Keras name, numbered per class as
    Keras does (``params['embedding']``, ``params['bidirectional']['forward_lstm']``,
    ``params['dense']``, ``params['dense_1']``). Stateful models: :func:`rnnjax.reset_states`.
    """

    layers: Sequence[nn.Module]

    def __post_init__(self):
        if not isinstance(self.layers, (list, tuple)) or not self.layers:
            raise ValueError(f"`layers`: expected a non-empty list of Flax modules, got {self.layers!r}.")
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, nn.Module):
                raise ValueError(f"`layers`[{i}]: expected a Flax module, got {type(layer).__name__}.")
        object.__setattr__(self, "_names", unique_names([keras_name(layer) for layer in self.layers]))
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs, *, mask=None, training: bool = False):
        def bind(name, layer):
            return layer.clone(parent=self, name=name, _deep_clone=True, _reset_names=True)

        return run_stack(self._names, self.layers, inputs, mask, training, bind)


def run_stack(names, layers, inputs, mask=None, training=None, bind=None):
    """``Sequential``'s call, shared by the linen and NNX ones: each layer called in turn (``bind(name,
    layer)``, when given, is the module to call) with the mask of the one before, ``m_k =
    layer_k.compute_mask(x_{k-1}, m_{k-1})``; one array out of every layer."""
    x = inputs
    if mask is not None:
        mask = check_mask(mask, inputs, "Sequential")
    for i, (name, layer) in enumerate(zip(names, layers)):
        next_mask = output_mask(layer, x, mask)
        x = call_layer(layer if bind is None else bind(name, layer), x, mask, training)
        if isinstance(x, (list, tuple)):
            raise ValueError(
                f"`layers`[{i}] ({name}, {type(layer).__name__}) returned {len(x)} outputs (return_state=True "
                "or merge_mode=None); in a Sequential every layer must return one array."
            )
        mask = next_mask
    return x
