"""Membership-inference attacks across shadow runs, as library functions (``memcallbacks attack``).

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
target beside it. Outputs: ``attack.json`` and ``roc.png`` (log-log axes, :func:`write_outputs`), by default in
``<first run>/memcallbacks/attack/`` (``attack_offline/`` offline, :func:`default_out`), where
``memcallbacks report`` finds them for its "Attacks" section; and, with :func:`log_attack_results`
and Lightning loggers, the aggregate numbers, a summary table, the ROC curves and the ROC figure in
an experiment-tracker run. Per-sample scores never leave the run directories. Shadow runs are read
by :mod:`memcallbacks.offline.shadow_runs`; the command line is :mod:`memcallbacks.cli.attack`.

Example:
    >>> result = run_attack(["runs/0", "runs/1", "runs/2"], methods=("loss", "lira"))  # doctest: +SKIP
    >>> result.reports["lira"].tpr_at_fpr[0.01]  # doctest: +SKIP
    0.083
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import special

from memcallbacks import rundir
from memcallbacks.metrics.attacks import AttackReport, attack_report, lira_scores, rmia_scores
from memcallbacks.metrics.membership import format_fpr
from memcallbacks.offline.shadow_runs import AttackInputError, ShadowRun, check_compatible, load_shadow_run
from memcallbacks.utilities.validation import check_bool, check_int, check_real

__all__ = [
    "GLOBAL_VARIANCE_BELOW",
    "METHODS",
    "AttackInputError",
    "AttackResult",
    "default_out",
    "log_attack_results",
    "roc_figure",
    "run_attack",
    "write_outputs",
]

METHODS = ("loss", "lira", "rmia")
#: below this many reference runs, LiRA uses one global variance by default
GLOBAL_VARIANCE_BELOW = 64


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
        return np.asarray(special.expit(scores), dtype=np.float64)
    if kind == "neg_loss":
        return np.exp(np.minimum(scores, 0.0))
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
    chosen = _checked_methods(methods)
    runs = [item if isinstance(item, ShadowRun) else load_shadow_run(item) for item in list(run_dirs)]
    check_compatible(runs)
    variance = (
        (len(runs) - 1 < GLOBAL_VARIANCE_BELOW)
        if fixed_variance is None
        else check_bool("fixed_variance", fixed_variance)
    )
    scores = np.stack([r.scores for r in runs])
    attack = _Attack(
        runs=runs,
        scores=scores,
        probs=_probabilities(scores, runs[0].score_kind) if "rmia" in chosen else None,
        inclusion=np.stack([r.inclusion for r in runs]),
        offline=offline,
        variance=variance,
        a=a,
        gamma=gamma,
    )
    pooled, per_target = attack.every_target(chosen)
    is_member = attack.inclusion.reshape(-1)
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
        "pool_size": int(attack.inclusion.shape[1]),
        "score_kind": runs[0].score_kind,
        "fingerprint": runs[0].fingerprint,
    }
    return AttackResult(
        reports=reports, per_target_auc=per_target, runs=[r.path for r in runs], settings=settings
    )


def _checked_methods(methods: Iterable[str]) -> list[str]:
    chosen = list(dict.fromkeys(methods))
    unknown = [m for m in chosen if m not in METHODS]
    if unknown or not chosen:
        raise ValueError(f"`methods` can hold {', '.join(METHODS)}, got {chosen!r}")
    return chosen


@dataclass(frozen=True)
class _Attack:
    """The stacked runs of one attack and its settings; scores one target at a time."""

    runs: list[ShadowRun]
    scores: np.ndarray  # [R, N]
    probs: np.ndarray | None  # [R, N], RMIA's probabilities
    inclusion: np.ndarray  # [R, N] bool
    offline: bool
    variance: bool
    a: float
    gamma: float

    def every_target(
        self, methods: Sequence[str]
    ) -> tuple[dict[str, list[np.ndarray]], dict[str, list[float]]]:
        """Each run in turn the target: ``({label: [scores per target]}, {label: [AUC per target]})``."""
        mode = "offline" if self.offline else "online"
        labels = {"loss": "loss", "lira": f"lira-{mode}", "rmia": f"rmia-{mode}"}
        pooled: dict[str, list[np.ndarray]] = {labels[m]: [] for m in methods}
        per_target: dict[str, list[float]] = {labels[m]: [] for m in methods}
        for t in range(len(self.runs)):
            for method, s in self.target_scores(t, methods).items():
                pooled[labels[method]].append(s)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    per_target[labels[method]].append(_per_target_auc(s, self.inclusion[t]))
        return pooled, per_target

    def target_scores(self, t: int, methods: Sequence[str]) -> dict[str, np.ndarray]:
        """Each method's scores of every pool sample with run ``t`` the target, the others its references."""
        others = np.arange(len(self.runs)) != t
        ref_in = self.inclusion[others]
        refs = self.scores[others]
        if all(r.num_runs is not None for r in self.runs) and list(methods) != ["loss"]:
            refs = _equalised(refs, ref_in, need_in=not self.offline, need_out=True, target=self.runs[t])
        out: dict[str, np.ndarray] = {}
        for method in methods:
            if method == "loss":
                out[method] = self.scores[t]
            elif method == "lira":
                out[method] = lira_scores(
                    self.scores[t], refs, ref_in=ref_in, online=not self.offline, fixed_variance=self.variance
                )
            else:
                assert self.probs is not None
                ref_probs = np.where(np.isnan(refs), np.nan, self.probs[others])
                out[method] = rmia_scores(
                    self.probs[t],
                    ref_probs,
                    ref_in=ref_in,
                    population_idx=np.flatnonzero(~self.inclusion[t]),
                    offline=self.offline,
                    a=self.a,
                    gamma=self.gamma,
                    break_ties=True,
                )
        return out


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
def _checked_loggers(loggers: Any) -> list[Any]:
    """``loggers`` as a list (one logger or several), each with ``log_metrics`` and ``log_hyperparams``."""
    loggers = [loggers] if hasattr(loggers, "log_metrics") else list(loggers)
    for logger in loggers:
        if not callable(getattr(logger, "log_metrics", None)) or not callable(
            getattr(logger, "log_hyperparams", None)
        ):
            raise TypeError(
                f"`loggers` must be Lightning loggers (with log_metrics), got {type(logger).__name__}; pass e.g. "
                "[TensorBoardLogger('tb_logs'), CSVLogger('logs')]"
            )
    return loggers


def _attack_records(result: AttackResult, step: int) -> list[Any]:
    """The summary table, each attack's ROC curve and the ROC figure, as tracker records."""
    from memcallbacks import loggers as tracking

    fprs = list(result.settings["fprs"])
    columns = ["attack", "auc", *(f"tpr@{format_fpr(x)}fpr" for x in fprs), "n_members", "n_nonmembers"]
    rows = [
        [label, r.auc, *(r.tpr_at_fpr[x] for x in fprs), r.n_members, r.n_nonmembers]
        for label, r in result.reports.items()
    ]
    records: list[tracking.Record] = [tracking.Table("attack/summary", columns, rows, epoch=step)]
    records += [
        tracking.RocCurve(f"attack/{label}/roc", r.fpr, r.tpr, epoch=step, title=f"ROC of {label}")
        for label, r in result.reports.items()
    ]
    records.append(tracking.Figure("attack/roc", roc_figure(result), epoch=step))
    return records


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
    loggers = _checked_loggers(loggers)
    records = _attack_records(result, step)
    failures = 0
    with warnings.catch_warnings():
        # Lightning renames `tpr@1%fpr` to `tpr1fpr` for MLflow and says so for every key
        warnings.filterwarnings("ignore", message=".*MLFlow only allows.*")
        for logger in loggers:
            try:
                logger.log_hyperparams({f"attack/{k}": v for k, v in result.settings.items()})
            except Exception as e:  # a tracker must not lose the results
                _tracker_warning(type(logger).__name__, "log the settings", e)
                failures += 1
        for record in records:  # W&B: these join the row that log_metrics commits next
            failures += tracking.emit_to(loggers, record)
        for logger in loggers:
            try:
                logger.log_metrics(result.metrics(), step=step)
            except Exception as e:
                _tracker_warning(type(logger).__name__, "log the metrics", e)
                failures += 1
    return failures
