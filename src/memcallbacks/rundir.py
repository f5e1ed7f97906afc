"""The run directory's schema: one writer and one reader per callback's files.

Every file a callback writes to the run directory (one per run whatever the logger, unless
``run_dir=`` is given: :func:`resolve_run`) is named and written here, and read back here by the
report, so a file name or key lives in one place. Writers take exactly the arrays and dicts the callbacks build
and write them atomically through :mod:`memcallbacks.utilities.fileio` (never pickle); readers check that a
file holds what its writer puts there and raise :class:`RunDirectoryError` naming the file
otherwise.

Layout (a callback given ``name="x"`` writes to ``<folder>_x`` instead, for every folder below:
:func:`monitor_folder` is the rule, and :meth:`RunDirectory.folders` finds them all)::

    <run_dir>/
      run.json                                        which run wrote the folder (``run_id``; every
                                                      summary below stamps it too): claim_run_dir
      trajectory/  epoch_XXXX.npy, correct_XXXX.npy   one column of the [N, E] loss matrix per
                                                      recorded epoch (TrajectoryStore)
                   statistics.npz, meta.json          per-sample statistics, settings
      membership/  losses.npz, metrics.json           probe losses per evaluation, logged values
      canary/      exposure.npz, secrets.json         exposures per evaluation; secrets only
                                                      with log_secrets=True
      audit/       inclusion.npz, epoch_XXXX.npz,     inclusion mask, scores and guesses per
                   (step_XXXXXXXX.npz by steps),      evaluation, settings and history
                   audit.json
      dp/          dp.json                            accountant, delta, epsilon per evaluation
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
``format``/``version`` pair, and ``format`` is required there). Readers take a file without the
field as version 1 and refuse a newer version with a :class:`RunDirectoryError` naming the file.

Untrusted input: a run directory may be someone else's, so every reader opens files without
following a symbolic link and only when they are regular files (:func:`open_run_file`: a FIFO or a
device is refused, never waited on), checks sizes before reading (:data:`MAX_JSON_BYTES`; an array's
declared shape against :data:`MAX_ARRAY_BYTES` and the bytes present, before allocating it), keeps
every path read from a file inside its folder (``attack.json``'s ``figure``), and range-checks logged
values against their definitions (:func:`check_value`). Every refusal names the file and the field.

Example:
    >>> import tempfile, numpy as np
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = write_dp(root / DP, {"accountant": "rdp", "delta": 1e-5, "poisson_sampling": True,
    ...                          "history": [{"epoch": 0, "epsilon": 0.5, "steps": 10}]})
    >>> RunDirectory(root).dp().epsilon.tolist()
    [0.5]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets as _secrets
import stat
import time
import warnings
import weakref
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memcallbacks.metrics.exposure import mean_by_repetition
from memcallbacks.utilities import fileio

__all__ = [
    "ATTACK",
    "ATTACK_FORMAT",
    "ATTACK_FORMAT_VERSION",
    "AUDIT",
    "BEST_SAFE_FILE",
    "CANARY",
    "DP",
    "FORMAT_VERSION",
    "MAX_ARRAY_BYTES",
    "MAX_FIGURE_BYTES",
    "MAX_JSON_BYTES",
    "MEMBERSHIP",
    "MONITOR_FOLDERS",
    "REPORT",
    "RUN_FILE",
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
    "RunInfo",
    "SequenceFiles",
    "ShadowFiles",
    "StoppingFiles",
    "TrajectoryFiles",
    "as_number",
    "check_format",
    "check_value",
    "claim_run_dir",
    "load_run_npy",
    "open_run_file",
    "present",
    "find_run_dir",
    "mean_by_repetition",
    "monitor_folder",
    "read_attack",
    "read_best_safe",
    "read_run_bytes",
    "read_run_json",
    "read_shadow_inclusion",
    "read_shadow_scores",
    "resolve_run",
    "start_run",
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
#: the ``format`` field of ``attack.json`` (a file without it is refused)
ATTACK_FORMAT = "memcallbacks.offline.attack"
#: the ``format`` field of every other summary file this memcallbacks writes (and the newest it reads)
FORMAT_VERSION = 1
STOPPING_FILE = "stopping.json"
#: the run directory's top-level file: which run wrote it (``run_id``), see :func:`claim_run_dir`
RUN_FILE = "run.json"
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


# -- which run wrote a run directory ---------------------------------------------------------
# root (resolved) -> the run id this process claimed it for (rank 0); the writers stamp it
_CLAIMED: dict[str, str] = {}
# trainer -> (default root, run id, whether it resumes a checkpoint's run), decided once per Trainer
_RUNS: weakref.WeakKeyDictionary[Any, tuple[str, str, bool]] = weakref.WeakKeyDictionary()
# trainer -> {root: run id} it claimed
_TRAINER_CLAIMS: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()


def _key(root: Path | None) -> str | None:
    return None if root is None else os.path.abspath(root)


def _npz_stamp(root: Path) -> dict[str, Any]:
    run_id = _CLAIMED.get(_key(root) or "")
    return {} if run_id is None else {"run_id": np.array(run_id)}


def new_run_id() -> str:
    """A fresh run id: the UTC start time and 6 random hex digits, e.g. ``20261206-051500-3fa2c1``."""
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{_secrets.token_hex(3)}"


def _logger_root(trainer: Any) -> tuple[Path, str | None]:
    """The default root for the Trainer's first logger (rank 0's view), and the logger's own run id.

    A logger with a per-version folder (``log_dir``: TensorBoard, CSV) gets ``<log_dir>/memcallbacks``;
    any other logger (W&B, MLflow, ...) gets ``<save_dir>/<name>/<version>/memcallbacks``, beside
    ``ModelCheckpoint``'s ``checkpoints/`` (W&B's ``trainer.log_dir`` is ``save_dir``, shared by runs);
    no logger, ``<default_root_dir>/memcallbacks``.
    """
    loggers = list(getattr(trainer, "loggers", None) or [])
    if not loggers:
        return Path(trainer.default_root_dir) / "memcallbacks", None
    logger = loggers[0]
    log_dir = getattr(logger, "log_dir", None)
    if log_dir is not None:
        return Path(log_dir) / "memcallbacks", None
    version = logger.version
    own_id = version if isinstance(version, str) and version else None
    save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
    parts = [str(logger.name)] if logger.name else []
    parts.append(
        own_id if own_id is not None else (f"version_{version}" if version is not None else new_run_id())
    )
    return Path(save_dir, *parts) / "memcallbacks", own_id


def resolve_run(trainer: Any, run_dir: Path | None = None) -> tuple[Path, str, bool]:
    """The run directory root, the run id and whether the run resumes a checkpoint's run.

    Global rank 0 decides once per Trainer (at ``setup``) and broadcasts, so every rank agrees
    (call it on every rank, in the same order). The run id is the logger's own (W&B, MLflow), else
    :func:`new_run_id`; the root is ``run_dir`` when given, else the logger's folder
    (:func:`_logger_root`): one folder per run whatever the logger, ``.`` never shared. A resume
    replaces both with the checkpoint's at fit start (:func:`start_run`).

    Args:
        trainer: the ``Trainer`` (read: ``loggers``, ``default_root_dir``, ``strategy``).
        run_dir: the callback's ``run_dir=`` argument, or ``None``.

    Returns:
        ``(root, run_id, resumed)``.
    """
    decided = _RUNS.get(trainer)
    if decided is None:
        choice: tuple[str, str, bool] | None = None
        if bool(getattr(trainer, "is_global_zero", True)):
            root, own_id = _logger_root(trainer)
            choice = (str(root), own_id or new_run_id(), False)
        strategy = getattr(trainer, "strategy", None)
        if strategy is not None:
            choice = strategy.broadcast(choice, src=0)
        assert choice is not None
        decided = (str(choice[0]), str(choice[1]), bool(choice[2]))
        _RUNS[trainer] = decided
    root_text, run_id, resumed = decided
    return (Path(run_dir) if run_dir is not None else Path(root_text)), run_id, resumed


def start_run(trainer: Any, root: Path, *, explicit: bool, saved: Any = None) -> tuple[Path, str]:
    """At fit start, after a checkpoint's state is restored: the monitor's root and run id, recorded.

    ``saved`` is the ``run`` entry of the monitor's checkpoint state (``{"run_id", "root",
    "explicit"}``). A resumed run keeps its run id and, when neither ``run_dir=`` is given nor was,
    its run directory if it still exists (whatever the new logger version); the other monitors of
    the Trainer follow. Rank 0 then records the run (:func:`claim_run_dir`) and drops the empty
    folders ``setup`` made at a root the run left.

    Returns:
        ``(root, run_id)``.
    """
    default_root, run_id, resumed = resolve_run(trainer)
    if isinstance(saved, Mapping) and isinstance(saved.get("run_id"), str):
        run_id, resumed = str(saved["run_id"]), True
        saved_root = saved.get("root")
        if not saved.get("explicit") and isinstance(saved_root, str) and os.path.isdir(saved_root):
            default_root = Path(saved_root)
        _RUNS[trainer] = (str(default_root), run_id, True)
    new_root = Path(root) if explicit else default_root
    if bool(getattr(trainer, "is_global_zero", True)):
        if _key(new_root) != _key(Path(root)):
            _drop_empty(Path(root))
        loggers = list(getattr(trainer, "loggers", None) or [])
        claims = _TRAINER_CLAIMS.setdefault(trainer, {})
        key = _key(new_root) or ""
        claim_run_dir(
            new_root,
            run_id,
            resumed=resumed,
            logger=type(loggers[0]).__name__ if loggers else "",
            replacing=claims.get(key),
        )
        claims[key] = run_id
    return new_root, run_id


def _drop_empty(root: Path) -> None:
    """Remove ``root`` and its subfolders where they are empty (what ``setup`` made for nothing)."""
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            folder.rmdir()
    with contextlib.suppress(OSError):
        root.rmdir()


@dataclass(frozen=True)
class RunInfo:
    """The run directory's top-level ``run.json``: which run wrote it.

    Attributes:
        run_id: the run that last claimed the folder (:func:`claim_run_dir`).
        previous: earlier runs that wrote here (oldest first), when runs shared the folder.
        info: the whole file (``logger``, ``created``, ...).
    """

    run_id: str
    previous: tuple[str, ...]
    info: dict[str, Any]


def _holds_files(root: Path) -> bool:
    """Whether ``root`` holds a file a callback wrote (an earlier run's; empty folders do not count)."""
    return any(p.is_file() and p.name != ".write-test" for p in root.rglob("*")) if root.is_dir() else False


def claim_run_dir(
    root: str | os.PathLike[str],
    run_id: str,
    *,
    resumed: bool = False,
    logger: str = "",
    replacing: str | None = None,
) -> bool:
    """Record on rank 0 that run ``run_id`` writes to ``root``: ``<root>/run.json``, once per run.

    From then on the writers of this module stamp ``run_id`` into each monitor's summary file
    (``meta.json``, ``metrics.json``, ``exposure.npz``, ``audit.json``, ``dp.json``, ``stopping.json``,
    the shadow files), and the report shows apart any folder another run wrote.

    Args:
        root: the run directory.
        run_id: this run's id (:func:`resolve_run`).
        resumed: the run resumes a checkpoint (no warning when the folder held this run already).
        logger: the first logger's class name, recorded.
        replacing: a run id this same run claimed ``root`` with before (a monitor without checkpoint
            state claimed first, then a resumed one brought the checkpoint's id): not another run.

    Returns:
        Whether ``root`` held another run's files (then a warning says so).
    """
    key = _key(Path(root))
    assert key is not None
    if _CLAIMED.get(key) == run_id:
        return False
    path = Path(root) / RUN_FILE
    old: dict[str, Any] = {}
    if present(path):
        try:
            old = _load_json(path, ("run_id",))
        except RunDirectoryError:
            old = {}
    elif _holds_files(Path(root)):
        old = {"run_id": "(not recorded)"}
    if replacing is not None and old.get("run_id") == replacing:  # this run's own first claim, replaced
        old = {k: v for k, v in old.items() if k != "run_id"}
    other = old.get("run_id") not in (None, run_id)
    previous = (
        [str(p) for p in old.get("previous", []) if isinstance(p, str)] if isinstance(old, dict) else []
    )
    if other:
        previous.append(str(old["run_id"]))
    info = {
        "run_id": run_id,
        "previous": previous,
        "logger": logger,
        "created": old.get("created")
        if not other and old.get("created")
        else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    fileio.save_json(path, _stamped(info))
    _CLAIMED[key] = run_id
    if other:
        warnings.warn(
            f"the run directory {str(root)!r} holds files of another run ({old['run_id']}); this run ({run_id}) "
            "writes there too: the folders it does not rewrite stay the other run's, and `memcallbacks report` "
            "shows them apart. Give each run its own folder: a logger (CSVLogger, TensorBoardLogger, WandbLogger) "
            "or `run_dir=`"
            + ("; or resume with the checkpoint of the run that wrote it" if not resumed else ""),
            stacklevel=2,
        )
    return other


def _stamped(summary: Mapping[str, Any], root: Path | None = None) -> dict[str, Any]:
    """``summary`` with ``"format": FORMAT_VERSION`` first, and the ``run_id`` that claimed ``root``."""
    stamped = {"format": FORMAT_VERSION, **{k: v for k, v in summary.items() if k != "format"}}
    run_id = _CLAIMED.get(_key(root) or "") if root is not None else None
    if run_id is not None:
        stamped["run_id"] = run_id
    return stamped


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
    fileio.save_json(Path(folder) / "meta.json", _stamped(meta, Path(folder).parent), durable=durable)


def sync_trajectory_summary(folder: Path) -> None:
    """Flush the summary files of :func:`write_trajectory_summary` to disk (where they exist)."""
    for name in ("statistics.npz", "meta.json"):
        if (Path(folder) / name).exists():
            fileio.fsync_file(Path(folder) / name)


def write_membership(folder: Path, arrays: Mapping[str, Any], summary: Mapping[str, Any]) -> None:
    """``losses.npz`` (uncompressed) and ``metrics.json`` (``{"history": [...], "fprs": ..., ...}``)."""
    fileio.save_npz(Path(folder) / "losses.npz", compress=False, **arrays)
    fileio.save_json(Path(folder) / "metrics.json", _stamped(summary, Path(folder).parent))


def write_sequence(folder: Path, arrays: Mapping[str, Any], summary: Mapping[str, Any]) -> None:
    """``sequences.npz`` (uncompressed) and ``metrics.json`` (``{"history": [...], ...}``)."""
    fileio.save_npz(Path(folder) / "sequences.npz", compress=False, **arrays)
    fileio.save_json(Path(folder) / "metrics.json", _stamped(summary, Path(folder).parent))


def write_exposure(folder: Path, arrays: Mapping[str, Any], secrets: Mapping[str, str] | None = None) -> None:
    """``exposure.npz`` (compressed; with the claiming ``run_id``) and, only when ``secrets`` is given,
    ``secrets.json`` (id -> secret)."""
    fileio.save_npz(Path(folder) / "exposure.npz", **{**arrays, **_npz_stamp(Path(folder).parent)})
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
    fileio.save_npz(Path(folder) / SHADOW_INCLUSION, **arrays, **_npz_stamp(Path(folder).parent))


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
    fileio.save_npz(Path(folder) / SHADOW_SCORES, **arrays, **_npz_stamp(Path(folder).parent))


def write_audit_inclusion(folder: Path, included: Any, seed: int) -> None:
    """``inclusion.npz``: the ``included`` mask and the ``seed`` that drew it."""
    fileio.save_npz(Path(folder) / "inclusion.npz", included=included, seed=np.int64(seed))


def write_audit_epoch(folder: Path, epoch: int, *, scores: Any, guesses: Any, included: Any) -> None:
    """``epoch_XXXX.npz``: one evaluation's ``scores``, ``guesses`` and ``included``."""
    fileio.save_npz(
        Path(folder) / f"epoch_{int(epoch):04d}.npz", scores=scores, guesses=guesses, included=included
    )


def write_audit_step(folder: Path, step: int, *, scores: Any, guesses: Any, included: Any) -> None:
    """``step_XXXXXXXX.npz``: one step- or validation-scheduled evaluation (at global ``step``)."""
    fileio.save_npz(
        Path(folder) / f"step_{int(step):08d}.npz", scores=scores, guesses=guesses, included=included
    )


def write_audit_summary(folder: Path, summary: Mapping[str, Any]) -> None:
    """``audit.json``: the settings and the ``history`` of counts and bounds."""
    fileio.save_json(Path(folder) / "audit.json", _stamped(summary, Path(folder).parent))


def write_dp(folder: Path, summary: Mapping[str, Any]) -> None:
    """``dp.json``: accountant, delta, Poisson sampling, ``history`` of epsilon and steps per epoch."""
    fileio.save_json(Path(folder) / "dp.json", _stamped(summary, Path(folder).parent))


def write_attack(folder: Path, summary: Mapping[str, Any], roc_png: bytes) -> dict[str, Path]:
    """``attack.json`` (the summary, stamped with ``format``/``version``), then the figure ``roc.png``.

    The JSON is written first, so a failure later (the figure, a tracker) never loses the numbers. It
    holds the figure's SHA-256 (``figure_sha256``), which :meth:`AttackFiles.figure_png` checks: a
    crash between the two writes never pairs the new table with an old figure.
    """
    stamped = {"format": ATTACK_FORMAT, "version": ATTACK_FORMAT_VERSION, **dict(summary)}
    stamped["figure"] = ATTACK_FIGURE
    stamped["figure_sha256"] = hashlib.sha256(roc_png).hexdigest()
    stamped["order"] = [str(label) for label in summary.get("attacks", {})]  # the JSON's keys are sorted
    json_path = fileio.save_json(Path(folder) / ATTACK_FILE, stamped)
    png_path = fileio.atomic_write_bytes(Path(folder) / ATTACK_FIGURE, roc_png)
    return {"json": json_path, "png": png_path}


def write_stopping(root: Path, info: Mapping[str, Any]) -> None:
    """``<root>/stopping.json``: the early-stopping decision (``stopped_epoch``, ``reason``, ...)."""
    fileio.save_json(Path(root) / STOPPING_FILE, _stamped(info, Path(root)))


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
# A run directory is untrusted input (it may come from someone else): every file is opened without
# following a symbolic link, only regular files are read (a FIFO or a device is refused, never
# waited on), sizes are checked before reading, and an array's declared size before allocating it.

#: the largest JSON file a reader opens (bytes)
MAX_JSON_BYTES = 64 * 2**20
#: the largest array a reader allocates from an ``.npz``/``.npy`` header (bytes)
MAX_ARRAY_BYTES = 4 * 2**30
#: the largest figure the report copies from an attack folder (bytes)
MAX_FIGURE_BYTES = 64 * 2**20

_UNTRUSTED_FIX = "replace it by the file memcallbacks wrote, or delete it to leave its section out"


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "folder"),
        (stat.S_ISFIFO, "FIFO (named pipe)"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


def _unreadable(path: Path, error: OSError) -> RunDirectoryError:
    return RunDirectoryError(
        path,
        f"cannot be read ({error.strerror or error})",
        fix="make the file and its folders readable (chmod), or pass another run directory",
    )


def present(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` exists as a directory entry (a link is not followed, so a dangling one counts).

    Raises:
        RunDirectoryError: its folder cannot be entered (the message names the path).
    """
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as e:
        raise _unreadable(Path(path), e) from e
    return True


def open_run_file(path: str | os.PathLike[str], limit: int) -> Any:
    """Open a run-directory file for binary reading, as untrusted input.

    A symbolic link is never followed (``O_NOFOLLOW``), anything but a regular file (a FIFO, a
    device, a folder) is refused without blocking, and so is a file over ``limit`` bytes.

    Raises:
        FileNotFoundError: the file does not exist.
        RunDirectoryError: a link, a special file, too large, or unreadable (the message names it).
    """
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            raise RunDirectoryError(
                path,
                "is a symbolic link; memcallbacks never follows links in a run directory",
                fix=_UNTRUSTED_FIX,
            )
        if not stat.S_ISREG(mode):
            raise RunDirectoryError(path, f"is a {_file_kind(mode)}, not a regular file", fix=_UNTRUSTED_FIX)
        flags = (
            os.O_RDONLY
            | getattr(os, "O_NOFOLLOW", 0)
            | getattr(os, "O_NONBLOCK", 0)
            | getattr(os, "O_BINARY", 0)
        )
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise _unreadable(path, e) from e
    f = os.fdopen(fd, "rb")
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
        f.close()
        problem = (
            f"is a {_file_kind(info.st_mode)}, not a regular file"
            if not stat.S_ISREG(info.st_mode)
            else f"holds {info.st_size} bytes, more than a memcallbacks file of its kind ({limit} bytes)"
        )
        raise RunDirectoryError(path, problem, fix=_UNTRUSTED_FIX)
    return f


def read_run_bytes(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of a run-directory file, read as :func:`open_run_file` opens it (at most ``limit``)."""
    with open_run_file(path, limit) as f:
        data: bytes = f.read(limit + 1)
    if len(data) > limit:
        raise RunDirectoryError(path, f"grew past {limit} bytes while read", fix=_UNTRUSTED_FIX)
    return data


def _array_header(path: Path, stream: Any, member: str, available: int) -> None:
    """Check one ``.npy`` header read from ``stream``: no object dtype, a declared size under
    :data:`MAX_ARRAY_BYTES` and within the ``available`` bytes (header included)."""
    version = np.lib.format.read_magic(stream)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(stream)
    if dtype.hasobject:
        raise _pickled(path)
    nbytes = math.prod(int(d) for d in shape) * dtype.itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise RunDirectoryError(
            path,
            f"`{member}` declares shape {tuple(shape)} of {dtype} ({nbytes} bytes), more than a reader allocates "
            f"({MAX_ARRAY_BYTES} bytes)",
            fix=_UNTRUSTED_FIX,
        )
    if nbytes > available:
        raise RunDirectoryError(path, f"`{member}` declares {nbytes} bytes of data but holds {available}")


def _pickled(path: Path) -> RunDirectoryError:
    return RunDirectoryError(
        path,
        "refusing to load it: it contains pickled objects, which can run code when loaded (memcallbacks run "
        "directories hold plain arrays only)",
        fix="delete it",
    )


def _check_npz_members(path: Path, f: Any) -> None:
    with zipfile.ZipFile(f) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                raise RunDirectoryError(path, f"holds {info.filename!r}, which is not an array")
            with archive.open(info) as member:
                _array_header(path, member, info.filename[:-4], info.file_size)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with open_run_file(path, 2**63 - 1) as f:
        head = f.read(8)
        if head.startswith(b"\x80"):
            raise _pickled(path)
        if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
            raise RunDirectoryError(
                path, "is empty" if not head else f"is not an .npz archive (it starts with {head!r})"
            )
        f.seek(0)
        _check_npz_members(path, f)
        f.seek(0)
        with np.load(f, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}


def _load_npz(path: Path, required: Sequence[str]) -> dict[str, np.ndarray]:
    try:
        arrays = _read_npz(path)
    except (RunDirectoryError, FileNotFoundError):
        raise
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, ValueError, KeyError, MemoryError) as e:
        if isinstance(e, ValueError) and ("pickle" in str(e).lower() or "object arrays" in str(e).lower()):
            raise _pickled(path) from e
        raise RunDirectoryError(path, f"not a readable .npz archive ({type(e).__name__}: {e})") from e
    missing = [k for k in required if k not in arrays]
    if missing:
        raise RunDirectoryError(path, f"lacks the array(s) {missing} (it holds {sorted(arrays)})")
    return arrays


def load_run_npy(path: str | os.PathLike[str]) -> np.ndarray:
    """One ``.npy`` of a run directory, memory-mapped, after checking it as untrusted input.

    Raises:
        FileNotFoundError: the file does not exist.
        RunDirectoryError: a link, a special file, a pickle, a header declaring more data than the
            file holds or than :data:`MAX_ARRAY_BYTES` (the message names the file).
    """
    path = Path(path)
    try:
        with open_run_file(path, 2**63 - 1) as f:
            _array_header(path, f, path.name, os.fstat(f.fileno()).st_size)
        return fileio.load_npy(path, mmap=True)
    except (RunDirectoryError, FileNotFoundError):
        raise
    except (OSError, EOFError, ValueError, MemoryError) as e:
        raise RunDirectoryError(path, f"not a readable .npy file ({type(e).__name__}: {e})") from e


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
        text = read_run_bytes(path, MAX_JSON_BYTES).decode("utf-8")
        obj = json.loads(text, parse_constant=_no_constant)
    except (RunDirectoryError, FileNotFoundError):
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise RunDirectoryError(path, f"not readable JSON ({type(e).__name__}: {e})") from e
    except RecursionError as e:
        raise RunDirectoryError(path, "not readable JSON (nested too deeply for a memcallbacks file)") from e
    if not isinstance(obj, dict):
        raise RunDirectoryError(path, f"holds a JSON {type(obj).__name__}, not an object")
    if versioned:
        check_format(path, obj.get("format"))
    missing = [k for k in required if k not in obj]
    if missing:
        raise RunDirectoryError(path, f"lacks the field(s) {missing}")
    return obj


def read_run_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON object from a run directory, read as untrusted input (see :func:`open_run_file`; at most
    :data:`MAX_JSON_BYTES`), without a format check.

    Raises:
        FileNotFoundError: the file does not exist.
        RunDirectoryError: a link, a special file, too large, not JSON or not an object (names the file).
    """
    return _load_json(Path(path), versioned=False)


def _no_constant(name: str) -> Any:
    """Refuse JSON's non-standard ``NaN``/``Infinity``: memcallbacks writes ``null`` for them."""
    raise ValueError(f"holds the non-standard constant {name} (memcallbacks writes NaN and inf as null)")


#: the last part of a logged key whose value is a probability or rate, in [0, 1] (or NaN)
_UNIT_PARTS = ("auc", "tpr@", "exact_rate", "prob_rate", "_frac", "accuracy")


def _unit_key(key: str) -> bool:
    return any(part in key for part in _UNIT_PARTS)


def check_value(
    path: str | os.PathLike[str], field_name: str, value: Any, *, key: str | None = None
) -> float:
    """A logged value read back: a number or ``null`` (NaN), range-checked against the key's definition.

    ``field_name`` says where the value is in the file (it starts the error message).

    AUCs, TPRs, rates, fractions and accuracies must lie in [0, 1], advantages in [-1, 1], sample
    counts (``n_*``) must be non-negative integers, an ``epoch`` a non-negative number. ``key`` is the
    logged key the rule is chosen by (default: ``field_name``).

    Raises:
        RunDirectoryError: not a number, or outside its range (the message names the file and field).
    """
    if value is None:
        return float("nan")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RunDirectoryError(path, f"{field_name} is {value!r}, not a number")
    number = float(value)
    key = field_name if key is None else key
    last = key.rsplit("/", 1)[-1]
    if last == "epoch" and not (math.isfinite(number) and number >= 0):
        raise RunDirectoryError(path, f"{field_name} is {value!r}, not an epoch")
    if _unit_key(key) and not (math.isnan(number) or 0.0 <= number <= 1.0):
        raise RunDirectoryError(path, f"{field_name} is {value!r}, outside its range [0, 1]")
    if "advantage" in last and not (math.isnan(number) or -1.0 <= number <= 1.0):
        raise RunDirectoryError(path, f"{field_name} is {value!r}, outside its range [-1, 1]")
    if last.startswith("n_") and not (math.isfinite(number) and number >= 0 and number == int(number)):
        raise RunDirectoryError(path, f"{field_name} is {value!r}, not a non-negative integer")
    return number


def _history(path: Path, obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = obj.get("history", [])
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "epoch" in r for r in rows):
        raise RunDirectoryError(path, "`history` must be a list of objects with an `epoch`")
    for i, row in enumerate(rows):
        for key, value in row.items():
            if key == "epoch" or (key.startswith("mem/") and not isinstance(value, (list, dict))):
                check_value(path, f"history[{i}] field {key!r}", value, key=key)
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
    def steps(self) -> np.ndarray | None:
        """The global step at which each column was recorded (``None`` for files written without it)."""
        return self.statistics.get("steps")

    @property
    def seen(self) -> np.ndarray:
        """Samples recorded at least once."""
        return self.statistics["count"] > 0

    @property
    def sample_ids(self) -> np.ndarray:
        return self.statistics.get("sample_ids", np.arange(len(self.statistics["count"])))

    def epoch_losses(self, j: int) -> np.ndarray:
        """Column ``j`` of the loss matrix (trainer epoch ``epochs[j]``), memory-mapped."""
        return load_run_npy(self.folder / f"epoch_{j:04d}.npy")

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
    steps: np.ndarray | None = None
    """The global step of each evaluation (``None`` for files written before steps were recorded)."""

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

    @property
    def steps(self) -> np.ndarray | None:
        """The global step of each evaluation (``None`` for files written before steps were recorded)."""
        return self.arrays.get("steps")


@dataclass(frozen=True)
class ExposureFiles:
    """``canary/exposure.npz`` (and ``secrets.json`` when it was written)."""

    arrays: dict[str, np.ndarray]
    secrets: dict[str, str] | None = None

    @property
    def epochs(self) -> np.ndarray:
        return self.arrays["epochs"]

    @property
    def steps(self) -> np.ndarray | None:
        """The global step of each evaluation (``None`` for files written before steps were recorded)."""
        return self.arrays.get("steps")

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

    def evaluation(self, epoch: int | None = None, *, step: int | None = None) -> dict[str, np.ndarray]:
        """One evaluation's ``scores``, ``guesses`` and ``included``: by ``epoch`` (``epoch_XXXX.npz``, the
        epoch schedule) or by global ``step`` (``step_XXXXXXXX.npz``, a step or validation schedule)."""
        if step is not None and epoch is None:
            name = f"step_{int(step):08d}.npz"
        elif epoch is not None and step is None:
            name = f"epoch_{int(epoch):04d}.npz"
        else:
            raise ValueError(
                f"AuditFiles.evaluation: pass exactly one of epoch and step (got {epoch=}, {step=})"
            )
        return _load_npz(self.folder / name, ("scores", "guesses", "included"))


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
    _check_kinds(path, arrays, {"inclusion": "bui", "fingerprint": "U", "run_index": "iu", "num_runs": "iu"})
    inclusion = arrays["inclusion"]
    if inclusion.dtype.kind != "b" and not np.isin(inclusion, (0, 1)).all():
        raise RunDirectoryError(path, "`inclusion` holds values other than 0 and 1")
    return arrays


def read_shadow_scores(folder: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """A shadow run's ``scores.npz`` (:func:`write_shadow_scores`), its format checked.

    Raises:
        FileNotFoundError: the file is missing.
        RunDirectoryError: not a readable archive, a newer format, without ``scores`` and
            ``score_kind``, or arrays of another type (strings as scores; the message names the file).
    """
    path = Path(folder) / SHADOW_SCORES
    arrays = _load_npz(path, ("scores", "score_kind"))
    check_format(path, arrays.get("format"))
    _check_kinds(
        path,
        arrays,
        {"scores": "f", "score_kind": "U", "fingerprint": "U", "correct": "bui", "token_accuracy": "f"},
    )
    return arrays


_KIND_NAMES = {"b": "bool", "i": "integer", "u": "integer", "f": "floating-point", "U": "string"}


def _check_kinds(path: Path, arrays: Mapping[str, np.ndarray], kinds: Mapping[str, str]) -> None:
    """Each array named in ``kinds`` (when present) has one of the dtype kinds given (``"f"``: float, ...)."""
    for key, allowed in kinds.items():
        if key in arrays and arrays[key].dtype.kind not in allowed:
            wanted = " or ".join(dict.fromkeys(_KIND_NAMES[k] for k in allowed))
            raise RunDirectoryError(path, f"`{key}` holds {arrays[key].dtype} values, not {wanted} ones")


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
        """``roc.png`` (log-log ROC of every attack), or ``None`` when it is missing.

        The name comes from ``attack.json``'s ``figure`` field, which :func:`read_attack` confined to
        a plain file name in :attr:`folder`.
        """
        path = self.folder / str(self.summary.get("figure") or ATTACK_FIGURE)
        return path if present(path) else None

    def figure_png(self) -> bytes | None:
        """The bytes of :attr:`figure`, or ``None`` when it is missing.

        Read as untrusted input (no link followed, a regular file of at most :data:`MAX_FIGURE_BYTES`)
        and checked against ``figure_sha256`` when ``attack.json`` holds it.

        Raises:
            RunDirectoryError: the figure is a link or special file, too large, unreadable, or not the
                one ``attack.json`` was written with (the message names the file).
        """
        path = self.figure
        if path is None:
            return None
        data = read_run_bytes(path, MAX_FIGURE_BYTES)
        expected = self.summary.get("figure_sha256")
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise RunDirectoryError(
                path,
                f"is not the figure {ATTACK_FILE} was written with (its SHA-256 differs from `figure_sha256`): "
                "`memcallbacks attack` was interrupted between its two files, or another run replaced one",
                fix="re-run `memcallbacks attack` to write both again",
            )
        return data


def _attack_number(path: Path, label: str, entry: Mapping[str, Any], key: str) -> float:
    value = entry.get(key, ...)
    if value is ...:
        raise RunDirectoryError(path, f"attack {label!r} lacks the field {key!r}")
    return check_value(path, f"attack {label!r}: {key!r}", value, key=key)


def _attack_row(file: Path, label: str, entry: Any, fprs: Sequence[float]) -> AttackRow:
    """One attack of ``attack.json``, checked: rates in [0, 1] or ``null``, counts that are counts."""
    from memcallbacks.metrics.membership import format_fpr

    if not isinstance(entry, dict):
        raise RunDirectoryError(file, f"attack {label!r} is a JSON {type(entry).__name__}, not an object")
    counts = [_attack_number(file, label, entry, k) for k in ("n_members", "n_nonmembers", "n_excluded")]
    if not all(math.isfinite(c) for c in counts):
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
        per_target_auc=tuple(
            check_value(file, f"attack {label!r}: `per_target_auc[{i}]`", v, key="auc")
            for i, v in enumerate(per_target)
        ),
    )


def _check_attack_header(file: Path, obj: Mapping[str, Any]) -> None:
    """``format``/``version`` (both required) and a ``figure`` that names a file in the folder."""
    if "format" not in obj:
        raise RunDirectoryError(
            file,
            "lacks the field 'format' that every attack summary carries",
            fix="re-run `memcallbacks attack` on the shadow runs to rewrite it",
        )
    version = obj.get("version", ATTACK_FORMAT_VERSION)  # files from before the field: version 1
    if obj["format"] != ATTACK_FORMAT or version != ATTACK_FORMAT_VERSION:
        raise RunDirectoryError(
            file,
            f"is not an attack summary this memcallbacks reads (format {obj.get('format')!r}, version "
            f"{version!r}; this version reads format {ATTACK_FORMAT!r} version {ATTACK_FORMAT_VERSION})",
            fix="re-run `memcallbacks attack` on the shadow runs with this memcallbacks to rewrite it",
        )
    figure = obj.get("figure", ATTACK_FIGURE)
    if (
        not isinstance(figure, str)
        or not figure
        or figure in (".", "..")
        or Path(figure).name != figure
        or "/" in figure
        or "\\" in figure
        or "\x00" in figure
    ):
        raise RunDirectoryError(
            file,
            f"the field 'figure' is {figure!r}, not a file name in its folder (a path read from a run directory "
            "never leaves its folder)",
            fix="re-run `memcallbacks attack` to rewrite it",
        )
    digest = obj.get("figure_sha256")
    if digest is not None and not (isinstance(digest, str) and len(digest) == 64):
        raise RunDirectoryError(file, f"the field 'figure_sha256' is {digest!r}, not a SHA-256 digest")


def read_attack(path: str | os.PathLike[str]) -> AttackFiles:
    """Read what ``memcallbacks attack`` wrote: a folder holding ``attack.json``, or the file itself.

    Raises:
        FileNotFoundError: no ``attack.json`` there.
        RunDirectoryError: the file is not readable JSON, lacks ``format`` or was written by another
            format version, names a figure outside its folder, lacks a field, or holds a value outside
            its range (the message names the file and the field).
    """
    given = Path(path)
    file = given if given.name == ATTACK_FILE or given.is_file() else given / ATTACK_FILE
    if not present(file):
        raise FileNotFoundError(
            f"{str(given)!r} holds no {ATTACK_FILE}; pass the --out folder of `memcallbacks attack`"
        )
    obj = _load_json(file, versioned=False)  # its own format/version pair, checked here
    _check_attack_header(file, obj)
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
        names = sorted(
            p.name
            for p in self.root.glob(f"{kind}_*")
            if p.is_dir() and not p.is_symlink() and p.name != f"{kind}_"
        )
        return ([kind] if (self.root / kind).is_dir() else []) + names

    def folder(self, subdir: str) -> Path:
        """``<root>/<subdir>``, checked as untrusted input: a plain name, not a symbolic link.

        Raises:
            RunDirectoryError: ``subdir`` is not a plain folder name, or the folder is a link
                (memcallbacks never follows links inside a run directory).
        """
        folder = self.root / subdir
        if Path(subdir).name != subdir or subdir in ("", ".", ".."):
            raise RunDirectoryError(
                folder, f"`subdir` must be a folder name in the run directory, got {subdir!r}"
            )
        if present(folder) and folder.is_symlink():
            raise RunDirectoryError(
                folder,
                "is a symbolic link; memcallbacks never follows links in a run directory",
                fix=_UNTRUSTED_FIX,
            )
        return folder

    def trajectory(self, subdir: str = TRAJECTORY) -> TrajectoryFiles | None:
        """The trajectory tracker's ``statistics.npz`` and ``meta.json`` in ``subdir``, or ``None``."""
        folder = self.folder(subdir)
        path = folder / "statistics.npz"
        if not present(path):
            return None
        stats = _load_npz(path, ("epochs", "count", "mean", "variability"))
        n = len(stats["count"])
        for key, arr in stats.items():
            if key not in ("epochs", "steps") and arr.ndim >= 1 and arr.shape[0] != n:
                raise RunDirectoryError(path, f"`{key}` has {arr.shape[0]} rows, `count` has {n}")
        meta_path = folder / "meta.json"
        meta = _load_json(meta_path) if present(meta_path) else {}
        return TrajectoryFiles(folder, stats, meta)

    def membership(self, subdir: str = MEMBERSHIP) -> MembershipFiles | None:
        """The membership monitor's ``losses.npz`` and ``metrics.json`` in ``subdir``, or ``None``."""
        folder = self.folder(subdir)
        path = folder / "losses.npz"
        if not present(path):
            return None
        arrays = _load_npz(path, ("epochs", "member_losses", "nonmember_losses"))
        epochs = arrays["epochs"]
        _rows(path, arrays, len(epochs), "steps", "member_losses", "nonmember_losses")
        metrics_path = folder / "metrics.json"
        if not present(metrics_path):
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
            steps=arrays.get("steps"),
        )

    def sequence(self, subdir: str = SEQUENCE) -> SequenceFiles | None:
        """The sequence monitor's ``sequences.npz`` and ``metrics.json`` in ``subdir``, or ``None``."""
        folder = self.folder(subdir)
        path = folder / "sequences.npz"
        if not present(path):
            return None
        arrays = _load_npz(path, ("epochs",))
        _rows(path, arrays, len(arrays["epochs"]), "steps", "member_loss", "nonmember_loss", "member_exact")
        metrics_path = folder / "metrics.json"
        if not present(metrics_path):
            raise RunDirectoryError(metrics_path, "is missing while sequences.npz exists")
        summary = _load_json(metrics_path, ("history",))
        return SequenceFiles(folder, arrays, _history(metrics_path, summary), summary)

    def exposure(self, subdir: str = CANARY) -> ExposureFiles | None:
        """The canary monitor's ``exposure.npz`` (and ``secrets.json``) in ``subdir``, or ``None``."""
        folder = self.folder(subdir)
        path = folder / "exposure.npz"
        if not present(path):
            return None
        arrays = _load_npz(path, ("epochs", "repetitions", "exposure"))
        _rows(path, arrays, len(arrays["epochs"]), "steps", "exposure", "rank", "log_perplexity")
        c = len(arrays["repetitions"])
        if arrays["exposure"].ndim != 2 or arrays["exposure"].shape[1] != c:
            raise RunDirectoryError(
                path, f"`exposure` has shape {arrays['exposure'].shape}, expected [epochs, {c} canaries]"
            )
        secrets_path = folder / "secrets.json"
        secrets = _load_json(secrets_path, versioned=False) if present(secrets_path) else None
        return ExposureFiles(
            arrays, None if secrets is None else {str(k): str(v) for k, v in secrets.items()}
        )

    def audit(self, subdir: str = AUDIT) -> AuditFiles | None:
        """The audit monitor's ``audit.json`` in ``subdir`` (its ``.npz`` files read on demand), or ``None``."""
        folder = self.folder(subdir)
        path = folder / "audit.json"
        if not present(path):
            return None
        summary = _load_json(path, ("num_canaries",))
        return AuditFiles(folder, summary, _history(path, summary))

    def dp(self, subdir: str = DP) -> DPFiles | None:
        """The DP monitor's ``dp.json`` in ``subdir``, or ``None``."""
        path = self.folder(subdir) / "dp.json"
        if not present(path):
            return None
        summary = _load_json(path, ("delta",))
        return DPFiles(summary, _history(path, summary))

    def attack_folders(self) -> list[str]:
        """The folders ``memcallbacks attack`` wrote here: ``attack`` first, then ``attack_<x>``."""
        names = sorted(p.parent.name for p in self.root.glob(f"{ATTACK}_*/{ATTACK_FILE}"))
        return ([ATTACK] if present(self.root / ATTACK / ATTACK_FILE) else []) + names

    def attack(self, subdir: str = ATTACK) -> AttackFiles | None:
        """What ``memcallbacks attack`` wrote to ``subdir`` (``attack.json``), or ``None``."""
        folder = self.folder(subdir)
        if not present(folder / ATTACK_FILE):
            return None
        return read_attack(folder)

    def shadow(self, subdir: str = SHADOW) -> ShadowFiles | None:
        """A shadow run's files (``inclusion.npz``, and ``scores.npz`` once fit has ended)."""
        folder = self.folder(subdir)
        if not present(folder / SHADOW_INCLUSION):
            return None
        scores = read_shadow_scores(folder) if present(folder / SHADOW_SCORES) else None
        return ShadowFiles(folder, read_shadow_inclusion(folder), scores)

    def run(self) -> RunInfo | None:
        """The top-level ``run.json`` (which run wrote this folder last), or ``None`` (an older run directory)."""
        path = self.root / RUN_FILE
        if not present(path):
            return None
        obj = _load_json(path, ("run_id",))
        previous = obj.get("previous") or []
        return RunInfo(str(obj["run_id"]), tuple(str(p) for p in previous if isinstance(p, str)), obj)

    def written_by(self, subdir: str) -> str | None:
        """The run id stamped in ``subdir``'s summary file (``stopping.json`` for :data:`STOPPING_FILE`).

        ``None`` when there is no summary file; ``""`` when the summary holds no stamp (written outside
        a ``Trainer``, or by an older memcallbacks).

        Raises:
            RunDirectoryError: the summary file is unreadable.
        """
        if subdir == STOPPING_FILE:
            candidates = [self.root / STOPPING_FILE]
        else:
            folder = self.folder(subdir)
            candidates = [folder / n for n in ("meta.json", "metrics.json", "audit.json", "dp.json")]
            candidates += [folder / "exposure.npz", folder / SHADOW_INCLUSION]
        for path in candidates:
            if not present(path):
                continue
            if path.suffix == ".json":
                value = _load_json(path).get("run_id")
            else:
                stamp = _read_npz(path).get("run_id")
                value = None if stamp is None else str(stamp)
            return "" if value is None else str(value)
        return None

    def stopping(self) -> StoppingFiles | None:
        """The early-stopping decision (``stopping.json``), or ``None``."""
        path = self.root / STOPPING_FILE
        if not present(path):
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
