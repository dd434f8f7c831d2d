"""Loading a ``bench/`` script as a module in a test process."""

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_bench_script(filename: str, module_name: str):
    """``bench/<filename>`` as the module ``module_name``, with bench's own ``_common``.

    bench/_common.py and examples/_common.py share a module name: the script gets bench's, and
    whatever another test imported as ``_common`` is put back afterwards."""
    saved = sys.modules.pop("_common", None)
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        spec = importlib.util.spec_from_file_location(module_name, os.path.join(ROOT, "bench", filename))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = mod  # dataclasses look their module up there
        spec.loader.exec_module(mod)
    finally:
        sys.path.pop(0)
        sys.modules.pop("_common", None)
        if saved is not None:
            sys.modules["_common"] = saved
    return mod
