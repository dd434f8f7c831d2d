"""Bad input gets a clear error at trace time: a ValueError/TypeError naming the argument, what
was received and what was expected; never a deep XLA shape error, never a silent broadcast.

Covers SimpleRNN/GRU/LSTM, RNN with a cell or a list of cells (StackedRNNCells), the cells
called directly, the functional core (``rnnjax.functional.rnn``) and the companions
(Bidirectional, Embedding, Masking, TimeDistributed, Dense, Dropout, Activation, Sequential).

Two Keras checks have no counterpart here, by construction: Keras rejects ``stateful=True``
without a fixed batch size and ``unroll=True`` without a static number of steps. In JAX every
shape is static at trace time, so a layer always knows both; the only remaining error, a
stateful layer called with a batch size other than the one its states were built for, is
tested below.

Config fields of Flax modules are dataclass fields, checked when the module first runs (``init``
or the first ``apply``), not at construction; the functional cores (frozen dataclasses) check
theirs at construction.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import rnnjax
import rnnjax.functional as F
from rnnjax import kinds

KEY = jax.random.key(0)
X = jnp.ones((2, 5, 3), jnp.float32)
DENSE_KINDS = [k for k in kinds.KINDS if not k.rank]  # the dense built-in kinds (records)
LAYERS = [k.linen_layer for k in DENSE_KINDS]
N_STATES = {k.linen_layer: len(k.core(1).state_size) for k in DENSE_KINDS}
CORES = [k.core for k in DENSE_KINDS]


def _msg(*parts):
    """A regex requiring every part (escaped) in order."""
    return ".*".join(re.escape(p) for p in parts)


@pytest.fixture(scope="module", params=LAYERS, ids=lambda c: c.__name__)
def built(request):
    cls = request.param
    layer = cls(4)
    return cls, layer, layer.init(KEY, X)


# ----- shapes (driver / run_recurrent) --------------------------------------------------------


@pytest.mark.parametrize("shape", [(3,), ()])
def test_wrong_input_rank(built, shape):
    """Inputs are ``(*batch, T, F)``: an unbatched ``(T, F)`` sequence is accepted (see
    test_batch_axes.py), fewer than 2 dimensions are not."""
    _, layer, v = built
    with pytest.raises(ValueError, match=_msg("`inputs`", "at least 2 dimensions", str(shape))):
        layer.apply(v, jnp.ones(shape))


def test_extra_axis_is_a_batch_axis(built):
    """``(2, 5, 3, 1)`` reads as batch ``(2, 5)``, 3 steps of 1 feature: the layer built for 3
    features says so."""
    _, layer, v = built
    with pytest.raises(ValueError, match=_msg("`inputs`", "1 features per step", "built for 3")):
        layer.apply(v, jnp.ones((2, 5, 3, 1)))


def test_wrong_input_rank_at_init():
    with pytest.raises(ValueError, match=_msg("`inputs`", "at least 2 dimensions", "(5,)")):
        rnnjax.LSTM(4).init(KEY, jnp.ones((5,)))


def test_feature_size_differs_from_built(built):
    _, layer, v = built
    with pytest.raises(ValueError, match=_msg("`inputs`", "4 features", "built for 3")):
        layer.apply(v, jnp.ones((2, 5, 4)))


def test_feature_size_error_under_jit(built):
    _, layer, v = built
    with pytest.raises(ValueError, match=_msg("`inputs`", "4 features", "built for 3")):
        jax.jit(layer.apply)(v, jnp.ones((2, 5, 4)))


def test_feature_size_stacked_and_cell():
    stack = rnnjax.RNN([rnnjax.LSTMCell(4), rnnjax.GRUCell(3)])
    v = stack.init(KEY, X)
    with pytest.raises(ValueError, match=_msg("`inputs`", "2 features", "LSTMCell", "built for 3")):
        stack.apply(v, jnp.ones((2, 5, 2)))
    cell = rnnjax.SimpleRNNCell(4)
    cv = cell.init(KEY, jnp.ones((2, 3)), [jnp.zeros((2, 4))])
    with pytest.raises(ValueError, match=_msg("`inputs`", "5 features", "built for 3")):
        cell.apply(cv, jnp.ones((2, 5)), [jnp.zeros((2, 4))])


def test_declared_input_dim_and_length():
    with pytest.raises(ValueError, match=_msg("`inputs`", "input_dim=7", "got 3")):
        rnnjax.GRU(4, input_dim=7).init(KEY, X)
    with pytest.raises(ValueError, match=_msg("`inputs`", "input_length=9", "got 5")):
        rnnjax.GRU(4, input_length=9).init(KEY, X)


@pytest.mark.parametrize("shape", [(2, 4), (2, 6), (1, 5), (5,), (2, 5, 1)])
def test_mask_wrong_shape(built, shape):
    """Including shapes that would broadcast ((1, 5)) or nearly match ((2, 5, 1))."""
    _, layer, v = built
    with pytest.raises(ValueError, match=_msg("`mask`", "expected shape (2, 5)", f"got {shape}")):
        layer.apply(v, X, mask=jnp.ones(shape, bool))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.int32])
def test_mask_wrong_dtype(built, dtype):
    _, layer, v = built
    with pytest.raises(TypeError, match=_msg("`mask`", "boolean", jnp.dtype(dtype).name)):
        layer.apply(v, X, mask=jnp.ones((2, 5), dtype))


def test_initial_state_wrong_count(built):
    cls, layer, v = built
    n = N_STATES[cls]
    given = [jnp.zeros((2, 4))] * (n + 1)
    with pytest.raises(ValueError, match=_msg("`initial_state`", f"expected {n} state array", f"got {n + 1}")):
        layer.apply(v, X, initial_state=given)
    if n > 1:
        with pytest.raises(ValueError, match=_msg("`initial_state`", f"expected {n} state array", "got 1")):
            layer.apply(v, X, initial_state=[jnp.zeros((2, 4))])


@pytest.mark.parametrize("shape", [(2, 5), (1, 4), (3, 4), (4,)])
def test_initial_state_wrong_shape(built, shape):
    """(1, 4) would broadcast silently against a batch of 2: it must be refused."""
    cls, layer, v = built
    given = [jnp.zeros(shape)] + [jnp.zeros((2, 4))] * (N_STATES[cls] - 1)
    with pytest.raises(ValueError, match=_msg("`initial_state`[0]", "expected shape (2, 4)", f"got {shape}")):
        layer.apply(v, X, initial_state=given)


def test_initial_state_stacked_count():
    stack = rnnjax.RNN([rnnjax.LSTMCell(4), rnnjax.GRUCell(3)])
    v = stack.init(KEY, X)
    with pytest.raises(ValueError, match=_msg("`initial_state`", "expected 3 state array", "got 2")):
        stack.apply(v, X, initial_state=[jnp.zeros((2, 4)), jnp.zeros((2, 4))])


@pytest.mark.parametrize(
    "cell", [rnnjax.LSTMCell(4), [rnnjax.GRUCell(4), rnnjax.SimpleRNNCell(2)]], ids=["cell", "stack"]
)
def test_constants_to_cell_without_constants(cell):
    layer = rnnjax.RNN(cell)
    with pytest.raises(ValueError, match=_msg("`constants`", "does not take constants")):
        layer.init(KEY, X, constants=jnp.ones((2, 3)))
    v = layer.init(KEY, X)
    with pytest.raises(ValueError, match=_msg("`constants`", "does not take constants")):
        layer.apply(v, X, constants=jnp.ones((2, 3)))


@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
def test_stateful_other_batch_size(cls):
    layer = cls(4, stateful=True)
    v = layer.init(KEY, X)
    with pytest.raises(ValueError, match=_msg("`inputs`", "batch size 2", "batch of 3")):
        layer.apply(v, jnp.ones((3, 5, 3)), mutable=["rnn_state"])


def test_stateful_without_mutable():
    layer = rnnjax.LSTM(4, stateful=True)
    v = layer.init(KEY, X)
    with pytest.raises(ValueError, match=_msg("stateful=True", "mutable=['rnn_state']")):
        layer.apply(v, X)


def test_zero_length_sequence(built):
    cls, layer, v = built
    with pytest.raises(ValueError, match=_msg("`inputs`", "time axis is empty", "(2, 0, 3)")):
        cls(4).init(KEY, jnp.ones((2, 0, 3)))
    with pytest.raises(ValueError, match=_msg("`inputs`", "time axis is empty", "(2, 0, 3)")):
        layer.apply(v, jnp.ones((2, 0, 3)))


def test_zero_features():
    with pytest.raises(ValueError, match=_msg("`input_dim`", "positive integer", "got 0")):
        rnnjax.LSTM(4).init(KEY, jnp.ones((2, 5, 0)))


# ----- config (core __post_init__ / cell _check_config, checked at first run) ----------------


@pytest.mark.parametrize("units", [0, -1, 2.5, True, "4", None])
@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
def test_units_not_positive_int_layer(cls, units):
    with pytest.raises(ValueError, match=_msg("`units`", "positive integer", f"got {units!r}")):
        cls(units).init(KEY, X)


@pytest.mark.parametrize("units", [0, -1, 2.5, True])
@pytest.mark.parametrize("core", CORES, ids=lambda c: c.__name__)
def test_units_not_positive_int_core(core, units):
    with pytest.raises(ValueError, match=_msg("`units`", "positive integer", f"got {units!r}")):
        core(units)


@pytest.mark.parametrize("units", [0, 2.5])
def test_units_cell_in_rnn_and_stack(units):
    with pytest.raises(ValueError, match=_msg("`units`", f"got {units!r}")):
        rnnjax.RNN(rnnjax.GRUCell(units)).init(KEY, X)
    with pytest.raises(ValueError, match=_msg("`units`", f"got {units!r}")):
        rnnjax.RNN([rnnjax.GRUCell(3), rnnjax.LSTMCell(units)]).init(KEY, X)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, True, "0.5"])
@pytest.mark.parametrize("arg", ["dropout", "recurrent_dropout"])
@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
def test_dropout_outside_unit_interval(cls, arg, rate):
    with pytest.raises(ValueError, match=_msg(f"`{arg}`", "[0, 1)", f"got {rate!r}")):
        cls(4, **{arg: rate}).init(KEY, X)


def test_dropout_valid_edges_accepted():
    v = rnnjax.LSTM(4, dropout=0.0, recurrent_dropout=0.999).init(KEY, X)
    assert v["params"]["cell"]["kernel"].shape == (3, 16)


_NAMED = {
    "activation": "activation",
    "recurrent_activation": "activation",
    "kernel_initializer": "initializer",
    "recurrent_initializer": "initializer",
    "bias_initializer": "initializer",
    "kernel_regularizer": "regularizer",
    "recurrent_regularizer": "regularizer",
    "bias_regularizer": "regularizer",
    "activity_regularizer": "regularizer",
    "kernel_constraint": "constraint",
    "recurrent_constraint": "constraint",
    "bias_constraint": "constraint",
}


@pytest.mark.parametrize("arg", sorted(_NAMED))
@pytest.mark.parametrize("cls", [rnnjax.GRU, rnnjax.LSTM], ids=lambda c: c.__name__)
def test_unknown_names(cls, arg):
    with pytest.raises(ValueError, match=_msg(f"`{arg}`", f"unknown {_NAMED[arg]}", "'bogus'", "expected one of")):
        cls(4, **{arg: "bogus"}).init(KEY, X)
    with pytest.raises(TypeError, match=_msg(f"`{arg}`", "expected", "got 3")):
        cls(4, **{arg: 3}).init(KEY, X)


@pytest.mark.parametrize("arg", ["activation", "kernel_initializer", "bias_constraint", "recurrent_regularizer"])
def test_unknown_names_simple_rnn(arg):
    with pytest.raises(ValueError, match=_msg(f"`{arg}`", "unknown", "'bogus'")):
        rnnjax.SimpleRNN(4, **{arg: "bogus"}).init(KEY, X)


@pytest.mark.parametrize("arg", ["activation", "kernel_initializer", "recurrent_initializer", "bias_initializer"])
@pytest.mark.parametrize("core", CORES, ids=lambda c: c.__name__)
def test_unknown_names_core_at_construction(core, arg):
    with pytest.raises(ValueError, match=_msg(f"`{arg}`", "unknown", "'bogus'")):
        core(4, **{arg: "bogus"})


@pytest.mark.parametrize("impl", [-1, 3, "1", 1.0, True, None])
@pytest.mark.parametrize("cls", [rnnjax.GRU, rnnjax.LSTM], ids=lambda c: c.__name__)
def test_implementation_not_1_or_2(cls, impl):
    with pytest.raises(ValueError, match=_msg("`implementation`", "expected 1 or 2", f"got {impl!r}")):
        cls(4, implementation=impl).init(KEY, X)


@pytest.mark.parametrize("impl", [-1, 1.0, True])
@pytest.mark.parametrize("core", [F.GRUCore, F.LSTMCore], ids=lambda c: c.__name__)
def test_implementation_core(core, impl):
    with pytest.raises(ValueError, match=_msg("`implementation`", f"got {impl!r}")):
        core(4, implementation=impl)


def test_empty_cell_list():
    with pytest.raises(ValueError, match=_msg("`cells`", "non-empty list", "got")):
        rnnjax.RNN([]).init(KEY, X)
    with pytest.raises(ValueError, match=_msg("`cells`", "non-empty list", "got []")):
        rnnjax.StackedRNNCells([])


# ----- functional API -------------------------------------------------------------------------


@pytest.fixture(scope="module", params=CORES, ids=lambda c: c.__name__)
def core_params(request):
    core = request.param(4)
    return core, core.init(KEY, 3)


def test_functional_input_dim(core_params):
    core, p = core_params
    with pytest.raises(ValueError, match=_msg("`inputs`", "4 features", "built for 3")):
        F.rnn(core, p, jnp.ones((2, 5, 4)))
    with pytest.raises(ValueError, match=_msg("`inputs`", "4 features", "built for 3")):
        jax.jit(lambda x: F.rnn(core, p, x))(jnp.ones((5, 4)))


@pytest.mark.parametrize("bad", [jnp.ones((3,)), [[1.0, 2.0, 3.0]]], ids=["rank1", "list"])
def test_functional_input_rank(core_params, bad):
    core, p = core_params
    with pytest.raises(ValueError, match=_msg("`inputs`", "(*batch, time, features)", "at least 2")):
        F.rnn(core, p, bad)


def test_functional_zero_length(core_params):
    core, p = core_params
    with pytest.raises(ValueError, match=_msg("`inputs`", "time axis is empty")):
        F.rnn(core, p, jnp.ones((0, 3)))


def test_functional_mask(core_params):
    core, p = core_params
    with pytest.raises(ValueError, match=_msg("`mask`", "expected shape (2, 5)", "got (1, 5)")):
        F.rnn(core, p, X, mask=jnp.ones((1, 5), bool))
    with pytest.raises(TypeError, match=_msg("`mask`", "boolean", "float32")):
        F.rnn(core, p, X, mask=jnp.ones((2, 5)))


def test_functional_initial_state(core_params):
    core, p = core_params
    n = len(core.state_size)
    with pytest.raises(ValueError, match=_msg("`initial_state`", f"expected {n} state array", f"got {n + 1}")):
        F.rnn(core, p, X, initial_state=tuple(jnp.zeros((2, 4)) for _ in range(n + 1)))
    with pytest.raises(ValueError, match=_msg("`initial_state`[0]", "expected shape (2, 4)", "got (1, 4)")):
        F.rnn(core, p, X, initial_state=core.initial_state((1,)))
    # a correct plain tuple is accepted and means the same as the NamedTuple
    y1, _ = F.rnn(core, p, X, initial_state=tuple(jnp.full((2, 4), 0.5) for _ in range(n)))
    y2, _ = F.rnn(core, p, X, initial_state=type(core.initial_state())(*[jnp.full((2, 4), 0.5)] * n))
    assert jnp.array_equal(y1, y2)


def test_scan_rnn_time_major_mask():
    with pytest.raises(ValueError, match=_msg("`mask`", "expected shape (5, 2)", "got (2, 5)")):
        F.scan_rnn(
            lambda s, x: (s, x), jnp.ones((5, 2, 3)), jnp.zeros((2, 3)), mask=jnp.ones((2, 5), bool), time_major=True
        )


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: rnnjax.LSTM(0), "`units`"),
        (lambda: rnnjax.GRU(3, recurrent_dropout=-0.1), "`recurrent_dropout`"),
        (lambda: rnnjax.SimpleRNN(3, activation="tanhh"), "`activation`"),
        (lambda: rnnjax.LSTMCell(3, bias_constraint="max_nrm"), "`bias_constraint`"),
        (lambda: rnnjax.GRUCell(3, implementation=3), "`implementation`"),
        (lambda: rnnjax.SimpleRNNCell(3, recurrent_initializer="orthogonall"), "`recurrent_initializer`"),
    ],
)
def test_bad_arguments_fail_at_construction(make, match):
    """As in Keras, a bad constructor argument fails when the layer is built, before any call."""
    with pytest.raises(ValueError, match=match):
        make()


# ----- the companions: Bidirectional, Embedding, Masking, TimeDistributed, Sequential ---------


@pytest.mark.parametrize(
    "make,match",
    [
        (
            lambda: rnnjax.Bidirectional(rnnjax.LSTM(4), merge_mode="avg"),
            _msg("`merge_mode`", "expected one of ['concat', 'sum', 'mul', 'ave', None]", "got 'avg'"),
        ),
        (lambda: rnnjax.Bidirectional(rnnjax.Dense(3)), _msg("`layer`", "expected a recurrent layer", "got Dense")),
        (
            lambda: rnnjax.Bidirectional(rnnjax.LSTM(4), backward_layer=rnnjax.Dense(3)),
            _msg("`backward_layer`", "expected a recurrent layer", "got Dense"),
        ),
        (
            lambda: rnnjax.Bidirectional(rnnjax.LSTM(4), backward_layer=rnnjax.LSTM(4)),
            _msg(
                "`backward_layer`", "other direction", "layer.go_backwards=False", "backward_layer.go_backwards=False"
            ),
        ),
        (
            lambda: rnnjax.Bidirectional(
                rnnjax.LSTM(4), backward_layer=rnnjax.LSTM(4, go_backwards=True, return_sequences=True)
            ),
            _msg("`backward_layer`", "the same `return_sequences` as `layer` (False)", "got True"),
        ),
        (lambda: rnnjax.Embedding(1, 4, mask_zero=True), _msg("`input_dim`", "mask_zero=True", "at least 2", "got 1")),
        (lambda: rnnjax.Embedding(0, 4), _msg("`input_dim`", "positive integer", "got 0")),
        (lambda: rnnjax.Embedding(5, 4, embeddings_initializer="unifrom"), "`embeddings_initializer`"),
        (lambda: rnnjax.Dense(0), "`units`"),
        (lambda: rnnjax.Dense(3, activation="rleu"), "`activation`"),
        (lambda: rnnjax.Dense(3, kernel_regularizer="l3"), "`kernel_regularizer`"),
        (lambda: rnnjax.Dropout(1.0), _msg("`rate`", "[0, 1)", "got 1.0")),
        (lambda: rnnjax.Activation("tanhh"), "`activation`"),
        (lambda: rnnjax.TimeDistributed(lambda x: x), _msg("`layer`", "expected a Flax module", "got function")),
        (lambda: rnnjax.Sequential([]), _msg("`layers`", "non-empty list")),
        (
            lambda: rnnjax.Sequential([rnnjax.Dense(2), "relu"]),
            _msg("`layers`[1]", "expected a Flax module", "got str"),
        ),
    ],
)
def test_companion_arguments_fail_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "fwd,bwd",
    [
        (rnnjax.LSTM(4, return_state=True), rnnjax.GRU(4, go_backwards=True, return_state=True)),
        (rnnjax.LSTM(4, stateful=True), rnnjax.GRU(4, go_backwards=True, stateful=True)),
        (rnnjax.GRU(4, return_state=True), rnnjax.GRU(3, go_backwards=True, return_state=True)),
    ],
)
def test_backward_layer_with_another_kind_of_state(fwd, bwd):
    layer = rnnjax.Bidirectional(fwd, backward_layer=bwd)
    with pytest.raises(ValueError, match=_msg("`backward_layer`", "its states have shapes", "the forward layer's")):
        v = layer.init(KEY, X)
        layer.apply(v, X, mutable=["rnn_state"])


def test_bidirectional_call_errors():
    layer = rnnjax.Bidirectional(rnnjax.LSTM(4))
    v = layer.init(KEY, X)
    with pytest.raises(ValueError, match=_msg("`initial_state`", "even number", "got 3")):
        layer.apply(v, X, initial_state=[jnp.zeros((2, 4))] * 3)
    with pytest.raises(ValueError, match=_msg("`initial_state`", "expected 2 state array", "got 1")):
        layer.apply(v, X, initial_state=[jnp.zeros((2, 4))] * 2)
    with pytest.raises(ValueError, match=_msg("`constants`", "LSTM does not take constants")):
        layer.apply(v, X, constants=[jnp.zeros((2, 3))])
    with pytest.raises(ValueError, match=_msg("`mask`", "expected shape (2, 5)", "got (2, 4)")):
        layer.apply(v, X, mask=jnp.ones((2, 4), bool))


def test_companion_input_and_mask_errors():
    seq = rnnjax.Sequential([rnnjax.Masking(), rnnjax.LSTM(4)])
    v = seq.init(KEY, X)
    with pytest.raises(ValueError, match=_msg("`mask` (Sequential)", "expected shape (2, 5)", "got (2, 4)")):
        seq.apply(v, X, mask=jnp.ones((2, 4), bool))
    with pytest.raises(TypeError, match=_msg("`mask` (Sequential)", "boolean", "int32")):
        seq.apply(v, X, mask=jnp.ones((2, 5), jnp.int32))
    td = rnnjax.TimeDistributed(rnnjax.Dense(2))
    tv = td.init(KEY, X)
    with pytest.raises(ValueError, match=_msg("`mask` (TimeDistributed)", "expected shape (2, 5)", "got (5, 2)")):
        td.apply(tv, X, mask=jnp.ones((5, 2), bool))
    with pytest.raises(ValueError, match=_msg("`inputs`", "at least 3 dimensions", "(2, 5)")):
        td.apply(tv, jnp.ones((2, 5)))
    foreign = rnnjax.Sequential([rnnjax.Masking(), nn.Dense(3), rnnjax.LSTM(4)])
    with pytest.raises(TypeError, match=_msg("Dense does not support masking", "TimeDistributed")):
        foreign.init(KEY, X)
    several = rnnjax.Sequential([rnnjax.LSTM(4, return_state=True)])
    with pytest.raises(ValueError, match=_msg("`layers`[0] (lstm, LSTM) returned 3 outputs", "return_state")):
        several.init(KEY, X)
    emb = rnnjax.Embedding(5, 3, input_length=4)
    with pytest.raises(ValueError, match=_msg("`inputs`", "ids must lie in [0, input_dim=5)", "from 0 to 5")):
        emb.init(KEY, jnp.array([[0, 1, 2, 5]]))
    with pytest.raises(ValueError, match=_msg("`inputs`", "not integers")):
        emb.init(KEY, jnp.array([[0.5, 1, 2, 3]]))
    with pytest.raises(ValueError, match=_msg("`inputs`", "input_length=4", "(1, 3)")):
        emb.init(KEY, jnp.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match=_msg("`noise_shape`", "expected 3 entries", "(2, 5, 3)", "(2, 2, 3)")):
        rnnjax.Dropout(0.5, noise_shape=(2, 2, 3)).apply({}, X, training=True, rngs={"dropout": KEY})
