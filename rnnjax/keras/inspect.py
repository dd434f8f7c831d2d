"""``inspect_keras``: what a Keras file holds (format, version, layers, configs, weight shapes)
and what rnnjax cannot load, without building a model or reading a weight's values."""

from __future__ import annotations

import json

from rnnjax.keras import config as kconfig
from rnnjax.keras import formats, models, training
from rnnjax.keras.formats import KerasImportError
from rnnjax.keras.weights import snake_case

_NOISE = ("_initializer", "_regularizer", "_constraint")


def _summary(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if not k.endswith(_NOISE) and k not in ("dtype", "name", "trainable")}


def _shapes_k2(group, names) -> dict:
    out = {}
    for name in names:
        g = group.get(name)
        if g is None:
            continue
        out[name] = [
            (w, tuple(g[w].shape), str(g[w].dtype)) for w in formats.attr_list(g, "weight_names") or [] if w in g
        ]
    return out


def _shapes_k3(root) -> dict:
    top = "layers" if "layers" in root else "_layer_checkpoint_dependencies"
    out = {}
    for group in root[top] if top in root else {}:
        found: list = []
        root[f"{top}/{group}"].visititems(
            lambda n, o, found=found: found.append((n, tuple(o.shape), str(o.dtype))) if hasattr(o, "shape") else None
        )
        out[group] = found
    return out


def _read(path, info):
    """``(config or None, version, weight shapes by layer group)``, filling ``info``."""
    kind = formats.sniff(path)
    if kind == "zip":
        archive = formats.read_zip(path)
        info.update(format="Keras 3 .keras archive", keras_version=archive["metadata"].get("keras_version"))
        with formats.open_hdf5(archive["weights"], path) as h5:
            formats.check_tree(h5)
            return archive["config"], info["keras_version"], _shapes_k3(h5)
    with formats.open_hdf5(path, path) as f:
        return _read_hdf5(f, info)


def _read_hdf5(f, info):
    formats.check_tree(f)
    info.update(keras_version=formats.attr_text(f, "keras_version"), backend=formats.attr_text(f, "backend"))
    if "model_config" in f.attrs:
        info["format"] = "full-model HDF5 (the Keras 2 / tf-keras layout)"
        group = f["model_weights"] if "model_weights" in f else f
        info.setdefault("keras_version", formats.attr_text(group, "keras_version"))
        names = formats.attr_list(group, "layer_names") or []
        return (
            formats.parse_json(formats.attr_text(f, "model_config"), "model_config"),
            info["keras_version"],
            _shapes_k2(group, names),
        )
    if formats.has_list(f, "layer_names"):
        info["format"] = "Keras 2 / tf-keras save_weights HDF5 (weights only)"
        return None, info["keras_version"], _shapes_k2(f, formats.attr_list(f, "layer_names"))
    if "layers" in f or "_layer_checkpoint_dependencies" in f:
        info["format"] = "Keras 3 .weights.h5 (weights only)"
        return None, None, _shapes_k3(f)
    raise KerasImportError("an HDF5 file that is not a Keras model or weights file")


def _training(path):
    """``training.describe`` of the file, ``None`` without training data (or when unreadable:
    the layers' report says why)."""
    try:
        return training.describe(training.read_training(path))
    except KerasImportError:
        return None


def inspect_keras(path) -> dict:
    """A description of a Keras file: ``format``, ``keras_version``, ``backend``, ``layers``
    (each ``name``, ``class_name``, ``config`` without initializers/regularizers/constraints,
    ``weights`` ``[(name, shape, dtype)]``), ``training`` (what a compiled, trained model saved:
    ``optimizer`` class, ``step`` count, optimizer ``config``, ``loss`` and ``metrics`` names,
    ``writer``, ``state_arrays``; ``None`` without) and ``problems``: everything
    :func:`load_keras` would refuse, all at once (empty when the file loads). Never raises for a
    bad file."""
    info = {
        "path": str(path),
        "format": None,
        "keras_version": None,
        "backend": None,
        "layers": [],
        "training": _training(str(path)),
        "problems": [],
    }
    try:
        cfg, version, shapes = _read(str(path), info)
    except KerasImportError as err:
        info["problems"] = err.problems
        return info
    if cfg is None:
        info["layers"] = [{"name": n, "class_name": None, "config": None, "weights": w} for n, w in shapes.items()]
        info["problems"] = ["weights only: build the model and use rnnjax.load_keras_weights"]
        return info
    try:
        spec = kconfig.parse_model(cfg, version)
    except KerasImportError as err:
        info["problems"] = err.problems
        return info
    k3_names: dict = {}
    for s in spec.layers:
        key = s.name
        if spec.keras_major >= 3 and s.name not in shapes:  # Keras 3 paths count class names
            base = snake_case(s.class_name)
            n = k3_names.get(base, 0)
            k3_names[base] = n + 1
            key = base if n == 0 else f"{base}_{n}"
        info["layers"].append(
            {"name": s.name, "class_name": s.class_name, "config": _summary(s.config), "weights": shapes.get(key, [])}
        )
    info["problems"] = models.build_model(spec)[1]
    return info


def _is_layer(value) -> bool:
    return isinstance(value, dict) and "class_name" in value and isinstance(value.get("config"), dict)


def _value_lines(head: str, value, indent: str) -> list:
    """``head`` and ``value``: a nested layer as its class name with its config indented below, a
    dict a line per key, a list of dicts an item per line, anything else as JSON on the line."""
    if _is_layer(value):
        return [f"{indent}{head}{value['class_name']}"] + _config_lines(_summary(value["config"]), indent + "    ")
    if isinstance(value, dict) and value:
        return [f"{indent}{head}".rstrip()] + _config_lines(value, indent + "    ")
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        lines = [f"{indent}{head}".rstrip()]
        for item in value:
            lines += _value_lines("- ", item, indent + "    ")
        return lines
    return [f"{indent}{head}{json.dumps(value)}"]


def _config_lines(config: dict, indent: str) -> list:
    """A config as one ``key: value`` line per key, sorted, nested layers (Bidirectional's, an RNN's
    cells) indented below their key: short lines, nothing left out."""
    lines = []
    for key in sorted(config):
        lines += _value_lines(f"{key}: ", config[key], indent)
    return lines


def _training_lines(t: dict) -> list:
    """What a compiled, trained model saved: the optimizer (its config a line per key), the loss
    and the metrics."""
    lines = [
        f"  training: optimizer {t['optimizer']} ({t['writer']}), step {t['step']}, {t['state_arrays']} state arrays"
    ]
    if t["config"]:
        lines += ["      optimizer config:"] + _config_lines(t["config"], "        ")
    for key in ("loss", "metrics", "weighted_metrics"):
        if t[key] is not None:
            lines.append(f"      {key}: {json.dumps(t[key])}")
    return lines


def format_report(info: dict) -> str:
    """``inspect_keras``'s result as text: a block per layer with its config (a line per key) and
    its weights. A weights-only file records no classes; a Keras 3 one not the model's layer order
    either (its groups are listed alphabetically), and the report says so."""
    lines = [
        f"{info['path']}: {info['format'] or 'unreadable'}",
        f"  keras_version: {info['keras_version']}   backend: {info['backend']}",
    ]
    if info["layers"] and all(layer["class_name"] is None for layer in info["layers"]):
        order = (
            "alphabetical order (the file does not record the model's)"
            if "Keras 3" in (info["format"] or "")
            else "the model's order"
        )
        lines.append(f"  weights only: no layer classes recorded; layers in {order}")
    for layer in info["layers"]:
        lines.append(f"  {layer['name']}" + (f" ({layer['class_name']})" if layer["class_name"] else ""))
        if layer["config"]:
            lines.append("      config:")
            lines += _config_lines(layer["config"], "        ")
        if layer["weights"]:
            lines.append("      weights:")
        for name, shape, dtype in layer["weights"]:
            lines.append(f"        {name}: {shape} {dtype}")
    if info.get("training"):
        lines += _training_lines(info["training"])
    if info["problems"]:
        lines.append("  rnnjax cannot load this file:")
        lines += [f"    - {p}" for p in info["problems"]]
    else:
        lines.append("  rnnjax can load this file.")
    return "\n".join(lines)
