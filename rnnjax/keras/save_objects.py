"""Keras 3 configs for the objects inside a layer's config: activations, initializers,
regularizers and constraints, each resolved through rnnjax's own ``get`` first (so a name, a
config dict or one of rnnjax's objects all serialize the same way).

Activation names are where Keras 2 and Keras 3 disagree:

* ``'hard_sigmoid'`` in rnnjax is Keras 2's ``clip(0.2 x + 0.5, 0, 1)``; Keras 3's is
  ``clip(x / 6 + 0.5, 0, 1)``. Since ``clip(0.2 x + 0.5) = hard_sigmoid_keras3(1.2 x)``, a
  Keras 2 hard sigmoid applied to a pre-activation that is linear in the weights is saved
  faithfully as Keras 3's ``'hard_sigmoid'`` with those weights scaled by 1.2
  (:data:`KERAS2_HARD_SIGMOID_SCALE`); elsewhere it is refused.
* ``'gelu'`` (rnnjax: ``jax.nn.gelu``, tanh approximation; Keras 3: exact) and
  ``'leaky_relu'`` (slope 0.01 vs 0.2) mean different functions, so they are refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

from rnnjax import constraints, regularizers
from rnnjax.functional import activations, initializers

KERAS2_HARD_SIGMOID_SCALE = 1.2

# rnnjax activation name -> the Keras 3 name of the same function (checked in the tests).
_ACTIVATION_NAMES = {
    "linear": "linear",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "hard_sigmoid_keras3": "hard_sigmoid",
    "relu": "relu",
    "relu6": "relu6",
    "elu": "elu",
    "selu": "selu",
    "softplus": "softplus",
    "softsign": "softsign",
    "softmax": "softmax",
    "exponential": "exponential",
    "swish": "silu",
    "silu": "silu",
    "hard_silu": "hard_silu",
    "hard_swish": "hard_silu",
    "mish": "mish",
    "log_softmax": "log_softmax",
}
_DIFFERENT = {
    "gelu": "rnnjax's 'gelu' is jax.nn.gelu (tanh approximation), Keras 3's is the exact erf form",
    "leaky_relu": "rnnjax's 'leaky_relu' has slope 0.01 (jax.nn.leaky_relu), Keras 3's has 0.2",
}


class KerasSaveError(ValueError):
    """A model (or one of its layers) that a Keras 3 ``.keras`` file cannot express."""


def _canonical_activation(identifier, where: str) -> str:
    """rnnjax's name for an activation given by name, ``None`` or one of rnnjax's functions."""
    fn = activations.get(identifier, where)
    for name, known in activations.ACTIVATIONS.items():
        if known is fn:
            return name
    raise KerasSaveError(
        f"{where}: custom activation {identifier!r}; a Keras 3 file holds activations by name only "
        f"(rnnjax names: {sorted(_ACTIVATION_NAMES)} and 'hard_sigmoid')."
    )


def activation(identifier, where: str, hard_sigmoid: str, scalable: bool) -> tuple[str, float]:
    """``(Keras 3 name, factor)``: the pre-activation must be multiplied by ``factor`` (1.0 except
    for Keras 2's hard sigmoid saved as Keras 3's, see the module docstring).

    ``scalable``: whether the caller can scale this activation's pre-activation (it is linear in
    weights the caller writes). ``hard_sigmoid``: ``'scale'`` or ``'error'`` (see ``save_keras``).
    """
    name = _canonical_activation(identifier, where)
    if name == "hard_sigmoid":
        if hard_sigmoid == "error":
            raise KerasSaveError(
                f"{where}: 'hard_sigmoid' is Keras 2's clip(0.2x + 0.5, 0, 1), which Keras 3 has no name for "
                "(its 'hard_sigmoid' is clip(x/6 + 0.5, 0, 1)); refused because hard_sigmoid='error'. Use "
                "hard_sigmoid='scale' to save it as Keras 3's hard_sigmoid with the gate weights scaled by 1.2."
            )
        if not scalable:
            raise KerasSaveError(
                f"{where}: Keras 2's 'hard_sigmoid' (clip(0.2x + 0.5, 0, 1)) has no Keras 3 name, and here it is "
                "applied to a value that is not linear in the weights (so the 1.2 weight scaling cannot express "
                "it); use 'sigmoid' or 'hard_sigmoid_keras3' for this activation."
            )
        return "hard_sigmoid", KERAS2_HARD_SIGMOID_SCALE
    if name in _DIFFERENT:
        raise KerasSaveError(f"{where}: activation {name!r} cannot be saved: {_DIFFERENT[name]}.")
    return _ACTIVATION_NAMES[name], 1.0


def _object(module: str, class_name: str, config: dict) -> dict:
    return {"module": module, "class_name": class_name, "config": config, "registered_name": None}


_INITIALIZERS = {
    initializers.Zeros: "Zeros",
    initializers.Ones: "Ones",
    initializers.Constant: "Constant",
    initializers.RandomUniform: "RandomUniform",
    initializers.RandomNormal: "RandomNormal",
    initializers.TruncatedNormal: "TruncatedNormal",
    initializers.VarianceScaling: "VarianceScaling",
    initializers.Orthogonal: "Orthogonal",
    initializers.Identity: "Identity",
}


def initializer(identifier, where: str, warn) -> dict:
    """The Keras 3 config of an initializer. An initializer Keras 3 cannot name (a custom callable)
    becomes Keras's ``GlorotUniform`` and ``warn(message)`` is called: initializers only matter
    before training, and the file holds the trained weights."""
    init = initializers.get(identifier, where)
    class_name = _INITIALIZERS.get(type(init))
    if class_name is None:
        warn(
            f"{where}: custom initializer {identifier!r} has no Keras 3 config; written as GlorotUniform "
            "(it does not affect the saved weights)."
        )
        return _object("keras.initializers", "GlorotUniform", {"seed": None})
    config = dataclasses.asdict(cast(Any, init))  # a dataclass: its class is in _INITIALIZERS
    if class_name == "VarianceScaling" and config["distribution"] == "normal":
        config["distribution"] = "truncated_normal"  # Keras 2's 'normal' is the truncated normal
    if class_name not in ("Zeros", "Ones", "Constant", "Identity"):
        config["seed"] = None
    return _object("keras.initializers", class_name, config)


def regularizer(identifier, where: str):
    """The Keras 3 config of a regularizer (``None`` stays ``None``)."""
    reg = regularizers.get(identifier, where)
    if reg is None:
        return None
    if not isinstance(reg, regularizers.L1L2):
        raise KerasSaveError(
            f"{where}: custom regularizer {identifier!r}; Keras 3 can only be given L1/L2/L1L2 by config "
            "(it would change training there)."
        )
    return _object("keras.regularizers", "L1L2", {"l1": float(reg.l1), "l2": float(reg.l2)})


_CONSTRAINTS = {
    constraints.MaxNorm: "MaxNorm",
    constraints.NonNeg: "NonNeg",
    constraints.UnitNorm: "UnitNorm",
    constraints.MinMaxNorm: "MinMaxNorm",
}


def constraint(identifier, where: str):
    """The Keras 3 config of a constraint (``None`` stays ``None``)."""
    con = constraints.get(identifier, where)
    if con is None:
        return None
    class_name = _CONSTRAINTS.get(type(con))
    if class_name is None:
        raise KerasSaveError(
            f"{where}: custom constraint {identifier!r}; Keras 3 can only be given MaxNorm, NonNeg, UnitNorm or "
            "MinMaxNorm by config (it would change training there)."
        )
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(con).items()}
    return _object("keras.constraints", class_name, config)


def any_set(obj: Any, names) -> list[str]:
    """The names among ``names`` whose attribute on ``obj`` is not ``None``."""
    return [n for n in names if getattr(obj, n, None) is not None]
