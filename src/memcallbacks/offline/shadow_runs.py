"""Shadow runs as the offline analyses read them: one pool, each run trained on its own random half.

:class:`memcallbacks.ShadowScoreRecorder` writes ``shadow/inclusion.npz`` at set-up and
``shadow/scores.npz`` at the end of fit (:func:`memcallbacks.rundir.write_shadow_inclusion`,
:func:`memcallbacks.rundir.write_shadow_scores`). :func:`load_shadow_run` finds and reads them back
through :mod:`memcallbacks.rundir` and checks that they belong together;
:func:`check_compatible` checks that several runs can be compared (one pool, one label set, one
score kind, different halves). The attack (:mod:`memcallbacks.offline.attack`) and the
counterfactual estimate (:mod:`memcallbacks.offline.counterfactual`) both start here.

Example:
    >>> runs = [load_shadow_run(f"runs/run{i}") for i in range(4)]  # doctest: +SKIP
    >>> check_compatible(runs)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memcallbacks import rundir

__all__ = [
    "EXTRA_FIELDS",
    "AttackInputError",
    "ShadowRun",
    "check_compatible",
    "find_shadow_dir",
    "load_shadow_run",
]

#: optional arrays of the shadow files kept in :attr:`ShadowRun.extras` (the attack does not read them)
EXTRA_FIELDS = ("token_accuracy", "labels", "label_fingerprint", "epochs_completed")


class AttackInputError(ValueError):
    """Run directories that cannot be attacked together; the message names the directory and the fix."""


@dataclass(frozen=True)
class ShadowRun:
    """One shadow run as read from its run directory.

    Attributes:
        path: the ``shadow/`` folder read.
        inclusion: bool ``[N]``, True where the run trained on the pool sample.
        scores: float64 ``[N]`` recorded scores (larger = more confident).
        score_kind: ``"logit_confidence"``, ``"neg_loss"`` or ``"custom"``.
        fingerprint: the pool fingerprint.
        run_index: the run's index.
        num_runs: the planned number of runs of a balanced split, or ``None`` (independent halves).
        correct: bool ``[N]`` or ``None``.
        label_fingerprint: the hash of every pool label (``None`` when not recorded).
        extras: the optional arrays of :data:`EXTRA_FIELDS` the files hold (``token_accuracy``,
            ``labels``, ...).
    """

    path: Path
    inclusion: np.ndarray = field(repr=False)
    scores: np.ndarray = field(repr=False)
    score_kind: str
    fingerprint: str
    run_index: int
    num_runs: int | None = None
    correct: np.ndarray | None = field(default=None, repr=False)
    label_fingerprint: str | None = None
    extras: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False)


def find_shadow_dir(path: str | os.PathLike[str]) -> Path:
    """The ``shadow/`` folder for ``path``: itself, ``path/shadow``, ``path/memcallbacks/shadow``, or the
    only ``*/memcallbacks/shadow`` below it (a Lightning log folder such as ``lightning_logs/version_3``).

    Raises:
        AttackInputError: nothing found, or several candidates.
    """
    root = Path(path)
    try:
        return _find_shadow_dir(root)
    except (PermissionError, rundir.RunDirectoryError) as e:
        reason = e.strerror if isinstance(e, PermissionError) else e
        raise AttackInputError(
            f"{str(root)!r}: cannot be read ({reason}); make the run directory readable (chmod), or leave it out"
        ) from e


def _find_shadow_dir(root: Path) -> Path:
    if not root.is_dir():
        raise AttackInputError(f"{str(root)!r}: not a directory; pass the run directories of the shadow runs")
    for candidate in (root, root / "shadow", root / "memcallbacks" / "shadow"):
        if rundir.present(candidate / rundir.SHADOW_INCLUSION) or rundir.present(
            candidate / rundir.SHADOW_SCORES
        ):
            return candidate
    found = sorted({p.parent for p in root.glob("**/shadow/inclusion.npz")})
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        listed = ", ".join(str(p) for p in found[:4])
        raise AttackInputError(
            f"{str(root)!r} holds {len(found)} shadow runs ({listed}); pass each run directory"
        )
    raise AttackInputError(
        f"{str(root)!r} has no inclusion mask (shadow/inclusion.npz): it is not a shadow run. Train it with "
        "`ShadowScoreRecorder(pool, run_index=i, ...)` in the Trainer's callbacks"
    )


def _read_files(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``inclusion.npz`` and ``scores.npz`` through :mod:`memcallbacks.rundir`, errors as :class:`AttackInputError`."""
    where = str(folder)
    if not rundir.present(folder / rundir.SHADOW_INCLUSION):
        raise AttackInputError(f"{where!r}: no inclusion mask (inclusion.npz); the run cannot be attacked")
    if not rundir.present(folder / rundir.SHADOW_SCORES):
        raise AttackInputError(
            f"{where!r}: no scores.npz: the run did not reach the end of fit (the recorder scores the pool then); "
            "finish or re-run it"
        )
    try:
        return rundir.read_shadow_inclusion(folder), rundir.read_shadow_scores(folder)
    except ValueError as e:  # RunDirectoryError included: a damaged, foreign, linked or unreadable file
        raise AttackInputError(f"{where!r}: {e}") from e


def _finite_scores(where: str, scores: np.ndarray, inclusion: np.ndarray) -> None:
    if inclusion.ndim != 1:
        raise AttackInputError(
            f"{where!r}: inclusion.npz holds an inclusion mask of shape {inclusion.shape}, not one flag per pool "
            "sample; the file is damaged: re-run the recorder"
        )
    if scores.shape != inclusion.shape:
        raise AttackInputError(
            f"{where!r}: scores.npz holds scores of shape {scores.shape} for a pool of {inclusion.size} samples "
            f"(expected shape {inclusion.shape}); the files do not belong together or scores.npz is damaged"
        )
    bad = ~np.isfinite(scores)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise AttackInputError(
            f"{where!r}: {int(bad.sum())} NaN/inf score(s) (first at pool sample {first}); the model diverged or "
            "the score overflowed. Leave this run out or re-train it"
        )


def load_shadow_run(path: str | os.PathLike[str]) -> ShadowRun:
    """Read one shadow run (see :func:`find_shadow_dir` for what ``path`` may be).

    Args:
        path: the run directory, its ``shadow/`` folder, or a Lightning log folder holding one run.

    Returns:
        A :class:`ShadowRun`.

    Raises:
        AttackInputError: a missing inclusion mask or scores file, a damaged file or a newer format,
            scores of the wrong length, NaN/inf scores; the message names the run directory.
    """
    folder = find_shadow_dir(path)
    where = str(folder)
    inc, rec = _read_files(folder)
    inclusion = np.asarray(inc["inclusion"]).astype(bool, copy=False)
    fingerprint = str(inc["fingerprint"])
    scores = np.asarray(rec["scores"], dtype=np.float64)
    num_runs = int(inc["num_runs"]) if "num_runs" in inc else -1
    if str(rec.get("fingerprint", fingerprint)) != fingerprint:
        raise AttackInputError(
            f"{where!r}: scores.npz and inclusion.npz come from different pools (fingerprints differ)"
        )
    _finite_scores(where, scores, inclusion)
    correct = rec.get("correct")
    return ShadowRun(
        path=folder,
        inclusion=inclusion,
        scores=scores,
        score_kind=str(rec["score_kind"]),
        fingerprint=fingerprint,
        run_index=int(inc["run_index"]),
        num_runs=num_runs if num_runs > 0 else None,
        correct=None if correct is None else np.asarray(correct, dtype=bool),
        label_fingerprint=str(inc["label_fingerprint"]) if "label_fingerprint" in inc else None,
        extras={k: v for k, v in {**inc, **rec}.items() if k in EXTRA_FIELDS},
    )


def check_compatible(runs: Sequence[ShadowRun]) -> None:
    """Raise :class:`AttackInputError` unless the runs share one pool and score kind and differ in their halves."""
    if len(runs) < 2:
        raise AttackInputError(
            f"the attack needs at least 2 shadow runs (a target and a reference), got {len(runs)}"
            + (f" ({runs[0].path})" if runs else "")
            + "; train more runs with --run-index 1, 2, ..."
        )
    first = runs[0]
    labelled = next((r for r in runs if r.label_fingerprint is not None), None)
    seen: dict[bytes, Path] = {}
    for run in runs:
        if run.fingerprint != first.fingerprint or run.inclusion.size != first.inclusion.size:
            raise AttackInputError(
                f"{str(run.path)!r} was trained from another pool (fingerprint {run.fingerprint}, {run.inclusion.size} "
                f"samples) than {str(first.path)!r} (fingerprint {first.fingerprint}, {first.inclusion.size} samples); "
                "every run must use the same pool in the same order"
            )
        if (
            labelled is not None
            and run.fingerprint == labelled.fingerprint
            and run.label_fingerprint not in (None, labelled.label_fingerprint)
        ):
            raise AttackInputError(
                f"{str(run.path)!r} trained with other labels than {str(labelled.path)!r} (label fingerprints "
                f"{run.label_fingerprint} and {labelled.label_fingerprint}): another label-noise seed or label "
                "mapping? Every run must use one labelled pool"
            )
        if run.score_kind != first.score_kind:
            raise AttackInputError(
                f"{str(run.path)!r} recorded {run.score_kind!r} scores but {str(first.path)!r} recorded "
                f"{first.score_kind!r}; record every run with the same `score`"
            )
        key = np.packbits(run.inclusion).tobytes()
        if key in seen:
            raise AttackInputError(
                f"{str(run.path)!r} and {str(seen[key])!r} trained on the same samples (the same --run-index "
                "twice?); a reference must be trained on its own random half"
            )
        seen[key] = run.path
