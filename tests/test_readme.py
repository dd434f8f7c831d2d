"""The README (the documentation site's landing page): its Python examples run as written, in a
fresh process with no extra installed (tests/test_docs_examples.py's rules), and its test command
is the one CI runs."""

import pathlib

from test_docs_examples import check_page, groups

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_has_examples():
    assert len(groups(README)) >= 3


def test_readme_examples_run(tmp_path):
    check_page(README, tmp_path)


def test_readme_test_command_is_what_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    command = 'python -m pip install -e ".[test]" && python -m pytest -n 2'
    assert command in README.read_text() and command in ci
