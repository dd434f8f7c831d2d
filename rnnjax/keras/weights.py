"""Weights of a Keras file -> the variables of an rnnjax model, by layer order and shape (Keras's
rule), with Keras 2's CuDNN <-> canonical conversions where the file and the model differ.

A layer's weights are one list in Keras's order (``layer.weights``: trainable, then
non-trainable; ``Bidirectional``: the forward layer's, then the backward layer's). Keras 2 HDF5
files give that list directly (``weight_names``); Keras 3 files store it under paths made from
the object graph (``layers/<snake class>[_n]/<attribute>/vars/<i>``), which :func:`k3_paths`
rebuilds from the module. On the rnnjax side the list is the layer's variables sorted by
:func:`slots`.
"""

from __future__ import annotations

import re

import numpy as np

import rnnjax
from rnnjax import kinds
from rnnjax.keras import formats
from rnnjax.keras.formats import KerasImportError
from rnnjax.keras.graph import KerasGraph

_CANON = (
    "embeddings",
    "kernel",
    "recurrent_kernel",
    "bias",
    "gamma",
    "beta",
    "moving_mean",
    "moving_variance",
    "scale",
    "concat_score_weight",
)
_RECURRENT = tuple(kind.linen_layer for kind in kinds.KINDS)


def snake_case(name: str) -> str:
    """Keras 3's ``to_snake_case`` (its three regexes): ``ConvLSTM2D`` -> ``conv_lstm2d``."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _rank(name: str):
    if name in _CANON:
        return (0, _CANON.index(name), name)
    if name.startswith("forward_"):
        return (1, 0, name)
    if name.startswith("backward_"):
        return (1, 1, name)
    found = re.match(r".*_(\d+)$", name)
    return (2, int(found.group(1)), name) if found else (3, 0, name)


def slots(variables: dict, name, module=None) -> list:
    """``[(collection, path, shape)]`` of the variables of the layer at ``name`` (a name, or a
    path of names into nested models), in Keras's weight order: Keras's names first
    (``embeddings, kernel, recurrent_kernel, bias, gamma, beta, moving_mean, moving_variance``),
    forward before backward, numbered ones by number, the rest alphabetically; a module with a
    ``keras_weight_order`` (a user's module for a custom layer: its parameter paths, ``'/'``-joined,
    in the order the Keras layer created its weights) in that order."""
    path = (name,) if isinstance(name, str) else tuple(name)
    out = []

    def walk(tree, col, at):
        for key in sorted(tree, key=_rank):
            value = tree[key]
            if isinstance(value, dict):
                walk(value, col, at + (key,))
            else:
                out.append((col, at + (key,), tuple(value.shape)))

    for col in ("params", "batch_stats"):
        tree = variables.get(col, {})
        for key in path:
            tree = tree.get(key, {}) if isinstance(tree, dict) else {}
        if tree:
            walk(tree, col, path)
    order = getattr(module, "keras_weight_order", None)
    if order is not None:
        rank = {str(p): i for i, p in enumerate(order)}
        return sorted(out, key=lambda s: (rank.get("/".join(s[1][len(path) :]), len(rank)), [_rank(p) for p in s[1]]))
    return sorted(out, key=lambda s: [_rank(p) for p in s[1]])


def _split(variables, path, graph, frozen):
    """Keras 2's weight list of a nested model, as two lists: the trainable weights of all its
    layers in order, then the non-trainable ones (a frozen layer's all; ``batch_stats``)."""
    trainable, fixed = [], []
    flags = graph.trainable or (True,) * len(graph.layers)
    for name, layer, flag in zip(graph.names, graph.layers, flags):
        sub = path + (name,)
        if isinstance(layer, KerasGraph):
            t, f = _split(variables, sub, layer, frozen or not flag)
        else:
            ss = slots(variables, sub, layer)
            t = [] if frozen or not flag else [x for x in ss if x[0] == "params"]
            f = ss if frozen or not flag else [x for x in ss if x[0] != "params"]
        trainable += t
        fixed += f
    return trainable, fixed


def model_slots(names, modules, variables, nested_grouped: bool) -> list:
    """``[(label, slots)]`` of a model's layers in order, as a file lists them: a nested model as
    one layer with Keras 2's grouping (``nested_grouped``: Keras 2 HDF5 and Keras 3's legacy
    ``.h5``), or expanded into its layers (``'inner/lstm'``; Keras 3 weights files)."""
    out = []
    for name, module in zip(names, modules):
        if not isinstance(module, KerasGraph):
            out.append((name, slots(variables, name, module)))
        elif nested_grouped:
            t, f = _split(variables, (name,), module, False)
            out.append((name, t + f))
        else:
            out += [
                (f"{name}/{label}", [(c, (name,) + p, sh) for c, p, sh in ss])
                for label, ss in model_slots(module.names, module.layers, _at(variables, name), False)
            ]
    return out


def _at(variables, name):
    return {col: tree[name] for col, tree in variables.items() if isinstance(tree, dict) and name in tree}


def _cells(module) -> list | None:
    cell = getattr(module, "cell", None)
    if isinstance(cell, rnnjax.StackedRNNCells):
        return list(cell.cells)
    return list(cell) if isinstance(cell, (list, tuple)) else None


def k3_paths(module) -> list:
    """The ``vars`` groups of one layer in a Keras 3 weights file, in Keras's weight order."""
    if isinstance(module, rnnjax.Bidirectional):
        backward = module.backward_layer if module.backward_layer is not None else module.layer
        return [f"forward_layer/{p}" for p in k3_paths(module.layer)] + [
            f"backward_layer/{p}" for p in k3_paths(backward)
        ]
    if isinstance(module, rnnjax.TimeDistributed):
        return [f"layer/{p}" for p in k3_paths(module.layer)]
    cells = _cells(module)
    if cells is not None:
        counts: dict = {}
        paths: list = []
        for cell in cells:
            base = snake_case(type(cell).__name__)
            n = counts.get(base, 0)
            counts[base] = n + 1
            paths.append(f"cell/cells/{base if n == 0 else f'{base}_{n}'}/vars")
        return paths
    if isinstance(module, (rnnjax.RNN,) + _RECURRENT):
        return ["cell/vars"]
    return ["vars"]


def read_k2(group, path=None) -> list:
    """``[(layer name, [(weight name, array)])]`` from a Keras 2 weights group, in ``layer_names``
    order."""
    names = formats.attr_list(group, "layer_names")
    if names is None:
        raise KerasImportError("an HDF5 weights group without `layer_names`", path)
    out = []
    for name in names:
        if name not in group:
            raise KerasImportError(f"layer {name!r} is listed in layer_names but has no weights group", path)
        g = group[name]
        weight_names = formats.attr_list(g, "weight_names") or []
        arrays = []
        for w in weight_names:
            if w not in g:
                raise KerasImportError(f"layer {name!r}: weight {w!r} is listed but missing", path)
            arrays.append((w, formats.read_array(g[w])))
        if name == "top_level_model_weights" and not arrays:
            continue
        out.append((name, arrays))
    return out


def read_k3(root, layers, path=None) -> list:
    """``[(layer name, [(weight path, array)])]`` from a Keras 3 weights file, for ``layers``
    ``[(keras class name, layer name, module)]`` in model order; a nested model's layers come
    one by one (``'inner/lstm'``), from ``layers/<its class>/layers/...``. A layer not at its
    path (the attributes of a subclassed model) is looked up by the ``name`` attribute Keras 3.6+
    gives each ``vars`` group."""
    top = "layers" if "layers" in root else "_layer_checkpoint_dependencies"
    if top not in root:
        raise KerasImportError("a Keras 3 weights file without a `layers` group", path)
    out: list = []
    problems: list[str] = []
    named: list = []
    _read_container(root, top, layers, "", out, problems, named)
    if problems:
        raise KerasImportError(problems, path)
    return out


def _named_groups(root) -> dict:
    """``{layer name: group path}`` from the ``name`` attributes of the file's ``vars`` groups
    (names that appear once)."""
    found = {}

    def visit(name, obj):
        if name.endswith("vars") and "name" in obj.attrs:
            key = formats.text(obj.attrs["name"])
            found[key] = None if key in found else name[: -len("vars")].rstrip("/")

    root.visititems(visit)
    return {k: v for k, v in found.items() if v is not None}


def _read_container(root, top, layers, prefix, out, problems, named):
    """Reads ``layers`` of the container at ``top`` into ``out``; ``named``: ``[]``, or the file's
    :func:`_named_groups` once a layer was not at its path."""
    counts: dict = {}
    for cls, name, module in layers:
        base = snake_case(cls)
        n = counts.get(base, 0)
        counts[base] = n + 1
        where = f"{top}/{base if n == 0 else f'{base}_{n}'}"
        if isinstance(module, KerasGraph):
            classes = module.classes or [type(m).__name__ for m in module.layers]
            _read_container(
                root,
                f"{where}/layers",
                list(zip(classes, module.names, module.layers)),
                f"{prefix}{name}/",
                out,
                problems,
                named,
            )
            continue
        if root.get(where) is None:
            if not named:
                named.append(_named_groups(root))
            where = named[0].get(name, where)
        arrays = []
        for sub in k3_paths(module):
            full = f"{where}/{sub}"
            if full not in root:
                if root.get(where) is not None and sub != "vars":
                    problems.append(f"layer {prefix + name!r}: the file has no group {full}")
                continue
            group = root[full]
            for key in sorted(group, key=lambda k: int(k) if k.isdigit() else -1):
                arrays.append((f"{full}/{key}", formats.read_array(group[key])))
        out.append((prefix + name, arrays))


def _convert(arrays, shapes, name):
    """Keras 2's CuDNN <-> canonical conversion of a (kernel, recurrent_kernel, bias) list whose
    bias shape differs from the model's; ``None`` when no rule applies."""
    if len(arrays) != 3 or len(shapes) != 3 or arrays[0].ndim != 2 or arrays[1].ndim != 2:
        return None
    units = arrays[1].shape[0]
    gates = arrays[1].shape[1] // max(units, 1)
    fb, tb = tuple(arrays[2].shape), shapes[2]
    rules = {
        (4, (8 * units,), (4 * units,)): rnnjax.cudnn.cudnn_lstm_to_lstm,
        (4, (4 * units,), (8 * units,)): rnnjax.cudnn.lstm_to_cudnn_lstm,
        (3, (6 * units,), (2, 3 * units)): rnnjax.cudnn.cudnn_gru_to_gru,
        (3, (2, 3 * units), (6 * units,)): rnnjax.cudnn.gru_to_cudnn_gru,
    }
    rule = rules.get((gates, fb, tb))
    if rule is None:
        if gates == 3 and (3 * units,) in (fb, tb):
            raise KerasImportError(
                f"layer {name!r}: a GRU bias of shape {fb} cannot load into one of shape {tb}: "
                "GRU(reset_after=False) is not compatible with CuDNNGRU/reset_after=True"
            )
        return None
    return [np.asarray(a) for a in rule([np.asarray(a, np.float32) for a in arrays])]


def assign(file_layers, model_layers, variables, path=None) -> dict:
    """New variables with the file's arrays; ``model_layers``: ``[(label, slots)]`` in model order
    (:func:`model_slots`; a plain layer name stands for ``(name, slots(variables, name))``).
    Layers without weights on either side are skipped (Keras's rule); every count or shape
    mismatch is listed in one :class:`KerasImportError`."""
    model_layers = [(m, slots(variables, m)) if isinstance(m, str) else m for m in model_layers]
    file_w = [(n, a) for n, a in file_layers if a]
    model_w = [(n, s) for n, s in model_layers if s]
    if len(file_w) != len(model_w):
        raise KerasImportError(
            f"the file has {len(file_w)} layers with weights {[n for n, _ in file_w]}, the model "
            f"{len(model_w)} {[n for n, _ in model_w]}",
            path,
        )
    out = _copy(variables)
    problems = []
    for (fname, arrays), (mname, ss) in zip(file_w, model_w):
        values = [a for _, a in arrays]
        shapes = [s[2] for s in ss]
        label = f"layer {mname!r}" + (f" (file layer {fname!r})" if fname != mname else "")
        if len(values) == len(shapes) and [tuple(v.shape) for v in values] != shapes:
            values = _convert(values, shapes, mname) or values
        if len(values) != len(shapes):
            problems.append(f"{label}: the file has {len(values)} weights, the model expects {len(shapes)}")
            continue
        for (wname, _), value, (col, p, shape) in zip(arrays, values, ss):
            if tuple(value.shape) != shape:
                problems.append(
                    f"{label}: weight {wname!r} has shape {tuple(value.shape)}, the model expects "
                    f"{shape} ({'/'.join(p)})"
                )
                continue
            _set(out[col], p, np.asarray(value, np.float32))
    if problems:
        raise KerasImportError(problems, path)
    return out


def _copy(tree):
    return {k: _copy(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value
