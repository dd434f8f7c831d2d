"""Activation functions by their Keras names.

Keras 2 fixes the meaning of ``'hard_sigmoid'``::

    hard_sigmoid(x) = clip(0.2 * x + 0.5, 0, 1)            # Keras 2 (the default meaning here)
    hard_sigmoid_keras3(x) = clip(x / 6 + 0.5, 0, 1)        # Keras 3's definition

Both are reachable by name. ``None`` and ``'linear'`` are the identity.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Activation = str | Callable | None


def linear(x):
    """Identity: ``a(x) = x``."""
    return x


def _clip01(p):
    """``clip(p, 0, 1)`` as two selects: the same numbers (NaN stays NaN), and XLA's CPU fusions
    run them faster than ``jnp.clip``'s clamp (``bench/README.md``, "The hard sigmoid without
    jnp.clip")."""
    return jnp.where(p < 0, jnp.zeros_like(p), jnp.where(p > 1, jnp.ones_like(p), p))


@jax.custom_jvp
def hard_sigmoid(x):
    """Keras 2 hard sigmoid: ``clip(0.2 * x + 0.5, 0, 1)``.

    Its derivative is autodiff's of ``jnp.clip``: 0.2 inside, 0 outside and 0.1 where
    ``0.2 * x + 0.5`` is exactly 0 or 1."""
    return _clip01(0.2 * x + 0.5).astype(x.dtype)


@hard_sigmoid.defjvp
def _hard_sigmoid_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return hard_sigmoid(x), hard_sigmoid_slope(x) * dx


def hard_sigmoid_slope(x):
    """``d hard_sigmoid / dx``: 0.2 where ``0 < 0.2 * x + 0.5 < 1``, 0.1 where it is exactly 0 or 1
    (as autodiff of ``jnp.clip``), else 0."""
    p = 0.2 * x + 0.5
    return jnp.where((p > 0) & (p < 1), 0.2, jnp.where((p == 0) | (p == 1), 0.1, 0.0)).astype(x.dtype)


def hard_sigmoid_keras3(x):
    """Keras 3 hard sigmoid: ``clip(x / 6 + 0.5, 0, 1)`` (``relu6(x + 3) / 6``)."""
    return jnp.clip(x / 6.0 + 0.5, 0.0, 1.0).astype(x.dtype)


def sigmoid(x):
    """Logistic sigmoid ``1 / (1 + exp(-x))``."""
    return jax.nn.sigmoid(x)


def exponential(x):
    return jnp.exp(x)


def selu(x):
    return jax.nn.selu(x)


def elu(x, alpha: float = 1.0):
    return jax.nn.elu(x, alpha)


def softplus(x):
    return jax.nn.softplus(x)


def softsign(x):
    return jax.nn.soft_sign(x)


def relu(x):
    return jax.nn.relu(x)


def softmax(x):
    return jax.nn.softmax(x, axis=-1)


ACTIVATIONS: dict[str, Callable] = {
    "linear": linear,
    "tanh": jnp.tanh,
    "sigmoid": sigmoid,
    "hard_sigmoid": hard_sigmoid,
    "hard_sigmoid_keras3": hard_sigmoid_keras3,
    "relu": relu,
    "relu6": jax.nn.relu6,
    "elu": elu,
    "selu": selu,
    "softplus": softplus,
    "softsign": softsign,
    "softmax": softmax,
    "exponential": exponential,
    "swish": jax.nn.swish,
    "silu": jax.nn.silu,
    "gelu": jax.nn.gelu,
    "hard_silu": jax.nn.hard_silu,
    "hard_swish": jax.nn.hard_swish,
    "leaky_relu": jax.nn.leaky_relu,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "log_softmax": lambda x: jax.nn.log_softmax(x, axis=-1),
}


def get(identifier: Activation, argument: str = "activation") -> Callable:
    """Resolves an activation by Keras name, ``None`` (linear) or a callable.

    Raises:
      ValueError: for an unknown name, naming ``argument`` and the known names.
      TypeError: for anything that is neither a string, ``None`` nor callable.
    """
    if identifier is None:
        return linear
    if isinstance(identifier, str):
        try:
            return ACTIVATIONS[identifier]
        except KeyError:
            raise ValueError(
                f"`{argument}`: unknown activation {identifier!r}; expected one of "
                f"{sorted(ACTIVATIONS)}, None or a callable."
            ) from None
    if callable(identifier):
        return identifier
    raise TypeError(
        f"`{argument}`: expected an activation name, None or a callable, "
        f"got {identifier!r} of type {type(identifier).__name__}."
    )
