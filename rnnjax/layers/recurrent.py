"""The linen classes of the built-in cell kinds, made from their records (:mod:`rnnjax.kinds`):
``SimpleRNN``, ``GRU``, ``LSTM``, ``ConvLSTM1D/2D/3D`` and their cells.

:func:`linen_class` makes one class per kind and role (``'cell'`` or ``'layer'``), once: a
subclass of :class:`~rnnjax.layers.cells.KerasCell` / :class:`KerasRecurrent` (ConvLSTM:
:class:`~rnnjax.layers.conv_lstm.ConvLSTMCell` / :class:`~rnnjax.layers.conv_lstm.ConvLSTM`) whose
fields are the kind's arguments in Keras 2's order with Keras 2's defaults, then rnnjax's own.
A layer is ``RNN(<X>Cell(...))`` with the cell's parameters under ``params['cell']``
(``kernel``, ``recurrent_kernel``, ``bias``). Call::

    y = layer(inputs, *, mask=None, initial_state=None, training=False, reset=None)   # inputs (*batch, T, F)

``reset (*batch, T)``: True where a new sequence starts (see :class:`rnnjax.RNN`).

Fields beyond Keras 2: ``input_dim``/``input_length`` (checked), ``zero_output_for_mask``,
``param_dtype``, the performance options ``scan_unroll`` and ``remat``, and ``custom_backward``
(False for forward-mode differentiation: ``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``; see
:class:`rnnjax.RNN`); ConvLSTM also ``return_state`` and ``unroll``; ``GRU`` and ``LSTM`` also ``backend``:
``'auto'`` (default) runs a call on oneDNN's fused CPU kernels where the ``onednn`` extra is
installed and they compute it exactly (``recurrent_activation='sigmoid'``, ``activation='tanh'``,
no mask or reset, no recurrent dropout, float32, one CPU device, a large enough batch:
:mod:`rnnjax.onednn.dispatch`), else the scan; ``'scan'`` always the scan; ``'onednn'`` oneDNN or a
``ValueError`` saying why not.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, cast

import flax.linen as nn
import jax

from rnnjax import kinds
from rnnjax.layers import contract
from rnnjax.layers.base import RecurrentLayer, reset_layer_states, run_recurrent
from rnnjax.layers.cells import KerasCell
from rnnjax.layers.conv_lstm import ConvLSTM, ConvLSTMCell


class KerasRecurrent(RecurrentLayer):
    """Shared call of the dense built-in layers (no fields of its own; ``kind``: the record)."""

    kind: ClassVar[kinds.CellKind | None] = None  # set per kind by linen_class

    def __post_init__(self):
        if self.kind is not None:
            contract.check_config(self.kind, self)
        super().__post_init__()

    def _make_cell(self):
        kind = cast(kinds.CellKind, self.kind)  # set per kind by linen_class
        return kind.linen_cell(**{n: getattr(self, n) for n in kind.arguments("cell")}, name="cell")

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
        return run_recurrent(
            self, self._make_cell(), inputs, mask=mask, reset=reset, initial_state=initial_state, training=training
        )

    def reset_states(self, states: Any = None):
        """Zeroes the stateful states, or sets them to ``states`` (``[h]`` or ``[h, c]``).

        ``_, updates = layer.apply(variables, method='reset_states', mutable=['rnn_state'])``.
        """
        return reset_layer_states(self, states)


_BASES = {
    ("cell", False): KerasCell,
    ("cell", True): ConvLSTMCell,
    ("layer", False): KerasRecurrent,
    ("layer", True): ConvLSTM,
}
_CALLS = {
    "cell": "Call: ``output, new_states = cell(x_t, states, *, training=False)`` (one step, Keras's flat "
    "states); in a layer, ``rnnjax.RNN(cell)``.",
    "layer": "Call: ``layer(inputs, *, mask=None, initial_state=None, training=False)``: inputs ``(*batch, "
    "timesteps, *features)`` (any number of batch axes), a boolean ``mask (*batch, timesteps)``; returns "
    "the output (the whole sequence with ``return_sequences``), then the final states (flat, Keras order) "
    "with ``return_state``. Stateful layers: see :class:`rnnjax.RNN`.",
}


def class_doc(kind: kinds.CellKind, role: str, name: str) -> str:
    """The docstring of a class made from ``kind``: its summary, where the equations live, the call,
    its examples (the arguments are the class's fields: ``inspect.signature`` lists them)."""
    summary = kind.cell_doc if role == "cell" else kind.layer_doc
    core = kind.core.__name__
    example = f"\n\n    Examples:{kind.linen_example}" if role == "layer" and kind.linen_example else ""
    return (
        f"{summary}\n\n    Equations, parameters (Keras layout) and states: "
        f":class:`{kind.core.__module__}.{core}` (its module's docstring). ``param_dtype`` (not in Keras) sets "
        f"the parameters' dtype. {_CALLS[role]}{example}\n    "
    )


@functools.cache
def linen_class(kind: kinds.CellKind, role: str) -> type:
    """The linen class of ``kind`` (``role='cell'``: ``<Name>Cell``; ``'layer'``: ``<Name>``), made
    once: fields the kind's arguments (:meth:`rnnjax.kinds.CellKind.arguments`) with their
    defaults (:meth:`rnnjax.kinds.CellKind.default`)."""
    name = kind.cell_name if role == "cell" else kind.name
    names = kind.arguments(role)
    namespace = {
        "__annotations__": {n: kinds.ARGUMENTS[n][0] for n in names},
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": class_doc(kind, role, name),
        "kind": kind,
        "kind_role": role,
    }
    namespace.update({n: kind.default(n) for n in names if kind.default(n) is not kinds.REQUIRED})
    if kind.rank:
        namespace["rank"] = kind.rank
    return type(name, (_BASES[role, bool(kind.rank)],), namespace)


# The public classes, one per kind of rnnjax.kinds.KINDS (in its order).
SimpleRNN, GRU, LSTM, ConvLSTM1D, ConvLSTM2D, ConvLSTM3D = (linen_class(k, "layer") for k in kinds.KINDS)
SimpleRNNCell, GRUCell, LSTMCell, ConvLSTM1DCell, ConvLSTM2DCell, ConvLSTM3DCell = (
    linen_class(k, "cell") for k in kinds.KINDS
)
