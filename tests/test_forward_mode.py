"""Forward-mode differentiation of the layers (``custom_backward=False``).

The built-in layers' loops have a hand-written reverse-mode backward pass (``jax.custom_vjp``),
which ``jax.jvp`` cannot differentiate; ``custom_backward=False`` runs the generic loop. These
tests check that, with it, ``jax.jvp``/``jax.jacfwd`` work on every layer and agree with the
default layer's reverse pass (``<u, J t>`` from the jvp equals ``<Jᵀ u, t>`` from the hand-written
vjp), with ``check_grads`` in float64 for the numbers themselves.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from catalogue import DENSE, assert_trees_close, feature_shape, right_padded_only
from catalogue import layer as make_layer
from jax.test_util import check_grads

import rnnjax

K3 = dict(recurrent_activation="sigmoid")
# test id -> (catalogue variant, options): every dense kind with Keras 2's defaults, then variations
LAYERS = {name: (name, {}) for name in DENSE}
LAYERS.update(
    {
        "lstm_sigmoid": ("lstm", K3),
        "gru_reset_after": ("gru_reset_after", K3),
        "rnn_lstm_cell": ("rnn_lstm", {}),
        "conv_lstm2d": ("conv_lstm2d", {}),
        "cudnn_lstm": ("cudnn_lstm", {}),
        "cudnn_gru": ("cudnn_gru", {}),
    }
)
# right-padded, as the CuDNN layers require; holes for the others
MASKS = {
    "right_padded": [[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4],
    "holes": [[1, 0, 1, 1, 0, 1], [0, 1, 1, 0, 1, 1], [1, 1, 0, 0, 0, 1]],
}


def _setup(name, **kw):
    variant, options = LAYERS[name]
    spatial = len(feature_shape(variant, 2)) > 1
    shape = (2, 4) + feature_shape(variant, 2) if spatial else (3, 6, 4)

    def make(**more):
        return make_layer(variant, 3 if spatial else 5, **options, **more)

    x = jax.random.normal(jax.random.key(1), shape)
    which = "right_padded" if right_padded_only(variant) else "holes"
    mask = jnp.asarray(MASKS[which], bool)[: shape[0], : shape[1]]
    layer = make(**kw)
    v = layer.init(jax.random.key(0), x, mask=mask)
    v = jax.tree_util.tree_map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(2), a.shape, a.dtype), v)
    return make, x, mask, v


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize(
    "options",
    [{"return_sequences": True}, {"go_backwards": True, "return_state": True}],
    ids=["sequences", "backwards_state"],
)
def test_jvp_with_custom_backward_false_matches_the_default_vjp(name, options):
    make, x, mask, v = _setup(name, **options)
    fast, generic = make(**options), make(custom_backward=False, **options)

    def f(layer):
        return lambda v, x: layer.apply(v, x, mask=mask)

    tv = jax.tree_util.tree_map(lambda a: jax.random.normal(jax.random.key(3), a.shape, a.dtype), v)
    tx = jax.random.normal(jax.random.key(4), x.shape)
    y, ty = jax.jit(lambda v, x, tv, tx: jax.jvp(f(generic), (v, x), (tv, tx)))(v, x, tv, tx)
    y_fast, vjp = jax.vjp(f(fast), v, x)
    assert_trees_close(y, y_fast, atol=1e-6, rtol=1e-6)
    u = jax.tree_util.tree_map(lambda a: jax.random.normal(jax.random.key(5), a.shape, a.dtype), y_fast)
    gv, gx = vjp(u)
    lhs = sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(u), jax.tree_util.tree_leaves(ty)))
    rhs = sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves((gv, gx)), jax.tree_util.tree_leaves((tv, tx))))
    assert abs(float(lhs)) > 1e-2  # not a vacuous comparison
    # <u, J t> = <J^T u, t>. Both sides are float32 sums of terms that cancel (at the LSTM's draw,
    # terms summing to 32 in magnitude give 0.016), so their rounding is relative to the terms'
    # scale, sum |u_i (J t)_i|, not to the sum itself: jax 0.12's CPU compiler differs from 0.10's
    # by 1e-6 of 0.016 there (3e-8 of the scale). 1e-6 of the scale is tighter than the former
    # rtol=2e-5 of the sum wherever the terms do not cancel (GRU: 7e-5 against 2.2e-4).
    scale = sum(
        jnp.vdot(jnp.abs(a), jnp.abs(b)) for a, b in zip(jax.tree_util.tree_leaves(u), jax.tree_util.tree_leaves(ty))
    )
    assert abs(float(lhs) - float(rhs)) <= 1e-6 * float(scale), (float(lhs), float(rhs), float(scale))


@pytest.mark.parametrize("name", ["lstm", "gru_reset_after", "conv_lstm2d"])
def test_check_grads_forward_mode_float64(name):
    with jax.enable_x64(True):
        make, x, mask, v = _setup(name, return_sequences=True, param_dtype=jnp.float64)
        layer = make(return_sequences=True, param_dtype=jnp.float64, custom_backward=False)
        v64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), v)
        check_grads(
            lambda v, x: layer.apply(v, x, mask=mask),
            (v64, x.astype(jnp.float64)),
            order=1,
            modes=("fwd",),
            atol=1e-6,
            rtol=1e-6,
        )


def test_jacfwd_equals_jacrev_of_the_default_layer():
    make, x, mask, v = _setup("lstm")
    jf = jax.jacfwd(lambda x: make(custom_backward=False).apply(v, x, mask=mask))(x)
    jr = jax.jacrev(lambda x: make().apply(v, x, mask=mask))(x)
    assert jf.shape == (3, 5, 3, 6, 4)
    np.testing.assert_allclose(jf, jr, atol=1e-6)


def test_the_default_layer_is_reverse_mode_only():
    """Documents why the switch exists: the default path has a custom VJP."""
    make, x, mask, v = _setup("lstm_sigmoid")
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda x: make().apply(v, x, mask=mask), (x,), (x,))


@pytest.mark.parametrize("bad", [1, 0, "no", None])
def test_custom_backward_must_be_a_bool(bad):
    x = jnp.ones((2, 3, 4))
    for layer in (rnnjax.LSTM(3, custom_backward=bad), rnnjax.CuDNNGRU(3, custom_backward=bad)):
        with pytest.raises(TypeError, match="custom_backward"):
            layer.init(jax.random.key(0), x)


def test_cudnn_backend_refuses_forward_mode():
    with pytest.raises(ValueError, match="custom_backward.*scan backend"):
        rnnjax.CuDNNLSTM(3, backend="cudnn", custom_backward=False).init(jax.random.key(0), jnp.ones((2, 3, 4)))
