"""Weight initializers by their Keras names, as ``init(key, shape, dtype) -> array``.

Defaults follow Keras 2 (``RandomUniform(-0.05, 0.05)``, ``RandomNormal(0, 0.05)``,
``Orthogonal(gain=1)``...). Fans are computed as Keras does: for a 2-D shape
``(fan_in, fan_out)``; for a convolution kernel ``kernel_size + (in, out)`` both are
multiplied by the receptive field size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]


def _fans(shape) -> tuple[float, float]:
    if len(shape) < 1:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    if len(shape) == 2:
        return float(shape[0]), float(shape[1])
    receptive = math.prod(shape[:-2])
    return float(shape[-2] * receptive), float(shape[-1] * receptive)


@dataclasses.dataclass(frozen=True)
class Zeros:
    def __call__(self, key, shape, dtype=jnp.float32):
        return jnp.zeros(shape, dtype)


@dataclasses.dataclass(frozen=True)
class Ones:
    def __call__(self, key, shape, dtype=jnp.float32):
        return jnp.ones(shape, dtype)


@dataclasses.dataclass(frozen=True)
class Constant:
    value: float = 0.0

    def __call__(self, key, shape, dtype=jnp.float32):
        return jnp.full(shape, self.value, dtype)


@dataclasses.dataclass(frozen=True)
class RandomUniform:
    minval: float = -0.05
    maxval: float = 0.05

    def __call__(self, key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, self.minval, self.maxval)


@dataclasses.dataclass(frozen=True)
class RandomNormal:
    mean: float = 0.0
    stddev: float = 0.05

    def __call__(self, key, shape, dtype=jnp.float32):
        return self.mean + self.stddev * jax.random.normal(key, shape, dtype)


@dataclasses.dataclass(frozen=True)
class TruncatedNormal:
    mean: float = 0.0
    stddev: float = 0.05

    def __call__(self, key, shape, dtype=jnp.float32):
        return self.mean + self.stddev * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)


@dataclasses.dataclass(frozen=True)
class VarianceScaling:
    scale: float = 1.0
    mode: str = "fan_in"
    distribution: str = "normal"

    def __post_init__(self):
        if self.mode not in ("fan_in", "fan_out", "fan_avg"):
            raise ValueError(f"VarianceScaling `mode`: got {self.mode!r}, expected 'fan_in', 'fan_out' or 'fan_avg'.")
        if self.distribution not in ("normal", "truncated_normal", "untruncated_normal", "uniform"):
            raise ValueError(
                f"VarianceScaling `distribution`: got {self.distribution!r}, expected 'normal', "
                "'truncated_normal', 'untruncated_normal' or 'uniform'."
            )

    def __call__(self, key, shape, dtype=jnp.float32):
        fan_in, fan_out = _fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[self.mode]
        scale = self.scale / max(1.0, n)
        if self.distribution in ("normal", "truncated_normal"):
            # 0.879... is the stddev of a standard normal truncated to [-2, 2].
            stddev = math.sqrt(scale) / 0.87962566103423978
            return stddev * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)
        if self.distribution == "untruncated_normal":
            return math.sqrt(scale) * jax.random.normal(key, shape, dtype)
        limit = math.sqrt(3.0 * scale)
        return jax.random.uniform(key, shape, dtype, -limit, limit)


@dataclasses.dataclass(frozen=True)
class Orthogonal:
    """Orthogonal matrix of shape ``(prod(shape[:-1]), shape[-1])`` times ``gain``."""

    gain: float = 1.0

    def __call__(self, key, shape, dtype=jnp.float32):
        rows = math.prod(shape[:-1])
        cols = shape[-1]
        flat = jax.nn.initializers.orthogonal(scale=self.gain)(key, (rows, cols), jnp.float32)
        return flat.reshape(shape).astype(dtype)


@dataclasses.dataclass(frozen=True)
class Identity:
    gain: float = 1.0

    def __call__(self, key, shape, dtype=jnp.float32):
        if len(shape) != 2:
            raise ValueError(f"Identity initializer: expected a 2-D shape, got {tuple(shape)}.")
        return self.gain * jnp.eye(shape[0], shape[1], dtype=dtype)


def glorot_uniform():
    return VarianceScaling(1.0, "fan_avg", "uniform")


def glorot_normal():
    return VarianceScaling(1.0, "fan_avg", "truncated_normal")


def he_uniform():
    return VarianceScaling(2.0, "fan_in", "uniform")


def he_normal():
    return VarianceScaling(2.0, "fan_in", "truncated_normal")


def lecun_uniform():
    return VarianceScaling(1.0, "fan_in", "uniform")


def lecun_normal():
    return VarianceScaling(1.0, "fan_in", "truncated_normal")


_BY_NAME: dict[str, Callable[[], Initializer]] = {
    "zeros": Zeros,
    "zero": Zeros,
    "ones": Ones,
    "one": Ones,
    "constant": Constant,
    "uniform": RandomUniform,
    "random_uniform": RandomUniform,
    "normal": RandomNormal,
    "random_normal": RandomNormal,
    "truncated_normal": TruncatedNormal,
    "variance_scaling": VarianceScaling,
    "orthogonal": Orthogonal,
    "identity": Identity,
    "glorot_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "he_uniform": he_uniform,
    "he_normal": he_normal,
    "lecun_uniform": lecun_uniform,
    "lecun_normal": lecun_normal,
}


def _snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i > 0 and not name[i - 1].isupper():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


def get(identifier: str | Initializer | dict | Any, argument: str = "initializer") -> Initializer:
    """Resolves an initializer by Keras name (``'glorot_uniform'``, ``'Orthogonal'``...), a
    Keras-style config dict (``{'class_name': 'Constant', 'config': {'value': 0.1}}``) or a
    callable ``init(key, shape, dtype)``.
    """
    if isinstance(identifier, dict):
        if "class_name" not in identifier:
            raise ValueError(f"`{argument}`: a config dict needs 'class_name', got {identifier!r}.")
        factory = _BY_NAME.get(_snake(identifier["class_name"]))
        if factory is None:
            raise ValueError(
                f"`{argument}`: unknown initializer class "
                f"{identifier['class_name']!r}; expected one of {sorted(_BY_NAME)}."
            )
        return factory(**identifier.get("config", {}))
    if isinstance(identifier, str):
        factory = _BY_NAME.get(identifier) or _BY_NAME.get(_snake(identifier))
        if factory is None:
            raise ValueError(
                f"`{argument}`: unknown initializer {identifier!r}; expected one of {sorted(_BY_NAME)} or a callable."
            )
        return factory()
    if callable(identifier):
        return identifier
    raise TypeError(
        f"`{argument}`: expected an initializer name, config dict or callable, got {identifier!r} "
        f"of type {type(identifier).__name__}."
    )
