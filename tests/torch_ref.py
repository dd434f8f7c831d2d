"""PyTorch, the reference of the cuDNN-layout and benchmark tests, where it is installed."""

import pytest


def torch_or_skip():
    """The ``torch`` module; the calling test skips where PyTorch is not installed (it is the
    ``torch`` extra, not the test extra: on Linux pip's default wheel is the multi-gigabyte CUDA build)."""
    return pytest.importorskip(
        "torch",
        reason="PyTorch is not installed (the `torch` extra; install its CPU wheel with `pip install "
        "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu`): the PyTorch reference comparison "
        "cannot run",
    )
