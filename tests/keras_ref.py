"""Helpers to run Keras 3 (JAX backend) on the same weights as an rnnjax layer."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402


# Registered so that Keras can copy a layer that uses it (Bidirectional serializes its layer).
@keras.saving.register_keras_serializable(package="rnnjax_tests")
def keras2_hard_sigmoid(x):
    """Keras 2's hard sigmoid written with Keras 3 ops (Keras 3's own 'hard_sigmoid' differs)."""
    return keras.ops.clip(0.2 * x + 0.5, 0.0, 1.0)


def keras_activation(name):
    return keras2_hard_sigmoid if name == "hard_sigmoid" else name


def cell_weights(params: dict) -> list:
    """rnnjax cell params dict -> Keras weight list [kernel, recurrent_kernel, (bias)]."""
    out = [np.asarray(params["kernel"]), np.asarray(params["recurrent_kernel"])]
    if "bias" in params:
        out.append(np.asarray(params["bias"]))
    return out


def run_keras(layer, x, weights, **call_kwargs):
    """Builds ``layer`` on ``x``, loads ``weights``, returns its outputs as numpy (list if several)."""
    if not layer.built:
        layer.build(tuple(x.shape))
    layer.set_weights(weights)
    out = layer(x, **call_kwargs)
    if isinstance(out, (list, tuple)):  # output, then states (nested per cell when stacked): flatten
        import jax

        return [np.asarray(o) for o in jax.tree_util.tree_leaves(list(out))]
    return np.asarray(out)
