"""The Keras 2 layers around the recurrent ones, as Flax modules: ``Embedding``, ``Masking``,
``Dense``, ``Dropout``, ``Activation``.

Each has Keras's ``compute_mask(inputs, mask)`` rule, which :class:`rnnjax.Sequential` uses to
carry a mask from layer to layer: ``Embedding(mask_zero=True)`` and ``Masking`` produce one,
``Dense``, ``Dropout`` and ``Activation`` pass it through unchanged. Penalties go into the
``'losses'`` collection and constraints are found by :func:`rnnjax.keras_constraints`, as for the
recurrent layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rnnjax import constraints, regularizers
from rnnjax.functional import activations, initializers
from rnnjax.functional.core import check_rate, check_units, concrete, init_weight
from rnnjax.layers.protocol import PassMask as _PassMask


class _WeightedModule(Protocol):
    """What :class:`_Weighted` needs of the linen module it is mixed into."""

    weight_args: tuple
    activity_regularizer: Any
    param_dtype: Any

    def param(self, name: str, init_fn: Callable, *init_args: Any) -> Any: ...


class _Weighted:
    """Creating a weight with its Keras initializer, reporting its penalty; declaring constraints."""

    weight_args: tuple = ()  # (parameter name, Keras argument prefix)

    def declared_constraints(self) -> dict:
        """``{weight name: projection}`` for :func:`rnnjax.constraints.keras_constraints`."""
        weights = [(n, a) for n, a in self.weight_args if n != "bias" or getattr(self, "use_bias", True)]
        return constraints.declared(self, weights)

    def _check_args(self: _WeightedModule):
        for _, arg in self.weight_args:
            regularizers.get(getattr(self, f"{arg}_regularizer"), f"{arg}_regularizer")
            constraints.get(getattr(self, f"{arg}_constraint"), f"{arg}_constraint")
            initializers.get(getattr(self, f"{arg}_initializer"), f"{arg}_initializer")
        regularizers.get(self.activity_regularizer, "activity_regularizer")

    def _weight(self: _WeightedModule, name, arg, shape):
        value = self.param(
            name,
            lambda key: init_weight(
                getattr(self, f"{arg}_initializer"), key, shape, self.param_dtype, f"{arg}_initializer"
            ),
        )
        reg = regularizers.get(getattr(self, f"{arg}_regularizer"))
        if reg is not None:
            regularizers.report(self, f"{arg}_regularizer", reg(value))
        return value

    def _activity(self: _WeightedModule, outputs):
        reg = regularizers.get(self.activity_regularizer)
        if reg is not None:
            regularizers.report(self, "activity_regularizer", regularizers.activity_penalty(reg, outputs))
        return outputs


class Embedding(_Weighted, nn.Module):
    """Turns non-negative integers (indexes) into dense vectors of fixed size (Keras 2).

    ``y[..., :] = embeddings[ids[...], :]``: inputs ``(batch, input_length)`` of integer ids in
    ``[0, input_dim)``, output ``(batch, input_length, output_dim)``; parameter ``embeddings
    (input_dim, output_dim)``. ``embeddings_initializer='uniform'`` is Keras 2's
    ``RandomUniform(-0.05, 0.05)``. With ``mask_zero=True`` id 0 is padding: the output mask is
    ``ids != 0`` (so ``input_dim`` must be at least 2, for one real id). ``input_length``, when
    given, is checked against the inputs' second axis. Float ids are cast to int32, as Keras 2
    did; outside ``jax.jit`` ids that are out of range or not integers raise ``ValueError``
    (under ``jit`` an out-of-range id gives a NaN row: ``jnp.take``'s fill). ``param_dtype`` (not
    in Keras) sets the parameter's dtype.
    """

    input_dim: int
    output_dim: int
    embeddings_initializer: Any = "uniform"
    embeddings_regularizer: Any = None
    activity_regularizer: Any = None
    embeddings_constraint: Any = None
    mask_zero: bool = False
    input_length: int | None = None
    param_dtype: Any = jnp.float32

    weight_args = (("embeddings", "embeddings"),)

    def __post_init__(self):
        check_units(self.input_dim, "input_dim")
        check_units(self.output_dim, "output_dim")
        if self.mask_zero and self.input_dim < 2:
            raise ValueError(
                f"`input_dim`: with mask_zero=True id 0 is reserved for padding, so input_dim must be at least 2 "
                f"(the vocabulary size + 1); got {self.input_dim}."
            )
        self._check_args()
        super().__post_init__()

    def check_ids(self, inputs):
        """``inputs`` as integer ids after Keras 2's checks (integer values in ``[0, input_dim)``
        where they are concrete, ``input_length``); side-effect free (the NNX twin calls it)."""
        if not hasattr(inputs, "shape") or not hasattr(inputs, "dtype"):
            raise TypeError(f"`inputs`: expected an array of integer ids, got {type(inputs).__name__}.")
        if self.input_length is not None and (inputs.ndim < 2 or inputs.shape[1] != self.input_length):
            raise ValueError(
                f"`inputs`: the layer was declared with input_length={self.input_length}, got shape "
                f"{tuple(inputs.shape)}."
            )
        values = concrete(inputs)
        if values is not None and values.size:
            if not np.all(np.mod(values, 1) == 0):
                raise ValueError("`inputs`: Embedding takes integer ids; got values that are not integers.")
            if values.min() < 0 or values.max() >= self.input_dim:
                raise ValueError(
                    f"`inputs`: ids must lie in [0, input_dim={self.input_dim}); got ids from {values.min()} to "
                    f"{values.max()}."
                )
        return inputs if jnp.issubdtype(inputs.dtype, jnp.integer) else inputs.astype(jnp.int32)

    @nn.compact
    def __call__(self, inputs):
        """``ids (...)`` -> ``(..., output_dim)``."""
        ids = self.check_ids(inputs)
        embeddings = self._weight("embeddings", "embeddings", (self.input_dim, self.output_dim))
        return self._activity(jnp.take(embeddings, ids, axis=0))

    def compute_mask(self, inputs, mask=None):
        """``ids != 0`` with ``mask_zero``, else ``None`` (an incoming mask is not passed on, as in Keras)."""
        del mask
        return jnp.not_equal(inputs, 0) if self.mask_zero else None


class Masking(_PassMask, nn.Module):
    """Masks a sequence by using a mask value to skip timesteps (Keras 2).

    For inputs ``(batch, timesteps, features)`` the mask is ``m[b, t] = any_f(x[b, t, f] !=
    mask_value)``: a step is masked where every feature equals ``mask_value``. The output is the
    input with the masked steps zeroed, ``where(m[..., None], x, 0)`` (Keras 2 wrote ``x * m``,
    the same numbers unless ``mask_value`` is ±inf or NaN, where it gave NaN).
    """

    mask_value: float = 0.0

    def __call__(self, inputs):
        return jnp.where(self.compute_mask(inputs)[..., None], inputs, jnp.zeros((), inputs.dtype))

    def compute_mask(self, inputs, mask=None):
        """``any(inputs != mask_value, axis=-1)`` (replacing any incoming mask, as in Keras)."""
        del mask
        if not hasattr(inputs, "ndim") or inputs.ndim < 2:
            raise ValueError(
                f"`inputs`: Masking expected an array (batch, timesteps, features), got shape "
                f"{getattr(inputs, 'shape', type(inputs).__name__)}."
            )
        return jnp.any(jnp.not_equal(inputs, self.mask_value), axis=-1)


class Dense(_PassMask, _Weighted, nn.Module):
    """Just your regular densely-connected NN layer (Keras 2).

    ``y = activation(x @ kernel + bias)`` on the last axis: inputs ``(..., input_dim)``, output
    ``(..., units)``; parameters ``kernel (input_dim, units)``, ``bias (units,)``. Keras 2
    defaults: no activation, ``glorot_uniform`` kernel, ``zeros`` bias. The mask passes through
    (a ``Dense`` on a sequence acts per step). ``param_dtype`` (not in Keras) sets the parameters'
    dtype.
    """

    units: int
    activation: Any = None
    use_bias: bool = True
    kernel_initializer: Any = "glorot_uniform"
    bias_initializer: Any = "zeros"
    kernel_regularizer: Any = None
    bias_regularizer: Any = None
    activity_regularizer: Any = None
    kernel_constraint: Any = None
    bias_constraint: Any = None
    param_dtype: Any = jnp.float32

    weight_args = (("kernel", "kernel"), ("bias", "bias"))

    def __post_init__(self):
        check_units(self.units)
        activations.get(self.activation, "activation")
        self._check_args()
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs):
        """``(..., input_dim)`` -> ``(..., units)``."""
        check_dense_inputs(inputs)
        kernel = self._weight("kernel", "kernel", (inputs.shape[-1], self.units))
        bias = self._weight("bias", "bias", (self.units,)) if self.use_bias else None
        return self._activity(dense(inputs, kernel, bias, self.activation))


def check_dense_inputs(inputs) -> None:
    if not hasattr(inputs, "ndim") or inputs.ndim < 1:
        raise ValueError(
            f"`inputs`: Dense expected an array (..., features), got {getattr(inputs, 'shape', inputs)!r}."
        )


def dense(inputs, kernel, bias, activation):
    """``activation(inputs @ kernel + bias)`` (``bias`` None: none), checking the feature count;
    shared by the linen and NNX ``Dense``."""
    check_dense_inputs(inputs)
    if kernel.shape[0] != inputs.shape[-1]:
        raise ValueError(
            f"`inputs`: {inputs.shape[-1]} features, but Dense was built for {kernel.shape[0]} "
            f"(kernel shape {tuple(kernel.shape)})."
        )
    y = jnp.matmul(inputs, kernel)  # contracts the last axis only: partitions over any batch axes
    if bias is not None:
        y = y + bias
    return activations.get(activation)(y)


class Dropout(_PassMask, nn.Module):
    """Applies Dropout to the input (Keras 2): in training, ``y = x * keep / (1 - rate)`` with
    ``keep ~ Bernoulli(1 - rate)``; otherwise ``y = x``.

    ``noise_shape``: the shape of ``keep``, broadcast against the input; ``None`` entries take
    the input's size (Keras's ``(batch, 1, features)`` drops the same features at every step).
    Randomness comes from the ``'dropout'`` RNG stream (``apply(..., rngs={'dropout': key})``),
    as for the recurrent layers; ``seed`` (Keras's op seed) is folded into that key.
    """

    rate: float
    noise_shape: Sequence[int | None] | None = None
    seed: int | None = None

    def __post_init__(self):
        check_rate(self.rate, "rate")
        super().__post_init__()

    def mask_shape(self, inputs):
        """The shape of the keep mask for ``inputs``: ``noise_shape`` with its None entries the
        input's sizes (checked); side-effect free (the NNX twin calls it through :func:`dropout`)."""
        if self.noise_shape is None:
            return inputs.shape
        shape = tuple(self.noise_shape)
        if len(shape) != inputs.ndim or any(s is not None and s != 1 and s != d for s, d in zip(shape, inputs.shape)):
            raise ValueError(
                f"`noise_shape`: expected {inputs.ndim} entries, each None, 1 or the input's size, for inputs of "
                f"shape {tuple(inputs.shape)}; got {self.noise_shape!r}."
            )
        return tuple(d if s is None else s for s, d in zip(shape, inputs.shape))

    def __call__(self, inputs, *, training: bool = False):
        if not training or self.rate == 0.0:
            return inputs
        return dropout(self, inputs, self.make_rng("dropout"))


def dropout(spec: Dropout, inputs, key):
    """``inputs * keep / (1 - rate)``, ``keep ~ Bernoulli(1 - rate)`` of ``spec``'s noise shape, ``spec.seed``
    folded into ``key``; shared by the linen and NNX ``Dropout`` (``spec``: a linen ``Dropout``)."""
    if spec.seed is not None:
        key = jax.random.fold_in(key, spec.seed)
    keep = jax.random.bernoulli(key, 1.0 - spec.rate, spec.mask_shape(inputs))
    return jnp.where(keep, inputs / jnp.asarray(1.0 - spec.rate, inputs.dtype), jnp.zeros((), inputs.dtype))


class Activation(_PassMask, nn.Module):
    """Applies an activation function to an output (Keras 2): ``y = activation(x)``, by Keras
    name (``'tanh'``, ``'relu'``, ``'softmax'`` on the last axis, Keras 2's ``'hard_sigmoid'``...)
    or a callable; see :mod:`rnnjax.activations`."""

    activation: Any

    def __post_init__(self):
        activations.get(self.activation, "activation")
        super().__post_init__()

    def __call__(self, inputs):
        return activations.get(self.activation)(inputs)
