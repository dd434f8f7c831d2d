"""Writing Keras 2 / tf-keras HDF5 files with h5py, following the documented layout
(/work/shared/reference/keras-files.md section 1: root attributes, ``model_weights``,
``layer_names``/``weight_names`` in order, chunked ``layer_names0``... attributes), and float64
numpy references of the Keras 2 recurrent steps."""

import json

import h5py
import numpy as np


def _attr(value, as_bytes):
    return value.encode("utf8") if as_bytes else value


def _names(group, key, names, as_bytes, chunks):
    if not names:  # tf-keras writes np.asarray([]) (a float array) for an empty list
        group.attrs[key] = np.asarray([])
        return
    arr = np.array(
        [n.encode("utf8") if as_bytes else n for n in names],
        dtype=object if not as_bytes else f"S{max([len(n) for n in names] + [1])}",
    )
    if chunks <= 1:
        group.attrs[key] = arr
        return
    for k, part in enumerate(np.array_split(arr, chunks)):
        group.attrs[f"{key}{k}"] = part


def write_weights(group, layers, as_bytes=False, chunks=1):
    """``layers``: ``[(layer name, [(weight name, array)])]`` in model order."""
    _names(group, "layer_names", [n for n, _ in layers], as_bytes, chunks)
    for name, weights in layers:
        g = group.create_group(name)
        _names(g, "weight_names", [w for w, _ in weights], as_bytes, chunks if len(weights) > 1 else 1)
        for wname, value in weights:
            g.create_dataset(wname, data=value)


def write_model(path, model_config, layers, version="2.21.0", backend="tensorflow", as_bytes=False, chunks=1):
    """A full-model file (``model.save('m.h5')``)."""
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = _attr(version, as_bytes)
        f.attrs["backend"] = _attr(backend, as_bytes)
        f.attrs["model_config"] = _attr(json.dumps(model_config), as_bytes)
        g = f.create_group("model_weights")
        g.attrs["keras_version"] = _attr(version, as_bytes)
        g.attrs["backend"] = _attr(backend, as_bytes)
        write_weights(g, layers, as_bytes, chunks)


def write_weights_file(path, layers, version="2.21.0", chunks=1):
    """A tf-keras ``save_weights('w.h5')`` file: the layer groups at the root."""
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = version
        f.attrs["backend"] = "tensorflow"
        write_weights(f, layers, chunks=chunks)


def layer(class_name, **config):
    return {"class_name": class_name, "config": config}


def sequential(*layers):
    return {"class_name": "Sequential", "config": {"name": "sequential", "layers": list(layers)}}


# ---- float64 references (Keras 2 equations) ----
def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def hard_sigmoid(x):
    return np.clip(0.2 * x + 0.5, 0.0, 1.0)


def run(step, state, xs, mask, backwards=False):
    """Last output of ``step`` over ``xs (T, I)``, skipping masked steps (Keras 2)."""
    order = range(len(xs))[::-1] if backwards else range(len(xs))
    for t in order:
        if mask is None or mask[t]:
            state = step(state, xs[t])
    return state


def lstm_step(k, r, b, act=sigmoid):
    u = r.shape[0]

    def step(state, x):
        h, c = state
        z = x @ k + h @ r + b
        i, f, g, o = act(z[:u]), act(z[u : 2 * u]), np.tanh(z[2 * u : 3 * u]), act(z[3 * u :])
        c = f * c + i * g
        return o * np.tanh(c), c

    return step, (np.zeros(u), np.zeros(u))


def gru_step_reset_before(k, r, b, act=hard_sigmoid):
    u = r.shape[0]

    def step(h, x):
        xk = x @ k + b
        z = act(xk[:u] + h @ r[:, :u])
        rr = act(xk[u : 2 * u] + h @ r[:, u : 2 * u])
        hh = np.tanh(xk[2 * u :] + (rr * h) @ r[:, 2 * u :])
        return z * h + (1 - z) * hh

    return step, np.zeros(u)


def cudnn_blocks(k, r, gates):
    """cuDNN's matrices from Keras 2's CuDNN layout: block g of ``kernel`` holds the bytes of
    ``W_g (U, I)``, block g of ``recurrent_kernel`` those of ``R_g (U, U)``."""
    u, i = r.shape[0], k.shape[0]
    w = [k[:, g * u : (g + 1) * u].reshape(-1).reshape(u, i) for g in range(gates)]
    rr = [r[:, g * u : (g + 1) * u].reshape(-1).reshape(u, u) for g in range(gates)]
    return w, rr


def cudnn_lstm_step(k, r, b):
    u = r.shape[0]
    w, rr = cudnn_blocks(k, r, 4)
    bw, br = b[: 4 * u].reshape(4, u), b[4 * u :].reshape(4, u)

    def step(state, x):
        h, c = state
        z = [w[g] @ x + rr[g] @ h + bw[g] + br[g] for g in range(4)]
        c = sigmoid(z[1]) * c + sigmoid(z[0]) * np.tanh(z[2])
        return sigmoid(z[3]) * np.tanh(c), c

    return step, (np.zeros(u), np.zeros(u))


def cudnn_gru_step(k, r, b):
    u = r.shape[0]
    w, rr = cudnn_blocks(k, r, 3)
    bw, br = b[: 3 * u].reshape(3, u), b[3 * u :].reshape(3, u)

    def step(h, x):
        z = sigmoid(w[0] @ x + bw[0] + rr[0] @ h + br[0])
        rg = sigmoid(w[1] @ x + bw[1] + rr[1] @ h + br[1])
        n = np.tanh(w[2] @ x + bw[2] + rg * (rr[2] @ h + br[2]))
        return (1 - z) * n + z * h

    return step, np.zeros(u)


# ---- functional graphs (tf-keras layout) ----
def inbound(*entries, **kwargs):
    """One tf-keras inbound node: ``[layer, node, tensor, kwargs]`` per input tensor (``entries``:
    ``'name'`` or ``('name', node, tensor)``); ``kwargs`` holds tensors as ``[layer, node, tensor]``."""
    out = []
    for e in entries:
        name, node, tensor = (e, 0, 0) if isinstance(e, str) else e
        out.append([name, node, tensor, dict(kwargs)])
    return out


def functional(layers, inputs, outputs, name="model"):
    """A tf-keras functional ``model_config``; ``layers``: ``[(layer dict, [inbound nodes])]``."""
    return {
        "class_name": "Functional",
        "config": {
            "name": name,
            "layers": [{**entry, "name": entry["config"]["name"], "inbound_nodes": nodes} for entry, nodes in layers],
            "input_layers": [[n, 0, 0] for n in inputs],
            "output_layers": [[n, node, t] for n, node, t in outputs],
        },
    }


def input_layer(name, shape, dtype="float32"):
    return layer("InputLayer", name=name, batch_input_shape=[None, *shape], dtype=dtype, sparse=False, ragged=False)


def outputs_of(step, state, xs, mask=None):
    """Every step's output and the final state of ``step`` over ``xs (T, I)`` (Keras 2: a masked
    step repeats the previous output and keeps the state; before any step, zeros)."""
    out, prev = [], None
    for t in range(len(xs)):
        if mask is None or mask[t]:
            state = step(state, xs[t])
            prev = state[0] if isinstance(state, tuple) else state
        out.append(np.zeros_like(state[0] if isinstance(state, tuple) else state) if prev is None else prev)
    return np.stack(out), state


# ---- what model.save writes for a compiled, trained model ----
def write_training(path, class_name, config, state, loss="mse", metrics=("accuracy",), as_bytes=False):
    """Adds tf-keras's training data to a full-model file (``save_model_to_hdf5``): the root
    attribute ``training_config`` (JSON: ``loss``, ``metrics``, ``optimizer_config``) and, when
    ``state`` is given, the group ``optimizer_weights`` (``weight_names`` in ``optimizer.weights``
    order; each name a dataset path, the step counter an int64 scalar)."""
    training = {
        "loss": loss,
        "metrics": list(metrics),
        "weighted_metrics": None,
        "loss_weights": None,
        "optimizer_config": {"class_name": class_name, "config": config},
    }
    with h5py.File(path, "a") as f:
        f.attrs["training_config"] = _attr(json.dumps(training), as_bytes)
        if state is None:
            return
        g = f.create_group("optimizer_weights")
        _names(g, "weight_names", [n for n, _ in state], as_bytes, 1)
        for name, value in state:
            g.create_dataset(name, data=value)


def optimizer_v2_state(optimizer, step, slots):
    """``optimizer.weights`` of tf.keras's OptimizerV2: ``<optimizer>/iter:0`` (int64), then each
    slot kind for every weight (``_create_slots``: all ``m``, then all ``v``), named
    ``<optimizer>/<weight name>/<slot>:0``. ``slots``: ``[(slot, [(weight name, array)])]``."""
    out = [(f"{optimizer}/iter:0", np.int64(step))]
    for slot, arrays in slots:
        out += [(f"{optimizer}/{w.split(':')[0]}/{slot}:0", a) for w, a in arrays]
    return out
