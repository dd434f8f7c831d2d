"""Finding oneDNN, compiling ``rnn_kernels.cc`` once per machine, and loading it into XLA.

The extra ``rnnjax[onednn]`` installs two wheels from PyPI: ``onednn-cpu-gomp`` (``libdnnl.so.3``,
oneDNN 3.2 built with GNU OpenMP; it needs only libgomp and libstdc++) and
``onednn-devel-cpu-gomp`` (its headers). rnnjax ships the C++ source of its kernels as package
data and compiles it at first use with the machine's C++ compiler (``$CXX``, else ``g++``,
``c++``, ``clang++``), against jaxlib's FFI headers (``jax.ffi.include_dir()``) and oneDNN's,
linking ``libdnnl.so.3`` by its path (an rpath to the wheel's folder). The shared object goes to
a per-user cache, ``$RNNJAX_CACHE_DIR`` or ``$XDG_CACHE_HOME/rnnjax`` (``~/.cache/rnnjax``), named
by a hash of the source, the oneDNN and jaxlib versions and the compiler; a file lock keeps
concurrent processes (``pytest -n``) from compiling it twice. Nothing is downloaded.

:func:`unavailable_reason` says why the kernels cannot run here (None when they can), and
:func:`library` compiles (once), loads and registers them.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import importlib.resources
import os
import platform
import shutil
import subprocess
import sys
import threading
from pathlib import Path

RUNTIME, DEVEL = "onednn-cpu-gomp", "onednn-devel-cpu-gomp"
INSTALL = "pip install 'rnnjax[onednn]'"
SOURCE = "rnn_kernels.cc"
TARGETS = ("rnnjax_onednn_fwd", "rnnjax_onednn_bwd")
COMPILERS = ("g++", "c++", "clang++")


class OneDNNUnavailable(RuntimeError):
    """The oneDNN kernels cannot run here; the message says what is missing and how to get it."""


def _wheel_file(dist_name: str, suffix: str) -> Path | None:
    """The installed file of wheel ``dist_name`` whose path ends with ``suffix`` (None without it)."""
    try:
        files = importlib.metadata.distribution(dist_name).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).replace("\\", "/").endswith(suffix):
            path = Path(str(importlib.metadata.distribution(dist_name).locate_file(f))).resolve()
            if path.exists():
                return path
    return None


def _compiler() -> str:
    """The C++ compiler: ``$CXX`` where set, else the first of :data:`COMPILERS` on ``PATH``;
    :class:`OneDNNUnavailable` saying which was looked for and how to get one otherwise."""
    explicit = os.environ.get("CXX")
    if explicit:
        found = shutil.which(explicit) or (explicit if os.access(explicit, os.X_OK) else None)
        if found is None:
            raise OneDNNUnavailable(
                f"$CXX is {explicit!r}, which is not an executable C++ compiler: set CXX to "
                "one (or unset it to use g++, c++ or clang++ from PATH)"
            )
        return found
    for name in COMPILERS:
        found = shutil.which(name)
        if found:
            return found
    raise OneDNNUnavailable(
        f"no C++ compiler found to build rnnjax's oneDNN kernels (looked for {', '.join(COMPILERS)} on PATH): "
        "install one (e.g. `apt-get install g++`) or set CXX"
    )


def _cache_dir() -> Path:
    if os.environ.get("RNNJAX_CACHE_DIR"):
        return Path(os.environ["RNNJAX_CACHE_DIR"]) / "onednn"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rnnjax" / "onednn"


def _describe_compiler(cxx: str) -> str:
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return cxx
    return cxx + " " + (out.splitlines()[0] if out else "")


class _Plan:
    """What a build needs, found on this machine: the library, the headers, the compiler."""

    def __init__(self):
        if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
            raise OneDNNUnavailable(
                f"rnnjax's oneDNN extra runs on Linux x86-64 only (this is {sys.platform} {platform.machine()})"
            )
        library = _wheel_file(RUNTIME, "libdnnl.so.3")
        header = _wheel_file(DEVEL, "oneapi/dnnl/dnnl.hpp")
        if library is None or header is None:
            missing = RUNTIME if library is None else DEVEL
            raise OneDNNUnavailable(f"the oneDNN extra is not installed (no {missing} wheel found): {INSTALL}")
        self.library: Path = library
        self.include = header.parent.parent.parent
        self.cxx = _compiler()
        import jax.ffi
        import jaxlib

        self.ffi_include = Path(jax.ffi.include_dir())
        self.source = importlib.resources.files("rnnjax.onednn").joinpath(SOURCE).read_bytes()
        key = b"\0".join(
            [
                self.source,
                importlib.metadata.version(RUNTIME).encode(),
                jaxlib.__version__.encode(),
                _describe_compiler(self.cxx).encode(),
                str(self.library).encode(),
            ]
        )
        self.target = _cache_dir() / f"rnnjax_onednn-{hashlib.sha256(key).hexdigest()[:20]}.so"

    def command(self, source: Path, output: Path) -> list:
        return [
            self.cxx,
            "-std=c++17",
            "-O2",
            "-shared",
            "-fPIC",
            "-w",
            f"-I{self.ffi_include}",
            f"-I{self.include}",
            str(source),
            "-o",
            str(output),
            str(self.library),
            f"-Wl,-rpath,{self.library.parent}",
        ]

    def build(self) -> Path:
        """The compiled library, compiled now if the cache has none (under a file lock)."""
        if self.target.exists():
            return self.target
        import fcntl

        self.target.parent.mkdir(parents=True, exist_ok=True)
        with open(self.target.parent / "build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.target.exists():  # built by another process while this one waited
                return self.target
            source = self.target.with_suffix(".cc")
            source.write_bytes(self.source)
            partial = self.target.with_suffix(f".{os.getpid()}.tmp")
            done = subprocess.run(self.command(source, partial), capture_output=True, text=True)
            if done.returncode != 0:
                partial.unlink(missing_ok=True)
                raise OneDNNUnavailable(
                    f"compiling rnnjax's oneDNN kernels failed ({' '.join(self.command(source, partial))}):\n"
                    + done.stderr[-3000:]
                )
            os.replace(partial, self.target)
        return self.target


_lock = threading.Lock()


@functools.cache
def _load():
    """``(ctypes library, None)`` once compiled, loaded and registered with XLA, or ``(None, reason)``."""
    try:
        plan = _Plan()
        lib = ctypes.CDLL(str(plan.build()))
    except OneDNNUnavailable as e:
        return None, str(e)
    except OSError as e:  # e.g. libgomp.so.1 missing: the onednn-cpu-gomp build links GNU OpenMP
        hint = (
            " (oneDNN's GNU OpenMP build needs libgomp.so.1: e.g. `apt-get install libgomp1`)"
            if "libgomp" in str(e)
            else ""
        )
        return None, f"loading rnnjax's oneDNN kernels failed: {e}{hint}"
    import jax.ffi

    for name in TARGETS:
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    lib.rnnjax_onednn_workspace_bytes.restype = ctypes.c_int64
    lib.rnnjax_onednn_workspace_bytes.argtypes = [ctypes.c_int64] * 5 + [ctypes.c_int]
    lib.rnnjax_onednn_error.restype = ctypes.c_char_p
    return lib, None


def unavailable_reason() -> str | None:
    """None when rnnjax's oneDNN kernels can run in this process (compiling them on first call,
    about ten seconds, then cached per user), else what is missing and how to get it."""
    with _lock:
        return _load()[1]


def library() -> ctypes.CDLL:
    """The loaded kernels (compiled on first use); :class:`OneDNNUnavailable` with the reason otherwise."""
    with _lock:
        lib, reason = _load()
    if lib is None:
        raise OneDNNUnavailable(reason)
    return lib


def installed() -> bool:
    """Whether both oneDNN wheels of the extra are installed (nothing compiled or loaded)."""
    for name in (RUNTIME, DEVEL):
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return False
    return True


def workspace_bytes(cell: int, steps: int, batch: int, input_dim: int, units: int, reverse: bool) -> int:
    """The training forward's workspace in bytes (oneDNN's, for these sizes)."""
    lib = library()
    n = lib.rnnjax_onednn_workspace_bytes(cell, steps, batch, input_dim, units, int(reverse))
    if n < 0:
        raise OneDNNUnavailable(f"oneDNN cannot make this RNN primitive: {lib.rnnjax_onednn_error().decode()}")
    return int(n)
