"""A Keras model config (Keras 2 ``model_config`` or Keras 3 ``config.json``) read as data: the
safety scan, and the model's layers and their connections.

The scan walks the whole JSON before anything is built and refuses every object that would
make Keras run or import code: ``Lambda`` and the other code-bearing layers, serialized
functions, classes registered by the user, modules outside ``keras`` (a layer's own class is
judged when it is built, :mod:`rnnjax.keras.custom`). The loader only ever compares the strings
it finds with its own tables; it never looks a name up in Python. Layers the user supplies
(``custom_objects``) are not scanned: their configs are only data handed to the user's code.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from rnnjax.keras import topology
from rnnjax.keras.formats import KerasImportError
from rnnjax.keras.topology import MODEL_CLASSES, GraphSpec

# Layers that carry code (marshalled bytecode, a function reference, a SavedModel path, a JAX
# function): never deserialised.
CODE_CLASSES = {
    "Lambda": "it holds Python code (marshalled bytecode or a function reference)",
    "__lambda__": "it is marshalled Python bytecode",
    "function": "it names a Python function",
    "TFOpLambda": "it names a TensorFlow function",
    "SlicingOpLambda": "it names a TensorFlow function",
    "TFSMLayer": "it loads a TensorFlow SavedModel from a path",
    "JaxLayer": "it wraps a Python function",
    "FlaxLayer": "it wraps a Python module",
}


@dataclasses.dataclass
class LayerSpec:
    name: str
    class_name: str
    config: dict
    entry: dict = dataclasses.field(default_factory=dict)  # the whole entry (module, registered_name)
    graph: GraphSpec | None = None  # a nested model's graph
    trainable: bool = True
    custom: str | None = None  # the custom_objects key that supplies this layer


@dataclasses.dataclass
class ModelSpec:
    kind: str  # 'sequential' or 'functional'
    layers: list  # LayerSpec, without InputLayer and mask op nodes
    input_shape: tuple | None  # a Sequential's (batch, ...) with None for unknown sizes
    input_dtype: str
    keras_major: int
    version: str
    graph: GraphSpec | None = None  # a functional model's graph
    problems: list = dataclasses.field(default_factory=list)  # everything refused, all at once


def keras_major(version: str | None) -> int:
    """The major version from ``'2.21.0'``, ``'2.2.4-tf'``, ``'3.15.1'``; a missing one is Keras 1."""
    if version is None:
        return 1
    found = re.match(r"\s*(\d+)", str(version))
    return int(found.group(1)) if found else 1


def scan(obj, where: str, problems: list) -> None:
    """Collects into ``problems`` every code-bearing or custom object in a config tree."""
    if isinstance(obj, list):
        for item in obj:
            scan(item, where, problems)
        return
    if not isinstance(obj, dict):
        return
    cls = obj.get("class_name")
    if isinstance(cls, str):
        here = where
        config = obj.get("config")
        if isinstance(config, dict) and isinstance(config.get("name"), str):
            here = f"layer {config['name']!r} ({cls})"
        module, registered = obj.get("module"), obj.get("registered_name")
        if cls in CODE_CLASSES:
            problems.append(
                f"{here}: {cls} refused: {CODE_CLASSES[cls]}; rnnjax never runs code from a file "
                "(rebuild this part in JAX and use rnnjax.load_keras_weights)"
            )
            return
        if module is not None and not (isinstance(module, str) and (module == "keras" or module.startswith("keras."))):
            problems.append(f"{here}: class {cls!r} from module {module!r} refused: only Keras's own classes load")
            return
        if registered is not None and registered != cls:
            problems.append(f"{here}: custom class {registered!r} refused: only Keras's own classes load")
            return
        where = here
    for key, value in obj.items():
        if key == "function" and isinstance(value, (list, str)):
            problems.append(f"{where}: a serialized function ({key!r}) refused; rnnjax never runs code from a file")
        elif key in ("__typespec__", "__numpy__", "__tensor__") or value == "__lambda__":
            problems.append(f"{where}: {key!r} refused (an object rnnjax does not deserialise)")
        else:
            scan(value, where, problems)


def _strip_tuples(obj):
    """Keras 2's ``{"class_name": "__tuple__", "items": [...]}`` as plain lists."""
    if isinstance(obj, dict):
        if obj.get("class_name") in ("__tuple__", "TensorShape") and "items" in obj:
            return [_strip_tuples(v) for v in obj["items"]]
        return {k: _strip_tuples(v) if isinstance(v, (dict, list)) else v for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strip_tuples(v) if isinstance(v, (dict, list)) else v for v in obj]
    return obj


def _subclassed(cls) -> str:
    return (
        f"the model is of class {cls!r}, not Sequential or Functional: a subclassed model, whose architecture "
        "is Python code (its call method); the file has no graph of layers to read. Build the same model from "
        "rnnjax layers (or any Flax module) and load the weights into it with rnnjax.load_keras_weights(path, "
        "model, variables) (Keras's order; shapes checked)"
    )


def parse_model(config: Any, version: str | None, custom=None) -> ModelSpec:
    """The layers and connections of a model config. Problems that leave the rest readable
    (code-bearing objects, custom classes, malformed layers or connections) are collected in
    ``ModelSpec.problems``, all of them; ``custom`` (:class:`rnnjax.keras.custom.CustomObjects`)
    names the layers the user supplies, whose configs are not scanned (they are only data to the
    user's factory). Raises :class:`KerasImportError` when there is no model to read."""
    if not isinstance(config, (dict, list)):
        raise KerasImportError(f"the model config must be a JSON object, got {type(config).__name__}")
    major = keras_major(version)
    if isinstance(config, list):  # Keras < 2.2 Sequential
        config = {"class_name": "Sequential", "config": {"layers": config}}
    config = _strip_tuples(config)
    cls, body = config.get("class_name"), config.get("config")
    if cls not in MODEL_CLASSES and isinstance(cls, str) and cls not in CODE_CLASSES:
        raise KerasImportError(_subclassed(cls))
    problems: list[str] = []
    # Keras 3's compile settings (loss, metrics, optimizer) are data for rnnjax.keras.training, never
    # built here: a loss named by a function reference is not code to scan for.
    scan({k: v for k, v in config.items() if k not in ("config", "compile_config")}, "the model", problems)
    if cls not in MODEL_CLASSES or not isinstance(body, (dict, list)):
        raise KerasImportError(
            problems or [f"the top-level object is {cls!r}, not a Keras model (Sequential or Functional)"]
        )
    if major < 2:
        raise KerasImportError(
            f"a Keras 1 (or older) model (keras_version={version!r}) is not supported; re-save it with Keras 2"
        )
    body = {"layers": body} if isinstance(body, list) else body
    reader = _Layers(major, problems, custom)
    try:
        kind, layers, shape, dtype, graph = reader.model(cls, body, "")
    except (TypeError, AttributeError, KeyError, IndexError, ValueError) as err:
        if isinstance(err, KerasImportError):
            raise
        raise KerasImportError(problems + [f"a malformed model config ({type(err).__name__}: {err})"]) from None
    return ModelSpec(kind, layers, shape, dtype, major, str(version), graph, problems)


def _entries(layers, where):
    if not isinstance(layers, list) or not layers:
        raise KerasImportError(f"{where}the model config has no layers")
    for i, entry in enumerate(layers):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("class_name"), str)
            or not isinstance(entry.get("config"), dict)
        ):
            raise KerasImportError(f"{where}layer {i} of the model config is not a {{class_name, config}} object")
        yield entry


class _Layers:
    """Reads the layers of a model config (nested models recursively, to ``MAX_NESTING`` levels)."""

    def __init__(self, major, problems, custom):
        self.major, self.problems, self.custom, self.depth = major, problems, custom, 0

    def model(self, cls, body, where):
        """``(kind, layers, input shape, input dtype, graph)`` of one model's ``config``."""
        scan({k: v for k, v in body.items() if k != "layers"}, f"{where}the model", self.problems)
        if cls == "Sequential":
            return self._sequential(body, where)
        graph = topology.read_graph(
            {**body, "layers": list(_entries(body.get("layers"), where))},
            self.major,
            self.problems,
            lambda n, c, e: self.layer(n, c, e, where),
            where,
        )
        return "functional", graph.layers, None, "float32", graph

    def _sequential(self, body, where):
        specs: list = []
        shape, dtype = None, "float32"
        for i, entry in enumerate(_entries(body.get("layers"), where)):
            cfg = entry["config"]
            if entry["class_name"] == "InputLayer":
                shape, dtype = topology._input_of(cfg)
                continue
            if not specs and shape is None and ("batch_input_shape" in cfg or "batch_shape" in cfg):
                shape, dtype = topology._input_of(cfg)
            spec = self.layer(str(cfg.get("name", f"layer_{i}")), entry["class_name"], entry, where)
            if spec is not None:
                specs.append(spec)
        if shape is None and isinstance(body.get("build_input_shape"), list):
            shape = tuple(body["build_input_shape"])
        return "sequential", specs, shape, dtype, None

    def layer(self, name, cls, entry, where) -> LayerSpec | None:
        """The spec of one layer entry, or ``None`` with its problem recorded."""
        cfg = entry["config"]
        trainable = cfg.get("trainable", True) is not False
        key = None if self.custom is None else self.custom.find(name, cls, entry)
        if key is not None:  # the user's code: its config is data for their factory, never scanned
            return LayerSpec(name, cls, cfg, entry, None, trainable, key)
        here = f"{where}layer {name!r} ({cls})"
        if cls in CODE_CLASSES:
            self.problems.append(
                f"{here}: {cls} refused: {CODE_CLASSES[cls]}; rnnjax never runs code from a file "
                f"(supply your own module for it: custom_objects={{{name!r}: factory}}, or rebuild "
                "this part in JAX and use rnnjax.load_keras_weights)"
            )
            return None
        scan(entry.get("inbound_nodes"), here, self.problems)
        if cls not in MODEL_CLASSES:
            scan(cfg, here, self.problems)
            return LayerSpec(name, cls, cfg, entry, None, trainable)
        if self.depth >= topology.MAX_NESTING:
            self.problems.append(f"{here}: models nested more than {topology.MAX_NESTING} deep are not supported")
            return None
        self.depth += 1
        try:
            kind, layers, shape, dtype, graph = self.model(cls, cfg, f"{where}in nested model {name!r}: ")
        finally:
            self.depth -= 1
        if kind == "sequential":
            graph = topology.chain(layers, shape, dtype)
        return LayerSpec(name, cls, cfg, entry, graph, trainable)
