"""Peak memory of the compiled programs, a documented property (``docs/design.md``, "Memory").

XLA's own figure for a compiled CPU program, ``compiled.memory_analysis()`` (temporaries plus
outputs; arguments excluded): deterministic, compile only, no timing. Bounds are stated in the
model's own sizes: ``B`` batch rows, ``T`` steps, ``I`` inputs, ``U`` units, ``G`` gate blocks,
float32 (4 bytes). The reference for training is Flax linen's ``nn.RNN`` over the same cell.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import rnnjax
from rnnjax.functional import _planner, force_plan

B, I, U = 4, 16, 32
FLOAT = 4

CASES = {  # (layer, its options, gate blocks G, Flax cell of the same function or None)
    "lstm": (rnnjax.LSTM, dict(recurrent_activation="sigmoid"), 4, nn.OptimizedLSTMCell),
    "gru_reset_after": (rnnjax.GRU, dict(reset_after=True, recurrent_activation="sigmoid"), 3, nn.GRUCell),
    "gru": (rnnjax.GRU, {}, 3, None),
    "simple_rnn": (rnnjax.SimpleRNN, {}, 1, nn.SimpleCell),
}


def _peak(f, *args) -> int:
    on_cpu = jax.device_put(args, jax.devices("cpu")[0])
    m = jax.jit(f).lower(*on_cpu).compile().memory_analysis()
    return m.temp_size_in_bytes + m.output_size_in_bytes


def _forward_peak(layer, steps, **call):
    x = jnp.zeros((B, steps, I))
    v = layer.init(jax.random.key(0), x[:, :2])
    return _peak(lambda v, x: layer.apply(v, x, **call), v, x)


def _span_bytes(gates, steps):
    """One span of steps as the inference program holds it: the inputs, their projection and the
    outputs of ``k`` steps, ``k`` the steps whose projection fits ``INFER_SPAN_BYTES``."""
    k = min(steps, max(1, _planner.INFER_SPAN_BYTES // (B * gates * U * FLOAT)))
    return k * B * (I + gates * U + U) * FLOAT


BACKWARDS_MASKED = {"go_backwards": True, "mask": True}


@pytest.mark.parametrize(
    "name, options",
    [
        ("lstm", {}),
        ("lstm", BACKWARDS_MASKED),
        ("gru_reset_after", {}),
        ("gru_reset_after", BACKWARDS_MASKED),
        ("gru", {}),
        ("simple_rnn", {}),
    ],
    ids=["lstm", "lstm_backwards_masked", "gru_reset_after", "gru_reset_after_backwards_masked", "gru", "simple_rnn"],
)
def test_inference_keeps_the_outputs_and_one_span(name, options):
    """Not differentiated, a layer returning its whole sequence keeps the outputs and about one
    span of steps (at most twice :func:`_span_bytes`), whatever the sequence length: doubling
    ``T`` adds the outputs' bytes and at most a few steps of a span (the remainder spans differ);
    the projection of all steps at once would add ``T·B·G·U`` floats."""
    cls, kw, gates, _ = CASES[name]
    options = dict(options)
    layer = cls(U, return_sequences=True, go_backwards=options.pop("go_backwards", False), **kw)
    peaks = {}
    for steps in (1024, 2048):
        call = {"mask": jnp.ones((B, steps), bool)} if options.get("mask") else {}
        peaks[steps] = _forward_peak(layer, steps, **call)
        outputs = B * steps * U * FLOAT
        assert peaks[steps] <= outputs + 2 * _span_bytes(gates, steps), (steps, peaks[steps], outputs)
    grown = peaks[2048] - peaks[1024]
    assert grown <= B * 1024 * U * FLOAT + 4 * B * (I + gates * U + U) * FLOAT, grown


@pytest.mark.parametrize("name", ["lstm", "gru_reset_after", "simple_rnn"])
def test_training_takes_less_memory_than_flax(name):
    """Differentiated (the gradient of ``sum(outputs)`` with respect to parameters and inputs),
    the program's peak is at most Flax linen's for the same cell, and within the per-step residuals
    ``docs/design.md`` lists (at most ``G + 4`` floats of ``U`` per batch row and step, plus the
    inputs and their gradient, ``2·I``)."""
    cls, kw, gates, flax_cell = CASES[name]
    steps = 256
    x = jnp.zeros((B, steps, I))
    layer = cls(U, return_sequences=True, **kw)
    v = layer.init(jax.random.key(0), x[:, :2])
    ours = _peak(jax.grad(lambda v, x: jnp.sum(layer.apply(v, x)), argnums=(0, 1)), v, x)
    flax_rnn = nn.RNN(flax_cell(U))
    fv = flax_rnn.init(jax.random.key(0), x[:, :2])
    theirs = _peak(jax.grad(lambda v, x: jnp.sum(flax_rnn.apply(v, x)), argnums=(0, 1)), fv, x)
    assert ours <= theirs, (ours, theirs)
    assert ours <= B * steps * ((gates + 4) * U + 2 * I) * FLOAT, ours


def _loop_state_counts(compiled_text: str, state_shape: str) -> list:
    """Per ``while`` op of a compiled program, how many of its loop variables have ``state_shape``."""
    return [line.split(" while(")[0].count(state_shape) for line in compiled_text.splitlines() if " while(" in line]


@pytest.mark.parametrize("return_sequences", [True, False])
def test_inference_spans_carry_no_more_per_step_than_one_span(return_sequences):
    """Without a mask, the inference program in spans (forced: 8 steps) keeps, in its step loop,
    as many ``(B, U)`` loop variables as the program of one span of all steps (the states; the
    previous output only where it is returned): the previous output, read only at masked steps,
    is not carried from span to span (it cost a copy per step, the batch-1 slowdown of
    ``bench/README.md``, "Batch 1"). Read from XLA's compiled CPU program."""
    rows, steps, units = 1, 40, 8
    layer = rnnjax.LSTM(units, return_sequences=return_sequences, recurrent_activation="sigmoid")
    x = jnp.zeros((rows, steps, I))
    v = layer.init(jax.random.key(0), x[:, :2])
    on_cpu = jax.device_put((v, x), jax.devices("cpu")[0])
    counts = {}
    for span in (8, steps):
        with force_plan(infer_span=span):
            text = jax.jit(layer.apply).lower(*on_cpu).compile().as_text()
        counts[span] = _loop_state_counts(text, f"f32[{rows},{units}]")
    assert len(counts[8]) == 2 and len(counts[steps]) == 1, counts  # spans: an outer and a step loop
    assert max(counts[8]) == counts[steps][0] == (2 if return_sequences else 3), counts
