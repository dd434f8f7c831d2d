"""A read model config (:class:`rnnjax.keras.config.ModelSpec`) -> its Flax module: a Sequential
as :class:`rnnjax.Sequential`, a functional model (and each nested model) as a
:class:`rnnjax.keras.KerasGraph`, every call checked against the module it calls. All problems
of a file (the config's, the layers', the calls', unused ``custom_objects`` keys) come back
together."""

from __future__ import annotations

import rnnjax
from rnnjax.keras import build
from rnnjax.keras.graph import KerasGraph
from rnnjax.keras.topology import REFUSED, chain
from rnnjax.layers.protocol import accepts


def build_model(spec, cudnn: str = "keep", custom=None):
    """``(model or None, problems)`` for ``spec``; ``custom``: the user's
    :class:`rnnjax.keras.custom.CustomObjects`."""
    ctx = build.Context(spec.keras_major, spec.version, cudnn, custom)
    calls: list = []  # the problems of calls and connections
    if spec.kind == "functional":
        model = _graph(ctx, spec.graph, spec.keras_major, calls, None)
    else:
        modules = [_module(ctx, s, spec.keras_major, calls, "") for s in spec.layers]
        for s, m in zip(spec.layers, modules):
            if m is not None and (getattr(m, "return_state", False) or getattr(m, "merge_mode", "") is None):
                calls.append(
                    f"layer {s.name!r} ({s.class_name}): return_state=True or merge_mode=None (several "
                    "outputs) is not supported in a Sequential model"
                )
        model = None
        if all(m is not None for m in modules) and not (spec.problems or ctx.problems or calls):
            plain = all(s.graph is None and s.custom is None for s in spec.layers)
            model = (
                rnnjax.Sequential(modules)
                if plain
                else _graph(
                    ctx, chain(spec.layers, spec.input_shape, spec.input_dtype), spec.keras_major, calls, None, modules
                )
            )
    problems = spec.problems + ctx.problems + calls + ([] if custom is None else custom.unused())
    return (None if problems else model), _unique(problems)


def _unique(problems):
    return list(dict.fromkeys(problems))  # the first of each, in order


def _module(ctx, s, major, problems, where):
    if s.graph is not None and s.custom is None:
        return _graph(ctx, s.graph, major, problems, s.name, where=f"{where}in nested model {s.name!r}: ")
    return ctx.build(s.name, s.class_name, s.config, s.entry)


def _graph(ctx, g, major, problems, name, modules=None, where=""):
    """The ``KerasGraph`` of a graph spec (``None`` when a layer or a call has a problem)."""
    if modules is None:
        modules = [_module(ctx, s, major, problems, where) for s in g.layers]
    if any(m is None for m in modules) or not g.calls or any(c.layer == REFUSED for c in g.calls):
        return None
    calls = [_fit(call, modules, major, problems) for call in g.calls]
    if any(r is None for r in g.outputs) or not g.outputs:
        return None
    return KerasGraph(
        tuple(modules),
        tuple(s.name for s in g.layers),
        tuple(calls),
        tuple(g.inputs),
        tuple(g.outputs),
        g.single,
        major,
        tuple(s.trainable for s in g.layers),
        tuple(s.class_name for s in g.layers),
        name=name,
    )


def _fit(call, modules, major, problems):
    """``call`` as ``modules[call.layer]`` takes it: Keras 2 writes an RNN's ``initial_state``
    tensors after its sequence (``[x, h, c]``); checks that every call argument is one the
    module takes."""
    if call.layer < 0:
        return call
    module = modules[call.layer]
    if isinstance(module, KerasGraph):
        count = len(call.args) if call.listed else 1
        if count != len(module.inputs):
            problems.append(f"{call.label}: the nested model takes {len(module.inputs)} input(s), got {count}")
        return call
    if major < 3 and call.listed and not call.state and accepts(module, "initial_state"):
        call = call._replace(args=call.args[:1], listed=False, state=call.args[1:])
    if call.state and not accepts(module, "initial_state"):
        problems.append(f"{call.label}: initial_state given, but {type(module).__name__} does not take one")
    for key, _ in call.kwargs:
        if key != "training" and not accepts(module, key):
            problems.append(f"{call.label}: call argument {key!r} is not supported by {type(module).__name__}")
    return call


def as_graph(spec, modules):
    """A Sequential's built layers as a ``KerasGraph`` chain (for layer names ``rnnjax.Sequential``
    would rename: a Keras name such as 'LSTM_1' looks like one Flax made up)."""
    problems: list[str] = []
    return _graph(
        None, chain(spec.layers, spec.input_shape, spec.input_dtype), spec.keras_major, problems, None, modules
    )


def input_specs(model, spec) -> list:
    """``[(batch shape, dtype)]`` of the model's inputs (``None`` sizes unresolved)."""
    if isinstance(model, KerasGraph):
        return [(shape, dtype) for _, shape, dtype in model.inputs]
    return [(spec.input_shape, spec.input_dtype)]
