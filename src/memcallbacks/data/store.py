"""TrajectoryStore: an ``[N, E]`` per-sample loss matrix that grows one epoch at a time.

Column ``j`` holds every sample's loss at the ``j``-th recorded epoch, NaN where the sample
was not visited (docs/trajectory.md). Values are kept as float16 by default (two bytes
per sample-epoch; float32 opt-in); an optional boolean correctness matrix sits beside it.

**Memory and disk.** With a ``directory``, each finished epoch is written there as
``epoch_XXXX.npy`` (and ``correct_XXXX.npy``), atomically (temporary name, then rename;
:mod:`memcallbacks.utilities.fileio`). While the matrix fits in ``memory_budget_bytes`` the epochs are also
kept in memory; once it would exceed the budget the in-memory copies are dropped and epochs
are read back memory-mapped, so resident memory stays within the budget plus O(N). Without a
directory the store lives in memory until it exceeds the budget, then spills to a temporary
folder (with a warning).

**Statistics** of :func:`memcallbacks.metrics.trajectory_statistics` (Swayamdipta et al.
2020, Toneva et al. 2019) are streamed through a
:class:`~memcallbacks.metrics.TrajectoryAccumulator` as epochs are appended, in O(N) memory;
they equal the batch computation on :meth:`TrajectoryStore.matrix` exactly, because both
see the stored (rounded) values.

**State for resume.** :meth:`TrajectoryStore.state_dict` holds the number of epochs recorded
and, while the store is in memory, the arrays themselves (small stores; the checkpoint is
then self-contained). A disk-backed store (multi-GB) is referenced by its directory and epoch
count only: copying gigabytes into every checkpoint would make checkpoints slow and huge, and
the epoch files are already written atomically. On :meth:`load_state_dict`, files of epochs
beyond the checkpoint's count (written after the checkpoint, before a crash) are deleted, so
the directory never has duplicate or missing epochs; when the checkpoint's directory differs
from this store's, the checkpoint's epoch files are hard-linked (or copied) over.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memcallbacks.metrics.dynamics import TrajectoryAccumulator, TrajectoryStatistics
from memcallbacks.utilities.fileio import load_npy, save_npy
from memcallbacks.utilities.validation import check_bool, check_int, check_path

__all__ = ["TrajectoryStore", "DEFAULT_MEMORY_BUDGET_BYTES", "check_memory_budget"]

DEFAULT_MEMORY_BUDGET_BYTES = 256 * 2**20


def _save_now(save: Callable[..., Any], *args: Any) -> None:
    save(*args)


_EPOCH_RE = re.compile(r"^(epoch|correct)_(\d{4,})\.npy$")
_DTYPES = {"float16": np.float16, "float32": np.float32}


def check_memory_budget(value: Any) -> int:
    """``memory_budget_bytes``: an integer number of bytes >= 0."""
    return check_int(
        "memory_budget_bytes", value, minimum=0, hint="pass a number of bytes, e.g. 256 * 2**20 (256 MiB)"
    )


def _check_dtype(dtype: Any) -> np.dtype[Any]:
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).replace("torch.", "")
    try:
        resolved = np.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"`dtype` must be 'float16' or 'float32', got {dtype!r}") from e
    if resolved.name not in _DTYPES:
        raise ValueError(f"`dtype` must be 'float16' (default) or 'float32', got {dtype!r}")
    return resolved


class TrajectoryStore:
    """Per-sample loss trajectories: an ``[N, E]`` matrix growing by epochs, memory or disk-backed.

    Args:
        num_samples: number of samples ``N`` (rows).
        directory: where epoch files are written (``epoch_XXXX.npy``, ``correct_XXXX.npy``);
            ``None`` keeps the store in memory until it exceeds the budget.
        dtype: ``"float16"`` (default, 2 bytes per sample-epoch) or ``"float32"``.
        memory_budget_bytes: most bytes of epoch arrays held in memory; beyond it epochs are
            read back memory-mapped from ``directory``.
        keep_epochs: ``False`` keeps only the streamed statistics (O(N)), no epochs: what the
            non-zero ranks of a distributed run use.

    Raises:
        ValueError: ``num_samples`` negative, ``dtype`` not float16/float32, negative budget.

    Example:
        >>> import numpy as np
        >>> store = TrajectoryStore(3)
        >>> store.append(np.array([2.0, np.nan, 0.5]), correct=np.array([False, False, True]))
        0
        >>> store.append(np.array([1.0, 3.0, 0.25]), correct=np.array([True, False, True]))
        1
        >>> store.matrix()
        array([[2.  , 1.  ],
               [ nan, 3.  ],
               [0.5 , 0.25]], dtype=float16)
        >>> store.statistics().mean
        array([1.5  , 3.   , 0.375])
    """

    def __init__(
        self,
        num_samples: int,
        *,
        directory: str | os.PathLike[str] | None = None,
        dtype: Any = "float16",
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
        keep_epochs: bool = True,
    ) -> None:
        self.num_samples = check_int(
            "num_samples", num_samples, minimum=0, hint="pass the number of samples N"
        )
        self.dtype: np.dtype[Any] = _check_dtype(dtype)
        self.memory_budget_bytes = check_memory_budget(memory_budget_bytes)
        self.keep_epochs = check_bool("keep_epochs", keep_epochs)
        self.directory: Path | None = check_path("directory", directory)
        #: finite losses beyond the dtype's range (stored clipped to it): at the last append, and in all
        self.clipped_last_epoch = 0
        self.clipped_total = 0
        self.has_correct: bool | None = None
        self.num_epochs = 0
        self._losses: list[np.ndarray] = []  # in-memory copies while under budget
        self._correct: list[np.ndarray] = []
        self._in_memory = True
        self._deferred_writes = False  # epoch files handed to append's `write`
        self._accumulator = TrajectoryAccumulator(self.num_samples)

    # -- properties ------------------------------------------------------------------------
    @property
    def on_disk(self) -> bool:
        """Whether epochs are read back from disk (memory-mapped) rather than held in memory."""
        return not self._in_memory

    @property
    def bytes_per_epoch(self) -> int:
        """Bytes one epoch takes: ``N`` losses plus ``N`` correctness bytes when tracked."""
        return self.num_samples * (self.dtype.itemsize + (1 if self.has_correct else 0))

    @property
    def nbytes_in_memory(self) -> int:
        """Bytes of epoch arrays currently held in memory (0 once on disk)."""
        return sum(a.nbytes for a in self._losses) + sum(a.nbytes for a in self._correct)

    def epoch_path(self, epoch: int, kind: str = "epoch") -> Path:
        """Path of epoch ``epoch``'s file (``kind`` is ``"epoch"`` or ``"correct"``)."""
        if self.directory is None:
            raise RuntimeError(
                "this TrajectoryStore has no directory; pass `directory=` to write epoch files"
            )
        return self.directory / f"{kind}_{epoch:04d}.npy"

    # -- writing -----------------------------------------------------------------------------
    def append(self, losses: Any, correct: Any = None, *, write: Callable[..., Any] | None = None) -> int:
        """Add one epoch: ``losses`` ``[N]`` (NaN = not visited), optional ``correct`` ``[N]`` bool.

        Non-finite losses (inf, NaN) are stored as NaN, i.e. as not visited. Finite losses beyond
        the dtype's range are clipped to it (float16 saturates at 65504), counted in
        ``clipped_last_epoch`` / ``clipped_total`` and warned about once per store (pass
        ``dtype="float32"`` to keep them).

        Args:
            losses: ``[N]`` float array or tensor.
            correct: ``[N]`` bool (or 0/1) array or tensor, or ``None``; give it at every epoch or
                at none.
            write: who writes this epoch's files while the store holds its epochs in memory, called
                as ``write(save_npy, path, array)`` (e.g. to run it on a background thread; the
                array is never modified). ``None`` writes them before returning, as does a store
                that reads its epochs from disk; one that moves to disk rewrites the epochs it held.

        Returns:
            The new epoch's column index.

        Raises:
            ValueError: wrong shape, or correctness given at some epochs and not others.
        """
        column = self._as_column(losses)
        correct_column = None if correct is None else self._as_correct(correct)
        has = correct_column is not None
        if self.has_correct is None:
            self.has_correct = has
        elif self.has_correct != has:
            raise ValueError(
                f"`correct` was {'given' if self.has_correct else 'None'} at earlier epochs but is "
                f"{'given' if has else 'None'} now; pass it at every epoch or at none"
            )
        epoch = self.num_epochs
        if self.keep_epochs:
            spill = self._in_memory and (epoch + 1) * self.bytes_per_epoch > self.memory_budget_bytes
            if self.directory is not None:
                deferred = write is not None and self._in_memory and not spill
                save = write if deferred else _save_now
                assert save is not None
                save(save_npy, self.epoch_path(epoch), column)
                if correct_column is not None:
                    save(save_npy, self.epoch_path(epoch, "correct"), correct_column)
                self._deferred_writes |= deferred
            if spill:
                self._spill(pending=(column, correct_column))
            elif self._in_memory:
                self._losses.append(column)
                if correct_column is not None:
                    self._correct.append(correct_column)
        self._accumulator.update(column, correct_column)
        self.num_epochs += 1
        return epoch

    def _as_column(self, losses: Any) -> np.ndarray:
        if isinstance(losses, torch.Tensor):
            losses = losses.detach().float().cpu().numpy()
        array = np.asarray(losses, dtype=np.float64)
        if array.shape != (self.num_samples,):
            raise ValueError(
                f"`losses` must have shape ({self.num_samples},) (one value per sample, NaN where not "
                f"visited), got {array.shape}"
            )
        array = np.where(np.isfinite(array), array, np.nan)
        info = np.finfo(self.dtype)
        with np.errstate(invalid="ignore"):
            clipped = int(np.count_nonzero(np.abs(array) > float(info.max)))
        self.clipped_last_epoch = clipped
        if clipped:
            if self.clipped_total == 0:
                warnings.warn(
                    f"TrajectoryStore: {clipped} finite loss(es) exceed the {self.dtype.name} range "
                    f"(|loss| > {float(info.max):g}) and are stored clipped to it; pass dtype='float32' to keep "
                    "them (counted in `clipped_total`; LossTrajectoryTracker logs mem/traj/clipped)",
                    stacklevel=3,
                )
            self.clipped_total += clipped
        return np.clip(array, float(info.min), float(info.max)).astype(self.dtype)

    def _as_correct(self, correct: Any) -> np.ndarray:
        if isinstance(correct, torch.Tensor):
            correct = correct.detach().cpu().numpy()
        array = np.asarray(correct)
        if array.shape != (self.num_samples,):
            raise ValueError(f"`correct` must have shape ({self.num_samples},), got {array.shape}")
        return array.astype(bool)

    def _spill(self, pending: tuple[np.ndarray, np.ndarray | None] | None = None) -> None:
        """Move every in-memory epoch to disk and read epochs memory-mapped from now on."""
        # epochs whose files another thread may still be writing are written here (atomically: the
        # same bytes, whichever rename lands last)
        rewrite, self._deferred_writes = self._deferred_writes, False
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="memcallbacks-trajectory-"))
            warnings.warn(
                f"TrajectoryStore exceeded its memory budget of {self.memory_budget_bytes} bytes and has no "
                f"directory; spilling epochs to {self.directory}. Pass `directory=` to choose where.",
                stacklevel=3,
            )
            rewrite = True
            if pending is not None:
                save_npy(self.epoch_path(self.num_epochs), pending[0])
                if pending[1] is not None:
                    save_npy(self.epoch_path(self.num_epochs, "correct"), pending[1])
        if rewrite:
            for j, column in enumerate(self._losses):
                save_npy(self.epoch_path(j), column)
            for j, column in enumerate(self._correct):
                save_npy(self.epoch_path(j, "correct"), column)
        self._losses = []
        self._correct = []
        self._in_memory = False

    # -- reading -----------------------------------------------------------------------------
    def _check_epoch(self, epoch: int) -> int:
        if not self.keep_epochs:
            raise RuntimeError(
                "this TrajectoryStore keeps statistics only (keep_epochs=False, a non-zero rank of a "
                "distributed run); read epochs on global rank 0 or from the run directory"
            )
        if not -self.num_epochs <= epoch < self.num_epochs:
            raise IndexError(f"epoch {epoch} out of range: {self.num_epochs} epoch(s) recorded")
        return epoch % self.num_epochs

    def epoch(self, epoch: int) -> np.ndarray:
        """Losses of every sample at recorded epoch ``epoch``, ``[N]`` (read-only memmap on disk)."""
        j = self._check_epoch(epoch)
        if self._in_memory:
            return self._losses[j]
        return load_npy(self.epoch_path(j), mmap=True)

    def correct_epoch(self, epoch: int) -> np.ndarray | None:
        """Correctness of every sample at recorded epoch ``epoch``, ``[N]`` bool, or ``None``."""
        j = self._check_epoch(epoch)
        if not self.has_correct:
            return None
        if self._in_memory:
            return self._correct[j]
        return load_npy(self.epoch_path(j, "correct"), mmap=True)

    def iter_epochs(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Yield ``(losses [N], correct [N] | None)`` per recorded epoch, one epoch in memory at a time."""
        for j in range(self.num_epochs):
            yield self.epoch(j), self.correct_epoch(j)

    def matrix(self) -> np.ndarray:
        """The whole ``[N, E]`` loss matrix in memory (for large disk stores prefer :meth:`trajectories`)."""
        if self.num_epochs == 0:
            self._check_keep()
            return np.zeros((self.num_samples, 0), dtype=self.dtype)
        return np.stack([self.epoch(j) for j in range(self.num_epochs)], axis=1)

    def correct_matrix(self) -> np.ndarray | None:
        """The ``[N, E]`` correctness matrix, or ``None`` when correctness is not tracked."""
        if not self.has_correct:
            return None
        return np.stack([np.asarray(self.correct_epoch(j)) for j in range(self.num_epochs)], axis=1)

    def trajectories(self, indices: Any) -> np.ndarray:
        """Trajectories of some samples, ``[len(indices), E]`` float32; reads only those rows."""
        self._check_keep()
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < -self.num_samples or rows.max() >= self.num_samples):
            raise IndexError(f"`indices` must lie in [0, {self.num_samples}), got {rows.min()}..{rows.max()}")
        out = np.empty((rows.size, self.num_epochs), dtype=np.float32)
        for j in range(self.num_epochs):
            out[:, j] = self.epoch(j)[rows]
        return out

    def _check_keep(self) -> None:
        if not self.keep_epochs:
            self._check_epoch(0)

    def statistics(self) -> TrajectoryStatistics:
        """Streamed per-sample statistics of the recorded epochs (memory O(N)).

        Returns:
            The :class:`~memcallbacks.metrics.TrajectoryStatistics` of the stored values; equal to
            ``trajectory_statistics(self.matrix(), self.correct_matrix())``.
        """
        return self._accumulator.compute()

    # -- maintenance -----------------------------------------------------------------------------
    def _epoch_files(self) -> list[tuple[int, Path]]:
        if self.directory is None or not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            match = _EPOCH_RE.match(path.name)
            if match:
                found.append((int(match.group(2)), path))
        return sorted(found)

    def discard_files_from(self, epoch: int) -> int:
        """Delete this directory's epoch files of epochs ``>= epoch``; returns how many were removed."""
        removed = 0
        for j, path in self._epoch_files():
            if j >= epoch:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def _rebuild(self) -> None:
        """Recompute the streamed statistics from the stored epochs."""
        self._accumulator = TrajectoryAccumulator(self.num_samples)
        if self.num_epochs == 0:
            return
        for column, correct in self.iter_epochs():
            self._accumulator.update(np.asarray(column), None if correct is None else np.asarray(correct))

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain state (tensors and primitives; loads with ``torch.load(weights_only=True)``).

        In memory: the arrays themselves (``losses`` ``[N, E]``, ``correct``). On disk: only the
        directory and epoch count; the epoch files are the data.
        """
        state: dict[str, Any] = {
            "num_samples": self.num_samples,
            "num_epochs": self.num_epochs,
            "dtype": self.dtype.name,
            "has_correct": -1 if self.has_correct is None else int(self.has_correct),
            "directory": "" if self.directory is None else str(self.directory.resolve()),
            "in_memory": bool(self._in_memory and self.keep_epochs),
        }
        if self._in_memory and self.keep_epochs:
            state["losses"] = torch.from_numpy(np.ascontiguousarray(self.matrix()))
            if self.has_correct:
                state["correct"] = torch.from_numpy(np.ascontiguousarray(self.correct_matrix()))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; this store's directory then holds exactly those epochs.

        Raises:
            ValueError: ``num_samples`` or ``dtype`` differs from this store's.
            FileNotFoundError: the checkpoint references epoch files that no longer exist.
        """
        self._check_state_matches(state)
        count = int(state.get("num_epochs", 0))
        has = int(state.get("has_correct", -1))
        self.has_correct = None if has < 0 else bool(has)
        self._losses, self._correct, self._in_memory = [], [], True
        self.num_epochs = 0
        self._accumulator = TrajectoryAccumulator(self.num_samples)
        if "losses" in state:
            self._load_arrays(state, count)
            return
        source = Path(str(state.get("directory", "")))
        if count and not str(state.get("directory", "")):
            raise ValueError("the checkpoint's store holds neither arrays nor a directory")
        for j in range(count):
            if not (source / f"epoch_{j:04d}.npy").is_file():
                raise FileNotFoundError(
                    f"the checkpoint references {count} epoch file(s) in {str(source)!r}, but "
                    f"epoch_{j:04d}.npy is missing; restore the run directory next to the checkpoint"
                )
        if self.keep_epochs:
            self._load_directory(source, count)
        else:
            self._load_streamed(source, count)

    def _check_state_matches(self, state: dict[str, Any]) -> None:
        """Refuse a checkpoint's store of another size or dtype."""
        n = int(state.get("num_samples", self.num_samples))
        if n != self.num_samples:
            raise ValueError(f"the checkpoint's store has num_samples={n}, this store {self.num_samples}")
        dtype = str(state.get("dtype", self.dtype.name))
        if dtype != self.dtype.name:
            raise ValueError(
                f"the checkpoint's store has dtype {dtype}, this store {self.dtype.name}; pass dtype={dtype!r}"
            )

    def _load_arrays(self, state: dict[str, Any], count: int) -> None:
        """Restore from the arrays a checkpoint holds (an in-memory store)."""
        losses = np.asarray(torch.as_tensor(state["losses"]).numpy())
        correct = state.get("correct")
        correct_np = None if correct is None else np.asarray(torch.as_tensor(correct).numpy())
        if losses.shape != (self.num_samples, count):
            raise ValueError(
                f"the checkpoint's losses have shape {losses.shape}, expected {(self.num_samples, count)}"
            )
        self.discard_files_from(0)
        has_flag = self.has_correct
        self.has_correct = None
        for j in range(count):
            self.append(losses[:, j], None if correct_np is None else correct_np[:, j])
        if count == 0:
            self.has_correct = has_flag

    def _load_streamed(self, source: Path, count: int) -> None:
        """Statistics-only store: stream the referenced epoch files into the accumulator, keep nothing."""
        for j in range(count):
            column = load_npy(source / f"epoch_{j:04d}.npy", mmap=True)
            corr = load_npy(source / f"correct_{j:04d}.npy", mmap=True) if self.has_correct else None
            self._accumulator.update(np.asarray(column), None if corr is None else np.asarray(corr))
        self.num_epochs = count

    def _load_directory(self, source: Path, count: int) -> None:
        """Take the referenced epoch files into this store's directory (linked or copied), then reload."""
        if self.directory is None:
            self.directory = source
        target = self.directory
        same = target.resolve() == source.resolve() if target.exists() else False
        if same:
            self.discard_files_from(count)
        else:
            self.discard_files_from(0)
            target.mkdir(parents=True, exist_ok=True)
            for j in range(count):
                for kind in ("epoch", "correct") if self.has_correct else ("epoch",):
                    _link_or_copy(source / f"{kind}_{j:04d}.npy", target / f"{kind}_{j:04d}.npy")
        self.num_epochs = count
        self._in_memory = False
        if count * self.bytes_per_epoch <= self.memory_budget_bytes:
            self._losses = [np.array(load_npy(self.epoch_path(j))) for j in range(count)]
            if self.has_correct:
                self._correct = [np.array(load_npy(self.epoch_path(j, "correct"))) for j in range(count)]
            self._in_memory = True
        self._rebuild()

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, memory_budget_bytes: int = 0) -> TrajectoryStore:
        """Open the epoch files of a run directory read-back (e.g. for an offline report).

        Args:
            directory: a folder with ``epoch_0000.npy``, ``epoch_0001.npy``, ... (contiguous).
            memory_budget_bytes: load into memory when the store fits (default: memory-map).

        Raises:
            FileNotFoundError: no epoch files, or a gap in their numbering.
        """
        folder = Path(directory)
        probe = cls(0, directory=folder)
        files = [j for j, p in probe._epoch_files() if p.name.startswith("epoch_")]
        if not files:
            raise FileNotFoundError(f"no epoch_XXXX.npy files in {str(folder)!r}")
        if files != list(range(len(files))):
            missing = sorted(set(range(max(files) + 1)) - set(files))
            raise FileNotFoundError(
                f"epoch files in {str(folder)!r} are not contiguous; missing {missing[:5]}"
            )
        first = load_npy(folder / "epoch_0000.npy", mmap=True)
        has = (folder / "correct_0000.npy").is_file()
        store = cls(
            first.shape[0], directory=folder, dtype=first.dtype, memory_budget_bytes=memory_budget_bytes
        )
        store.load_state_dict(
            {
                "num_samples": first.shape[0],
                "num_epochs": len(files),
                "dtype": first.dtype.name,
                "has_correct": int(has),
                "directory": str(folder),
            }
        )
        return store

    def __repr__(self) -> str:
        where = "memory" if self._in_memory else f"disk:{self.directory}"
        return (
            f"TrajectoryStore(num_samples={self.num_samples}, num_epochs={self.num_epochs}, "
            f"dtype={self.dtype.name}, {where})"
        )


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (O(1) on one filesystem), else copy it to a temp name and rename."""
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
