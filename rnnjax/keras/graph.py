"""``KerasGraph``: a functional Keras model as a Flax module: any number of inputs and outputs,
shared layers, nested models, ``initial_state`` and ``mask`` given as call arguments."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import cast

import flax.linen as nn

from rnnjax.keras import ops
from rnnjax.keras.topology import Call, Const, Ref
from rnnjax.layers.protocol import call_layer

__all__ = ["KerasGraph", "Call", "Ref"]


def _has_mask(mask) -> bool:
    if isinstance(mask, (list, tuple)):
        return any(m is not None for m in mask)
    return mask is not None


def _listify(value, n):
    out = list(value) if isinstance(value, (list, tuple)) else [value]
    return out + [None] * (n - len(out))


class KerasGraph(nn.Module):
    """A directed acyclic graph of layer calls, as a functional Keras model.

    ``calls[i]`` applies ``layers[calls[i].layer]`` (or, with ``layer == -1``, one of the mask ops
    Keras 3 records, :mod:`rnnjax.keras.ops`) to the tensors its ``args`` name: ``Ref(node,
    index)`` is output ``index`` of call ``node``, or model input ``k`` when ``node == -1 - k``;
    the calls are in an order that runs. A layer in several calls shares one set of weights
    (``params[names[k]]``). A nested model is a ``KerasGraph`` among ``layers``.

    Masks are Keras's: every tensor carries the mask its layer's ``compute_mask`` gives (the model
    inputs: ``mask=`` of the call); a call's ``mask=`` argument, when the file gives one (a
    ``Masking``/``Embedding`` mask recorded by Keras 3, a mask from another input), replaces the
    propagated one. A mask reaching a layer without ``compute_mask`` is an error for a Keras 2
    model (Keras 2 raised "does not support masking") and dropped with a warning for a Keras 3
    one (``keras``: the writing Keras's major version), as each did.

    Call: ``model(x1, x2, ..., mask=None, training=False)``, or one list, or one dict keyed by
    the input names (``input_names``); ``mask``: one mask, or one per input (a list or a dict).
    Returns the output, or the list of outputs when the model has several (as Keras does).
    :func:`rnnjax.load_keras` builds it from a file; :func:`rnnjax.save_keras` writes it back.

    Args:
      layers: The layers (Flax modules), each once however often it is called.
      names: The layers' Keras names, in ``layers`` order (their parameters' keys).
      calls: The calls, in an order that runs: :class:`rnnjax.keras.topology.Call` records.
      inputs: ``(name, batch shape, dtype)`` of each model input, from the file.
      outputs: The model's outputs, as ``Ref(call, index)``.
      single: Whether the model has one output, returned alone rather than in a list.
      keras: The writing Keras's major version (how a mask reaching a layer that cannot take one
        is treated: 2 raises, 3 warns and drops it).
      trainable: Each layer's Keras ``trainable`` flag (Keras 2 orders a nested model's weights by it).
      classes: Each layer's Keras class (which names its group in a Keras 3 weights file).
    """

    layers: Sequence[nn.Module]
    names: Sequence[str]
    calls: Sequence[Call]
    inputs: Sequence[tuple]
    outputs: Sequence[Ref]
    single: bool = True
    keras: int = 3
    trainable: Sequence[bool] = ()
    classes: Sequence[str] = ()

    @property
    def input_names(self) -> list:
        """The model inputs' names, in order (the keys of a dict of inputs)."""
        return [spec[0] for spec in self.inputs]

    def _arrange(self, given, what):
        """The model inputs (or masks) in input order from positional, list or dict forms."""
        names, n = self.input_names, len(self.inputs)
        if len(given) == 1 and isinstance(given[0], Mapping):
            found = given[0]
            if set(found) != set(names):
                raise ValueError(f"`{what}`: expected the keys {names}, got {sorted(found)}.")
            return [found[k] for k in names]
        if len(given) == 1 and n > 1 and isinstance(given[0], (list, tuple)):
            given = tuple(given[0])
        if len(given) != n:
            raise ValueError(f"`{what}`: the model takes {n} input(s) {names}, got {len(given)}.")
        return list(given)

    def __call__(self, *inputs, mask=None, training: bool = False):
        xs = self._arrange(inputs, "inputs")
        masks = [None] * len(xs) if mask is None else self._arrange((mask,), "mask")
        outs, _ = self.run(xs, masks, training)
        return outs[0] if self.single else list(outs)

    @nn.compact
    def run(self, xs, masks, training=False, record=None, prefix=()):
        """``(outputs, their masks)`` for the inputs ``xs`` with masks ``masks`` (lists).
        ``record``: a dict that gets ``(shape, dtype, has a mask)`` of every tensor, keyed ``prefix + (nested
        model names...) + (Ref,)`` (what ``save_keras`` writes for the tensors of the graph)."""
        bound = [
            layer.clone(parent=self, name=name, _deep_clone=True, _reset_names=True)
            for layer, name in zip(self.layers, self.names)
        ]
        values = {Ref(-1 - k, 0): (x, m) for k, (x, m) in enumerate(zip(xs, masks))}
        for i, call in enumerate(self.calls):
            if call.layer < 0:
                args = [a.value if isinstance(a, Const) else self._get(values, a, call)[0] for a in call.args]
                values[Ref(i, 0)] = (ops.run(cast(str, call.op), call.op_config, args), None)  # an op call
                continue
            sub = None if record is None else (record, prefix + (self.names[call.layer],))
            outs, out_masks = self._invoke(bound[call.layer], self.layers[call.layer], call, values, training, sub)
            for j, (y, m) in enumerate(zip(outs, out_masks)):
                values[Ref(i, j)] = (y, m)
        if record is not None:
            record.update({prefix + (r,): (tuple(v.shape), str(v.dtype), _has_mask(m)) for r, (v, m) in values.items()})
        found = [self._get(values, r, None) for r in self.outputs]
        return [v for v, _ in found], [m for _, m in found]

    @staticmethod
    def _get(values, ref, call):
        if ref not in values:
            who = "the model's outputs" if call is None else call.label
            raise ValueError(
                f"{who}: reads output {ref.index} of a call that has only "
                f"{sum(1 for r in values if r.node == ref.node)} output(s)"
            )
        return values[ref]

    def _invoke(self, module, layer, call, values, training, sub=None):
        """One layer call: ``(outputs, output masks)``."""
        got = [self._get(values, r, call) for r in call.args]
        x = [v for v, _ in got] if call.listed else got[0][0]
        mask = [m for _, m in got] if call.listed else got[0][1]
        if call.mask is not None:
            given = [None if r is None else self._get(values, r, call)[0] for r in call.mask]
            mask = given if call.mask_listed else given[0]
        kwargs = dict(call.kwargs)
        training = kwargs.pop("training", training)
        if isinstance(layer, KerasGraph):
            xs = x if call.listed else [x]
            return module.run(xs, _listify(mask, len(xs)), training, *(sub or ()))
        if _has_mask(mask) and not hasattr(layer, "compute_mask"):
            if self.keras < 3:
                raise TypeError(
                    f"{call.label}: {type(layer).__name__} does not support masking, but was passed a "
                    "mask (Keras 2 refused this model): give the module a compute_mask(inputs, mask)"
                )
            warnings.warn(
                f"{call.label}: {type(layer).__name__} does not support masking; the mask it was passed "
                "is dropped (as Keras 3 does).",
                stacklevel=2,
            )
            mask = None
        if call.state:
            kwargs["initial_state"] = [self._get(values, r, call)[0] for r in call.state]
        out = call_layer(module, x, mask if _has_mask(mask) else None, training, **kwargs)
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        rule = getattr(layer, "compute_mask", None)
        out_mask = None if rule is None else rule(x, mask if _has_mask(mask) else None)
        return outs, _listify(out_mask, len(outs))
