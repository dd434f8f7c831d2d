"""NNX cells with Keras 2's signatures: ``SimpleRNNCell``, ``GRUCell``, ``LSTMCell``,
``StackedRNNCells``, and the generic program of any NNX cell with the Keras cell protocol.

A cell holds its parameters as ``nnx.Param`` under the Keras names, in Keras layout and order
(``kernel``, ``recurrent_kernel``, ``bias``; the weight penalties and constraints as their
``regularizer``/``constraint`` metadata), its linen twin as its static configuration (``spec``:
the same arguments, validated by it), and, when it drops out, a forked ``nnx.Rngs`` stream.
``cell.program(...)`` is what the layers run through the layer-side path
(:mod:`rnnjax.layers.path`): the functional core's program on this call's parameters and dropout
masks (:func:`~rnnjax.layers.path.core_cell_program`).
Called directly it runs one step the Keras way::

    output, new_states = cell(x_t, states)       # states: list of (batch, units) arrays
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax import constraints, regularizers
from rnnjax.functional.protocol import PARAM_NAMES, CoreProgram, make_params
from rnnjax.layers import contract, path
from rnnjax.nnx import _args

if TYPE_CHECKING:
    from rnnjax.kinds import CellKind

WEIGHTS = (("kernel", "kernel"), ("recurrent_kernel", "recurrent"), ("bias", "bias"))


def weight_param(value: jax.Array, regularizer: Any, constraint: Any, argument: str):
    """An ``nnx.Param`` carrying its Keras penalty and constraint as metadata (absent when None)."""
    meta = {}
    reg = regularizers.get(regularizer, f"{argument}_regularizer")
    con = constraints.get(constraint, f"{argument}_constraint")
    if reg is not None:
        meta["regularizer"] = reg
    if con is not None:
        meta["constraint"] = con
    return nnx.Param(value, **meta)


class DropoutStream:
    """Mode switching and mask keys shared by the dropping cells (mixin, no state of its own).

    ``deterministic`` (an attribute, as ``nnx.Dropout``'s) is set by ``model.train()`` /
    ``model.eval()`` / ``nnx.view``; a call's ``deterministic=`` or Keras-style ``training=``
    overrides it. Keys come from the call's ``rngs`` (an ``nnx.Rngs``, an ``RngStream`` or a key)
    or else the cell's own stream."""

    spec: Any  # the linen twin: the static configuration (set by the class that mixes this in)

    def _init_dropout(self, rngs, deterministic, rng_collection):
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        self.rngs = rngs[rng_collection].fork() if self.drops() else nnx.data(None)

    def drops(self) -> bool:
        """Whether this module's configuration drops anything (then it holds a stream)."""
        return getattr(self.spec, "dropout", 0.0) > 0 or getattr(self.spec, "recurrent_dropout", 0.0) > 0

    def set_view(self, deterministic: bool | None = None):
        """Sets the mode; ``nnx.view`` calls it.

        Args:
          deterministic: if True, dropout and recurrent dropout are disabled.
        """
        if deterministic is not None:
            self.deterministic = deterministic

    def mask_keys(self, deterministic: bool | None, rngs: Any):
        """A function returning a fresh key per mask, or None when this call does not drop out."""
        deterministic = self.deterministic if deterministic is None else deterministic
        if deterministic or not self.drops():
            return None
        source = self.rngs if rngs is None else rngs
        if isinstance(source, nnx.Rngs):
            return source[self.rng_collection]
        if isinstance(source, nnx.RngStream):
            return source
        if isinstance(source, jax.Array):
            keys = iter(jax.random.split(source, 2))
            return lambda: next(keys)
        raise TypeError(f"`rngs`: expected an nnx.Rngs, an RngStream or a key, got {type(source).__name__}.")


class NNXKerasCell(contract.CellFacts, DropoutStream, nnx.Module):
    """Shared machinery of the built-in NNX cells (the classes of each kind are made from its
    record by :func:`rnnjax.nnx.recurrent.nnx_class`): ``kind`` is the record; the arguments are
    the linen twin's fields (Keras 2's positionally, rnnjax's by keyword)."""

    kind: ClassVar[CellKind]  # the cell kind's record
    # set per kind by nnx_class: the linen twin, its last Keras 2 (positional) and its first argument
    linen_class: ClassVar[type]
    last_positional: ClassVar[str | None]
    first_argument: ClassVar[str | None]
    input_what = "input features"
    kernel: Any  # nnx.Param, or None for a kind without the weight (setattr in __init__)
    recurrent_kernel: Any
    bias: Any

    def __init__(
        self,
        *args,
        input_dim: int | None = None,
        deterministic: bool = False,
        rng_collection: str = "dropout",
        rngs: nnx.Rngs | None = None,
        **kwargs,
    ):
        owner, kind = type(self).__name__, self.kind
        config = _args.bind(owner, self.linen_class, args, kwargs, self.last_positional, self.first_argument)
        self.spec = self.linen_class(**config)  # the static configuration, validated by the linen twin
        input_dim = _args.check_input_dim(owner, input_dim, self.input_what)
        rngs = _args.check_rngs(owner, rngs)
        values = self.core.init(rngs.params(), input_dim, self.spec.param_dtype)
        weights = dict(contract.cell_weights(kind, self.spec))
        for name in ("kernel", "recurrent_kernel", "bias"):
            arg = weights.get(name)
            setattr(
                self,
                name,
                nnx.data(None)
                if arg is None
                else weight_param(
                    getattr(values, name),
                    getattr(self.spec, f"{arg}_regularizer", None),
                    getattr(self.spec, f"{arg}_constraint", None),
                    arg,
                ),
            )
        self._init_dropout(rngs, deterministic, rng_collection)

    @property
    def core(self):
        """The functional core of this cell's arguments."""
        return self.spec.core

    def params(self):
        """The core's parameter NamedTuple of the current values."""
        weights = {name: getattr(self, name) for name in PARAM_NAMES}
        return make_params(self.core.params_class, {n: None if w is None else w[...] for n, w in weights.items()})

    def program(
        self,
        feature_shape: Sequence[int],
        batch_shape: Sequence[int],
        dtype: Any,
        *,
        deterministic: bool | None = None,
        rngs: Any = None,
        constants: Any = None,
    ) -> CoreProgram:
        """The program of this call: parameters read once, dropout masks drawn once per sequence
        (:mod:`rnnjax.layers.contract`). ``constants`` are not taken (the step takes none)."""
        del constants
        core = self.core
        shapes = contract.step_shapes(core, feature_shape, type(self).__name__)
        built = self.kernel.shape[-2]
        if shapes.input_dim != built:
            raise ValueError(
                f"`inputs`: {shapes.input_dim} features per step, but {type(self).__name__} was built "
                f"for {built} (input_dim={built}, kernel shape {tuple(self.kernel.shape)})."
            )
        masks = contract.draw_masks(
            core,
            self.mask_keys(deterministic, rngs),
            getattr(self.spec, "dropout", 0.0),
            getattr(self.spec, "recurrent_dropout", 0.0),
            shapes,
            batch_shape,
            dtype,
        )
        return contract.built_cell_program(core, self.params(), shapes, batch_shape, dtype, masks)

    def get_initial_state(
        self, batch_size: int, dtype: Any = jnp.float32, *, input_spatial_shape: tuple | None = None
    ) -> list:
        """Zero states, a flat list in Keras order (see :meth:`rnnjax.layers.KerasCell.get_initial_state`)."""
        return self.spec.get_initial_state(batch_size, dtype, input_spatial_shape=input_spatial_shape)

    def __call__(
        self,
        inputs: jax.Array,
        states: Any,
        *,
        training: bool | None = None,
        deterministic: bool | None = None,
        rngs: Any = None,
    ):
        """One step on ``inputs (*batch, features)``: ``(output (*batch, units), new_states list)``."""
        mode = resolve_deterministic(training, deterministic)
        return contract.one_step(
            self, inputs, states, lambda f, b, d: self.program(f, b, d, deterministic=mode, rngs=rngs)
        )


def resolve_deterministic(training: bool | None, deterministic: bool | None) -> bool | None:
    """Keras's ``training=`` as NNX's ``deterministic=`` (None: the module's own attribute)."""
    if training is not None and deterministic is not None and bool(training) == bool(deterministic):
        raise ValueError(
            f"`training`={training!r} and `deterministic`={deterministic!r} contradict each other; pass one of them."
        )
    return deterministic if training is None else not training


def generic_program(
    cell: Any, feature_shape: Sequence[int], batch_shape: Sequence[int], dtype: Any, constants: Any = None
) -> CoreProgram:
    """The program of any NNX module with the Keras cell protocol: ``state_size`` (an int or a
    tuple) and ``__call__(inputs, states[, constants])`` returning ``(output, new_states)``
    (:func:`rnnjax.layers.contract.keras_cell_program`)."""

    def call(x_t, states, constants):
        return cell(x_t, states) if constants is None else cell(x_t, states, constants=constants)

    return contract.keras_cell_program(cell, call, feature_shape, batch_shape, dtype, constants)


def cell_program(
    cell: Any,
    feature_shape: Sequence[int],
    batch_shape: Sequence[int],
    dtype: Any,
    *,
    deterministic: bool | None = None,
    rngs: Any = None,
    constants: Any = None,
) -> CoreProgram:
    """The program of an rnnjax NNX cell, a stack (their ``program``), or any Keras-protocol NNX cell."""
    if hasattr(cell, "program"):
        return cell.program(
            feature_shape, batch_shape, dtype, deterministic=deterministic, rngs=rngs, constants=constants
        )
    return generic_program(cell, feature_shape, batch_shape, dtype, constants)


class StackedRNNCells(nnx.Module):
    """Wrapper allowing a stack of RNN cells to behave as a single cell (Keras 2):
    ``StackedRNNCells(cells)``; each cell was built with its own ``input_dim`` (the first's the
    stack's input, the others the size of the cell below). State: the tuple of the cells' states;
    output: the last cell's. ``y_0 = x_t``; ``s_k, y_k = cell_k(s_k, y_{k-1})``."""

    def __init__(self, cells: Sequence[nnx.Module]):
        if not isinstance(cells, (list, tuple)) or not cells:
            raise ValueError(f"`cells`: expected a non-empty list of cells, got {cells!r}.")
        for k, cell in enumerate(cells):
            if not isinstance(cell, nnx.Module):
                raise TypeError(
                    f"`cells`[{k}]: expected an NNX cell (an nnx.Module), got {type(cell).__name__}; "
                    "linen cells go in rnnjax.RNN."
                )
        self.cells = nnx.List(list(cells))
        self.num_feature_axes = contract.num_feature_axes(self.cells[0])

    @property
    def state_size(self):
        return tuple(c.state_size for c in self.cells)

    def program(
        self,
        feature_shape: Sequence[int],
        batch_shape: Sequence[int],
        dtype: Any,
        *,
        deterministic: bool | None = None,
        rngs: Any = None,
        constants: Any = None,
    ) -> CoreProgram:
        """The cells' programs in a stack (:func:`rnnjax.layers.path.stack_programs`)."""
        programs: list[CoreProgram] = []
        shape: Sequence[int] = tuple(feature_shape)
        for cell in self.cells:
            prog = cell_program(
                cell, shape, batch_shape, dtype, deterministic=deterministic, rngs=rngs, constants=constants
            )
            programs.append(prog)
            shape = cast(tuple, prog.output_shape)  # a cell's program always states its output shape
        return path.stack_programs(programs, tuple(batch_shape), dtype)

    def __call__(
        self,
        inputs: jax.Array,
        states: Any,
        *,
        constants: Any = None,
        training: bool | None = None,
        deterministic: bool | None = None,
        rngs: Any = None,
    ):
        """One step of the stack (Keras cell protocol): ``states`` flat as in Keras."""
        mode = resolve_deterministic(training, deterministic)
        return contract.one_step(
            self,
            inputs,
            states,
            lambda f, b, d: self.program(f, b, d, deterministic=mode, rngs=rngs, constants=constants),
            constants,
        )
