"""The one place where the NNX layers meet rnnjax's layer-side path (initial and stateful
states, constants, activity penalties, input checks, the driver).

The NNX modules own their parameters, dropout streams and state Variables; everything a layer
does with them per call is the shared layer path of :mod:`rnnjax.layers`, reached only from here.
"""
from __future__ import annotations

import functools

import jax

from rnnjax import regularizers
from rnnjax.functional.core import check_custom_backward
from rnnjax.functional.driver import scan_rnn, scan_spatial
from rnnjax.layers.base import _check_layer_inputs, _state_dtype, unflatten_states


def state_dtype(input_dtype):
    return _state_dtype(input_dtype)


def run(make_program, inputs, *, stored=None, mask=None, initial_state=None, constants=None,
        cell_name: str = "cell", return_sequences=False, return_state=False, go_backwards=False, unroll=False,
        zero_output_for_mask=False, activity_regularizer=None, input_dim=None, input_length=None,
        scan_unroll=1, remat=False, custom_backward=True, input_rank=3,
        input_layout="(batch, timesteps, features)"):
    """One layer call: ``(results, final_state, activity_penalty or None)``.

    ``make_program(feature_shape, batch_shape, dtype)`` returns the cell's
    :class:`~rnnjax.layers.base.CellProgram`; ``stored`` is a stateful layer's current states (None
    otherwise). ``results`` is what the Keras layer returns (the output, then the flat final
    states with ``return_state``).
    """
    check_custom_backward(custom_backward)
    _check_layer_inputs(inputs, input_dim, input_length, input_rank, input_layout)
    batch_shape = (inputs.shape[0],)
    program = make_program(inputs.shape[2:], batch_shape, inputs.dtype)
    if constants is not None and not program.takes_constants:
        raise ValueError(f"`constants`: {cell_name} does not take constants; only cells whose `__call__` "
                         "accepts a `constants` argument do.")
    if not custom_backward:
        program = program._replace(linear=None, unbiased=None, additive=None)
    init = initial(program.initial_state(batch_shape, _state_dtype(inputs.dtype)), initial_state, stored)
    driver = scan_rnn if inputs.ndim == 3 else functools.partial(scan_spatial, feature_ndim=inputs.ndim - 2)
    output, final = driver(
        program.step, inputs, init, project=program.project, mask=mask, constants=constants,
        go_backwards=go_backwards, return_sequences=return_sequences,
        zero_output_for_mask=zero_output_for_mask, unroll=unroll, scan_unroll=scan_unroll, remat=remat,
        linear=program.linear, unbiased_project=program.unbiased, additive=program.additive,
    )
    results = (output, *jax.tree_util.tree_leaves(final)) if return_state else output
    return results, final, activity_penalty(activity_regularizer, results)


def activity_penalty(activity_regularizer, results):
    """The call's activity penalty (Keras's, divided by the batch size), or None."""
    reg = regularizers.get(activity_regularizer, "activity_regularizer")
    return None if reg is None else regularizers.activity_penalty(reg, results)


def check_inputs(inputs):
    """``inputs`` must be ``(batch, timesteps, features)``."""
    _check_layer_inputs(inputs, None, None)


def initial(template, initial_state=None, stored=None):
    """The states a call starts from: ``initial_state`` (Keras's flat list) > a stateful layer's
    ``stored`` states > zeros (``template``), checked against ``template``."""
    if stored is not None:
        leaves = jax.tree_util.tree_leaves(stored)
        batch = jax.tree_util.tree_leaves(template)[0].shape[0]
        if leaves and leaves[0].shape[0] != batch:
            raise ValueError(
                f"`inputs`: this stateful layer keeps states for batch size {leaves[0].shape[0]}, got a batch of "
                f"{batch}. A stateful layer needs a fixed batch size (its `batch_size`)."
            )
    if initial_state is not None:
        return unflatten_states(template, initial_state, "initial_state")
    if stored is not None:
        return jax.tree_util.tree_map(lambda s, t: s.astype(t.dtype), stored, template)
    return template


def unflatten(template, given, argument: str):
    """A Keras flat list of state arrays in ``template``'s structure (count and shapes checked)."""
    return unflatten_states(template, given, argument)
