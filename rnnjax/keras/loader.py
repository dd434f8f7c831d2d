"""``load_keras`` and ``load_keras_weights``: Keras model files -> rnnjax modules and variables."""

from __future__ import annotations

import jax
import jax.numpy as jnp

import rnnjax
from rnnjax.keras import config as kconfig
from rnnjax.keras import formats, models, weights
from rnnjax.keras.custom import CustomObjects
from rnnjax.keras.formats import KerasImportError
from rnnjax.keras.graph import KerasGraph

_UNKNOWN_SIZE = 32  # stands for a None size while the variables' shapes are derived


def _input_struct(shape, dtype):
    shape = tuple((1 if i == 0 else _UNKNOWN_SIZE) if d is None else int(d) for i, d in enumerate(shape))
    dtype = str(dtype)
    kind = jnp.bool_ if "bool" in dtype else jnp.int32 if "int" in dtype else jnp.float32
    return jax.ShapeDtypeStruct(shape, kind)


def _abstract_variables(model, spec):
    specs = models.input_specs(model, spec)
    if any(shape is None for shape, _ in specs):
        raise KerasImportError("the file does not give the model's input shape (no InputLayer or batch_input_shape)")
    structs = [_input_struct(shape, dtype) for shape, dtype in specs]
    try:
        return jax.eval_shape(model.init, jax.random.key(0), *structs)
    except (TypeError, ValueError, IndexError) as err:
        shapes = [shape for shape, _ in specs]
        raise KerasImportError(
            f"the layers do not fit together for inputs of shape {shapes[0] if len(shapes) == 1 else shapes}: {err}"
        ) from None


def _materialize(tree):
    """Arrays as jax arrays; variables the file does not hold (stateful states) as zeros."""

    def leaf(a):
        if isinstance(a, jax.ShapeDtypeStruct):
            return jnp.zeros(a.shape, a.dtype)
        return jnp.asarray(a)

    return jax.tree_util.tree_map(leaf, tree)


def _to_dict(tree):
    return {k: _to_dict(v) for k, v in tree.items()} if hasattr(tree, "items") else tree


def read_model(path, custom=None):
    """``(ModelSpec, open HDF5 file, weights reader)`` of a full-model file; the reader takes the
    built top-level modules and returns ``(file layers, whether nested models are grouped)``. The
    caller closes the file."""
    kind = formats.sniff(path)
    if kind == "zip":
        archive = formats.read_zip(path)
        version = str(archive["metadata"].get("keras_version", "3"))
        spec = kconfig.parse_model(archive["config"], version, custom)
        h5 = formats.open_hdf5(archive["weights"], path)
        return (
            spec,
            h5,
            lambda mods: (
                weights.read_k3(h5, [(s.class_name, s.name, m) for s, m in zip(spec.layers, mods)], path),
                False,
            ),
        )
    f = formats.open_hdf5(path, path)
    try:
        _refuse_non_model(f, path)
        text = formats.attr_text(f, "model_config")
        spec = kconfig.parse_model(
            formats.parse_json(text, "model_config"), formats.attr_text(f, "keras_version"), custom
        )
        if "model_weights" not in f:
            raise KerasImportError("the file has a model_config but no model_weights group", path)
    except BaseException:
        f.close()
        raise
    return spec, f, lambda mods: (weights.read_k2(f["model_weights"], path), True)


def _refuse_non_model(f, path):
    attrs, keys = f.attrs, set(f.keys())
    if "model_config" in attrs:
        return
    if "nb_layers" in attrs:
        raise KerasImportError("a Keras 0.x weights file (nb_layers) is not supported", path)
    if formats.has_list(f, "layer_names") or "layers" in keys or "_layer_checkpoint_dependencies" in keys:
        raise KerasImportError(
            "a weights-only file (no model_config): build the model and use "
            "rnnjax.load_keras_weights(path, model, variables)",
            path,
        )
    raise KerasImportError("an HDF5 file that is not a Keras model (no model_config attribute, no weights)", path)


def load_keras(path, cudnn: str = "keep", custom_objects=None):
    """Loads a Keras model file into ``(model, variables)`` with ``model.apply(variables, *inputs)``
    giving the file's predictions.

    Formats (from the content, not the suffix): Keras 2 / tf-keras full-model HDF5 (also the
    legacy ``.h5`` Keras 3 writes) and the Keras 3 ``.keras`` zip. ``model`` is an
    :class:`rnnjax.Sequential` for a Sequential model and a :class:`rnnjax.keras.KerasGraph` for a
    functional one (any number of inputs and outputs, shared layers, nested models, states and
    masks passed between layers); ``variables['params'][<Keras layer name>]`` holds each layer's
    weights in rnnjax's layout (a nested model's under its name; ``'batch_stats'``:
    BatchNormalization's moving statistics; a stateful layer's ``'rnn_state'`` starts at zeros,
    Keras does not save states). Nothing from the file is executed. Raises
    :class:`rnnjax.keras.KerasImportError` listing every problem.

    ``cudnn``: Keras 2's ``CuDNNLSTM``/``CuDNNGRU`` become ``rnnjax.CuDNNLSTM``/``CuDNNGRU`` with
    the weights unchanged (``'keep'``, the default; right-padded masks only), or the ``LSTM``/
    ``GRU(reset_after=True)`` with sigmoid gates that computes the same function, the weights
    converted by Keras 2's rules (``'canonical'``; masks with holes too).

    ``custom_objects``: ``{key: factory}`` for layers rnnjax does not build (:mod:`rnnjax.keras.custom`):
    ``key`` a class name (``'CTCLayer'``, or the registered ``'package>CTCLayer'``) or a layer's
    name (the only way to supply a ``Lambda`` layer or replace a nested model); ``factory(config)``
    gets the layer's config as JSON data and returns a Flax linen module, whose variables take the
    file's weights like any layer's (Keras's order, see :func:`rnnjax.keras.weights.slots`;
    shapes checked). A key that matches no layer is an error.
    """
    if cudnn not in ("keep", "canonical"):
        raise ValueError(f"`cudnn`: expected 'keep' or 'canonical', got {cudnn!r}.")
    custom = CustomObjects(custom_objects)
    path = str(path)
    spec, handle, read = read_model(path, custom)
    with handle:
        try:
            formats.check_tree(handle)
            problems = []
        except KerasImportError as err:
            problems = list(err.problems)
        model, found = models.build_model(spec, cudnn, custom)
        if problems or found:
            raise KerasImportError(problems + found, path)
        abstract = _to_dict(_abstract_variables(model, spec))
        names = [s.name for s in spec.layers]
        if (
            spec.kind == "sequential"
            and isinstance(model, rnnjax.Sequential)
            and any(set(tree) - set(names) for tree in abstract.values())
        ):
            model = models.as_graph(spec, list(model.layers))
            abstract = _to_dict(_abstract_variables(model, spec))
        modules = list(model.layers)
        file_layers, grouped = read(modules)
    values = weights.assign(file_layers, weights.model_slots(names, modules, abstract, grouped), abstract, path)
    return model, _materialize(values)


def _model_layers(model, variables):
    """``(names, modules, classes, wrapped)`` of a user model: a Sequential, a KerasGraph or one
    layer (``classes``: the Keras class of each, which names it in a Keras 3 weights file)."""
    if isinstance(model, KerasGraph):
        classes = list(model.classes) or [type(m).__name__ for m in model.layers]
        return list(model.names), list(model.layers), classes, False
    if isinstance(model, rnnjax.Sequential):
        names: list = []
        counts: dict = {}
        for layer in model.layers:
            base = weights.snake_case(type(layer).__name__)
            auto = layer.name is None or layer.name.startswith(("layers_", type(layer).__name__ + "_"))
            n = counts.get(base, 0)
            counts[base] = n + 1
            names.append((base if n == 0 else f"{base}_{n}") if auto else layer.name)
        return names, list(model.layers), [type(m).__name__ for m in model.layers], False
    return ["__layer__"], [model], [type(model).__name__], True


def _read_weights(root, names, modules, classes, path):
    """``(file layers, whether nested models are grouped)`` (Keras 2 HDF5: one group each)."""
    formats.check_tree(root)
    if formats.has_list(root, "layer_names"):
        return weights.read_k2(root, path), True
    if "model_weights" in root and formats.has_list(root["model_weights"], "layer_names"):
        return weights.read_k2(root["model_weights"], path), True
    if "layers" in root or "_layer_checkpoint_dependencies" in root:
        return weights.read_k3(root, list(zip(classes, names, modules)), path), False
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
    names, modules, classes, wrapped = _model_layers(model, variables)
    variables = _to_dict(variables)
    if wrapped:
        variables = {col: {"__layer__": tree} for col, tree in variables.items()}
    kind = formats.sniff(path)
    if kind == "zip":
        root = formats.open_hdf5(formats.read_zip(path)["weights"], path)
    else:
        root = formats.open_hdf5(path, path)
    with root:
        file_layers, grouped = _read_weights(root, names, modules, classes, path)
    out = weights.assign(file_layers, weights.model_slots(names, modules, variables, grouped), variables, path)
    out = {col: jax.tree_util.tree_map(jnp.asarray, tree) for col, tree in out.items()}
    return {col: tree["__layer__"] for col, tree in out.items()} if wrapped else out
