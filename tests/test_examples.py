"""Smoke tests of the example programs (``examples/*.py --smoke``), so the examples never rot.

Each example's ``main(argv)`` is imported and run in its smoke mode with the output folder under
``tmp_path``; the test checks that it wrote a PNG, returned a finite metric, and passed the
example's own correctness check where it has one (masked padding ignored, checkpoint round trip).
"""

from __future__ import annotations

import importlib
import math
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load(name):
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


def run_smoke(name, tmp_path, *extra):
    result = load(name).main(["--smoke", "--out", str(tmp_path), *extra])
    png = pathlib.Path(result["png"])
    assert png.parent == tmp_path and png.exists()
    assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 5000
    return result


# Loads a serialised jax.export and calls it on the inputs of an .npz, in a process where
# importing rnnjax fails: the exported file alone must be enough.
SERVE = """
import sys
sys.modules["rnnjax"] = None
import numpy as np
from jax import export
served = export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
data = np.load(sys.argv[2])
outs = {k: np.asarray(served.call(data["x" + k], data["m" + k])) for k in ("0", "1")}
assert not any(name.startswith("rnnjax") and sys.modules[name] for name in sys.modules)
np.savez(sys.argv[3], **outs)
"""


def test_classify_sequences(tmp_path):
    path = tmp_path / "classifier.jaxexport"
    result = run_smoke("classify_sequences", tmp_path, "--export", str(path))
    assert 0.0 <= result["test_accuracy"] <= 1.0
    # 8 extra steps of noise behind every sequence, masked out, change no prediction.
    assert result["padding_ignored"] is True
    # The exported classifier, called in a fresh process without rnnjax on two batch sizes and
    # lengths the model never saw, gives the in-process logits.
    rng = np.random.default_rng(0)
    inputs = {}
    for k, (b, t) in enumerate([(3, 5), (7, 11)]):
        inputs[f"x{k}"] = rng.random((b, t, 8), dtype=np.float32)
        inputs[f"m{k}"] = np.arange(t)[None, :] < rng.integers(1, t + 1, size=b)[:, None]
    np.savez(tmp_path / "inputs.npz", **inputs)
    subprocess.run(
        [sys.executable, "-c", SERVE, str(path), str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")],
        check=True,
        cwd=tmp_path,
        timeout=300,
    )
    served = np.load(tmp_path / "out.npz")
    for k in ("0", "1"):
        expected = np.asarray(result["logits"](inputs["x" + k], inputs["m" + k]))
        assert served[k].shape == expected.shape == (len(inputs["x" + k]), 10)
        np.testing.assert_allclose(served[k], expected, rtol=1e-5, atol=1e-6)


def test_classify_sequences_lengths_and_mask():
    mod = load("classify_sequences")
    x, lengths, y = mod.digit_sequences()
    assert x.shape == (1797, 8, 8) and lengths.min() >= 1 and lengths.max() == 8
    assert len(np.unique(lengths)) > 3  # really variable length
    for i in range(0, 1797, 97):  # each sequence is exactly the inked columns of its image, in order
        image = mod.load_digits().images[i] / 16.0
        cols = np.flatnonzero(image.max(axis=0) > 0)
        np.testing.assert_array_equal(x[i, : lengths[i]], image[:, cols[0] : cols[-1] + 1].T)
        assert not x[i, lengths[i] :].any()
    np.testing.assert_array_equal(mod.length_mask([1, 3], 4), [[1, 0, 0, 0], [1, 1, 1, 0]])


def test_packed_sequences(tmp_path):
    """Padded and packed training of the same model on the same batches: the same function (loss
    curves equal to float rounding, the same test accuracy), both throughputs measured."""
    result = run_smoke("packed_sequences", tmp_path)
    assert result["loss_gap"] < 1e-4
    assert len(result["losses_padded"]) == len(result["losses_packed"]) >= 4
    assert result["test_accuracy_padded"] == result["test_accuracy_packed"]
    for form in ("padded", "packed"):
        assert result[f"steps_per_s_{form}"] > 0 and result[f"tokens_per_s_{form}"] > 0


def test_char_lm(tmp_path):
    result = run_smoke("char_lm", tmp_path)
    assert math.isfinite(result["val_bits_per_char"]) and result["val_bits_per_char"] > 0
    assert result["restored_identical"] is True
    assert (tmp_path / "char_lm_params.msgpack").stat().st_size > 1000
    assert (tmp_path / "char_lm_sample.txt").read_text() == result["sample"]
    assert result["sample"].startswith("def ")


def test_char_lm_stream_batches_continue():
    mod = load("char_lm")
    ids = np.arange(103)
    x, y = mod.stream_batches(ids, batch_size=4, seq_len=5)  # streams of 25: 5 windows each
    assert x.shape == y.shape == (5, 4, 5)
    np.testing.assert_array_equal(y, x + 1)  # targets: the next character
    for k in range(4):  # row i of window k+1 follows row i of window k
        np.testing.assert_array_equal(x[k + 1, :, 0], x[k, :, -1] + 1)
    np.testing.assert_array_equal(x[0, :, 0], [0, 25, 50, 75])
    assert mod.decode(mod.encode("def f():\n\tpass é")) == "def f():\n\tpass ?"


def test_forecast(tmp_path):
    from statsmodels.datasets import sunspots  # a test dependency: forecast.py reads its bundled data

    result = run_smoke("forecast", tmp_path)
    assert math.isfinite(result["test_mae"]) and result["test_mae"] > 0
    spots = sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()
    # the "same as last year" baseline over the 60 held-out years, computed here from the raw data
    assert result["naive_mae"] == pytest.approx(np.abs(np.diff(spots)[-60:]).mean(), rel=1e-5)


def test_forecast_nnx(tmp_path):
    """The same example with the rnnjax.nnx model and nnx.Optimizer: it trains (loss down), forecasts."""
    result = run_smoke("forecast", tmp_path, "--api", "nnx")
    assert result["png"].name == "forecast_nnx.png"  # the linen run's forecast.png is kept
    assert math.isfinite(result["test_mae"]) and result["test_mae"] > 0
    assert len(result["losses"]) == 20 and result["losses"][-1] < 0.9 * result["losses"][0]


def test_next_frame(tmp_path):
    result = run_smoke("next_frame", tmp_path)
    assert math.isfinite(result["test_mse"]) and 0 <= result["test_mse"] <= 1
    assert 0 < result["copy_last_mse"] < 1


def test_data_parallel(tmp_path):
    import jax

    assert len(jax.devices()) == 8  # conftest.py forces 8 host devices
    result = run_smoke("data_parallel", tmp_path, "--devices", "8")
    assert result["devices"] == 8 and result["per_device_batch"] == 64 // 8
    assert len(result["losses"]) >= 4 and np.isfinite(result["losses"]).all()
    # the losses of every step equal those of the same steps on one device
    np.testing.assert_allclose(result["losses"], result["losses_one_device"], rtol=1e-4)
    assert result["same_loss"] is True
    assert result["losses"][-1] < result["losses"][0]


def test_data_parallel_rejects_a_batch_that_does_not_split(tmp_path):
    with pytest.raises(SystemExit, match="--batch-size: 60 rows do not split over 8 devices"):
        load("data_parallel").main(["--smoke", "--devices", "8", "--batch-size", "60", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--devices: 9 requested, 8 visible"):
        load("data_parallel").main(["--smoke", "--devices", "9", "--out", str(tmp_path)])


def test_data_parallel_forces_host_devices_before_jax_starts(tmp_path):
    """``python examples/data_parallel.py --devices 4`` in a fresh process runs on 4 CPU devices."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(EXAMPLES.parent))
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "data_parallel.py"), "--smoke", "--devices", "4", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 cpu devices, global batch 64: per-device batch 16 rows" in done.stdout, done.stdout
    assert "equal to float rounding: True" in done.stdout, done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data_parallel.png"]


def test_moving_digits_bounce():
    mod = load("next_frame")
    image = np.zeros((8, 8), np.float32)
    image[0, 0] = 1.0  # one lit pixel marks the digit's corner
    video = mod.moving_digits(image[None], 20, 12, 12, np.random.default_rng(0))
    assert video.shape == (20, 12, 12, 12, 1)
    for seq in video:
        pos = np.array([np.argwhere(frame[..., 0])[0] for frame in seq])
        assert (pos >= 0).all() and (pos <= 4).all()  # corner stays within 12 - 8
        assert (np.abs(np.diff(pos, axis=0)) <= 1).all()  # one pixel per frame at most
        assert np.abs(np.diff(pos, axis=0)).sum() > 0  # and it moves


@pytest.mark.parametrize(
    "name", ["classify_sequences", "packed_sequences", "char_lm", "forecast", "next_frame", "data_parallel"]
)
def test_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load(name).main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--smoke" in out
    # every option has help text (ArgumentDefaultsHelpFormatter adds "(default: ...)" only to options with help)
    options = re.split(r"\n  (?=-)", out.split("options:", 1)[1])
    undocumented = [o.split()[0] for o in options if o.strip() and "(default:" not in o and not o.startswith("-h")]
    assert not undocumented, f"{name}: options without help text: {undocumented}"


def test_runs_as_a_script():
    """``python examples/<name>.py`` finds its helper module (the way users run the examples)."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "forecast.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "--cell" in done.stdout
