"""One record per cell kind: everything rnnjax knows about a built-in recurrent cell besides its
core, in one place, read by every front end, the Keras files and the tests.

A :class:`CellKind` names the kind (the Keras layer class ``LSTM``; its cell is ``LSTMCell``), its
functional core (the equations: :mod:`rnnjax.functional`), its arguments in Keras 2's order, the
gate blocks its recurrent activation ``σ`` computes, and how Keras files hold it. From it come:

* the linen cell and layer (:attr:`CellKind.linen_cell`, :attr:`CellKind.linen_layer`: classes made
  once per kind by :mod:`rnnjax.layers.recurrent`), their fields the arguments below;
* the NNX twins (:attr:`CellKind.nnx_cell`, :attr:`CellKind.nnx_layer`, :mod:`rnnjax.nnx.recurrent`),
  the same arguments with the input size at construction;
* the Keras loader's and saver's rules (:mod:`rnnjax.keras.build`, :mod:`rnnjax.keras.save_layers`);
* the test catalogue (``tests/catalogue.py``).

Adding a cell kind means: its core, its record (here), its tests (``docs/design.md``, "Adding a
cell", walks through :data:`MINIMAL_RNN`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from rnnjax.functional.conv_lstm import ConvLSTMCore
from rnnjax.functional.gru import GRUCore
from rnnjax.functional.lstm import LSTMCore
from rnnjax.functional.minimal_rnn import MinimalRNNCore
from rnnjax.functional.simple_rnn import SimpleRNNCore

REQUIRED = dataclasses.MISSING


class _RankOnes:
    """The default of ``strides``/``dilation_rate``: ``(1,) * rank``."""


RANK_ONES = _RankOnes()

# Every argument a built-in cell or layer takes: (annotation, default). The Keras 2 ones keep
# Keras 2's defaults; the rest are rnnjax's (docs: rnnjax.RNN and the layers' docstrings).
ARGUMENTS: dict[str, tuple] = {
    "units": (int, REQUIRED),
    "filters": (int, REQUIRED),
    "kernel_size": (Any, REQUIRED),
    "strides": (Any, RANK_ONES),
    "padding": (str, "valid"),
    "data_format": (Any, None),
    "dilation_rate": (Any, RANK_ONES),
    "activation": (Any, "tanh"),
    "recurrent_activation": (Any, "hard_sigmoid"),
    "use_bias": (bool, True),
    "kernel_initializer": (Any, "glorot_uniform"),
    "recurrent_initializer": (Any, "orthogonal"),
    "bias_initializer": (Any, "zeros"),
    "unit_forget_bias": (bool, True),
    "kernel_regularizer": (Any, None),
    "recurrent_regularizer": (Any, None),
    "bias_regularizer": (Any, None),
    "activity_regularizer": (Any, None),
    "kernel_constraint": (Any, None),
    "recurrent_constraint": (Any, None),
    "bias_constraint": (Any, None),
    "dropout": (float, 0.0),
    "recurrent_dropout": (float, 0.0),
    "implementation": (int, 1),
    "reset_after": (bool, False),
    "return_sequences": (bool, False),
    "return_state": (bool, False),
    "go_backwards": (bool, False),
    "stateful": (bool, False),
    "unroll": (bool, False),
    "input_dim": (int | None, None),
    "input_length": (int | None, None),
    "zero_output_for_mask": (bool, False),
    "param_dtype": (Any, jnp.float32),
    "scan_unroll": (int, 1),
    "remat": (bool, False),
    "custom_backward": (bool, True),
    "backend": (str, "auto"),
}

WEIGHTS = ("kernel", "recurrent", "bias")  # the Keras argument prefix of each weight
INITIALIZERS = tuple(f"{w}_initializer" for w in WEIGHTS)
REGULARIZERS = tuple(f"{w}_regularizer" for w in WEIGHTS)
CONSTRAINTS = tuple(f"{w}_constraint" for w in WEIGHTS)
DROPOUTS = ("dropout", "recurrent_dropout")
SEQUENCE = ("return_sequences", "return_state", "go_backwards", "stateful", "unroll")
# rnnjax's arguments after Keras 2's (keyword-only in the NNX twins).
CELL_EXTRAS = ("param_dtype",)
LAYER_EXTRAS = (
    "input_dim",
    "input_length",
    "zero_output_for_mask",
    "param_dtype",
    "scan_unroll",
    "remat",
    "custom_backward",
)
SPATIAL_LAYER_EXTRAS = (
    "return_state",
    "unroll",
    "zero_output_for_mask",
    "param_dtype",
    "scan_unroll",
    "remat",
    "custom_backward",
)


@dataclasses.dataclass(frozen=True)
class CellKind:
    """What rnnjax knows about one built-in cell kind besides its core.

    * ``name``: the layer's class name, Keras's (``"LSTM"``); the cell is ``name + "Cell"``.
    * ``core``: the functional core class (equations, parameters, states, ``gates``).
    * ``cell_arguments`` / ``layer_arguments``: Keras 2's arguments in Keras 2's order (the
      linen fields and the NNX positional arguments); rnnjax's own follow (``CELL_EXTRAS``,
      ``LAYER_EXTRAS`` or ``SPATIAL_LAYER_EXTRAS``).
    * ``sigma_blocks``: the gate blocks ``σ = recurrent_activation`` computes (LSTM ``i, f, o``);
      ``activation_linear``: whether ``activation`` acts on a linear function of the weights only
      (not the LSTMs', which also squashes the cell state). The Keras 3 saver scales Keras 2's
      hard sigmoid by these.
    * ``rank``: the spatial axes of a step (ConvLSTM), 0 for the dense cells.
    * ``own_layer_arguments``: rnnjax's arguments of this kind's layer beyond the common ones
      (GRU, LSTM: ``backend``, whether oneDNN's fused CPU kernels may run it: :mod:`rnnjax.onednn`).
    * ``keras_cell``: the Keras class of the cell in files (None: Keras has no public one, so an
      ``RNN`` of it is saved as the layer); ``in_keras_files``: Keras files hold this layer.
    * ``layer_doc`` / ``cell_doc``: the first lines of the classes' docstrings;
      ``linen_example`` / ``nnx_example``: the layers' ``Examples:`` (doctests, run by the docs
      tests).
    """

    name: str
    core: type[Any]
    cell_arguments: tuple
    layer_arguments: tuple
    sigma_blocks: tuple
    activation_linear: bool
    layer_doc: str
    cell_doc: str
    rank: int = 0
    own_layer_arguments: tuple = ()
    keras_cell: str | None = None
    in_keras_files: bool = True
    linen_example: str = ""
    nnx_example: str = ""

    def __repr__(self) -> str:
        return f"CellKind({self.name!r})"

    @property
    def gates(self) -> int:
        return int(self.core.gates)

    @property
    def cell_name(self) -> str:
        return self.name + "Cell"

    def arguments(self, of: str) -> tuple:
        """``of='cell'`` or ``'layer'``: Keras 2's arguments, then rnnjax's."""
        if of == "cell":
            return self.cell_arguments + CELL_EXTRAS
        return self.layer_arguments + (SPATIAL_LAYER_EXTRAS if self.rank else LAYER_EXTRAS) + self.own_layer_arguments

    def default(self, argument: str):
        """The default value of ``argument`` (``REQUIRED`` for none): the core's own where the core
        has the argument, else :data:`ARGUMENTS`'."""
        default = ARGUMENTS[argument][1]
        if default is RANK_ONES:
            return (1,) * self.rank
        field = {f.name: f for f in dataclasses.fields(self.core)}.get(argument)
        return default if field is None or field.default is REQUIRED else field.default

    def front_end_class(self, front: str, role: str) -> type:
        """The class of this kind in ``front`` (``'linen'`` or ``'nnx'``) for ``role`` (``'cell'`` or
        ``'layer'``), made once (:func:`rnnjax.layers.recurrent.linen_class`,
        :func:`rnnjax.nnx.recurrent.nnx_class`)."""
        if front == "linen":
            from rnnjax.layers.recurrent import linen_class

            return linen_class(self, role)
        from rnnjax.nnx.recurrent import nnx_class

        return nnx_class(self, role)

    linen_cell = property(lambda self: self.front_end_class("linen", "cell"), doc="The linen cell class.")
    linen_layer = property(lambda self: self.front_end_class("linen", "layer"), doc="The linen layer class.")
    nnx_cell = property(lambda self: self.front_end_class("nnx", "cell"), doc="The NNX cell class.")
    nnx_layer = property(lambda self: self.front_end_class("nnx", "layer"), doc="The NNX layer class.")


def layer_arguments(cell_arguments: tuple, after_sequence: tuple = ()) -> tuple:
    """Keras 2's rule for a dense layer: the cell's arguments with ``activity_regularizer`` after
    ``bias_regularizer``, then the sequence options, then ``after_sequence`` (GRU's ``reset_after``)."""
    out = []
    for a in cell_arguments:
        if a not in after_sequence:
            out.append(a)
        if a == "bias_regularizer":
            out.append("activity_regularizer")
    if "activity_regularizer" not in out:  # a cell without weight penalties (MinimalRNN)
        out.append("activity_regularizer")
    return tuple(out) + SEQUENCE + after_sequence


_SIMPLE = ("units", "activation", "use_bias", *INITIALIZERS, *REGULARIZERS, *CONSTRAINTS, *DROPOUTS)
_GATED = ("units", "activation", "recurrent_activation", "use_bias", *INITIALIZERS)
_PENALTIES = (*REGULARIZERS, *CONSTRAINTS, *DROPOUTS, "implementation")

SIMPLE_RNN = CellKind(
    "SimpleRNN",
    SimpleRNNCore,
    _SIMPLE,
    layer_arguments(_SIMPLE),
    sigma_blocks=(),
    activation_linear=True,
    layer_doc="Fully-connected RNN where the output is fed back to the input (Keras 2).",
    cell_doc="Cell class for SimpleRNN.",
    keras_cell="SimpleRNNCell",
)
GRU = CellKind(
    "GRU",
    GRUCore,
    _GATED + _PENALTIES + ("reset_after",),
    layer_arguments(_GATED + _PENALTIES + ("reset_after",), ("reset_after",)),
    sigma_blocks=(0, 1),
    activation_linear=True,
    own_layer_arguments=("backend",),
    layer_doc="Gated Recurrent Unit - Cho et al. 2014 (Keras 2). Keras 2's defaults: "
    "``recurrent_activation='hard_sigmoid'`` (``clip(0.2x + 0.5, 0, 1)``), ``implementation=1``, "
    "``reset_after=False``; for Keras 3's GRU pass ``recurrent_activation='sigmoid', reset_after=True``.",
    cell_doc="Cell class for the GRU layer (gate order z, r, h). ``reset_after=False`` (Keras 2's default) has a "
    "bias ``(3U,)``, ``reset_after=True`` (Keras 3, cuDNN) a bias ``(2, 3U)``: input row, recurrent row. "
    "``implementation=1`` draws one dropout mask per gate, ``2`` one shared mask; both compute the same "
    "function.",
    keras_cell="GRUCell",
)
_LSTM = _GATED + ("unit_forget_bias",) + _PENALTIES
LSTM = CellKind(
    "LSTM",
    LSTMCore,
    _LSTM,
    layer_arguments(_LSTM),
    sigma_blocks=(0, 1, 3),
    activation_linear=False,
    own_layer_arguments=("backend",),
    layer_doc="Long Short-Term Memory layer - Hochreiter 1997 (Keras 2). Keras 2's defaults: "
    "``recurrent_activation='hard_sigmoid'``, ``unit_forget_bias=True``, ``implementation=1``. "
    "``return_state`` returns ``(output, h, c)``.",
    cell_doc="Cell class for the LSTM layer (gate order i, f, c, o; states ``[h, c]``). ``unit_forget_bias`` "
    "initialises the forget block of the bias to 1.",
    keras_cell="LSTMCell",
    linen_example="""
        >>> import jax, jax.numpy as jnp, rnnjax
        >>> layer = rnnjax.LSTM(4, recurrent_dropout=0.2, return_sequences=True, return_state=True)
        >>> x = jnp.ones((2, 5, 3))                      # (batch, timesteps, features)
        >>> variables = layer.init(jax.random.key(0), x)
        >>> outputs, h, c = layer.apply(variables, x, training=True, rngs={"dropout": jax.random.key(1)})
        >>> outputs.shape, h.shape, c.shape
        ((2, 5, 4), (2, 4), (2, 4))""",
    nnx_example="""
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import rnnjax.nnx as rnx
        >>> layer = rnx.LSTM(4, recurrent_dropout=0.2, input_dim=3, rngs=nnx.Rngs(0, dropout=1))
        >>> layer(jnp.ones((2, 5, 3))).shape           # dropout on: model.train() is the default
        (2, 4)""",
)

_CONV = (
    "filters",
    "kernel_size",
    "strides",
    "padding",
    "data_format",
    "dilation_rate",
    "activation",
    "recurrent_activation",
    "use_bias",
    *INITIALIZERS,
    "unit_forget_bias",
)
_CONV_LAYER = layer_arguments(_CONV + REGULARIZERS + CONSTRAINTS)[: -len(SEQUENCE)]
_SPATIAL = {1: "steps", 2: "rows, cols", 3: "conv_dim1, conv_dim2, conv_dim3"}


def _conv_lstm(rank: int) -> CellKind:
    return CellKind(
        f"ConvLSTM{rank}D",
        ConvLSTMCore,
        _CONV + REGULARIZERS + CONSTRAINTS + DROPOUTS,
        _CONV_LAYER + ("return_sequences", "go_backwards", "stateful") + DROPOUTS,
        sigma_blocks=(0, 1, 3),
        activation_linear=False,
        rank=rank,
        layer_doc=f"{rank}D Convolutional LSTM: an LSTM whose input and recurrent transformations are convolutions "
        f"(Keras 2). Inputs ``(*samples, time, {_SPATIAL[rank]}, channels)`` (channels_last, the default) "
        f"or ``(*samples, time, channels, {_SPATIAL[rank]})`` (channels_first).",
        cell_doc=f"Cell class for the ConvLSTM{rank}D layer. Per step: inputs ``(batch, {_SPATIAL[rank]}, channels)``, "
        f"states ``[h, c]`` each ``(batch, {_SPATIAL[rank]}', filters)`` (channels_last).",
    )


CONV_LSTM1D, CONV_LSTM2D, CONV_LSTM3D = _conv_lstm(1), _conv_lstm(2), _conv_lstm(3)

# The worked example of docs/design.md ("Adding a cell"): Keras 2's MinimalRNNCell as a kind. Not
# a public layer (it is SimpleRNN(activation='linear', use_bias=False) with 'uniform' initializers,
# and no Keras file holds it): reach it as MINIMAL_RNN.linen_layer / .nnx_layer.
_MINIMAL = ("units", "kernel_initializer", "recurrent_initializer")
MINIMAL_RNN = CellKind(
    "MinimalRNN",
    MinimalRNNCore,
    _MINIMAL,
    layer_arguments(_MINIMAL),
    sigma_blocks=(),
    activation_linear=True,
    layer_doc="Keras 2's MinimalRNNCell example as a layer: ``h_t = x_t @ kernel + h_{t-1} @ recurrent_kernel``.",
    cell_doc="Keras 2's MinimalRNNCell example.",
    in_keras_files=False,
)

# The built-in kinds (public layers), in the order the documentation lists them.
KINDS = (SIMPLE_RNN, GRU, LSTM, CONV_LSTM1D, CONV_LSTM2D, CONV_LSTM3D)


def kind_of(obj) -> CellKind | None:
    """The record of a built-in cell or layer (linen or NNX; its exact class, not a subclass,
    which may compute something else), else None."""
    return type(obj).__dict__.get("kind")


def role_of(obj) -> str | None:
    """``'cell'`` or ``'layer'`` for a built-in cell or layer (exact class), else None."""
    return type(obj).__dict__.get("kind_role")


__all__ = [
    "CellKind",
    "KINDS",
    "SIMPLE_RNN",
    "GRU",
    "LSTM",
    "CONV_LSTM1D",
    "CONV_LSTM2D",
    "CONV_LSTM3D",
    "MINIMAL_RNN",
    "ARGUMENTS",
    "kind_of",
    "layer_arguments",
]
