"""The linen cells of the built-in kinds: :class:`KerasCell`, the machinery every one shares.

The classes themselves (``SimpleRNNCell``, ``GRUCell``, ``LSTMCell``, ``ConvLSTM{1,2,3}DCell``)
are made from their kind's record (:mod:`rnnjax.kinds`) by :func:`rnnjax.layers.recurrent.linen_class`:
their fields are the kind's arguments. A cell owns its parameters (Keras names ``kernel``,
``recurrent_kernel``, ``bias``, Keras layout), its dropout masks (the ``'dropout'`` RNG stream,
drawn once per sequence, only in training) and its weight penalties, and hands the driver a
:class:`~rnnjax.functional.protocol.CoreProgram` of its functional core (which states the
equations). Called directly, a cell runs one step the Keras way::

    output, new_states = cell(x_t, states)       # states: list of (batch, units) arrays
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnnjax import constraints, regularizers
from rnnjax.functional.protocol import CoreProgram, make_params
from rnnjax.layers import contract

if TYPE_CHECKING:
    from rnnjax.kinds import CellKind


class KerasCell(contract.CellFacts, nn.Module):
    """Shared machinery of the built-in linen cells (no fields of its own; ``kind``: the record).

    ``program(feature_shape, batch_shape, dtype, *, training=False)`` is what the layers run
    (:func:`rnnjax.layers.base.cell_program`): the weights created (at init) or fetched, this
    call's dropout masks drawn, the core's program returned.
    """

    kind: ClassVar[CellKind | None] = None  # the cell kind's record, set per kind

    def __post_init__(self):
        if self.kind is not None:
            contract.check_config(self.kind, self)
        super().__post_init__()

    @property
    def core(self):
        """The functional core of this cell's arguments."""
        return contract.core_of(self.kind, self)

    def declared_constraints(self) -> dict:
        """``{weight name: projection}`` for :func:`rnnjax.constraints.keras_constraints`."""
        return constraints.declared(self, contract.cell_weights(self.kind, self))

    def weights(self, input_dim: int) -> dict:
        """Creates (at init) or fetches the parameters, reporting their penalties."""
        core = self.core
        if self.has_variable("params", "kernel"):  # before `param`, whose own shape check names no argument
            built: tuple = self.get_variable("params", "kernel").shape
            if built[-2] != input_dim:
                raise ValueError(
                    f"`inputs`: {input_dim} features per step, but {type(self).__name__} was built for "
                    f"{built[-2]} (kernel shape {tuple(built)})."
                )

        def make(name):
            return self.param(name, lambda key: getattr(core.init(key, input_dim, self.param_dtype), name))

        values = {}
        for name, prefix in contract.cell_weights(self.kind, self):
            values[name] = make(name)
            reg = regularizers.get(getattr(self, f"{prefix}_regularizer", None))
            if reg is not None:
                regularizers.report(self, f"{prefix}_regularizer", reg(values[name]))
        return values

    def _channels_first(self) -> bool:
        return False

    @nn.compact
    def program(
        self,
        feature_shape: Sequence[int],
        batch_shape: Sequence[int],
        dtype: Any,
        *,
        training: bool = False,
        constants: Any = None,
    ) -> CoreProgram:
        """Creates/fetches the weights, draws this call's dropout masks, returns the program.
        ``constants`` are not taken (a built-in cell's step takes none)."""
        del constants
        core, cf = self.core, self._channels_first()
        shapes = contract.step_shapes(core, feature_shape, type(self).__name__, channels_first=cf)
        values = self.weights(shapes.input_dim)
        params = make_params(core.params_class, values)
        keys = (lambda: self.make_rng("dropout")) if training else None
        masks = contract.draw_masks(
            core,
            keys,
            getattr(self, "dropout", 0.0),
            getattr(self, "recurrent_dropout", 0.0),
            shapes,
            batch_shape,
            dtype,
        )
        return contract.built_cell_program(core, params, shapes, batch_shape, dtype, masks, channels_first=cf)

    def get_initial_state(
        self, batch_size: int, dtype: Any = jnp.float32, *, input_spatial_shape: tuple | None = None
    ) -> list:
        """Zero states, a flat list in Keras order, for a batch of ``batch_size`` (a ConvLSTM cell's
        spatial shape follows its inputs': pass ``input_spatial_shape``; the dense cells take none)."""
        core, owner = self.core, type(self).__name__
        if core.num_feature_axes == 1:
            if input_spatial_shape is not None:
                raise ValueError(f"`input_spatial_shape`: {owner} has no spatial axes, got {input_spatial_shape!r}.")
            return list(core.initial_state((batch_size,), dtype))
        if input_spatial_shape is None:
            raise ValueError(f"`input_spatial_shape`: {owner}'s states follow its inputs' spatial shape; pass it.")
        state = core.initial_state((batch_size,), dtype, input_spatial_shape)
        boundary = contract.ChannelsFirst(core.num_feature_axes - 1, self._channels_first())
        return list(boundary.to_first(state))

    def __call__(self, inputs: jax.Array, states: Any, *, training: bool = False):
        """One step on ``inputs (*batch, features)``: ``(output (*batch, units), new_states list)``."""
        return contract.one_step(self, inputs, states, lambda f, b, d: self.program(f, b, d, training=training))
