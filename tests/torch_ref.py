"""PyTorch, the reference of the cuDNN-layout and benchmark tests, where it is installed."""
import pytest


def torch_or_skip():
    """The ``torch`` module; the calling test skips where PyTorch is not installed (the test extra
    installs its pinned CPU wheel on Python 3.11 only, the Python that wheel is for)."""
    return pytest.importorskip(
        "torch", reason="PyTorch is not installed (the test extra installs it on Python 3.11 only, the "
        "Python its pinned CPU wheel is for): the PyTorch reference comparison cannot run")
