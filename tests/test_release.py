"""A release's wheel installs in a fresh virtual environment and imports there without the test
extras (docs/development.md, "Releasing"); the version is written once (rnnjax.__version__)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import tomllib
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

CHECK = """
import importlib.util, sys
import jax, jax.numpy as jnp
import rnnjax, rnnjax.functional, rnnjax.cudnn, rnnjax.nnx, rnnjax.keras
assert rnnjax.__file__.startswith(sys.prefix), rnnjax.__file__          # the installed wheel, not the checkout
absent = [m for m in ("keras", "h5py", "torch", "pytest", "hypothesis", "flatbuffers") if importlib.util.find_spec(m)]
assert not absent, f"test extras present: {absent}"
layer = rnnjax.LSTM(4)
x = jnp.ones((2, 3, 5))
assert layer.apply(layer.init(jax.random.key(0), x), x).shape == (2, 4)
print(rnnjax.__version__)
"""


def test_version_is_written_once():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    init = (ROOT / "rnnjax" / "__init__.py").read_text()
    assert len(re.findall(r"^__version__ = \"(\d+\.\d+\.\d+[\w.]*)\"$", init, flags=re.M)) == 1
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text()


def test_wheel_installs_and_imports_without_test_extras(tmp_path):
    for module in ("build", "twine"):
        pytest.importorskip(
            module,
            reason=f"{module} is not installed (the `release` extra: pip install -e "
            '".[release]"): cannot build and check the wheel',
        )
    dist = tmp_path / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = dist.glob("rnnjax-*.whl")
    import rnnjax

    assert wheel.name.startswith(f"rnnjax-{rnnjax.__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    assert "rnnjax/py.typed" in names and not any(n.startswith(("tests/", "docs/", "bench/")) for n in names)
    check = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(wheel)], capture_output=True, text=True, timeout=300
    )
    assert check.returncode == 0, check.stdout + check.stderr
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True, timeout=900
    )
    assert install.returncode == 0, install.stderr[-3000:]
    run = subprocess.run(
        [str(python), "-c", CHECK],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu", "HOME": str(tmp_path)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == rnnjax.__version__
