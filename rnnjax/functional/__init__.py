"""The pure functional core of rnnjax: no Flax needed.

    import rnnjax.functional as F
    core = F.LSTMCore(units=64)                        # Keras 2 defaults (hard_sigmoid, ...)
    params = core.init(jax.random.key(0), input_dim=8)  # LSTMParams(kernel, recurrent_kernel, bias)
    y, state = F.rnn(core, params, x, mask=mask, return_sequences=True)

Everything here works under ``jax.jit``, ``jax.grad`` and ``jax.vmap`` (inputs may be a single
unbatched ``(T, F)`` sequence).
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from rnnjax.functional import activations, initializers
from rnnjax.functional.core import (
    dropout_masks, gate_matmul, check_input_dim, check_state, core_program, register_for_export,
)
from rnnjax.functional.driver import scan_rnn
from rnnjax.functional.gru import GRUCore, GRUParams, GRUState
from rnnjax.functional.lstm import LSTMCore, LSTMParams, LSTMState
from rnnjax.functional.simple_rnn import SimpleRNNCore, SimpleRNNParams, SimpleRNNState
from rnnjax.functional.conv_lstm import ConvLSTMCore, ConvLSTMParams, ConvLSTMState, conv_lstm


def rnn(
    core,
    params,
    inputs: jax.Array,
    *,
    initial_state: Any = None,
    mask: Optional[jax.Array] = None,
    go_backwards: bool = False,
    return_sequences: bool = False,
    zero_output_for_mask: bool = False,
    unroll: bool = False,
    scan_unroll: int = 1,
    remat: bool = False,
    dropout_mask: Optional[jax.Array] = None,
    recurrent_dropout_mask: Optional[jax.Array] = None,
    custom_backward: bool = True,
):
    """Runs a core over a sequence: ``(*batch, T, I) -> ((*batch, U) or (*batch, T, U), state)``.

    The input projection of every step is one matmul before the loop; the loop runs only the
    recurrent part (:func:`rnnjax.functional.driver.scan_rnn` documents the sequence semantics).
    ``dropout_mask``/``recurrent_dropout_mask``: ``(count, *batch, I)``/``(count, *batch, U)``
    masks from :func:`dropout_masks` (count 1, or one per gate with ``implementation=1``).
    ``custom_backward``: use the hand-written backward pass when the core has one
    (:class:`~rnnjax.functional.driver.LinearStep`, or
    :class:`~rnnjax.functional.driver.InputAdditiveStep`: kernel gradients after the loop); it is
    reverse-mode only, so pass False to differentiate in forward mode (``jax.jvp``, ``jax.jacfwd``).
    """
    check_input_dim(params.kernel, inputs)
    # States are kept in at least float32 (bfloat16 inputs get float32 states), as in the layers.
    template = core.initial_state(inputs.shape[:-2], jnp.promote_types(inputs.dtype, jnp.float32))
    initial_state = template if initial_state is None else check_state(template, initial_state)

    program = core_program(core, params, dropout_mask, recurrent_dropout_mask, custom_backward)
    return scan_rnn(
        program.step, inputs, initial_state, project=program.project, mask=mask, go_backwards=go_backwards,
        return_sequences=return_sequences, zero_output_for_mask=zero_output_for_mask,
        unroll=unroll, scan_unroll=scan_unroll, remat=remat,
        linear=program.linear, unbiased_project=program.unbiased, additive=program.additive,
    )


register_for_export(GRUParams, GRUState, LSTMParams, LSTMState, SimpleRNNParams, SimpleRNNState, ConvLSTMParams,
                    ConvLSTMState)

__all__ = [
    "activations", "initializers", "dropout_masks", "gate_matmul", "scan_rnn", "rnn",
    "GRUCore", "GRUParams", "GRUState", "LSTMCore", "LSTMParams", "LSTMState",
    "SimpleRNNCore", "SimpleRNNParams", "SimpleRNNState",
    "ConvLSTMCore", "ConvLSTMParams", "ConvLSTMState", "conv_lstm",
]
