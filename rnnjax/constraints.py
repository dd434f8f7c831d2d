"""Weight constraints by their Keras names, applied as a projection after the optimizer step.

Keras applies ``kernel_constraint`` etc. to a weight right after each optimizer update. In
JAX this is an optax transformation chained after the optimizer::

    tx = optax.chain(optax.adam(1e-3), rnnjax.constraints.keras_constraints(model, x_sample))
    updates, opt_state = tx.update(grads, opt_state, params)   # params are required
    params = optax.apply_updates(params, updates)              # now constrained

The projections (``eps = 1e-7``, norms over ``axis``, Keras 2 definitions)::

    MaxNorm(m, axis)          w * clip(|w|, 0, m) / (eps + |w|)
    NonNeg()                  w * (w >= 0)
    UnitNorm(axis)            w / (eps + |w|)
    MinMaxNorm(lo, hi, r, a)  w * (r * clip(|w|, lo, hi) + (1 - r) * |w|) / (eps + |w|)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

EPSILON = 1e-7


def _norm(w, axis):
    return jnp.sqrt(jnp.sum(jnp.square(w), axis=axis, keepdims=True))


@dataclasses.dataclass(frozen=True)
class MaxNorm:
    max_value: float = 2.0
    axis: Any = 0

    def __call__(self, w):
        norms = _norm(w, self.axis)
        desired = jnp.clip(norms, 0, self.max_value)
        return w * (desired / (EPSILON + norms))


@dataclasses.dataclass(frozen=True)
class NonNeg:
    def __call__(self, w):
        return w * (w >= 0).astype(w.dtype)


@dataclasses.dataclass(frozen=True)
class UnitNorm:
    axis: Any = 0

    def __call__(self, w):
        return w / (EPSILON + _norm(w, self.axis))


@dataclasses.dataclass(frozen=True)
class MinMaxNorm:
    min_value: float = 0.0
    max_value: float = 1.0
    rate: float = 1.0
    axis: Any = 0

    def __call__(self, w):
        norms = _norm(w, self.axis)
        desired = self.rate * jnp.clip(norms, self.min_value, self.max_value) + (1 - self.rate) * norms
        return w * (desired / (EPSILON + norms))


_BY_NAME: dict[str, Callable] = {
    "max_norm": MaxNorm,
    "maxnorm": MaxNorm,
    "non_neg": NonNeg,
    "nonneg": NonNeg,
    "unit_norm": UnitNorm,
    "unitnorm": UnitNorm,
    "min_max_norm": MinMaxNorm,
    "minmaxnorm": MinMaxNorm,
}


def get(identifier: None | str | Callable | Mapping, argument: str = "constraint"):
    """Resolves ``None``, a Keras name (``'max_norm'``, ``'non_neg'``, ``'unit_norm'``,
    ``'min_max_norm'``), a Keras config dict or a callable ``w -> w``."""
    if identifier is None:
        return None
    if isinstance(identifier, Mapping):
        name = str(identifier.get("class_name", "")).lower()
        if name not in _BY_NAME:
            raise ValueError(
                f"`{argument}`: unknown constraint config {identifier!r}; expected one of {sorted(_BY_NAME)}."
            )
        return _BY_NAME[name](**identifier.get("config", {}))
    if isinstance(identifier, str):
        try:
            return _BY_NAME[identifier.lower()]()
        except KeyError:
            raise ValueError(
                f"`{argument}`: unknown constraint {identifier!r}; "
                f"expected one of {sorted(_BY_NAME)}, None or a callable."
            ) from None
    if callable(identifier):
        return identifier
    raise TypeError(f"`{argument}`: expected a constraint name, None or a callable, got {identifier!r}.")


def declared(obj, weights) -> dict:
    """``{weight name: projection}`` of the constraints ``obj`` sets: for each ``(name, prefix)``
    of ``weights``, ``obj.<prefix>_constraint`` where it is not None (what a layer's
    ``declared_constraints()`` returns for :func:`collect_constraints`)."""
    found = {}
    for name, prefix in weights:
        fn = get(getattr(obj, f"{prefix}_constraint"), f"{prefix}_constraint")
        if fn is not None:
            found[name] = fn
    return found


def apply_constraints(params: Mapping, constraint_map: Mapping[tuple, Callable]) -> Any:
    """Returns ``params`` with ``constraint_map[path](leaf)`` applied to each listed leaf.

    ``constraint_map`` maps a path of dict keys (``('lstm', 'cell', 'kernel')``) to a projection.
    """
    from flax import traverse_util

    flat = traverse_util.flatten_dict(_unfreeze(params))
    missing = [p for p in constraint_map if p not in flat]
    if missing:
        raise ValueError(f"`constraint_map`: no parameter at path(s) {missing}; parameters are {sorted(flat)}.")
    for path, fn in constraint_map.items():
        flat[path] = fn(flat[path])
    return traverse_util.unflatten_dict(flat)


def _unfreeze(tree):
    try:
        from flax.core import unfreeze

        return unfreeze(tree)
    except Exception:  # pragma: no cover - plain dicts
        return tree


def collect_constraints(model, *sample_args, **sample_kwargs) -> dict[tuple, Callable]:
    """Finds every rnnjax layer inside ``model`` and the constraints it declares.

    Traces ``model.init`` abstractly (no FLOPs, no memory) on the sample arguments and records,
    for each rnnjax cell met, the path of its parameters and its ``kernel_constraint``,
    ``recurrent_constraint`` and ``bias_constraint``. Works for rnnjax layers nested at any depth
    in a user's Flax model.
    """
    import flax.linen as nn

    found: dict[tuple, Callable] = {}

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        declared = getattr(module, "declared_constraints", None)
        if declared is not None and context.method_name in ("__call__", "program"):
            for name, fn in declared().items():  # only constraints that are set
                found[tuple(module.path) + (name,)] = fn
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda: model.init(jax.random.key(0), *sample_args, **sample_kwargs))
    return found


def keras_constraints(
    model=None, *sample_args, constraint_map: Mapping[tuple, Callable] | None = None, **sample_kwargs
):
    """An optax transformation that projects the updated parameters onto the constraints.

    Chain it after the optimizer: ``optax.chain(optimizer, keras_constraints(model, x))``. It
    rewrites the final update ``u`` as ``C(p + u) - p`` so that ``optax.apply_updates`` lands on
    the constrained parameters ``C(p + u)``. Either pass the model and a sample input (the
    constraints of every rnnjax layer in it are found with :func:`collect_constraints`) or an
    explicit ``constraint_map`` ``{path: projection}``. ``tx.update`` must be given ``params``.
    """
    import optax

    if constraint_map is None:
        if model is None:
            raise ValueError("keras_constraints: pass `model` with sample inputs, or `constraint_map`.")
        constraint_map = collect_constraints(model, *sample_args, **sample_kwargs)
    constraint_map = dict(constraint_map)

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("keras_constraints: `tx.update(updates, state, params)` needs `params` to project.")
        if not constraint_map:
            return updates, state
        new_params = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
        projected = apply_constraints(new_params, constraint_map)
        projected = _like(params, projected)
        new_updates = jax.tree_util.tree_map(lambda q, p: q - p, projected, params)
        return new_updates, state

    return optax.GradientTransformation(init_fn, update_fn)


def _like(reference, tree):
    """Returns ``tree`` with the container type of ``reference`` (FrozenDict or dict)."""
    try:
        from flax.core import FrozenDict, freeze

        if isinstance(reference, FrozenDict):
            return freeze(tree)
    except Exception:  # pragma: no cover
        pass
    return tree
