"""A Keras model config (Keras 2 ``model_config`` or Keras 3 ``config.json``) read as data: the
safety scan, and the model's layers and their connections.

The scan walks the whole JSON before anything is built and refuses every object that would
make Keras run or import code: ``Lambda`` and the other code-bearing layers, serialized
functions, classes registered by the user, modules outside ``keras``. The loader only ever
compares the strings it finds with its own tables; it never looks a name up in Python.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional

from rnnjax.keras.formats import KerasImportError

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
MODEL_CLASSES = ("Sequential", "Functional", "Model")
# Keras 3 functional graphs spell out mask computations as op nodes; only these may appear, and
# only on the way to a layer's `mask=` (rnnjax recomputes masks by Keras's layer rules).
MASK_OPS = {"NotEqual", "Any", "All", "ExpandDims", "ZerosLike", "OnesLike", "LogicalOr", "LogicalAnd",
            "Concatenate", "BroadcastTo", "Cast", "Squeeze", "ConvertToTensor"}  # the last: Attention.compute_mask
_OPS_MODULE = "keras.src.ops"


@dataclasses.dataclass
class LayerSpec:
    name: str
    class_name: str
    config: dict
    inputs: list  # names of the inbound layers (functional models)


@dataclasses.dataclass
class ModelSpec:
    kind: str  # 'sequential' or 'functional'
    layers: list  # LayerSpec, without InputLayer and mask op nodes
    input_shape: Optional[tuple]  # (batch, ...) with None for unknown sizes
    input_dtype: str
    input_name: Optional[str]
    output_name: Optional[str]
    keras_major: int
    version: str


def keras_major(version: Optional[str]) -> int:
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
            problems.append(f"{here}: {cls} refused: {CODE_CLASSES[cls]}; rnnjax never runs code from a file "
                            "(rebuild this part in JAX and use rnnjax.load_keras_weights)")
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
        return {k: _strip_tuples(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strip_tuples(v) for v in obj]
    return obj


def _input_of(cfg: dict):
    shape = cfg.get("batch_shape", cfg.get("batch_input_shape"))
    dtype = cfg.get("dtype", "float32")
    if isinstance(dtype, dict):
        dtype = dtype.get("config", {}).get("name", "float32")
    return (None if shape is None else tuple(shape)), str(dtype)


def parse_model(config: Any, version: Optional[str]) -> ModelSpec:
    """The layers and connections of a model config; raises :class:`KerasImportError` listing
    every code-bearing object, custom class and malformed part."""
    if not isinstance(config, (dict, list)):
        raise KerasImportError(f"the model config must be a JSON object, got {type(config).__name__}")
    if isinstance(config, dict) and "compile_config" in config:
        # Keras 3's compile settings (loss, metrics, optimizer) are data for rnnjax.keras.training,
        # never built here: a loss named by a function reference is not code to scan for.
        config = {k: v for k, v in config.items() if k != "compile_config"}
    problems = []
    scan(config, "the model", problems)
    if problems:
        raise KerasImportError(problems)
    config = _strip_tuples(config)
    major = keras_major(version)
    if major < 2:
        raise KerasImportError(f"a Keras 1 (or older) model (keras_version={version!r}) is not supported; "
                               "re-save it with Keras 2")
    if isinstance(config, list):  # Keras < 2.2 Sequential
        config = {"class_name": "Sequential", "config": {"layers": config}}
    cls, body = config.get("class_name"), config.get("config")
    if cls not in MODEL_CLASSES or not isinstance(body, (dict, list)):
        raise KerasImportError(f"the top-level object is {cls!r}, not a Keras model (Sequential or Functional)")
    if isinstance(body, list):
        body = {"layers": body}
    layers = body.get("layers")
    if not isinstance(layers, list) or not layers:
        raise KerasImportError("the model config has no layers")
    version = str(version)
    try:
        if cls == "Sequential":
            return _sequential(layers, major, version, body.get("build_input_shape"))
        return _functional(body, layers, major, version)
    except (TypeError, AttributeError, KeyError, IndexError, ValueError) as err:
        if isinstance(err, KerasImportError):
            raise
        raise KerasImportError(f"a malformed model config ({type(err).__name__}: {err})") from None


def _entries(layers):
    for i, entry in enumerate(layers):
        if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str) or \
                not isinstance(entry.get("config"), dict):
            raise KerasImportError(f"layer {i} of the model config is not a {{class_name, config}} object")
        yield entry


def _nested(entry):
    if entry["class_name"] in MODEL_CLASSES:
        return f"layer {entry['config'].get('name')!r} ({entry['class_name']}): nested models are not supported"
    return None


def _sequential(layers, major, version, build_shape=None) -> ModelSpec:
    specs, shape, dtype, problems = [], None, "float32", []
    for i, entry in enumerate(_entries(layers)):
        cfg = entry["config"]
        if entry["class_name"] == "InputLayer":
            shape, dtype = _input_of(cfg)
            continue
        if (note := _nested(entry)) is not None:
            problems.append(note)
            continue
        if i == 0 or (not specs and shape is None):
            shape, dtype = _input_of(cfg) if ("batch_input_shape" in cfg or "batch_shape" in cfg) else (shape, dtype)
        specs.append(LayerSpec(str(cfg.get("name", f"layer_{i}")), entry["class_name"], cfg, []))
    if problems:
        raise KerasImportError(problems)
    if shape is None and isinstance(build_shape, list):
        shape = tuple(build_shape)
    return ModelSpec("sequential", specs, shape, dtype, None, None, major, version)


def _history(arg):
    """``(layer, node, tensor)`` of one Keras 3 ``__keras_tensor__`` argument, else ``None``."""
    if isinstance(arg, dict) and arg.get("class_name") == "__keras_tensor__":
        return tuple(arg["config"]["keras_history"])
    return None


def _node_inputs(node, major) -> tuple:
    """The input tensors ``[(layer, node, tensor)]`` of one inbound node and its kwargs."""
    if major >= 3 and isinstance(node, dict):
        args = node.get("args", [])
        flat = args[0] if len(args) == 1 and isinstance(args[0], list) else args
        tensors = [h for h in (_history(a) for a in flat) if h is not None]
        return tensors, dict(node.get("kwargs", {}))
    tensors, kwargs = [], {}
    for item in node:
        tensors.append(tuple(item[:3]))
        if len(item) > 3 and isinstance(item[3], dict):
            kwargs.update(item[3])
    return tensors, kwargs


def _endpoint(value, what):
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
        value = value[0]
    if not (isinstance(value, list) and len(value) == 3 and isinstance(value[0], str)):
        raise KerasImportError(f"{what}: only models with one input and one output are supported, got {value!r}")
    return value[0]


def _is_op(entry, major, ops) -> bool:
    """A Keras 3 op node: named by its module in ``.keras`` files; in Keras 3's legacy ``.h5`` (no
    module) by its class, and for ``Concatenate`` (also a layer) by inputs that are all op outputs."""
    module = entry.get("module")
    if module is not None:
        return str(module).startswith(_OPS_MODULE)
    cls = entry["class_name"]
    if major < 3 or cls not in MASK_OPS:
        return False
    if cls != "Concatenate":
        return True
    nodes = entry.get("inbound_nodes") or [{}]
    tensors, _ = _node_inputs(nodes[0], major)
    return bool(tensors) and all(t[0] in ops for t in tensors)


def _functional(body, layers, major, version) -> ModelSpec:
    input_name = _endpoint(body.get("input_layers"), "input_layers")
    output_name = _endpoint(body.get("output_layers"), "output_layers")
    specs, ops, problems, shape, dtype = [], set(), [], None, "float32"
    for entry in _entries(layers):
        cfg, cls = entry["config"], entry["class_name"]
        name = str(entry.get("name", cfg.get("name")))
        if _is_op(entry, major, ops):
            if cls not in MASK_OPS:
                problems.append(f"op node {name!r} ({cls}): only the mask ops Keras 3 writes are supported")
            ops.add(name)
            continue
        if cls == "InputLayer":
            if name != input_name:
                problems.append(f"layer {name!r}: a second input; only single-input models are supported")
            shape, dtype = _input_of(cfg)
            continue
        if (note := _nested(entry)) is not None:
            problems.append(note)
            continue
        nodes = entry.get("inbound_nodes", [])
        if len(nodes) != 1:
            problems.append(f"layer {name!r} ({cls}): called {len(nodes)} times; shared layers are not supported")
            continue
        tensors, kwargs = _node_inputs(nodes[0], major)
        for key in kwargs:
            if key not in ("mask", "training"):
                problems.append(f"layer {name!r} ({cls}): call argument {key!r} is not supported")
        if any(t[2] != 0 or t[1] != 0 for t in tensors):
            problems.append(f"layer {name!r} ({cls}): takes a second output or call of a layer; not supported")
        if any(t[0] in ops for t in tensors):
            problems.append(f"layer {name!r} ({cls}): takes an op node's output as data; not supported")
        specs.append(LayerSpec(name, cls, cfg, [t[0] for t in tensors]))
    if problems:
        raise KerasImportError(problems)
    return ModelSpec("functional", specs, shape, dtype, input_name, output_name, major, version)
