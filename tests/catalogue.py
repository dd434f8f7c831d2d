"""The tests' catalogue: every layer variant rnnjax has, under one name each, built one way in every
test file, and one strict tree comparison.

The built-in kinds come from their records (:mod:`rnnjax.kinds`), so a new kind is in every test
that iterates :data:`DENSE` (or :data:`KINDS`) without editing it. A variant is a kind with the
arguments that make it (``gru_reset_after``), or a composition (``stack``, ``custom_cell``, the
CuDNN layers, ``bidirectional_<variant>``, ``rnn_<variant>``: the kind's cell in an
``RNN``). Names: the kind's in snake case (``simple_rnn``, ``lstm``,
``conv_lstm2d``).

* :func:`layer`: a linen layer of a variant (``front='nnx'``: its NNX twin, ``input_dim`` and
  ``rngs`` as NNX needs); each argument reaches the parts that take it (``recurrent_activation``
  reaches an LSTM, a stack's gated cells, not a SimpleRNN), a name that is no argument of any
  kind is an error.
* :func:`keras_layer`: the Keras 3 layer computing the same function (the parity tests).
* :func:`feature_shape`, :func:`n_states`, :func:`right_padded_only`: what a test needs to feed it.
* :func:`assert_trees_close`: the same tree (or, for Keras's lists, the same leaves), each leaf
  the same shape and close.
* :func:`x`: a random float32 input.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

import rnnjax
from rnnjax import kinds


def snake(name: str) -> str:
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


# variant -> (kind record, the arguments that make it); the GRU's reset_after is explicit both
# ways, since Keras 3 changed its default
VARIANTS = {snake(k.name): (k, {}) for k in kinds.KINDS}
VARIANTS["gru"] = (kinds.GRU, {"reset_after": False})
VARIANTS["gru_reset_after"] = (kinds.GRU, {"reset_after": True})
VARIANTS["minimal_rnn"] = (kinds.MINIMAL_RNN, {})
# the dense built-in kinds (each GRU form), then the compositions
DENSE = tuple(n for n, (k, _) in VARIANTS.items() if k is not None and not k.rank and k in kinds.KINDS)
SPATIAL = tuple(n for n, (k, _) in VARIANTS.items() if k is not None and k.rank)
COMPOSED = ("stack", "custom_cell", "cudnn_lstm", "cudnn_gru", "bidirectional_lstm")
KINDS = DENSE + SPATIAL
STACK = (kinds.LSTM, kinds.SIMPLE_RNN, kinds.GRU)  # the cells of "stack", in order (units, units + 1, units)


def _split(kind, kw: dict, role: str) -> dict:
    return {k: v for k, v in kw.items() if k in kind.arguments(role)}


def _check_known(kw: dict) -> None:
    unknown = sorted(set(kw) - set(kinds.ARGUMENTS))
    if unknown:
        raise TypeError(f"catalogue: {unknown} are no arguments of any cell kind")


def _kind_layer(kind, fixed, units, front, kw, nnx_kw):
    args = {**kw, **fixed}
    _check_known(args)
    taken = _split(kind, args, "layer")
    first = (units, taken.pop("kernel_size", 3)) if kind.rank else (units,)  # filters, kernel_size
    if kind.rank and "padding" not in taken:
        taken["padding"] = "same"
    cls = kind.linen_layer if front == "linen" else kind.nnx_layer
    return cls(*first, **taken, **nnx_kw)


def _stack(units, front, kw, nnx_kw):
    sizes = (units, units + 1, units)
    cell_kw = [_split(k, kw, "cell") for k in STACK]
    layer_kw = {
        k: v
        for k, v in kw.items()
        if k in kinds.SEQUENCE + kinds.LAYER_EXTRAS + ("activity_regularizer",) and k != "param_dtype"
    }
    _check_known(kw)
    if front == "linen":
        return rnnjax.RNN([k.linen_cell(s, **c) for k, s, c in zip(STACK, sizes, cell_kw)], **layer_kw)
    inputs = (nnx_kw["input_dim"],) + sizes[:-1]
    cells = [k.nnx_cell(s, **c, input_dim=i, rngs=nnx_kw["rngs"]) for k, s, c, i in zip(STACK, sizes, cell_kw, inputs)]
    return rnnjax.nnx.RNN(cells, **layer_kw)


def layer(name: str, units: int, front: str = "linen", **kw):
    """A layer of variant ``name`` with ``units`` units (ConvLSTM: filters, kernel 3, 'same'
    padding unless given). ``front='nnx'``: its NNX twin; pass ``input_dim`` (features or channels)
    and ``rngs``."""
    nnx_kw = {k: kw.pop(k) for k in ("input_dim", "rngs") if k in kw} if front == "nnx" else {}
    if name in VARIANTS:
        kind, fixed = VARIANTS[name]
        return _kind_layer(kind, fixed, units, front, kw, nnx_kw)
    if name == "stack":
        return _stack(units, front, kw, nnx_kw)
    mod = rnnjax if front == "linen" else rnnjax.nnx
    if name.startswith("bidirectional_"):  # bidirectional_<variant>, merge_mode= for the wrapper
        mode = kw.pop("merge_mode", "concat")
        inner = layer(name[len("bidirectional_") :], units, front, **kw, **nnx_kw)
        extra = {} if front == "linen" else {"rngs": nnx_kw["rngs"]}
        return mod.Bidirectional(inner, merge_mode=mode, **extra)
    if name.startswith("rnn_"):  # rnn_<kind variant>: the kind's cell in an RNN
        kind, fixed = VARIANTS[name[len("rnn_") :]]
        args = {**kw, **fixed}
        _check_known(args)
        cell = kind.linen_cell if front == "linen" else kind.nnx_cell
        cell_kw = {**_split(kind, args, "cell"), **nnx_kw}
        layer_kw = {k: v for k, v in args.items() if k in kinds.SEQUENCE + kinds.LAYER_EXTRAS and k != "param_dtype"}
        return mod.RNN(cell(units, **cell_kw), **layer_kw)
    if name == "custom_cell":
        from custom_cells import MinimalRNNCell, NNXMinimalRNNCell

        cell = MinimalRNNCell(units) if front == "linen" else NNXMinimalRNNCell(units, **nnx_kw)
        return mod.RNN(cell, **kw)
    if name in ("cudnn_lstm", "cudnn_gru"):
        return getattr(mod, "CuDNNLSTM" if name == "cudnn_lstm" else "CuDNNGRU")(units, **kw, **nnx_kw)
    raise KeyError(f"catalogue: no variant {name!r}")


def keras_layer(name: str, units: int, **kw):
    """The Keras 3 layer of a dense variant (its fixed arguments and ``kw``)."""
    import keras

    kind, fixed = VARIANTS[name]
    return getattr(keras.layers, kind.name)(units, **fixed, **kw)


def feature_shape(name: str, features: int = 3) -> tuple:
    """A per-step input shape for variant ``name``: ``(features,)``, ConvLSTM ``(*spatial, features)``."""
    kind = VARIANTS.get(name, (None, {}))[0]
    return (5, 4, 3)[: kind.rank] + (features,) if kind is not None and kind.rank else (features,)


def n_states(name: str) -> int:
    """How many state arrays a layer of variant ``name`` returns with ``return_state``."""
    if name == "stack":
        return sum(_n_states(k) for k in STACK)
    composed = {
        "bidirectional_lstm": 2 * _n_states(kinds.LSTM),
        "cudnn_lstm": _n_states(kinds.LSTM),
        "cudnn_gru": _n_states(kinds.GRU),
        "custom_cell": 1,
    }
    return composed[name] if name in composed else _n_states(VARIANTS[name][0])


def _n_states(kind) -> int:
    extra = {"kernel_size": 3, "rank": kind.rank} if kind.rank else {}
    return len(kind.core(1, **extra).state_size)


def right_padded_only(name: str) -> bool:
    """The CuDNN layers take right-padded masks only."""
    return name.startswith("cudnn")


def x(shape, seed: int = 0, dtype=jnp.float32, scale: float = 1.0):
    """A random normal input of ``shape`` (numpy's generator, so the same on every platform)."""
    return jnp.asarray(np.random.default_rng(seed).normal(scale=scale, size=shape), dtype)


def assert_trees_close(
    got, want, *, atol: float = 1e-6, rtol: float | None = None, atol_scaled: bool = False, same_tree: bool = True
):
    """``got`` equals ``want`` to ``|g - w| <= atol + rtol |w|`` (``rtol`` defaults to ``atol``, so
    ``atol=0`` is bit equality): the same tree structure (``same_tree=False``: the same number of
    leaves in order, for Keras's lists against rnnjax's tuples), every leaf the same shape.
    ``atol_scaled``: ``atol`` times ``max(1, max |w|)`` per leaf (sums taken in another order)."""
    rtol = atol if rtol is None else rtol
    g_leaves, g_tree = jax.tree_util.tree_flatten(got)
    w_leaves, w_tree = jax.tree_util.tree_flatten(want)
    if same_tree:
        assert g_tree == w_tree, f"tree structures differ:\n{g_tree}\n{w_tree}"
    assert len(g_leaves) == len(w_leaves), f"{len(g_leaves)} leaves, expected {len(w_leaves)}"
    for i, (g, w) in enumerate(zip(g_leaves, w_leaves)):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape, f"leaf {i}: shape {g.shape}, expected {w.shape}"
        scale = max(1.0, float(np.abs(w.astype(np.float64)).max(initial=0.0))) if atol_scaled else 1.0
        np.testing.assert_allclose(
            g.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol * scale, err_msg=f"leaf {i}"
        )
