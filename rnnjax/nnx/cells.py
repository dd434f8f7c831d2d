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


import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax import constraints, layers as linen_layers, regularizers
from rnnjax.functional.core import dropout_masks
from rnnjax.layers import path
from rnnjax.functional.protocol import PARAM_NAMES, CoreProgram, make_params
from rnnjax.nnx import _args

WEIGHTS = (("kernel", "kernel"), ("recurrent_kernel", "recurrent"), ("bias", "bias"))


def weight_param(value, regularizer, constraint, argument: str):
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

    def _init_dropout(self, rngs, deterministic, rng_collection):
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        self.rngs = rngs[rng_collection].fork() if self.drops() else nnx.data(None)

    def drops(self) -> bool:
        """Whether this module's configuration drops anything (then it holds a stream)."""
        return self.spec.dropout > 0 or self.spec.recurrent_dropout > 0

    def set_view(self, deterministic: bool | None = None):
        """Class method used by ``nnx.view``.

        Args:
          deterministic: if True, dropout and recurrent dropout are disabled.
        """
        if deterministic is not None:
            self.deterministic = deterministic

    def mask_keys(self, deterministic, rngs):
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


class KerasCell(DropoutStream, nnx.Module):
    """Shared machinery of the built-in cells: ``linen_class`` is the linen twin, whose fields are
    the arguments (Keras 2's positionally up to ``last_positional``)."""

    linen_class = None
    last_positional = "recurrent_dropout"
    first_argument = "units"

    def __init__(self, *args, input_dim=None, deterministic: bool = False, rng_collection: str = "dropout",
                 rngs=None, **kwargs):
        owner = type(self).__name__
        config = _args.bind(owner, self.linen_class, args, kwargs, self.last_positional, self.first_argument)
        self.spec = self.linen_class(**config)
        input_dim = _args.check_input_dim(owner, input_dim, self.input_what)
        rngs = _args.check_rngs(owner, rngs)
        core = self.spec.core()
        values = core.init(rngs.params(), input_dim, self.spec.param_dtype)
        for name, arg in WEIGHTS:
            value = getattr(values, name)
            setattr(self, name, nnx.data(None) if value is None else weight_param(
                value, getattr(self.spec, f"{arg}_regularizer"), getattr(self.spec, f"{arg}_constraint"), arg))
        self._init_dropout(rngs, deterministic, rng_collection)

    input_what = "input features"
    num_feature_axes = 1  # the axes after time in an input sequence

    @property
    def core(self):
        return self.spec.core()

    @property
    def state_size(self):
        return self.spec.state_size

    @property
    def output_size(self):
        return self.spec.output_size

    def params(self):
        """The core's parameter NamedTuple of the current values."""
        weights = {name: getattr(self, name) for name in PARAM_NAMES}
        return make_params(self.core.params_class, {n: None if w is None else w[...] for n, w in weights.items()})

    def _shapes(self, feature_shape):
        """``(input features, input mask shape, state mask shape, output shape, state kwargs)``."""
        if len(feature_shape) != 1:
            raise ValueError(f"`inputs`: {type(self).__name__} takes (*batch, features) per step, got per-step "
                             f"shape {tuple(feature_shape)}.")
        n = int(feature_shape[0])
        return n, (n,), (self.spec.units,), (self.spec.units,), {}

    def program(self, feature_shape, batch_shape, dtype, *, deterministic=None, rngs=None) -> CoreProgram:
        """The program of this call: parameters read once, dropout masks drawn once per sequence."""
        core = self.core
        n, in_shape, rec_shape, output_shape, state_kwargs = self._shapes(tuple(feature_shape))
        built = self.kernel.shape[-2]
        if n != built:
            raise ValueError(f"`inputs`: {n} features per step, but {type(self).__name__} was built for {built} "
                             f"(input_dim={built}, kernel shape {tuple(self.kernel.shape)}).")
        keys = self.mask_keys(deterministic, rngs)
        count = core.dropout_mask_count
        batch_shape = tuple(batch_shape)
        in_mask = rec_mask = None
        if keys is not None and self.spec.dropout > 0:
            in_mask = dropout_masks(keys(), self.spec.dropout, batch_shape + in_shape, count, dtype)
        if keys is not None and self.spec.recurrent_dropout > 0:
            rec_mask = dropout_masks(keys(), self.spec.recurrent_dropout, batch_shape + rec_shape, count, dtype)

        def initial_state(batch_shape=batch_shape, dtype=dtype):
            return core.initial_state(batch_shape, dtype, **state_kwargs)

        return path.core_cell_program(core, self.params(), output_shape, in_mask, rec_mask, initial_state)

    def get_initial_state(self, batch_size: int, dtype=jnp.float32):
        """Zero states, a flat list in Keras order."""
        return list(self.core.initial_state((batch_size,), dtype))

    def __call__(self, inputs, states, training=None, *, deterministic=None, rngs=None):
        """One step on ``inputs (*batch, features)``: ``(output (*batch, units), new_states list)``."""
        return single_step(self, inputs, states, None, resolve_deterministic(training, deterministic), rngs)


def resolve_deterministic(training, deterministic):
    """Keras's ``training=`` as NNX's ``deterministic=`` (None: the module's own attribute)."""
    if training is not None and deterministic is not None and bool(training) == bool(deterministic):
        raise ValueError(f"`training`={training!r} and `deterministic`={deterministic!r} contradict each other; "
                         "pass one of them.")
    return deterministic if training is None else not training


class SimpleRNNCell(KerasCell):
    """Cell class for SimpleRNN (see :class:`rnnjax.SimpleRNNCell` for the equations):
    ``SimpleRNNCell(units, ..., *, input_dim, rngs)``."""

    linen_class = linen_layers.SimpleRNNCell


class GRUCell(KerasCell):
    """Cell class for the GRU layer (see :class:`rnnjax.GRUCell`): ``GRUCell(units, ..., *, input_dim, rngs)``."""

    linen_class = linen_layers.GRUCell
    last_positional = "reset_after"


class LSTMCell(KerasCell):
    """Cell class for the LSTM layer (see :class:`rnnjax.LSTMCell`): ``LSTMCell(units, ..., *, input_dim, rngs)``."""

    linen_class = linen_layers.LSTMCell
    last_positional = "implementation"


def generic_program(cell, feature_shape, batch_shape, dtype) -> CoreProgram:
    """The program of any NNX module with the Keras cell protocol: ``state_size`` (an int or a
    tuple) and ``__call__(inputs, states[, constants])`` returning ``(output, new_states)``."""
    if not hasattr(cell, "state_size"):
        raise TypeError(f"`cell`: {type(cell).__name__} has no `state_size`; a cell needs `state_size` (an int or a "
                        "tuple of ints) and `__call__(inputs, states)` returning `(output, new_states)`.")
    state_size = cell.state_size
    count = len(path.zero_states(state_size, (), dtype))

    def initial_state(batch_shape=tuple(batch_shape), dtype=dtype):
        return path.zero_states(state_size, batch_shape, dtype)

    def step(state, x_t, constants=None):
        out, new = cell(x_t, list(state)) if constants is None else cell(x_t, list(state), constants=constants)
        new = tuple(new) if isinstance(new, (list, tuple)) else (new,)
        if len(new) != count:
            raise ValueError(f"`cell`: {type(cell).__name__} returned {len(new)} states, its state_size declares "
                             f"{count}.")
        return new, out

    size = getattr(cell, "output_size", None)
    if size is None:
        x0 = jax.ShapeDtypeStruct(tuple(batch_shape) + tuple(feature_shape), dtype)
        size = jax.eval_shape(lambda x: step(initial_state(), x)[1], x0).shape[-1]
    output_shape = tuple(size) if isinstance(size, (tuple, list)) else (int(size),)
    return CoreProgram(lambda x: x, step, initial_state, output_shape, takes_constants=True)


def cell_program(cell, feature_shape, batch_shape, dtype, deterministic=None, rngs=None) -> CoreProgram:
    """The program of an rnnjax NNX cell, a stack, or any Keras-protocol NNX cell."""
    if hasattr(cell, "program"):
        return cell.program(feature_shape, batch_shape, dtype, deterministic=deterministic, rngs=rngs)
    return generic_program(cell, feature_shape, batch_shape, dtype)


class StackedRNNCells(nnx.Module):
    """Wrapper allowing a stack of RNN cells to behave as a single cell (Keras 2):
    ``StackedRNNCells(cells)``; each cell was built with its own ``input_dim`` (the first's the
    stack's input, the others the size of the cell below). State: the tuple of the cells' states;
    output: the last cell's. ``y_0 = x_t``; ``s_k, y_k = cell_k(s_k, y_{k-1})``."""

    def __init__(self, cells):
        if not isinstance(cells, (list, tuple)) or not cells:
            raise ValueError(f"`cells`: expected a non-empty list of cells, got {cells!r}.")
        for k, cell in enumerate(cells):
            if not isinstance(cell, nnx.Module):
                raise TypeError(f"`cells`[{k}]: expected an NNX cell (an nnx.Module), got {type(cell).__name__}; "
                                "linen cells go in rnnjax.RNN.")
        self.cells = nnx.List(list(cells))
        self.num_feature_axes = num_feature_axes(self.cells[0])

    @property
    def state_size(self):
        return tuple(c.state_size for c in self.cells)

    def program(self, feature_shape, batch_shape, dtype, *, deterministic=None, rngs=None) -> CoreProgram:
        programs, shape = [], tuple(feature_shape)
        for cell in self.cells:
            prog = cell_program(cell, shape, batch_shape, dtype, deterministic, rngs)
            programs.append(prog)
            shape = prog.output_shape
        return path.stack_programs(programs, tuple(batch_shape), dtype)

    def __call__(self, inputs, states, constants=None, training=None, *, deterministic=None, rngs=None):
        """One step of the stack (Keras cell protocol): ``states`` flat as in Keras."""
        return single_step(self, inputs, states, constants, resolve_deterministic(training, deterministic), rngs)


def num_feature_axes(cell) -> int:
    """How many trailing feature axes one step of ``cell`` takes (1; ConvLSTM cells: rank + 1)."""
    return int(getattr(cell, "num_feature_axes", 1))


def single_step(cell, inputs, states, constants=None, deterministic=None, rngs=None):
    """Keras-style one step on ``inputs (*batch, *features)``: ``(output, new_states)`` with
    ``states`` a flat list of arrays."""
    nf = num_feature_axes(cell)
    batch_shape, feature_shape = inputs.shape[:inputs.ndim - nf], inputs.shape[inputs.ndim - nf:]
    prog = cell_program(cell, feature_shape, batch_shape, inputs.dtype, deterministic, rngs)
    return path.step_once(prog, cell, inputs, states, constants, nf)
