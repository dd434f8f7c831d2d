"""Every example on the documentation site runs (documentation that cannot rot).

* The `````python`` blocks of every page under ``docs/`` (and of ``README.md``, the landing page:
  ``tests/test_readme.py``)
  run, each in a **fresh process** that sees only the extras its page names: a page declares them
  in a ``<!-- extras: keras, keras3 -->`` comment and says them to the reader (``rnnjax[keras3]``);
  the modules of every other extra are hidden (importing them fails as if not installed), and
  neither ``KERAS_BACKEND`` nor this suite's ``XLA_FLAGS`` reach the block. A block that continues
  the one before it (``<!-- continues -->`` on the line above its fence, and the text says so) runs
  in the same process and namespace.
* A Python block that is not run is fenced as `````py`` and the text before it says "not run".
* The ``Examples:`` sections of the package's docstrings run as doctests, in one fresh process with
  the base install only. (Docstrings' literal ``::`` blocks are rendered on the site as sketches,
  labelled "not run"; see ``docs/_ext/rnnjax_griffe.py``.)
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# README.md (the landing page) is run by tests/test_readme.py, with the same functions.
PAGES = [p for p in sorted((ROOT / "docs").rglob("*.md")) if "_ext" not in p.parts]
FENCE = re.compile(r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```\s*$", re.S | re.M)
EXTRAS = re.compile(r"<!--\s*extras:\s*(?P<names>[\w\-, ]*?)\s*-->")
# The top-level modules each optional extra brings (pyproject.toml); the base install has none of them.
EXTRA_MODULES = {
    "keras": {"h5py"},
    "keras3": {"keras", "h5py"},
    "deploy": {"flatbuffers"},
    "examples": {"tqdm", "matplotlib", "sklearn", "statsmodels", "flatbuffers"},
    "torch": {"torch"},
    "test": {
        "keras",
        "h5py",
        "flatbuffers",
        "tqdm",
        "matplotlib",
        "sklearn",
        "statsmodels",
        "hypothesis",
        "pytest",
        "orbax",
    },
}
OPTIONAL = set().union(*EXTRA_MODULES.values())

PRELUDE = """
import importlib.abc, sys
HIDDEN = set(sys.argv[2].split(",")) - {""}

class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r} (its extra is not one this page names)", name=name)

sys.meta_path.insert(0, _NotInstalled())
sys.argv = sys.argv[:1]
namespace = {"__name__": "__main__"}
for source, where in BLOCKS:
    exec(compile(source, where, "exec"), namespace)
"""


def blocks(page: pathlib.Path):
    """``[(language, source, line, continues)]`` for every fenced block of ``page``."""
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        found.append((match.group("lang"), match.group("body"), line, "<!-- continues -->" in before))
    return found


def groups(page: pathlib.Path):
    """The page's runnable blocks, grouped: a block marked as continuing joins the group before it."""
    out = []
    for lang, body, line, continues in blocks(page):
        if lang != "python":
            continue
        where = f"{page.relative_to(ROOT)}:{line}"
        if continues:
            assert out, f"{where}: marked <!-- continues --> but no Python block comes before it"
            out[-1].append((body, where))
        else:
            out.append([(body, where)])
    return out


def page_extras(page: pathlib.Path) -> set:
    match = EXTRAS.search(page.read_text())
    names = {n.strip() for n in match.group("names").split(",") if n.strip()} if match else set()
    unknown = names - set(EXTRA_MODULES)
    assert not unknown, f"{page.name}: unknown extras {unknown}; known: {sorted(EXTRA_MODULES)}"
    return names


def run_group(group, hidden, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "XLA_FLAGS", "PYTHONPATH")}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    script = f"BLOCKS = {group!r}\n" + PRELUDE
    done = subprocess.run(
        [sys.executable, "-c", script, "-", ",".join(sorted(hidden))],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{group[0][1]} failed in a fresh process:\n{done.stderr[-4000:]}"
    return done


def test_pages_have_examples():
    assert sum(len(groups(p)) for p in PAGES) >= 15
    assert (ROOT / "docs" / "index.md") in PAGES


def check_page(page, tmp_path):
    """Runs each group of the page's ``python`` blocks in a fresh process with the page's extras only."""
    extras = page_extras(page)
    text = page.read_text()
    for name in extras:  # the reader is told what to install
        assert f"[{name}]" in text or f",{name}]" in text or f"[{name}," in text, (
            f"{page.name} runs with the extra {name!r} but never tells the reader to install it"
        )
    hidden = OPTIONAL - set().union(*(EXTRA_MODULES[n] for n in extras)) if extras else set(OPTIONAL)
    for group in groups(page):
        run_group(group, hidden, tmp_path)


@pytest.mark.parametrize("page", [p for p in PAGES if groups(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_page_examples_run(page, tmp_path):
    check_page(page, tmp_path)


@pytest.mark.parametrize("page", PAGES + [ROOT / "README.md"], ids=lambda p: str(p.relative_to(ROOT)))
def test_blocks_not_run_say_so(page):
    """A Python block that is not run (fenced ``py``) says so in the text just before it."""
    text = page.read_text()
    for lang, _, line, _ in blocks(page):
        if lang == "py":
            start = sum(len(x) + 1 for x in text.splitlines()[: max(0, line - 6)])
            before = text[start : sum(len(x) + 1 for x in text.splitlines()[: line - 1])]
            assert "not run" in before.lower(), f"{page.name}:{line}: a `py` block (not run) must say so above it"


def test_docstring_examples_run(tmp_path):
    """The ``Examples:`` of every docstring in the package run as doctests (base install only)."""
    script = """
import doctest, importlib, pkgutil, sys
import rnnjax
names = ["rnnjax"] + [m.name for m in pkgutil.walk_packages(rnnjax.__path__, "rnnjax.")]
tried = failed = 0
for name in names:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tried += result.attempted
    failed += result.failed
print(f"doctests: {tried} examples, {failed} failed")
sys.exit(1 if failed or not tried else 0)
"""
    group = [(script, "docstrings")]
    done = run_group(group, OPTIONAL - {"h5py"}, tmp_path)  # rnnjax.keras imports h5py only to read files
    assert "0 failed" in done.stdout
