"""The worked example of ``docs/design.md`` ("Adding a cell"): Keras 2's ``MinimalRNNCell`` as a
built-in kind (``rnnjax.kinds.MINIMAL_RNN``: a core and a record, nothing else). Its linen layer,
its NNX twin and its cell called directly against a float64 numpy loop (a mask with holes,
``go_backwards``), its gradients by ``jax.test_util.check_grads`` (reverse mode through the
driver's hand-written backward pass), and the Keras semantics it gets for free (stateful)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

import rnnjax
from rnnjax import kinds
from rnnjax.functional.minimal_rnn import MinimalRNNCore
from rnnjax.functional.protocol import RecurrentMatmulStep

B, T, I, U = 3, 6, 3, 4
MASK = np.array([[1, 1, 0, 1, 0, 1], [0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], bool)
RNG = np.random.default_rng(0)
X = RNG.normal(size=(B, T, I))
K, R = RNG.normal(scale=0.5, size=(I, U)), RNG.normal(scale=0.3, size=(U, U))


def _reference(go_backwards=False, h0=None):
    """``h_t = x_t @ K + h_{t-1} @ R``; a masked step keeps the state and repeats the output (float64)."""
    xs, ms = (X[:, ::-1], MASK[:, ::-1]) if go_backwards else (X, MASK)
    h = np.zeros((B, U)) if h0 is None else h0
    outputs = []
    for t in range(T):
        h = np.where(ms[:, t, None], xs[:, t] @ K + h @ R, h)
        outputs.append(h)
    return np.stack(outputs, axis=1), h


def _params():
    return {"cell": {"kernel": jnp.asarray(K, jnp.float32), "recurrent_kernel": jnp.asarray(R, jnp.float32)}}


@pytest.mark.parametrize("go_backwards", [False, True])
def test_linen_layer_matches_numpy(go_backwards):
    layer = kinds.MINIMAL_RNN.linen_layer(U, return_sequences=True, return_state=True, go_backwards=go_backwards)
    x = jnp.asarray(X, jnp.float32)
    variables = layer.init(jax.random.key(0), x)
    assert jax.tree_util.tree_map(jnp.shape, variables["params"]) == {
        "cell": {"kernel": (I, U), "recurrent_kernel": (U, U)}
    }
    out, h = layer.apply({"params": _params()}, x, mask=jnp.asarray(MASK))
    want_out, want_h = _reference(go_backwards)
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h, want_h, rtol=1e-5, atol=1e-5)


def test_nnx_layer_and_cell_match_numpy():
    layer = kinds.MINIMAL_RNN.nnx_layer(U, return_sequences=True, input_dim=I, rngs=nnx.Rngs(0))
    rnnjax.nnx.from_linen(layer, {"params": _params()})
    out = layer(jnp.asarray(X, jnp.float32), mask=jnp.asarray(MASK))
    np.testing.assert_allclose(out, _reference()[0], rtol=1e-5, atol=1e-5)
    h0 = RNG.normal(size=(B, U))
    cell = kinds.MINIMAL_RNN.linen_cell(U)
    y, (h,) = cell.apply({"params": _params()["cell"]}, jnp.asarray(X[:, 0], jnp.float32), [jnp.asarray(h0)])
    np.testing.assert_allclose(y, X[:, 0] @ K + h0 @ R, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h, y)


def test_gradients_check_grads():
    """Reverse mode through the recurrent-matmul path's hand-written backward pass, against
    numerical differences (float64)."""
    core = MinimalRNNCore(U)
    layer = kinds.MINIMAL_RNN.linen_layer(U, return_sequences=True)
    assert isinstance(core.matmul_step(core.init(jax.random.key(0), I)), RecurrentMatmulStep)
    mask = jnp.asarray(MASK)

    def f(params, x):
        return jnp.sum(jnp.sin(layer.apply({"params": params}, x, mask=mask)))

    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), _params())
        check_grads(f, (params, jnp.asarray(X)), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_stateful_chunks_equal_one_call_and_defaults_are_keras():
    """Keras's semantics come with the kind: two stateful chunks equal one call; Keras 2's
    example draws both weights from 'uniform' (U(-0.05, 0.05)) and has no bias."""
    x = jnp.asarray(X, jnp.float32)
    layer = kinds.MINIMAL_RNN.linen_layer(U, return_sequences=True, stateful=True)
    variables = {**layer.init(jax.random.key(0), x[:, :3]), "params": _params()}
    first, upd = layer.apply(variables, x[:, :3], mutable=["rnn_state"])
    second, _ = layer.apply({**variables, **upd}, x[:, 3:], mutable=["rnn_state"])
    np.testing.assert_allclose(jnp.concatenate([first, second], axis=1), _reference_unmasked(), rtol=1e-5, atol=1e-5)
    init = kinds.MINIMAL_RNN.linen_layer(U).init(jax.random.key(1), x)["params"]["cell"]
    assert set(init) == {"kernel", "recurrent_kernel"}
    assert all(float(jnp.max(jnp.abs(a))) <= 0.05 for a in init.values())
    assert not hasattr(rnnjax, "MinimalRNN") and kinds.kind_of(layer) is kinds.MINIMAL_RNN


def _reference_unmasked():
    h, outputs = np.zeros((B, U)), []
    for t in range(T):
        h = X[:, t] @ K + h @ R
        outputs.append(h)
    return np.stack(outputs, axis=1)
