"""What a Keras file saved for training, read as data: the compile settings (loss, metrics,
optimizer config) and the optimizer's state (step counter, slots).

Where they are: a ``.keras`` archive has ``config.json``'s ``compile_config`` and the ``optimizer``
group of ``model.weights.h5`` (``optimizer/vars/0..``: Keras's ``optimizer.variables`` in order);
a full-model ``.h5`` (Keras 2, tf-keras, or Keras 3's legacy writer) has the root attribute
``training_config`` (JSON, ``optimizer_config`` inside) and the group ``optimizer_weights`` (its
``weight_names`` attribute in ``optimizer.weights`` order). Nothing is deserialised into objects;
names are compared with rnnjax's tables only (:mod:`rnnjax.keras.optimizer_rules`).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

from rnnjax.keras import config as kconfig
from rnnjax.keras import formats
from rnnjax.keras.formats import KerasImportError
from rnnjax.keras.optimizer_rules import GENERATIONS, ExponentialDecay, KerasRule

CLASSES = {"Adam": "adam", "AdamW": "adam", "SGD": "sgd", "RMSprop": "rmsprop", "Adagrad": "adagrad"}
_CLASS_KEYS = {
    "adam": {"beta_1", "beta_2", "epsilon", "amsgrad"},
    "sgd": {"momentum", "nesterov"},
    "rmsprop": {"rho", "momentum", "epsilon", "centered"},
    "adagrad": {"initial_accumulator_value", "epsilon"},
}
_CLIPS = {"clipnorm", "clipvalue", "global_clipnorm"}
_EMA = {"use_ema", "ema_momentum", "ema_overwrite_frequency"}
_GENERATION_KEYS = {
    "keras3": _CLIPS | _EMA | {"weight_decay", "loss_scale_factor", "gradient_accumulation_steps"},
    "tf_keras": _CLIPS | _EMA | {"weight_decay", "jit_compile", "is_legacy_optimizer"},
    "tf_keras_legacy": _CLIPS | {"decay", "is_legacy_optimizer"},
    "tf_keras_v1": {"decay", "clipnorm", "clipvalue"},
    "multi_backend": {"decay", "clipnorm", "clipvalue"},
}
# Keys that must keep the value that does not change the update rule.
_INERT = {"use_ema": (False, None), "loss_scale_factor": (None,), "gradient_accumulation_steps": (None, 0, 1)}
_SCHEDULE_KEYS = {"initial_learning_rate", "decay_steps", "decay_rate", "staircase", "name"}


@dataclasses.dataclass
class Training:
    """A file's training data: ``compile`` ``{'optimizer': {class_name, config}, 'loss',
    'metrics', 'weighted_metrics'}`` (``None``: not compiled); ``state`` ``[(name, value)]`` in
    the writer's order (the step counter an ``int``), ``None`` when the file has none;
    ``named``: whether the names are the writer's variable names (``.h5``), not indices."""

    version: str | None
    model_config: object
    compile: dict | None
    state: list | None
    named: bool


def _value(ds):
    """A state array, or the step counter as an ``int`` (a group or any other dtype: refused)."""
    integer = getattr(ds, "dtype", None) is not None and ds.dtype.kind in "iu"
    return formats.read_counter(ds) if integer else formats.read_array(ds)


def _archive(path) -> Training:
    archive = formats.read_zip(path)
    cfg = archive["config"]
    compile_cfg = cfg.get("compile_config") if isinstance(cfg, dict) else None
    with formats.open_hdf5(archive["weights"], path) as h5:
        formats.check_tree(h5)
        state = None
        if "optimizer/vars" in h5:
            group = h5["optimizer/vars"]
            keys = sorted(group, key=lambda k: int(k) if k.isdigit() else -1)
            state = [(f"optimizer/vars/{k}", _value(group[k])) for k in keys]
    return Training(str(archive["metadata"].get("keras_version", "3")), cfg, compile_cfg or None, state, False)


def _hdf5(path) -> Training:
    with formats.open_hdf5(path, path) as f:
        formats.check_tree(f)
        text = formats.attr_text(f, "model_config")
        if text is None:
            raise KerasImportError("not a full-model Keras file (no model_config): it holds no training state", path)
        compile_cfg = None
        if "training_config" in f.attrs:
            compile_cfg = formats.parse_json(formats.attr_text(f, "training_config"), "training_config")
            if isinstance(compile_cfg, dict) and "optimizer_config" in compile_cfg:
                compile_cfg = dict(compile_cfg, optimizer=compile_cfg.pop("optimizer_config"))
        state = None
        if "optimizer_weights" in f:
            group = f["optimizer_weights"]
            names = formats.attr_list(group, "weight_names") or []
            missing = [n for n in names if n not in group]
            if missing:
                raise KerasImportError(f"optimizer_weights lists {missing[:3]} but does not hold them", path)
            state = [(n, _value(group[n])) for n in names]
        version = formats.attr_text(f, "keras_version")
        return Training(version, formats.parse_json(text, "model_config"), compile_cfg, state, True)


def read_training(path) -> Training:
    """The compile settings and optimizer state of a Keras model file, as data (HDF5 links,
    foreign storage and non-numeric arrays refused as everywhere)."""
    path = str(path)
    return _archive(path) if formats.sniff(path) == "zip" else _hdf5(path)


def generation(data: Training, opt_config: dict) -> str:
    """Which Keras optimizer code wrote the state (a key of :data:`GENERATIONS`): Keras 3 by the
    version; tf-keras >= 2.11 by ``is_legacy_optimizer: false``; OptimizerV2 by its ``iter``
    counter or, without state, the ``name`` in its config; else the Keras-1-style optimizers
    (``iterations``, no ``name``) of tf.keras 1.x ('-tf' versions) or of multi-backend Keras."""
    major = kconfig.keras_major(data.version)
    if major >= 3:
        return "keras3"
    if opt_config.get("is_legacy_optimizer") is False:
        return "tf_keras"
    if opt_config.get("is_legacy_optimizer") is True:
        return "tf_keras_legacy"
    first = (data.state[0][0] if data.state else "").rsplit("/", 1)[-1].split(":")[0]
    if first == "iter" or (first != "iterations" and "name" in opt_config):  # OptimizerV2 configs have a name
        return "tf_keras_legacy"
    return "tf_keras_v1" if "-tf" in str(data.version) else "multi_backend"


def optimizer_class(entry, gen: str) -> str | None:
    """The Keras class name of a serialized optimizer (tf-keras >= 2.11 registers its own
    optimizers as ``Custom>Adam``...)."""
    name = entry.get("class_name") if isinstance(entry, dict) else None
    if gen == "tf_keras" and isinstance(name, str) and name.startswith("Custom>"):
        name = name[len("Custom>") :]
    return name


def _schedule(value, problems):
    """A float learning rate or an ``ExponentialDecay``, from a config value."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    cls = value.get("class_name") if isinstance(value, dict) else None
    if cls != "ExponentialDecay":
        problems.append(
            f"learning rate {cls or value!r}: only a float or an ExponentialDecay schedule is supported"
            + (" (a learning-rate schedule)" if cls else "")
        )
        return 0.0
    cfg = value.get("config") or {}
    extra = set(cfg) - _SCHEDULE_KEYS
    if extra or not isinstance(cfg.get("decay_steps"), numbers.Real) or cfg["decay_steps"] <= 0:
        problems.append(
            f"ExponentialDecay config {cfg!r}: expected numbers initial_learning_rate, decay_steps > 0, "
            f"decay_rate and a bool staircase{f' (unknown keys {sorted(extra)})' if extra else ''}"
        )
        return 0.0
    return ExponentialDecay(
        float(cfg.get("initial_learning_rate", 0.0)),
        float(cfg["decay_steps"]),
        float(cfg.get("decay_rate", 1.0)),
        bool(cfg.get("staircase", False)),
    )


def rule_from_config(entry, gen: str) -> KerasRule:
    """The :class:`KerasRule` of a serialized optimizer written by ``gen``; one
    :class:`KerasImportError` lists every unsupported class, key or value."""
    cls = optimizer_class(entry, gen)
    config = entry.get("config") if isinstance(entry, dict) else None
    if cls not in CLASSES or not isinstance(config, dict) or (cls == "AdamW" and gen not in ("keras3", "tf_keras")):
        raise KerasImportError(
            f"optimizer {cls!r} ({GENERATIONS[gen]}): not supported; rnnjax imports Adam, "
            f"AdamW (Keras 3, tf-keras >= 2.11), SGD, RMSprop and Adagrad"
        )
    kind, problems = CLASSES[cls], []
    # the class's default learning rate, should a config leave it out (Keras always writes it)
    args: dict[str, Any] = {
        "learning_rate": 0.01
        if kind == "sgd" or (kind == "adagrad" and gen in ("multi_backend", "tf_keras_v1"))
        else 0.001
    }
    allowed = _CLASS_KEYS[kind] | _GENERATION_KEYS[gen] | {"name", "learning_rate", "lr"}
    for key, value in config.items():
        if key not in allowed:
            problems.append(f"config key {key!r}={value!r} is not understood")
        elif key in _INERT and value not in _INERT[key]:
            what = "an exponential moving average of the weights" if key == "use_ema" else "not supported"
            problems.append(f"{key}={value!r} ({what}) is not supported (expected {_INERT[key][0]!r})")
        elif key in ("learning_rate", "lr"):
            args["learning_rate"] = _schedule(value, problems)
        elif (
            key in ("name", "jit_compile", "is_legacy_optimizer", "ema_momentum", "ema_overwrite_frequency")
            or key in _INERT
        ):
            continue
        elif key in ("amsgrad", "nesterov", "centered"):
            args[key] = bool(value)
        elif value is None and key in _CLIPS | {"weight_decay"}:
            continue
        elif not isinstance(value, numbers.Real) or isinstance(value, bool) or value < 0:
            problems.append(f"config key {key!r}: expected a number >= 0, got {value!r}")
        else:
            args[key] = float(value)
    if cls == "AdamW" and args.get("weight_decay") is None:
        problems.append("AdamW without weight_decay")
    if problems:
        raise KerasImportError([f"optimizer {cls} ({GENERATIONS[gen]}): {p}" for p in problems])
    return KerasRule(kind, gen, **args)


def _name_of(obj):
    """A loss's or metric's name, from a string, a serialized function or object, or a
    list/dict of them (per output)."""
    if obj is None or isinstance(obj, (str, numbers.Number)):
        return obj
    if isinstance(obj, list):
        return [_name_of(v) for v in obj]
    if isinstance(obj, dict):
        if "class_name" in obj:
            cfg = obj.get("config")
            return cfg if obj["class_name"] == "function" and isinstance(cfg, str) else str(obj["class_name"])
        return {str(k): _name_of(v) for k, v in obj.items()}
    return repr(obj)


def describe(data: Training) -> dict | None:
    """``{'optimizer', 'writer', 'step', 'config', 'state_arrays', 'loss', 'metrics'}`` of a
    file's training data (``None`` when it has none); for ``inspect_keras``."""
    if data.compile is None and not data.state:
        return None
    compile_cfg = data.compile if isinstance(data.compile, dict) else {}
    opt = compile_cfg.get("optimizer")
    opt = opt if isinstance(opt, dict) else {}
    raw_config = opt.get("config")
    config: dict = raw_config if isinstance(raw_config, dict) else {}
    gen = generation(data, config)
    step = next((v for _, v in data.state or [] if isinstance(v, int)), None)
    return {
        "optimizer": optimizer_class(opt, gen) if opt else None,
        "writer": GENERATIONS[gen],
        "step": step,
        "config": {k: v for k, v in config.items() if k != "name"},
        "state_arrays": len(data.state or []),
        "loss": _name_of(compile_cfg.get("loss")),
        "metrics": _name_of(compile_cfg.get("metrics")),
        "weighted_metrics": _name_of(compile_cfg.get("weighted_metrics")),
    }
