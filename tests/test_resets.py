"""``reset``: a packed row gives exactly what each of its sequences gives alone.

Every configuration runs a packed batch (several sequences per row, ``reset`` True at each
sequence's first step) and the same sequences each alone in its own right-padded row, without
``reset`` (:mod:`reset_util`: a path the restart code does not touch); outputs, final states and
the gradients of the parameters, the inputs and ``initial_state`` must agree. The rule itself (a
restart at a masked step included) is checked against a float64 numpy loop written from the
docstring of :func:`rnnjax.functional.scan_rnn`. Compiled programs are shared across reset
patterns (the patterns are arguments), so hypothesis adds no compilation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from custom_cells import MinimalRNNCell
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st
from reset_util import assert_trees_close, layout, packed_and_alone
from test_fast_paths import SWITCHES

import rnnjax
import rnnjax.functional as F
import rnnjax.nnx as rnx
from rnnjax.cudnn import fused
from rnnjax.functional import force_plan

B, T, I, U = 2, 6, 3, 3
# restarts at step 0 (row 1), adjacent (steps 2, 3 of row 0), at a masked step (row 0, step 3)
# and at the last step (row 1)
RESET = np.array([[0, 0, 1, 1, 0, 0], [1, 0, 0, 1, 0, 1]], bool)
HOLES = np.array([[1, 1, 1, 0, 1, 1], [1, 0, 1, 1, 1, 0]], bool)
TRAILING = np.array([[1] * 6, [1, 1, 1, 1, 0, 0]], bool)  # the padding after a packed row's last sequence
MASKS = {"none": None, "holes": HOLES, "trailing": TRAILING}


def _data(feature_shape=(I,), state_shapes=((U,),), seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(B, T) + tuple(feature_shape)), jnp.float32)
    h0 = [jnp.asarray(rng.normal(scale=0.5, size=(B,) + tuple(s)), jnp.float32) for s in state_shapes]
    return x, h0


def _check(program, params, x, h0, mask, reset, go_backwards, tol=2e-5):
    """The packed call (not differentiated and differentiated) against each sequence alone."""
    (packed, d_packed), (alone, d_alone), trained = program(
        params, x, mask, jnp.asarray(reset), h0, layout(reset, go_backwards)
    )
    assert_trees_close(packed, alone, tol)
    assert_trees_close(trained, alone, tol)
    assert_trees_close(d_packed, d_alone, tol)
    return packed, d_packed


# ---- the functional core: every path of the driver -------------------------------------------
# name -> (core, recurrent dropout masks per row (count) or None, rnn options, mask)
FUNCTIONAL = {
    "simple": (F.SimpleRNNCore(U), None, {}, "holes"),
    "lstm_hard_sigmoid": (F.LSTMCore(U), None, {"return_sequences": True}, "holes"),
    "lstm_sigmoid_backwards": (
        F.LSTMCore(U, recurrent_activation="sigmoid"),
        None,
        {"go_backwards": True, "return_sequences": True},
        "none",
    ),
    "lstm_per_gate_dropout": (F.LSTMCore(U), 4, {"return_sequences": True, "zero_output_for_mask": True}, "holes"),
    "gru_backwards": (F.GRUCore(U), None, {"go_backwards": True, "return_sequences": True}, "holes"),
    "gru_reset_after_dropout": (F.GRUCore(U, reset_after=True), 1, {"return_sequences": True}, "trailing"),
    "gru_reset_after_per_gate_backwards": (F.GRUCore(U, reset_after=True), 3, {"go_backwards": True}, "holes"),
    "lstm_remat": (F.LSTMCore(U), None, {"remat": True, "return_sequences": True}, "holes"),
    "gru_remat_backwards": (
        F.GRUCore(U),
        None,
        {"remat": True, "go_backwards": True, "return_sequences": True},
        "holes",
    ),
    "lstm_scan_unroll": (
        F.LSTMCore(U, recurrent_activation="sigmoid"),
        None,
        {"scan_unroll": 4, "return_sequences": True},
        "holes",
    ),
    "gru_reset_after_unroll": (
        F.GRUCore(U, reset_after=True),
        None,
        {"unroll": True, "go_backwards": True, "return_sequences": True},
        "holes",
    ),
}
# the generic loop (autodiff's backward pass) too, where a hand-written one exists
GENERIC = ("lstm_hard_sigmoid", "gru_backwards")
_PROGRAMS = {}


def _functional(name, custom_backward=True):
    """(params, recurrent dropout masks, compiled packed-vs-alone program) of a configuration."""
    key = (name, custom_backward)
    if key not in _PROGRAMS:
        core, count, options, _ = FUNCTIONAL[name]
        params = jax.tree_util.tree_map(lambda a: a + 0.1, core.init(jax.random.key(0), I))
        rmask = None if count is None else F.dropout_masks(jax.random.key(3), 0.3, (B, U), count=count)

        def run(p, x, mask, reset, h0, rows):
            rm = None if rmask is None else rmask[:, rows]
            out, state = F.rnn(
                core,
                p,
                x,
                mask=mask,
                reset=reset,
                initial_state=h0,
                recurrent_dropout_mask=rm,
                custom_backward=custom_backward,
                **options,
            )
            return out, jax.tree_util.tree_leaves(state)

        program = packed_and_alone(run, options.get("go_backwards", False), options.get("return_sequences", False))
        _PROGRAMS[key] = (params, program)
    return _PROGRAMS[key]


def _state_shapes(core):
    return [tuple(a.shape) for a in jax.tree_util.tree_leaves(core.initial_state(()))]


@pytest.mark.parametrize(
    "name, custom_backward",
    [(n, True) for n in FUNCTIONAL] + [(n, False) for n in GENERIC],
    ids=[n for n in FUNCTIONAL] + [f"{n}-generic" for n in GENERIC],
)
def test_functional_packed_equals_alone(name, custom_backward):
    """Outputs, final states and gradients (parameters, inputs, initial state) of a packed row equal
    each sequence's alone; NaN at masked steps changes none of them."""
    core, _, options, mask_kind = FUNCTIONAL[name]
    params, program = _functional(name, custom_backward)
    x, h0 = _data(state_shapes=_state_shapes(core))
    mask = MASKS[mask_kind]
    packed = _check(program, params, x, h0, mask, RESET, options.get("go_backwards", False))
    if mask is not None:
        poisoned = jnp.where(jnp.asarray(mask)[..., None], x, jnp.nan)
        (got, d_got), _, _ = program(
            params, poisoned, mask, jnp.asarray(RESET), h0, layout(RESET, options.get("go_backwards", False))
        )
        assert_trees_close((got, d_got), packed, 1e-6)


@st.composite
def patterns(draw):
    """Reset patterns (a restart at every step, at step 0 only, none, adjacent ones, random) and
    masks (none, random holes: restarts at masked steps)."""
    kind = draw(st.sampled_from(["every", "first", "none", "adjacent", "random"]))
    if kind == "every":
        reset = np.ones((B, T), bool)
    elif kind == "first":
        reset = np.zeros((B, T), bool)
        reset[:, 0] = True
    elif kind == "none":
        reset = np.zeros((B, T), bool)
    elif kind == "adjacent":
        reset = np.zeros((B, T), bool)
        start = draw(st.integers(0, T - 2))
        reset[:, start : start + 2] = True
    else:
        reset = np.asarray(draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T))).reshape(B, T)
    holes = draw(st.booleans())
    mask = np.asarray(draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T))).reshape(B, T) if holes else None
    return reset, mask, draw(st.integers(0, 2**16))


@pytest.mark.parametrize(
    "name, custom_backward",
    [
        ("lstm_hard_sigmoid", True),
        ("gru_backwards", True),
        ("gru_reset_after_per_gate_backwards", True),
        ("gru_backwards", False),
    ],
)
def test_reset_patterns(name, custom_backward):
    core, _, options, _ = FUNCTIONAL[name]
    params, program = _functional(name, custom_backward)

    @given(patterns())
    def check(case):
        reset, mask, seed = case
        x, h0 = _data(state_shapes=_state_shapes(core), seed=seed)
        if mask is None:  # the compiled programs take a mask: all True is the same function
            mask = np.ones((B, T), bool)
        _check(program, params, x, h0, mask, reset, options.get("go_backwards", False))

    check()


# one row of tests/test_fast_paths.py's SWITCHES per switch (both cores where spans differ)
RESET_SWITCHES = [
    s
    for s in SWITCHES
    if s[0]
    in (
        "lstm_not_in_place",
        "lstm_sigmoid_delayed_dz",
        "simple_immediate_dz",
        "gru_reset_after_carry_prev_output",
        "gru_reset_after_bias_grad_per_step",
        "lstm_project_chunk",
        "gru_project_chunk",
        "simple_infer_span",
        "lstm_no_loop_bias",
        "lstm_train_in_one_loop",
    )
]


@pytest.mark.parametrize("case", RESET_SWITCHES, ids=[s[0] for s in RESET_SWITCHES])
def test_each_plan_switch_with_resets(case):
    """Every switch of the driver's plan forced, with restarts: still the alone sequences' numbers,
    not differentiated (inference spans, the bias in the loop) and differentiated (each direction
    once, alternating)."""
    name, core, count, with_mask, switches, *_ = case
    go_backwards = RESET_SWITCHES.index(case) % 2 == 1
    params = jax.tree_util.tree_map(lambda a: a + 0.1, core.init(jax.random.key(0), I))
    rmask = None if count is None else F.dropout_masks(jax.random.key(3), 0.3, (B, core.units), count=count)

    def run(p, x, mask, reset, h0, rows):
        rm = None if rmask is None else rmask[:, rows]
        out, state = F.rnn(
            core,
            p,
            x,
            mask=mask,
            reset=reset,
            initial_state=h0,
            recurrent_dropout_mask=rm,
            go_backwards=go_backwards,
            return_sequences=True,
        )
        return out, jax.tree_util.tree_leaves(state)

    x, h0 = _data(state_shapes=_state_shapes(core))
    with force_plan(**switches):
        _check(
            packed_and_alone(run, go_backwards, True), params, x, h0, HOLES if with_mask else None, RESET, go_backwards
        )


# ---- the rule, against float64 numpy -------------------------------------------------------------


def _np_run(step, x, mask, reset, h0, go_backwards, zero_output_for_mask):
    """The restart and masking rules of ``scan_rnn``'s docstring, in float64 numpy."""
    state = [np.asarray(h, np.float64) for h in h0]
    last = np.zeros_like(state[0])
    outs = []
    for t in range(T - 1, -1, -1) if go_backwards else range(T):
        if go_backwards:  # each sequence backwards within itself: restart before its last step
            r = reset[:, t + 1] if t + 1 < T else np.zeros(B, bool)
        else:
            r = reset[:, t]
        state = [np.where(r[:, None], 0.0, s) for s in state]
        last = np.where(r[:, None], 0.0, last)
        m = mask[:, t][:, None]
        new, y = step(state, np.where(m, x[:, t], 0.0))
        state = [np.where(m, n, s) for n, s in zip(new, state)]
        last = np.where(m, y, 0.0 if zero_output_for_mask else last)
        outs.append(last)
    return np.stack(outs, 1), state


def _np_step(core, params):
    k, r, b = (np.asarray(a, np.float64) for a in params)
    u = r.shape[0]
    if isinstance(core, F.SimpleRNNCore):

        def step(state, x):
            h = np.tanh(x @ k + state[0] @ r + b)
            return [h], h

        return step

    def step(state, x):  # the LSTM, Keras 2's hard sigmoid gates
        h, c = state
        z = x @ k + h @ r + b
        sigma = lambda v: np.clip(0.2 * v + 0.5, 0.0, 1.0)
        i, f, g, o = sigma(z[:, :u]), sigma(z[:, u : 2 * u]), np.tanh(z[:, 2 * u : 3 * u]), sigma(z[:, 3 * u :])
        c = f * c + i * g
        h = o * np.tanh(c)
        return [h, c], h

    return step


@pytest.mark.parametrize("core", [F.SimpleRNNCore(U), F.LSTMCore(U)], ids=["simple", "lstm"])
@pytest.mark.parametrize("go_backwards, zero_output_for_mask", [(False, False), (True, True)])
def test_rule_matches_float64_numpy(core, go_backwards, zero_output_for_mask):
    params = jax.tree_util.tree_map(lambda a: a + 0.1, core.init(jax.random.key(0), I))
    x, h0 = _data(state_shapes=_state_shapes(core))
    want, want_state = _np_run(
        _np_step(core, params), np.asarray(x, np.float64), HOLES, RESET, h0, go_backwards, zero_output_for_mask
    )
    got, state = jax.jit(
        lambda p, x, h0: F.rnn(
            core,
            p,
            x,
            mask=jnp.asarray(HOLES),
            reset=jnp.asarray(RESET),
            initial_state=h0,
            go_backwards=go_backwards,
            return_sequences=True,
            zero_output_for_mask=zero_output_for_mask,
        )
    )(params, x, h0)
    got = jnp.flip(got, 1) if go_backwards else got
    want = want[:, ::-1] if go_backwards else want
    np.testing.assert_allclose(got, want, atol=2e-6)
    for a, b in zip(jax.tree_util.tree_leaves(state), want_state):
        np.testing.assert_allclose(a, b, atol=2e-6)


@pytest.mark.parametrize("core", [F.LSTMCore(2, recurrent_activation="sigmoid"), F.GRUCore(2)], ids=["lstm", "gru"])
def test_gradients_against_finite_differences(core):
    """``jax.test_util.check_grads`` in float64 with restarts and a mask: reverse mode through the
    hand-written backward passes (recurrent-matmul, input-additive), forward mode through the
    generic loop (``custom_backward=False``)."""
    from jax.test_util import check_grads

    mask, reset = jnp.asarray(HOLES[:, :4]), jnp.asarray(RESET[:, :4])
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) + 0.1, core.init(jax.random.key(0), 2))
        x = jax.random.normal(jax.random.key(1), (B, 4, 2), jnp.float64)
        h0 = [jnp.full((B, 2), 0.3, jnp.float64) for _ in jax.tree_util.tree_leaves(core.initial_state(()))]

        def f(p, x, h0, custom_backward=True):
            out, state = F.rnn(
                core,
                p,
                x,
                mask=mask,
                reset=reset,
                initial_state=h0,
                return_sequences=True,
                go_backwards=isinstance(core, F.GRUCore),
                custom_backward=custom_backward,
            )
            return jnp.sum(jnp.sin(out)) + sum(jnp.sum(s**2) for s in jax.tree_util.tree_leaves(state))

        check_grads(f, (params, x, h0), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)
        check_grads(lambda p, x, h: f(p, x, h, False), (params, x, h0), order=1, modes=["fwd"], atol=1e-5, rtol=1e-5)


def test_a_restart_at_a_masked_step():
    """The restart applies at a masked step: that step outputs 0 (not the previous output) and the
    next unmasked step starts fresh, as the sequence alone with its first step masked would."""
    core = F.SimpleRNNCore(U)
    params = core.init(jax.random.key(0), I)
    x, _ = _data()
    mask = jnp.array([[True, False, True, True, True, True]] * B)
    reset = jnp.array([[False, True, False, False, False, False]] * B)
    out, state = F.rnn(core, params, x, mask=mask, reset=reset, return_sequences=True)
    assert np.all(np.asarray(out[:, 1]) == 0.0) and np.all(np.asarray(out[:, 0]) != 0.0)
    fresh, fresh_state = F.rnn(core, params, x[:, 2:], return_sequences=True)
    np.testing.assert_allclose(out[:, 2:], fresh, atol=1e-6)
    np.testing.assert_allclose(state.h, fresh_state.h, atol=1e-6)
    # without the reset the masked step repeats o_0
    held = F.rnn(core, params, x, mask=mask, return_sequences=True)[0]
    np.testing.assert_allclose(held[:, 1], out[:, 0], atol=1e-6)


def test_scan_rnn_with_a_custom_step_and_time_major():
    """``scan_rnn`` (any step; time-major inputs, mask and reset) equals ``rnn`` transposed."""
    core = F.LSTMCore(U, recurrent_activation="sigmoid")
    params = core.init(jax.random.key(0), I)
    x, h0 = _data(state_shapes=_state_shapes(core))
    s0 = F.LSTMState(*h0)
    want, want_state = F.rnn(
        core,
        params,
        x,
        mask=jnp.asarray(HOLES),
        reset=jnp.asarray(RESET),
        initial_state=s0,
        return_sequences=True,
        go_backwards=True,
    )
    got, state = F.scan_rnn(
        lambda s, xp: core.step(params, s, xp),
        jnp.swapaxes(x, 0, 1),
        s0,
        project=lambda v: core.project(params, v),
        mask=jnp.asarray(HOLES.T),
        reset=jnp.asarray(RESET.T),
        go_backwards=True,
        return_sequences=True,
        time_major=True,
    )
    np.testing.assert_allclose(jnp.swapaxes(got, 0, 1), want, atol=1e-6)
    assert_trees_close(state, want_state, 1e-6)


def test_vmap_over_unbatched_rows_equals_the_batched_call():
    core = F.GRUCore(U, reset_after=True)
    params = core.init(jax.random.key(0), I)
    x, h0 = _data()
    mask, reset = jnp.asarray(HOLES), jnp.asarray(RESET)

    def f(x, m, r, h):
        return F.rnn(core, params, x, mask=m, reset=r, initial_state=[h], return_sequences=True, go_backwards=True)

    assert_trees_close(jax.jit(jax.vmap(f))(x, mask, reset, h0[0]), jax.jit(f)(x, mask, reset, h0[0]), 1e-6)
    layer = rnnjax.LSTM(U, return_sequences=True)
    v = layer.init(jax.random.key(1), x)
    per_row = jax.vmap(lambda xx, rr: layer.apply(v, xx, reset=rr))(x, reset)
    assert_trees_close(per_row, layer.apply(v, x, reset=reset), 1e-6)


# ---- the layers, linen and NNX ---------------------------------------------------------------------
SEQ_STATE = {"return_sequences": True, "return_state": True}
# name -> (layer, per-step feature shape, state shapes (None: no initial_state), mask, go_backwards)
LAYERS = {
    "rnn_custom_cell": (lambda: rnnjax.RNN(MinimalRNNCell(U), **SEQ_STATE), (I,), [(U,)], "holes", False),
    "rnn_stacked_cells_backwards": (
        lambda: rnnjax.RNN([rnnjax.LSTMCell(U), rnnjax.GRUCell(2)], return_state=True, go_backwards=True),
        (I,),
        [(U,), (U,), (2,)],
        "holes",
        True,
    ),
    "simple_rnn_unroll": (lambda: rnnjax.SimpleRNN(U, unroll=True, **SEQ_STATE), (I,), [(U,)], "none", False),
    "conv_lstm1d_backwards": (
        lambda: rnnjax.ConvLSTM1D(2, 3, padding="same", go_backwards=True, **SEQ_STATE),
        (5, 2),
        [(5, 2), (5, 2)],
        "holes",
        True,
    ),
    "conv_lstm2d": (
        lambda: rnnjax.ConvLSTM2D(2, 2, return_state=True),
        (3, 3, 1),
        [(2, 2, 2), (2, 2, 2)],
        "trailing",
        False,
    ),
    "conv_lstm3d_channels_first": (
        lambda: rnnjax.ConvLSTM3D(1, 1, data_format="channels_first", **SEQ_STATE),
        (1, 2, 2, 2),
        [(1, 2, 2, 2), (1, 2, 2, 2)],
        "holes",
        False,
    ),
    "cudnn_lstm": (lambda: rnnjax.CuDNNLSTM(U, **SEQ_STATE), (I,), [(U,), (U,)], "trailing", False),
    "cudnn_gru_backwards": (
        lambda: rnnjax.CuDNNGRU(U, return_state=True, go_backwards=True),
        (I,),
        [(U,)],
        "none",
        True,
    ),
    "bidirectional_lstm": (
        lambda: rnnjax.Bidirectional(rnnjax.LSTM(U, return_sequences=True)),
        (I,),
        None,
        "holes",
        False,
    ),
    "bidirectional_gru_sum": (
        lambda: rnnjax.Bidirectional(rnnjax.GRU(U, return_sequences=True, reset_after=True), merge_mode="sum"),
        (I,),
        None,
        "none",
        False,
    ),
}


def _linen_run(layer):
    def run(p, x, mask, reset, h0, rows):
        out = layer.apply({"params": p}, x, mask=mask, reset=reset, initial_state=h0 or None)
        return (out[0], list(out[1:])) if isinstance(out, (tuple, list)) else (out, [])

    return run


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_linen_layer_packed_equals_alone(name):
    make, feature_shape, state_shapes, mask_kind, go_backwards = LAYERS[name]
    layer = make()
    x, h0 = _data(feature_shape, state_shapes or ())
    params = layer.init(jax.random.key(1), x, reset=jnp.asarray(RESET))["params"]
    params = jax.tree_util.tree_map(lambda a: a + 0.1, params)
    return_sequences = getattr(layer, "layer", layer).return_sequences
    _check(
        packed_and_alone(_linen_run(layer), go_backwards, return_sequences),
        params,
        x,
        h0,
        MASKS[mask_kind],
        RESET,
        go_backwards,
    )


def test_stateful_layer_continues_its_stored_state_into_the_first_sequence():
    """A stateful layer's stored state is the initial state of each row's first sequence, and it
    stores the state after the last step (the RL form: rollouts that cross episode ends)."""
    stateful = rnnjax.LSTM(U, stateful=True, return_sequences=True)
    plain = rnnjax.LSTM(U, **SEQ_STATE)
    x, h0 = _data(state_shapes=[(U,), (U,)])
    params = plain.init(jax.random.key(1), x)["params"]
    stored = {"states": F.LSTMState(*h0)}

    def run_packed(p, x, mask, reset, h0, rows):
        out, updates = stateful.apply(
            {"params": p, "rnn_state": {"states": F.LSTMState(*h0)}}, x, mask=mask, reset=reset, mutable=["rnn_state"]
        )
        return out, list(updates["rnn_state"]["states"])

    program = packed_and_alone(_linen_run(plain), False, True)
    (want, d_want), _, _ = program(params, x, None, jnp.asarray(RESET), h0, layout(RESET, False))
    packed = jax.jit(run_packed)(params, x, None, jnp.asarray(RESET), h0, None)
    assert_trees_close(packed, want)
    # the same through the stored state itself, twice: the second call continues the first's state
    v = {"params": params, "rnn_state": stored}
    y1, v1 = stateful.apply(v, x, reset=jnp.asarray(RESET), mutable=["rnn_state"])
    y2, _ = stateful.apply({**v, **v1}, x, reset=jnp.asarray(RESET), mutable=["rnn_state"])
    assert_trees_close(y1, want[0])
    continued = plain.apply(
        {"params": params}, x, reset=jnp.asarray(RESET), initial_state=list(v1["rnn_state"]["states"])
    )
    assert_trees_close(y2, continued[0])


def test_nnx_stateful_layer_with_reset():
    """NNX: the stored state continues into each row's first sequence (the non-stateful twin given
    it as ``initial_state`` is the reference, itself checked against each sequence alone above)."""
    x, h0 = _data(state_shapes=[(U,), (U,)])
    stateful = rnx.LSTM(U, input_dim=I, stateful=True, batch_size=B, return_sequences=True, rngs=nnx.Rngs(0))
    plain = rnx.LSTM(U, input_dim=I, return_sequences=True, return_state=True, rngs=nnx.Rngs(0))
    stateful.reset_states(h0)
    reset = jnp.asarray(RESET)
    for _ in range(2):  # the second call continues the state the first stored
        start = list(jax.tree_util.tree_leaves(stateful.states.get_value()))
        want, h, c = plain(x, reset=reset, initial_state=start)
        assert_trees_close(stateful(x, reset=reset), want, 1e-6)
        assert_trees_close(list(jax.tree_util.tree_leaves(stateful.states.get_value())), [h, c], 1e-6)


def _nnx_layers():
    rngs = nnx.Rngs(0)
    return {
        "nnx_lstm_backwards": (
            rnx.LSTM(U, input_dim=I, go_backwards=True, **SEQ_STATE, rngs=rngs),
            (I,),
            [(U,), (U,)],
            "holes",
            True,
        ),
        "nnx_bidirectional": (
            rnx.Bidirectional(rnx.SimpleRNN(U, input_dim=I, return_sequences=True, rngs=rngs), rngs=rngs),
            (I,),
            None,
            "none",
            False,
        ),
        "nnx_conv_lstm1d": (
            rnx.ConvLSTM1D(2, 3, padding="same", input_dim=2, **SEQ_STATE, rngs=rngs),
            (5, 2),
            [(5, 2), (5, 2)],
            "holes",
            False,
        ),
        "nnx_cudnn_gru": (rnx.CuDNNGRU(U, input_dim=I, **SEQ_STATE, rngs=rngs), (I,), [(U,)], "trailing", False),
        "nnx_rnn_stacked": (
            rnx.RNN(
                [rnx.LSTMCell(U, input_dim=I, rngs=rngs), rnx.GRUCell(U, input_dim=U, rngs=rngs)], return_state=True
            ),
            (I,),
            [(U,), (U,), (U,)],
            "holes",
            False,
        ),
    }


@pytest.mark.parametrize(
    "name", ["nnx_lstm_backwards", "nnx_bidirectional", "nnx_conv_lstm1d", "nnx_cudnn_gru", "nnx_rnn_stacked"]
)
def test_nnx_layer_packed_equals_alone(name):
    layer, feature_shape, state_shapes, mask_kind, go_backwards = _nnx_layers()[name]
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

    def run(p, x, mask, reset, h0, rows):
        out = nnx.merge(graphdef, p, rest)(x, mask=mask, reset=reset, initial_state=h0 or None)
        return (out[0], list(out[1:])) if isinstance(out, (tuple, list)) else (out, [])

    x, h0 = _data(feature_shape, state_shapes or ())
    return_sequences = getattr(layer, "return_sequences", False)
    _check(packed_and_alone(run, go_backwards, return_sequences), params, x, h0, MASKS[mask_kind], RESET, go_backwards)


# ---- the fused cuDNN path cannot reset --------------------------------------------------------------


def test_cudnn_layer_takes_the_scan_path_with_reset(monkeypatch):
    """With cuDNN "available", ``backend='auto'`` runs the fused kernel without ``reset`` and the
    scan path with it (the numbers of ``backend='scan'``); ``backend='cudnn'`` with ``reset`` is
    an error naming ``reset``."""

    class FusedKernelRan(Exception):
        pass

    def kernel(*args):
        raise FusedKernelRan

    monkeypatch.setattr(fused, "cudnn_lstm_unavailable_reason", lambda x=None: None)
    monkeypatch.setattr(fused, "cudnn_kernel", kernel)
    x, _ = _data()
    reset = jnp.asarray(RESET)
    auto, scan = rnnjax.CuDNNLSTM(U, return_sequences=True), rnnjax.CuDNNLSTM(U, return_sequences=True, backend="scan")
    v = scan.init(jax.random.key(0), x)
    with pytest.raises(FusedKernelRan):  # without reset, 'auto' takes the fused kernel here
        auto.apply(v, x)
    np.testing.assert_allclose(auto.apply(v, x, reset=reset), scan.apply(v, x, reset=reset), atol=1e-6)
    with pytest.raises(ValueError, match="`reset`: the cuDNN kernel cannot restart"):
        rnnjax.CuDNNLSTM(U, backend="cudnn").apply(v, x, reset=reset)


def test_reset_errors_name_the_argument():
    core = F.LSTMCore(U)
    params = core.init(jax.random.key(0), I)
    x, _ = _data()
    with pytest.raises(ValueError, match=r"`reset`: expected shape \(2, 6\).*got \(2, 5\)"):
        F.rnn(core, params, x, reset=jnp.zeros((B, T - 1), bool))
    with pytest.raises(TypeError, match="`reset`: expected a boolean array, got dtype int32"):
        F.rnn(core, params, x, reset=jnp.zeros((B, T), jnp.int32))
    with pytest.raises(ValueError, match=r"`reset`: expected shape \(6, 2\)"):
        F.scan_rnn(
            lambda s, xt: (s, s),
            jnp.swapaxes(x, 0, 1),
            jnp.zeros((B, U)),
            reset=jnp.zeros((B, T), bool),
            time_major=True,
        )
    layer = rnnjax.GRU(U)
    v = layer.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"`reset`: expected shape \(2, 6\) \(\*batch, timesteps\), got \(6,\)"):
        layer.apply(v, x, reset=jnp.zeros((T,), bool))
    with pytest.raises(TypeError, match=r"`reset`: expected a boolean array.*`reset.astype\(bool\)`"):
        rnnjax.CuDNNGRU(U).apply(rnnjax.CuDNNGRU(U).init(jax.random.key(0), x), x, reset=jnp.zeros((B, T)))
    with pytest.raises(ValueError, match=r"`reset`: expected shape \(2, 6\)"):
        rnnjax.ConvLSTM1D(2, 3).apply(
            rnnjax.ConvLSTM1D(2, 3).init(jax.random.key(0), jnp.zeros((B, T, 5, 2))),
            jnp.zeros((B, T, 5, 2)),
            reset=jnp.zeros((B, T, 1), bool),
        )
