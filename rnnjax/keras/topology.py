"""A functional Keras model's graph read as data: its inputs, the calls of its layers (a layer
called at several places is one layer with several calls), the tensors each call reads, and its
outputs, in an order that runs.

Both serialisations are read:

* Keras 2 / tf-keras: ``inbound_nodes`` is a list of nodes, each a list of ``[layer, node,
  tensor, kwargs]`` entries, one per input tensor; tensors inside ``kwargs`` (``mask``,
  ``initial_state``) are ``[layer, node, tensor]`` triples. An RNN called with Keras tensors as
  ``initial_state`` is written with those states as extra entries after the sequence (tf-keras
  calls it with ``[inputs, *states]``).
* Keras 3 (``.keras`` and its legacy ``.h5``): each node is ``{"args": [...], "kwargs": {...}}``
  with ``{"class_name": "__keras_tensor__", "config": {"keras_history": [layer, node,
  tensor]}}`` for tensors; mask computations are op nodes (``NotEqual``, ``Any``...), of which
  only the mask ops are read.

``node`` is the index of the call among the producing layer's ``inbound_nodes`` in this config,
``tensor`` the index of the output. Every step is iterative and linear in the size of the
config (a Kahn topological sort; no recursion over the graph), so a hostile graph of any size
costs time in proportion to its size; cycles, references to missing layers, nodes or inputs are
listed as problems.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, NamedTuple

from rnnjax.keras import ops as kops

MODEL_CLASSES = ("Sequential", "Functional", "Model")
_OPS_MODULE = "keras.src.ops"
MAX_NESTING = 32  # nested models inside nested models; Keras models in the wild have 1 or 2
_TENSOR_KWARGS = ("mask", "initial_state")
_SCALARS = (str, int, float, bool, type(None))
REFUSED = -2  # Call.layer of a layer refused while reading (its problem recorded): its outputs still resolve


class Ref(NamedTuple):
    """A tensor: output ``index`` of call ``node`` (a position in ``GraphSpec.calls``), or of
    model input ``k`` when ``node == -1 - k``."""

    node: int
    index: int  # type: ignore[assignment]  # Keras's name; shadows tuple.index, which no one calls on a Ref


class Const(NamedTuple):
    """A scalar argument of a mask op (``NotEqual(x, 0)``)."""

    value: Any


class Call(NamedTuple):
    """One call of a layer (``layer >= 0``, its position in ``GraphSpec.layers``) or of a mask op
    (``layer == -1``, class ``op``). ``args``: the tensors of the first call argument (a list when
    ``listed``); ``state``: ``initial_state`` tensors; ``mask``: the tensors given as ``mask=``
    (``None``: none given, the mask propagates by Keras's layer rules); ``kwargs``: other call
    arguments, JSON scalars; ``label``: the call, for messages."""

    layer: int
    args: tuple
    listed: bool = False
    state: tuple = ()
    mask: tuple | None = None
    mask_listed: bool = False
    kwargs: tuple = ()
    op: str | None = None
    op_config: tuple = ()
    label: str = ""


@dataclasses.dataclass
class GraphSpec:
    inputs: list  # [(name, batch shape or None, dtype)]
    layers: list  # [config.LayerSpec], config order (the weights' order)
    calls: list  # [Call] in an order that runs
    outputs: list  # [Ref]
    single: bool  # one output, not in a list


def _where(name, cls):
    return f"layer {name!r} ({cls})"


def is_op(entry, ops) -> bool:
    """A Keras 3 op node: named by its module in ``.keras`` files; in Keras 3's legacy ``.h5`` (no
    module) by its class, and for ``Concatenate`` (also a layer) by inputs that are all op outputs."""
    module = entry.get("module")
    if module is not None:
        return str(module).startswith(_OPS_MODULE)
    cls = entry["class_name"]
    if cls not in kops.MASK_OPS:
        return False
    if cls != "Concatenate":
        return True
    nodes = entry.get("inbound_nodes") or [{}]
    if not isinstance(nodes[0], dict):
        return False
    args = nodes[0].get("args") or [[]]
    flat = args[0] if isinstance(args[0], list) else args
    names = [t.get("config", {}).get("keras_history", [None])[0] for t in flat if isinstance(t, dict)]
    return bool(names) and all(n in ops for n in names)


def _triple(value) -> tuple | None:
    """``(layer, node, tensor)`` of one serialised tensor (either format), else ``None``."""
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        value = (value.get("config") or {}).get("keras_history")
    if (
        isinstance(value, list)
        and len(value) == 3
        and isinstance(value[0], str)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value[1:])
    ):
        return (value[0], value[1], value[2])
    return None


def _tensors(value, what, problems, allow_none=False) -> tuple:
    """``(triples, listed)`` of a tensor or a list of tensors (``None`` entries when allowed)."""
    one = _triple(value)
    if one is not None:
        return (one,), False
    if isinstance(value, list) and value:
        out = []
        for v in value:
            t = _triple(v)
            if t is None and not (allow_none and v is None):
                problems.append(f"{what}: expected a tensor, got {str(v)[:80]}")
            out.append(t)
        return tuple(out), True
    problems.append(f"{what}: expected a tensor or a list of tensors, got {str(value)[:80]}")
    return (), False


def _kwargs(kwargs, what, problems, keras3) -> dict:
    """The call arguments: ``mask``/``initial_state`` as tensors, ``training`` (Keras 3 records it
    for every call and overrides it by the model's: dropped), other JSON scalars kept."""
    out: dict = {}
    if not isinstance(kwargs, dict):
        problems.append(f"{what}: call arguments must be an object, got {type(kwargs).__name__}")
        return out
    for key, value in kwargs.items():
        if key == "mask":
            if value is None or (isinstance(value, list) and all(v is None for v in value)):
                continue
            out["mask"] = _tensors(value, f"{what} `mask`", problems, allow_none=True)
        elif key == "initial_state":
            if value is not None:
                triples, _ = _tensors(value, f"{what} `initial_state`", problems)
                out["initial_state"] = triples
        elif key == "training" and keras3:
            continue
        elif isinstance(value, _SCALARS):
            out[key] = value
        else:
            problems.append(f"{what}: call argument {key!r} ({str(value)[:80]}) is not supported")
    return out


def _k2_node(node, what, problems):
    """``(triples, listed, kwargs)`` of one Keras 2 node ``[[layer, node, tensor, kwargs], ...]``."""
    if not isinstance(node, list) or not node:
        problems.append(f"{what}: a Keras 2 inbound node must be a non-empty list, got {str(node)[:80]}")
        return (), False, {}
    triples, kwargs = [], {}
    for item in node:
        t = _triple(item[:3]) if isinstance(item, list) and len(item) in (3, 4) else None
        if t is None or (len(item) == 4 and not isinstance(item[3], dict)):
            problems.append(f"{what}: an inbound entry must be [layer, node, tensor, kwargs], got {str(item)[:80]}")
            continue
        triples.append(t)
        if len(item) == 4 and item[3]:
            kwargs = item[3]
    converted = {}
    for key, value in kwargs.items():
        converted[key] = (
            {"class_name": "__keras_tensor__", "config": {"keras_history": value}}
            if key in _TENSOR_KWARGS and _triple(value) is not None
            else value
        )
    return tuple(triples), len(triples) > 1, _kwargs(converted, what, problems, keras3=False)


def _k3_node(node, what, problems, op: bool):
    """``(args, listed, kwargs)`` of one Keras 3 node ``{"args": [...], "kwargs": {...}}``; an op's
    further positional arguments may be scalars (``Const``)."""
    args = node.get("args", [])
    if not isinstance(args, list) or not args:
        problems.append(f"{what}: call arguments must be a non-empty list, got {str(args)[:80]}")
        return (), False, {}
    triples, listed = _tensors(args[0], what, problems)
    extra = []
    for a in args[1:]:
        t = _triple(a)
        if op and (t is not None or isinstance(a, (int, float, bool))):
            extra.append(t if t is not None else Const(a))
        else:
            problems.append(f"{what}: positional call argument {str(a)[:80]} is not supported")
    if extra:
        triples, listed = tuple(triples) + tuple(extra), listed
    return triples, listed, _kwargs(node.get("kwargs", {}), what, problems, keras3=True)


def _input_of(cfg: dict):
    shape = cfg.get("batch_shape", cfg.get("batch_input_shape"))
    dtype = cfg.get("dtype", "float32")
    if isinstance(dtype, dict):
        dtype = (dtype.get("config") or {}).get("name", "float32")
    return (None if not isinstance(shape, list) else tuple(shape)), str(dtype)


def _endpoints(value, what, problems) -> tuple:
    """``(triples, single)`` of ``input_layers``/``output_layers``: Keras 3 writes one triple
    unnested for a single tensor; both write lists of triples."""
    one = _triple(value)
    if one is not None:
        return [one], True
    if isinstance(value, list) and value and all(_triple(v) is not None for v in value):
        return [_triple(v) for v in value], len(value) == 1
    problems.append(
        f"`{what}`: expected a list of [layer, node, tensor] triples, got {str(value)[:120]} (dicts "
        "of inputs or outputs are not supported)"
    )
    return [], True


class _Reader:
    """Reads one functional config into a :class:`GraphSpec`, recording every problem."""

    def __init__(self, major, problems, make_layer, where):
        self.major, self.problems, self.make_layer, self.where = major, problems, make_layer, where
        self.inputs, self.layers, self.raw, self.producers, self.ops = {}, [], [], {}, set()

    def entry(self, entry):
        cfg, cls = entry["config"], entry["class_name"]
        name = entry.get("name", cfg.get("name"))
        if not isinstance(name, str):
            self.problems.append(f"{self.where}a layer of class {cls!r} has no name")
            return
        if name in self.inputs or name in self.producers:
            self.problems.append(f"{self.where}two layers are named {name!r}")
            return
        nodes = entry.get("inbound_nodes", [])
        if not isinstance(nodes, list):
            self.problems.append(f"{self.where}{_where(name, cls)}: `inbound_nodes` must be a list")
            return
        if cls == "InputLayer":
            self.inputs[name] = _input_of(cfg)
            return
        op, refused = self.major >= 3 and is_op(entry, self.ops), False
        if op:
            self.ops.add(name)
            if cls not in kops.MASK_OPS:
                self.problems.append(
                    f"{self.where}op node {name!r} ({cls}): only the mask ops Keras 3 writes "
                    f"({sorted(kops.MASK_OPS)}) are supported"
                )
                op, refused = False, True
        else:
            spec = self.make_layer(name, cls, entry)
            refused = spec is None
            if spec is not None:
                self.layers.append(spec)
        self.producers[name] = []
        for k, node in enumerate(nodes):
            self.producers[name].append(len(self.raw))
            self.raw.append(self._node(name, cls, k, node, cfg if op else None, refused))

    def _node(self, name, cls, k, node, op_cfg, refused=False):
        what = f"{self.where}{_where(name, cls)} call {k}"
        op = op_cfg is not None
        if isinstance(node, dict):
            args, listed, kwargs = _k3_node(node, what, self.problems, op)
        else:
            args, listed, kwargs = _k2_node(node, what, self.problems)
        config = {key: (tuple(v) if isinstance(v, list) else v) for key, v in (op_cfg or {}).items() if key != "name"}
        if op:
            note = (
                kops.check(cls, config, args, listed)
                if all(isinstance(v, _SCALARS + (tuple,)) for v in config.values())
                else "a nested config"
            )
            if note is not None:
                self.problems.append(f"{what}: {note}")
        return dict(
            layer=-1 if op else REFUSED if refused else len(self.layers) - 1,
            args=args,
            listed=listed,
            kwargs=kwargs,
            op=cls if op else None,
            op_config=tuple(sorted(config.items())),
            label=what,
        )

    def ref(self, triple, what, input_names):
        if isinstance(triple, Const) or triple is None:
            return triple
        name, node, tensor = triple
        if name in input_names:
            if node != 0 or tensor != 0:
                self.problems.append(f"{what}: input {name!r} has one tensor, got [{name!r}, {node}, {tensor}]")
            return Ref(-1 - input_names[name], 0)
        if name in self.inputs:
            self.problems.append(
                f"{what}: reads InputLayer {name!r}, which is not an input of the model "
                "(input_layers): the graph is disconnected"
            )
            return None
        calls = self.producers.get(name)
        if calls is None:
            self.problems.append(f"{what}: reads tensor [{name!r}, {node}, {tensor}] of no layer in the model")
            return None
        if not 0 <= node < len(calls):
            self.problems.append(f"{what}: reads call {node} of {name!r}, which is called {len(calls)} times")
            return None
        return Ref(calls[node], tensor)


def _resolve(reader, input_names):
    """Every raw call with its tensors as :class:`Ref` (call positions in config order)."""
    calls = []
    for raw in reader.raw:
        what = raw["label"]

        def refs(triples, what=what):
            return tuple(reader.ref(t, what, input_names) for t in triples)

        kwargs = dict(raw["kwargs"])
        state = refs(kwargs.pop("initial_state", ()))
        mask = kwargs.pop("mask", None)
        mask_refs, mask_listed = (None, False) if mask is None else (refs(mask[0]), mask[1])
        args = refs(raw["args"])
        if raw["op"] is None and any(
            isinstance(a, Ref) and a.node >= 0 and reader.raw[a.node]["op"] is not None for a in args + state
        ):
            reader.problems.append(f"{what}: takes an op node's output as data; only masks may come from op nodes")
        calls.append(
            Call(
                raw["layer"],
                args,
                raw["listed"],
                state,
                mask_refs,
                mask_listed,
                tuple(sorted(kwargs.items())),
                raw["op"],
                raw["op_config"],
                what,
            )
        )
    return calls


def _deps(call):
    refs = list(call.args) + list(call.state) + list(call.mask or ())
    return [r.node for r in refs if isinstance(r, Ref) and r.node >= 0]


def toposort(calls, problems, where=""):
    """The calls reordered so that each comes after the calls it reads (Kahn's algorithm, config
    order among the ready ones; linear time), their references renumbered; a cycle is a problem
    naming the calls on it."""
    waiting = [0] * len(calls)
    readers = collections.defaultdict(list)
    for i, call in enumerate(calls):
        for d in set(_deps(call)):
            waiting[i] += 1
            readers[d].append(i)
    ready = collections.deque(i for i, w in enumerate(waiting) if w == 0)
    order = []
    while ready:
        i = ready.popleft()
        order.append(i)
        for j in readers[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    if len(order) < len(calls):
        stuck = [calls[i].label.removeprefix(where) for i, w in enumerate(waiting) if w > 0]
        more = f" and {len(stuck) - 10} more" if len(stuck) > 10 else ""
        problems.append(f"{where}the graph has a cycle: {'; '.join(stuck[:10])}{more} each wait for one another")
        return None, None
    position = {old: new for new, old in enumerate(order)}

    def renumber(r):
        return Ref(position[r.node], r.index) if isinstance(r, Ref) and r.node >= 0 else r

    out = []
    for i in order:
        c = calls[i]
        out.append(
            c._replace(
                args=tuple(renumber(r) for r in c.args),
                state=tuple(renumber(r) for r in c.state),
                mask=None if c.mask is None else tuple(renumber(r) for r in c.mask),
            )
        )
    return out, position


def read_graph(body, major, problems, make_layer, where="") -> GraphSpec:
    """The :class:`GraphSpec` of a functional model's ``config`` (``body``). ``make_layer(name,
    class, entry)`` returns the ``LayerSpec`` of one layer entry (or ``None``: its problem
    recorded)."""
    reader = _Reader(major, problems, make_layer, where)
    for entry in body.get("layers"):
        reader.entry(entry)
    in_triples, _ = _endpoints(body.get("input_layers"), "input_layers", problems)
    out_triples, single = _endpoints(body.get("output_layers"), "output_layers", problems)
    input_names: dict = {}
    for t in in_triples:
        if t[0] not in reader.inputs:
            problems.append(f"{where}`input_layers` names {t[0]!r}, which is not an InputLayer of the model")
        elif t[0] in input_names:
            problems.append(f"{where}`input_layers` names {t[0]!r} twice")
        else:
            input_names[t[0]] = len(input_names)
    calls = _resolve(reader, input_names)
    outputs = [reader.ref(t, f"{where}`output_layers`", input_names) for t in out_triples]
    calls, position = toposort(calls, problems, where)
    if calls is None:
        return GraphSpec([], reader.layers, [], [], single)
    outputs = [Ref(position[r.node], r.index) if r is not None and r.node >= 0 else r for r in outputs]
    inputs = [(n,) + reader.inputs[n] for n in input_names]
    return GraphSpec(inputs, reader.layers, calls, outputs, single)


def chain(layers, input_shape, input_dtype, name="input") -> GraphSpec:
    """A Sequential as a graph: each layer reads the one before (masks by the layers' rules)."""
    calls = [
        Call(k, (Ref(k - 1 if k else -1, 0),), label=f"{_where(s.name, s.class_name)} call 0")
        for k, s in enumerate(layers)
    ]
    return GraphSpec([(name, input_shape, input_dtype)], list(layers), calls, [Ref(len(calls) - 1, 0)], True)
