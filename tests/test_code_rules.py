"""Rules of the code base that a reviewer would otherwise check by hand (no JAX needed).

* No module under ``rnnjax/`` uses another package's private name (a name starting with one
  underscore): not by import (``from rnnjax.cudnn.layers import _poison``, ``from rnnjax.functional
  import _planner``) and not as an attribute (``spec._run``, ``linen_conv._CELLS``) of anything
  but ``self``/``cls``/``super()``. A package is a folder (``rnnjax.nnx``); the top-level modules
  are each their own. NamedTuple's API (``_replace``, ``_fields``, ...) is public. The types of
  objects are not known statically: an attribute whose name both packages define is let pass.
* The design note (``docs/design.md``) cites only paths that exist and code names that the sources
  define or use.
"""

import ast
import functools
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rnnjax"
NAMEDTUPLE_API = {"_replace", "_fields", "_field_defaults", "_asdict", "_make"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in NAMEDTUPLE_API


def _package_of(module: str) -> str:
    """``rnnjax.nnx.cells`` -> ``rnnjax.nnx``; ``rnnjax.kinds`` (a top-level module) -> itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or (PACKAGE / parts[-1]).is_dir() else module


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        yield ".".join(parts), path


def _defined_private(tree) -> set:
    """Private names a module defines: at its top level and in its classes' bodies."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef)):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    found.add(item.name)
                targets = item.targets if isinstance(item, ast.Assign) else [getattr(item, "target", None)]
                found.update(t.id for t in targets if isinstance(t, ast.Name))
    return {n for n in found if _private(n)}


def _owner_is_own(value) -> bool:
    if isinstance(value, ast.Name) and value.id in ("self", "cls"):
        return True
    return isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super"


def _module_aliases(tree, modules) -> dict:
    """``{local name: module}`` for the rnnjax modules ``tree`` imports as a name."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rnnjax"):
            out.update(
                {
                    a.asname or a.name: f"{node.module}.{a.name}"
                    for a in node.names
                    if f"{node.module}.{a.name}" in modules
                }
            )
        elif isinstance(node, ast.Import):
            out.update({a.asname: a.name for a in node.names if a.asname and a.name in modules})
    return out


def violations(sources: dict) -> list:
    """``[(module, line, what)]`` for ``sources`` ``{module name: source text}``. An attribute
    ``x._name`` counts when ``x`` is an imported module of another package, or when ``_name`` is
    defined only in other packages (``x`` an object of theirs)."""
    trees = {m: ast.parse(src) for m, src in sources.items()}
    defined: dict = {}
    for m, tree in trees.items():
        for name in _defined_private(tree):
            defined.setdefault(name, set()).add(_package_of(m))
    found = []
    for m, tree in trees.items():
        own, aliases = _package_of(m), _module_aliases(tree, trees)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rnnjax"):
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    source = target if target in trees else node.module
                    if _private(alias.name) and _package_of(source) != own:
                        found.append((m, node.lineno, f"from {node.module} import {alias.name}"))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    bad = [p for p in alias.name.split(".") if _private(p)]
                    if alias.name.startswith("rnnjax") and bad and _package_of(alias.name) != own:
                        found.append((m, node.lineno, f"import {alias.name}"))
            elif isinstance(node, ast.Attribute) and _private(node.attr) and not _owner_is_own(node.value):
                where = defined.get(node.attr, set())
                if isinstance(node.value, ast.Name) and node.value.id in aliases:
                    where = {_package_of(aliases[node.value.id])}
                if where and own not in where:
                    found.append((m, node.lineno, f"._{node.attr.lstrip('_')} (defined in {sorted(where)})"))
    return found


def test_no_module_uses_another_packages_private_names():
    sources = {m: path.read_text() for m, path in _modules()}
    assert len(sources) > 40  # the whole package was read
    assert violations(sources) == []


def test_the_rule_catches_each_kind_of_reach_in():
    """The checker itself: each form of reaching into another package is reported, and what a
    package does with its own private names is not."""
    sources = {
        "rnnjax.cudnn.layers": (
            "def _poison(x):\n    return x\nclass L:\n    def _run(self):\n        return self._run\n"
        ),
        "rnnjax.cudnn.fused": "from rnnjax.cudnn.layers import _poison\n",
        "rnnjax.nnx.cudnn": (
            "from rnnjax.cudnn import layers as linen_cudnn\nfrom rnnjax.cudnn.layers import _poison\n"
            "import rnnjax.functional._planner\nfrom rnnjax.functional import _planner\n"
            "def f(spec, p):\n    return spec._run(), linen_cudnn._poison, p._replace()\n"
        ),
        "rnnjax.functional._planner": "_forced = {}\n",
    }
    found = sorted((m, line) for m, line, _ in violations(sources))
    assert found == [
        ("rnnjax.nnx.cudnn", 2),
        ("rnnjax.nnx.cudnn", 3),
        ("rnnjax.nnx.cudnn", 4),
        ("rnnjax.nnx.cudnn", 6),
        ("rnnjax.nnx.cudnn", 6),
    ]


# ----- the design note (docs/design.md) cites only what exists -------------------------------------

NOTE = ROOT / "docs" / "design.md"


@functools.cache
def _identifiers() -> frozenset:
    """Every name the sources define or use (functions, classes, arguments, attributes, fields,
    names in tables): rnnjax's and the tests' (this file's own examples excepted)."""
    names = set()
    sources = list(PACKAGE.rglob("*.py")) + [p for p in (ROOT / "tests").glob("*.py") if p.name != "test_code_rules.py"]
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            for attr in ("name", "id", "attr", "arg"):
                value = getattr(node, attr, None)
                if isinstance(value, str):
                    names.add(value)
            if isinstance(node, ast.alias):
                names.update(node.name.split("."))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
                names.add(node.value)  # names in tables: plan switches, argument names
    return frozenset(names)


def _expand(path: str) -> list:
    """``a/{b,c}.py`` -> ``['a/b.py', 'a/c.py']``."""
    found = re.search(r"\{([^}]*)\}", path)
    if not found:
        return [path]
    return [
        p for part in found.group(1).split(",") for p in _expand(path[: found.start()] + part + path[found.end() :])
    ]


def _cited(text: str):
    """``(paths, names)`` the note cites: paths of ``.py`` files and folders (in backticks or in its
    code blocks), and the code names in backticks (the last part of a dotted name, before a call)."""
    paths = set(re.findall(r"(?:rnnjax|tests|bench|docs|examples)/[\w/{},.]*\w(?:\.py)?/?", text))
    names = set()
    for span in re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S)):
        if re.fullmatch(r"[\w/{},.]+\.py|[\w/]+/", span):
            paths.add(span)
            continue
        found = re.fullmatch(r"([A-Za-z_][\w.]*)(\(.*\))?", span)
        math = re.fullmatch(r"[A-Za-z]{1,3}_[a-z]{1,3}", span)  # z_t, dz_t, b_rec: the equations' symbols
        if found and not math and ("_" in found.group(1) or re.search(r"[a-z][A-Z]|^[A-Z][a-z]+[A-Z]", found.group(1))):
            names.add(found.group(1).split(".")[-1])
    return paths, names


def _exists(path: str) -> bool:
    """A path from the repository root or ``rnnjax/``; a bare file name anywhere under ``rnnjax/``."""

    def one(p):
        return (ROOT / p).exists() or (PACKAGE / p).exists() or ("/" not in p and any(PACKAGE.rglob(p)))

    return all(one(p) for p in _expand(path.rstrip("/")))


def test_design_note_cites_existing_paths_and_names():
    paths, names = _cited(NOTE.read_text())
    assert len(paths) > 20 and len(names) > 50  # the note was read
    assert sorted(p for p in paths if not _exists(p)) == []
    assert sorted(names - _identifiers()) == []


def test_design_note_check_catches_a_missing_path_and_name():
    paths, names = _cited(
        "The twin lives in `rnnjax/nnx/layers.py` and calls `path.run_layer_twice(x)`.\n"
        "```\nrnnjax/functional/{lstm,gru_x}.py\n```\n"
    )
    assert sorted(p for p in paths if not _exists(p)) == ["rnnjax/functional/{lstm,gru_x}.py", "rnnjax/nnx/layers.py"]
    assert names - _identifiers() == {"run_layer_twice"}
