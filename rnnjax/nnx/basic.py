"""The NNX companion layers ``Embedding``, ``Masking``, ``Dense``, ``Dropout``, ``Activation``:
Keras 2's signatures and defaults (those of the linen twins in :mod:`rnnjax.layers.basic`, whose
equations and mask rules they share), parameters built at construction::

    emb = rnnjax.nnx.Embedding(1000, 64, mask_zero=True, rngs=nnx.Rngs(0))   # ids (batch, T) -> (batch, T, 64)
    dense = rnnjax.nnx.Dense(10, activation="softmax", input_dim=64, rngs=nnx.Rngs(0))
    drop = rnnjax.nnx.Dropout(0.5, rngs=nnx.Rngs(0))     # drop.train() / drop.eval(), or training= at call

Each holds its linen twin as ``spec`` (its static configuration, validated by it) and has the
twin's ``compute_mask(inputs, mask)``, which :class:`rnnjax.nnx.Sequential` follows. Parameters
are ``nnx.Param`` under the Keras names (``embeddings``; ``kernel``, ``bias``) in Keras layout,
their penalties and constraints as metadata (:func:`rnnjax.nnx.regularization_loss`,
:func:`rnnjax.nnx.apply_constraints`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax.numpy as jnp
from flax import nnx

from rnnjax import layers as linen_layers
from rnnjax import regularizers
from rnnjax.functional.core import init_weight
from rnnjax.layers.basic import dense, dropout
from rnnjax.nnx import _args
from rnnjax.nnx.cells import DropoutStream, resolve_deterministic, weight_param
from rnnjax.nnx.variables import ActivityPenalty


class _Companion(nnx.Module):
    """The linen twin ``linen_class`` as ``spec`` (Keras 2's arguments positionally up to
    ``last_positional``), and its mask rule."""

    linen_class: ClassVar[type]  # set by each subclass
    last_positional: ClassVar[str | None] = None
    first_argument: ClassVar[str | None] = None

    def _bind(self, args, kwargs):
        owner = type(self).__name__
        config = _args.bind(owner, self.linen_class, args, kwargs, self.last_positional, self.first_argument)
        self.spec = self.linen_class(**config)  # validates every argument, with the linen layer's messages

    def compute_mask(self, inputs, mask=None):
        """The linen twin's (Keras's) rule."""
        return self.spec.compute_mask(inputs, mask)


class _Weighted(_Companion):
    """Weights drawn with their Keras initializer; the activity penalty of the last call."""

    activity_penalty: Any  # an ActivityPenalty with an activity_regularizer, else None (_init_activity)

    def _weight(self, arg: str, shape, rngs):
        spec = self.spec
        value = init_weight(
            getattr(spec, f"{arg}_initializer"), rngs.params(), shape, spec.param_dtype, f"{arg}_initializer"
        )
        return weight_param(value, getattr(spec, f"{arg}_regularizer"), getattr(spec, f"{arg}_constraint"), arg)

    def _init_activity(self):
        self.activity_regularizer = regularizers.get(self.spec.activity_regularizer, "activity_regularizer")
        self.activity_penalty = (
            ActivityPenalty(jnp.zeros((), jnp.float32)) if self.activity_regularizer else nnx.data(None)
        )

    def _activity(self, outputs):
        if self.activity_regularizer is not None:
            penalty = regularizers.activity_penalty(self.activity_regularizer, outputs)
            self.activity_penalty[...] = jnp.asarray(penalty, jnp.float32)
        return outputs


class Embedding(_Weighted):
    """Turns non-negative integer ids into dense vectors (Keras 2; see :class:`rnnjax.Embedding`):
    ``Embedding(input_dim, output_dim, embeddings_initializer='uniform', embeddings_regularizer=None,
    activity_regularizer=None, embeddings_constraint=None, mask_zero=False, input_length=None, *,
    param_dtype=float32, rngs)``. ``y[..., :] = embeddings[ids[...], :]``, parameter ``embeddings
    (input_dim, output_dim)``; with ``mask_zero`` the output mask is ``ids != 0``."""

    linen_class = linen_layers.Embedding
    last_positional = "input_length"
    first_argument = "input_dim"

    def __init__(self, *args, rngs=None, **kwargs):
        self._bind(args, kwargs)
        rngs = _args.check_rngs("Embedding", rngs)
        self.embeddings = self._weight("embeddings", (self.spec.input_dim, self.spec.output_dim), rngs)
        self._init_activity()

    def __call__(self, inputs):
        """``ids (...)`` -> ``(..., output_dim)``."""
        ids = self.spec.check_ids(inputs)  # the linen twin's checks: integer ids in range, input_length
        return self._activity(jnp.take(self.embeddings[...], ids, axis=0))


class Dense(_Weighted):
    """Densely-connected layer (Keras 2; see :class:`rnnjax.Dense`): ``Dense(units, activation=None,
    use_bias=True, kernel_initializer='glorot_uniform', bias_initializer='zeros', kernel_regularizer=None,
    bias_regularizer=None, activity_regularizer=None, kernel_constraint=None, bias_constraint=None, *,
    input_dim, param_dtype=float32, rngs)``. ``y = activation(x @ kernel + bias)`` on the last axis,
    ``(..., input_dim) -> (..., units)``; parameters ``kernel (input_dim, units)``, ``bias (units,)``.
    The mask passes through."""

    linen_class = linen_layers.Dense
    last_positional = "bias_constraint"
    first_argument = "units"

    def __init__(self, *args, input_dim=None, rngs=None, **kwargs):
        self._bind(args, kwargs)
        input_dim = _args.check_input_dim("Dense", input_dim)
        rngs = _args.check_rngs("Dense", rngs)
        self.kernel = self._weight("kernel", (input_dim, self.spec.units), rngs)
        self.bias = self._weight("bias", (self.spec.units,), rngs) if self.spec.use_bias else nnx.data(None)
        self._init_activity()

    def __call__(self, inputs):
        """``(..., input_dim)`` -> ``(..., units)``."""
        bias = None if self.bias is None else self.bias[...]
        return self._activity(dense(inputs, self.kernel[...], bias, self.spec.activation))


class Dropout(DropoutStream, _Companion):
    """Applies Dropout to the input (Keras 2; see :class:`rnnjax.Dropout`): ``Dropout(rate,
    noise_shape=None, seed=None, *, deterministic=False, rng_collection='dropout', rngs)``. In
    training ``y = x * keep / (1 - rate)``, ``keep ~ Bernoulli(1 - rate)`` of shape ``noise_shape``;
    otherwise ``y = x``. Keys come from ``rngs[rng_collection]`` (forked at construction; ``rngs``
    may be omitted when ``rate == 0``); ``model.train()``/``model.eval()`` switch it, and a call's
    ``training=``/``deterministic=`` (and ``rngs=``) override, as for the recurrent layers."""

    linen_class = linen_layers.Dropout
    last_positional = "seed"
    first_argument = "rate"

    def __init__(self, *args, deterministic: bool = False, rng_collection: str = "dropout", rngs=None, **kwargs):
        self._bind(args, kwargs)
        if self.drops():
            rngs = _args.check_rngs("Dropout", rngs)
        self._init_dropout(rngs, deterministic, rng_collection)

    def drops(self) -> bool:
        return self.spec.rate > 0

    def __call__(self, inputs, *, training: bool | None = None, deterministic: bool | None = None, rngs=None):
        keys = self.mask_keys(resolve_deterministic(training, deterministic), rngs)
        return inputs if keys is None else dropout(self.spec, inputs, keys())


class _Parameterless(_Companion):
    """A layer without parameters: its linen twin's call."""

    def __init__(self, *args, rngs=None, **kwargs):
        del rngs  # no parameters; accepted for a uniform signature
        self._bind(args, kwargs)

    def __call__(self, inputs):
        return self.spec(inputs)


class Masking(_Parameterless):
    """Masks the steps whose features all equal ``mask_value`` (Keras 2; see :class:`rnnjax.Masking`):
    ``Masking(mask_value=0.0)``; mask ``any(x != mask_value, axis=-1)``, output ``where(mask, x, 0)``."""

    linen_class = linen_layers.Masking
    last_positional = "mask_value"
    first_argument = "mask_value"


class Activation(_Parameterless):
    """Applies an activation function (Keras 2; see :class:`rnnjax.Activation`): ``Activation(activation)``,
    by Keras name or a callable."""

    linen_class = linen_layers.Activation
    last_positional = "activation"
    first_argument = "activation"
