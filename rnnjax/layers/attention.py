"""Keras's dot-product ``Attention`` (Luong) and ``AdditiveAttention`` (Bahdanau) as Flax linen
modules; their computation :func:`attention` is shared with the NNX twins
(:mod:`rnnjax.nnx.keras_layers`).

Called as every rnnjax layer with several inputs::

    out = layer([query, value], mask=[query_mask, value_mask])          # key = value
    out, scores = layer([query, value, key], mask=[...], return_attention_scores=True)

Sources: ``keras/src/layers/attention/{attention,additive_attention}.py`` (Keras 3) and
``tf_keras/layers/attention/{base_dense_attention,attention,additive_attention}.py`` (Keras 2).
The two compute the same numbers; they differ in where causal masking is asked for: Keras 2
(tf-keras up to 2.10) had a ``causal`` constructor argument, tf-keras 2.11+ and Keras 3 a
``use_causal_mask`` call argument; both are accepted here.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnnjax.functional.core import check_rate, init_weight
from rnnjax.layers.merging import merge_inputs

SCORE_MODES = ("dot", "concat")


def attention_inputs(layer: str, inputs, mask) -> tuple:
    """``(query, value, key, query_mask, value_mask)``, checked: ``query (batch, Tq, dim)``,
    ``value (batch, Tv, dim_v)``, ``key`` (default ``value``) ``(batch, Tv, dim)``; masks boolean
    ``(batch, Tq)`` / ``(batch, Tv)`` or None."""
    xs, masks = merge_inputs(layer, inputs, mask, (2, 3))
    q, v = xs[0], xs[1]
    k = xs[2] if len(xs) > 2 else v
    if (
        q.ndim < 3
        or v.ndim != q.ndim
        or k.shape[:-1] != v.shape[:-1]
        or k.shape[-1] != q.shape[-1]
        or q.shape[:-2] != v.shape[:-2]
    ):
        raise ValueError(
            f"`inputs`: {layer} takes [query (batch, Tq, dim), value (batch, Tv, dim_v), key (batch, Tv, dim)]; "
            f"got shapes {[tuple(x.shape) for x in xs]}."
        )
    qm, vm = masks[0], masks[1]
    for name, m, x in (("query", qm, q), ("value", vm, v)):
        if m is not None and tuple(jnp.shape(m)) != tuple(x.shape[:-1]):
            raise ValueError(
                f"`mask`: the {name} mask must have shape {tuple(x.shape[:-1])}, got {tuple(jnp.shape(m))}."
            )
    return q, v, k, qm, vm


def scores_dot(query, key, scale=None):
    """``s[b, i, j] = scale * sum_d q[b, i, d] k[b, j, d]`` (Luong; ``scale`` None: 1)."""
    s = jnp.einsum("...id,...jd->...ij", query, key)
    return s if scale is None else s * scale


def scores_concat(query, key, weight, scale=None):
    """``s[b, i, j] = weight * sum_d tanh(scale * (q[b, i, d] + k[b, j, d]))`` (Keras's
    ``score_mode='concat'``; ``scale`` None: 1)."""
    z = query[..., :, None, :] + key[..., None, :, :]
    return weight * jnp.sum(jnp.tanh(z if scale is None else scale * z), axis=-1)


def scores_additive(query, key, scale=None):
    """``s[b, i, j] = sum_d scale[d] * tanh(q[b, i, d] + k[b, j, d])`` (Bahdanau; ``scale`` None: 1)."""
    t = jnp.tanh(query[..., :, None, :] + key[..., None, :, :])
    return jnp.sum(t if scale is None else scale * t, axis=-1)


def attention(
    scores, value, query_mask=None, value_mask=None, causal: bool = False, dropout: float = 0.0, key=None, seed=None
):
    """``out = softmax(s') @ value``, ``s' = s - 1e9`` where the value mask is False or, with
    ``causal``, where ``j > i`` (position ``i`` sees no later ``j``); rows of a False query mask
    are zeroed. ``dropout`` (with a ``key``; ``seed`` folded into it) drops attention weights,
    ``w * keep / (1 - rate)``. Returns ``(out (batch, Tq, dim_v), weights (batch, Tq, Tv))``."""
    keep = None
    if value_mask is not None:
        keep = jnp.asarray(value_mask, bool)[..., None, :]
    if causal:
        tq, tv = scores.shape[-2:]
        lower = jnp.arange(tq)[:, None] >= jnp.arange(tv)[None, :]
        keep = lower if keep is None else jnp.logical_and(keep, lower)
    if keep is not None:
        big = 65504.0 if scores.dtype == jnp.float16 else 1e9
        scores = jnp.where(keep, scores, scores - big)
    weights = jax.nn.softmax(scores, axis=-1)
    if dropout > 0.0 and key is not None:
        key = key if seed is None else jax.random.fold_in(key, seed)
        kept = jax.random.bernoulli(key, 1.0 - dropout, weights.shape)
        weights = jnp.where(kept, weights / (1.0 - dropout), jnp.zeros((), weights.dtype))
    out = jnp.einsum("...ij,...jd->...id", weights, value)
    if query_mask is not None:
        out = jnp.where(jnp.asarray(query_mask, bool)[..., None], out, jnp.zeros((), out.dtype))
    return out, weights


class _Attention(nn.Module):
    """Shared by the two layers: the call convention, masks, causal masking and dropout; a layer
    has its ``scores(query, key)``."""

    def __post_init__(self):
        check_attention_args(self)
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        inputs,
        *,
        mask=None,
        training: bool = False,
        return_attention_scores: bool = False,
        use_causal_mask: bool = False,
    ):
        q, v, k, qm, vm = attention_inputs(type(self).__name__, inputs, mask)
        key = self.make_rng("dropout") if training and self.dropout > 0.0 else None
        out = attention(
            self.scores(q, k), v, qm, vm, bool(self.causal or use_causal_mask), self.dropout, key, self.seed
        )
        return out if return_attention_scores else out[0]

    def compute_mask(self, inputs, mask=None):
        """The query mask (Keras 2 and 3), or None."""
        merge_inputs(type(self).__name__, inputs, mask, (2, 3))
        return None if not mask or mask[0] is None else jnp.asarray(mask[0], bool)


def check_attention_args(spec) -> None:
    check_rate(spec.dropout, "dropout")
    if getattr(spec, "score_mode", "dot") not in SCORE_MODES:
        raise ValueError(f"`score_mode`: expected one of {list(SCORE_MODES)}, got {spec.score_mode!r}.")


def dot_attention_scores(spec, query, key, scale, concat_weight):
    """The scores of an ``Attention`` configured as ``spec``."""
    if spec.score_mode == "dot":
        return scores_dot(query, key, scale)
    return scores_concat(query, key, concat_weight, scale)


class Attention(_Attention):
    """Dot-product attention (Luong): ``scores = query @ key^T`` (``score_mode='dot'``, times the
    scalar weight ``scale`` with ``use_scale``) or ``concat_score_weight * sum tanh(scale * (q +
    k))`` (``'concat'``); then :func:`attention`. Weights: ``scale ()`` (ones) with ``use_scale``,
    ``concat_score_weight ()`` (ones) with ``'concat'``. ``dropout`` drops attention weights in
    training (the ``'dropout'`` RNG stream, ``seed`` folded into its key). ``causal``: Keras
    2's constructor form of ``use_causal_mask``.

    Call: ``layer([query, value(, key)], mask=None, training=False, return_attention_scores=False,
    use_causal_mask=False)`` -> ``(batch, Tq, dim_v)`` (and the ``(batch, Tq, Tv)`` weights).

    Args:
      dropout: float between 0 and 1, the fraction of the attention weights to drop in training.
    """

    use_scale: bool = False
    score_mode: str = "dot"
    dropout: float = 0.0
    seed: int | None = None
    causal: bool = False
    param_dtype: Any = jnp.float32

    def scores(self, query, key):
        """``(batch, Tq, Tv)`` scores (:func:`scores_dot` / :func:`scores_concat`), creating the weights."""
        scale = self.param("scale", lambda k: jnp.ones((), self.param_dtype)) if self.use_scale else None
        weight = (
            self.param("concat_score_weight", lambda k: jnp.ones((), self.param_dtype))
            if self.score_mode == "concat"
            else None
        )
        return dot_attention_scores(self, query, key, scale, weight)


class AdditiveAttention(_Attention):
    """Additive attention (Bahdanau): ``scores[b, i, j] = sum_d scale[d] * tanh(q[b, i, d] +
    k[b, j, d])`` (``scale (dim,)``, Glorot-uniform, with ``use_scale``, the default), then
    :func:`attention`. Arguments and call as :class:`Attention`.

    Args:
      dropout: float between 0 and 1, the fraction of the attention weights to drop in training.
    """

    use_scale: bool = True
    dropout: float = 0.0
    seed: int | None = None
    causal: bool = False
    param_dtype: Any = jnp.float32

    def scores(self, query, key):
        """``(batch, Tq, Tv)`` scores (:func:`scores_additive`), creating ``scale``."""
        scale = (
            self.param(
                "scale", lambda k: init_weight("glorot_uniform", k, (query.shape[-1],), self.param_dtype, "scale")
            )
            if self.use_scale
            else None
        )
        return scores_additive(query, key, scale)
