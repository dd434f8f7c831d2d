"""The core protocol: what every recurrent core has, and the optional forms of its step that
unlock the driver's hand-written backward passes (``docs/design.md`` is the map).

Notation, used by every core's docstring: ``x_t`` the input of step ``t``, ``h_{t-1}``/``c_{t-1}``
the previous states, ``W = kernel``, ``R = recurrent_kernel``, ``b = bias``, ``σ =
recurrent_activation``, ``φ = activation``, ``⊙`` the element-wise product, ``@`` a matmul,
``∗``/``⊛`` the input/recurrent convolution (ConvLSTM). ``xp_t = x_t @ W + b`` is the projected
input (:meth:`RecurrentCore.project`, all steps at once); ``a_t = h_{t-1} @ R`` the recurrent
product; ``z_t = xp_t + a_t`` the pre-activations. Gate blocks along the last axis are *parts*.

A core is a frozen dataclass of static configuration; parameters and states are explicit
``NamedTuple`` pytrees. :func:`rnnjax.functional.rnn` drives any :class:`RecurrentCore`;
:func:`rnnjax.functional.core.core_program` turns one into the :class:`CoreProgram` the driver
runs.

What the front ends read besides :class:`RecurrentCore` is declared here too: the parameter
layout (:data:`PARAM_NAMES`, :func:`make_params`), :class:`CellCore` (the dropout-mask count),
:class:`SpatialCore` (input checks and spatial shapes), :class:`HasBiasInLoop`, the dropout-mask
rule (:func:`per_gate_masks`, :func:`shared_mask`) and :func:`with_pointwise_vjp`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol, TypeGuard, runtime_checkable

import jax

PARAM_NAMES = ("kernel", "recurrent_kernel", "bias")
"""The parameter layout every core shares (Keras's names and order): ``params_class`` is a
NamedTuple with exactly these fields (:class:`CoreParams`); ``bias`` may be None
(``use_bias=False``)."""


@runtime_checkable
class RecurrentCore(Protocol):
    """The members every core has.

    * ``init(key, input_dim, dtype) -> Params``: a parameter ``NamedTuple`` in Keras layout
      (``kernel``, ``recurrent_kernel``, ``bias`` or ``None``).
    * ``initial_state(batch_shape, dtype) -> State``: zeros; a core with spatial feature axes
      (``num_feature_axes > 1``) takes the per-step input's spatial shape as a third argument.
    * ``project(params, x, dropout_mask=None) -> xp``: ``x @ W + b`` for any number of leading
      axes (time included): ``(..., *features) -> (..., G*U)``.
    * ``step(params, state, xp_t, recurrent_dropout_mask=None) -> (state, y_t)``: the recurrent
      part of one step, in ``lax.scan`` argument order.
    * ``state_size``/``output_size``: units per state and of the output; ``gates``: the number of
      parts ``G`` of the projection; ``num_feature_axes``: the trailing feature axes of a step's
      input (1; ConvLSTM: ``rank + 1``, then the core is a :class:`SpatialCore` too).
    * ``params_class``: the parameter NamedTuple, fields :data:`PARAM_NAMES` (:class:`CoreParams`;
      build one by name with :func:`make_params`).
    """

    # Read-only members (a class attribute or a property satisfies each):
    @property
    def gates(self) -> int: ...

    @property
    def num_feature_axes(self) -> int: ...

    @property
    def params_class(self) -> type: ...

    @property
    def state_size(self) -> tuple: ...

    @property
    def output_size(self) -> int: ...

    def init(self, key: jax.Array, input_dim: int, dtype: Any = ...) -> Any: ...

    def initial_state(self, batch_shape: tuple = ..., dtype: Any = ...) -> Any: ...

    def project(self, params: Any, x: jax.Array, dropout_mask: jax.Array | None = None) -> Any: ...

    def step(self, params: Any, state: Any, xp_t: Any, recurrent_dropout_mask: jax.Array | None = None): ...


CORE_MEMBERS = (
    "init",
    "initial_state",
    "project",
    "step",
    "state_size",
    "output_size",
    "gates",
    "num_feature_axes",
    "params_class",
)


class CoreParams(Protocol):
    """The parameter layout contract (what ``core.params_class`` builds, what the front ends and the
    Keras files read): ``kernel W (*window, I, G*U)``, ``recurrent_kernel R (*window, U, G*U)``,
    ``bias`` (``(G*U,)``; the reset-after GRU's ``(2, G*U)``) or None, in this field order
    (:data:`PARAM_NAMES`), as a NamedTuple (``_replace`` works)."""

    # Read-only (NamedTuple fields):
    @property
    def kernel(self) -> jax.Array: ...

    @property
    def recurrent_kernel(self) -> jax.Array: ...

    @property
    def bias(self) -> jax.Array | None: ...

    @property
    def _replace(self) -> Callable[..., Any]: ...


def make_params(params_class: type, values: Mapping[str, Any]) -> CoreParams:
    """``params_class`` built by name from ``values`` (``{name: array}``, names from
    :data:`PARAM_NAMES`; a missing ``bias`` is None), after checking that ``params_class`` has the
    layout of :class:`CoreParams`."""
    fields = getattr(params_class, "_fields", None)
    if tuple(fields or ()) != PARAM_NAMES:
        raise TypeError(
            f"`params_class`: expected a NamedTuple with the fields {PARAM_NAMES}, got "
            f"{getattr(params_class, '__name__', params_class)!r} with fields {fields}."
        )
    unknown = sorted(set(values) - set(PARAM_NAMES))
    if unknown:
        raise ValueError(f"parameters: expected some of {PARAM_NAMES}, got also {unknown}.")
    return params_class(**{name: values.get(name) for name in PARAM_NAMES})


@runtime_checkable
class CellCore(RecurrentCore, Protocol):
    """A core that a Keras cell front end wraps (the built-in cells: linen, NNX) also declares
    ``dropout_mask_count``: how many dropout masks a call draws, ``1`` (one shared by every gate)
    or ``gates`` (one per gate: Keras's ``implementation=1``); see :func:`per_gate_masks`."""

    @property
    def dropout_mask_count(self) -> int: ...


@runtime_checkable
class SpatialCore(RecurrentCore, Protocol):
    """A core with spatial feature axes (``num_feature_axes > 1``: ConvLSTM). Besides
    :class:`RecurrentCore`:

    * ``initial_state(batch_shape, dtype, input_spatial_shape)``: the states' spatial shape
      follows the input's;
    * ``check_inputs(params, inputs)``: raises (naming ``inputs``) unless ``inputs`` is
      ``(*batch, T, *spatial, C)`` with the parameters' ``C``;
    * ``output_spatial_shape(spatial_shape) -> tuple``: the spatial shape of outputs and states.
    """

    def initial_state(self, batch_shape: tuple = ..., dtype: Any = ..., spatial_shape: tuple = ...) -> Any: ...

    def check_inputs(self, params: Any, inputs: jax.Array) -> None: ...

    def output_spatial_shape(self, spatial_shape: tuple) -> tuple: ...


@runtime_checkable
class HasBiasInLoop(Protocol):
    """Optional: ``bias_in_loop: bool``, default True (a core without it). False keeps the input
    bias in the projection for calls that are not differentiated (see
    :func:`rnnjax.functional.core.loop_bias`; the GRU's)."""

    bias_in_loop: bool


def per_gate_masks(masks: jax.Array | None) -> TypeGuard[jax.Array]:
    """The dropout-mask rule: ``masks`` is None, ``(1, *shape)`` (one mask shared by every gate) or
    ``(gates, *shape)`` (gate ``g``'s matmul sees its input times ``masks[g]``). True for the
    last."""
    return masks is not None and masks.shape[0] > 1


def shared_mask(masks: jax.Array | None) -> jax.Array | None:
    """The one mask of ``(1, *shape)`` masks as ``shape`` (None for None): what a
    :class:`RecurrentMatmulStep` takes; per-gate masks have no such form (:func:`per_gate_masks`)."""
    return None if masks is None else masks[0]


def with_pointwise_vjp(pointwise: Callable, pointwise_vjp: Callable | None) -> Callable:
    """``pointwise(pointwise_params, xp_t, a_t, state)`` whose reverse-mode derivative is the
    hand-written ``pointwise_vjp(pointwise_params, xp_t, a_t, state, (d_state, d_y)) -> (d_params,
    d_xp, d_a, d_state_prev)`` (see :class:`RecurrentMatmulStep`); ``pointwise`` itself if that is
    None. Reverse mode only (a ``jax.custom_vjp``): the custom backward paths, which
    ``custom_backward=False`` turns off, use it (a core's :class:`InputAdditiveStep` too)."""
    if pointwise_vjp is None:
        return pointwise
    fn = jax.custom_vjp(pointwise)
    fn.defvjp(lambda *args: (pointwise(*args), args), lambda args, ct: pointwise_vjp(*args, ct))
    return fn


@runtime_checkable
class HasMatmulStep(Protocol):
    """Optional: ``matmul_step(params, recurrent_dropout_mask) -> RecurrentMatmulStep | None``, the
    step in :class:`RecurrentMatmulStep` form where it has one (LSTM, SimpleRNN, reset-after GRU,
    ConvLSTM, each with one recurrent dropout mask shared by the gates)."""

    def matmul_step(self, params: Any, recurrent_dropout_mask: jax.Array | None = None): ...


@runtime_checkable
class HasInputAdditiveStep(Protocol):
    """Optional: ``input_additive_step(params, recurrent_dropout_mask) -> InputAdditiveStep |
    None``, where the step has no :class:`RecurrentMatmulStep` form (reset-before GRU; LSTM,
    reset-after GRU and ConvLSTM with one recurrent dropout mask per gate)."""

    def input_additive_step(self, params: Any, recurrent_dropout_mask: jax.Array | None = None): ...


@runtime_checkable
class HasProjectParts(Protocol):
    """Optional: ``project_parts(params, x, dropout_mask)``: :meth:`RecurrentCore.project` as a
    tuple of its parts, each its own matmul; ``step`` then takes ``xp_t`` as that tuple (the GRU)."""

    def project_parts(self, params: Any, x: jax.Array, dropout_mask: jax.Array | None = None) -> tuple: ...


@runtime_checkable
class HasLoopParams(Protocol):
    """Optional: ``loop_params(params)``: the parameters as ``step`` takes them inside a loop,
    prepared once before it (the reset-before GRU's recurrent kernel as its three blocks)."""

    def loop_params(self, params: Any) -> Any: ...


class RecurrentMatmulStep(NamedTuple):
    """A step whose only matmul with the state is ``a_t = v_{t-1} @ R``, followed by an
    element-wise ``pointwise``::

        v_{t-1}      = recurrent_lhs(h_{t-1} ⊙ recurrent_dropout_mask)   # h: the state's first leaf
        state_t, y_t = pointwise(pointwise_params, xp_t, a_t, state_{t-1})

    The driver then runs a loop with a hand-written backward pass: the backward loop carries only
    the state cotangent, and ``dR = Vᵀ dA`` is ONE matmul over all steps after it.
    """

    recurrent_kernel: jax.Array
    pointwise: Callable
    pointwise_params: Any = None
    recurrent_dropout_mask: jax.Array | None = None  # (*batch, U)
    # a linear map from h to the matmul's left operand (ConvLSTM: the recurrent convolution's
    # patches, so that the convolution is a matmul); identity if None
    recurrent_lhs: Callable | None = None
    # pointwise reads xp_t and a_t only through xp_t + a_t (then d xp_t = d a_t = d z_t, and the
    # backward pass may store z_t alone, over xp_t); with part_sizes, a bool per part (the
    # reset-after GRU: (True, True, False), its candidate reads r ⊙ a_h)
    reads_only_sum: Any = False
    # sizes of the parts along the last axis: xp_t, a_t and pointwise_params reach `pointwise` as
    # tuples of parts, split once outside the loop (slicing inside it makes XLA copy each step)
    part_sizes: tuple | None = None
    # apply_recurrent_kernel(v, R) == recurrent_lhs(v) @ R computed another way, for the forward
    # loop (ConvLSTM: a direct convolution)
    apply_recurrent_kernel: Callable | None = None
    # pointwise_vjp(pointwise_params, xp_t, a_t, state, (d_state, d_y)) -> (d_params, d_xp, d_a,
    # d_state_prev): pointwise's backward pass by hand, used instead of autodiff's
    pointwise_vjp: Callable | None = None
    # pointwise_params is a bias added to a_t (the reset-after GRU's recurrent bias): its gradient
    # is Σ d a_t, formed once after the backward loop
    pointwise_params_is_recurrent_bias: bool = False
    # the pointwise_vjp reads z_t in ops that do not feed dz_t (the hard-sigmoid LSTM), so the
    # backward loop reads z_t one step ahead (see rnnjax.functional._matmul_backward)
    vjp_rereads_z: bool = False


class InputAdditiveStep(NamedTuple):
    """A step whose recurrent matmuls each add to one part of the projected input.

    ``step(kernels, state, xp_t) -> ((state', y), lhs)``, ``xp_t`` a tuple of parts (or one array
    whose equal blocks along the last axis are the parts), ``lhs`` the matmuls' left operands,
    such that the step reads ``xp_t[k]`` only in ``xp_t[k] + lhs[k] @ kernels[k]`` (reset-before
    GRU: ``lhs = (h, h, r ⊙ h)``, each times its recurrent dropout mask). Then ``d a_t[k] = d
    xp_t[k]`` and ``dk = Σ_t lhs_tᵀ d xp_t``: ONE matmul per kernel after the loop, over the stored
    ``lhs`` and the input cotangents that the backward pass forms anyway.

    ``adds_to[k]``: the part of ``xp_t`` that ``kernels[k]``'s matmul adds to (default ``k``). A
    part past the projected ones is a *ghost*: the driver appends a zero input of the matmul's
    width, the step computes ``ghost_t + lhs[k] @ kernels[k]``, and the ghost's cotangent is ``d
    a_t[k]`` whatever the step does with it (the reset-after GRU's candidate,
    ``r ⊙ (h @ R_h + b_h)``).

    ``kernel_lhs(v)``: the matmul's actual left operand when the step stores a smaller one (ConvLSTM:
    ``h ⊙ m_g`` stored, ``patches(h ⊙ m_g)`` formed after the loop).
    """

    kernels: tuple
    step: Callable
    adds_to: tuple | None = None
    kernel_lhs: Callable | None = None


class LoopBias(NamedTuple):
    """``project(x) == project_without_bias(x) + bias`` (``bias`` along the last axis): a call that is
    not differentiated may add the bias inside the loop, in the step's element-wise pass."""

    project_without_bias: Callable
    bias: jax.Array


class FusedForm(NamedTuple):
    """What a fused kernel of the whole sequence (oneDNN's, :mod:`rnnjax.onednn.dispatch`) reads
    from a program: the ``core`` (its configuration), its ``params`` and the call's dropout masks.
    The kernel decides from these whether it computes exactly what the step computes."""

    core: Any
    params: Any
    dropout_mask: jax.Array | None = None
    recurrent_dropout_mask: jax.Array | None = None


class CoreProgram(NamedTuple):
    """What the driver runs for one layer call: pure functions closed over the parameters and the
    call's dropout masks, and the optional forms of the step.

    ``project(x)``: ``(..., *features) -> xp`` for all steps at once; ``step(state, xp_t[,
    constants]) -> (state, y_t)``; ``initial_state(batch_shape, dtype)``: zeros; ``output_shape``:
    the per-step feature shape of ``y_t``; ``takes_constants``: whether ``step`` takes constants.
    The three forms (None where the step lacks one) pick the driver's path (``docs/design.md``);
    ``fused`` (a :class:`FusedForm`, set by ``core_program``) lets the driver hand the whole call
    to a fused kernel where ``LoopOptions.backend`` picks one.
    """

    project: Callable | None  # None: the inputs are already projected (scan_rnn without project=)
    step: Callable
    initial_state: Callable | None = None
    output_shape: tuple | None = None
    takes_constants: bool = False
    matmul_step: RecurrentMatmulStep | None = None
    input_additive_step: InputAdditiveStep | None = None
    loop_bias: LoopBias | None = None
    fused: FusedForm | None = None

    def without_backward_forms(self) -> CoreProgram:
        """The same program on the generic loop (autodiff's backward pass, which forward mode can
        differentiate too)."""
        return self._replace(matmul_step=None, input_additive_step=None, loop_bias=None)
