"""The run directory's schema: one writer and one reader per callback's files.

Every file a callback writes to the run directory (``<trainer.log_dir>/memcallbacks`` unless
``run_dir=`` is given) is named and written here, and read back here by the report, so a file
name or key lives in one place. Writers take exactly the arrays and dicts the callbacks build
and write them atomically through :mod:`memcallbacks.utilities.fileio` (never pickle); readers check that a
file holds what its writer puts there and raise :class:`RunDirectoryError` naming the file
otherwise.

Layout (a callback given ``name="x"`` writes to ``<folder>_x`` instead, for every folder below:
:func:`monitor_folder` is the rule, and :meth:`RunDirectory.folders` finds them all)::

    <run_dir>/
      trajectory/  epoch_XXXX.npy, correct_XXXX.npy   one column of the [N, E] loss matrix per
                                                      recorded epoch (TrajectoryStore)
                   statistics.npz, meta.json          per-sample statistics, settings
      membership/  losses.npz, metrics.json           probe losses per evaluation, logged values
      canary/      exposure.npz, secrets.json         exposures per evaluation; secrets only
                                                      with log_secrets=True
      audit/       inclusion.npz, epoch_XXXX.npz,     inclusion mask, scores and guesses per
                   audit.json                         evaluation, settings and history
      dp/          dp.json                            accountant, delta, epsilon per epoch
      sequence/    sequences.npz, metrics.json        extraction and LM membership scores
      stopping.json, stopping_best_safe.*             the early-stopping decision, safe weights
      shadow/      inclusion.npz, scores.npz          a shadow run (ShadowScoreRecorder)
      attack/      attack.json, roc.png               ``memcallbacks attack`` over shadow runs
                                                      (``attack_offline/`` with ``--offline``; any
                                                      ``attack_<x>/`` is read too)
      report/                                         ``memcallbacks report`` output

Format versions: every summary a writer produces carries ``"format": FORMAT_VERSION`` (the JSON
files ``meta.json``, ``metrics.json``, ``audit.json``, ``dp.json``, ``stopping.json``; the shadow
files ``inclusion.npz`` and ``scores.npz`` hold a ``format`` array; ``attack.json`` has its own
``format``/``version`` pair). Readers take a file without the field as version 1 and refuse a newer
version with a :class:`RunDirectoryError` naming the file.

Example:
    >>> import tempfile, numpy as np
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = write_dp(root / DP, {"accountant": "rdp", "delta": 1e-5, "poisson_sampling": True,
    ...                          "history": [{"epoch": 0, "epsilon": 0.5, "steps": 10}]})
    >>> RunDirectory(root).dp().epsilon.tolist()
    [0.5]
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memcallbacks.metrics.exposure import mean_by_repetition
from memcallbacks.utilities import fileio

__all__ = [
    "ATTACK",
    "ATTACK_FORMAT_VERSION",
    "AUDIT",
    "BEST_SAFE_FILE",
    "CANARY",
    "DP",
    "FORMAT_VERSION",
    "MEMBERSHIP",
    "MONITOR_FOLDERS",
    "REPORT",
    "SEQUENCE",
    "SHADOW",
    "STOPPING_FILE",
    "TRAJECTORY",
    "AttackFiles",
    "AttackRow",
    "AuditFiles",
    "DPFiles",
    "ExposureFiles",
    "MembershipFiles",
    "RunDirectory",
    "RunDirectoryError",
    "SequenceFiles",
    "ShadowFiles",
    "StoppingFiles",
    "TrajectoryFiles",
    "as_number",
    "check_format",
    "find_run_dir",
    "mean_by_repetition",
    "monitor_folder",
    "read_attack",
    "read_best_safe",
    "read_shadow_inclusion",
    "read_shadow_scores",
    "write_attack",
    "write_audit_epoch",
    "write_audit_inclusion",
    "write_audit_summary",
    "write_best_safe",
    "write_dp",
    "write_exposure",
    "write_membership",
    "write_sequence",
    "write_shadow_inclusion",
    "write_shadow_scores",
    "write_stopping",
    "write_trajectory_summary",
]

# folder of each callback below the run directory (the callbacks' ``subdir``)
TRAJECTORY = "trajectory"
MEMBERSHIP = "membership"
CANARY = "canary"
AUDIT = "audit"
DP = "dp"
SEQUENCE = "sequence"
REPORT = "report"
SHADOW = "shadow"
SHADOW_INCLUSION = "inclusion.npz"
SHADOW_SCORES = "scores.npz"
ATTACK = "attack"
ATTACK_FILE = "attack.json"
ATTACK_FIGURE = "roc.png"
#: the ``version`` field of ``attack.json`` this memcallbacks writes and reads
ATTACK_FORMAT_VERSION = 1
#: the ``format`` field of every other summary file this memcallbacks writes (and the newest it reads)
FORMAT_VERSION = 1
STOPPING_FILE = "stopping.json"
#: the safe weights of ``LeakageEarlyStopping(save_best_safe=True)`` (safetensors: tensors only, no pickle)
BEST_SAFE_FILE = "stopping_best_safe.safetensors"
#: what marks a folder as a run directory (any one of them)
MARKERS = (
    TRAJECTORY,
    MEMBERSHIP,
    CANARY,
    AUDIT,
    DP,
    SEQUENCE,
    STOPPING_FILE,
    f"{SHADOW}/{SHADOW_INCLUSION}",
    f"{ATTACK}/{ATTACK_FILE}",
)
#: every monitor's folder; a monitor given ``name=`` writes ``<folder>_<name>`` (:func:`monitor_folder`)
MONITOR_FOLDERS = (TRAJECTORY, MEMBERSHIP, CANARY, AUDIT, DP, SEQUENCE, SHADOW)


class RunDirectoryError(ValueError):
    """A run-directory file is unreadable or lacks what its writer puts there.

    Attributes:
        path: the file.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str, fix: str | None = None) -> None:
        self.path = Path(path)
        super().__init__(
            f"{str(self.path)!r}: {problem}; "
            + (
                fix
                or "this file is written by memcallbacks and was changed or cut short (a copy interrupted, a "
                "full disk): restore it, or delete it to leave its section out"
            )
        )


def monitor_folder(subdir: str, name: str | None = None) -> str:
    """The folder of a monitor below the run directory: ``subdir``, or ``<subdir>_<name>`` when named.

    Characters other than letters, digits, ``-``, ``_`` and ``.`` in ``name`` become ``_``, so a
    name never leaves the run directory.

    Example:
        >>> monitor_folder(CANARY), monitor_folder(CANARY, "test set/v2")
        ('canary', 'canary_test_set_v2')
    """
    if name is None:
        return subdir
    return f"{subdir}_{''.join(c if c.isalnum() or c in '-_.' else '_' for c in str(name))}"


def _stamped(summary: Mapping[str, Any]) -> dict[str, Any]:
    """``summary`` with ``"format": FORMAT_VERSION`` first."""
    return {"format": FORMAT_VERSION, **{k: v for k, v in summary.items() if k != "format"}}


# -- writers (called by the callbacks on rank 0) ---------------------------------------------
def write_trajectory_summary(
    folder: Path, arrays: Mapping[str, Any], meta: Mapping[str, Any], *, durable: bool = True
) -> None:
    """``statistics.npz`` (uncompressed: zlib on float64 costs ~6 ms per 1,000 samples) and ``meta.json``.

    The epoch files ``epoch_XXXX.npy`` / ``correct_XXXX.npy`` are the
    :class:`~memcallbacks.data.store.TrajectoryStore`'s own. Both summary files are derived from
    them, so the per-epoch versions are replaced atomically without waiting for the disk
    (``durable=False``; :func:`sync_trajectory_summary` flushes the last one at fit end).
    """
    fileio.save_npz(Path(folder) / "statistics.npz", compress=False, durable=durable, **arrays)
    fileio.save_json(Path(folder) / "meta.json", _stamped(meta), durable=durable)


def sync_trajectory_summary(folder: Path) -> None:
    """Flush the summary files of :func:`write_trajectory_summary` to disk (where they exist)."""
    for name in ("statistics.npz", "meta.json"):
        if (Path(folder) / name).exists():
            fileio.fsync_file(Path(folder) / name)


def write_membership(folder: Path, arrays: Mapping[str, Any], summary: Mapping[str, Any]) -> None:
    """``losses.npz`` (uncompressed) and ``metrics.json`` (``{"history": [...], "fprs": ..., ...}``)."""
    fileio.save_npz(Path(folder) / "losses.npz", compress=False, **arrays)
    fileio.save_json(Path(folder) / "metrics.json", _stamped(summary))


def write_sequence(folder: Path, arrays: Mapping[str, Any], summary: Mapping[str, Any]) -> None:
    """``sequences.npz`` (uncompressed) and ``metrics.json`` (``{"history": [...], ...}``)."""
    fileio.save_npz(Path(folder) / "sequences.npz", compress=False, **arrays)
    fileio.save_json(Path(folder) / "metrics.json", _stamped(summary))


def write_exposure(folder: Path, arrays: Mapping[str, Any], secrets: Mapping[str, str] | None = None) -> None:
    """``exposure.npz`` (compressed) and, only when ``secrets`` is given, ``secrets.json`` (id -> secret)."""
    fileio.save_npz(Path(folder) / "exposure.npz", **arrays)
    if secrets is not None:
        fileio.save_json(Path(folder) / "secrets.json", dict(secrets))


def write_shadow_inclusion(
    folder: Path, split: Any, fingerprint: str, *, label_fingerprint: str | None = None
) -> None:
    """A shadow run's ``inclusion.npz``: its half of the pool and the pool's fingerprint(s).

    ``split`` is a :class:`~memcallbacks.callbacks.shadow.ShadowSplit` (``inclusion``,
    ``run_index``, ``num_runs``, ``seed``, ``keep_fraction``); ``num_runs`` None is stored as -1.
    """
    arrays: dict[str, Any] = {
        "format": np.int64(FORMAT_VERSION),
        "inclusion": split.inclusion,
        "fingerprint": np.array(fingerprint),
        "pool_size": np.int64(split.inclusion.size),
        "run_index": np.int64(split.run_index),
        "num_runs": np.int64(-1 if split.num_runs is None else split.num_runs),
        "seed": np.int64(split.seed),
        "keep_fraction": np.float64(split.keep_fraction),
    }
    if label_fingerprint is not None:
        arrays["label_fingerprint"] = np.array(label_fingerprint)
    fileio.save_npz(Path(folder) / SHADOW_INCLUSION, **arrays)


def write_shadow_scores(
    folder: Path,
    scores: Any,
    *,
    score_kind: str,
    fingerprint: str,
    correct: Any = None,
    epochs_completed: int | None = None,
    global_step: int | None = None,
) -> None:
    """A shadow run's ``scores.npz``: every pool sample's score (float32) at the end of fit, its
    kind, the pool fingerprint, and optionally per-sample correctness and where training stopped."""
    arrays: dict[str, Any] = {
        "format": np.int64(FORMAT_VERSION),
        "scores": np.asarray(scores, dtype=np.float32),
        "score_kind": np.array(score_kind),
        "fingerprint": np.array(fingerprint),
    }
    if correct is not None:
        arrays["correct"] = np.asarray(correct, dtype=bool)
    if epochs_completed is not None:
        arrays["epochs_completed"] = np.int64(epochs_completed)
    if global_step is not None:
        arrays["global_step"] = np.int64(global_step)
    fileio.save_npz(Path(folder) / SHADOW_SCORES, **arrays)


def write_audit_inclusion(folder: Path, included: Any, seed: int) -> None:
    """``inclusion.npz``: the ``included`` mask and the ``seed`` that drew it."""
    fileio.save_npz(Path(folder) / "inclusion.npz", included=included, seed=np.int64(seed))


def write_audit_epoch(folder: Path, epoch: int, *, scores: Any, guesses: Any, included: Any) -> None:
    """``epoch_XXXX.npz``: one evaluation's ``scores``, ``guesses`` and ``included``."""
    fileio.save_npz(
        Path(folder) / f"epoch_{int(epoch):04d}.npz", scores=scores, guesses=guesses, included=included
    )


def write_audit_summary(folder: Path, summary: Mapping[str, Any]) -> None:
    """``audit.json``: the settings and the ``history`` of counts and bounds."""
    fileio.save_json(Path(folder) / "audit.json", _stamped(summary))


def write_dp(folder: Path, summary: Mapping[str, Any]) -> None:
    """``dp.json``: accountant, delta, Poisson sampling, ``history`` of epsilon and steps per epoch."""
    fileio.save_json(Path(folder) / "dp.json", _stamped(summary))


def write_attack(folder: Path, summary: Mapping[str, Any], roc_png: bytes) -> dict[str, Path]:
    """``attack.json`` (the summary, stamped with ``format``/``version``), then the figure ``roc.png``.

    The JSON is written first, so a failure later (the figure, a tracker) never loses the numbers.
    """
    stamped = {"format": "memcallbacks.offline.attack", "version": ATTACK_FORMAT_VERSION, **dict(summary)}
    stamped["figure"] = ATTACK_FIGURE
    stamped["order"] = [str(label) for label in summary.get("attacks", {})]  # the JSON's keys are sorted
    json_path = fileio.save_json(Path(folder) / ATTACK_FILE, stamped)
    png_path = fileio.atomic_write_bytes(Path(folder) / ATTACK_FIGURE, roc_png)
    return {"json": json_path, "png": png_path}


def write_stopping(root: Path, info: Mapping[str, Any]) -> None:
    """``<root>/stopping.json``: the early-stopping decision (``stopped_epoch``, ``reason``, ...)."""
    fileio.save_json(Path(root) / STOPPING_FILE, _stamped(info))


def write_best_safe(path: str | os.PathLike[str], weights: Mapping[str, Any]) -> Path:
    """The early-stopping safe weights (a state dict of tensors) as safetensors, atomically.

    Returns:
        The path written.
    """
    from safetensors.torch import save as safetensors_save

    return fileio.atomic_write_bytes(
        Path(path), safetensors_save({k: v.contiguous() for k, v in weights.items()})
    )


def read_best_safe(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The safe weights :func:`write_best_safe` wrote (CPU tensors), or ``None`` if the file is gone.

    A ``.pt`` file from an older memcallbacks is read with ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    if not path.exists():
        return None
    if path.suffix == ".pt":
        import torch

        return dict(torch.load(path, map_location="cpu", weights_only=True))
    from safetensors.torch import load_file

    return dict(load_file(str(path), device="cpu"))


# -- reading helpers ---------------------------------------------------------------------------
def _load_npz(path: Path, required: Sequence[str]) -> dict[str, np.ndarray]:
    try:
        arrays = fileio.load_npz(path)
    except (OSError, EOFError, zipfile.BadZipFile, ValueError, KeyError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise RunDirectoryError(path, f"not a readable .npz archive ({type(e).__name__}: {e})") from e
    missing = [k for k in required if k not in arrays]
    if missing:
        raise RunDirectoryError(path, f"lacks the array(s) {missing} (it holds {sorted(arrays)})")
    return arrays


def check_format(path: str | os.PathLike[str], value: Any) -> int:
    """The format version a summary file declares (``None``: written before the field, read as 1).

    Raises:
        RunDirectoryError: the version is not an integer, or is newer than :data:`FORMAT_VERSION`
            (the message names the file).
    """
    if value is None:
        return 1
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise RunDirectoryError(path, f"declares the format {value!r}, not a version number")
    if value > FORMAT_VERSION:
        raise RunDirectoryError(
            path,
            f"was written in format version {int(value)}, newer than this memcallbacks reads ({FORMAT_VERSION})",
            fix="upgrade memcallbacks to read it",
        )
    return int(value)


def _load_json(path: Path, required: Sequence[str] = (), *, versioned: bool = True) -> dict[str, Any]:
    try:
        obj = fileio.load_json(path)
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunDirectoryError(path, f"not readable JSON ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise RunDirectoryError(path, f"holds a JSON {type(obj).__name__}, not an object")
    if versioned:
        check_format(path, obj.get("format"))
    missing = [k for k in required if k not in obj]
    if missing:
        raise RunDirectoryError(path, f"lacks the field(s) {missing}")
    return obj


def _history(path: Path, obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = obj.get("history", [])
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "epoch" in r for r in rows):
        raise RunDirectoryError(path, "`history` must be a list of objects with an `epoch`")
    return [dict(r) for r in rows]


def as_number(value: Any) -> float:
    """A JSON value as a float; ``null`` (how NaN/inf are written) reads as NaN, never as 0."""
    if value is None:
        return float("nan")
    return float(value)


def _rows(path: Path, arrays: Mapping[str, np.ndarray], n_epochs: int, *keys: str) -> None:
    for key in keys:
        if key in arrays and (arrays[key].ndim < 1 or arrays[key].shape[0] != n_epochs):
            raise RunDirectoryError(
                path, f"`{key}` has shape {arrays[key].shape}, expected one row per epoch ({n_epochs})"
            )


# -- readers -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrajectoryFiles:
    """``trajectory/``: per-sample statistics (``statistics.npz``) and settings (``meta.json``)."""

    folder: Path
    statistics: dict[str, np.ndarray]
    meta: dict[str, Any]

    @property
    def epochs(self) -> np.ndarray:
        return self.statistics["epochs"]

    @property
    def seen(self) -> np.ndarray:
        """Samples recorded at least once."""
        return self.statistics["count"] > 0

    @property
    def sample_ids(self) -> np.ndarray:
        return self.statistics.get("sample_ids", np.arange(len(self.statistics["count"])))

    def epoch_losses(self, j: int) -> np.ndarray:
        """Column ``j`` of the loss matrix (trainer epoch ``epochs[j]``), memory-mapped."""
        return fileio.load_npy(self.folder / f"epoch_{j:04d}.npy", mmap=True)

    @property
    def score_by(self) -> str:
        """The tracker's ranking score (``meta.json["score_by"]``; ``"mean_loss"`` when not recorded)."""
        return str(self.meta.get("score_by") or "mean_loss")

    def score(self, by: str | None = None) -> np.ndarray:
        """Memorisation score per sample, higher = more memorised; NaN for samples never recorded.

        ``by`` (default :attr:`score_by`): ``"mean_loss"`` (``score``, the mean loss),
        ``"min_loss"`` (``-min``), ``"low_loss"`` (``-last``), ``"loss_drop"`` (``first - last``)
        or ``"calibrated_loss"`` (``reference - min``), as
        :func:`memcallbacks.metrics.memorisation_score` defines them.

        Raises:
            RunDirectoryError: ``by`` is unknown, or ``statistics.npz`` lacks the arrays it needs.
        """
        by = self.score_by if by is None else by
        s = self.statistics
        needs = {
            "mean_loss": ("mean",),
            "min_loss": ("min",),
            "low_loss": ("last",),
            "loss_drop": ("first", "last"),
            "calibrated_loss": ("reference", "min"),
        }
        path = self.folder / "statistics.npz"
        if by not in needs:
            raise RunDirectoryError(
                self.folder / "meta.json", f"names the unknown score {by!r} (known: {sorted(needs)})"
            )
        missing = [k for k in needs[by] if k not in s]
        if missing:
            raise RunDirectoryError(path, f"lacks the array(s) {missing} that the score {by!r} needs")
        if by == "mean_loss":
            value = s["score"] if "score" in s else s["mean"]
        elif by == "min_loss":
            value = -s["min"]
        elif by == "low_loss":
            value = -s["last"]
        elif by == "calibrated_loss":
            value = s["reference"] - s["min"]
        else:
            value = s["first"] - s["last"]
        return np.where(self.seen, np.asarray(value, dtype=np.float64), np.nan)


@dataclass(frozen=True)
class MembershipFiles:
    """``membership/``: probe losses per evaluation and the values the monitor logged."""

    epochs: np.ndarray
    member_losses: np.ndarray
    nonmember_losses: np.ndarray
    arrays: dict[str, np.ndarray]
    history: list[dict[str, Any]]
    summary: dict[str, Any]

    def metric(self, key: str) -> np.ndarray:
        """A logged key (``mem/mia/auc``, ``mem/gap/loss``, ...) per evaluation; NaN where absent."""
        return np.array([as_number(row.get(key)) for row in self.history], dtype=np.float64)

    @property
    def fprs(self) -> tuple[float, ...]:
        return tuple(float(f) for f in self.summary.get("fprs", ()))


@dataclass(frozen=True)
class SequenceFiles:
    """``sequence/``: per-sample extraction and LM membership scores, and the logged values."""

    folder: Path
    arrays: dict[str, np.ndarray]
    history: list[dict[str, Any]]
    summary: dict[str, Any]

    def metric(self, key: str) -> np.ndarray:
        """A logged key (``mem/extract/exact_rate``, ...) per evaluation; NaN where absent."""
        return np.array([as_number(row.get(key)) for row in self.history], dtype=np.float64)


@dataclass(frozen=True)
class ExposureFiles:
    """``canary/exposure.npz`` (and ``secrets.json`` when it was written)."""

    arrays: dict[str, np.ndarray]
    secrets: dict[str, str] | None = None

    @property
    def epochs(self) -> np.ndarray:
        return self.arrays["epochs"]

    @property
    def repetitions(self) -> np.ndarray:
        return self.arrays["repetitions"]

    @property
    def exposure(self) -> np.ndarray:
        return self.arrays["exposure"]

    @property
    def log2_space_size(self) -> float:
        return float(self.arrays["log2_space_size"]) if "log2_space_size" in self.arrays else float("nan")

    @property
    def method(self) -> str:
        return str(self.arrays["method"]) if "method" in self.arrays else "unknown"

    def mean_by_repetition(self, row: int = -1) -> dict[int, float]:
        """Mean exposure per insertion count at evaluation ``row`` (the last by default)."""
        return mean_by_repetition(self.exposure[row], self.repetitions)


@dataclass(frozen=True)
class AuditFiles:
    """``audit/``: settings and history (``audit.json``), the inclusion mask, per-evaluation scores."""

    folder: Path
    summary: dict[str, Any]
    history: list[dict[str, Any]]

    @property
    def confidence(self) -> float:
        return 1.0 - float(self.summary.get("beta", 0.05))

    def epsilon_lb(self) -> np.ndarray:
        return np.array([as_number(h.get("epsilon_lb")) for h in self.history], dtype=np.float64)

    def inclusion(self) -> dict[str, np.ndarray]:
        return _load_npz(self.folder / "inclusion.npz", ("included", "seed"))

    def evaluation(self, epoch: int) -> dict[str, np.ndarray]:
        return _load_npz(self.folder / f"epoch_{int(epoch):04d}.npz", ("scores", "guesses", "included"))


@dataclass(frozen=True)
class DPFiles:
    """``dp/dp.json``."""

    summary: dict[str, Any]
    history: list[dict[str, Any]]

    @property
    def epsilon(self) -> np.ndarray:
        return np.array([as_number(h.get("epsilon")) for h in self.history], dtype=np.float64)


def read_shadow_inclusion(folder: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """A shadow run's ``inclusion.npz`` (:func:`write_shadow_inclusion`), its format checked.

    Raises:
        FileNotFoundError: the file is missing.
        RunDirectoryError: not a readable archive, a newer format, or without ``inclusion`` and
            ``fingerprint`` (the message names the file).
    """
    path = Path(folder) / SHADOW_INCLUSION
    arrays = _load_npz(path, ("inclusion", "fingerprint", "run_index"))
    check_format(path, arrays.get("format"))
    return arrays


def read_shadow_scores(folder: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """A shadow run's ``scores.npz`` (:func:`write_shadow_scores`), its format checked.

    Raises:
        FileNotFoundError: the file is missing.
        RunDirectoryError: not a readable archive, a newer format, or without ``scores`` and
            ``score_kind`` (the message names the file).
    """
    path = Path(folder) / SHADOW_SCORES
    arrays = _load_npz(path, ("scores", "score_kind"))
    check_format(path, arrays.get("format"))
    return arrays


@dataclass(frozen=True)
class ShadowFiles:
    """``shadow/``: the inclusion mask of a shadow run and, once fit ended, every pool sample's score."""

    folder: Path
    inclusion: dict[str, np.ndarray]
    scores: dict[str, np.ndarray] | None = None


@dataclass(frozen=True)
class StoppingFiles:
    """``stopping.json``: whether and why :class:`~memcallbacks.LeakageEarlyStopping` stopped the run."""

    info: dict[str, Any] = field(default_factory=dict)

    @property
    def stopped(self) -> bool:
        if "stopped" in self.info:
            return bool(self.info["stopped"])
        return self.info.get("stopped_epoch") is not None

    @property
    def restored_epoch(self) -> int | None:
        value = self.info.get("restored_epoch")
        return None if value is None else int(value)


@dataclass(frozen=True)
class AttackRow:
    """One attack of ``attack.json``: the numbers as written (``null`` read as NaN)."""

    label: str
    auc: float
    advantage: float
    tpr_at_fpr: dict[float, float]
    n_members: int
    n_nonmembers: int
    n_excluded: int
    per_target_auc: tuple[float, ...]


@dataclass(frozen=True)
class AttackFiles:
    """An ``attack/`` folder: ``attack.json`` (what ``memcallbacks attack`` measured) and ``roc.png``.

    Attributes:
        folder: the folder read.
        summary: the JSON object as written.
        rows: one :class:`AttackRow` per attack, in the file's order.
    """

    folder: Path
    summary: dict[str, Any]
    rows: tuple[AttackRow, ...]

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.summary["settings"])

    @property
    def fprs(self) -> tuple[float, ...]:
        return tuple(float(x) for x in self.summary["settings"]["fprs"])

    @property
    def runs(self) -> list[str]:
        return [str(r) for r in self.summary.get("runs", [])]

    @property
    def figure(self) -> Path | None:
        """``roc.png`` (log-log ROC of every attack), or ``None`` when it is missing."""
        path = self.folder / str(self.summary.get("figure") or ATTACK_FIGURE)
        return path if path.is_file() else None


def _attack_number(path: Path, label: str, entry: Mapping[str, Any], key: str) -> float:
    value = entry.get(key, ...)
    if value is ...:
        raise RunDirectoryError(path, f"attack {label!r} lacks the field {key!r}")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise RunDirectoryError(path, f"attack {label!r}: {key!r} is {value!r}, not a number")
    return as_number(value)


def _attack_row(file: Path, label: str, entry: Any, fprs: Sequence[float]) -> AttackRow:
    """One attack of ``attack.json``, checked: numbers or ``null``, counts that are counts."""
    from memcallbacks.metrics.membership import format_fpr

    if not isinstance(entry, dict):
        raise RunDirectoryError(file, f"attack {label!r} is a JSON {type(entry).__name__}, not an object")
    counts = [_attack_number(file, label, entry, k) for k in ("n_members", "n_nonmembers", "n_excluded")]
    if not all(math.isfinite(c) and c >= 0 for c in counts):
        raise RunDirectoryError(file, f"attack {label!r}: the sample counts {counts} are not counts")
    per_target = entry.get("per_target_auc", [])
    if not isinstance(per_target, list):
        raise RunDirectoryError(file, f"attack {label!r}: `per_target_auc` is not a list")
    return AttackRow(
        label=label,
        auc=_attack_number(file, label, entry, "auc"),
        advantage=_attack_number(file, label, entry, "advantage"),
        tpr_at_fpr={
            float(x): _attack_number(file, label, entry, f"tpr@{format_fpr(float(x))}fpr") for x in fprs
        },
        n_members=int(counts[0]),
        n_nonmembers=int(counts[1]),
        n_excluded=int(counts[2]),
        per_target_auc=tuple(as_number(v) for v in per_target),
    )


def read_attack(path: str | os.PathLike[str]) -> AttackFiles:
    """Read what ``memcallbacks attack`` wrote: a folder holding ``attack.json``, or the file itself.

    Raises:
        FileNotFoundError: no ``attack.json`` there.
        RunDirectoryError: the file is not readable JSON, was written by another format version, or
            lacks a field (the message names the file).
    """
    given = Path(path)
    file = given if given.name == ATTACK_FILE or given.is_file() else given / ATTACK_FILE
    if not file.is_file():
        raise FileNotFoundError(
            f"{str(given)!r} holds no {ATTACK_FILE}; pass the --out folder of `memcallbacks attack`"
        )
    obj = _load_json(file, versioned=False)  # its own format/version pair, checked here
    version = obj.get("version", ATTACK_FORMAT_VERSION)  # files from before the field: version 1
    if (
        obj.get("format", "memcallbacks.offline.attack") != "memcallbacks.offline.attack"
        or version != ATTACK_FORMAT_VERSION
    ):
        raise RunDirectoryError(
            file,
            f"is not an attack summary this memcallbacks reads (format {obj.get('format')!r}, version "
            f"{version!r}; this version reads format 'memcallbacks.offline.attack' version {ATTACK_FORMAT_VERSION})",
            fix="re-run `memcallbacks attack` on the shadow runs with this memcallbacks to rewrite it",
        )
    for key in ("settings", "attacks"):
        if not isinstance(obj.get(key), dict):
            raise RunDirectoryError(file, f"lacks the object {key!r}")
    fprs = obj["settings"].get("fprs")
    if not isinstance(fprs, list) or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < 1 for x in fprs
    ):
        raise RunDirectoryError(file, f"`settings.fprs` must be a list of rates in (0, 1), got {fprs!r}")
    if not obj["attacks"]:
        raise RunDirectoryError(file, "holds no attack")
    order = obj.get("order")
    labels = list(obj["attacks"])
    if isinstance(order, list) and sorted(map(str, order)) == sorted(labels):
        labels = [str(label) for label in order]
    rows = [_attack_row(file, str(label), obj["attacks"][label], fprs) for label in labels]
    return AttackFiles(file.parent, obj, tuple(rows))


class RunDirectory:
    """Read a run directory; each method returns ``None`` when that callback wrote nothing.

    Raises:
        RunDirectoryError: (from the methods) a file is unreadable or lacks what its writer puts
            there; the message names the file.

    Example:
        >>> run = RunDirectory("lightning_logs/version_0/memcallbacks")
        >>> run.membership() is None  # no MembershipInferenceMonitor wrote there
        True
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def folders(self, kind: str) -> list[str]:
        """The folders of ``kind`` (one of :data:`MONITOR_FOLDERS`): the default one first, then the
        ``<kind>_<name>`` folders of monitors given ``name=``, sorted.

        Raises:
            ValueError: ``kind`` is not a monitor folder.

        Example:
            >>> import tempfile
            >>> root = Path(tempfile.mkdtemp())
            >>> for sub in ("canary", "canary_b", "canary_a", "audit_x"):
            ...     (root / sub).mkdir()
            >>> RunDirectory(root).folders(CANARY), RunDirectory(root).folders(AUDIT)
            (['canary', 'canary_a', 'canary_b'], ['audit_x'])
        """
        if kind not in MONITOR_FOLDERS:
            raise ValueError(f"`kind` must be one of {', '.join(MONITOR_FOLDERS)}, got {kind!r}")
        names = sorted(p.name for p in self.root.glob(f"{kind}_*") if p.is_dir() and p.name != f"{kind}_")
        return ([kind] if (self.root / kind).is_dir() else []) + names

    def trajectory(self, subdir: str = TRAJECTORY) -> TrajectoryFiles | None:
        """The trajectory tracker's ``statistics.npz`` and ``meta.json`` in ``subdir``, or ``None``."""
        folder = self.root / subdir
        path = folder / "statistics.npz"
        if not path.exists():
            return None
        stats = _load_npz(path, ("epochs", "count", "mean", "variability"))
        n = len(stats["count"])
        for key, arr in stats.items():
            if key != "epochs" and arr.ndim >= 1 and arr.shape[0] != n:
                raise RunDirectoryError(path, f"`{key}` has {arr.shape[0]} rows, `count` has {n}")
        meta_path = folder / "meta.json"
        meta = _load_json(meta_path) if meta_path.exists() else {}
        return TrajectoryFiles(folder, stats, meta)

    def membership(self, subdir: str = MEMBERSHIP) -> MembershipFiles | None:
        """The membership monitor's ``losses.npz`` and ``metrics.json`` in ``subdir``, or ``None``."""
        folder = self.root / subdir
        path = folder / "losses.npz"
        if not path.exists():
            return None
        arrays = _load_npz(path, ("epochs", "member_losses", "nonmember_losses"))
        epochs = arrays["epochs"]
        _rows(path, arrays, len(epochs), "member_losses", "nonmember_losses")
        metrics_path = folder / "metrics.json"
        if not metrics_path.exists():
            raise RunDirectoryError(metrics_path, "is missing while losses.npz exists")
        summary = _load_json(metrics_path, ("history",))
        history = _history(metrics_path, summary)
        return MembershipFiles(
            epochs=epochs,
            member_losses=np.atleast_2d(arrays["member_losses"]),
            nonmember_losses=np.atleast_2d(arrays["nonmember_losses"]),
            arrays=arrays,
            history=history,
            summary=summary,
        )

    def sequence(self, subdir: str = SEQUENCE) -> SequenceFiles | None:
        """The sequence monitor's ``sequences.npz`` and ``metrics.json`` in ``subdir``, or ``None``."""
        folder = self.root / subdir
        path = folder / "sequences.npz"
        if not path.exists():
            return None
        arrays = _load_npz(path, ("epochs",))
        _rows(path, arrays, len(arrays["epochs"]), "member_loss", "nonmember_loss", "member_exact")
        metrics_path = folder / "metrics.json"
        if not metrics_path.exists():
            raise RunDirectoryError(metrics_path, "is missing while sequences.npz exists")
        summary = _load_json(metrics_path, ("history",))
        return SequenceFiles(folder, arrays, _history(metrics_path, summary), summary)

    def exposure(self, subdir: str = CANARY) -> ExposureFiles | None:
        """The canary monitor's ``exposure.npz`` (and ``secrets.json``) in ``subdir``, or ``None``."""
        folder = self.root / subdir
        path = folder / "exposure.npz"
        if not path.exists():
            return None
        arrays = _load_npz(path, ("epochs", "repetitions", "exposure"))
        _rows(path, arrays, len(arrays["epochs"]), "exposure", "rank", "log_perplexity")
        c = len(arrays["repetitions"])
        if arrays["exposure"].ndim != 2 or arrays["exposure"].shape[1] != c:
            raise RunDirectoryError(
                path, f"`exposure` has shape {arrays['exposure'].shape}, expected [epochs, {c} canaries]"
            )
        secrets_path = folder / "secrets.json"
        secrets = _load_json(secrets_path, versioned=False) if secrets_path.exists() else None
        return ExposureFiles(
            arrays, None if secrets is None else {str(k): str(v) for k, v in secrets.items()}
        )

    def audit(self, subdir: str = AUDIT) -> AuditFiles | None:
        """The audit monitor's ``audit.json`` in ``subdir`` (its ``.npz`` files read on demand), or ``None``."""
        folder = self.root / subdir
        path = folder / "audit.json"
        if not path.exists():
            return None
        summary = _load_json(path, ("num_canaries",))
        return AuditFiles(folder, summary, _history(path, summary))

    def dp(self, subdir: str = DP) -> DPFiles | None:
        """The DP monitor's ``dp.json`` in ``subdir``, or ``None``."""
        path = self.root / subdir / "dp.json"
        if not path.exists():
            return None
        summary = _load_json(path, ("delta",))
        return DPFiles(summary, _history(path, summary))

    def attack_folders(self) -> list[str]:
        """The folders ``memcallbacks attack`` wrote here: ``attack`` first, then ``attack_<x>``."""
        names = sorted(p.parent.name for p in self.root.glob(f"{ATTACK}_*/{ATTACK_FILE}"))
        return ([ATTACK] if (self.root / ATTACK / ATTACK_FILE).is_file() else []) + names

    def attack(self, subdir: str = ATTACK) -> AttackFiles | None:
        """What ``memcallbacks attack`` wrote to ``subdir`` (``attack.json``), or ``None``."""
        if not (self.root / subdir / ATTACK_FILE).is_file():
            return None
        return read_attack(self.root / subdir)

    def shadow(self, subdir: str = SHADOW) -> ShadowFiles | None:
        """A shadow run's files (``inclusion.npz``, and ``scores.npz`` once fit has ended)."""
        folder = self.root / subdir
        if not (folder / SHADOW_INCLUSION).is_file():
            return None
        scores = read_shadow_scores(folder) if (folder / SHADOW_SCORES).is_file() else None
        return ShadowFiles(folder, read_shadow_inclusion(folder), scores)

    def stopping(self) -> StoppingFiles | None:
        """The early-stopping decision (``stopping.json``), or ``None``."""
        path = self.root / STOPPING_FILE
        if not path.exists():
            return None
        return StoppingFiles(_load_json(path))


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds anything a memcallbacks callback writes."""
    if any((path / m).exists() for m in MARKERS):
        return True
    return any(p.is_dir() for kind in MONITOR_FOLDERS for p in path.glob(f"{kind}_*"))


def find_run_dir(path: str | os.PathLike[str]) -> Path:
    """The memcallbacks run directory at or below ``path`` (a folder holding the callbacks' folders).

    Accepts the run directory itself, a folder holding ``memcallbacks/`` (the demo's ``--out``,
    a Lightning ``version_N`` folder), or a parent of several runs (``lightning_logs``), where the
    most recently written run is taken.

    Raises:
        FileNotFoundError: ``path`` does not exist, or nothing the callbacks write was found there.
        NotADirectoryError: ``path`` is a file.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"`run_dir` {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"`run_dir` {str(root)!r} is a file; pass the folder the callbacks wrote")
    if is_run_dir(root):
        return root
    if (root / "memcallbacks").is_dir() and is_run_dir(root / "memcallbacks"):
        return root / "memcallbacks"
    runs = [p for p in root.rglob("memcallbacks") if p.is_dir() and is_run_dir(p)]
    if runs:
        return max(runs, key=_newest_mtime)
    raise FileNotFoundError(
        f"`run_dir` {str(root)!r} holds no memcallbacks output (expected folders like trajectory/, "
        "membership/, canary/ or stopping.json); pass the folder the callbacks wrote, by default "
        "<trainer.log_dir>/memcallbacks"
    )


def _newest_mtime(folder: Path) -> float:
    times = [f.stat().st_mtime for f in folder.rglob("*") if f.is_file()]
    return max(times, default=-math.inf)
