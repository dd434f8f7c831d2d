"""What the linen Convolutional LSTM layers ``ConvLSTM1D``/``ConvLSTM2D``/``ConvLSTM3D`` and their
cells add to the dense ones: spatial axes and ``data_format`` (the classes are made from the
kinds' records, :mod:`rnnjax.kinds`, by :func:`rnnjax.layers.recurrent.linen_class`).

The cell (``ConvLSTM2DCell`` etc.) is an LSTM whose input and recurrent transformations are
convolutions; :mod:`rnnjax.functional.conv_lstm` states the equations (the input convolution uses
the layer's strides, padding and dilation, the recurrent one is always stride 1, 'same',
undilated). Parameters (Keras layout, under ``params['cell']``): ``kernel kernel_size + (C, 4F)``,
``recurrent_kernel kernel_size + (F, 4F)``, ``bias (4F,)``.

Shapes (2-D; 1-D and 3-D drop/add a spatial axis), ``channels_last``:
inputs ``(*samples, time, rows, cols, channels)`` (any number of sample axes), output
``(*samples, rows', cols', filters)`` or ``(*samples, time, rows', cols', filters)`` with
``return_sequences``, states ``h, c`` ``(*samples, rows', cols', filters)``. ``channels_first``
puts channels/filters right after the time (or batch) axis. The layers compute channels_last
internally: a channels_first input is transposed once before the loop and the outputs/states once after (states in the
``'rnn_state'`` collection of a stateful layer are kept channels_last).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import flax.linen as nn
import jax

from rnnjax.functional.conv import check_data_format
from rnnjax.layers.base import STATE_COLLECTION, RecurrentLayer, reset_layer_states, run_recurrent
from rnnjax.layers.cells import KerasCell
from rnnjax.layers.contract import ChannelsFirst

if TYPE_CHECKING:
    from rnnjax.kinds import CellKind


class ConvLSTMCell(KerasCell):
    """Shared ConvLSTM cell (``rank`` spatial dimensions, from the kind's record).

    ``program`` receives the per-step shape ``(*spatial, C)`` (``(C, *spatial)`` for
    ``channels_first``). Dropout: 4 masks per sequence (one per gate, as Keras 2's
    ConvLSTM2DCell), shape ``(4, batch, *spatial, C)`` for the inputs and
    ``(4, batch, *spatial', F)`` for the recurrent state, only with ``training=True``.
    A channels_first cell used directly in :class:`rnnjax.RNN` transposes its state at every
    step; the ConvLSTM layers avoid that by transposing once at their boundary.
    """

    rank = None

    def __post_init__(self):
        check_data_format(self.data_format)  # the rest: the kind's check (KerasCell)
        super().__post_init__()

    @property
    def sequence_layout(self) -> str:
        first = self._channels_first()
        return "(*batch, timesteps, channels, *spatial)" if first else "(*batch, timesteps, *spatial, channels)"

    def _channels_first(self) -> bool:
        return check_data_format(self.data_format) == "channels_first"


class ConvLSTM(RecurrentLayer):
    """Shared call of ``ConvLSTM1D/2D/3D`` (the fields come from the kind's record).

    Call: ``layer(inputs, *, mask=None, initial_state=None, training=False, reset=None)`` with
    inputs ``(*batch, time, *spatial, channels)`` (``(*batch, time, channels, *spatial)`` for
    channels_first), any number of batch axes; ``mask`` and ``reset`` (True where a new sequence
    starts, see :class:`rnnjax.RNN`) boolean ``(*batch, time)``;
    ``initial_state`` ``[h, c]`` in the layer's data_format. Returns the output, followed by
    ``h, c`` (in the layer's data_format) with ``return_state``.
    """

    kind: ClassVar[CellKind]  # set per kind (rnnjax.layers.recurrent): the record and its spatial axes
    rank: ClassVar[int]

    def __post_init__(self):
        self._make_cell(parent=None)  # validates every argument at construction
        check_data_format(self.data_format)
        super().__post_init__()

    @property
    def num_feature_axes(self) -> int:
        return self.rank + 1

    def _make_cell(self, **kwargs):
        names = [n for n in self.kind.arguments("cell") if n != "data_format"]
        return self.kind.linen_cell(**{n: getattr(self, n) for n in names}, data_format="channels_last", **kwargs)

    @property
    def boundary(self) -> ChannelsFirst:
        """The layer's ``data_format`` boundary (:class:`rnnjax.layers.contract.ChannelsFirst`)."""
        return ChannelsFirst(self.rank, check_data_format(self.data_format) == "channels_first")

    @nn.compact
    def __call__(
        self,
        inputs: jax.Array,
        *,
        mask: jax.Array | None = None,
        initial_state: Any = None,
        training: bool = False,
        reset: jax.Array | None = None,
    ):
        cell = self._make_cell(name="cell")

        def run(x, init, layout):
            return run_recurrent(
                self, cell, x, mask=mask, reset=reset, initial_state=init, training=training, layout=layout
            )

        return self.boundary.call(
            run, inputs, initial_state, lambda spatial: cell.core.output_spatial_shape(spatial) + (self.filters,)
        )

    def reset_states(self, states: Any = None):
        """Zeroes the stateful states, or sets them to ``states`` ``[h, c]`` (layer's data_format).

        ``_, updates = layer.apply(variables, method='reset_states', mutable=['rnn_state'])``.
        """
        if states is not None and self.has_variable(STATE_COLLECTION, "states"):
            stored = jax.tree_util.tree_leaves(self.get_variable(STATE_COLLECTION, "states"))
            states = self.boundary.states_to_last(states, [tuple(a.shape) for a in stored], "states")
        return reset_layer_states(self, states)
