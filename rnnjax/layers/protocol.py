"""How rnnjax's containers (``Sequential``, ``TimeDistributed``, ``Bidirectional``) call a layer
and read its mask rule: the Keras conventions, for any Flax module.

* A layer's call gets ``mask=`` only if its ``__call__`` has a ``mask`` parameter (and a mask
  exists), ``training=`` if it has ``training``, ``deterministic=not training`` if it has
  ``deterministic`` (Flax's own ``nn.Dropout``/``nn.BatchNorm`` convention).
* A layer's output mask comes from its ``compute_mask(inputs, mask)`` (Keras's name): rnnjax's
  layers all have one (mask producers ``Embedding``/``Masking``, pass-through ``Dense``/
  ``Dropout``/``Activation``/``TimeDistributed``, the recurrent layers' ``return_sequences``
  rule). A module without one cannot take a mask: Keras 2 raised "does not support masking",
  and so does rnnjax (wrap it in ``TimeDistributed`` to apply it per step and keep the mask).
"""

from __future__ import annotations

import functools
import inspect
import re
from typing import Any

import jax

from rnnjax.layers import path


@functools.cache
def _parameters(cls: Any) -> frozenset:
    try:
        return frozenset(inspect.signature(cls.__call__).parameters)
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return frozenset()


def accepts(layer: Any, argument: str) -> bool:
    """Whether ``layer.__call__`` has a parameter named ``argument``."""
    cls: type = type(layer)
    return argument in _parameters(cls)


def call_layer(layer: Any, inputs: Any, mask: Any = None, training: bool | None = False, **extra):
    """``layer(inputs, ...)`` with ``mask``/``training`` passed the way ``layer`` takes them (a layer
    without a ``mask`` parameter gets none; :func:`output_mask` says whether it may ignore it)."""
    kwargs = dict(extra)
    if mask is not None and accepts(layer, "mask"):
        kwargs["mask"] = mask
    if training is None:
        pass  # NNX: each layer keeps the mode set by train()/eval()
    elif accepts(layer, "training"):
        kwargs["training"] = training
    elif accepts(layer, "deterministic"):
        kwargs["deterministic"] = not training
    return layer(inputs, **kwargs)


def output_mask(layer: Any, inputs: jax.Array, mask: jax.Array | None):
    """The mask of ``layer``'s output for ``inputs`` with input ``mask`` (Keras's rule)."""
    rule = getattr(layer, "compute_mask", None)
    if rule is None:
        if mask is not None:
            raise_no_masking(layer)
        return None
    return rule(inputs, mask)


class PassMask:
    """``compute_mask`` of a layer that keeps the time axis and does not change the mask."""

    def compute_mask(self, inputs, mask=None):
        del inputs
        return mask


class DropMask:
    """``compute_mask`` of a layer whose output has no mask: it changes or removes the time axis
    (Keras 3 drops the mask with a warning; Keras 2 refused to build such a model, so no Keras 2
    file has one)."""

    def compute_mask(self, inputs, mask=None):
        del inputs, mask
        return None


def check_keras_version(version) -> int:
    """The ``keras_version`` field of the layers whose semantics differ between Keras 2 (tf-keras)
    and Keras 3: 2 or 3."""
    if isinstance(version, bool) or version not in (2, 3):
        raise ValueError(f"`keras_version`: expected 2 (tf-keras's semantics) or 3 (Keras 3's), got {version!r}.")
    return int(version)


def raise_no_masking(layer: Any):
    raise TypeError(
        f"{type(layer).__name__} does not support masking, but was passed a mask (as Keras 2 said): it has no "
        "`compute_mask(inputs, mask)`. Use rnnjax's Keras-named layers (Dense, Dropout, Activation), wrap it in "
        "rnnjax.TimeDistributed to apply it per step and pass the mask on, or give it a `compute_mask`."
    )


def check_mask(mask: jax.Array | None, inputs: jax.Array, where: str, nested: bool = False):
    """A container's mask: boolean, the leading axes ``(*batch, timesteps)`` of ``inputs`` (the
    container cannot know how many of its inputs' axes are features; the layers inside check the
    exact shape). With ``nested`` (a ``TimeDistributed`` mask) at least two axes."""
    if mask is None:
        return None
    rank = len(getattr(mask, "shape", ()))
    fits = (2 if nested else 1) <= rank <= inputs.ndim
    return path.check_mask(mask, inputs.shape[:rank] if fits else inputs.shape[:2], where)


def keras_name(layer: Any) -> str:
    """The name Keras gives ``layer`` by default: its class name in snake case (``LSTM`` ->
    ``lstm``, ``SimpleRNN`` -> ``simple_rnn``, ``ConvLSTM2D`` -> ``conv_lstm2d``), or the name
    the user gave it (not one Flax made up: ``LSTM_0``, or a container's field name)."""
    cls = type(layer).__name__
    name = layer.name
    if (
        name is None
        or name in ("layer", "backward_layer")
        or name.startswith("layers_")
        or (name.startswith(cls + "_") and name[len(cls) + 1 :].isdigit())
    ):
        return snake_case(cls)
    return name


def snake_case(name: str) -> str:
    """Keras's ``to_snake_case`` (``CuDNNLSTM`` -> ``cu_dnnlstm``, ``TimeDistributed`` ->
    ``time_distributed``)."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()
