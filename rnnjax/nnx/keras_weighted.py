"""The NNX twins of Keras's layers with weights around the recurrent ones: ``Conv1D/2D/3D``,
``BatchNormalization``, ``LayerNormalization``, ``Attention``, ``AdditiveAttention``::

    conv = rnx.Conv2D(8, 3, padding="same", input_dim=1, rngs=nnx.Rngs(0))     # input channels
    att = rnx.Attention(use_scale=True, rngs=nnx.Rngs(0))
    out = att([query, value], mask=[query_mask, value_mask])

Each takes its linen twin's arguments (Keras's, in Keras's order) plus the input size the
weights need (``input_dim``: a convolution's input channels, the normalized axis' size(s),
``AdditiveAttention``'s feature size), holds the twin as ``spec`` and computes with the twin's
Flax-free function (:func:`rnnjax.layers.convolutional.conv`, ``batch_norm``, ``layer_norm``,
``attention``). Weights are ``nnx.Param`` under the Keras names (``kernel``, ``bias``,
``gamma``, ``beta``, ``scale``, ``concat_score_weight``), ``BatchNormalization``'s moving
statistics ``nnx.BatchStat`` (linen's ``'batch_stats'``), so :func:`rnnjax.nnx.from_linen`
converts linen variables.
"""

from __future__ import annotations

import numbers

import jax.numpy as jnp
from flax import nnx

from rnnjax import layers as L
from rnnjax.functional.core import init_weight
from rnnjax.layers.attention import (
    attention,
    attention_inputs,
    dot_attention_scores,
    scores_additive,
)
from rnnjax.layers.convolutional import conv, kernel_shape
from rnnjax.layers.normalization import batch_norm, layer_norm
from rnnjax.nnx import _args
from rnnjax.nnx.basic import _Companion, _Weighted
from rnnjax.nnx.cells import DropoutStream, resolve_deterministic


class _Conv(_Weighted):
    last_positional, first_argument = "bias_constraint", "filters"

    def __init__(self, *args, input_dim=None, rngs=None, **kwargs):
        self._bind(args, kwargs)
        owner = type(self).__name__
        channels = _args.check_input_dim(owner, input_dim, "input channels")
        if channels % self.spec.groups:
            raise ValueError(f"`input_dim`: {channels} input channels are not divisible by groups={self.spec.groups}.")
        rngs = _args.check_rngs(owner, rngs)
        self.kernel = self._weight("kernel", kernel_shape(self.spec, channels), rngs)
        self.bias = self._weight("bias", (self.spec.filters,), rngs) if self.spec.use_bias else nnx.data(None)
        self._init_activity()

    def __call__(self, inputs):
        bias = None if self.bias is None else self.bias[...]
        return self._activity(conv(self.spec, inputs, self.kernel[...], bias))


class Conv1D(_Conv):
    """``Conv1D(filters, kernel_size, strides=1, padding='valid', data_format='channels_last',
    dilation_rate=1, groups=1, activation=None, use_bias=True, ..., *, input_dim, param_dtype, rngs)``
    (see :class:`rnnjax.Conv1D`); ``input_dim``: the input channels."""

    linen_class = L.Conv1D


class Conv2D(_Conv):
    """``Conv2D(filters, kernel_size, ..., *, input_dim, rngs)`` (see :class:`rnnjax.Conv2D`)."""

    linen_class = L.Conv2D


class Conv3D(_Conv):
    """``Conv3D(filters, kernel_size, ..., *, input_dim, rngs)`` (see :class:`rnnjax.Conv3D`)."""

    linen_class = L.Conv3D


class BatchNormalization(_Companion):
    """``BatchNormalization(axis=-1, epsilon=1e-3, center=True, scale=True, *, input_dim, rngs=None)``
    in inference (see :class:`rnnjax.BatchNormalization`): ``gamma``/``beta`` ``nnx.Param``,
    ``moving_mean``/``moving_variance`` ``nnx.BatchStat`` of shape ``(input_dim,)``, the size
    of ``axis``."""

    linen_class, last_positional, first_argument = L.BatchNormalization, "scale", "axis"

    def __init__(self, *args, input_dim=None, rngs=None, **kwargs):
        del rngs  # Keras's initial values are constants
        self._bind(args, kwargs)
        n = _args.check_input_dim("BatchNormalization", input_dim, "features along `axis`")
        self.gamma = nnx.Param(jnp.ones((n,))) if self.spec.scale else nnx.data(None)
        self.beta = nnx.Param(jnp.zeros((n,))) if self.spec.center else nnx.data(None)
        self.moving_mean = nnx.BatchStat(jnp.zeros((n,)))
        self.moving_variance = nnx.BatchStat(jnp.ones((n,)))

    def __call__(self, inputs):
        gamma = None if self.gamma is None else self.gamma[...]
        beta = None if self.beta is None else self.beta[...]
        return batch_norm(
            inputs, self.spec.axis, self.spec.epsilon, self.moving_mean[...], self.moving_variance[...], gamma, beta
        )


class LayerNormalization(_Companion):
    """``LayerNormalization(axis=-1, epsilon=1e-3, center=True, scale=True, rms_scaling=False, *,
    input_dim, rngs=None)`` (see :class:`rnnjax.LayerNormalization`); ``input_dim``: the size
    of ``axis`` (a tuple of sizes for several axes), the shape of ``gamma``/``beta``."""

    linen_class, last_positional, first_argument = L.LayerNormalization, "rms_scaling", "axis"

    def __init__(self, *args, input_dim=None, rngs=None, **kwargs):
        del rngs  # Keras's initial values are constants
        self._bind(args, kwargs)
        sizes = input_dim if isinstance(input_dim, (tuple, list)) else (input_dim,)
        axes = self.spec.axis if isinstance(self.spec.axis, (tuple, list)) else (self.spec.axis,)
        if len(sizes) != len(axes) or any(
            isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0 for n in sizes
        ):
            raise ValueError(
                f"`input_dim`: expected the size of each normalized axis {tuple(axes)} (positive "
                f"integers), got {input_dim!r}."
            )
        shape = tuple(int(n) for n in sizes)
        spec = self.spec
        self.gamma = nnx.Param(jnp.ones(shape)) if spec.scale or spec.rms_scaling else nnx.data(None)
        self.beta = nnx.Param(jnp.zeros(shape)) if spec.center and not spec.rms_scaling else nnx.data(None)

    def __call__(self, inputs):
        gamma = None if self.gamma is None else self.gamma[...]
        beta = None if self.beta is None else self.beta[...]
        return layer_norm(inputs, self.spec.axis, self.spec.epsilon, gamma, beta, self.spec.rms_scaling)


class _Attention(DropoutStream, _Companion):
    def drops(self) -> bool:
        return self.spec.dropout > 0

    def _init(self, args, kwargs, rngs, deterministic, rng_collection):
        self._bind(args, kwargs)
        if self.drops():
            rngs = _args.check_rngs(type(self).__name__, rngs)
        self._init_dropout(rngs, deterministic, rng_collection)

    def _run(self, scores, v, qm, vm, training, deterministic, rngs, return_attention_scores, use_causal_mask):
        keys = self.mask_keys(resolve_deterministic(training, deterministic), rngs)
        out = attention(
            scores,
            v,
            qm,
            vm,
            bool(self.spec.causal or use_causal_mask),
            self.spec.dropout,
            None if keys is None else keys(),
            self.spec.seed,
        )
        return out if return_attention_scores else out[0]


class Attention(_Attention):
    """``Attention(use_scale=False, score_mode='dot', dropout=0.0, seed=None, *, causal=False,
    deterministic=False, rng_collection='dropout', rngs=None)`` (see :class:`rnnjax.Attention`):
    ``scale ()`` with ``use_scale``, ``concat_score_weight ()`` with ``'concat'``. Call:
    ``layer([query, value(, key)], mask=None, training=None, return_attention_scores=False,
    use_causal_mask=False, *, deterministic=None, rngs=None)``.

    Args:
      dropout: float between 0 and 1, the fraction of the attention weights to drop in training.
    """

    linen_class, last_positional, first_argument = L.Attention, "seed", "use_scale"

    def __init__(self, *args, deterministic: bool = False, rng_collection: str = "dropout", rngs=None, **kwargs):
        self._init(args, kwargs, rngs, deterministic, rng_collection)
        dtype = self.spec.param_dtype
        self.scale = nnx.Param(jnp.ones((), dtype)) if self.spec.use_scale else nnx.data(None)
        self.concat_score_weight = (
            nnx.Param(jnp.ones((), dtype)) if self.spec.score_mode == "concat" else nnx.data(None)
        )

    def __call__(
        self,
        inputs,
        *,
        mask=None,
        training=None,
        return_attention_scores: bool = False,
        use_causal_mask: bool = False,
        deterministic=None,
        rngs=None,
    ):
        q, v, k, qm, vm = attention_inputs("Attention", inputs, mask)
        scale = None if self.scale is None else self.scale[...]
        weight = None if self.concat_score_weight is None else self.concat_score_weight[...]
        scores = dot_attention_scores(self.spec, q, k, scale, weight)
        return self._run(scores, v, qm, vm, training, deterministic, rngs, return_attention_scores, use_causal_mask)


class AdditiveAttention(_Attention):
    """``AdditiveAttention(use_scale=True, dropout=0.0, seed=None, *, causal=False, input_dim,
    deterministic=False, rng_collection='dropout', rngs)`` (see :class:`rnnjax.AdditiveAttention`):
    ``scale (input_dim,)`` (Glorot-uniform; ``input_dim`` the query's features, needed with
    ``use_scale``). Call as :class:`Attention`.

    Args:
      dropout: float between 0 and 1, the fraction of the attention weights to drop in training.
    """

    linen_class, last_positional, first_argument = L.AdditiveAttention, "seed", "use_scale"

    def __init__(
        self, *args, input_dim=None, deterministic: bool = False, rng_collection: str = "dropout", rngs=None, **kwargs
    ):
        self._init(args, kwargs, rngs, deterministic, rng_collection)
        if self.spec.use_scale:
            n = _args.check_input_dim("AdditiveAttention", input_dim, "query features")
            key = _args.check_rngs("AdditiveAttention", rngs).params()
            scale = init_weight("glorot_uniform", key, (n,), self.spec.param_dtype, "scale")
            self.scale: nnx.Param | None = nnx.Param(scale)
        else:
            self.scale = nnx.data(None)

    def __call__(
        self,
        inputs,
        *,
        mask=None,
        training=None,
        return_attention_scores: bool = False,
        use_causal_mask: bool = False,
        deterministic=None,
        rngs=None,
    ):
        q, v, k, qm, vm = attention_inputs("AdditiveAttention", inputs, mask)
        scores = scores_additive(q, k, None if self.scale is None else self.scale[...])
        return self._run(scores, v, qm, vm, training, deterministic, rngs, return_attention_scores, use_causal_mask)
