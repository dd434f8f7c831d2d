"""The pure functional core of rnnjax: no Flax needed.

    import rnnjax.functional as F
    core = F.LSTMCore(units=64)                        # Keras 2 defaults (hard_sigmoid, ...)
    params = core.init(jax.random.key(0), input_dim=8)  # LSTMParams(kernel, recurrent_kernel, bias)
    y, state = F.rnn(core, params, x, mask=mask, return_sequences=True)

Everything here works under ``jax.jit``, ``jax.grad`` and ``jax.vmap`` (inputs may be a single
unbatched ``(T, F)`` sequence). Modules: :mod:`~rnnjax.functional.protocol` (what a core is),
one per cell (``simple_rnn``, ``lstm``, ``gru``, ``conv_lstm``: the equations in their
docstrings), :mod:`~rnnjax.functional.driver` (the sequence semantics),
:mod:`~rnnjax.functional.options` (the driver's options as one value, ``force_plan``),
``_planner``, ``_matmul_backward`` and ``_input_additive`` (private: how the driver runs fast).
"""

from __future__ import annotations

from rnnjax.functional import activations, initializers
from rnnjax.functional.conv_lstm import ConvLSTMCore, ConvLSTMParams, ConvLSTMState, conv_lstm
from rnnjax.functional.core import dropout_masks, gate_matmul, register_for_export
from rnnjax.functional.driver import scan_rnn
from rnnjax.functional.gru import GRUCore, GRUParams, GRUState
from rnnjax.functional.lstm import LSTMCore, LSTMParams, LSTMState
from rnnjax.functional.options import LoopOptions, PlanOverrides, force_plan
from rnnjax.functional.protocol import (
    PARAM_NAMES,
    CellCore,
    CoreParams,
    CoreProgram,
    RecurrentCore,
    SpatialCore,
    make_params,
    per_gate_masks,
    shared_mask,
    with_pointwise_vjp,
)
from rnnjax.functional.sequence import rnn
from rnnjax.functional.simple_rnn import SimpleRNNCore, SimpleRNNParams, SimpleRNNState

register_for_export(
    GRUParams, GRUState, LSTMParams, LSTMState, SimpleRNNParams, SimpleRNNState, ConvLSTMParams, ConvLSTMState
)

__all__ = [
    "activations",
    "initializers",
    "dropout_masks",
    "gate_matmul",
    "scan_rnn",
    "rnn",
    "RecurrentCore",
    "CoreProgram",
    "CellCore",
    "SpatialCore",
    "CoreParams",
    "PARAM_NAMES",
    "make_params",
    "per_gate_masks",
    "shared_mask",
    "with_pointwise_vjp",
    "LoopOptions",
    "PlanOverrides",
    "force_plan",
    "GRUCore",
    "GRUParams",
    "GRUState",
    "LSTMCore",
    "LSTMParams",
    "LSTMState",
    "SimpleRNNCore",
    "SimpleRNNParams",
    "SimpleRNNState",
    "ConvLSTMCore",
    "ConvLSTMParams",
    "ConvLSTMState",
    "conv_lstm",
]
