"""Membership-inference attacks across shadow runs: ``memcallbacks attack RUN_DIR...``.

Reads the ``shadow/`` folders that :class:`memcallbacks.ShadowScoreRecorder` wrote in N run
directories (same pool, each run trained on its own random half), then, for each run as the
*target* and the other runs as *references*, scores every pool sample with

* ``loss``: the target's own score alone (logit confidence or minus the loss), the attack of Yeom
  et al. (CSF 2018) that :class:`memcallbacks.MembershipInferenceMonitor` runs;
* ``lira``: LiRA (Carlini et al., IEEE S&P 2022), online or ``offline``
  (:func:`memcallbacks.metrics.lira_scores`);
* ``rmia``: RMIA (Zarifzadeh, Liu and Shokri, ICML 2024), online or ``offline`` with ``a``
  (:func:`memcallbacks.metrics.rmia_scores`); the population samples ``z`` are the pool samples
  the target did not train on (the paper's population data).

The scores of all targets are pooled into one exact ROC per attack (as in Carlini et al.'s code),
reported as AUC and TPR at 0.1% and 1% FPR (members positive, FPR ``<= x``), with the AUC of each
target beside it. Outputs: a printed table, ``attack.json`` and ``roc.png`` (log-log axes), by
default in ``<first run>/memcallbacks/attack/`` (``attack_offline/`` with ``--offline``), where
``memcallbacks report`` finds them for its "Attacks" section; and, when asked (``--log wandb`` ...,
or :func:`log_attack_results` with Lightning loggers), the aggregate numbers, a summary table, the
ROC curves and the ROC figure in an experiment-tracker run. Per-sample scores never leave the run
directories.

Example:
    >>> result = run_attack(["runs/0", "runs/1", "runs/2"], methods=("loss", "lira"))  # doctest: +SKIP
    >>> result.reports["lira"].tpr_at_fpr[0.01]  # doctest: +SKIP
    0.083
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from scipy import special

from memcallbacks import rundir
from memcallbacks.metrics.attacks import AttackReport, attack_report, lira_scores, rmia_scores
from memcallbacks.metrics.membership import format_fpr
from memcallbacks.utilities import fileio
from memcallbacks.utilities.validation import check_bool, check_choice, check_int, check_real

__all__ = [
    "AttackInputError",
    "AttackResult",
    "ShadowRun",
    "add_attack_parser",
    "default_out",
    "load_shadow_run",
    "log_attack_results",
    "make_loggers",
    "roc_figure",
    "run_attack",
    "write_outputs",
]

METHODS = ("loss", "lira", "rmia")
#: the experiment trackers ``memcallbacks attack --log`` can write to
TRACKERS = ("wandb", "tensorboard", "mlflow", "csv")
#: below this many reference runs, LiRA uses one global variance by default
GLOBAL_VARIANCE_BELOW = 64
_T = TypeVar("_T")


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


def find_shadow_dir(path: str | os.PathLike[str]) -> Path:
    """The ``shadow/`` folder for ``path``: itself, ``path/shadow``, ``path/memcallbacks/shadow``, or the
    only ``*/memcallbacks/shadow`` below it (a Lightning log folder such as ``lightning_logs/version_3``).

    Raises:
        AttackInputError: nothing found, or several candidates.
    """
    root = Path(path)
    if not root.is_dir():
        raise AttackInputError(f"{str(root)!r}: not a directory; pass the run directories of the shadow runs")
    for candidate in (root, root / "shadow", root / "memcallbacks" / "shadow"):
        if (candidate / "inclusion.npz").is_file() or (candidate / "scores.npz").is_file():
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


def load_shadow_run(path: str | os.PathLike[str]) -> ShadowRun:
    """Read one shadow run (see :func:`find_shadow_dir` for what ``path`` may be).

    Raises:
        AttackInputError: a missing inclusion mask or scores file, a damaged file, scores of the wrong
            length, NaN/inf scores; the message names the run directory.
    """
    folder = find_shadow_dir(path)
    where = str(folder)
    if not (folder / "inclusion.npz").is_file():
        raise AttackInputError(f"{where!r}: no inclusion mask (inclusion.npz); the run cannot be attacked")
    if not (folder / "scores.npz").is_file():
        raise AttackInputError(
            f"{where!r}: no scores.npz: the run did not reach the end of fit (the recorder scores the pool then); "
            "finish or re-run it"
        )
    try:
        inc = fileio.load_npz(folder / "inclusion.npz")
        rec = fileio.load_npz(folder / "scores.npz")
    except ValueError as e:
        raise AttackInputError(f"{where!r}: {e}") from e
    try:
        inclusion = np.asarray(inc["inclusion"]).astype(bool, copy=False)
        fingerprint = str(inc["fingerprint"])
        scores = np.asarray(rec["scores"], dtype=np.float64)
        kind = str(rec["score_kind"])
        run_index = int(inc["run_index"])
        num_runs = int(inc["num_runs"]) if "num_runs" in inc else -1
    except KeyError as e:
        raise AttackInputError(
            f"{where!r}: a shadow file lacks the field {e}; it was not written by this version"
        ) from e
    if str(rec.get("fingerprint", fingerprint)) != fingerprint:
        raise AttackInputError(
            f"{where!r}: scores.npz and inclusion.npz come from different pools (fingerprints differ)"
        )
    if scores.shape != inclusion.shape or inclusion.ndim != 1:
        raise AttackInputError(
            f"{where!r}: {scores.size} scores for a pool of {inclusion.size} samples; the files do not belong together"
        )
    bad = ~np.isfinite(scores)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise AttackInputError(
            f"{where!r}: {int(bad.sum())} NaN/inf score(s) (first at pool sample {first}); the model diverged or "
            "the score overflowed. Leave this run out or re-train it"
        )
    correct = rec.get("correct")
    return ShadowRun(
        path=folder,
        inclusion=inclusion,
        scores=scores,
        score_kind=kind,
        fingerprint=fingerprint,
        run_index=run_index,
        num_runs=num_runs if num_runs > 0 else None,
        correct=None if correct is None else np.asarray(correct, dtype=bool),
        label_fingerprint=str(inc["label_fingerprint"]) if "label_fingerprint" in inc else None,
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
        if labelled is not None and run.label_fingerprint not in (None, labelled.label_fingerprint):
            raise AttackInputError(
                f"{str(run.path)!r} trained with other labels than {str(labelled.path)!r} (label fingerprints "
                f"{run.label_fingerprint} and {labelled.label_fingerprint}): another label-noise seed or label "
                "mapping? Every run must use one labelled pool"
            )
        if run.fingerprint != first.fingerprint or run.inclusion.size != first.inclusion.size:
            raise AttackInputError(
                f"{str(run.path)!r} was trained from another pool (fingerprint {run.fingerprint}, {run.inclusion.size} "
                f"samples) than {str(first.path)!r} (fingerprint {first.fingerprint}, {first.inclusion.size} samples); "
                "every run must use the same pool in the same order"
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


def _equalised(
    ref_scores: np.ndarray, ref_in: np.ndarray, *, need_in: bool, need_out: bool, target: ShadowRun
) -> np.ndarray:
    """``ref_scores`` with NaN where a reference is dropped so every sample keeps equally many in- and
    out-references (the smallest counts over the pool, first runs first).

    In a balanced split every sample is in exactly ``k`` runs, so the target's members have ``k - 1``
    in-references and its non-members ``k``: unequal counts would tell the attack the answer
    (Carlini et al.'s code truncates the same way).
    """
    k_in = int(ref_in.sum(axis=0).min())
    k_out = int((~ref_in).sum(axis=0).min())
    if (need_in and k_in == 0) or (need_out and k_out == 0):
        kind = "in" if need_in and k_in == 0 else "out of"
        raise AttackInputError(
            f"with {ref_in.shape[0] + 1} runs of a balanced split, some pool sample is {kind} no reference run "
            f"when {str(target.path)!r} is the target, so the attack cannot score it without learning its "
            "membership from the split; train more runs (4 or more), or use --offline"
        )
    keep = (ref_in & (np.cumsum(ref_in, axis=0) <= k_in)) | (~ref_in & (np.cumsum(~ref_in, axis=0) <= k_out))
    return np.where(keep, ref_scores, np.nan)


def _probabilities(scores: np.ndarray, kind: str) -> np.ndarray:
    if kind == "logit_confidence":
        return special.expit(scores)  # type: ignore[no-any-return]
    if kind == "neg_loss":
        return np.exp(np.minimum(scores, 0.0))  # type: ignore[no-any-return]
    raise AttackInputError(
        f"RMIA needs probabilities, and the runs recorded {kind!r} scores; record them with score='auto', "
        "'logit_confidence' or 'neg_loss' (or a callable with score_kind=)"
    )


@dataclass(frozen=True)
class AttackResult:
    """The attacks over a set of shadow runs.

    Attributes:
        reports: ``{label: AttackReport}`` on the pooled scores of every target (labels such as
            ``"loss"``, ``"lira-online"``, ``"rmia-offline"``).
        per_target_auc: ``{label: [AUC with run k as the target]}``.
        runs: the run folders, in the order given.
        settings: what was run (offline, variance, a, gamma, FPRs).
    """

    reports: dict[str, AttackReport]
    per_target_auc: dict[str, list[float]]
    runs: list[Path]
    settings: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """A plain-JSON summary (what ``attack.json`` holds)."""
        out: dict[str, Any] = {"runs": [str(p) for p in self.runs], "settings": self.settings, "attacks": {}}
        for label, report in self.reports.items():
            entry: dict[str, Any] = {"auc": report.auc, "advantage": report.advantage}
            for x, tpr in report.tpr_at_fpr.items():
                entry[f"tpr@{format_fpr(x)}fpr"] = tpr
            entry.update(
                n_members=report.n_members,
                n_nonmembers=report.n_nonmembers,
                n_excluded=report.n_excluded,
                per_target_auc=self.per_target_auc[label],
            )
            out["attacks"][label] = entry
        return out

    def metrics(self) -> dict[str, float]:
        """The aggregate numbers as flat tracker keys: ``attack/<label>/auc``, ``/advantage``,
        ``/tpr@0.1%fpr``, ``/tpr@1%fpr``, ``/n_members``, ``/n_nonmembers``, ``/n_excluded``."""
        out: dict[str, float] = {}
        for label, report in self.reports.items():
            out.update(report.to_metrics(f"attack/{label}"))
        return out

    def table(self) -> str:
        """The comparison table as aligned text."""
        fprs = list(self.settings["fprs"])
        head = f"{'attack':<14} {'AUC':>7}" + "".join(f" {'TPR@' + format_fpr(x) + 'FPR':>13}" for x in fprs)
        lines = [head, "-" * len(head)]
        for label, report in self.reports.items():
            cells = "".join(f" {report.tpr_at_fpr[x]:>13.4f}" for x in fprs)
            lines.append(f"{label:<14} {report.auc:>7.4f}{cells}")
        return "\n".join(lines)


def run_attack(
    run_dirs: Iterable[str | os.PathLike[str]] | Sequence[ShadowRun],
    *,
    methods: Iterable[str] = METHODS,
    offline: bool = False,
    fixed_variance: bool | None = None,
    a: float = 0.3,
    gamma: float = 1.0,
    fprs: Iterable[float] = (0.001, 0.01),
) -> AttackResult:
    """Run the attacks over shadow runs, each run in turn the target and the others its references.

    Args:
        run_dirs: the runs' directories (or :class:`ShadowRun` objects already loaded), at least 2.
        methods: any of ``"loss"``, ``"lira"``, ``"rmia"``.
        offline: LiRA and RMIA use only the references that did not train on each sample.
        fixed_variance: LiRA's global variance; ``None`` = global with fewer than 64 references.
        a: RMIA's offline parameter in ``[0, 1]``.
        gamma: RMIA's pairwise threshold, ``> 0``.
        fprs: FPRs at which TPR is reported.

    Returns:
        An :class:`AttackResult`.

    Raises:
        AttackInputError: fewer than 2 runs, runs from different pools, a run without an inclusion
            mask or with NaN scores (the message names the run directory).
        ValueError: an unknown method or an argument out of range.

    Example:
        >>> result = run_attack([f"runs/run{i}" for i in range(8)], offline=True)  # doctest: +SKIP
        >>> print(result.table())  # doctest: +SKIP
        attack             AUC   TPR@0.1%FPR     TPR@1%FPR
        --------------------------------------------------
        loss            0.6819        0.0075        0.0480
        lira-offline    0.8206        0.0348        0.1516
        rmia-offline    0.7659        0.0167        0.0751
    """
    offline = check_bool("offline", offline)
    a = check_real("a", a, minimum=0.0, maximum=1.0, hint="e.g. a=0.3")
    gamma = check_real("gamma", gamma, minimum=0.0, min_inclusive=False, hint="e.g. gamma=1.0")
    chosen = list(dict.fromkeys(methods))
    unknown = [m for m in chosen if m not in METHODS]
    if unknown or not chosen:
        raise ValueError(f"`methods` can hold {', '.join(METHODS)}, got {chosen!r}")
    items = list(run_dirs)
    runs = [item if isinstance(item, ShadowRun) else load_shadow_run(item) for item in items]
    check_compatible(runs)
    n_refs = len(runs) - 1
    variance = (
        (n_refs < GLOBAL_VARIANCE_BELOW)
        if fixed_variance is None
        else check_bool("fixed_variance", fixed_variance)
    )
    scores = np.stack([r.scores for r in runs])
    inclusion = np.stack([r.inclusion for r in runs])
    probs = _probabilities(scores, runs[0].score_kind) if "rmia" in chosen else None
    mode = "offline" if offline else "online"
    labels = {"loss": "loss", "lira": f"lira-{mode}", "rmia": f"rmia-{mode}"}
    pooled: dict[str, list[np.ndarray]] = {labels[m]: [] for m in chosen}
    truth: list[np.ndarray] = []
    per_target: dict[str, list[float]] = {labels[m]: [] for m in chosen}
    balanced = all(r.num_runs is not None for r in runs)
    for t in range(len(runs)):
        others = np.arange(len(runs)) != t
        member = inclusion[t]
        truth.append(member)
        refs, ref_probs = scores[others], None if probs is None else probs[others]
        if balanced and chosen != ["loss"]:
            need_in = not offline
            refs = _equalised(refs, inclusion[others], need_in=need_in, need_out=True, target=runs[t])
            if ref_probs is not None:
                ref_probs = np.where(np.isnan(refs), np.nan, ref_probs)
        for method in chosen:
            if method == "loss":
                s = scores[t]
            elif method == "lira":
                s = lira_scores(
                    scores[t],
                    refs,
                    ref_in=inclusion[others],
                    online=not offline,
                    fixed_variance=variance,
                )
            else:
                assert probs is not None and ref_probs is not None
                s = rmia_scores(
                    probs[t],
                    ref_probs,
                    ref_in=inclusion[others],
                    population_idx=np.flatnonzero(~member),
                    offline=offline,
                    a=a,
                    gamma=gamma,
                    break_ties=True,
                )
            pooled[labels[method]].append(s)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                per_target[labels[method]].append(_per_target_auc(s, member))
    is_member = np.concatenate(truth)
    reports = {
        label: attack_report(np.concatenate(parts), is_member, fprs=fprs) for label, parts in pooled.items()
    }
    settings = {
        "offline": offline,
        "fixed_variance": variance,
        "a": a,
        "gamma": gamma,
        "fprs": list(reports[next(iter(reports))].tpr_at_fpr),
        "num_runs": len(runs),
        "pool_size": int(inclusion.shape[1]),
        "score_kind": runs[0].score_kind,
        "fingerprint": runs[0].fingerprint,
    }
    return AttackResult(
        reports=reports, per_target_auc=per_target, runs=[r.path for r in runs], settings=settings
    )


def _per_target_auc(scores: np.ndarray, member: np.ndarray) -> float:
    keep = ~np.isnan(scores)
    if not (member[keep].any() and (~member[keep]).any()):
        return float("nan")
    return attack_report(scores, member, fprs=()).auc


def roc_figure(result: AttackResult) -> Any:
    """The log-log ROC of every attack in one matplotlib figure (no pyplot state; the caller keeps it)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from memcallbacks.loggers import log_log_roc_axes

    fig = Figure(figsize=(5.0, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    floor = 1e-5
    for label, report in result.reports.items():
        ax.plot(
            np.maximum(report.fpr, floor),
            np.maximum(report.tpr, floor),
            label=f"{label} (AUC {report.auc:.3f})",
        )
    ax.plot([floor, 1.0], [floor, 1.0], color="grey", linestyle=":", label="chance")
    log_log_roc_axes(ax, floor)
    ax.set_title(f"Membership inference over {len(result.runs)} shadow runs")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def write_outputs(result: AttackResult, out: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``attack.json``, then ``roc.png`` (log-log ROC per attack) into ``out``.

    ``memcallbacks report`` reads them back (:func:`memcallbacks.rundir.read_attack`).
    """
    buf = io.BytesIO()
    roc_figure(result).savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return rundir.write_attack(Path(out), result.to_json(), buf.getvalue())


def default_out(result: AttackResult) -> Path:
    """Where ``memcallbacks attack`` writes without ``--out``: ``attack/`` (``attack_offline/`` for the
    offline attacks) beside the first run's ``shadow/`` folder, i.e. in its memcallbacks run
    directory, where ``memcallbacks report <first run>`` finds it."""
    shadow = result.runs[0]
    base = shadow.parent if shadow.name == rundir.SHADOW else shadow
    return base / (rundir.ATTACK + ("_offline" if result.settings.get("offline") else ""))


# -- experiment trackers ---------------------------------------------------------------------------
def _tracker_warning(who: str, what: str, error: BaseException) -> None:
    from memcallbacks.loggers import TrackerWarning

    warnings.warn(
        f"memcallbacks attack: {who} failed to {what} ({type(error).__name__}: {error}); "
        "attack.json keeps the numbers",
        TrackerWarning,
        stacklevel=3,
    )


def log_attack_results(result: AttackResult, loggers: Sequence[Any], *, step: int = 0) -> int:
    """Log the attack's aggregate results to Lightning loggers (W&B, TensorBoard, MLflow, CSV).

    Each logger gets the settings as hyperparameters and the scalars of :meth:`AttackResult.metrics`
    (``attack/<label>/auc``, ``attack/<label>/tpr@0.1%fpr``, ``attack/<label>/tpr@1%fpr``, ...)
    through ``log_metrics``; W&B, TensorBoard and MLflow also get the comparison table
    (``attack/summary``), each attack's ROC curve (``attack/<label>/roc``, at most 2,000 points) and
    the log-log ROC figure (``attack/roc``) in the form :mod:`memcallbacks.loggers` gives each
    backend (CSV takes scalars only; MLflow renames ``@`` and ``%`` in keys). Only aggregates are
    sent: no per-sample score, no sample id. A logger that raises is warned about
    (:class:`~memcallbacks.loggers.TrackerWarning`) and counted; nothing is raised. The loggers
    stay open: finalize them (and ``wandb.finish()``) when done.

    Args:
        result: what :func:`run_attack` returned.
        loggers: a Lightning logger or a list of them.
        step: the step the scalars are logged at, ``>= 0``.

    Returns:
        The number of failed logger calls (0 when every tracker got everything).

    Raises:
        TypeError: ``result`` is not an :class:`AttackResult`, or an item of ``loggers`` is not a
            Lightning logger.

    Example:
        >>> from pytorch_lightning.loggers import CSVLogger
        >>> logger = CSVLogger("logs", name="attack")  # doctest: +SKIP
        >>> log_attack_results(run_attack(dirs), [logger]); logger.finalize("success")  # doctest: +SKIP
        0
    """
    from memcallbacks import loggers as tracking

    if not isinstance(result, AttackResult):
        raise TypeError(
            f"`result` must be what run_attack returned (an AttackResult), got {type(result).__name__}"
        )
    step = check_int("step", step, minimum=0, hint="e.g. step=0")
    loggers = [loggers] if hasattr(loggers, "log_metrics") else list(loggers)
    for logger in loggers:
        if not callable(getattr(logger, "log_metrics", None)) or not callable(
            getattr(logger, "log_hyperparams", None)
        ):
            raise TypeError(
                f"`loggers` must be Lightning loggers (with log_metrics), got {type(logger).__name__}; pass e.g. "
                "[TensorBoardLogger('tb_logs'), CSVLogger('logs')]"
            )
    fprs = list(result.settings["fprs"])
    columns = ["attack", "auc", *(f"tpr@{format_fpr(x)}fpr" for x in fprs), "n_members", "n_nonmembers"]
    rows = [
        [label, r.auc, *(r.tpr_at_fpr[x] for x in fprs), r.n_members, r.n_nonmembers]
        for label, r in result.reports.items()
    ]
    fig = roc_figure(result)
    records: list[tracking.Record] = [tracking.Table("attack/summary", columns, rows, epoch=step)]
    records += [
        tracking.RocCurve(f"attack/{label}/roc", r.fpr, r.tpr, epoch=step, title=f"ROC of {label}")
        for label, r in result.reports.items()
    ]
    records.append(tracking.Figure("attack/roc", fig, epoch=step))
    failures = 0
    with warnings.catch_warnings():
        # Lightning renames `tpr@1%fpr` to `tpr1fpr` for MLflow and says so for every key
        warnings.filterwarnings("ignore", message=".*MLFlow only allows.*")
        for logger in loggers:
            try:
                logger.log_hyperparams({f"attack/{k}": v for k, v in result.settings.items()})
            except Exception as e:  # noqa: BLE001 - a tracker must not lose the results
                _tracker_warning(type(logger).__name__, "log the settings", e)
                failures += 1
        for record in records:  # W&B: these join the row that log_metrics commits next
            failures += tracking.emit_to(loggers, record)
        for logger in loggers:
            try:
                logger.log_metrics(result.metrics(), step=step)
            except Exception as e:  # noqa: BLE001
                _tracker_warning(type(logger).__name__, "log the metrics", e)
                failures += 1
    return failures


def make_loggers(
    names: Sequence[str], folder: str | os.PathLike[str], *, project: str, run_name: str
) -> tuple[list[Any], int]:
    """Open one Lightning logger per tracker name under ``folder`` (what ``--log`` does).

    W&B opens a run in ``<folder>/wandb`` (``WANDB_MODE=offline`` needs no account), TensorBoard and
    CSV write to ``<folder>/tensorboard|csv/<run_name>``, MLflow to ``$MLFLOW_TRACKING_URI`` or
    ``sqlite:///<folder>/mlflow.db`` (experiment ``project``). A tracker that cannot be opened is
    warned about and counted.

    Returns:
        ``(loggers, failures)``.
    """
    from pytorch_lightning import loggers as L

    root = Path(folder)
    opened: list[Any] = []
    failures = 0
    for name in names:
        check_choice("names", name, TRACKERS)
        try:
            if name == "csv":
                opened.append(L.CSVLogger(str(root / "csv"), name=run_name))
            elif name == "tensorboard":
                opened.append(
                    L.TensorBoardLogger(str(root / "tensorboard"), name=run_name, default_hp_metric=False)
                )
            elif name == "wandb":
                import wandb

                root.mkdir(parents=True, exist_ok=True)
                run = wandb.init(project=project, name=run_name, dir=str(root), job_type="attack")
                opened.append(L.WandbLogger(experiment=run, save_dir=str(root)))
            else:  # mlflow
                uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"
                root.mkdir(parents=True, exist_ok=True)
                opened.append(
                    L.MLFlowLogger(
                        experiment_name=project,
                        run_name=run_name,
                        tracking_uri=uri,
                        artifact_location=None
                        if os.environ.get("MLFLOW_TRACKING_URI")
                        else str((root / "mlflow-artifacts").resolve()),
                    )
                )
        except Exception as e:  # noqa: BLE001 - a tracker that cannot open must not lose the results
            _tracker_warning(name, "open its run", e)
            failures += 1
    return opened, failures


def close_loggers(loggers: Sequence[Any]) -> int:
    """Finalize loggers opened by :func:`make_loggers` (and finish the W&B run); returns the failures."""
    failures = 0
    for logger in loggers:
        try:
            logger.finalize("success")
            if "WandbLogger" in {c.__name__ for c in type(logger).__mro__}:
                logger.experiment.finish()
        except Exception as e:  # noqa: BLE001
            _tracker_warning(type(logger).__name__, "close its run", e)
            failures += 1
    return failures


# -- command line (called from memcallbacks.cli) ------------------------------------------------
def add_attack_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``attack`` sub-command to ``memcallbacks``' sub-parsers; returns its parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "attack",
        help="LiRA / RMIA / loss membership inference across shadow runs",
        description=(
            "Membership inference across shadow runs recorded with ShadowScoreRecorder: each run in turn is the "
            "target and the others its references. Prints AUC and TPR at 0.1% and 1% FPR per attack; writes "
            "attack.json and a log-log roc.png into --out (default: the first run's memcallbacks/attack folder, "
            "where `memcallbacks report` finds them). With --log, also logs the aggregate numbers and the ROC "
            "figure to experiment-tracker runs (never per-sample scores). Exit codes: 0 success, 2 bad input, "
            "1 results written but a tracker failed (named on stderr)."
        ),
    )
    add_run_dirs_argument(p)
    p.add_argument(
        "--method", choices=METHODS, action="append", help="attack(s) to run, repeatable (default: all three)"
    )
    p.add_argument(
        "--offline", action="store_true", help="LiRA/RMIA use only references that did not train on a sample"
    )
    p.add_argument(
        "--variance",
        choices=("auto", "global", "per-sample"),
        default="auto",
        help="LiRA's variance: global, per-sample, or auto (global below 64 reference runs; default)",
    )
    p.add_argument(
        "--rmia-a", type=_unit_float, default=0.3, help="RMIA's offline parameter a in [0, 1] (default: 0.3)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: attack/, or attack_offline/ with --offline, in the first run's "
        "memcallbacks run directory, beside its shadow/ folder)",
    )
    p.add_argument(
        "--log",
        choices=TRACKERS,
        action="append",
        help="also log AUC, TPR at low FPR, the summary table and the ROC figure to this tracker, repeatable "
        "(aggregates only; W&B honours WANDB_MODE=offline, MLflow MLFLOW_TRACKING_URI)",
    )
    p.add_argument(
        "--log-dir",
        type=Path,
        default=None,
        help="where the trackers write (wandb/, tensorboard/, csv/, mlflow.db; default: the --out folder)",
    )
    p.add_argument("--project", default=None, help="W&B project / MLflow experiment (default: memcallbacks)")
    p.add_argument("--run-name", default=None, help="tracker run name (default: attack)")
    return p


def add_run_dirs_argument(parser: argparse.ArgumentParser) -> None:
    """Adds the ``RUN_DIR...`` positional shared by the commands that read shadow runs."""
    parser.add_argument(
        "run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="the shadow runs' directories (2 or more)"
    )


def write_or_exit(parser: argparse.ArgumentParser, out: Path, write: Callable[[], _T]) -> _T:
    """``write()``; an ``OSError`` becomes ``parser.error`` (exit code 2) naming ``--out`` and the path."""
    try:
        return write()
    except OSError as e:
        parser.error(f"argument --out: cannot write {e.filename or out}: {e.strerror or e}")


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}")
    return value


def attack_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Body of ``memcallbacks attack``: 0 on success; bad input exits 2 through ``parser.error``."""
    fixed = {"auto": None, "global": True, "per-sample": False}[args.variance]
    if not args.log:
        given = [
            f
            for f, v in (
                ("--log-dir", args.log_dir),
                ("--project", args.project),
                ("--run-name", args.run_name),
            )
            if v is not None
        ]
        if given:
            parser.error(f"argument {given[0]}: only used with --log wandb|tensorboard|mlflow|csv")
    try:
        result = run_attack(
            args.run_dirs,
            methods=tuple(args.method or METHODS),
            offline=args.offline,
            fixed_variance=fixed,
            a=args.rmia_a,
        )
    except AttackInputError as e:
        parser.error(str(e))
    out = args.out if args.out is not None else default_out(result)
    paths = write_or_exit(parser, out, lambda: write_outputs(result, out))  # JSON first, trackers after
    print(
        f"{len(result.runs)} shadow runs, pool of {result.settings['pool_size']} samples, each run the target once"
    )
    print(result.table())
    print(f"written: {paths['json']}")
    print(f"         {paths['png']}")
    sys.stdout.flush()
    if not args.log:
        return 0
    return _log_command(result, args, out)


def _log_command(result: AttackResult, args: argparse.Namespace, out: Path) -> int:
    """``--log``: 0 when every tracker got everything, else 1 (each failure named on stderr)."""
    names = list(dict.fromkeys(args.log))
    from memcallbacks.loggers import TrackerWarning

    with _quiet_trackers(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TrackerWarning)
        loggers, failures = make_loggers(
            names,
            args.log_dir if args.log_dir is not None else out,
            project=args.project or "memcallbacks",
            run_name=args.run_name or "attack",
        )
        failures += log_attack_results(result, loggers)
        failures += close_loggers(loggers)
    for w in caught:
        if issubclass(w.category, TrackerWarning):
            text = str(w.message)
            print(
                text if text.startswith("memcallbacks") else f"memcallbacks attack: {text}", file=sys.stderr
            )
        else:  # the trackers' own warnings, shown as usual
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    for logger in loggers:
        where = _logged_where(logger)
        if where:
            print(f"tracker run: {where}")
    if failures:
        print(
            f"memcallbacks attack: {failures} tracker call(s) failed; the results are in "
            f"{out / rundir.ATTACK_FILE} (exit code 1)",
            file=sys.stderr,
        )
        return 1
    return 0


@contextlib.contextmanager
def _quiet_trackers() -> Iterator[None]:
    """MLflow's and Lightning's start-up notices off ("Creating initial MLflow database tables")."""
    names = {
        "mlflow": logging.WARNING,
        "alembic": logging.WARNING,
        "pytorch_lightning.loggers.mlflow": logging.ERROR,
    }
    levels = {n: logging.getLogger(n).level for n in names}
    try:
        import mlflow  # noqa: F401 - configures its logger on import: quieten it afterwards
    except ImportError:
        pass
    for n, level in names.items():
        logging.getLogger(n).setLevel(level)
    try:
        yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def _logged_where(logger: Any) -> str:
    names = {c.__name__ for c in type(logger).__mro__}
    try:
        if "WandbLogger" in names:
            return f"W&B run {logger.experiment.dir}"
        if "MLFlowLogger" in names:
            return f"MLflow run {logger.run_id} at {logger._tracking_uri}"
        return f"{type(logger).__name__} {logger.log_dir}"
    except Exception:  # noqa: BLE001 - a description only
        return ""
