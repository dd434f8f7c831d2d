"""Trained Keras files: optimizer state and compile settings load as data
(``load_keras``, ``inspect_keras``) and training resumes where Keras stopped
(``load_keras_optimizer``).

References: Keras 3 on the JAX backend (``fit``, then ``train_on_batch`` steps, and its optimizers'
``apply``), and float64 numpy replays of tf.keras's OptimizerV2 and multi-backend Keras's update
rules, written here from their sources (tf_keras/optimizers/legacy/*.py with
tensorflow/core/kernels/training_ops.cc; keras/optimizers.py of Keras 2.3)."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import h5py  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402

import rnnjax  # noqa: E402
from rnnjax.keras import (
    KerasImportError,  # noqa: E402
    training,  # noqa: E402
)
from rnnjax.keras.optimizer_rules import KerasOptimizerState, keras_transform  # noqa: E402
from tests import keras2_files as k2  # noqa: E402
from tests.keras2_files import layer, sequential  # noqa: E402

L = keras.layers
TOL = 1e-5
RNG = np.random.default_rng(24)


# ---------------------------------------------------------------------------------------------
# 1. Keras 3 end to end: fit, save (.keras and .h5), then N more steps in Keras and in rnnjax
# ---------------------------------------------------------------------------------------------


def _embedding_bigru():
    return keras.Sequential([L.Input((5,), dtype="int32"), L.Embedding(10, 4), L.Bidirectional(L.GRU(3)), L.Dense(2)])


def _stacked_lstm(freeze_first=False):
    first = L.LSTM(3, return_sequences=True)
    first.trainable = not freeze_first
    return keras.Sequential([L.Input((5, 2)), first, L.LSTM(2), L.Dense(2)])


def _data(kind, n):
    x = RNG.integers(1, 10, (n, 5)).astype(np.int32) if kind == "ids" else RNG.normal(size=(n, 5, 2)).astype(np.float32)
    return x, RNG.normal(size=(n, 2)).astype(np.float32)


E2E = {  # one Keras fit per optimizer family; the options each family adds
    "adamw_schedule_amsgrad_clipnorm": (
        _embedding_bigru,
        "ids",
        lambda: keras.optimizers.AdamW(
            keras.optimizers.schedules.ExponentialDecay(0.02, 2, 0.7), weight_decay=0.05, amsgrad=True, clipnorm=0.5
        ),
    ),
    "sgd_nesterov_global_clipnorm_frozen": (
        lambda: _stacked_lstm(True),
        "floats",
        lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True, global_clipnorm=0.5),
    ),
    "rmsprop_centered_momentum_clipvalue": (
        _embedding_bigru,
        "ids",
        lambda: keras.optimizers.RMSprop(0.01, momentum=0.5, centered=True, clipvalue=0.05, epsilon=1e-3),
    ),
    "adagrad_clipnorm": (
        _stacked_lstm,
        "floats",
        lambda: keras.optimizers.Adagrad(0.05, initial_accumulator_value=0.2, epsilon=1e-3, clipnorm=1.0),
    ),
}


def _tree_close(got, want, atol=TOL):
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol), got, want)


@pytest.mark.parametrize("case", list(E2E))
def test_resume_keras3_training(tmp_path, case):
    """Keras 3 trains two steps (``train_on_batch``, the step ``fit`` runs) and saves; rnnjax
    resumes from the .keras file and takes three more steps with the same loss and batches: each
    step's loss (the loaded model's predictions) equals Keras 3's, and every weight and every slot
    equals Keras 3's after its three more steps (read back from the .h5 it saves then). The .h5
    saved with the .keras file gives the same state."""
    build, kind, optimizer = E2E[case]
    keras.utils.set_random_seed(0)
    km = build()
    km.compile(optimizer=optimizer(), loss="mse", metrics=["mae"])
    for _ in range(2):
        km.train_on_batch(*_data(kind, 2))
    km.save(tmp_path / "m.keras")
    km.save(tmp_path / "m.h5")  # (Keras then drops the optimizer from later .keras saves: see below)
    batches = [_data(kind, 2) for _ in range(3)]
    keras_losses = [km.train_on_batch(bx, by, return_dict=True)["loss"] for bx, by in batches]
    km.save(tmp_path / "after.h5")

    model, variables = rnnjax.load_keras(tmp_path / "m.keras")
    tx, state = rnnjax.load_keras_optimizer(tmp_path / "m.keras", variables)
    _, h5_variables = rnnjax.load_keras(tmp_path / "m.h5")
    _, h5_state = rnnjax.load_keras_optimizer(tmp_path / "m.h5", h5_variables)
    assert int(state.step) == 2 == int(h5_state.step)
    _tree_close(h5_state.slots, state.slots, atol=0)

    def loss(params, x, y):
        return jnp.mean(jnp.square(model.apply({**variables, "params": params}, x) - y))

    @jax.jit
    def step(params, state, x, y):
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    params, losses = variables["params"], []
    for bx, by in batches:
        params, state, value = step(params, state, jnp.asarray(bx), jnp.asarray(by))
        losses.append(float(value))
    np.testing.assert_allclose(losses, keras_losses, rtol=TOL)
    _, after = rnnjax.load_keras(tmp_path / "after.h5")
    _tree_close(params, after["params"])
    _, keras_state = rnnjax.load_keras_optimizer(tmp_path / "after.h5", after)
    assert int(state.step) == 5 == int(keras_state.step)
    _tree_close(state.slots, keras_state.slots)


# ---------------------------------------------------------------------------------------------
# 2. Keras 3's rules, option by option, against its optimizers' apply (no model)
# ---------------------------------------------------------------------------------------------

# Keras 3 names a slot variable "<optimizer>/<weight path>_<slot>" (add_variable_from_reference).
K3_NAMES = {
    "m": "momentum",
    "v": "velocity",
    "vhat": "velocity_hat",
    "momentum": "momentum",
    "velocity": "velocity",
    "average_gradient": "average_gradient",
    "accumulator": "accumulator",
}
O = keras.optimizers
K3_RULES = {
    "adam": lambda: O.Adam(0.01, epsilon=0.05),
    "adam_amsgrad_weight_decay_clipvalue": lambda: O.Adam(0.01, amsgrad=True, weight_decay=0.1, clipvalue=0.05),
    "adam_staircase_global_clipnorm": lambda: O.Adam(
        O.schedules.ExponentialDecay(0.02, 2, 0.5, staircase=True), global_clipnorm=0.1
    ),
    "sgd": lambda: O.SGD(0.1),
    "sgd_momentum_clipnorm": lambda: O.SGD(0.1, momentum=0.8, clipnorm=0.1),
    "rmsprop": lambda: O.RMSprop(0.01, epsilon=0.1),
    "rmsprop_centered": lambda: O.RMSprop(0.01, centered=True, epsilon=0.1),
    "rmsprop_momentum": lambda: O.RMSprop(0.01, momentum=0.6, epsilon=0.1),
    "adagrad": lambda: O.Adagrad(0.1, epsilon=0.1),
    "adamw": lambda: O.AdamW(0.01, weight_decay=0.2),
}


@pytest.mark.parametrize("case", list(K3_RULES))
def test_keras3_rules_match_keras3_apply(case):
    """Four steps from a fresh state: the transformation rnnjax builds from the serialized
    optimizer equals Keras 3's ``apply`` on every weight and slot (epsilon placement made visible
    with a large epsilon)."""
    opt = K3_RULES[case]()
    shapes = {"w0": (3, 2), "w1": (4,)}
    params = {k: RNG.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    kvars = [keras.Variable(params[k], name=k) for k in shapes]
    opt.build(kvars)
    tx = keras_transform(training.rule_from_config(keras.optimizers.serialize(opt), "keras3"))
    state, ours = tx.init(params), dict(params)
    for _ in range(4):
        grads = {k: RNG.normal(scale=0.5, size=s).astype(np.float32) for k, s in shapes.items()}
        opt.apply([jnp.asarray(grads[k]) for k in shapes], kvars)
        updates, state = tx.update(grads, state, ours)
        ours = optax.apply_updates(ours, updates)
    for k, v in zip(shapes, kvars):
        np.testing.assert_allclose(ours[k], np.asarray(v), atol=TOL)
    by_path = {v.path: np.asarray(v) for v in opt.variables}
    for slot, tree in state.slots.items():
        for k in shapes:
            np.testing.assert_allclose(tree[k], by_path[f"{opt.name}/{k}_{K3_NAMES[slot]}"], atol=TOL)
    assert int(state.step) == 4 == int(opt.iterations)


# ---------------------------------------------------------------------------------------------
# 3. Keras 2's rules against float64 replays written from the sources
# ---------------------------------------------------------------------------------------------


def _np_clip(gen, cfg, grads):
    """OptimizerV2._transform_gradients / multi-backend Optimizer.get_gradients."""
    norm = lambda gs: np.sqrt(sum(np.sum(g * g) for g in gs))  # noqa: E731
    if gen == "tf_keras_legacy":
        if cfg.get("clipvalue") is not None:
            grads = [np.clip(g, -cfg["clipvalue"], cfg["clipvalue"]) for g in grads]
        if cfg.get("clipnorm") is not None:
            grads = [g * cfg["clipnorm"] / max(norm([g]), cfg["clipnorm"]) for g in grads]
        if cfg.get("global_clipnorm") is not None:
            n, c = norm(grads), cfg["global_clipnorm"]
            grads = [g * c * min(1 / n, 1 / c) for g in grads]
        return grads
    if cfg.get("clipnorm", 0) > 0:  # multi-backend: clip_norm(g, c, n) with n the norm of ALL gradients
        n, c = norm(grads), cfg["clipnorm"]
        grads = [g * c / n if n >= c else g for g in grads]
    if cfg.get("clipvalue", 0) > 0:
        grads = [np.clip(g, -cfg["clipvalue"], cfg["clipvalue"]) for g in grads]
    return grads


def _np_keras2_step(kind, gen, cfg, params, grads, slots, t):
    """One update of Keras 2 in float64: ``params``/``grads`` lists, ``slots`` {name: list}."""
    grads = _np_clip(gen, cfg, grads)
    lr, eps = cfg["learning_rate"], cfg.get("epsilon", 1e-7)
    if cfg.get("decay", 0) > 0:
        lr = lr * (1.0 / (1.0 + cfg["decay"] * t)) if gen == "multi_backend" else lr / (1.0 + cfg["decay"] * t)
    out = []
    for i, (p, g) in enumerate(zip(params, grads)):
        s = {k: v[i] for k, v in slots.items()}
        if kind == "Adam":  # ApplyAdam (legacy) / Adam.get_updates (multi-backend): the same function
            b1, b2 = cfg["beta_1"], cfg["beta_2"]
            s["m"] = b1 * s["m"] + (1 - b1) * g
            s["v"] = b2 * s["v"] + (1 - b2) * g * g
            vv = s["v"]
            if cfg.get("amsgrad"):
                vv = s["vhat"] = np.maximum(s["vhat"], s["v"])
            p = p - lr * np.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1)) * s["m"] / (np.sqrt(vv) + eps)
        elif kind == "SGD":  # ApplyKerasMomentum
            mu = cfg.get("momentum", 0.0)
            if "momentum" in s:
                s["momentum"] = s["momentum"] * mu - lr * g
                p = p + (s["momentum"] * mu - lr * g if cfg.get("nesterov") else s["momentum"])
            else:
                p = p - lr * g
        elif kind == "RMSprop":
            rho, mu = cfg["rho"], cfg.get("momentum", 0.0)
            s["velocity"] = rho * s["velocity"] + (1 - rho) * g * g
            if cfg.get("centered"):
                s["average_gradient"] = rho * s["average_gradient"] + (1 - rho) * g
            centered = s["average_gradient"] ** 2 if cfg.get("centered") else 0.0
            if mu > 0:  # ApplyRMSProp / ApplyCenteredRMSProp: epsilon inside the root
                s["momentum"] = mu * s["momentum"] + lr * g / np.sqrt(s["velocity"] - centered + eps)
                p = p - s["momentum"]
            else:  # the Python branch of OptimizerV2 / multi-backend: epsilon outside
                p = p - lr * g / (np.sqrt(s["velocity"] - centered) + eps)
        else:  # ApplyAdagradV2 / multi-backend Adagrad
            s["accumulator"] = s["accumulator"] + g * g
            p = p - lr * g / (np.sqrt(s["accumulator"]) + eps)
        out.append(p)
        for k in slots:
            slots[k][i] = s[k]
    return out


K2_RULES = [
    (
        "Adam",
        "tf_keras_legacy",
        dict(
            learning_rate=0.01,
            beta_1=0.8,
            beta_2=0.9,
            epsilon=0.05,
            amsgrad=True,
            decay=0.1,
            clipvalue=0.3,
            clipnorm=0.4,
            global_clipnorm=0.5,
        ),
    ),
    ("SGD", "tf_keras_legacy", dict(learning_rate=0.1, momentum=0.7, nesterov=True, decay=0.05)),
    ("RMSprop", "tf_keras_legacy", dict(learning_rate=0.01, rho=0.8, epsilon=0.1)),
    ("RMSprop", "tf_keras_legacy", dict(learning_rate=0.01, rho=0.8, epsilon=0.1, centered=True)),
    ("RMSprop", "tf_keras_legacy", dict(learning_rate=0.01, rho=0.8, epsilon=0.1, momentum=0.5)),
    ("RMSprop", "tf_keras_legacy", dict(learning_rate=0.01, rho=0.8, epsilon=0.1, momentum=0.5, centered=True)),
    ("Adagrad", "tf_keras_legacy", dict(learning_rate=0.1, epsilon=0.1, initial_accumulator_value=0.1)),
    (
        "Adam",
        "multi_backend",
        dict(learning_rate=0.01, beta_1=0.8, beta_2=0.9, epsilon=0.05, decay=0.1, clipnorm=0.5, clipvalue=0.2),
    ),
    ("SGD", "multi_backend", dict(learning_rate=0.1, momentum=0.0, clipnorm=0.5)),
    ("RMSprop", "multi_backend", dict(learning_rate=0.01, rho=0.8, epsilon=0.1)),
    ("Adagrad", "multi_backend", dict(learning_rate=0.1, epsilon=0.1, decay=0.2)),
]


def _positive_state(rule, shapes):
    """Random slots a run could have produced (second moments above the squared first ones)."""
    slots = {}
    for name in rule.slot_names():
        slots[name] = {k: RNG.normal(scale=0.3, size=s).astype(np.float32) for k, s in shapes.items()}
    for name in ("v", "vhat", "velocity", "accumulator"):
        if name in slots:
            slots[name] = {k: np.abs(a) + 0.1 for k, a in slots[name].items()}
    if "average_gradient" in slots:
        slots["velocity"] = {k: a + slots["average_gradient"][k] ** 2 for k, a in slots["velocity"].items()}
    return slots


@pytest.mark.parametrize(
    "kind,gen,cfg",
    K2_RULES,
    ids=[
        f"{k}-{g}-{'-'.join(o for o in ('momentum', 'centered', 'amsgrad', 'decay', 'clipnorm') if c.get(o))}"
        for k, g, c in K2_RULES
    ],
)
def test_keras2_rules_match_float64_replays(kind, gen, cfg):
    rule = training.rule_from_config({"class_name": kind, "config": cfg}, gen)
    shapes = {"w0": (3, 2), "w1": (4,)}
    params = {k: RNG.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    slots = _positive_state(rule, shapes)
    state = KerasOptimizerState(jnp.asarray(7, jnp.int32), slots)
    tx = keras_transform(rule)
    ref_p = [params[k].astype(np.float64) for k in shapes]
    ref_s = {n: [slots[n][k].astype(np.float64) for k in shapes] for n in slots}
    for t in range(7, 10):
        grads = {k: RNG.normal(scale=0.5, size=s).astype(np.float32) for k, s in shapes.items()}
        ref_p = _np_keras2_step(kind, gen, cfg, ref_p, [grads[k].astype(np.float64) for k in shapes], ref_s, t)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    for k, want in zip(shapes, ref_p):
        np.testing.assert_allclose(params[k], want, rtol=1e-5, atol=1e-6)
    for n in ref_s:
        for k, want in zip(shapes, ref_s[n]):
            np.testing.assert_allclose(state.slots[n][k], want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# 4. Keras 2 .h5 files with optimizer_weights, as tf-keras and multi-backend Keras write them
# ---------------------------------------------------------------------------------------------


def _w(*shape):
    return RNG.normal(scale=0.5, size=shape).astype(np.float32)


WEIGHTS = [
    ("embedding", "embedding/embeddings:0", (10, 4)),
    ("lstm", "lstm/lstm_cell/kernel:0", (4, 12)),
    ("lstm", "lstm/lstm_cell/recurrent_kernel:0", (3, 12)),
    ("lstm", "lstm/lstm_cell/bias:0", (12,)),
    ("dense", "dense/kernel:0", (3, 2)),
    ("dense", "dense/bias:0", (2,)),
]
# where each file weight lives in rnnjax's variables (the test's own table)
PATHS = {
    "embedding/embeddings:0": ("embedding", "embeddings"),
    "lstm/lstm_cell/kernel:0": ("lstm", "cell", "kernel"),
    "lstm/lstm_cell/recurrent_kernel:0": ("lstm", "cell", "recurrent_kernel"),
    "lstm/lstm_cell/bias:0": ("lstm", "cell", "bias"),
    "dense/kernel:0": ("dense", "kernel"),
    "dense/bias:0": ("dense", "bias"),
}
IDS = np.array([[3, 1, 4, 2], [5, 6, 7, 1]], np.int32)


def _keras2_model(path, version="2.9.0", lstm_extra=None):
    config = sequential(
        layer("InputLayer", batch_input_shape=[None, 4], dtype="int32", name="input_1"),
        layer("Embedding", name="embedding", input_dim=10, output_dim=4),
        layer("LSTM", name="lstm", units=3, **(lstm_extra or {})),
        layer("Dense", name="dense", units=2),
    )
    values = {name: _w(*shape) for _, name, shape in WEIGHTS}
    groups = {}
    for group, name, _ in WEIGHTS:
        groups.setdefault(group, []).append((name, values[name]))
    k2.write_model(path, config, list(groups.items()), version=version)
    return values


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return np.asarray(tree)


K2_FILES = {  # class, config, the OptimizerV2 slot names in creation order, rnnjax's slot names
    "adam": (
        "Adam",
        dict(name="Adam", learning_rate=0.01, decay=0.0, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False),
        ["m", "v"],
        ["m", "v"],
    ),
    "rmsprop": (
        "RMSprop",
        dict(name="RMSprop", learning_rate=0.01, decay=0.0, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False),
        ["rms"],
        ["velocity"],
    ),
    "sgd": (
        "SGD",
        dict(name="SGD", learning_rate=0.1, decay=0.0, momentum=0.9, nesterov=False),
        ["momentum"],
        ["momentum"],
    ),
    "adagrad": (
        "Adagrad",
        dict(name="Adagrad", learning_rate=0.01, decay=0.0, initial_accumulator_value=0.1, epsilon=1e-7),
        ["accumulator"],
        ["accumulator"],
    ),
}


@pytest.mark.parametrize("case", list(K2_FILES))
def test_tf_keras_file_with_optimizer_weights(tmp_path, case):
    """An OptimizerV2 state (int64 ``iter``, slots per weight): the model loads and predicts as
    without it, the state lands on the right parameters, and an update is tf.keras's."""
    cls, cfg, v2_slots, slots = K2_FILES[case]
    path = tmp_path / "m.h5"
    _keras2_model(path)
    model, plain = rnnjax.load_keras(path)
    arrays = {slot: [(name, np.abs(_w(*shape)) + 0.1) for _, name, shape in WEIGHTS] for slot in v2_slots}
    k2.write_training(
        path, cls, cfg, k2.optimizer_v2_state(cls, 12, [(s, arrays[s]) for s in v2_slots]), loss="mse", metrics=["mae"]
    )
    _, variables = rnnjax.load_keras(path)
    _tree_close(variables, plain, atol=0)
    tx, state = rnnjax.load_keras_optimizer(path, variables)
    assert int(state.step) == 12
    for v2, ours in zip(v2_slots, slots):
        for name, value in arrays[v2]:
            np.testing.assert_array_equal(_get(state.slots[ours], PATHS[name]), value)
    grads = jax.tree_util.tree_map(lambda p: jnp.asarray(_w(*p.shape)), variables["params"])
    updates, new_state = tx.update(grads, state, variables["params"])
    new = optax.apply_updates(variables["params"], updates)
    names = [name for _, name, _ in WEIGHTS]
    ref_slots = {
        ours: [arrays[v2][i][1].astype(np.float64) for i in range(len(names))] for v2, ours in zip(v2_slots, slots)
    }
    ref = _np_keras2_step(
        cls,
        "tf_keras_legacy",
        cfg,
        [_get(variables["params"], PATHS[n]).astype(np.float64) for n in names],
        [_get(grads, PATHS[n]).astype(np.float64) for n in names],
        ref_slots,
        12,
    )
    for n, want in zip(names, ref):
        np.testing.assert_allclose(_get(new, PATHS[n]), want, rtol=1e-5, atol=1e-6)
    assert int(new_state.step) == 13
    info = rnnjax.inspect_keras(path)
    assert info["problems"] == [] and info["training"]["optimizer"] == cls and info["training"]["step"] == 12
    assert info["training"]["loss"] == "mse" and info["training"]["metrics"] == ["mae"]


def test_tf_keras_adam_state_updates_as_keras3_adam(tmp_path):
    """Adam's rule is the same in tf.keras and Keras 3: from the file's state, one update of the
    imported optimizer equals Keras 3's Adam given that state (variables in Keras's order)."""
    path = tmp_path / "m.h5"
    _keras2_model(path)
    m = [(name, _w(*shape)) for _, name, shape in WEIGHTS]
    v = [(name, np.abs(_w(*shape)) + 0.05) for _, name, shape in WEIGHTS]
    cfg = K2_FILES["adam"][1]
    k2.write_training(path, "Adam", cfg, k2.optimizer_v2_state("Adam", 3, [("m", m), ("v", v)]))
    _, variables = rnnjax.load_keras(path)
    tx, state = rnnjax.load_keras_optimizer(path, variables)
    names = [name for _, name, _ in WEIGHTS]
    kvars = [keras.Variable(_get(variables["params"], PATHS[n])) for n in names]
    opt = keras.optimizers.Adam(cfg["learning_rate"], epsilon=cfg["epsilon"])
    opt.build(kvars)
    interleaved = [a for pair in zip(m, v) for _, a in pair]  # Keras 3: m_0, v_0, m_1, v_1, ...
    for var, value in zip(opt.variables, [np.int32(3), np.float32(cfg["learning_rate"])] + interleaved):
        var.assign(value)
    grads = jax.tree_util.tree_map(lambda p: jnp.asarray(_w(*p.shape)), variables["params"])
    opt.apply([jnp.asarray(_get(grads, PATHS[n])) for n in names], kvars)
    updates, _ = tx.update(grads, state, variables["params"])
    new = optax.apply_updates(variables["params"], updates)
    for n, var in zip(names, kvars):
        np.testing.assert_allclose(_get(new, PATHS[n]), np.asarray(var), atol=TOL)


def test_multi_backend_adam_file(tmp_path):
    """Keras 2.3's Adam: ``[iterations] + ms + vs + vhats`` (``vhat`` of shape (1,) without
    AMSGrad), names that say nothing, the global-norm clipnorm."""
    path = tmp_path / "m.h5"
    _keras2_model(path, version="2.3.1")
    m = [_w(*shape) for *_, shape in WEIGHTS]
    v = [np.abs(_w(*shape)) + 0.05 for *_, shape in WEIGHTS]
    state = (
        [("Adam/iterations:0", np.int64(4))]
        + [(f"training/Adam/m_{i}:0", a) for i, a in enumerate(m)]
        + [(f"training/Adam/v_{i}:0", a) for i, a in enumerate(v)]
        + [(f"training/Adam/vhat_{i}:0", np.zeros(1, np.float32)) for i in range(len(m))]
    )
    cfg = dict(learning_rate=0.01, beta_1=0.9, beta_2=0.999, decay=0.0, epsilon=1e-7, amsgrad=False, clipnorm=0.1)
    k2.write_training(path, "Adam", cfg, state)
    _, variables = rnnjax.load_keras(path)
    tx, opt_state = rnnjax.load_keras_optimizer(path, variables)
    assert int(opt_state.step) == 4
    names = [name for _, name, _ in WEIGHTS]
    for i, n in enumerate(names):
        np.testing.assert_array_equal(_get(opt_state.slots["v"], PATHS[n]), v[i])
    grads = jax.tree_util.tree_map(lambda p: jnp.asarray(_w(*p.shape)), variables["params"])
    new = optax.apply_updates(variables["params"], tx.update(grads, opt_state, variables["params"])[0])
    ref = _np_keras2_step(
        "Adam",
        "multi_backend",
        cfg,
        [_get(variables["params"], PATHS[n]).astype(np.float64) for n in names],
        [_get(grads, PATHS[n]).astype(np.float64) for n in names],
        {"m": [a.astype(np.float64) for a in m], "v": [a.astype(np.float64) for a in v]},
        4,
    )
    for n, want in zip(names, ref):
        np.testing.assert_allclose(_get(new, PATHS[n]), want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# 5. Errors, hostile files, inspect, implementation=0
# ---------------------------------------------------------------------------------------------


def _adam_file(tmp_path, cls="Adam", cfg=None, drop=0, bad_shape=False, swap=False):
    path = tmp_path / "m.h5"
    _keras2_model(path)
    m = [(name, _w(*shape)) for _, name, shape in WEIGHTS]
    v = [(name, np.abs(_w(*shape))) for _, name, shape in WEIGHTS]
    if bad_shape:
        v[1] = (v[1][0], _w(4, 11))
    state = k2.optimizer_v2_state(cls, 2, [("v", v), ("m", m)] if swap else [("m", m), ("v", v)])
    k2.write_training(path, cls, cfg or K2_FILES["adam"][1], state[: len(state) - drop])
    _, variables = rnnjax.load_keras(path)
    return path, variables


@pytest.mark.parametrize(
    "kwargs,patterns",
    [
        (dict(cls="Nadam"), ["'Nadam'", "not supported", "Adam, AdamW", "SGD, RMSprop and Adagrad"]),
        (
            dict(cfg=dict(K2_FILES["adam"][1], learning_rate={"class_name": "CosineDecay", "config": {}})),
            ["CosineDecay", "only a float or an ExponentialDecay"],
        ),
        (dict(cfg=dict(K2_FILES["adam"][1], foo=1)), ["config key 'foo'=1 is not understood"]),
        (dict(drop=1), ["holds 11 slot arrays", "6 trainable weights", "need 12", "m + v"]),
        (dict(bad_shape=True), ["lstm/lstm_cell/kernel/v:0", "shape (4, 11)", "expected shape (4, 12)"]),
        (
            dict(swap=True),
            ["'Adam/embedding/embeddings/v:0' (slot 'm' of embedding/embeddings)", "the name says another slot"],
        ),
    ],
    ids=["optimizer", "schedule", "key", "count", "shape", "names"],
)
def test_optimizer_errors_name_what_they_got(tmp_path, kwargs, patterns):
    path, variables = _adam_file(tmp_path, **kwargs)
    with pytest.raises(KerasImportError) as err:
        rnnjax.load_keras_optimizer(path, variables)
    for p in patterns:
        assert p in str(err.value), (p, str(err.value))


def test_keras3_ema_refused_and_untrained_state_is_fresh(tmp_path):
    keras.utils.set_random_seed(1)
    km = _stacked_lstm()
    km.compile(optimizer=keras.optimizers.Adagrad(0.1, initial_accumulator_value=0.3, use_ema=True), loss="mse")
    km.save(tmp_path / "ema.keras")
    _, variables = rnnjax.load_keras(tmp_path / "ema.keras")
    with pytest.raises(KerasImportError, match="use_ema=True .*moving average.* not supported"):
        rnnjax.load_keras_optimizer(tmp_path / "ema.keras", variables)
    km.compile(optimizer=keras.optimizers.Adagrad(0.1, initial_accumulator_value=0.3), loss="mse")
    km.save(tmp_path / "fresh.keras")  # compiled, never trained: Keras builds a fresh optimizer on load
    tx, state = rnnjax.load_keras_optimizer(tmp_path / "fresh.keras", variables)
    assert int(state.step) == 0
    assert all(np.all(np.asarray(a) == np.float32(0.3)) for a in jax.tree_util.tree_leaves(state.slots))


def test_files_without_an_optimizer(tmp_path):
    path = tmp_path / "m.h5"
    _keras2_model(path)
    _, variables = rnnjax.load_keras(path)
    with pytest.raises(KerasImportError, match="holds no optimizer .*saved without compile"):
        rnnjax.load_keras_optimizer(path, variables)
    assert rnnjax.inspect_keras(path)["training"] is None
    k2.write_weights_file(tmp_path / "w.h5", [("dense", [("dense/kernel:0", _w(3, 2))])])
    with pytest.raises(KerasImportError, match="not a full-model Keras file"):
        rnnjax.load_keras_optimizer(tmp_path / "w.h5", variables)


def test_hostile_optimizer_groups_refused(tmp_path):
    """Links and foreign storage are refused inside optimizer state as anywhere; an integer that
    is not a scalar step counter is refused there, and any integer among the model's weights."""
    path, variables = _adam_file(tmp_path)
    with h5py.File(path, "a") as f:
        f["optimizer_weights/Adam/sneaky"] = h5py.SoftLink("/model_weights/dense")
    for call in (lambda: rnnjax.load_keras(path), lambda: rnnjax.load_keras_optimizer(path, variables)):
        with pytest.raises(KerasImportError, match="optimizer_weights/Adam/sneaky: an HDF5 soft link"):
            call()
    (tmp_path / "second").mkdir()
    path, _ = _adam_file(tmp_path / "second")
    with h5py.File(path, "a") as f:
        f["optimizer_weights"].create_dataset("Adam/counts:0", data=np.arange(3, dtype=np.int64))
        f["optimizer_weights"].create_dataset(
            "Adam/raw:0", shape=(4,), dtype="f4", external=[(str(tmp_path / "raw.bin"), 0, 16)]
        )
    with pytest.raises(KerasImportError) as err:
        rnnjax.load_keras(path)
    assert "Adam/counts:0: weights must be float16/32/64 or bfloat16, got dtype int64" in str(err.value)
    assert "Adam/raw:0: a dataset stored in external files" in str(err.value)


def test_keras3_compile_config_with_a_loss_function_loads_and_inspects(tmp_path):
    """Keras 3 writes ``loss=keras.losses.binary_crossentropy`` as a serialized function: data,
    never code; inspect names it with the metrics, the optimizer and its step."""
    keras.utils.set_random_seed(2)
    km = keras.Sequential([L.Input((5, 2)), L.GRU(2), L.Dense(1, activation="sigmoid")])
    km.compile(optimizer="rmsprop", loss=keras.losses.binary_crossentropy, metrics=[keras.metrics.AUC(), "mae"])
    x = RNG.normal(size=(2, 5, 2)).astype(np.float32)
    km.train_on_batch(x, np.array([[0.0], [1.0]], np.float32))
    km.save(tmp_path / "m.keras")
    model, variables = rnnjax.load_keras(tmp_path / "m.keras")
    np.testing.assert_allclose(model.apply(variables, jnp.asarray(x)), km(x, training=False), atol=TOL)
    info = rnnjax.inspect_keras(tmp_path / "m.keras")
    t = info["training"]
    assert (t["optimizer"], t["step"], t["loss"], t["metrics"]) == ("RMSprop", 1, "binary_crossentropy", ["AUC", "mae"])
    assert t["config"]["rho"] == 0.9 and info["problems"] == []
    report = rnnjax.keras.inspect.format_report(info)
    assert "training: optimizer RMSprop (Keras 3), step 1" in report and 'loss: "binary_crossentropy"' in report


def test_tf_keras_2_11_optimizer_file(tmp_path):
    """tf-keras >= 2.11 writes its new optimizers as ``Custom>SGD`` with ``is_legacy_optimizer:
    false``: ``[iteration] + one m per weight`` (created at momentum 0 too), Keras 3's rules."""
    path = tmp_path / "m.h5"
    _keras2_model(path, version="2.15.0")
    m = [(name, _w(*shape)) for _, name, shape in WEIGHTS]
    cfg = dict(
        name="SGD",
        weight_decay=0.01,
        clipnorm=None,
        global_clipnorm=None,
        clipvalue=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        jit_compile=False,
        is_legacy_optimizer=False,
        learning_rate=0.1,
        momentum=0.0,
        nesterov=False,
    )
    k2.write_training(
        path, "Custom>SGD", cfg, [("iteration:0", np.int64(9))] + [(f"SGD/m/{n.split(':')[0]}:0", a) for n, a in m]
    )
    _, variables = rnnjax.load_keras(path)
    tx, state = rnnjax.load_keras_optimizer(path, variables)
    assert int(state.step) == 9
    names = [name for _, name, _ in WEIGHTS]
    for (_, value), n in zip(m, names):
        np.testing.assert_array_equal(_get(state.slots["momentum"], PATHS[n]), value)
    grads = jax.tree_util.tree_map(lambda p: jnp.asarray(_w(*p.shape)), variables["params"])
    new = optax.apply_updates(variables["params"], tx.update(grads, state, variables["params"])[0])
    for _, n in zip(m, names):  # p <- p - lr wd p, then m <- 0 m - lr g, p <- p + m
        p, g = _get(variables["params"], PATHS[n]).astype(np.float64), _get(grads, PATHS[n]).astype(np.float64)
        np.testing.assert_allclose(_get(new, PATHS[n]), p - 0.1 * 0.01 * p - 0.1 * g, rtol=1e-5, atol=1e-6)
    assert rnnjax.inspect_keras(path)["training"]["optimizer"] == "SGD"


def test_optimizer_weight_names_pointing_at_a_group(tmp_path):
    """A weight name that leads to a group, not an array: a clear refusal; inspect still reports."""
    path, variables = _adam_file(tmp_path)
    with h5py.File(path, "a") as f:
        g = f["optimizer_weights"]
        del g.attrs["weight_names"]
        g.attrs["weight_names"] = np.array(["Adam/iter:0", "Adam"], dtype=object)
    with pytest.raises(KerasImportError, match="expected a weight array, found an HDF5 group"):
        rnnjax.load_keras_optimizer(path, variables)
    info = rnnjax.inspect_keras(path)
    assert info["training"] is None and info["problems"] == []
