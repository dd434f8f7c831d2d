"""``custom_objects``: the user's own Flax modules for layers rnnjax does not build (a Keras user's
custom layers, a ``Lambda``), with the user's code and never the file's.

``load_keras(path, custom_objects={key: factory})``: ``key`` names a layer class (``'CTCLayer'``,
or the registered ``'package>CTCLayer'``) or one layer by its name (the only way to supply a
``Lambda`` layer, whose code differs from one layer to the next, or to replace a nested model).
``factory(config)`` gets the layer's ``config`` as plain JSON data (dicts, lists, strings,
numbers, booleans, ``None``; checked, and a copy, so the factory cannot change what the loader
reads) and returns a Flax linen module; its variables are matched with the file's weights as
any layer's are (Keras's order, shapes checked; see :func:`rnnjax.keras.weights.slots`).
Nothing in such a layer's config is looked up or run by rnnjax.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from rnnjax.keras.formats import KerasImportError
from rnnjax.keras.topology import MODEL_CLASSES

# Layer classes that carry code: only a layer-name key supplies them.
_CODE_LAYERS = ("Lambda", "TFOpLambda", "SlicingOpLambda", "TFSMLayer", "JaxLayer", "FlaxLayer")
_JSON_SCALARS = (str, int, float, bool, type(None))


def identity(cls: str, entry: dict) -> str:
    """The name a layer's class is known by: its registered name (``'package>Name'``, Keras 3
    ``.keras``) when it has one, else its class name (which Keras 2 and Keras 3's legacy ``.h5``
    set to the registered name)."""
    registered = entry.get("registered_name")
    return registered if isinstance(registered, str) and registered else cls


def _foreign_module(entry: dict):
    module = entry.get("module")
    if module is None or (isinstance(module, str) and (module == "keras" or module.startswith("keras."))):
        return None
    return module


def is_custom(cls: str, entry: dict) -> bool:
    """Whether a layer entry names a class of the user's rather than Keras's own."""
    return identity(cls, entry) != cls or ">" in cls or _foreign_module(entry) is not None


def unknown_class(name: str, cls: str, entry: dict, config: dict) -> str:
    """The problem of a layer whose class rnnjax does not build: what it is, its config keys, and
    how to supply it; only what every format records (a Keras 3 ``.keras`` file also names the
    class's module, the ``.h5`` of the same model does not), so the same model gives the same text."""
    ident = identity(cls, entry)
    kind = "custom class" if ">" in ident else "class"
    keys = sorted(config) if isinstance(config, dict) else []
    return (
        f"layer {name!r}: {kind} {ident!r} refused: rnnjax does not build it and runs no code from a file; "
        f"its config keys: {keys}. Supply your own Flax module for it: load_keras(path, custom_objects="
        f"{{{ident!r}: factory}}), where factory(config) gets the layer's config as JSON data and returns the "
        "module"
    )


def json_data(value, where: str):
    """A copy of ``value`` made only of JSON values (dict with str keys, list, str, int, float,
    bool, None); anything else raises :class:`KerasImportError` naming where it is. Iterative,
    so any depth is read in time proportional to the size."""
    out: list = [None]
    todo: list[tuple[Any, Any, Any, str]] = [(value, out, 0, where)]  # (item, holder, slot, path)
    while todo:
        item, holder, slot, path = todo.pop()
        if type(item) in _JSON_SCALARS:  # exact types: no str/float subclasses (numpy scalars)
            holder[slot] = item
        elif type(item) is dict:
            copy: Any = {}
            holder[slot] = copy
            for k, v in item.items():
                if not isinstance(k, str):
                    raise KerasImportError(f"{path}: a key {k!r} of type {type(k).__name__} is not JSON data")
                copy[k] = None
                todo.append((v, copy, k, f"{path}[{k!r}]"))
        elif type(item) is list:
            copy = [None] * len(item)
            holder[slot] = copy
            todo.extend((v, copy, i, f"{path}[{i}]") for i, v in enumerate(item))
        else:
            raise KerasImportError(f"{path}: a {type(item).__name__} is not JSON data")
    return out[0]


class CustomObjects:
    """The user's ``custom_objects``, checked, and which of its keys matched a layer."""

    def __init__(self, mapping):
        if mapping is None:
            mapping = {}
        if not isinstance(mapping, Mapping):
            raise TypeError(
                "`custom_objects`: expected a dict {class name, registered name or layer name: "
                f"factory(config) -> Flax module}}, got {type(mapping).__name__}."
            )
        for key, factory in mapping.items():
            if not isinstance(key, str) or not key:
                raise TypeError(
                    f"`custom_objects`: keys must be non-empty strings (class or layer names), got {key!r}."
                )
            if not callable(factory):
                raise TypeError(
                    f"`custom_objects[{key!r}]`: expected a callable factory(config) -> Flax module, got "
                    f"{type(factory).__name__}."
                )
        self.mapping, self.used = dict(mapping), set()

    def find(self, name: str, cls: str, entry: dict):
        """The key that supplies layer ``name`` of class ``cls``, or ``None``: its layer name first,
        then (not for code-bearing layers or models) its registered name, class name, or the class
        part of ``'package>Name'``."""
        keys = [name]
        if cls not in _CODE_LAYERS and cls not in MODEL_CLASSES:
            ident = identity(cls, entry)
            keys += [ident, cls, ident.rsplit(">", 1)[-1]]
        for key in keys:
            if key in self.mapping:
                self.used.add(key)
                return key
        return None

    def unused(self) -> list:
        """A problem for each key that matched no layer."""
        return [
            f"custom_objects key {key!r} matches no layer of the model (keys are layer class names, registered "
            "names 'package>Name', or layer names; a Lambda layer or a nested model is matched by its layer name "
            "only)"
            for key in self.mapping
            if key not in self.used
        ]

    def build(self, key: str, name: str, config: dict):
        """``(module, problem)``: the user's module for layer ``name`` (named ``name``), or ``None``
        and what went wrong."""
        where = f"layer {name!r} (custom_objects[{key!r}])"
        data = json_data(config, f"{where} config")
        try:
            module = self.mapping[key](data)
        except Exception as err:  # noqa: BLE001 - the user's code: report what it raised, with the layer
            return None, f"{where}: the factory raised {type(err).__name__}: {err}"
        if not isinstance(module, nn.Module):
            return None, f"{where}: the factory returned a {type(module).__name__}, expected a Flax linen module"
        return module.clone(name=name), None
