"""What the NNX ``ConvLSTM1D/2D/3D`` and their cells add to the dense ones (the classes are made from
the kinds' records by :func:`rnnjax.nnx.recurrent.nnx_class`; equations in
:mod:`rnnjax.functional.conv_lstm`; arguments those of the linen twins). ``input_dim`` is the
number of input channels::

    layer = rnnjax.nnx.ConvLSTM2D(8, 3, padding="same", input_dim=2, rngs=nnx.Rngs(0))
    y = layer(x)              # x (samples, time, rows, cols, 2) -> (samples, rows, cols, 8)

Parameters as the linen cell's: ``cell/kernel kernel_size + (C, 4F)``, ``cell/recurrent_kernel
kernel_size + (F, 4F)``, ``cell/bias (4F,)``. ``channels_first`` layers transpose once at their
boundary (:class:`rnnjax.layers.contract.ChannelsFirst`; states are kept channels_last, as in
linen); the cells themselves compute channels_last (a ``channels_first`` cell is the layers'
business: use ``ConvLSTM{1,2,3}D``). A stateful layer needs ``batch_size`` and
``input_spatial_shape`` (the input's spatial sizes) at construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import jax

from rnnjax.functional.conv import check_data_format
from rnnjax.layers.contract import ChannelsFirst
from rnnjax.nnx import _args
from rnnjax.nnx.base import Recurrent
from rnnjax.nnx.cells import NNXKerasCell

if TYPE_CHECKING:
    from rnnjax.kinds import CellKind


class NNXConvLSTMCell(NNXKerasCell):
    """Shared NNX ConvLSTM cell (channels_last only)."""

    input_what = "input channels"

    def program(self, feature_shape: Sequence[int], batch_shape: Sequence[int], dtype: Any, **mode):
        if check_data_format(self.spec.data_format) == "channels_first":
            r = self.kind.rank
            raise ValueError(
                f"`data_format`: an NNX {type(self).__name__} computes channels_last; for channels_first "
                f"inputs use ConvLSTM{r}D(data_format='channels_first'), which transposes once."
            )
        return super().program(feature_shape, batch_shape, dtype, **mode)

    @property
    def sequence_layout(self) -> str:
        return "(*batch, timesteps, *spatial, channels)"


class NNXConvLSTM(Recurrent):
    """Shared NNX ``ConvLSTM{r}D`` (``kind``: the record; ``linen_class`` etc.: see ``nnx_class``)."""

    kind: ClassVar[CellKind]  # set per kind by nnx_class, as NNXKerasCell's
    linen_class: ClassVar[type]
    last_positional: ClassVar[str | None]
    first_argument: ClassVar[str | None]

    def __init__(
        self,
        *args,
        input_dim: int | None = None,
        batch_size: Any = None,
        input_spatial_shape: tuple | None = None,
        deterministic: bool = False,
        rng_collection: str = "dropout",
        rngs: Any = None,
        **kwargs,
    ):
        owner, kind = type(self).__name__, self.kind
        config = _args.bind(owner, self.linen_class, args, kwargs, self.last_positional, self.first_argument)
        self.spec = self.linen_class(**config)  # validates every argument
        self.boundary = ChannelsFirst(kind.rank, check_data_format(self.spec.data_format) == "channels_first")
        cell_arguments = set(kind.arguments("cell")) - {"data_format"}
        self.cell = kind.nnx_cell(
            **{k: v for k, v in config.items() if k in cell_arguments},
            data_format="channels_last",
            input_dim=input_dim,
            deterministic=deterministic,
            rng_collection=rng_collection,
            rngs=rngs,
        )
        feature_shape = None
        if config["stateful"]:
            if input_spatial_shape is None:
                raise ValueError(
                    f"`input_spatial_shape`: a stateful {owner} builds its states at construction; pass "
                    f"the {kind.rank} spatial sizes of its inputs."
                )
            feature_shape = _spatial(input_spatial_shape, kind.rank) + (self.cell.kernel.shape[-2],)
        self._setup(config, batch_size, feature_shape)

    @property
    def num_feature_axes(self) -> int:
        return self.kind.rank + 1

    # Keras's ConvLSTM layers take no constants: a narrower call than Recurrent's.
    def __call__(  # type: ignore[override]
        self,
        inputs: jax.Array,
        *,
        mask: jax.Array | None = None,
        initial_state: Any = None,
        training: bool | None = None,
        deterministic: bool | None = None,
        rngs: Any = None,
        reset: jax.Array | None = None,
    ):
        """``inputs (*samples, time, *spatial, channels)`` (channels_first: ``(*samples, time, channels,
        *spatial)``) -> the output, then ``h, c`` with ``return_state`` (in the layer's data_format);
        ``reset (*samples, time)``: True where a new sequence starts (see :class:`rnnjax.RNN`)."""

        def run(x, init, layout):
            return self._run(
                x,
                mask=mask,
                initial_state=init,
                constants=None,
                training=training,
                deterministic=deterministic,
                rngs=rngs,
                layout=layout,
                reset=reset,
            )

        return self.boundary.call(
            run,
            inputs,
            initial_state,
            lambda spatial: self.cell.core.output_spatial_shape(spatial) + (self.spec.filters,),
        )

    def reset_states(self, states: Any = None):
        """Zeroes the stateful states, or sets them to ``states`` ``[h, c]`` (the layer's data_format)."""
        if states is not None and self.stateful:
            stored = jax.tree_util.tree_leaves(self.states.get_value())
            states = self.boundary.states_to_last(states, [tuple(a.shape) for a in stored], "states")
        return super().reset_states(states)


def _spatial(shape, rank) -> tuple:
    shape = tuple(shape)
    if len(shape) != rank or any(not isinstance(n, int) or n <= 0 for n in shape):
        raise ValueError(f"`input_spatial_shape`: expected {rank} positive ints, got {shape!r}.")
    return shape
