"""Crash-safe reading and writing of the run directory.

Every file is written to a temporary name in the same directory, flushed to disk and
renamed over its final name (``os.replace`` is atomic on POSIX and Windows), so a reader
never sees a partial file under a final name. Loading never unpickles: ``.npz``/``.npy``
are read with ``allow_pickle=False`` and JSON is plain JSON.

Errors name the file: a write that fails (disk full, permissions) raises an ``OSError`` whose
message and ``filename`` give the final path; a file that is empty, truncated or not of the
expected format raises a ``ValueError`` that says which, and only a file that really holds
pickled data is refused as "pickled objects".
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

# the process umask, read once at import (os.umask can only be read by setting it)
_UMASK = os.umask(0o022)
os.umask(_UMASK)

__all__ = [
    "BackgroundWriter",
    "atomic_write_bytes",
    "make_writable_folder",
    "save_npz",
    "save_npy",
    "save_json",
    "fsync_file",
    "load_npz",
    "load_npy",
    "load_json",
]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename).

    A reader, or a process that crashes mid-write, sees the old file or the new one, never a
    mix. ``durable=False`` skips the fsync (tens of milliseconds for a few MB on a slow disk):
    for files that are rewritten every epoch from data already on disk (a summary derived from
    the epoch files), whose last version the writer makes durable with :func:`fsync_file`.
    """
    return _atomic_write(path, lambda f: f.write(data), durable=durable)


def _atomic_write(path: str | os.PathLike[str], write: Callable[[Any], Any], *, durable: bool) -> Path:
    """:func:`atomic_write_bytes` with the content streamed by ``write(file)`` (no copy in memory)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _named_os_error(e, path) from e
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600; give the file the mode open() would
            os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _named_os_error(e, path) from e
        raise
    return path


def make_writable_folder(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` (and its parents) and check that a file can be written in it.

    Raises:
        OSError: the folder cannot be created or written (the caller names the argument to fix).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / ".write-test"
    probe.write_bytes(b"")
    probe.unlink()
    return folder


def _named_os_error(error: OSError, path: Path) -> OSError:
    """``error`` re-stated with the final file name (a failing ``write`` on a descriptor names none)."""
    reason = error.strerror or str(error)
    return type(error)(
        error.errno,
        f"{reason}; memcallbacks could not write this run-directory file (free disk space or fix the "
        "folder's permissions, then resume from the last checkpoint)",
        str(path),
    )


def save_npz(
    path: str | os.PathLike[str], *, compress: bool = True, durable: bool = True, **arrays: Any
) -> Path:
    """Save arrays to a ``.npz`` atomically (compressed unless ``compress=False``; ``durable``: see
    :func:`atomic_write_bytes`). Object arrays are refused."""
    clean = {k: _plain_array(k, v) for k, v in arrays.items()}
    savez = np.savez_compressed if compress else np.savez
    return _atomic_write(path, lambda f: savez(f, **clean), durable=durable)  # type: ignore[arg-type]


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush an existing file to disk (what :func:`atomic_write_bytes` skipped with ``durable=False``)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise _named_os_error(e, path) from e


def save_npy(path: str | os.PathLike[str], array: Any) -> Path:
    """Save one array to ``.npy`` atomically (no pickle)."""
    buf = io.BytesIO()
    np.save(buf, _plain_array("array", array), allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())


def save_json(path: str | os.PathLike[str], obj: Any, *, durable: bool = True) -> Path:
    """Save ``obj`` as indented JSON atomically (``durable``: see :func:`atomic_write_bytes`);
    NaN/inf become ``null`` (valid JSON)."""
    text = json.dumps(_json_safe(obj), indent=2, sort_keys=True, allow_nan=False)
    return atomic_write_bytes(path, (text + "\n").encode(), durable=durable)


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_PICKLE_PROTOCOL_BYTE = b"\x80"


def _refuse_pickle(path: str | os.PathLike[str], error: Exception | None = None) -> ValueError:
    return ValueError(
        f"refusing to load {os.fspath(path)!r}: it contains pickled objects, which can run code "
        "when loaded; memcallbacks run directories hold plain arrays only"
    )


def _check_header(path: str | os.PathLike[str], magics: tuple[bytes, ...], kind: str) -> None:
    """Raise a clear ValueError when ``path`` is empty, pickled, or not a ``kind`` file at all."""
    with open(path, "rb") as f:
        head = f.read(8)
    if any(head.startswith(m) for m in magics):
        return
    if not head:
        raise ValueError(f"cannot load {os.fspath(path)!r}: the file is empty (a write was cut short?)")
    if head.startswith(_PICKLE_PROTOCOL_BYTE):
        raise _refuse_pickle(path)
    raise ValueError(
        f"cannot load {os.fspath(path)!r}: it is not a {kind} file (it starts with {head!r}); the file is "
        "damaged or of another format: restore it or delete it"
    )


def _damaged(path: str | os.PathLike[str], kind: str, error: Exception) -> ValueError:
    return ValueError(
        f"cannot load {os.fspath(path)!r}: the {kind} file is truncated or damaged ({error}); restore it "
        "or delete it"
    )


def load_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` into memory, refusing pickled objects.

    Raises:
        ValueError: the file holds pickled (object) data (memcallbacks never writes such
            files), or it is empty, truncated or not an ``.npz``; the message names the file.
    """
    _check_header(path, _ZIP_MAGICS, ".npz")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except ValueError as e:
        if "pickle" in str(e).lower() or "object arrays" in str(e).lower():
            raise _refuse_pickle(path) from e
        raise _damaged(path, ".npz", e) from e
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError, KeyError) as e:
        raise _damaged(path, ".npz", e) from e


def load_npy(path: str | os.PathLike[str], *, mmap: bool = False) -> np.ndarray:
    """Load one ``.npy`` (optionally memory-mapped), refusing pickled objects.

    Raises:
        ValueError: the file holds pickled (object) data, or it is empty, truncated or not a
            ``.npy``; the message names the file.
    """
    _check_header(path, (_NPY_MAGIC,), ".npy")
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except ValueError as e:
        # memory-mapped, numpy says "Python objects in dtype" instead of naming pickle
        if "pickle" in str(e).lower() or "python objects" in str(e).lower():
            raise _refuse_pickle(path) from e
        raise _damaged(path, ".npy", e) from e
    except EOFError as e:
        raise _damaged(path, ".npy", e) from e


def load_json(path: str | os.PathLike[str]) -> Any:
    """Load a JSON file written by :func:`save_json`."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _plain_array(name: str, value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype == object:
        raise TypeError(
            f"`{name}` has dtype object, which would need pickle; convert it to a numeric or str array"
        )
    return arr


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "detach"):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


class BackgroundWriter:
    """One writer thread that takes run-directory writes off the training loop, in order.

    At most one write is pending: :meth:`submit` first waits for the previous one (so memory
    stays bounded and a failed write surfaces at the next submit), and :meth:`close` waits for
    the last. Callers snapshot what they write before submitting; the writer only serialises.
    Not picklable state: owners drop it in ``__getstate__`` (``ddp_spawn`` pickles callbacks).
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future[Any] | None = None
        self._label = ""

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.submit_as("", fn, *args, **kwargs)

    def submit_as(self, label: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """:meth:`submit`, with ``label`` (e.g. "MyMonitor, epoch 3") added to the message of a failure."""
        self.flush()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
        self._label = label
        self._pending = self._executor.submit(fn, *args, **kwargs)

    def flush(self) -> None:
        """Wait for the pending write; re-raise its error (an ``OSError`` names the file and the label)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending.result()
            except OSError as e:
                if not self._label:
                    raise
                raise type(e)(e.errno, f"{self._label}: {e.strerror or e}", e.filename) from e

    def close(self) -> None:
        """Flush, then stop the thread."""
        try:
            self.flush()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
