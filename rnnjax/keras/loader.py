"""``load_keras`` and ``load_keras_weights``: Keras model files -> rnnjax modules and variables."""
from __future__ import annotations

import jax
import jax.numpy as jnp

import rnnjax
from rnnjax.keras import build, config as kconfig, formats, weights
from rnnjax.keras.formats import KerasImportError
from rnnjax.keras.graph import KerasGraph

_UNKNOWN_SIZE = 32  # stands for a None size while the variables' shapes are derived


def _chain(spec, modules):
    """A Sequential as a KerasGraph chain: for layer names rnnjax.Sequential would rename (a
    Keras name such as 'LSTM_1' looks like one Flax made up)."""
    n = len(modules)
    return KerasGraph(tuple(modules), tuple(s.name for s in spec.layers), tuple((k - 1,) for k in range(n)),
                      (False,) * n, n - 1)


def _model(spec, modules):
    if spec.kind == "sequential":
        return rnnjax.Sequential(modules)
    index = {s.name: k for k, s in enumerate(spec.layers)}
    index[spec.input_name] = -1
    inbound, problems = [], []
    for s in spec.layers:
        missing = [n for n in s.inputs if n not in index]
        merge = s.class_name in build.MERGES
        if missing or (len(s.inputs) != 1 and not merge) or (merge and len(s.inputs) < 2):
            problems.append(f"layer {s.name!r} ({s.class_name}): inputs {s.inputs} are not supported")
        inbound.append(tuple(index.get(n, -1) for n in s.inputs))
    if spec.output_name not in index or index[spec.output_name] < 0:
        problems.append(f"output layer {spec.output_name!r} is not a layer of the model")
    if problems:
        raise KerasImportError(problems)
    return KerasGraph(tuple(modules), tuple(s.name for s in spec.layers), tuple(inbound),
                      tuple(s.class_name in build.MERGES for s in spec.layers), index[spec.output_name])


def _abstract_variables(model, spec):
    if spec.input_shape is None:
        raise KerasImportError("the file does not give the model's input shape (no InputLayer or batch_input_shape)")
    shape = tuple((1 if i == 0 else _UNKNOWN_SIZE) if d is None else int(d) for i, d in enumerate(spec.input_shape))
    dtype = jnp.int32 if "int" in spec.input_dtype else jnp.float32
    try:
        return jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, dtype))
    except (TypeError, ValueError) as err:
        raise KerasImportError(f"the layers do not fit together for inputs of shape {spec.input_shape}: {err}") \
            from None


def _materialize(tree):
    """Arrays as jax arrays; variables the file does not hold (stateful states) as zeros."""
    def leaf(a):
        if isinstance(a, jax.ShapeDtypeStruct):
            return jnp.zeros(a.shape, a.dtype)
        return jnp.asarray(a)
    return jax.tree_util.tree_map(leaf, tree)


def _to_dict(tree):
    return {k: _to_dict(v) for k, v in tree.items()} if hasattr(tree, "items") else tree


def read_model(path):
    """``(ModelSpec, open HDF5 file, weights reader)`` of a full-model file; the reader takes the
    built modules. The caller closes the file."""
    kind = formats.sniff(path)
    if kind == "zip":
        archive = formats.read_zip(path)
        version = str(archive["metadata"].get("keras_version", "3"))
        spec = kconfig.parse_model(archive["config"], version)
        h5 = formats.open_hdf5(archive["weights"], path)
        return spec, h5, lambda mods: weights.read_k3(
            h5, [(s.class_name, s.name, m) for s, m in zip(spec.layers, mods)], path)
    f = formats.open_hdf5(path, path)
    try:
        _refuse_non_model(f, path)
        text = formats.attr_text(f, "model_config")
        spec = kconfig.parse_model(formats.parse_json(text, "model_config"), formats.attr_text(f, "keras_version"))
        if "model_weights" not in f:
            raise KerasImportError("the file has a model_config but no model_weights group", path)
    except BaseException:
        f.close()
        raise
    return spec, f, lambda mods: weights.read_k2(f["model_weights"], path)


def _refuse_non_model(f, path):
    attrs, keys = f.attrs, set(f.keys())
    if "model_config" in attrs:
        return
    if "nb_layers" in attrs:
        raise KerasImportError("a Keras 0.x weights file (nb_layers) is not supported", path)
    if formats.has_list(f, "layer_names") or "layers" in keys or "_layer_checkpoint_dependencies" in keys:
        raise KerasImportError("a weights-only file (no model_config): build the model and use "
                               "rnnjax.load_keras_weights(path, model, variables)", path)
    raise KerasImportError("an HDF5 file that is not a Keras model (no model_config attribute, no weights)", path)


def load_keras(path, cudnn: str = "keep"):
    """Loads a Keras model file into ``(model, variables)`` with ``model.apply(variables, x)``
    giving the file's predictions.

    Formats (from the content, not the suffix): Keras 2 / tf-keras full-model HDF5 (also the
    legacy ``.h5`` Keras 3 writes) and the Keras 3 ``.keras`` zip. ``model`` is an
    :class:`rnnjax.Sequential` for a Sequential model and a :class:`rnnjax.keras.KerasGraph` for a
    single-input functional one; ``variables['params'][<Keras layer name>]`` holds each layer's
    weights in rnnjax's layout (``'batch_stats'``: BatchNormalization's moving statistics; a
    stateful layer's ``'rnn_state'`` starts at zeros, Keras does not save states). Nothing from
    the file is executed. Raises :class:`rnnjax.keras.KerasImportError` listing every problem.

    ``cudnn``: Keras 2's ``CuDNNLSTM``/``CuDNNGRU`` become ``rnnjax.CuDNNLSTM``/``CuDNNGRU`` with
    the weights unchanged (``'keep'``, the default; right-padded masks only), or the ``LSTM``/
    ``GRU(reset_after=True)`` with sigmoid gates that computes the same function, the weights
    converted by Keras 2's rules (``'canonical'``; masks with holes too).
    """
    if cudnn not in ("keep", "canonical"):
        raise ValueError(f"`cudnn`: expected 'keep' or 'canonical', got {cudnn!r}.")
    path = str(path)
    spec, handle, read = read_model(path)
    with handle:
        formats.check_tree(handle)
        try:
            modules = build.build_layers(spec.layers, spec.keras_major, spec.version, cudnn)
        except KerasImportError as err:
            raise KerasImportError(err.problems, path) from None
        model = _model(spec, modules)
        abstract = _to_dict(_abstract_variables(model, spec))
        names = {s.name for s in spec.layers}
        if spec.kind == "sequential" and any(set(tree) - names for tree in abstract.values()):
            model = _chain(spec, modules)
            abstract = _to_dict(_abstract_variables(model, spec))
        file_layers = read(modules)
    values = weights.assign(file_layers, [s.name for s in spec.layers], abstract, path)
    return model, _materialize(values)


def _model_layers(model, variables):
    """``(names, modules, wrapped)`` of a user model: a Sequential, a KerasGraph or one layer."""
    if isinstance(model, KerasGraph):
        return list(model.names), list(model.layers), False
    if isinstance(model, rnnjax.Sequential):
        names, counts = [], {}
        for layer in model.layers:
            base = weights.snake_case(type(layer).__name__)
            auto = layer.name is None or layer.name.startswith(("layers_", type(layer).__name__ + "_"))
            n = counts.get(base, 0)
            counts[base] = n + 1
            names.append((base if n == 0 else f"{base}_{n}") if auto else layer.name)
        return names, list(model.layers), False
    return ["__layer__"], [model], True


def _read_weights(root, names, modules, path):
    formats.check_tree(root)
    if formats.has_list(root, "layer_names"):
        return weights.read_k2(root, path)
    if "model_weights" in root and formats.has_list(root["model_weights"], "layer_names"):
        return weights.read_k2(root["model_weights"], path)
    if "layers" in root or "_layer_checkpoint_dependencies" in root:
        return weights.read_k3(root, [(type(m).__name__, n, m) for n, m in zip(names, modules)], path)
    raise KerasImportError("not a Keras weights file (no layer_names attribute, no layers group)", path)


def load_keras_weights(path, model, variables):
    """The weights of a Keras file in ``variables`` of a model the user built (an
    :class:`rnnjax.Sequential`, a model from :func:`load_keras`, or one layer).

    Files: Keras 2 ``save_weights`` HDF5, full-model HDF5, Keras 3 ``.weights.h5`` and ``.keras``.
    Matched as Keras does: the layers with weights in order, each weight by position and shape;
    a Keras 2 CuDNN layer's weights load into an ``LSTM``/``GRU(reset_after=True)`` and back
    (Keras 2's conversions; the target should use ``recurrent_activation='sigmoid'`` to compute
    what cuDNN computed). Returns new variables; raises :class:`KerasImportError` listing every
    count and shape mismatch.
    """
    path = str(path)
    names, modules, wrapped = _model_layers(model, variables)
    variables = _to_dict(variables)
    if wrapped:
        variables = {col: {"__layer__": tree} for col, tree in variables.items()}
    kind = formats.sniff(path)
    if kind == "zip":
        root = formats.open_hdf5(formats.read_zip(path)["weights"], path)
    else:
        root = formats.open_hdf5(path, path)
    with root:
        file_layers = _read_weights(root, names, modules, path)
    out = weights.assign(file_layers, names, variables, path)
    out = {col: jax.tree_util.tree_map(jnp.asarray, tree) for col, tree in out.items()}
    return {col: tree["__layer__"] for col, tree in out.items()} if wrapped else out

