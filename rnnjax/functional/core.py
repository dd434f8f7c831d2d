"""What every functional recurrent core shares: checks, initialisation helpers, dropout masks,
the gate matmul, and :func:`core_program` (a core and its parameters -> the program the driver
runs). The core protocol itself is :mod:`rnnjax.functional.protocol`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import overload

import jax
import jax.export
import jax.numpy as jnp

from rnnjax.functional import activations, initializers
from rnnjax.functional.mesh import partitioned
from rnnjax.functional.protocol import (
    CoreParams,
    CoreProgram,
    FusedForm,
    HasBiasInLoop,
    HasInputAdditiveStep,
    HasLoopParams,
    HasMatmulStep,
    HasProjectParts,
    LoopBias,
    RecurrentCore,
    per_gate_masks,
)


def concrete(a):
    """``a`` as a numpy array when its value is known at trace time, else ``None`` (a tracer
    under ``jit``): checks on values run where they can."""
    import numpy as np

    try:
        return np.asarray(a)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def state_dtype(input_dtype):
    """States are kept in at least float32 (bfloat16 inputs get float32 states)."""
    return jnp.promote_types(input_dtype, jnp.float32)


def check_units(units, argument: str = "units") -> int:
    if isinstance(units, bool) or not isinstance(units, numbers.Integral) or units <= 0:
        raise ValueError(f"`{argument}`: expected a positive integer, got {units!r}.")
    return int(units)


def check_rate(rate, argument: str) -> float:
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not (0.0 <= float(rate) < 1.0):
        raise ValueError(f"`{argument}`: expected a float in [0, 1), got {rate!r}.")
    return float(rate)


def check_implementation(implementation) -> int:
    """``implementation`` as 1 or 2. Keras 2's deprecated 0 (older Keras 2 files carry it) is
    accepted with Keras 2.3's warning and runs implementation 1 (what its ``from_config`` made
    of it); rnnjax treats every value but 2 as 1."""
    if (
        isinstance(implementation, bool)
        or not isinstance(implementation, numbers.Integral)
        or implementation not in (0, 1, 2)
    ):
        raise ValueError(f"`implementation`: expected 1 or 2 (or Keras 2's deprecated 0), got {implementation!r}.")
    if implementation == 0:
        import warnings

        warnings.warn(
            "`implementation=0` has been deprecated, and now defaults to `implementation=1`.Please update "
            "your layer call.",
            stacklevel=2,
        )
        return 1
    return int(implementation)


def check_custom_backward(custom_backward) -> bool:
    """``custom_backward`` must be a plain bool (a traced or truthy value would silently pick a
    path)."""
    if not isinstance(custom_backward, bool):
        raise TypeError(f"`custom_backward`: expected True or False, got {custom_backward!r}.")
    return custom_backward


def check_state(template, given, argument: str = "initial_state"):
    """Returns ``given`` (a pytree, a list/tuple of arrays or one array) in ``template``'s
    structure, after checking that it has as many arrays as ``template`` with the same shapes."""
    leaves, treedef = jax.tree_util.tree_flatten(template)
    given_leaves = jax.tree_util.tree_leaves([given] if hasattr(given, "shape") else given)
    if len(given_leaves) != len(leaves):
        raise ValueError(
            f"`{argument}`: expected {len(leaves)} state array(s) with shapes "
            f"{[tuple(l.shape) for l in leaves]}, got {len(given_leaves)}."
        )
    for i, (g, t) in enumerate(zip(given_leaves, leaves)):
        if tuple(jnp.shape(g)) != tuple(t.shape):
            raise ValueError(f"`{argument}`[{i}]: expected shape {tuple(t.shape)}, got {tuple(jnp.shape(g))}.")
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(g) for g in given_leaves])


def check_core_config(core) -> None:
    """Validates the fields every core shares: initializers, activations and (where the core has
    one) ``implementation``; each error names its argument."""
    for name in ("kernel_initializer", "recurrent_initializer", "bias_initializer"):
        initializers.get(getattr(core, name), name)
    activations.get(core.activation, "activation")
    if hasattr(core, "recurrent_activation"):
        activations.get(core.recurrent_activation, "recurrent_activation")
    if hasattr(type(core), "__dataclass_fields__") and "implementation" in type(core).__dataclass_fields__:
        check_implementation(core.implementation)


def check_input_dim(params_kernel, x, what: str = "inputs") -> None:
    if not hasattr(x, "ndim") or x.ndim < 2:
        raise ValueError(
            f"`{what}`: expected an array of shape (*batch, time, features) with at least 2 "
            f"dimensions, got {getattr(x, 'shape', type(x).__name__)}."
        )
    expected = params_kernel.shape[-2]
    if x.shape[-1] != expected:
        raise ValueError(
            f"`{what}`: the last axis has {x.shape[-1]} features but the parameters were built for "
            f"{expected} (kernel shape {tuple(params_kernel.shape)})."
        )


def dropout_masks(key: jax.Array, rate: float, shape: Sequence[int], count: int = 1, dtype=jnp.float32) -> jax.Array:
    """Inverted-dropout masks drawn once per sequence: ``(count, *shape)`` of ``0`` or ``1/(1-rate)``.

    Keras draws ``count`` independent masks per cell (one per gate with ``implementation=1``)
    and reuses them at every time step (Gal & Ghahramani, 2016).
    """
    keep = jax.random.bernoulli(key, 1.0 - rate, (count,) + tuple(shape))
    return keep.astype(dtype) / jnp.asarray(1.0 - rate, dtype)


# From this many rows (steps x batch) on, `gate_matmul` works on 2-D rows with the bias folded in.
FOLD_BIAS_MIN_ROWS = 256


def gate_matmul(
    x: jax.Array, kernel: jax.Array, masks: jax.Array | None, gates: int, bias: jax.Array | None = None
) -> jax.Array:
    """``x @ kernel (+ bias)`` with optional dropout masks on ``x``.

    ``masks`` is ``None``, ``(1, *batch, I)`` (one mask shared by every gate) or
    ``(gates, *batch, I)`` (gate ``g``'s columns of ``kernel`` see ``x * masks[g]``, as Keras's
    ``implementation=1`` does). ``x`` may carry extra leading axes (time) before ``*batch``.

    For many rows (the projection of a whole sequence) the matmul runs on the rows flattened to
    2-D and the bias is folded into it, ``[x, 1] @ [[kernel], [bias]]`` (the same numbers to float
    rounding). Both save a large temporary on XLA's CPU backend, which does not fuse a bias add
    into a matmul (the sum is a second ``(rows, gates*U)`` array) and, for the kernel gradient of
    a 3-D matmul, copies the output cotangent transposed (``bench/README.md``, "The folded bias").
    """
    if per_gate_masks(masks):  # one matmul per gate, each on its own masked x
        return jnp.concatenate(gate_matmul_parts(x, kernel, masks, gates, bias), axis=-1)
    return gate_matmul_parts(x, kernel, masks, 1, bias)[0]


def _projection(core, params, dropout_mask):
    """The input projection of many steps in the form the step takes: ``core.project``, or the
    parts of ``core.project_parts`` where the core has it (the GRU)."""

    def project(x):
        if isinstance(core, HasProjectParts):
            return core.project_parts(params, x, dropout_mask)
        return core.project(params, x, dropout_mask)

    return project


def core_program(
    core: RecurrentCore,
    params: CoreParams,
    dropout_mask: jax.Array | None = None,
    recurrent_dropout_mask: jax.Array | None = None,
) -> CoreProgram:
    """The :class:`~rnnjax.functional.protocol.CoreProgram` of a core for one call.

    ``project``: see :func:`_projection`. ``step(state, xp_t)``: ``core.step`` on the parameters
    prepared once, here, outside the loop (:class:`~rnnjax.functional.protocol.HasLoopParams`).
    ``initial_state``: ``core.initial_state``. ``matmul_step``/``input_additive_step``: the core's
    forms (hand-written backward passes; the driver drops them without ``custom_backward``).
    ``loop_bias``: :func:`loop_bias`. ``fused``: the core, parameters and masks, for a fused kernel
    (:class:`~rnnjax.functional.protocol.FusedForm`). ``output_shape`` is left None (the caller knows the spatial
    shape). The step's element-wise work runs in a ``jax.named_scope`` named after the core's class
    (:func:`named_step`), so profiles and compiled programs name the cell.
    """
    loop_params = core.loop_params(params) if isinstance(core, HasLoopParams) else params
    scope = type(core).__name__

    def step(state, xp_t):
        return core.step(loop_params, state, xp_t, recurrent_dropout_mask)

    matmul = additive = None
    if isinstance(core, HasMatmulStep):
        matmul = core.matmul_step(params, recurrent_dropout_mask)
    if matmul is not None:
        matmul = matmul._replace(
            pointwise=named_step(scope, matmul.pointwise), pointwise_vjp=named_step(scope, matmul.pointwise_vjp)
        )
    if isinstance(core, HasInputAdditiveStep):
        additive = core.input_additive_step(params, recurrent_dropout_mask)
    if additive is not None:
        additive = additive._replace(step=named_step(scope, additive.step))
    return CoreProgram(
        _projection(core, params, dropout_mask),
        named_step(scope, step),
        core.initial_state,
        matmul_step=matmul,
        input_additive_step=additive,
        loop_bias=loop_bias(core, params, dropout_mask),
        fused=FusedForm(core, params, dropout_mask, recurrent_dropout_mask),
    )


@overload
def named_step(name: str, fn: Callable) -> Callable: ...
@overload
def named_step(name: str, fn: None) -> None: ...
def named_step(name: str, fn: Callable | None) -> Callable | None:
    """``fn`` run inside ``jax.named_scope(name)`` (None for None): the operations of a cell's
    step carry the cell's name in profiles and compiled programs' metadata, nothing else."""
    if fn is None:
        return None

    def scoped(*args):
        with jax.named_scope(name):
            return fn(*args)

    return scoped


def loop_bias(core: RecurrentCore, params: CoreParams, dropout_mask: jax.Array | None = None) -> LoopBias | None:
    """The :class:`~rnnjax.functional.protocol.LoopBias` of the projection of
    :func:`core_program`, or None (no bias, or a core with ``bias_in_loop = False``).

    A call that is not differentiated then adds the input bias inside the loop, in the step's
    element-wise pass, instead of folding it into the projection (whose ``[x, 1]`` is a padded
    copy of the inputs; ``bench/README.md``, "The bias in the loop")."""
    if params.bias is None or (isinstance(core, HasBiasInLoop) and not core.bias_in_loop):
        return None
    return LoopBias(_projection(core, params._replace(bias=None), dropout_mask), params.bias)


def gate_matmul_parts(
    x: jax.Array, kernel: jax.Array, masks: jax.Array | None, parts: int, bias: jax.Array | None = None
) -> tuple:
    """:func:`gate_matmul` returned as ``parts`` equal blocks of the last axis, each its own
    matmul (the GRU's per-gate inputs: no slicing of a large ``(rows, 3U)`` array, which XLA
    copies). ``masks`` as in :func:`gate_matmul` with ``gates = parts``."""
    width = kernel.shape[-1] // parts
    blocks = [slice(g * width, (g + 1) * width) for g in range(parts)]
    if per_gate_masks(masks):
        return tuple(
            gate_matmul(x * masks[g], kernel[:, b], None, 1, None if bias is None else bias[b])
            for g, b in enumerate(blocks)
        )
    if masks is not None:
        x = x * masks[0]
    n_rows = x.size // max(x.shape[-1], 1)
    # A symbolic row count (jax.export) cannot be compared: the plain matmul is right for all.
    if jax.export.is_symbolic_dim(n_rows) or n_rows < FOLD_BIAS_MIN_ROWS:
        z = x @ kernel if bias is None else x @ kernel + bias
        return (z,) if parts == 1 else tuple(z[..., b] for b in blocks)
    # rows, whose kernel gradient is one 2-D matmul; on a mesh the leading axes are kept, since
    # rows would merge time with the sharded batch (see rnnjax.functional.mesh)
    rows = x if partitioned(x) else x.reshape(-1, x.shape[-1])
    if bias is not None:
        rows = jnp.concatenate([rows, jnp.ones(rows.shape[:-1] + (1,), rows.dtype)], -1)
        kernel = jnp.concatenate([kernel, bias[None].astype(kernel.dtype)], 0)
    return tuple((rows @ kernel[:, b]).reshape(x.shape[:-1] + (width,)) for b in blocks)


def register_for_export(*types) -> None:
    """Registers rnnjax's parameter and state NamedTuples with ``jax.export``, so that a function
    taking or returning them serialises (as ``rnnjax.<Name>``; deserialising one needs rnnjax
    imported, which registers them)."""
    for t in types:
        jax.export.register_namedtuple_serialization(t, serialized_name=f"rnnjax.{t.__name__}")


def init_weight(initializer, key, shape, dtype, argument):
    return jnp.asarray(initializers.get(initializer, argument)(key, tuple(shape), dtype), dtype)


def lstm_bias(initializer, key, units: int, dtype, unit_forget_bias: bool) -> jax.Array:
    """An LSTM bias ``(4U,)`` (gates i, f, c, o); with ``unit_forget_bias`` the forget block is
    exactly 1 and the others come from ``initializer`` (Keras: ``init(U), ones(U), init(2U)``)."""
    if not unit_forget_bias:
        return init_weight(initializer, key, (4 * units,), dtype, "bias_initializer")
    ka, kb = jax.random.split(key)
    return jnp.concatenate(
        [
            init_weight(initializer, ka, (units,), dtype, "bias_initializer"),
            jnp.ones((units,), dtype),
            init_weight(initializer, kb, (2 * units,), dtype, "bias_initializer"),
        ]
    )
