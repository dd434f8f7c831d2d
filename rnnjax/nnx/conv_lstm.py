"""NNX ``ConvLSTM1D/2D/3D`` and their cells (equations in :class:`rnnjax.functional.ConvLSTMCore`;
arguments those of the linen twins in :mod:`rnnjax.layers.conv_lstm`). ``input_dim`` is the
number of input channels::

    layer = rnnjax.nnx.ConvLSTM2D(8, 3, padding="same", input_dim=2, rngs=nnx.Rngs(0))
    y = layer(x)              # x (samples, time, rows, cols, 2) -> (samples, rows, cols, 8)

Parameters as the linen cell's: ``cell/kernel kernel_size + (C, 4F)``, ``cell/recurrent_kernel
kernel_size + (F, 4F)``, ``cell/bias (4F,)``. ``channels_first`` layers transpose once at their
boundary (states are kept channels_last, as in linen); the cells themselves compute channels_last
(a ``channels_first`` cell is the layers' business: use ``ConvLSTM{1,2,3}D``). A stateful layer
needs ``batch_size`` and ``input_spatial_shape`` (the input's spatial sizes) at construction.
"""
from __future__ import annotations

import jax

from rnnjax.functional.conv import check_data_format, shape_ints
from rnnjax.layers import conv_lstm as linen_conv, path
from rnnjax.nnx import _args
from rnnjax.nnx.cells import KerasCell
from rnnjax.nnx.recurrent import Recurrent


class ConvLSTMCell(KerasCell):
    """Shared NNX ConvLSTM cell (``linen_class``: the linen ``ConvLSTM{r}DCell``)."""

    first_argument = "filters"
    input_what = "input channels"

    def _shapes(self, feature_shape):
        r = self.spec.rank
        if check_data_format(self.spec.data_format) == "channels_first":
            raise ValueError(f"`data_format`: an NNX {type(self).__name__} computes channels_last; for channels_first "
                             f"inputs use ConvLSTM{r}D(data_format='channels_first'), which transposes once.")
        feature_shape = shape_ints(feature_shape)
        if len(feature_shape) != r + 1:
            raise ValueError(f"`inputs`: {type(self).__name__} takes {r} spatial dimensions and channels per step "
                             f"(*spatial, channels), got per-step shape {feature_shape}.")  # pragma: no cover
        spatial, channels = feature_shape[:-1], feature_shape[-1]
        out = self.core.output_spatial_shape(spatial) + (self.spec.filters,)
        return channels, feature_shape, out, out, {"input_spatial_shape": spatial}

    @property
    def num_feature_axes(self) -> int:
        """Feature axes of one step: the spatial axes and the channels."""
        return self.spec.rank + 1

    @property
    def sequence_layout(self) -> str:
        return "(*batch, timesteps, *spatial, channels)"


def _cell(rank):
    linen = linen_conv._CELLS[rank]
    cls = type(f"ConvLSTM{rank}DCell", (ConvLSTMCell,), {
        "linen_class": linen, "__module__": __name__,
        "__doc__": f"Cell class for the NNX ConvLSTM{rank}D layer (see :class:`rnnjax.{linen.__name__}`): "
                   f"``{linen.__name__}(filters, kernel_size, ..., *, input_dim=<channels>, rngs)``."})
    return cls


ConvLSTM1DCell, ConvLSTM2DCell, ConvLSTM3DCell = _cell(1), _cell(2), _cell(3)
_CELLS = {1: ConvLSTM1DCell, 2: ConvLSTM2DCell, 3: ConvLSTM3DCell}


class ConvLSTM(Recurrent):
    """Shared NNX ``ConvLSTM{r}D`` (``linen_class``: the linen twin, ``rank``: spatial dimensions)."""

    linen_class = None
    rank = None

    def __init__(self, *args, input_dim=None, batch_size=None, input_spatial_shape=None, deterministic: bool = False,
                 rng_collection: str = "dropout", rngs=None, **kwargs):
        owner = type(self).__name__
        config = _args.bind(owner, self.linen_class, args, kwargs, "recurrent_dropout", "filters")
        self.spec = self.linen_class(**config)  # validates every argument
        self.channels_first = check_data_format(self.spec.data_format) == "channels_first"
        cell_fields = set(linen_conv._CELL_FIELDS)
        self.cell = _CELLS[self.rank](**{k: v for k, v in config.items() if k in cell_fields},
                                      data_format="channels_last", input_dim=input_dim, deterministic=deterministic,
                                      rng_collection=rng_collection, rngs=rngs)
        feature_shape = None
        if config["stateful"]:
            if input_spatial_shape is None:
                raise ValueError(f"`input_spatial_shape`: a stateful {owner} builds its states at construction; pass "
                                 f"the {self.rank} spatial sizes of its inputs.")
            feature_shape = tuple(_args_spatial(input_spatial_shape, self.rank)) + (self.cell.kernel.shape[-2],)
        self._setup(config, batch_size, feature_shape)

    @property
    def num_feature_axes(self) -> int:
        return self.rank + 1

    def __call__(self, inputs, mask=None, initial_state=None, training=None, *, deterministic=None, rngs=None,
                 reset=None):
        """``inputs (*samples, time, *spatial, channels)`` (channels_first: ``(*samples, time, channels,
        *spatial)``) -> the output, then ``h, c`` with ``return_state`` (in the layer's data_format);
        ``reset (*samples, time)``: True where a new sequence starts (see :class:`rnnjax.RNN`)."""
        spec, r, cf = self.spec, self.rank, self.channels_first
        seq = path.check_sequence(inputs, feature_ndim=r + 1, layout=spec._layout(cf))
        axis = -(r + 1)  # the channel axis (channels_first) of inputs, outputs and states
        x = linen_conv._to_last(inputs, axis) if cf else inputs
        if initial_state is not None and cf:
            last = seq.batch_shape + self.cell.core.output_spatial_shape(x.shape[x.ndim - r - 1:-1]) + (spec.filters,)
            initial_state = spec._states_to_last(initial_state, [last, last], "initial_state")
        result = self._run(x, mask=mask, initial_state=initial_state, constants=None, training=training,
                           deterministic=deterministic, rngs=rngs, layout=spec._layout(False), reset=reset)
        return jax.tree_util.tree_map(lambda a: linen_conv._to_first(a, axis), result) if cf else result

    def reset_states(self, states=None):
        """Zeroes the stateful states, or sets them to ``states`` ``[h, c]`` (the layer's data_format)."""
        if states is not None and self.channels_first and self.stateful:
            stored = jax.tree_util.tree_leaves(self.states.get_value())
            states = self.spec._states_to_last(states, [tuple(a.shape) for a in stored], "states")
        return super().reset_states(states)


def _args_spatial(shape, rank):
    shape = tuple(shape)
    if len(shape) != rank or any(not isinstance(n, int) or n <= 0 for n in shape):
        raise ValueError(f"`input_spatial_shape`: expected {rank} positive ints, got {shape!r}.")
    return shape


def _layer(rank):
    linen = {1: linen_conv.ConvLSTM1D, 2: linen_conv.ConvLSTM2D, 3: linen_conv.ConvLSTM3D}[rank]
    return type(f"ConvLSTM{rank}D", (ConvLSTM,), {
        "linen_class": linen, "rank": rank, "__module__": __name__,
        "__doc__": f"{rank}D Convolutional LSTM as an NNX module (see :class:`rnnjax.{linen.__name__}`): "
                   f"``ConvLSTM{rank}D(filters, kernel_size, ..., *, input_dim=<channels>, rngs)``."})


ConvLSTM1D, ConvLSTM2D, ConvLSTM3D = _layer(1), _layer(2), _layer(3)
