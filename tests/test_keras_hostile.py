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
import sys
import time
import zipfile

import h5py
import numpy as np
import pytest

import rnnjax
from rnnjax.keras import KerasImportError
from tests import keras2_files as k2
from tests.keras2_files import layer, sequential

KERAS_DIR = pathlib.Path(rnnjax.__file__).parent / "keras"
LSTM_WEIGHTS = [("lstm", [("lstm/lstm_cell/kernel:0", np.ones((2, 8), np.float32)),
                          ("lstm/lstm_cell/recurrent_kernel:0", np.ones((2, 8), np.float32)),
                          ("lstm/lstm_cell/bias:0", np.ones((8,), np.float32))])]


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
    for mod, attr in ((marshal, "loads"), (pickle, "loads"), (pickle, "load"), (importlib, "import_module"),
                      (builtins, "eval"), (builtins, "exec")):
        monkeypatch.setattr(mod, attr, trap(f"{mod.__name__}.{attr}", getattr(mod, attr)))
    return calls


@pytest.fixture
def traps(monkeypatch):
    return install_traps(monkeypatch)


def refused(path, *patterns, inspect=True):
    """Asserts load_keras refuses ``path`` within seconds, naming every pattern; inspect_keras
    reports a problem without raising (``inspect``: for what it can see without building)."""
    start = time.perf_counter()
    with pytest.raises(KerasImportError) as err:
        rnnjax.load_keras(path)
    assert time.perf_counter() - start < 5.0
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
    config = sequential(_lstm(return_sequences=True),
                        layer("Lambda", name="evil", function=[_sentinel_code(sentinel), None, None],
                              function_type="lambda", module="__main__", output_shape=None, arguments={}))
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
        z.writestr("config.json", json.dumps(config))
        buf = io.BytesIO()
        with h5py.File(buf, "w") as f:
            f.create_group("layers")
        z.writestr("model.weights.h5", buf.getvalue())
        for name, data in (members or {}).items():
            z.writestr(name, data)


def _k3_layer(cls, module="keras.layers", registered=None, **config):
    return {"module": module, "class_name": cls, "config": {"name": cls.lower(), **config},
            "registered_name": registered}


def _k3_sequential(*layers):
    return {"module": "keras", "class_name": "Sequential", "config": {"name": "s", "layers": [
        _k3_layer("InputLayer", batch_shape=[None, 3]), *layers]}, "registered_name": None}


@pytest.mark.parametrize("bad, patterns", [
    (_k3_layer("Lambda", function={"module": "keras.models", "class_name": "function", "config": "load_model",
                                   "registered_name": "function"}, arguments={"filepath": "/tmp/x"}),
     ["(Lambda)", "refused"]),
    (_k3_layer("Dense", units=2, activation={"module": "keras.models", "class_name": "function",
                                             "config": "load_model", "registered_name": "function"}),
     ["(Dense): function refused"]),
    (_k3_layer("MyLayer", module="mypkg.layers", registered="mypkg>MyLayer"), ["mypkg.layers", "refused"]),
    (_k3_layer("Dense", registered="mypkg>Dense", units=2), ["custom class 'mypkg>Dense'"]),
    (_k3_layer("TFSMLayer", filepath="/etc"), ["(TFSMLayer)", "SavedModel"]),
])
def test_code_and_custom_objects_refused(tmp_path, traps, bad, patterns):
    _archive(tmp_path / "m.keras", _k3_sequential(bad))
    refused(tmp_path / "m.keras", *patterns)
    assert traps == []


def test_unsupported_layers_listed_at_once_and_nested_models(tmp_path):
    config = _k3_sequential(_k3_layer("Conv2DTranspose", filters=2), _k3_layer("MultiHeadAttention", num_heads=2),
                            _k3_layer("Cropping2D", cropping=[1, 1]))
    _archive(tmp_path / "m.keras", config)
    refused(tmp_path / "m.keras", "'Conv2DTranspose'", "'MultiHeadAttention'", "'Cropping2D'")
    _archive(tmp_path / "n.keras", _k3_sequential(_k3_sequential(_k3_layer("Dense", units=2))))
    refused(tmp_path / "n.keras", "nested models")


def test_graph_shapes_rnnjax_does_not_build(tmp_path):
    """Two inputs, a second output of a layer (return_state), a shared layer: named, refused."""
    def tensor(name, index=0):
        return {"class_name": "__keras_tensor__", "config": {"shape": [None, 3], "dtype": "float32",
                                                              "keras_history": [name, 0, index]}}

    def node(*args):
        return [{"args": list(args), "kwargs": {}}]
    layers = [{**_k3_layer("InputLayer", batch_shape=[None, 4, 3]), "name": "a", "inbound_nodes": []},
              {**_k3_layer("LSTM", units=2, return_state=True), "name": "lstm", "inbound_nodes": node(tensor("a"))},
              {**_k3_layer("Dense", units=2), "name": "dense",
               "inbound_nodes": node(tensor("lstm", 1)) + node(tensor("lstm", 2))}]
    config = {"module": "keras", "class_name": "Functional", "registered_name": None, "config": {
        "name": "f", "layers": layers, "input_layers": [["a", 0, 0]], "output_layers": [["dense", 0, 0]]}}
    _archive(tmp_path / "shared.keras", config)
    refused(tmp_path / "shared.keras", "'dense' (Dense): called 2 times")
    layers[2]["inbound_nodes"] = node(tensor("lstm", 1))
    _archive(tmp_path / "state.keras", config)
    refused(tmp_path / "state.keras", "'dense' (Dense): takes a second output")
    k2.write_model(tmp_path / "s.h5", sequential(_lstm(return_state=True)), LSTM_WEIGHTS)
    refused(tmp_path / "s.h5", "'lstm' (LSTM): return_state=True")
    config["config"]["input_layers"] = [["a", 0, 0], ["b", 0, 0]]
    _archive(tmp_path / "two.keras", config)
    refused(tmp_path / "two.keras", "one input and one output")
    config["config"]["input_layers"] = [["a", 0, 0]]
    layers[2]["inbound_nodes"] = [[{"args": 5}]]
    _archive(tmp_path / "malformed.keras", config)
    refused(tmp_path / "malformed.keras", "malformed model config")
    _archive(tmp_path / "units.keras", _k3_sequential(_k3_layer("Dense", units="many")))
    refused(tmp_path / "units.keras", "'dense' (Dense): invalid config")


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
    policy = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "int8_from_float32"},
              "registered_name": None}
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
    refused(_weights_tree(tmp_path, lambda f: _replace(f, KERNEL, data=np.ones((2, 8), np.int32))),
            "kernel:0", "int32")
    refused(_weights_tree(tmp_path, lambda f: _replace(f, KERNEL, data=np.ones((3, 8), np.float32))),
            "'lstm'", "(3, 8)", "(2, 8)", inspect=False)
    refused(_weights_tree(tmp_path, lambda f: _replace(f, KERNEL, shape=(1 << 28,), dtype="f4",
                                                       chunks=(1 << 20,), compression="gzip")),
            "shape bomb")


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
