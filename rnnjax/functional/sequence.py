"""``rnn``: runs any :class:`~rnnjax.functional.protocol.RecurrentCore` over a sequence."""

from __future__ import annotations

from typing import Any

import jax

from rnnjax.functional.core import check_input_dim, check_state, core_program, state_dtype
from rnnjax.functional.driver import run_program
from rnnjax.functional.options import LoopOptions
from rnnjax.functional.protocol import CORE_MEMBERS, CoreParams, RecurrentCore, SpatialCore


def rnn(
    core: RecurrentCore,
    params: CoreParams,
    inputs: jax.Array,
    *,
    initial_state: Any = None,
    mask: jax.Array | None = None,
    reset: jax.Array | None = None,
    go_backwards: bool = False,
    return_sequences: bool = False,
    zero_output_for_mask: bool = False,
    unroll: bool = False,
    scan_unroll: int = 1,
    remat: bool = False,
    dropout_mask: jax.Array | None = None,
    recurrent_dropout_mask: jax.Array | None = None,
    custom_backward: bool = True,
    backend: str = "auto",
) -> tuple[jax.Array, Any]:
    """Runs a core over a sequence: ``(*batch, T, *features) -> ((*batch, U) or (*batch, T, U),
    state)`` (ConvLSTM: ``features = (*spatial, C)``, outputs ``(..., *spatial', F)``).

    The input projection of every step is one matmul (or convolution) before the loop; the loop
    runs only the recurrent part (:func:`rnnjax.functional.scan_rnn` documents the sequence
    semantics, ``reset`` included: boolean ``(*batch, T)``, True where a new sequence starts, for
    episodes and packed sequences). ``dropout_mask``/``recurrent_dropout_mask``: ``(count, *batch, *features)``/
    ``(count, *batch, *state features)`` masks from :func:`rnnjax.functional.dropout_masks` (count
    1, or one per gate with ``implementation=1``). ``custom_backward``: use the hand-written
    backward pass where the core's step has one (``docs/design.md``); it is reverse-mode only, so
    pass False to differentiate in forward mode (``jax.jvp``, ``jax.jacfwd``). States are kept in
    at least float32 (bfloat16 inputs get float32 states), as in the layers. ``backend``:
    ``'auto'`` runs an ``LSTMCore``/``GRUCore`` call on oneDNN's fused CPU kernels where the
    ``onednn`` extra is installed and they compute it exactly (sigmoid gates, tanh, no mask, no
    recurrent dropout, float32, one CPU device, a large enough batch; :mod:`rnnjax.onednn.dispatch`
    lists the rules), else the scan; ``'scan'`` always the scan; ``'onednn'`` oneDNN or a
    ``ValueError`` saying why not.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import rnnjax.functional as F
        >>> core = F.LSTMCore(4)
        >>> params = core.init(jax.random.key(0), input_dim=3)
        >>> y, state = F.rnn(core, params, jnp.ones((2, 5, 3)), return_sequences=True)
        >>> y.shape, state.c.shape
        ((2, 5, 4), (2, 4))
    """
    if not isinstance(core, RecurrentCore):
        missing = [m for m in CORE_MEMBERS if not hasattr(core, m)]
        raise TypeError(
            f"`core`: expected a rnnjax.functional.RecurrentCore, got {type(core).__name__} "
            f"without {', '.join(missing)}."
        )
    n = core.num_feature_axes
    options = LoopOptions(
        go_backwards=go_backwards,
        return_sequences=return_sequences,
        zero_output_for_mask=zero_output_for_mask,
        unroll=unroll,
        scan_unroll=scan_unroll,
        remat=remat,
        feature_axes=n,
        custom_backward=custom_backward,
        backend=backend,
    ).checked()
    if n == 1:
        check_input_dim(params.kernel, inputs)
        template = core.initial_state(inputs.shape[:-2], state_dtype(inputs.dtype))
    else:
        if not isinstance(core, SpatialCore):
            raise TypeError(
                f"`core`: a core with {n} feature axes must be a rnnjax.functional.SpatialCore, "
                f"got {type(core).__name__} without check_inputs or output_spatial_shape."
            )
        core.check_inputs(params, inputs)
        template = core.initial_state(inputs.shape[: -(n + 1)], state_dtype(inputs.dtype), inputs.shape[-n:-1])
    initial_state = template if initial_state is None else check_state(template, initial_state)
    program = core_program(core, params, dropout_mask, recurrent_dropout_mask)
    return run_program(program, inputs, initial_state, options, mask=mask, reset=reset)
