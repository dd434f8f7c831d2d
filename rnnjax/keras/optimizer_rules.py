"""Keras's optimizers as optax transformations: the update rule of the Keras version that wrote a
file, as that version computes it.

One step, for gradients ``g`` of the trainable parameters ``p``, ``t`` = Keras's ``iterations``
before the step (the count of updates already applied)::

    g  <- clip(g)                        by the writer's rule (:func:`_clip`)
    lr <- learning_rate(t)               a float, or ExponentialDecay(t); Keras 2: / (1 + decay t)
    p  <- p - lr * weight_decay * p      Keras 3 and tf-keras >= 2.11 only, before the update
    p  <- p + delta(g, slots)            the class's rule (:func:`_leaf`), slots updated
    t  <- t + 1

The rules, read in the sources (not guessed):

* ``keras3``: ``keras/src/optimizers/{base_optimizer,adam,adamw,sgd,rmsprop,adagrad}.py`` and
  ``keras/src/backend/jax/optimizer.py`` (keras-team/keras 3.15).
* ``tf_keras``: tf-keras >= 2.11's optimizers, ``tf_keras/optimizers/{optimizer,adam,adamw,sgd,
  rmsprop,adagrad}.py`` (keras-team/tf-keras): the same rules as Keras 3.
* ``tf_keras_legacy``: ``OptimizerV2`` (tf.keras in TF 2.0-2.10, ``keras.optimizers.legacy.*``
  after), ``tf_keras/optimizers/legacy/{optimizer_v2,adam,gradient_descent,rmsprop,adagrad}.py``
  and the TensorFlow kernels they call (``tensorflow/core/kernels/training_ops.cc``:
  ``ApplyAdam``, ``ApplyKerasMomentum``, ``ApplyRMSProp``, ``ApplyCenteredRMSProp``,
  ``ApplyAdagradV2``).
* ``tf_keras_v1``: tf.keras's Keras-1-style optimizers of TF 1.x,
  ``tf_keras/optimizers/optimizer_v1.py``.
* ``multi_backend``: multi-backend Keras 2.0-2.3, ``keras/optimizers.py``.

Where they differ (beyond float rounding):

===============  ==============================  ================================  =========================
                 keras3, tf_keras                tf_keras_legacy                   tf_keras_v1, multi_backend
===============  ==============================  ================================  =========================
clipping         the first set of clipnorm       clipvalue, then clipnorm (per     clipnorm (multi_backend:
                 (per tensor), global_clipnorm,  tensor), then global_clipnorm:    the GLOBAL norm), then
                 clipvalue                       each that is set                  clipvalue
RMSprop          ``lr g / sqrt(v + eps)``        with momentum: as Keras 3;        ``lr g / (sqrt(v) + eps)``
                                                 without: ``lr g / (sqrt(v)+eps)``
                                                 (centered: ``sqrt(v - a^2)``)
Adagrad          ``lr g / sqrt(acc + eps)``      ``lr g / (sqrt(acc) + eps)``      as tf_keras_legacy
weight_decay     ``p -= lr wd p`` first          (none)                            (none)
decay            (none)                          ``lr / (1 + decay t)``            ``lr * 1 / (1 + decay t)``
===============  ==============================  ================================  =========================

Adam (``alpha = lr sqrt(1 - b2^(t+1)) / (1 - b1^(t+1))``, ``p -= alpha m / (sqrt(v) + eps)``,
AMSGrad on ``max(vhat, v)``) and SGD (``m = momentum m - lr g``, ``p += m`` or, Nesterov,
``p += momentum m - lr g``) are the same everywhere. Gradients are dense: TensorFlow's sparse
(``IndexedSlices``) updates of an Embedding table, which leave the slots of rows not looked up
untouched for SGD with momentum and RMSprop, are not reproduced (Keras 3 on JAX is dense too).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp

GENERATIONS = {
    "keras3": "Keras 3",
    "tf_keras": "tf-keras >= 2.11 optimizers",
    "tf_keras_legacy": "tf.keras OptimizerV2 (TF 2.0-2.10, keras.optimizers.legacy)",
    "tf_keras_v1": "tf.keras optimizer_v1 (TF 1.x)",
    "multi_backend": "multi-backend Keras 2.0-2.3",
}
_NEW = ("keras3", "tf_keras")  # the rules of Keras 3
_V1 = ("tf_keras_v1", "multi_backend")  # Keras-1-style optimizers: `iterations`, get_gradients clipping
KINDS = ("adam", "sgd", "rmsprop", "adagrad")


class KerasOptimizerState(NamedTuple):
    """The state of a Keras optimizer, a pytree (it goes through ``jax.jit`` as it is).

    Attributes:
        step: Keras's ``iterations``: the updates applied so far (an int32 scalar).
        slots: ``{slot name: a tree shaped like the parameters}``: Adam ``m``, ``v`` (and
            ``vhat`` with ``amsgrad``), SGD ``momentum``, RMSprop ``velocity`` (and ``momentum``,
            ``average_gradient`` when centered), Adagrad ``accumulator``. Frozen parameters keep
            their initial slot values.
    """

    step: Any
    slots: dict


@dataclasses.dataclass(frozen=True)
class ExponentialDecay:
    """Keras's ``ExponentialDecay`` schedule: ``lr(t) = initial_learning_rate * decay_rate **
    (t / decay_steps)`` (the exponent floored when ``staircase``), ``t`` = ``iterations``."""

    initial_learning_rate: float
    decay_steps: float
    decay_rate: float
    staircase: bool = False

    def __call__(self, step):
        p = jnp.asarray(step, jnp.float32) / jnp.float32(self.decay_steps)
        if self.staircase:
            p = jnp.floor(p)
        return jnp.float32(self.initial_learning_rate) * jnp.power(jnp.float32(self.decay_rate), p)


@dataclasses.dataclass(frozen=True)
class KerasRule:
    """One Keras optimizer (``kind`` 'adam' (AdamW: 'adam' with ``weight_decay``), 'sgd',
    'rmsprop' or 'adagrad') with its hyperparameters, as ``generation`` (a key of
    :data:`GENERATIONS`) computes it."""

    kind: str
    generation: str
    learning_rate: float | ExponentialDecay = 0.001
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7
    amsgrad: bool = False
    momentum: float = 0.0
    nesterov: bool = False
    rho: float = 0.9
    centered: bool = False
    initial_accumulator_value: float = 0.1
    decay: float = 0.0
    weight_decay: float | None = None
    clipnorm: float | None = None
    clipvalue: float | None = None
    global_clipnorm: float | None = None

    def slot_groups(self) -> tuple:
        """The slots in the order the writer creates them: groups, each interleaved over the
        parameters (Keras 3's Adam: ``m_0, v_0, m_1, v_1, ...``; OptimizerV2's: all ``m``, then
        all ``v``)."""
        if self.kind == "adam":
            base = (("m", "v"),) if self.generation in _NEW else (("m",), ("v",))
            return base + ((("vhat",),) if self.amsgrad else ())
        if self.kind == "sgd":
            always = self.generation not in ("keras3", "tf_keras_legacy")  # the others create it at momentum 0 too
            return (("momentum",),) if always or self.momentum != 0 else ()
        if self.kind == "rmsprop":
            return (
                (("velocity",),)
                + ((("momentum",),) if self.momentum > 0 else ())
                + ((("average_gradient",),) if self.centered else ())
            )
        return (("accumulator",),)

    def slot_names(self) -> tuple:
        return tuple(name for group in self.slot_groups() for name in group)

    def initial(self, slot: str) -> float:
        """A slot's value before the first update."""
        if slot == "accumulator" and self.generation != "multi_backend":
            return float(self.initial_accumulator_value)
        return 0.0


def _clip_norm(g, c):
    """``tf.clip_by_norm`` / Keras 3's ``_clip_by_norm``: ``g c / max(||g||, c)``."""
    l2sum = jnp.sum(jnp.square(g))
    pred = l2sum > 0
    l2norm = jnp.where(pred, jnp.sqrt(jnp.where(pred, l2sum, jnp.ones_like(l2sum))), l2sum)
    return g * jnp.asarray(c, g.dtype) / jnp.maximum(l2norm, jnp.asarray(c, g.dtype))


def _global_norm(grads):
    return jnp.sqrt(jnp.sum(jnp.stack([jnp.sum(jnp.square(g)) for g in grads])))


def _clip_global(grads, c):
    """``tf.clip_by_global_norm`` / Keras 3's ``clip_by_global_norm``."""
    norm = _global_norm(grads)
    scale = c * jnp.minimum(1.0 / norm, 1.0 / c) + (norm - norm)
    return [g * scale.astype(g.dtype) for g in grads]


def _clip(rule: KerasRule, grads: list) -> list:
    """The writer's gradient clipping (see the module docstring's table)."""
    if not grads:
        return grads
    value = lambda gs, c: [jnp.clip(g, -c, c) for g in gs]
    if rule.generation in _NEW:
        if rule.clipnorm and rule.clipnorm > 0:
            return [_clip_norm(g, rule.clipnorm) for g in grads]
        if rule.global_clipnorm and rule.global_clipnorm > 0:
            return _clip_global(grads, rule.global_clipnorm)
        if rule.clipvalue and rule.clipvalue > 0:
            return value(grads, rule.clipvalue)
        return grads
    if rule.generation == "tf_keras_legacy":  # OptimizerV2._transform_gradients: each that is set, in order
        if rule.clipvalue is not None:
            grads = value(grads, rule.clipvalue)
        if rule.clipnorm is not None:
            grads = [_clip_norm(g, rule.clipnorm) for g in grads]
        if rule.global_clipnorm is not None:
            grads = _clip_global(grads, rule.global_clipnorm)
        return grads
    if rule.clipnorm is not None and (rule.generation == "tf_keras_v1" or rule.clipnorm > 0):
        if rule.generation == "tf_keras_v1":
            grads = [_clip_norm(g, rule.clipnorm) for g in grads]
        else:  # multi-backend clip_norm(g, c, n): g * (c / n) where the global norm n >= c
            norm = _global_norm(grads)
            grads = [jnp.where(norm >= rule.clipnorm, g * (rule.clipnorm / norm).astype(g.dtype), g) for g in grads]
    if rule.clipvalue is not None and (rule.generation == "tf_keras_v1" or rule.clipvalue > 0):
        grads = value(grads, rule.clipvalue)
    return grads


def learning_rate(rule: KerasRule, step):
    """The learning rate of the update at ``step`` (``iterations`` before it), float32."""
    lr = rule.learning_rate
    lr = lr(step) if callable(lr) else jnp.float32(lr)
    if rule.decay > 0:  # Keras 2's inverse-time decay
        t = jnp.asarray(step, jnp.float32)
        if rule.generation in _V1:
            lr = lr * (1.0 / (1.0 + jnp.float32(rule.decay) * t))
        else:
            lr = lr / (1.0 + jnp.float32(rule.decay) * t)
    return lr


def _leaf(rule: KerasRule, g, s: dict, lr, t):
    """``(delta, new slots)`` of one parameter: ``p <- p + delta``. ``t`` = ``iterations + 1``."""
    eps = jnp.asarray(rule.epsilon, g.dtype)
    if rule.kind == "adam":
        b1, b2 = jnp.asarray(rule.beta_1, g.dtype), jnp.asarray(rule.beta_2, g.dtype)
        if rule.generation in _V1:
            m, v = b1 * s["m"] + (1 - b1) * g, b2 * s["v"] + (1 - b2) * jnp.square(g)
        else:
            m, v = s["m"] + (g - s["m"]) * (1 - b1), s["v"] + (jnp.square(g) - s["v"]) * (1 - b2)
        new = {"m": m, "v": v}
        if rule.amsgrad:
            v = new["vhat"] = jnp.maximum(s["vhat"], v)
        alpha = lr * jnp.sqrt(1 - jnp.power(b2, t)) / (1 - jnp.power(b1, t))
        return -(m * alpha) / (jnp.sqrt(v) + eps), new
    if rule.kind == "sgd":
        if "momentum" not in s:
            return -g * lr, {}
        mu = jnp.asarray(rule.momentum, g.dtype)
        m = s["momentum"] * mu - g * lr
        return (m * mu - g * lr if rule.nesterov else m), {"momentum": m}
    if rule.kind == "rmsprop":
        rho = jnp.asarray(rule.rho, g.dtype)
        v = rho * s["velocity"] + (1 - rho) * jnp.square(g)
        new = {"velocity": v}
        a2: float | jax.Array = 0.0
        if rule.centered:
            a = new["average_gradient"] = rho * s["average_gradient"] + (1 - rho) * g
            a2 = jnp.square(a)
        if rule.generation in _NEW or "momentum" in s:  # epsilon inside the root
            increment = lr * g / jnp.sqrt(v - a2 + eps)
        else:
            increment = lr * g / (jnp.sqrt(v - a2) + eps)
        if "momentum" in s:
            increment = new["momentum"] = jnp.asarray(rule.momentum, g.dtype) * s["momentum"] + increment
        return -increment, new
    acc = s["accumulator"] + jnp.square(g)
    root = jnp.sqrt(acc + eps) if rule.generation in _NEW else jnp.sqrt(acc) + eps
    return -lr * g / root, {"accumulator": acc}


def keras_transform(rule: KerasRule, trainable=None):
    """An optax ``GradientTransformation`` applying ``rule`` to a tree of parameters.

    ``trainable``: a tree of bools like the parameters (``None``: all); the others get zero
    updates, keep their slots and stay out of the global norm, as Keras leaves a frozen layer
    out of its optimizer. ``init(params)`` is a fresh optimizer (step 0, slots at their initial
    values); ``update(grads, state, params)`` (``params`` needed with ``weight_decay``) returns
    ``(updates, state)`` for ``optax.apply_updates``.
    """
    import optax

    names = rule.slot_names()

    def init(params):
        slots = {
            n: jax.tree_util.tree_map(
                lambda p, n=n: jnp.full(jnp.shape(p), rule.initial(n), jnp.result_type(p)), params
            )
            for n in names
        }
        return KerasOptimizerState(jnp.zeros((), jnp.int32), slots)

    def update(grads, state, params=None):
        if rule.weight_decay is not None and params is None:
            raise ValueError(
                "This Keras optimizer has weight_decay: call `tx.update(grads, state, params)` with the parameters."
            )
        treedef: Any  # PyTreeDef: jaxlib's _jax has no stub, mypy cannot resolve it
        leaves, treedef = jax.tree_util.tree_flatten(grads)
        try:
            slots = {n: treedef.flatten_up_to(state.slots[n]) for n in names}
            mask = [True] * len(leaves) if trainable is None else treedef.flatten_up_to(trainable)
            plist = treedef.flatten_up_to(params) if params is not None else None
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(
                f"The gradients, the optimizer state and the parameters must have the same tree "
                f"structure (that of variables['params']): {err}"
            ) from None
        live = [i for i, keep in enumerate(mask) if keep]
        clipped = _clip(rule, [leaves[i] for i in live])
        lr, t = learning_rate(rule, state.step), (state.step + 1).astype(jnp.float32)
        out = [jnp.zeros_like(g) for g in leaves]
        for i, g in zip(live, clipped):
            step_lr = lr.astype(g.dtype)
            delta, new = _leaf(rule, g, {n: slots[n][i] for n in names}, step_lr, t.astype(g.dtype))
            if rule.weight_decay is not None:
                delta = delta - cast(list, plist)[i] * jnp.asarray(rule.weight_decay, g.dtype) * step_lr
            out[i] = delta
            for n, value in new.items():
                slots[n][i] = value
        new_state = KerasOptimizerState(state.step + 1, {n: treedef.unflatten(slots[n]) for n in names})
        return treedef.unflatten(out), new_state

    return optax.GradientTransformation(init, update)
