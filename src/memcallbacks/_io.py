"""Crash-safe reading and writing of the run directory.

Every file is written to a temporary name in the same directory, flushed to disk and
renamed over its final name (``os.replace`` is atomic on POSIX and Windows), so a reader
never sees a partial file under a final name. Loading never unpickles: ``.npz``/``.npy``
are read with ``allow_pickle=False`` and JSON is plain JSON.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
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
    "save_npz",
    "save_npy",
    "save_json",
    "load_npz",
    "load_npy",
    "load_json",
]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600; give the file the mode open() would
            os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def save_npz(path: str | os.PathLike[str], *, compress: bool = True, **arrays: Any) -> Path:
    """Save arrays to a ``.npz`` atomically (compressed unless ``compress=False``). Object arrays are refused."""
    buf = io.BytesIO()
    clean = {k: _plain_array(k, v) for k, v in arrays.items()}
    (np.savez_compressed if compress else np.savez)(buf, **clean)  # type: ignore[arg-type]
    return atomic_write_bytes(path, buf.getvalue())


def save_npy(path: str | os.PathLike[str], array: Any) -> Path:
    """Save one array to ``.npy`` atomically (no pickle)."""
    buf = io.BytesIO()
    np.save(buf, _plain_array("array", array), allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())


def save_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Save ``obj`` as indented JSON atomically; NaN/inf become ``null`` (valid JSON)."""
    text = json.dumps(_json_safe(obj), indent=2, sort_keys=True, allow_nan=False)
    return atomic_write_bytes(path, (text + "\n").encode())


def load_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` into memory, refusing pickled objects.

    Raises:
        ValueError: the file holds pickled (object) data; memcallbacks never writes such files.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise ValueError(
                f"refusing to load {os.fspath(path)!r}: it contains pickled objects, which can run code "
                "when loaded; memcallbacks run directories hold plain arrays only"
            ) from e
        raise


def load_npy(path: str | os.PathLike[str], *, mmap: bool = False) -> np.ndarray:
    """Load one ``.npy`` (optionally memory-mapped), refusing pickled objects."""
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except ValueError as e:
        # memory-mapped, numpy says "Python objects in dtype" instead of naming pickle
        if "pickle" in str(e).lower() or "python objects" in str(e).lower():
            raise ValueError(
                f"refusing to load {os.fspath(path)!r}: it contains pickled objects; "
                "memcallbacks run directories hold plain arrays only"
            ) from e
        raise


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

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.flush()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
        self._pending = self._executor.submit(fn, *args, **kwargs)

    def flush(self) -> None:
        """Wait for the pending write; re-raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Flush, then stop the thread."""
        try:
            self.flush()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
