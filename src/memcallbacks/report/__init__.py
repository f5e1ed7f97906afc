"""Offline report: PNG figures, one self-contained HTML page and a Markdown summary.

Reads only the run directory the callbacks wrote (no model, no tracker), through the readers of
:mod:`memcallbacks.rundir`: the ``trajectory/``, ``membership/``, ``sequence/``, ``canary/``,
``audit/`` and ``dp/`` folders and ``stopping.json``, whichever exist. The numbers are the ones the callbacks
wrote (logged AUCs, gaps, bounds); what is drawn but not stored (the ROC curve, the mean exposure
per insertion count) comes from the same functions the callbacks call. Figures (matplotlib, Agg
backend):

- the data map (Swayamdipta et al. 2020): mean loss vs variability per training sample,
  coloured by forgetting events (Toneva et al. 2019) when correctness was recorded, the training
  copies of the canaries and the most memorised samples marked, ranked by the tracker's own
  memorisation score (``meta.json["score_by"]``: ``mean_loss`` for classifiers, ``calibrated_loss``
  or ``min_loss`` for language models);
- exposure vs repetition count, one line per evaluated epoch (Carlini et al. 2019);
- the ROC of the loss-threshold membership attack on log-log axes with TPR at the logged FPRs
  marked (Carlini et al. 2022);
- loss gap and attack AUC over epochs;
- sequence memorisation of language models per epoch: the greedy extraction rate of members and
  non-members (Carlini et al. 2023) and the AUCs of the loss, Min-K% Prob and zlib scores; and the
  (n, p)-discoverable extraction rate against the number of tries n, the greedy rate marked
  (Hayes et al. 2024);
- epsilon over epochs: DP-SGD accountant and the one-run audit lower bound (Steinke et al. 2023);
- attacks across shadow runs (``memcallbacks attack``: loss, LiRA, RMIA): the comparison table
  (AUC, TPR at 0.1% and 1% FPR) and the log-log ROC, as ``attack.json`` and ``roc.png`` hold them,
  from the run directory's ``attack/`` and ``attack_<x>/`` folders and the ``attacks`` given.

The report goes to ``<run_dir>/report`` unless ``out`` is given, whichever folder was passed
(the run directory or a folder above it, such as the demo's ``--out``).

Example:
    >>> paths = build_report("lightning_logs/version_0/memcallbacks")  # doctest: +SKIP
    >>> paths["html"]  # doctest: +SKIP
    PosixPath('lightning_logs/version_0/memcallbacks/report/report.html')
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from memcallbacks.loggers import markdown_table
from memcallbacks.metrics.membership import format_fpr
from memcallbacks.rundir import (
    ATTACK,
    MEMBERSHIP,
    REPORT,
    SEQUENCE,
    TRAJECTORY,
    AttackFiles,
    AuditFiles,
    DPFiles,
    ExposureFiles,
    RunDirectory,
    RunDirectoryError,
    SequenceFiles,
    TrajectoryFiles,
    as_number,
    find_run_dir,
    mean_by_repetition,
    read_attack,
)
from memcallbacks.utilities import fileio

__all__ = ["CanaryRanking", "build_report", "canary_copies_ranked", "find_run_dir", "report_dir"]


@dataclass
class _Section:
    title: str
    lines: list[str] = field(default_factory=list)  # Markdown bullet lines (plain text)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (file name, caption)
    tables: list[tuple[list[str], list[list[str]]]] = field(default_factory=list)  # (header, rows)
    problems: list[str] = field(default_factory=list)  # unreadable files, for the caller


def report_dir(run_dir: str | os.PathLike[str]) -> Path:
    """Where :func:`build_report` writes by default: ``<run directory>/report``.

    ``run_dir`` may be the run directory or a folder above it (see :func:`find_run_dir`).
    """
    return find_run_dir(run_dir) / REPORT


def _prepare_out(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(
            f"`out` {str(out)!r} is a file; pass a folder for the report (it is created)"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PermissionError(
            f"cannot write the report to {str(out)!r} ({e.strerror or e}); pass `out` (`--out` on the command "
            "line) a writable folder"
        ) from e
    return out


def build_report(
    run_dir: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    attacks: Sequence[str | os.PathLike[str]] = (),
) -> dict[str, Any]:
    """Write the figures, ``report.html`` (figures embedded) and ``summary.md`` for a run directory.

    A file that cannot be read does not stop the report: its section says which file and why,
    and the message is returned under ``"problems"``.

    Args:
        run_dir: the folder the callbacks wrote (default ``<trainer.log_dir>/memcallbacks``), or
            a folder above it (the demo's output folder, ``lightning_logs``).
        out: output folder; default ``<run directory>/report``.
        attacks: more ``memcallbacks attack`` output folders (or ``attack.json`` files) to show,
            besides the run directory's own ``attack/`` and ``attack_<x>/`` folders.

    Returns:
        ``{"html": Path, "markdown": Path, "figures": [Path, ...], "problems": [str, ...],
        "run_dir": Path}``.

    Raises:
        FileNotFoundError: ``run_dir`` holds no memcallbacks output.
        NotADirectoryError: ``run_dir`` or ``out`` is a file.
        PermissionError: the output folder cannot be written (pass ``out``).
        ImportError: matplotlib (the ``report`` extra) is not installed.
    """
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(
            "the report draws its figures with matplotlib: pip install 'memcallbacks[report]'"
        ) from e

    matplotlib.use("Agg", force=True)

    root = find_run_dir(run_dir)
    out_dir = _prepare_out(Path(out) if out is not None else root / REPORT)
    run = RunDirectory(root)
    sections: list[_Section] = []
    problems: list[str] = []
    builders: list[tuple[str, Callable[[RunDirectory, Path], _Section | None]]] = [
        ("Early-stopping decision", _stopping_section),
        ("Canary exposure (Secret Sharer)", _canary_section),
    ]
    for sub in run.folders(MEMBERSHIP) or [MEMBERSHIP]:
        builders.append(
            (_titled("Membership inference (loss threshold)", sub), partial(_membership_section, subdir=sub))
        )
    for sub in run.folders(SEQUENCE):
        builders.append(
            (_titled("Sequence memorisation (language models)", sub), partial(_sequence_section, subdir=sub))
        )
    for sub in run.folders(TRAJECTORY) or [TRAJECTORY]:
        builders.append(
            (
                _titled("Per-sample loss trajectories (data map)", sub),
                partial(_trajectory_section, subdir=sub),
            )
        )
    builders.append(("Privacy: DP-SGD epsilon and the one-run audit", _privacy_section))
    attack_sources = [root / sub for sub in run.attack_folders()]
    attack_sources += [
        Path(a) for a in attacks if Path(a).resolve() not in {p.resolve() for p in attack_sources}
    ]
    figure_names: set[str] = set()
    for source in attack_sources:
        title = f"{_ATTACK_TITLE}, `{_shown(source, root)}`"
        builders.append((title, partial(_attack_section, source=source, title=title, names=figure_names)))
    for title, build in builders:
        try:
            section = build(run, out_dir)
        except RunDirectoryError as e:  # one broken file must not hide the rest of the report
            section = _Section(title, [f"could not be drawn: {e}"])
            problems.append(f"{title}: {e}")
        except Exception as e:  # noqa: BLE001 - same: report the section as missing, keep the others
            section = _Section(title, [f"could not be drawn: {type(e).__name__}: {e}"])
            problems.append(f"{title}: {type(e).__name__}: {e}")
        if section is not None:
            sections.append(section)
            problems += [f"{section.title}: {p}" for p in section.problems]
    if not sections:
        sections.append(_Section("Nothing recorded", ["the run directory holds no evaluations yet"]))

    md_path = fileio.atomic_write_bytes(out_dir / "summary.md", _markdown(root, sections).encode())
    html_path = fileio.atomic_write_bytes(out_dir / "report.html", _html(root, out_dir, sections).encode())
    figures = [out_dir / name for s in sections for name, _ in s.figures]
    return {"html": html_path, "markdown": md_path, "figures": figures, "problems": problems, "run_dir": root}


# -- helpers ---------------------------------------------------------------------------------
def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:  # how the run directory's JSON writes NaN/inf
        return "n/a"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.{digits}f}"


def _save(fig: Any, out_dir: Path, name: str) -> str:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    fileio.atomic_write_bytes(out_dir / name, buf.getvalue())
    return name


def _named(subdir: str) -> str:
    """``""`` for a callback's default folder, ``"_x"`` for ``<folder>_x`` (a callback given ``name="x"``)."""
    return "" if "_" not in subdir else "_" + subdir.split("_", 1)[1]


def _titled(title: str, subdir: str) -> str:
    return title if not _named(subdir) else f"{title}, `{subdir}`"


def _integer_epochs(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")


def _restored_epoch(run: RunDirectory) -> int | None:
    try:
        stop = run.stopping()
    except RunDirectoryError:
        return None
    return None if stop is None else stop.restored_epoch


# -- sections ----------------------------------------------------------------------------------
def _stopping_section(run: RunDirectory, out_dir: Path) -> _Section | None:
    stop = run.stopping()
    if stop is None:
        return None
    info = stop.info
    s = _Section("Early-stopping decision")
    if stop.stopped:
        s.lines.append(f"**stopped** at epoch {info.get('stopped_epoch')}: {info.get('reason')}")
    else:
        last = info.get("last_epoch")
        s.lines.append(
            "early stopping did not fire: no leakage threshold was crossed"
            + (f" (last epoch checked: {last})" if last is not None else "")
        )
    if stop.restored_epoch is not None:
        s.lines.append(
            f"weights restored from epoch {stop.restored_epoch} (the last evaluation below every threshold): "
            "the model left in memory at the end of fit holds that epoch's weights"
        )
    for c in info.get("conditions") or []:
        if isinstance(c, dict):
            s.lines.append(
                f"condition: `{c.get('monitor')}` {'>' if c.get('mode', 'max') == 'max' else '<'} "
                f"{c.get('threshold')} (patience {c.get('patience') or 1})"
            )
    return s


def _canary_section(run: RunDirectory, out_dir: Path) -> _Section | None:
    exp = run.exposure()
    if exp is None:
        return None
    import matplotlib.pyplot as plt

    epochs, reps, exposure = exp.epochs, exp.repetitions, exp.exposure
    cap = exp.log2_space_size
    counts = sorted(set(reps.tolist()))
    s = _Section("Canary exposure (Secret Sharer)")
    s.lines.append(
        f"{len(reps)} canaries, method {exp.method}, randomness space {_fmt(cap, 1)} bits; "
        f"evaluated at epochs {', '.join(str(int(e)) for e in epochs)}"
    )
    if not exposure.size:
        s.lines.append("no evaluation recorded yet")
        return s
    per = ", ".join(f"x{k}: {_fmt(v, 1)}" for k, v in exp.mean_by_repetition(-1).items())
    s.lines.append(
        f"mean exposure (bits) by insertion count at the last evaluation (epoch {int(epochs[-1])}): {per}"
    )
    s.lines.append(f"largest exposure at epoch {int(epochs[-1])}: {_fmt(np.max(exposure[-1]), 1)} bits")
    restored = _restored_epoch(run)
    if restored is not None and restored in epochs.tolist():
        row = epochs.tolist().index(restored)
        kept = ", ".join(f"x{k}: {_fmt(v, 1)}" for k, v in exp.mean_by_repetition(row).items())
        s.lines.append(f"weights kept (restored from epoch {restored}) measured at that epoch: {kept}")

    fig, ax = plt.subplots(figsize=(6, 4))
    cmap = plt.get_cmap("viridis")
    for i, e in enumerate(epochs):
        means = mean_by_repetition(exposure[i], reps)
        label = f"epoch {int(e)}" + (" (weights kept)" if restored is not None and int(e) == restored else "")
        ax.plot(
            counts,
            [means[c] for c in counts],
            marker="o",
            color=cmap(i / max(1, len(epochs) - 1)),
            label=label,
        )
    if math.isfinite(cap):
        ax.axhline(cap, color="grey", ls="--", lw=1, label=f"maximum: log2|R| = {cap:.1f} bits")
    ax.axhline(0.0, color="black", ls=":", lw=1, label="chance: 0 bits (not memorised)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(int(c)) for c in counts])
    ax.minorticks_off()
    ax.set_xlabel("times the canary was inserted")
    ax.set_ylabel("mean exposure (bits)")
    ax.set_title("Exposure vs repetition count")
    ax.legend(fontsize=8)
    s.figures.append(
        (_save(fig, out_dir, "exposure_vs_repetitions.png"), "Exposure vs repetition count per epoch")
    )
    return s


def _tpr_keys(row: dict[str, Any], prefix: str = "mem/mia/tpr@") -> list[tuple[float, str]]:
    """``(fpr, key)`` for the ``mem/mia/tpr@<x>%fpr`` keys the monitor logged, by FPR."""
    out = []
    for key in row:
        if key.startswith(prefix) and key.endswith("%fpr"):
            try:
                out.append((float(key[len(prefix) : -len("%fpr")]) / 100.0, key))
            except ValueError:
                continue
    return sorted(out)


def _membership_section(run: RunDirectory, out_dir: Path, subdir: str = MEMBERSHIP) -> _Section | None:
    mem = run.membership(subdir)
    if mem is None:
        return None
    import matplotlib.pyplot as plt

    from memcallbacks import loggers
    from memcallbacks.metrics.membership import roc_curve

    s = _Section(_titled("Membership inference (loss threshold)", subdir))
    tag = _named(subdir)
    if not mem.history or mem.member_losses.size == 0:
        s.lines.append("no evaluation recorded yet")
        return s
    last = mem.history[-1]
    epoch = int(mem.epochs[-1])
    auc = as_number(last.get("mem/mia/auc"))
    n_non = int(last.get("mem/mia/n_nonmembers") or mem.summary.get("n_nonmembers") or 0)
    n_mem = int(last.get("mem/mia/n_members") or mem.summary.get("n_members") or 0)
    tprs = _tpr_keys(last)
    low = min((f for f, _ in tprs), default=0.001)
    s.lines.append(
        f"last evaluation (epoch {epoch}): AUC {_fmt(auc)}, advantage {_fmt(last.get('mem/mia/advantage'))}, "
        + ", ".join(f"TPR@{f:.1%}FPR {_fmt(last.get(k))}".replace(".0%", "%") for f, k in tprs)
        + f" ({n_mem} members, {n_non} non-members: FPR {low:.1%} allows {int(n_non * low)} false positive(s), "
        f"so TPR there is {'coarse' if n_non * low < 10 else 'resolved'})"
    )
    if "mem/mia_cal/auc" in last:
        s.lines.append(
            f"difficulty-calibrated attack (Watson et al. 2022): AUC {_fmt(last.get('mem/mia_cal/auc'))}"
        )

    m, n = mem.member_losses[-1], mem.nonmember_losses[-1]
    m, n = m[np.isfinite(m)], n[np.isfinite(n)]
    if m.size and n.size:
        fpr, tpr, _ = roc_curve(m, n)
        # the trackers' own drawing (TensorBoard, MLflow): one picture of the ROC everywhere
        fig = loggers._render(
            loggers.RocCurve("mem/mia/roc", fpr, tpr, epoch, title="Membership-inference ROC")
        )
        ax = fig.axes[0]
        floor = ax.get_xlim()[0]
        ax.lines[0].set_label(f"attack (AUC {_fmt(auc)})")
        ax.lines[1].set_label("chance (random guess: TPR = FPR)")
        for f, k in tprs:
            value = as_number(last.get(k))
            if f >= floor and math.isfinite(value):
                ax.plot([f], [max(value, ax.get_ylim()[0])], "o", label=f"TPR@{f:.1%} FPR = {value:.3f}")
        ax.legend(fontsize=8, loc="lower right")
        s.figures.append(
            (
                _save(fig, out_dir, f"mia_roc{tag}.png"),
                f"ROC of the loss-threshold attack, epoch {epoch} (log-log)",
            )
        )

    epochs = mem.epochs
    fig, ax1 = plt.subplots(figsize=(6, 4))
    h1 = ax1.plot(
        epochs, mem.metric("mem/gap/loss"), marker="o", color="tab:blue", label="loss gap (left axis)"
    )
    ax1.set_ylabel("held-out minus member loss", color="tab:blue")
    _integer_epochs(ax1)
    ax2 = ax1.twinx()
    h2 = ax2.plot(
        epochs, mem.metric("mem/mia/auc"), marker="s", color="tab:red", label="attack AUC (right axis)"
    )
    h3 = [ax2.axhline(0.5, color="tab:red", ls=":", lw=1, label="chance: AUC 0.5")]
    ax2.set_ylabel("attack AUC", color="tab:red")
    ax1.legend(handles=h1 + h2 + h3, fontsize=8, loc="best")
    ax1.set_title("Loss gap and membership AUC over training")
    s.figures.append(
        (_save(fig, out_dir, f"gap_auc{tag}.png"), "Train/held-out loss gap and attack AUC per epoch")
    )
    return s


def _trajectory_section(run: RunDirectory, out_dir: Path, subdir: str = TRAJECTORY) -> _Section | None:
    traj = run.trajectory(subdir)
    if traj is None:
        return None
    import matplotlib.pyplot as plt

    from memcallbacks.metrics.dynamics import top_k

    d = traj.statistics
    seen = traj.seen
    s = _Section(_titled("Per-sample loss trajectories (data map)", subdir))
    s.lines.append(
        f"{int(seen.sum())} of {len(seen)} samples recorded over {len(traj.epochs)} epochs; "
        f"mean loss {_fmt(np.mean(d['mean'][seen]) if seen.any() else float('nan'))}"
    )
    fig, ax = plt.subplots(figsize=(6.5, 5))
    x, y = d["variability"], d["mean"]
    if "forgetting" in d:
        sc = ax.scatter(x[seen], y[seen], s=4, c=d["forgetting"][seen], cmap="viridis", alpha=0.5, lw=0)
        fig.colorbar(sc, ax=ax, label="forgetting events")
    else:
        ax.scatter(x[seen], y[seen], s=4, color="tab:blue", alpha=0.5, lw=0, label="training samples")
    # the ranking the tracker itself uses for its most-memorised table (its `score`)
    by = traj.score_by
    score = traj.score(by)
    k = max(1, min(50, int(seen.sum()) // 100))
    order = top_k(score, k, tiebreak=d["variability"])
    ax.scatter(
        x[order],
        y[order],
        s=90,
        facecolors="none",
        edgecolors="red",
        lw=1.2,
        zorder=4,  # above the canary stars, which they often are
        label=f"top {k} by {by} (circled)",
    )
    s.lines.append(
        f"most memorised, ranked by `{by}` ({_SCORE_MEANING.get(by, by)}): sample "
        + ", ".join(
            f"{int(traj.sample_ids[r])} ({_fmt(score[r])})"
            for r in top_k(score, min(10, int(seen.sum())), tiebreak=d["variability"])
        )
    )
    try:
        exp = run.exposure()
    except RunDirectoryError:
        exp = None
    if exp is not None:
        _canary_stars(ax, s, exp, traj.sample_ids, seen, x, y)
        # the canaries inserted 16 times or more (or, when none was, the most inserted ones)
        most = int(exp.repetitions.max()) if exp.repetitions.size else 16
        ranked = canary_copies_ranked(traj, exp, by=by, min_repetitions=min(16, most))
        if ranked is not None:
            s.lines.append(
                f"{ranked.in_top} of the {ranked.copies} training copies ({100 * ranked.share:.0f}%) of the "
                f"canaries inserted >= {ranked.min_repetitions} times rank in the top 1% "
                f"({ranked.top_size} of the {int(seen.sum())} samples) by `{by}`"
            )
    ax.set_xlabel("variability (std of p(gold) = exp(-loss) over epochs)")
    ax.set_ylabel("mean loss over epochs")
    ax.set_title("Data map")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    s.figures.append(
        (
            _save(fig, out_dir, f"data_map{_named(subdir)}.png"),
            f"Data map: mean loss vs variability per training sample; circled: the top {k} by `{by}` "
            f"({_SCORE_MEANING.get(by, by)})",
        )
    )
    if "forgetting" in d:
        s.lines.append(
            f"mean forgetting events per sample: {_fmt(np.mean(d['forgetting'][seen]) if seen.any() else 0)}"
        )
    return s


#: what each memorisation score ranks by (``LossTrajectoryTracker(score=...)``), higher = more memorised
_SCORE_MEANING = {
    "mean_loss": "highest mean loss over epochs: samples fitted late, for classifiers",
    "calibrated_loss": "reference loss minus the lowest loss reached: memorised text, for language models",
    "min_loss": "lowest loss reached: memorised text, for language models",
    "low_loss": "lowest last loss: memorised text, for language models",
    "loss_drop": "largest drop from the first-visit loss to the last",
}


def _canary_copy_positions(exp: ExposureFiles, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Row of each canary training copy in the trajectory (-1: not recorded) and its canary's insertion count."""
    a = exp.arrays
    if "injected_index" not in a or "injected_canary" not in a:
        return None
    reps_of = dict(zip(a["canary_ids"].tolist(), exp.repetitions.tolist())) if "canary_ids" in a else {}
    copy_reps = np.array([reps_of.get(c, -1) for c in a["injected_canary"].tolist()], dtype=np.int64)
    position = {int(v): i for i, v in enumerate(ids.tolist())}
    pos = np.array([position.get(int(i), -1) for i in a["injected_index"].tolist()], dtype=np.int64)
    return pos, copy_reps


class CanaryRanking(NamedTuple):
    """Result of :func:`canary_copies_ranked`."""

    in_top: int  #: canary copies among the ``top_size`` highest scores
    copies: int  #: canary copies recorded (of canaries inserted ``>= min_repetitions`` times)
    top_size: int  #: samples in the top fraction (at least 1)
    min_repetitions: int

    @property
    def share(self) -> float:
        return self.in_top / self.copies


def canary_copies_ranked(
    traj: TrajectoryFiles,
    exp: ExposureFiles,
    *,
    by: str | None = None,
    min_repetitions: int = 16,
    top: float = 0.01,
) -> CanaryRanking | None:
    """How many training copies of the canaries inserted ``>= min_repetitions`` times rank in the top ``top``.

    Ranked by the trajectory's memorisation score ``by`` (default the tracker's ``score``) among
    the recorded samples; ``top=0.01`` is the top 1%.

    Returns:
        A :class:`CanaryRanking`, or ``None`` when the run directory does not say where the
        canaries were inserted or none of those copies was recorded.
    """
    found = _canary_copy_positions(exp, traj.sample_ids)
    if found is None:
        return None
    pos, reps = found
    seen = traj.seen
    sel = pos[(pos >= 0) & (reps >= min_repetitions)]
    sel = sel[seen[sel]]
    if sel.size == 0:
        return None
    from memcallbacks.metrics.dynamics import top_k

    score = traj.score(by)
    k = max(1, int(np.ceil(top * int(seen.sum()))))
    best = top_k(score, k, tiebreak=traj.statistics["variability"])
    return CanaryRanking(int(np.isin(sel, best).sum()), int(sel.size), k, int(min_repetitions))


def _canary_stars(
    ax: Any, s: _Section, exp: ExposureFiles, ids: np.ndarray, seen: np.ndarray, x: np.ndarray, y: np.ndarray
) -> None:
    """Mark the training copies of each canary, one colour per insertion count."""
    found = _canary_copy_positions(exp, ids)
    if found is None:
        return
    import matplotlib.pyplot as plt

    a = exp.arrays
    reps_of = dict(zip(a["canary_ids"].tolist(), exp.repetitions.tolist())) if "canary_ids" in a else {}
    pos, copy_reps = found
    ok = pos >= 0
    ok[ok] = seen[pos[ok]]
    if not ok.any():
        return
    counts = sorted(set(copy_reps[ok].tolist()))
    cmap = plt.get_cmap("autumn")
    for j, r in enumerate(counts):
        sel = pos[ok & (copy_reps == r)]
        n_canaries = sum(1 for v in reps_of.values() if v == r)
        ax.scatter(
            x[sel],
            y[sel],
            marker="*",
            s=60,
            color=cmap(j / max(1, len(counts) - 1)),
            edgecolors="black",
            lw=0.5,
            label=f"canary copies, inserted x{r} ({n_canaries} canaries, {sel.size} copies)",
        )
    s.lines.append(
        f"stars: the {int(ok.sum())} training copies of the {len(reps_of)} canaries (each canary appears once "
        "per insertion), coloured by how many times their canary was inserted; a canary inserted more "
        "often is learned sooner (lower mean loss)"
    )


def _sequence_section(run: RunDirectory, out_dir: Path, subdir: str = SEQUENCE) -> _Section | None:
    seq = run.sequence(subdir)
    if seq is None:
        return None
    s = _Section(_titled("Sequence memorisation (language models)", subdir))
    if not seq.history:
        s.lines.append("no evaluation recorded yet")
        return s
    last = seq.history[-1]
    s.lines.append(
        f"last evaluation (epoch {int(as_number(last.get('epoch')))}): exact extraction of the "
        f"{seq.summary.get('suffix_len')}-token suffix from a {seq.summary.get('prefix_len')}-token prefix "
        f"(Carlini et al. 2023): members {_fmt(last.get('mem/extract/exact_rate'))}, non-members "
        f"{_fmt(last.get('mem/extract/exact_rate_nonmember'))}; token match {_fmt(last.get('mem/extract/token_match'))}"
    )
    tries = _n_tries(seq.summary, last)
    p = seq.summary.get("p_threshold")
    if tries:
        rates = ", ".join(f"n={n}: {_fmt(last.get(f'mem/extract/prob_rate/n{n}'))}" for n in tries)
        s.lines.append(
            f"(n, p)-discoverable extraction (Hayes et al. 2024), p = {_fmt(p, 2)}: fraction of member probes "
            f"that a user sampling n times gets back at least once with probability >= p: {rates}; "
            f"mean single-sample probability {_fmt(last.get('mem/extract/prob_mean'), 4)}"
        )
    aucs = [
        f"{score} {_fmt(last.get(f'mem/mia_lm/auc/{score}'))}"
        for score in ("loss", "min_k", "zlib")
        if f"mem/mia_lm/auc/{score}" in last
    ]
    if aucs:
        s.lines.append(
            "membership-inference AUC by score (loss: Yeom et al. 2018; min_k: Shi et al. 2024; zlib: "
            f"Carlini et al. 2021): {', '.join(aucs)}"
        )
    tag = _named(subdir)
    name = _sequence_over_epochs(seq, out_dir, tag)
    if name is not None:
        s.figures.append(
            (name, "Greedy extraction rate (members, non-members) and LM membership AUCs per epoch")
        )
    if tries:
        s.figures.append(
            (
                _extraction_vs_tries(seq, out_dir, tag, tries, p),
                f"(n, p)-discoverable extraction rate against the number of tries n, p = {_fmt(p, 2)}, "
                "greedy rate marked (Hayes et al. 2024)",
            )
        )
    return s


def _n_tries(summary: dict[str, Any], row: dict[str, Any]) -> list[int]:
    """The ``n`` of the ``mem/extract/prob_rate/n<n>`` keys: the summary's ``n_tries``, else the keys logged."""
    tries = summary.get("n_tries")
    if isinstance(tries, list) and tries:
        return sorted(int(n) for n in tries)
    out = []
    for key in row:
        rest = key[len("mem/extract/prob_rate/n") :] if key.startswith("mem/extract/prob_rate/n") else ""
        if rest.isdigit():
            out.append(int(rest))
    return sorted(out)


def _sequence_over_epochs(seq: SequenceFiles, out_dir: Path, tag: str) -> str | None:
    import matplotlib.pyplot as plt

    epochs = seq.metric("epoch")
    rates = {
        "members (trained on)": seq.metric("mem/extract/exact_rate"),
        "non-members (never trained on)": seq.metric("mem/extract/exact_rate_nonmember"),
    }
    aucs = {
        "loss (Yeom et al. 2018)": seq.metric("mem/mia_lm/auc/loss"),
        "Min-K% Prob (Shi et al. 2024)": seq.metric("mem/mia_lm/auc/min_k"),
        "zlib ratio (Carlini et al. 2021)": seq.metric("mem/mia_lm/auc/zlib"),
    }
    if not any(np.isfinite(v).any() for v in (*rates.values(), *aucs.values())):
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for (label, values), marker in zip(rates.items(), ("o", "s")):
        if np.isfinite(values).any():
            ax1.plot(epochs, values, marker=marker, label=label)
    ax1.set_ylabel("fraction of probes extracted exactly (greedy)")
    _rate_limits(ax1, *rates.values())
    ax1.set_title(f"Greedy extraction rate ({seq.summary.get('suffix_len')}-token suffix)")
    _integer_epochs(ax1)
    ax1.legend(fontsize=8, loc="best")
    for (label, values), marker in zip(aucs.items(), ("o", "s", "^")):
        if np.isfinite(values).any():
            ax2.plot(epochs, values, marker=marker, label=label)
    ax2.axhline(0.5, color="grey", ls=":", lw=1, label="chance: AUC 0.5")
    ax2.set_ylabel("membership-inference AUC")
    ax2.set_title("LM membership scores")
    _integer_epochs(ax2)
    ax2.legend(fontsize=8, loc="best")
    fig.suptitle("Sequence memorisation over training" + (f" ({tag[1:]})" if tag else ""))
    fig.tight_layout()
    return _save(fig, out_dir, f"sequence_epochs{tag}.png")


def _rate_limits(ax: Any, *values: np.ndarray) -> None:
    """A rate axis from just below 0 (points at 0 stay whole) to above the largest rate."""
    finite = [v[np.isfinite(v)] for v in values]
    top = max([float(np.max(v)) for v in finite if v.size] + [0.01])
    ax.set_ylim(-0.04 * top, 1.08 * top)


def _extraction_vs_tries(seq: SequenceFiles, out_dir: Path, tag: str, tries: list[int], p: Any) -> str:
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(6, 4))
    cmap = plt.get_cmap("viridis")
    rows = seq.history
    for i, row in enumerate(rows):
        color = cmap(i / max(1, len(rows) - 1))
        epoch = int(as_number(row.get("epoch")))
        ax.plot(
            tries,
            [as_number(row.get(f"mem/extract/prob_rate/n{n}")) for n in tries],
            marker="o",
            color=color,
            label=f"epoch {epoch}",
        )
        greedy = as_number(row.get("mem/extract/exact_rate"))
        if math.isfinite(greedy):
            ax.plot(
                [tries[0]],
                [greedy],
                marker="*",
                ms=13,
                color=color,
                mec="black",
                mew=0.6,
                ls="none",
                zorder=3,
            )
    handles, _ = ax.get_legend_handles_labels()
    handles += [
        Line2D([], [], marker="*", ms=11, color="grey", mec="black", mew=0.6, ls="none",
               label="greedy exact rate (one greedy decode)"),
        Line2D([], [], ls="none", label=f"p_threshold = {_fmt(p, 2)}: extracted with probability >= p"),
    ]  # fmt: skip
    ax.set_xscale("log")
    ax.set_xticks(tries, [str(n) for n in tries])
    ax.minorticks_off()
    _rate_limits(
        ax, *[seq.metric(f"mem/extract/prob_rate/n{n}") for n in tries], seq.metric("mem/extract/exact_rate")
    )
    ax.set_xlabel("n: samples drawn from the prefix (log scale)")
    ax.set_ylabel("fraction of member probes extracted")
    ax.set_title("(n, p)-discoverable extraction vs tries" + (f" ({tag[1:]})" if tag else ""))
    ax.legend(handles=handles, fontsize=7, loc="best")
    return _save(fig, out_dir, f"extraction_vs_tries{tag}.png")


def _privacy_section(run: RunDirectory, out_dir: Path) -> _Section | None:
    dp, audit = _read_or_note(run.dp), _read_or_note(run.audit)
    if dp is None and audit is None:
        return None
    import matplotlib.pyplot as plt

    s = _Section("Privacy: DP-SGD epsilon and the one-run audit")
    for value in (dp, audit):
        if isinstance(value, RunDirectoryError):
            s.lines.append(f"could not be drawn: {value}")
            s.problems.append(str(value))
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    if isinstance(dp, DPFiles) and dp.history:
        delta, acc = dp.summary.get("delta"), dp.summary.get("accountant")
        ax.plot(
            [h["epoch"] for h in dp.history],
            dp.epsilon,
            marker="o",
            label=f"DP-SGD epsilon, an upper bound ({acc}, delta={delta})",
        )
        s.lines.append(
            f"DP-SGD epsilon after epoch {dp.history[-1]['epoch']}: {_fmt(dp.epsilon[-1])} at delta {delta} "
            f"({acc} accountant; a guarantee: epsilon is at most this)"
        )
        drawn = True
    if isinstance(audit, AuditFiles) and audit.history:
        eps = audit.epsilon_lb()
        conf = audit.confidence
        ax.plot(
            [h["epoch"] for h in audit.history],
            eps,
            marker="s",
            label=f"audit: epsilon lower bound at {conf:.0%} confidence ({audit.summary.get('num_canaries')} canaries)",
        )
        last = audit.history[-1]
        s.lines.append(
            f"one-run audit after epoch {last['epoch']}: epsilon >= {_fmt(last.get('epsilon_lb'))} with confidence "
            f"{conf:.0%} ({last.get('correct')} of {last.get('guesses')} guesses right)"
        )
        if np.any(eps == 0.0):
            note = (
                f"0 = nothing proved: the audit's guesses were not accurate enough to exclude any epsilon > 0 at "
                f"{conf:.0%} confidence. It is a lower bound, not an estimate: the true epsilon can be larger"
            )
            s.lines.append(note)
            ax.text(
                0.02, 0.97, "audit at 0: nothing proved at\n" f"{conf:.0%} confidence (a bound, not an estimate)",
                transform=ax.transAxes, va="top", fontsize=7, color="tab:orange",
            )  # fmt: skip
        drawn = True
    if not drawn:
        plt.close(fig)
        s.lines.append("no evaluation recorded yet")
        return s
    _integer_epochs(ax)
    ax.set_ylabel("epsilon")
    ax.set_ylim(bottom=0)
    ax.set_title("Privacy loss over training")
    ax.legend(fontsize=7, loc="lower right")
    s.figures.append(
        (
            _save(fig, out_dir, "epsilon.png"),
            "Epsilon over epochs: the accountant's guarantee (upper bound) and the audit's lower bound",
        )
    )
    return s


_ATTACK_TITLE = "Attacks across shadow runs (loss, LiRA, RMIA)"


def _shown(path: Path, root: Path) -> str:
    """``path`` relative to the run directory when it is inside it."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _attack_section(
    run: RunDirectory, out_dir: Path, *, source: Path, title: str, names: set[str]
) -> _Section | None:
    att: AttackFiles = read_attack(source)
    s = _Section(title)
    st = att.settings
    mode = "offline: references that did not train on the sample" if st.get("offline") else "online"
    s.lines.append(
        f"{st.get('num_runs')} shadow runs, pool of {st.get('pool_size')} samples, scores "
        f"{st.get('score_kind')}; each run in turn the target, the others its references ({mode}); "
        "scores of every target pooled into one ROC, members positive"
    )
    s.lines.append(
        f"LiRA variance {'global' if st.get('fixed_variance') else 'per sample'}; RMIA a = {st.get('a')}, "
        f"gamma = {st.get('gamma')} (Carlini et al. 2022; Zarifzadeh et al. 2024)"
    )
    header = ["attack", "AUC", *(f"TPR@{format_fpr(x)}FPR" for x in att.fprs), "AUC per target (min-max)"]
    rows = []
    for row in att.rows:
        finite = [v for v in row.per_target_auc if math.isfinite(v)]
        spread = f"{_fmt(min(finite), 4)}-{_fmt(max(finite), 4)}" if finite else "n/a"
        rows.append([row.label, _fmt(row.auc, 4), *(_fmt(row.tpr_at_fpr[x], 4) for x in att.fprs), spread])
    s.tables.append((header, rows))
    n_non = att.rows[0].n_nonmembers
    low = min(att.fprs, default=0.001)
    s.lines.append(
        f"{att.rows[0].n_members} member and {n_non} non-member scores pooled: FPR {format_fpr(low)} allows "
        f"{int(n_non * low)} false positive(s), so TPR there is {'coarse' if n_non * low < 10 else 'resolved'}"
    )
    s.lines.append(f"numbers read from {att.folder / 'attack.json'}")
    figure = att.figure
    if figure is None:
        note = f"{str(att.folder / 'roc.png')!r} is missing: re-run `memcallbacks attack` to draw the ROC"
        s.lines.append(note)
        s.problems.append(note)
        return s
    tail = att.folder.name[len(ATTACK) + 1 :] if att.folder.name.startswith(ATTACK + "_") else att.folder.name
    stem = "attack_roc" + ("" if att.folder.name == ATTACK else "_" + _safe_name(tail))
    name, k = f"{stem}.png", 2
    while name in names:
        name, k = f"{stem}_{k}.png", k + 1
    names.add(name)
    fileio.atomic_write_bytes(out_dir / name, figure.read_bytes())
    s.figures.append(
        (name, "ROC of each attack on log-log axes, every target pooled (roc.png of the attack)")
    )
    return s


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text) or "attack"


def _read_or_note(reader: Callable[[], Any]) -> Any:
    try:
        return reader()
    except RunDirectoryError as e:
        return e


# -- rendering ------------------------------------------------------------------------------
def _markdown(root: Path, sections: list[_Section]) -> str:
    out = ["# memcallbacks report", "", f"Run directory: `{root}`", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        out += [f"- {line}" for line in s.lines]
        out.append("")
        for header, rows in s.tables:
            out += [markdown_table(header, rows), ""]
        out += [f"![{cap}]({name})" for name, cap in s.figures]
        out.append("")
    out.append("Per-sample values stay in the run directory; nothing here was sent to a tracker.")
    return "\n".join(out) + "\n"


def _html(root: Path, out_dir: Path, sections: list[_Section]) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>memcallbacks report</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}"
        "figure{display:inline-block;margin:0.5em}img{max-width:460px}figcaption{font-size:0.85em;color:#555}"
        "h2{border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:0.5em 0}"
        "td,th{border:1px solid #ccc;padding:0.2em 0.6em;text-align:right}td:first-child{text-align:left}"
        "</style></head><body>",
        "<h1>memcallbacks report</h1>",
        f"<p>Run directory: <code>{html.escape(str(root))}</code></p>",
    ]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2><ul>")
        for line in s.lines:
            parts.append(f"<li>{html.escape(line).replace('**', '')}</li>")
        parts.append("</ul>")
        for header, rows in s.tables:
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
            for cells in rows:
                parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            parts.append("</table>")
        for name, cap in s.figures:
            data = base64.b64encode((out_dir / name).read_bytes()).decode()
            parts.append(
                f"<figure id='{html.escape(name)}'><img alt='{html.escape(name)}' "
                f"src='data:image/png;base64,{data}'><figcaption>{html.escape(cap)} "
                f"(<code>{html.escape(name)}</code>)</figcaption></figure>"
            )
    parts.append(
        "<p><small>Generated from the run directory alone; per-sample values never leave it.</small></p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)
