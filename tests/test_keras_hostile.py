"""Hostile Keras files: each is refused quickly with an error naming the layer or the problem, and
nothing from the file runs (sentinels: a file the embedded code would create, and traps on
marshal/pickle/importlib/eval/exec that record any call)."""

import ast
import base64
import builtins
import importlib
import io
import json
import marshal
import pathlib
import pickle
import re
import sys
import zipfile

import flax.linen as nn
import h5py
import numpy as np
import pytest

import rnnjax
from rnnjax.keras import KerasImportError
from tests import keras2_files as k2
from tests.keras2_files import layer, sequential

KERAS_DIR = pathlib.Path(rnnjax.__file__).parent / "keras"
LSTM_WEIGHTS = [
    (
        "lstm",
        [
            ("lstm/lstm_cell/kernel:0", np.ones((2, 8), np.float32)),
            ("lstm/lstm_cell/recurrent_kernel:0", np.ones((2, 8), np.float32)),
            ("lstm/lstm_cell/bias:0", np.ones((8,), np.float32)),
        ],
    )
]


def _lstm(**extra):
    return layer("LSTM", name="lstm", units=2, batch_input_shape=[None, 3, 2], **extra)


def install_traps(monkeypatch):
    """Records (and fails) any call that would run or import code from data; Python's own import
    system keeps the real functions."""
    calls = []

    def trap(name, real):
        def fail(*args, **kwargs):
            if "importlib" in sys._getframe(1).f_code.co_filename:  # Python's own import system
                return real(*args, **kwargs)
            calls.append(name)
            raise AssertionError(f"{name} was called")

        return fail

    for mod, attr in (
        (marshal, "loads"),
        (pickle, "loads"),
        (pickle, "load"),
        (importlib, "import_module"),
        (builtins, "eval"),
        (builtins, "exec"),
    ):
        monkeypatch.setattr(mod, attr, trap(f"{mod.__name__}.{attr}", getattr(mod, attr)))
    return calls


@pytest.fixture
def traps(monkeypatch):
    return install_traps(monkeypatch)


def refused(path, *patterns, inspect=True):
    """Asserts load_keras refuses ``path``, naming every pattern; inspect_keras reports a problem
    without raising (``inspect``: for what it can see without building). A bomb that were read
    before being refused would exhaust the test's memory, so it fails without a clock."""
    with pytest.raises(KerasImportError) as err:
        rnnjax.load_keras(path)
    message = str(err.value)
    for pattern in patterns:
        assert pattern in message, message
    if inspect:
        assert rnnjax.inspect_keras(path)["problems"]
    return message


def _sentinel_code(sentinel):
    """Marshalled bytecode (Keras 2's Lambda format) that creates ``sentinel`` when run."""

    def evil(x):
        open(str(sentinel), "w").close()
        return x

    return base64.b64encode(marshal.dumps(evil.__code__)).decode("ascii")


def test_keras2_lambda_bytecode_never_runs(tmp_path, traps):
    sentinel = tmp_path / "ran"
    config = sequential(
        _lstm(return_sequences=True),
        layer(
            "Lambda",
            name="evil",
            function=[_sentinel_code(sentinel), None, None],
            function_type="lambda",
            module="__main__",
            output_shape=None,
            arguments={},
        ),
    )
    k2.write_model(tmp_path / "m.h5", config, LSTM_WEIGHTS + [("evil", [])])
    refused(tmp_path / "m.h5", "'evil' (Lambda)", "never runs code")
    assert not sentinel.exists() and traps == []


def test_keras3_lambda_archive_never_runs(tmp_path, monkeypatch):
    """A .keras file made by Keras 3 with a Lambda whose code creates a file."""
    import keras

    sentinel = tmp_path / "ran"
    inp = keras.Input((3,))
    target = str(sentinel)
    out = keras.layers.Lambda(lambda t: (open(target, "w").close(), t)[1], name="evil")(inp)
    keras.Model(inp, keras.layers.Dense(1)(out)).save(tmp_path / "m.keras")
    assert sentinel.exists()  # the code does create the file when it runs
    sentinel.unlink()
    calls = install_traps(monkeypatch)
    refused(tmp_path / "m.keras", "'evil' (Lambda)")
    assert not sentinel.exists() and calls == []


def _archive(path, config, members=None):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        z.writestr("config.json", config if isinstance(config, str) else json.dumps(config))
        buf = io.BytesIO()
        with h5py.File(buf, "w") as f:
            f.create_group("layers")
        z.writestr("model.weights.h5", buf.getvalue())
        for name, data in (members or {}).items():
            z.writestr(name, data)


def _k3_layer(cls, module="keras.layers", registered=None, **config):
    return {
        "module": module,
        "class_name": cls,
        "config": {"name": cls.lower(), **config},
        "registered_name": registered,
    }


def _k3_sequential(*layers):
    return {
        "module": "keras",
        "class_name": "Sequential",
        "config": {"name": "s", "layers": [_k3_layer("InputLayer", batch_shape=[None, 3]), *layers]},
        "registered_name": None,
    }


@pytest.mark.parametrize(
    "bad, patterns",
    [
        (
            _k3_layer(
                "Lambda",
                function={
                    "module": "keras.models",
                    "class_name": "function",
                    "config": "load_model",
                    "registered_name": "function",
                },
                arguments={"filepath": "/tmp/x"},
            ),
            ["(Lambda)", "refused"],
        ),
        (
            _k3_layer(
                "Dense",
                units=2,
                activation={
                    "module": "keras.models",
                    "class_name": "function",
                    "config": "load_model",
                    "registered_name": "function",
                },
            ),
            ["(Dense): function refused"],
        ),
        (
            _k3_layer("MyLayer", module="mypkg.layers", registered="mypkg>MyLayer"),
            ["custom class 'mypkg>MyLayer'", "refused"],
        ),
        (_k3_layer("Dense", registered="mypkg>Dense", units=2), ["custom class 'mypkg>Dense'"]),
        (_k3_layer("TFSMLayer", filepath="/etc"), ["(TFSMLayer)", "SavedModel"]),
    ],
)
def test_code_and_custom_objects_refused(tmp_path, traps, bad, patterns):
    _archive(tmp_path / "m.keras", _k3_sequential(bad))
    refused(tmp_path / "m.keras", *patterns)
    assert traps == []


def test_unsupported_layers_listed_at_once(tmp_path):
    config = _k3_sequential(
        _k3_layer("Conv2DTranspose", filters=2),
        _k3_layer("MultiHeadAttention", num_heads=2),
        _k3_layer("Cropping2D", cropping=[1, 1]),
    )
    _archive(tmp_path / "m.keras", config)
    refused(tmp_path / "m.keras", "'Conv2DTranspose'", "'MultiHeadAttention'", "'Cropping2D'")


def test_code_refused_inside_nested_models(tmp_path, traps):
    """A Lambda (its bytecode would create a file) two models deep, a TFOpLambda in a nested
    Keras 2 model: refused, naming the nesting; a Lambda is supplied only by its layer name."""
    sentinel = tmp_path / "ran"
    evil = _k3_layer(
        "Lambda",
        function={
            "class_name": "__lambda__",
            "config": {"code": _sentinel_code(sentinel), "defaults": None, "closure": None},
        },
        name="evil",
    )
    inner = {
        **_k3_sequential(),
        "config": {"name": "inner", "layers": [_k3_layer("InputLayer", batch_shape=[None, 3]), _k3_sequential(evil)]},
    }
    _archive(tmp_path / "n.keras", _k3_sequential(inner))
    message = refused(tmp_path / "n.keras", "in nested model 'inner': in nested model 's': layer 'evil' (Lambda)")
    assert "never runs code" in message
    with pytest.raises(KerasImportError, match="custom_objects key 'Lambda' matches no layer"):
        rnnjax.load_keras(tmp_path / "n.keras", custom_objects={"Lambda": lambda c: None})
    op = layer("TFOpLambda", name="tf.math.add", function="math.add")
    nested = {
        "class_name": "Sequential",
        "config": {"name": "inner", "layers": [k2.input_layer("inner_in", [3, 2]), op]},
    }
    config = k2.functional([(k2.input_layer("x", [3, 2]), []), (nested, [k2.inbound("x")])], ["x"], [("inner", 0, 0)])
    k2.write_model(tmp_path / "n.h5", config, [("x", []), ("inner", [])])
    refused(tmp_path / "n.h5", "in nested model 'inner': layer 'tf.math.add' (TFOpLambda)")
    assert not sentinel.exists() and traps == []


def _tensor(name, node=0, index=0):
    return {
        "class_name": "__keras_tensor__",
        "config": {"shape": [None, 3], "dtype": "float32", "keras_history": [name, node, index]},
    }


def _k3_functional(layers, inputs, outputs):
    """``layers``: ``[(layer dict, [(args, kwargs) per inbound node])]``."""
    return {
        "module": "keras",
        "class_name": "Functional",
        "registered_name": None,
        "config": {
            "name": "f",
            "layers": [
                {
                    **entry,
                    "name": entry["config"]["name"],
                    "inbound_nodes": [{"args": list(args), "kwargs": kwargs} for args, kwargs in nodes],
                }
                for entry, nodes in layers
            ],
            "input_layers": inputs,
            "output_layers": outputs,
        },
    }


def _dense(name, *tensors):
    return (_k3_layer("Dense", units=3, name=name), [((t,), {}) for t in tensors])


def test_graph_structure_refused_with_every_problem(tmp_path):
    """Cycles, reads of a missing layer, call or input, outputs naming a missing tensor, an
    InputLayer the model does not declare: each named, all at once."""
    x = (_k3_layer("InputLayer", batch_shape=[None, 3], name="x"), [])
    stray = (_k3_layer("InputLayer", batch_shape=[None, 3], name="stray"), [])
    cycle = [x, _dense("a", _tensor("b")), _dense("b", _tensor("a")), _dense("c", _tensor("x"))]
    _archive(tmp_path / "cycle.keras", _k3_functional(cycle, ["x", 0, 0], ["c", 0, 0]))
    refused(tmp_path / "cycle.keras", "the graph has a cycle: layer 'a' (Dense) call 0; layer 'b' (Dense) call 0")
    broken = [x, stray, _dense("a", _tensor("ghost")), _dense("b", _tensor("a", 3)), _dense("c", _tensor("stray"))]
    _archive(tmp_path / "broken.keras", _k3_functional(broken, [["x", 0, 0], ["nowhere", 0, 0]], [["missing", 0, 0]]))
    message = refused(
        tmp_path / "broken.keras",
        "reads tensor ['ghost', 0, 0] of no layer",
        "reads call 3 of 'a', which is called 1 times",
        "reads InputLayer 'stray', which is not an input",
        "`input_layers` names 'nowhere'",
        "`output_layers`: reads tensor ['missing', 0, 0]",
    )
    assert message.count("\n  - ") == 5
    _archive(tmp_path / "index.keras", _k3_functional([x, _dense("a", _tensor("x"))], ["x", 0, 0], ["a", 0, 4]))
    refused(
        tmp_path / "index.keras",
        "the model's outputs: reads output 4 of a call that has only 1 output(s)",
        inspect=False,
    )


def test_an_input_no_layer_reads_is_taken_and_ignored(tmp_path):
    """As in Keras 3 (which accepts such a model): the model takes the input and ignores it."""
    k, b = np.ones((3, 3), np.float32), np.arange(3, dtype=np.float32)
    config = k2.functional(
        [
            (k2.input_layer("x", [3]), []),
            (k2.input_layer("unused", [5]), []),
            (layer("Dense", name="d", units=3), [k2.inbound("x")]),
        ],
        ["x", "unused"],
        [("d", 0, 0)],
    )
    k2.write_model(tmp_path / "u.h5", config, [("x", []), ("unused", []), ("d", [("d/kernel:0", k), ("d/bias:0", b)])])
    model, variables = rnnjax.load_keras(tmp_path / "u.h5")
    x = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(model.apply(variables, x, np.zeros((2, 5), np.float32)), x @ k + b, atol=1e-6)


def test_ten_thousand_node_graphs(tmp_path):
    """10,000 calls of one shared layer in a chain that ends reading a missing tensor, the same in
    a cycle, and 10,000 nested models: refused whole, each problem named. The graph is read
    without recursion (Python's limit is 1,000 frames) and each step is linear in its size."""
    n = 10_000
    x = (_k3_layer("InputLayer", batch_shape=[None, 3], name="x"), [])
    chain = _dense("d", *[_tensor("d", i - 1) if i else _tensor("x") for i in range(n)])
    _archive(
        tmp_path / "chain.keras",
        _k3_functional([x, chain, _dense("last", _tensor("ghost"))], ["x", 0, 0], ["last", 0, 0]),
    )
    refused(tmp_path / "chain.keras", "layer 'last' (Dense) call 0: reads tensor ['ghost', 0, 0] of no layer")
    ring = _dense("d", *[_tensor("d", (i - 1) % n) for i in range(n)])
    _archive(tmp_path / "ring.keras", _k3_functional([x, ring], ["x", 0, 0], ["d", n - 1, 0]))
    refused(
        tmp_path / "ring.keras",
        "the graph has a cycle: layer 'd' (Dense) call 0; layer 'd' (Dense) call 1",
        f"and {n - 10} more",
        inspect=False,
    )
    deep = json.dumps(_k3_layer("Dense", units=3, name="core"))
    head, tail = json.dumps(_k3_sequential({"nested": 1})).split('{"nested": 1}')
    _archive(tmp_path / "deep.keras", head * n + deep + tail * n)
    refused(tmp_path / "deep.keras", "config.json")  # deeper than the JSON reader goes


def test_models_nested_too_deep(tmp_path):
    deep = _k3_layer("Dense", units=3, name="core")
    for _ in range(40):
        deep = _k3_sequential(deep)
    _archive(tmp_path / "deep.keras", deep)
    refused(tmp_path / "deep.keras", "models nested more than 32 deep are not supported")


def test_several_outputs_only_in_graphs_and_malformed_nodes(tmp_path):
    k2.write_model(tmp_path / "s.h5", sequential(_lstm(return_state=True)), LSTM_WEIGHTS)
    refused(
        tmp_path / "s.h5",
        "'lstm' (LSTM): return_state=True or merge_mode=None (several outputs) is not supported in a Sequential model",
    )
    config = _k3_functional(
        [(_k3_layer("InputLayer", batch_shape=[None, 3], name="x"), []), _dense("d", _tensor("x"))],
        ["x", 0, 0],
        ["d", 0, 0],
    )
    config["config"]["layers"][1]["inbound_nodes"] = [[{"args": 5}]]
    _archive(tmp_path / "malformed.keras", config)
    refused(tmp_path / "malformed.keras", "an inbound entry must be [layer, node, tensor, kwargs]")
    config["config"]["layers"][1]["inbound_nodes"] = [{"args": [_tensor("x")], "kwargs": {"scale": [1, 2]}}]
    _archive(tmp_path / "kwargs.keras", config)
    refused(tmp_path / "kwargs.keras", "call argument 'scale' ([1, 2]) is not supported")
    _archive(tmp_path / "units.keras", _k3_sequential(_k3_layer("Dense", units="many")))
    refused(tmp_path / "units.keras", "'dense' (Dense): invalid config")


class Odd(nn.Module):
    def __call__(self, x):
        return x * 2.0


def _custom_archive(path, config):
    layers = [
        (_k3_layer("InputLayer", batch_shape=[None, 3], name="x"), []),
        ({"module": None, "class_name": "Odd", "config": config, "registered_name": "Odd"}, [((_tensor("x"),), {})]),
    ]
    _archive(path, _k3_functional(layers, ["x", 0, 0], ["odd", 0, 0]))


def test_custom_object_factories_get_json_data_only(tmp_path, traps):
    """Whatever a custom layer's config holds (serialized code, inline arrays, tuples, object
    ids, modules), its factory gets plain JSON values, a copy, and nothing of it runs."""
    sentinel = tmp_path / "ran"
    config = {
        "name": "odd",
        "units": 3,
        "code": {"class_name": "__lambda__", "config": {"code": _sentinel_code(sentinel)}},
        "array": {"class_name": "__numpy__", "config": {"value": [1, 2]}},
        "pair": {"class_name": "__tuple__", "items": [1, 2]},
        "nan": float("nan"),
        "deep": [[[[{"a": None}]]]],
        "dtype": {"module": "evil", "class_name": "DTypePolicy", "config": {"name": "float32"}, "shared_object_id": 1},
    }
    _custom_archive(tmp_path / "c.keras", config)
    received = []

    def factory(cfg):
        received.append(cfg)
        cfg["units"] = "changed"
        return Odd()

    model, variables = rnnjax.load_keras(tmp_path / "c.keras", custom_objects={"Odd": factory})
    assert len(received) == 1
    stack = [received[0]]
    while stack:
        item = stack.pop()
        assert type(item) in (dict, list, str, int, float, bool, type(None)), type(item)
        stack.extend(item.values() if type(item) is dict else item if type(item) is list else [])
    assert received[0]["pair"] == [1, 2] and received[0]["code"]["config"]["code"] == config["code"]["config"]["code"]
    np.testing.assert_allclose(model.apply(variables, np.ones((1, 3), np.float32)), 2.0)
    assert not sentinel.exists() and traps == []


def test_json_check_refuses_everything_else():
    from rnnjax.keras.custom import json_data

    data = {"a": [1, 2.5, None, True, "s", {"b": []}]}
    assert json_data(data, "x") == data and json_data(data, "x") is not data
    for bad, where in (
        ((1, 2), "x"),
        (b"raw", "x"),
        ({"a": {1, 2}}, "x['a']"),
        ({"a": [np.float32(1)]}, "x['a'][0]"),
        ({3: 1}, "x"),
        ({"a": object()}, "x['a']"),
    ):
        with pytest.raises(KerasImportError, match=re.escape(where) + ": a"):
            json_data(bad, "x")


def test_custom_objects_errors(tmp_path):
    _custom_archive(tmp_path / "c.keras", {"name": "odd"})
    refused(
        tmp_path / "c.keras",
        "layer 'odd': class 'Odd' refused",
        "config keys: ['name']",
        "custom_objects={'Odd': factory}",
    )
    for mapping, pattern in (
        ({"Odd": lambda c: 3}, "the factory returned a int, expected a Flax linen module"),
        ({"Odd": lambda c: 1 / 0}, "the factory raised ZeroDivisionError"),
        ({"Odd": lambda c: nn.Dense(3), "Even": print}, "custom_objects key 'Even' matches no"),
    ):
        with pytest.raises(KerasImportError, match=pattern):
            rnnjax.load_keras(tmp_path / "c.keras", custom_objects=mapping)
    with pytest.raises(TypeError, match="`custom_objects`: expected a dict"):
        rnnjax.load_keras(tmp_path / "c.keras", custom_objects=[("Odd", print)])


def test_cli_reports_problems_with_exit_code_1(tmp_path, capsys):
    from rnnjax.keras.__main__ import main

    k2.write_model(tmp_path / "t.h5", sequential(_lstm(time_major=True)), LSTM_WEIGHTS)
    assert main(["inspect", str(tmp_path / "t.h5")]) == 1
    out = capsys.readouterr().out
    assert "lstm (LSTM)" in out and "time_major" in out and "(2, 8)" in out


def test_time_major_and_unknown_keys_and_quantized(tmp_path):
    k2.write_model(tmp_path / "t.h5", sequential(_lstm(time_major=True)), LSTM_WEIGHTS)
    refused(tmp_path / "t.h5", "'lstm' (LSTM)", "time_major")
    k2.write_model(tmp_path / "u.h5", sequential(_lstm(weird_option=3)), LSTM_WEIGHTS)
    refused(tmp_path / "u.h5", "weird_option")
    policy = {
        "module": "keras",
        "class_name": "DTypePolicy",
        "config": {"name": "int8_from_float32"},
        "registered_name": None,
    }
    _archive(tmp_path / "q.keras", _k3_sequential(_k3_layer("Dense", units=2, dtype=policy)))
    refused(tmp_path / "q.keras", "int8_from_float32")


def _weights_tree(tmp_path, edit):
    """A valid one-LSTM file, then ``edit(h5py.File)``."""
    k2.write_model(tmp_path / "m.h5", sequential(_lstm()), LSTM_WEIGHTS)
    with h5py.File(tmp_path / "m.h5", "a") as f:
        edit(f)
    return tmp_path / "m.h5"


def _replace(f, name, **kwargs):
    del f[name]
    return f.create_dataset(name, **kwargs)


KERNEL = "model_weights/lstm/lstm/lstm_cell/kernel:0"


def test_hdf5_links_and_foreign_storage_refused(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["k"] = np.ones((2, 8), np.float32)
    (tmp_path / "raw.bin").write_bytes(np.ones((2, 8), np.float32).tobytes())

    def external_link(f):
        del f[KERNEL]
        f[KERNEL] = h5py.ExternalLink(str(other), "/k")

    refused(_weights_tree(tmp_path, external_link), "external link")

    def soft_loop(f):
        f["model_weights/lstm/loop"] = h5py.SoftLink("/model_weights/lstm/loop")

    refused(_weights_tree(tmp_path, soft_loop), "soft link")

    def hard_cycle(f):
        f["model_weights/lstm/cycle"] = f["model_weights"]

    refused(_weights_tree(tmp_path, hard_cycle), "link cycle")

    def external_storage(f):
        _replace(f, KERNEL, shape=(2, 8), dtype="f4", external=[(str(tmp_path / "raw.bin"), 0, 64)])

    refused(_weights_tree(tmp_path, external_storage), "external files")

    def virtual(f):
        layout = h5py.VirtualLayout(shape=(2, 8), dtype="f4")
        layout[:] = h5py.VirtualSource(str(other), "k", shape=(2, 8))
        del f[KERNEL]
        f.create_virtual_dataset(KERNEL, layout)

    refused(_weights_tree(tmp_path, virtual), "virtual dataset")


def test_bad_weights_refused(tmp_path):
    refused(_weights_tree(tmp_path, lambda f: _replace(f, KERNEL, data=np.ones((2, 8), np.int32))), "kernel:0", "int32")
    refused(
        _weights_tree(tmp_path, lambda f: _replace(f, KERNEL, data=np.ones((3, 8), np.float32))),
        "'lstm'",
        "(3, 8)",
        "(2, 8)",
        inspect=False,
    )
    refused(
        _weights_tree(
            tmp_path, lambda f: _replace(f, KERNEL, shape=(1 << 28,), dtype="f4", chunks=(1 << 20,), compression="gzip")
        ),
        "shape bomb",
    )


def test_truncated_and_non_model_files(tmp_path):
    path = _weights_tree(tmp_path, lambda f: None)
    data = path.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    refused(tmp_path / "cut.h5", "HDF5")
    _archive(tmp_path / "a.keras", _k3_sequential(_k3_layer("Dense", units=2)))
    data = (tmp_path / "a.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    refused(tmp_path / "cut.keras", "zip")
    (tmp_path / "notes.txt").write_text("just text")
    refused(tmp_path / "notes.txt", "not a Keras model file")
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["x"] = np.ones(3)
    refused(tmp_path / "plain.h5", "not a Keras model")
    with h5py.File(tmp_path / "old.h5", "w") as f:
        f.attrs["nb_layers"] = 1
    refused(tmp_path / "old.h5", "Keras 0.x")
    with zipfile.ZipFile(tmp_path / "z.keras", "w") as z:
        z.writestr("readme.txt", "x")
    refused(tmp_path / "z.keras", "config.json")
    _archive(tmp_path / "deep.keras", None)
    with zipfile.ZipFile(tmp_path / "deep.keras", "a") as z:
        z.writestr("config.json", "[" * 200000 + "]" * 200000)
    refused(tmp_path / "deep.keras", "config.json")


def test_zip_bomb_refused_before_inflating(tmp_path):
    with zipfile.ZipFile(tmp_path / "bomb.keras", "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("metadata.json", "{}")
        z.writestr("config.json", json.dumps(_k3_sequential(_k3_layer("Dense", units=2))))
        z.writestr("model.weights.h5", b"\0" * (64 << 20))
    refused(tmp_path / "bomb.keras", "model.weights.h5", "zip bomb")


def test_loader_source_never_runs_code():
    """No pickle/marshal/importlib/shelve import and no eval/exec/compile/__import__ call in
    rnnjax.keras."""
    banned_modules = {"pickle", "marshal", "importlib", "shelve", "dill", "cloudpickle", "runpy"}
    banned_calls = {"eval", "exec", "compile", "__import__"}
    for source in KERAS_DIR.glob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & banned_modules, source
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in banned_modules, source
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in banned_calls, (source, node.func.id)
