"""``load_keras_optimizer``: resume training where Keras stopped, with the optimizer a Keras file
saved (its class, hyperparameters, step count and slots) as an optax transformation and state.

The slots are matched to the parameters as Keras matches them: by order. Keras's optimizer holds
one slot per trainable weight of ``model.trainable_weights`` (layers in model order, each layer's
weights in Keras's order, frozen layers left out), laid out by the writer
(:meth:`KerasRule.slot_groups`); each slot's shape is checked against its parameter, and the
writer's variable names (``Adam/lstm/lstm_cell/kernel/m:0``, ``adam/..._momentum``) against the
slot kind where the file has them.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.keras import config as kconfig
from rnnjax.keras import training, weights
from rnnjax.keras.formats import KerasImportError
from rnnjax.keras.optimizer_rules import ExponentialDecay, KerasOptimizerState, keras_transform

_V1 = ("tf_keras_v1", "multi_backend")
# The slot kinds in the writers' variable names: Keras 3 ``<path>_<token>``, OptimizerV2
# ``<optimizer>/<weight>/<token>:0``.
_K3_TOKENS = {
    "m": "momentum",
    "v": "velocity",
    "vhat": "velocity_hat",
    "momentum": "momentum",
    "velocity": "velocity",
    "average_gradient": "average_gradient",
    "accumulator": "accumulator",
}
_V2_TOKENS = {
    "m": "m",
    "v": "v",
    "vhat": "vhat",
    "momentum": "momentum",
    "velocity": "rms",
    "average_gradient": "mg",
    "accumulator": "accumulator",
}


def _dict(tree):
    return {k: _dict(v) for k, v in tree.items()} if hasattr(tree, "items") else tree


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def _order(spec, params):
    """``([(path, shape)] of the trainable weights in Keras's order, frozen layer names)``: the
    layers in order, a nested model's layers in its order (``model.trainable_weights``)."""
    order: list = []
    frozen: list = []
    _collect(spec.layers, params, (), True, order, frozen)
    unknown = sorted(set(params) - {s.name for s in spec.layers})
    if unknown:
        raise KerasImportError(
            f"`variables` has parameters {unknown} that are no layer of the file's model: pass "
            "the variables load_keras returned for this file"
        )
    return order, frozen


def _collect(layers, params, path, trainable, order, frozen):
    for s in layers:
        at, on = path + (s.name,), trainable and s.config.get("trainable", True) is not False
        if s.graph is not None:
            _collect(s.graph.layers, params, at, on, order, frozen)
            continue
        found = [(p, shape) for col, p, shape in weights.slots({"params": params}, at) if col == "params"]
        if on:
            order.extend(found)
        elif found:
            frozen.append("/".join(at))


def _describe(value):
    return f"an integer {value}" if isinstance(value, int) else f"shape {tuple(np.shape(value))} {value.dtype}"


def _counters(data, rule, gen, problems):
    """``(step, learning-rate variable or None, slot arrays)`` from the state's head."""
    state = list(data.state or [])
    step = 0
    if state and isinstance(state[0][1], int):
        step = state.pop(0)[1]
    elif state and gen not in _V1:
        problems.append(
            f"the state starts with {state[0][0]!r} ({_describe(state[0][1])}), expected the step "
            "counter (an integer scalar)"
        )
    if not 0 <= step < 2**31:
        problems.append(f"the step counter {step} is outside [0, 2**31)")
    lr = None
    if gen == "keras3" and not isinstance(rule.learning_rate, ExponentialDecay) and state:
        name, value = state.pop(0)
        if isinstance(value, int) or np.shape(value) != ():
            problems.append(
                f"expected the learning rate (a float scalar) after the step counter, got {name!r} ({_describe(value)})"
            )
        else:
            lr = float(value)
    return step, lr, state


def _placeholders(rule, gen, state, n, problems):
    """Multi-backend / tf.keras 1.x Adam without AMSGrad still writes a ``(1,)`` ``vhat`` per weight."""
    if gen in _V1 and rule.kind == "adam" and not rule.amsgrad and len(state) == 3 * n:
        bad = [name for name, v in state[2 * n :] if isinstance(v, int) or np.shape(v) != (1,)]
        if bad:
            problems.append(f"expected {n} unused vhat placeholders of shape (1,) at the end, got {bad[:3]}")
        return state[: 2 * n]
    return state


def _match(data, rule, gen, order, frozen, state, problems):
    """``[(slot, weight index, array)]``, every count, shape and name mismatch in ``problems``."""
    layout = [(name, i) for group in rule.slot_groups() for i in range(len(order)) for name in group]
    if len(state) != len(layout):
        kinds = " + ".join("/".join(g) for g in rule.slot_groups()) or "none"
        problems.append(
            f"the file holds {len(state)} slot arrays; the model's {len(order)} trainable weights "
            f"{['/'.join(p) for p, _ in order][:8]} need {len(layout)} ({kinds} per weight, in the order "
            f"{training.GENERATIONS[gen]} writes them){f'; frozen layers left out: {frozen}' if frozen else ''}"
        )
        return []
    out = []
    for k, ((name, value), (slot, i)) in enumerate(zip(state, layout)):
        path, shape = order[i]
        label = f"state array {k} {name!r} (slot {slot!r} of {'/'.join(path)})"
        if isinstance(value, int) or tuple(value.shape) != tuple(shape):
            problems.append(f"{label}: {_describe(value)}, expected shape {tuple(shape)}")
            continue
        token = (_K3_TOKENS if gen == "keras3" else _V2_TOKENS)[slot]
        fits = {
            "keras3": name.endswith("_" + token),
            "tf_keras_legacy": name.rsplit("/", 1)[-1].split(":")[0] == token,
        }.get(gen, True)
        if data.named and not fits:
            problems.append(
                f"{label}: the name says another slot (the writer's order is "
                f"{' + '.join('/'.join(g) for g in rule.slot_groups())})"
            )
            continue
        out.append((slot, i, value))
    return out


def _untracked_terms(spec):
    """Layers whose regularizers or constraints Keras applied in training (load_keras drops them)."""
    found = []

    def walk(cfg, name):
        for key, value in cfg.items():
            if key.endswith(("_regularizer", "_constraint")) and value is not None:
                found.append(f"{name}.{key}")
            elif isinstance(value, dict) and isinstance(value.get("config"), dict):
                walk(value["config"], name)

    for s in spec.layers:
        walk(s.config, s.name)
    return found


def load_keras_optimizer(path, variables):
    """The optimizer a Keras file saved, ready to continue training: ``(tx, state)``, ``tx`` an
    optax ``GradientTransformation`` computing that Keras version's update (Adam, AdamW, SGD with
    momentum/Nesterov, RMSprop with momentum/centered, Adagrad; clipnorm, clipvalue,
    global_clipnorm, weight_decay, Keras 2's decay, a float or ``ExponentialDecay`` learning
    rate; the rules and their sources in :mod:`rnnjax.keras.optimizer_rules`) and ``state`` a
    :class:`KerasOptimizerState` holding the file's step count and slots.

    ``variables``: what :func:`load_keras` returned for the same file (or its ``'params'``).
    ``tx`` works on ``variables['params']``: ``updates, state = tx.update(grads, state,
    params)``, then ``optax.apply_updates``. Layers the file marks ``trainable: false`` get zero
    updates, as Keras leaves them out. A compiled model saved before its first step gets a fresh
    state (step 0), as Keras gives it. Raises :class:`KerasImportError` naming every problem: an
    unsupported optimizer or schedule, ``use_ema``, a file without an optimizer, slot counts,
    shapes or names that disagree with the parameters.
    """
    path = str(path)
    data = training.read_training(path)
    entry = (data.compile or {}).get("optimizer") if isinstance(data.compile, dict) else None
    if not isinstance(entry, dict) and data.state:
        raise KerasImportError(
            f"the file holds optimizer state ({len(data.state)} arrays) but its compile config names no optimizer "
            "(Keras 3 leaves it out of a .keras file saved after a legacy .h5 save of the same model): save the "
            ".keras file first, or use the .h5 file",
            path,
        )
    if not isinstance(entry, dict):
        raise KerasImportError(
            "the file holds no optimizer (the model was saved without compile(), or with "
            "include_optimizer=False): expected a compiled model's file",
            path,
        )
    raw_config = entry.get("config")
    gen = training.generation(data, raw_config if isinstance(raw_config, dict) else {})
    try:
        rule = training.rule_from_config(entry, gen)
        spec = kconfig.parse_model(data.model_config, data.version)
    except KerasImportError as err:
        raise KerasImportError(err.problems, path) from None
    params = _dict(variables.get("params", variables) if hasattr(variables, "get") else variables)
    order, frozen = _order(spec, params)
    problems: list[str] = []
    step, lr, state = _counters(data, rule, gen, problems)
    if lr is not None:
        rule = dataclasses.replace(rule, learning_rate=lr)
    state = _placeholders(rule, gen, state, len(order), problems)
    matched = _match(data, rule, gen, order, frozen, state, problems) if state or step else []
    if problems:
        raise KerasImportError([f"optimizer {entry.get('class_name')}: {p}" for p in problems], path)
    if terms := _untracked_terms(spec):
        warnings.warn(
            f"{path}: Keras trained with {terms}; the model load_keras builds has no regularizers or "
            "constraints, so add them to your loss / updates to continue the same training.",
            stacklevel=2,
        )
    trainable = jax.tree_util.tree_map(lambda _: False, params)
    for p, _ in order:
        _set(trainable, p, True)
    tx = keras_transform(rule, trainable)
    slots = {
        n: jax.tree_util.tree_map(lambda a, n=n: np.full(np.shape(a), rule.initial(n), np.dtype(a.dtype)), params)
        for n in rule.slot_names()
    }
    for slot, i, value in matched:
        _set(slots[slot], order[i][0], np.asarray(value, np.dtype(_leaf(params, order[i][0]).dtype)))
    return tx, KerasOptimizerState(jnp.asarray(step, jnp.int32), jax.tree_util.tree_map(jnp.asarray, slots))


def _leaf(tree, path):
    for key in path:
        tree = tree[key]
    return tree
