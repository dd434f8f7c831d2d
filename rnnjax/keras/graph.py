"""``KerasGraph``: a single-input, single-output functional Keras model as a Flax module."""
from __future__ import annotations

import inspect
from typing import Sequence

import flax.linen as nn


def _takes(layer, argument: str) -> bool:
    try:
        return argument in inspect.signature(type(layer).__call__).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return False


def _call(layer, x, mask, training):
    kwargs = {}
    if mask is not None and _takes(layer, "mask"):
        kwargs["mask"] = mask
    if _takes(layer, "training"):
        kwargs["training"] = training
    return layer(x, **kwargs)


def _mask_of(layer, name, x, mask):
    rule = getattr(layer, "compute_mask", None)
    if rule is None:
        if mask is not None and not (isinstance(mask, list) and all(m is None for m in mask)):
            raise TypeError(f"layer {name!r} ({type(layer).__name__}) does not support masking, but got a mask.")
        return None
    return rule(x, mask)


class KerasGraph(nn.Module):
    """A directed acyclic graph of layers with one input and one output, as a functional Keras
    model: ``y_k = layer_k(y_{i_k})`` (or ``layer_k([y_i, y_j, ...])`` for a merge), ``y_{-1}``
    the model input, in ``layers`` order (topological). Masks follow each layer's
    ``compute_mask`` (Keras's rule); the input mask is ``mask=`` of the call.

    Call: ``model(inputs, mask=None, training=False)``. Parameters live under each layer's name
    (``params[names[k]]``).
    """

    layers: Sequence[nn.Module]
    names: Sequence[str]
    inbound: Sequence[Sequence[int]]  # per layer: indices of its inputs (-1: the model input)
    merges: Sequence[bool]  # per layer: whether it takes the list of its inputs
    output: int

    @nn.compact
    def __call__(self, inputs, mask=None, training: bool = False):
        values = {-1: (inputs, mask)}
        for k, (layer, name, srcs, merge) in enumerate(zip(self.layers, self.names, self.inbound, self.merges)):
            module = layer.clone(parent=self, name=name, _deep_clone=True, _reset_names=True)
            xs = [values[i][0] for i in srcs]
            ms = [values[i][1] for i in srcs]
            x, m = (xs, ms) if merge else (xs[0], ms[0])
            out_mask = _mask_of(layer, name, x, m)
            values[k] = (_call(module, x, m, training), out_mask)  # a merge gets its list of masks
        return values[self.output][0]
