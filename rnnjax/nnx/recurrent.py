"""The NNX classes of the built-in cell kinds, made from their records (:mod:`rnnjax.kinds`):
``SimpleRNN``, ``GRU``, ``LSTM``, ``ConvLSTM1D/2D/3D`` and their cells, each taking the arguments
of its linen twin (Keras 2's positionally, rnnjax's by keyword) plus NNX's (``input_dim``,
``rngs``, ...), parameters built at construction::

    layer = rnnjax.nnx.LSTM(64, return_sequences=True, input_dim=8, rngs=nnx.Rngs(0))
    y = layer(x, *, mask=None, initial_state=None, training=None, reset=None)   # x (batch, T, 8)

Inputs ``(*batch, T, features)``: any number of batch axes, none included (the layer-side path's
rule). ``stateful=True`` keeps the final states in ``layer.states`` (an
:class:`~rnnjax.nnx.RNNState`, created at construction: pass ``batch_size``, an int or a tuple of
batch axes); ``layer.reset_states()`` / ``layer.reset_states([h, c])``.
"""

from __future__ import annotations

import functools
import types
from typing import Any, ClassVar

from rnnjax import kinds
from rnnjax.layers import contract
from rnnjax.nnx import _args
from rnnjax.nnx.base import Recurrent
from rnnjax.nnx.cells import NNXKerasCell
from rnnjax.nnx.conv_lstm import NNXConvLSTM, NNXConvLSTMCell


class NNXKerasRecurrent(Recurrent):
    """``RNN(<X>Cell(...))`` with the arguments of the linen twin (``kind``: the record; ``linen_class``
    etc.: see :func:`nnx_class`)."""

    kind: ClassVar[kinds.CellKind]  # set per kind by nnx_class, as NNXKerasCell's
    linen_class: ClassVar[type]
    last_positional: ClassVar[str | None]
    first_argument: ClassVar[str | None]

    def __init__(
        self,
        *args,
        input_dim: int | None = None,
        batch_size: Any = None,
        deterministic: bool = False,
        rng_collection: str = "dropout",
        rngs: Any = None,
        **kwargs,
    ):
        owner, kind = type(self).__name__, self.kind
        config = _args.bind(owner, self.linen_class, args, kwargs, self.last_positional, self.first_argument)
        if config.get("input_dim") is not None:
            raise TypeError(
                f"{owner}: `input_dim` is keyword-only and required, e.g. {owner}(64, input_dim=8, rngs=nnx.Rngs(0))."
            )
        contract.check_config(kind, types.SimpleNamespace(**config))  # the linen layer's checks and messages
        cell_arguments = set(kind.arguments("cell"))
        self.cell = kind.nnx_cell(
            **{k: v for k, v in config.items() if k in cell_arguments},
            input_dim=input_dim,
            deterministic=deterministic,
            rng_collection=rng_collection,
            rngs=rngs,
        )
        self._setup(config, batch_size, (input_dim,))


_BASES = {
    ("cell", False): NNXKerasCell,
    ("cell", True): NNXConvLSTMCell,
    ("layer", False): NNXKerasRecurrent,
    ("layer", True): NNXConvLSTM,
}


@functools.cache
def nnx_class(kind: kinds.CellKind, role: str) -> type:
    """The NNX twin of ``kind.linen_cell`` (``role='cell'``) or ``kind.linen_layer`` (``'layer'``), made
    once: the same arguments (``linen_class``: the twin, whose fields ``rnnjax.nnx._args.bind``
    reads; Keras 2's positionally up to ``last_positional``, then by keyword)."""
    name = kind.cell_name if role == "cell" else kind.name
    extra = "input_dim=<channels>" if kind.rank else "input_dim"
    example = f"\n\n    Examples:{kind.nnx_example}" if role == "layer" and kind.nnx_example else ""
    doc = (
        f"{(kind.cell_doc if role == 'cell' else kind.layer_doc)}\n\n    The NNX twin of :class:`rnnjax.{name}` "
        f"(same arguments and numbers): ``{name}({kind.arguments(role)[0]}, ..., *, {extra}, rngs)``.{example}\n    "
    )
    arguments = kind.cell_arguments if role == "cell" else kind.layer_arguments
    namespace = {
        "kind": kind,
        "kind_role": role,
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": doc,
        "linen_class": kind.front_end_class("linen", role),
        "last_positional": arguments[-1],
        "first_argument": arguments[0],
    }
    return type(name, (_BASES[role, bool(kind.rank)],), namespace)


# The public classes, one per kind of rnnjax.kinds.KINDS (in its order).
SimpleRNN, GRU, LSTM, ConvLSTM1D, ConvLSTM2D, ConvLSTM3D = (nnx_class(k, "layer") for k in kinds.KINDS)
SimpleRNNCell, GRUCell, LSTMCell, ConvLSTM1DCell, ConvLSTM2DCell, ConvLSTM3DCell = (
    nnx_class(k, "cell") for k in kinds.KINDS
)
