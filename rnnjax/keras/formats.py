"""Reading Keras files as data: format detection from the content, and size-capped, link-refusing
readers for HDF5, the ``.keras`` zip and JSON.

Nothing read here is ever executed: configs are parsed with :func:`json.loads` and weights are
plain float arrays read by h5py. The readers refuse what Keras's own hardening refuses (HDF5
soft/external links, external and virtual datasets, shape bombs, zip bombs) before reading any
bytes of the offending object, so a hostile file fails fast and never exhausts memory.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
# Caps: far above any recurrent model, far below what would exhaust memory.
MAX_JSON_BYTES = 64 << 20
MAX_WEIGHT_BYTES = 4 << 30
MAX_INFLATE_RATIO = 100
MAX_COMPRESSION_RATIO = 1000  # declared bytes / stored bytes of one HDF5 dataset
_SMALL = 1 << 20  # below this, a ratio says nothing (a tiny array compresses well)
_FLOATS = {np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)}
# Top-level groups holding an optimizer's state (Keras 2/3 ``.h5``: ``optimizer_weights``; a
# ``.keras`` archive's weights: ``optimizer``), where the step counter is an integer scalar.
OPTIMIZER_GROUPS = ("optimizer_weights", "optimizer")
_COUNTERS = {np.dtype(np.int32), np.dtype(np.int64)}


class KerasImportError(ValueError):
    """A Keras file that rnnjax refuses or cannot read; the message lists every problem found."""

    def __init__(self, problems, path=None):
        problems = [problems] if isinstance(problems, str) else list(problems)
        self.problems = problems
        where = f"{path}: " if path is not None else ""
        if len(problems) == 1:
            super().__init__(where + problems[0])
        else:
            super().__init__(where + f"{len(problems)} problems:\n  - " + "\n  - ".join(problems))


def import_h5py(purpose: str = "Reading Keras files"):
    """h5py, or an ImportError that says what needs it and how to get it."""
    try:
        import h5py
    except ImportError as err:  # pragma: no cover - h5py is in the test extra
        raise ImportError(f"{purpose} needs h5py, which is not installed: `pip install rnnjax[keras]`.") from err
    return h5py


def sniff(path) -> str:
    """``'zip'`` or ``'hdf5'``, from the first bytes of the file (never from its suffix)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except IsADirectoryError:
        raise KerasImportError(
            "a directory (a TensorFlow SavedModel?) is not a Keras model file; re-save the model as .h5 or .keras", path
        ) from None
    except OSError as err:
        raise KerasImportError(f"cannot open the file: {err}", path) from None
    if head.startswith(ZIP_SIGNATURE):
        return "zip"
    if head == HDF5_SIGNATURE:
        return "hdf5"
    raise KerasImportError(
        f"not a Keras model file: expected an HDF5 file (.h5) or a Keras 3 zip archive (.keras), got a file "
        f"starting with {head!r} (TensorFlow checkpoints and SavedModels are not supported: re-save the model "
        "as .h5 or .keras)",
        path,
    )


def parse_json(data, what: str) -> Any:
    """JSON text (bytes or str, at most ``MAX_JSON_BYTES``) as plain Python data."""
    if len(data) > MAX_JSON_BYTES:
        raise KerasImportError(f"{what}: {len(data)} bytes of JSON, more than the cap of {MAX_JSON_BYTES}")
    try:
        return json.loads(data)
    except RecursionError:
        raise KerasImportError(f"{what}: JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise KerasImportError(f"{what}: not valid JSON ({err})") from None


def read_zip(path) -> dict:
    """``{'metadata', 'config', 'weights' (bytes)}`` of a ``.keras`` archive, read into memory with
    size caps (nothing is extracted to disk; ``assets/`` is ignored)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise KerasImportError(f"a damaged or truncated zip archive ({err})", path) from None
    with archive:
        members = {info.filename: info for info in archive.infolist()}
        if "config.json" not in members:
            raise KerasImportError(
                f"a zip archive without config.json is not a Keras 3 .keras file (members: {sorted(members)[:10]})",
                path,
            )
        if "model.weights.h5" not in members:
            extra = " (model.weights.npz is not supported)" if "model.weights.npz" in members else ""
            raise KerasImportError(f"the archive has no model.weights.h5{extra}", path)
        out = {}
        for key, name, cap in (
            ("metadata", "metadata.json", MAX_JSON_BYTES),
            ("config", "config.json", MAX_JSON_BYTES),
            ("weights", "model.weights.h5", MAX_WEIGHT_BYTES),
        ):
            if name in members:
                out[key] = _read_member(archive, members[name], cap, path)
    out["metadata"] = parse_json(out["metadata"], "metadata.json") if "metadata" in out else {}
    out["config"] = parse_json(out["config"], "config.json")
    return out


def _read_member(archive, info, cap: int, path) -> bytes:
    """One member's bytes, refusing a declared size over ``cap`` or a zip bomb's ratio, and
    stopping at ``cap`` whatever the header claims."""
    if info.file_size > cap:
        raise KerasImportError(
            f"archive member {info.filename} declares {info.file_size} bytes, over the cap of {cap}", path
        )
    if info.file_size > _SMALL and info.file_size > MAX_INFLATE_RATIO * max(info.compress_size, 1):
        raise KerasImportError(
            f"archive member {info.filename} inflates {info.compress_size} bytes to {info.file_size} (more than "
            f"{MAX_INFLATE_RATIO}x: a zip bomb?)",
            path,
        )
    try:
        with archive.open(info) as f:
            data = f.read(cap + 1)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:  # zlib errors are ValueError-like
        raise KerasImportError(f"archive member {info.filename} cannot be read ({err})", path) from None
    if len(data) > cap:
        raise KerasImportError(f"archive member {info.filename} inflates past the cap of {cap} bytes", path)
    return data


def open_hdf5(source, path=None):
    """An ``h5py.File`` opened read-only from a path or bytes."""
    h5py = import_h5py()
    try:
        return h5py.File(io.BytesIO(source) if isinstance(source, bytes) else source, "r")
    except (OSError, ValueError) as err:
        raise KerasImportError(f"a damaged or truncated HDF5 file ({err})", path) from None


def text(value) -> str:
    """An HDF5 attribute value as ``str`` (h5py gives ``str``, ``bytes`` or ``np.bytes_``)."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf8")
    if isinstance(value, str):
        return value
    raise KerasImportError(f"expected a string attribute, got {type(value).__name__}")


def _storage(attrs, name: str) -> int:
    try:
        return attrs.get_id(name).get_storage_size()
    except RuntimeError:  # HDF5 reports an empty attribute's size (0) as an error
        return 0


def has_list(obj, name: str) -> bool:
    """Whether ``obj`` has the list attribute ``name`` (whole or in Keras's chunks)."""
    return name in obj.attrs or f"{name}0" in obj.attrs


def attr_list(obj, name: str):
    """A list attribute, joined from Keras's chunks ``name0``, ``name1``... when it was split;
    ``None`` when absent."""
    attrs = obj.attrs
    keys = [name]
    if name not in attrs:
        keys = []
        while f"{name}{len(keys)}" in attrs:
            keys.append(f"{name}{len(keys)}")
    if not keys:
        return None
    size = sum(_storage(attrs, k) for k in keys)
    if size > MAX_JSON_BYTES:
        raise KerasImportError(f"attribute {name!r} holds {size} bytes, more than the cap of {MAX_JSON_BYTES}")
    chunks = [attrs[k] for k in keys]
    out: list = []
    for chunk in chunks:
        out.extend(text(v) for v in np.asarray(chunk).reshape(-1))
    return out


def attr_text(obj, name: str, default=None, cap: int = MAX_JSON_BYTES):
    """A string attribute (at most ``cap`` stored bytes), or ``default``."""
    if name not in obj.attrs:
        return default
    size = _storage(obj.attrs, name)
    if size > cap:
        raise KerasImportError(f"attribute {name!r} holds {size} bytes, more than the cap of {cap}")
    return text(obj.attrs[name])


def check_tree(root, where: str = "") -> None:
    """Walks every link under ``root`` and refuses, all at once, soft and external links, hard-link
    cycles, external and virtual datasets, non-float datasets (but for the integer step counters of
    an optimizer's state, scalars under :data:`OPTIMIZER_GROUPS` at the top) and shape bombs."""
    h5py = import_h5py()
    problems, seen, total = [], set(), [0]

    def visit(group, prefix, counters=False):
        for name in group:
            full = f"{prefix}/{name}"
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                problems.append(f"{full}: an HDF5 external link (to {link.filename}); refused")
                continue
            if isinstance(link, h5py.SoftLink):
                problems.append(f"{full}: an HDF5 soft link (to {link.path}); refused")
                continue
            obj = group[name]
            addr = h5py.h5o.get_info(obj.id).addr
            if addr in seen:
                problems.append(f"{full}: a second hard link to one object (a link cycle?); refused")
                continue
            seen.add(addr)
            if isinstance(obj, h5py.Group):
                visit(obj, full, counters or (prefix == where and name in OPTIMIZER_GROUPS))
            else:
                _check_dataset(obj, full, problems, total, counters)

    visit(root, where)
    if problems:
        raise KerasImportError(problems)


def _check_dataset(ds, name, problems, total, counters=False):
    if ds.is_virtual:
        problems.append(f"{name}: a virtual dataset (it reads other files); refused")
        return
    if ds.external:
        problems.append(f"{name}: a dataset stored in external files {[e[0] for e in ds.external]}; refused")
        return
    dtype = ds.dtype
    if counters and dtype in _COUNTERS and ds.shape == ():
        return
    if dtype not in _FLOATS and not (ds.attrs.get("dtype") == "bfloat16" and dtype == np.uint16):
        problems.append(f"{name}: weights must be float16/32/64 or bfloat16, got dtype {dtype}")
        return
    declared = int(np.prod(ds.shape, dtype=np.int64)) * dtype.itemsize if ds.shape else dtype.itemsize
    stored = ds.id.get_storage_size()
    total[0] += declared
    if declared > _SMALL and declared > MAX_COMPRESSION_RATIO * max(stored, 1):
        problems.append(
            f"{name}: declares shape {ds.shape} ({declared} bytes) over {stored} stored bytes (a shape bomb?); refused"
        )
    elif total[0] > MAX_WEIGHT_BYTES:
        problems.append(f"{name}: the weights pass the cap of {MAX_WEIGHT_BYTES} bytes in all; refused")


def read_counter(ds) -> int:
    """An optimizer's step counter: an integer scalar dataset (checked by :func:`check_tree`)."""
    if not isinstance(ds, import_h5py().Dataset) or ds.dtype not in _COUNTERS or ds.shape != ():
        raise KerasImportError(f"{ds.name}: expected an integer scalar (a step counter)")
    return int(ds[()])


def read_array(ds) -> np.ndarray:
    """A checked dataset's values (bfloat16 stored as uint16 with ``attrs['dtype']`` comes back as
    ``ml_dtypes.bfloat16``)."""
    if not isinstance(ds, import_h5py().Dataset):
        raise KerasImportError(f"{ds.name}: expected a weight array, found an HDF5 group")
    if ds.dtype not in _FLOATS and not (ds.dtype == np.uint16 and ds.attrs.get("dtype") == "bfloat16"):
        raise KerasImportError(f"{ds.name}: weights must be float16/32/64 or bfloat16, got dtype {ds.dtype}")
    a = np.asarray(ds[()])
    if a.dtype == np.uint16:
        import ml_dtypes

        a = a.view(ml_dtypes.bfloat16)
    return a
