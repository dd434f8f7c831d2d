"""``save_keras`` of a :class:`rnnjax.keras.KerasGraph`: a Keras 3 ``Functional`` config (inputs,
each layer once with one inbound node per call, ``initial_state`` and explicit ``mask=`` as call
arguments, the mask ops Keras 3 recorded, nested models as nested ``Functional`` configs) and its
weights at the paths Keras 3 reads them from.

Keras 3 names a functional model's weights by class and position in ``model.layers``
(``layers/lstm``, ``layers/lstm_1``), and orders ``model.layers`` by its ``map_graph``: depth
from the outputs (deepest first), then the order a depth-first walk from the outputs first meets
each layer. :func:`keras_order` reproduces that walk on the graph written, so the reloaded model
finds each layer's weights (checked against Keras 3 in ``tests/test_keras_graphs.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnjax.keras import save_layers as sl
from rnnjax.keras.graph import KerasGraph
from rnnjax.keras.save_objects import KerasSaveError
from rnnjax.keras.topology import Const, Ref
from rnnjax.layers.protocol import snake_case

_FUNCTIONAL = {"module": "keras.src.models.functional", "class_name": "Functional", "registered_name": "Functional"}
_OP_MODULES = {"Cast": "keras.src.ops.core", "ConvertToTensor": "keras.src.ops.core"}


def _tensor_refs(call) -> list:
    """The tensors a call reads, in Keras 3's order (``tree.flatten((args, kwargs))``, keys sorted)."""
    return [r for r in tuple(call.args) + tuple(call.state) + tuple(call.mask or ()) if isinstance(r, Ref)]


def keras_order(graph) -> list:
    """Keras 3's order of the graph's operations (``('in', k)`` for input ``k``, ``('layer', i)``
    for layer ``i``, ``('op', c)`` for the mask op of call ``c``), as ``map_graph`` gives it."""

    def op_of(node):
        if node < 0:
            return ("in", -1 - node)
        call = graph.calls[node]
        return ("layer", call.layer) if call.layer >= 0 else ("op", node)

    def parents(node):
        return [] if node < 0 else [r.node for r in _tensor_refs(graph.calls[node])]

    finished: set = set()
    order: list = []
    index: dict = {}
    for out in graph.outputs:
        stack = [[out.node, None]]
        while stack:  # Keras's recursive _build_map_helper, iteratively
            frame = stack[-1]
            if frame[1] is None:
                if frame[0] in finished:
                    stack.pop()
                    continue
                index.setdefault(op_of(frame[0]), len(index))
                frame[1] = iter(parents(frame[0]))
            nxt = next(frame[1], None)
            if nxt is None:
                finished.add(frame[0])
                order.append(frame[0])
                stack.pop()
            elif nxt not in finished:
                stack.append([nxt, None])
    node_depth: dict = {}
    op_depth: dict = {}
    for node in reversed(order):
        op = op_of(node)
        depth = max(node_depth.setdefault(node, 0), op_depth.get(op, 0))
        op_depth[op] = node_depth[node] = depth
        for p in parents(node):
            node_depth[p] = max(depth + 1, node_depth.get(p, 0))
    for k in range(len(graph.inputs)):  # inputs no output needs
        if ("in", k) not in op_depth:
            op_depth[("in", k)], index[("in", k)] = 0, -1
    return sorted(op_depth, key=lambda op: (-op_depth[op], index[op]))


def _merge_shapes(a, b):
    return [None if x != y else x for x, y in zip(a, b)]


def tensor_shapes(model, variables) -> dict:
    """``{(nested model names..., Ref): (shape, dtype, has a mask)}`` of every tensor, sizes that
    change between two probes (free lengths, the batch) as ``None``."""
    probes = []
    for size in (2, 3):
        structs = [
            jax.ShapeDtypeStruct(tuple(size if d is None else int(d) for d in (shape or (None,))), jnp.dtype(dtype))
            for _, shape, dtype in model.inputs
        ]
        record: dict = {}
        jax.eval_shape(
            lambda v, *xs, rec=record: model.apply(v, list(xs), [None] * len(xs), False, rec, method="run"),
            variables,
            *structs,
        )
        probes.append(record)
    return {k: (_merge_shapes(v[0], probes[1][k][0]), v[1], v[2]) for k, v in probes[0].items()}


class _Writer:
    """Writes one graph (and, recursively, its nested models)."""

    def __init__(self, ctx, shapes):
        self.ctx, self.shapes = ctx, shapes

    def graph(self, graph, params, name, where, prefix):
        """``(config of the Functional, its weights Node)``."""
        extra = sorted(set(params or {}) - set(graph.names))
        if extra:
            raise KerasSaveError(
                f"{where}`variables`: parameters {extra} belong to no layer (its layers: {list(graph.names)})."
            )
        order = keras_order(graph)
        producers, op_names = self._names(graph, order)
        entries: list = []
        used: dict = {}
        children: dict = {}
        for op in order:
            entry, node = self._entry(graph, op, params, producers, op_names, where, prefix)
            entries.append(entry)
            if node is not None:
                children["layers/" + sl.unique(snake_case(entry["class_name"]), used)] = node
        ref = lambda r: self._history(graph, r, producers, op_names)  # noqa: E731
        inputs = [[n, 0, 0] for n in graph.input_names]
        outputs = [ref(r) for r in graph.outputs]
        config = {
            "name": name,
            "trainable": True,
            "layers": entries,
            "input_layers": inputs[0] if len(inputs) == 1 else inputs,
            "output_layers": outputs[0] if graph.single else outputs,
        }
        return config, sl.Node(name, [], children)

    @staticmethod
    def _names(graph, order):
        producers: dict = {}
        counts: dict = {}
        for i, call in enumerate(graph.calls):
            if call.layer >= 0:
                producers[i] = (graph.names[call.layer], counts.setdefault(call.layer, [0])[0])
                counts[call.layer][0] += 1
        taken = set(graph.names) | set(graph.input_names)
        op_names: dict = {}
        used: dict = {}
        for op in order:
            if op[0] == "op":
                base = snake_case(graph.calls[op[1]].op)
                name = sl.unique(base, used)
                while name in taken:
                    name = sl.unique(base, used)
                op_names[op[1]] = name
        return producers, op_names

    def _history(self, graph, r, producers, op_names):
        if r.node < 0:
            return [graph.input_names[-1 - r.node], 0, 0]
        if r.node in op_names:
            return [op_names[r.node], 0, 0]
        name, node = producers[r.node]
        return [name, node, r.index]

    def _tensor(self, graph, r, producers, op_names, prefix):
        shape, dtype, _ = self.shapes[prefix + (r,)]
        return {
            "class_name": "__keras_tensor__",
            "config": {
                "shape": list(shape),
                "dtype": dtype,
                "keras_history": self._history(graph, r, producers, op_names),
            },
        }

    def _node(self, graph, call, producers, op_names, prefix):
        t = lambda r: r.value if isinstance(r, Const) else self._tensor(graph, r, producers, op_names, prefix)  # noqa
        if call.layer < 0 and not call.listed:
            return {"args": [t(r) for r in call.args], "kwargs": {}}
        first = [t(r) for r in call.args] if call.listed else t(call.args[0])
        kwargs = {k: v for k, v in call.kwargs if k != "training"}
        if call.state:
            kwargs["initial_state"] = [t(r) for r in call.state]
        if call.mask is not None:
            masks = [None if r is None else t(r) for r in call.mask]
            kwargs["mask"] = masks if call.mask_listed else masks[0]
        return {"args": [first], "kwargs": kwargs}

    def _entry(self, graph, op, params, producers, op_names, where, prefix):
        kind, i = op
        if kind == "in":  # the shape as traced: the file's, or a nested model's its caller gives
            name = graph.inputs[i][0]
            shape, dtype, _ = self.shapes[prefix + (Ref(-1 - i, 0),)]
            config = {"batch_shape": list(shape), "dtype": dtype, "sparse": False, "name": name}
            return {**sl.keras_object("InputLayer", config), "name": name, "inbound_nodes": []}, sl.Node(name, [], {})
        if kind == "op":
            call = graph.calls[i]
            name = op_names[i]
            return {
                "module": _OP_MODULES.get(call.op, "keras.src.ops.numpy"),
                "class_name": call.op,
                "config": {"name": name, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in call.op_config}},
                "registered_name": call.op,
                "name": name,
                "inbound_nodes": [self._node(graph, call, producers, op_names, prefix)],
            }, None
        layer, name = graph.layers[i], graph.names[i]
        calls = [c for c in graph.calls if c.layer == i]
        here = f"{where}layer {name!r} ({type(layer).__name__})"
        sub = (params or {}).get(name)
        if isinstance(layer, KerasGraph):
            config, node = self.graph(layer, sub, name, f"{where}in nested model {name!r}: ", prefix + (name,))
            entry = {**_FUNCTIONAL, "config": config}
        else:
            if getattr(layer, "keras_version", 3) == 2 and any(
                self.shapes[prefix + (r,)][2] for c in calls for r in c.args if isinstance(r, Ref)
            ):
                raise KerasSaveError(
                    f"{here}: a mask reaches this keras_version=2 layer, whose mask rule is Keras 2's "
                    "(a Concatenate keeps a step where every input does; Keras 3's where any does), "
                    "so Keras 3 would compute other numbers."
                )
            saved = sl.convert(layer, sub, name, here, self.ctx)
            entry, node = dict(saved.config), saved.node
        nodes = [self._node(graph, c, producers, op_names, prefix) for c in calls]
        return {**entry, "name": name, "inbound_nodes": nodes}, node


def graph_members(model, variables, params, ctx, name):
    """``(config.json object, weights Node)`` of ``model`` with ``variables`` (``params``: its
    parameters with BatchNormalization's moving statistics merged in, as Keras 3 keeps them)."""
    kept = {k: v for k, v in variables.items() if k in ("params", "batch_stats", "rnn_state")}
    try:
        shapes = tensor_shapes(model, kept)
    except Exception as err:  # noqa: BLE001 - any failure means the variables do not fit the model
        raise KerasSaveError(
            f"`variables`: the model does not run with them on inputs {list(model.inputs)}: {err}"
        ) from err
    config, node = _Writer(ctx, shapes).graph(model, params, name, "", ())
    batch = [list(shape) for _, shape, _ in model.inputs]
    top = {
        **_FUNCTIONAL,
        "config": config,
        "build_config": {"input_shape": batch[0] if len(batch) == 1 else batch},
        "compile_config": None,
    }
    return top, node
