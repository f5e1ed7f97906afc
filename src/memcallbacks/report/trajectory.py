"""The data-map section (Swayamdipta et al. 2020): mean loss against variability per training sample.

Forgetting events (Toneva et al. 2019) colour the points when correctness was recorded; the
training copies of the canaries and the most memorised samples (the tracker's own score) are marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from memcallbacks.report.common import (
    Section,
    fmt,
    name_tag,
    save_figure,
    titled,
)
from memcallbacks.rundir import (
    TRAJECTORY,
    ExposureFiles,
    RunDirectory,
    RunDirectoryError,
    TrajectoryFiles,
)

__all__ = ["TRAJECTORY_TITLE", "CanaryRanking", "canary_copies_ranked", "trajectory_section"]


TRAJECTORY_TITLE = "Per-sample loss trajectories (data map)"


def trajectory_section(
    run: RunDirectory, out_dir: Path, subdir: str = TRAJECTORY, title: str | None = None
) -> Section | None:
    """The data map (mean loss against variability), the most memorised samples and the canary copies.

    Args:
        run: the run directory.
        out_dir: where the figure ``data_map[_<name>].png`` goes.
        subdir: the tracker's folder (``trajectory`` or ``trajectory_<name>``).
        title: the section's title (default: the standard title, with the folder when named).

    Returns:
        The section, or ``None`` when the folder holds no ``statistics.npz``.
    """
    traj = run.trajectory(subdir)
    if traj is None:
        return None
    import matplotlib.pyplot as plt

    d = traj.statistics
    seen = traj.seen
    s = Section(title or titled(TRAJECTORY_TITLE, subdir))
    s.lines.append(
        f"{int(seen.sum())} of {len(seen)} samples recorded over {len(traj.epochs)} epochs; "
        f"mean loss {fmt(np.mean(d['mean'][seen]) if seen.any() else float('nan'))}"
    )
    fig, ax = plt.subplots(figsize=(6.5, 5))
    x, y = d["variability"], d["mean"]
    if "forgetting" in d:
        sc = ax.scatter(x[seen], y[seen], s=4, c=d["forgetting"][seen], cmap="viridis", alpha=0.5, lw=0)
        fig.colorbar(sc, ax=ax, label="forgetting events")
    else:
        ax.scatter(x[seen], y[seen], s=4, color="tab:blue", alpha=0.5, lw=0, label="training samples")
    k = _most_memorised(ax, s, traj)
    _canaries(run, ax, s, traj)
    ax.set_xlabel("variability (std of p(gold) = exp(-loss) over epochs)")
    ax.set_ylabel("mean loss over epochs")
    ax.set_title("Data map")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    by = traj.score_by
    s.figures.append(
        (
            save_figure(fig, out_dir, f"data_map{name_tag(subdir)}.png"),
            f"Data map: mean loss vs variability per training sample; circled: the top {k} by `{by}` "
            f"({_SCORE_MEANING.get(by, by)})",
        )
    )
    if "forgetting" in d:
        s.lines.append(
            f"mean forgetting events per sample: {fmt(np.mean(d['forgetting'][seen]) if seen.any() else 0)}"
        )
    return s


def _most_memorised(ax: Any, s: Section, traj: TrajectoryFiles) -> int:
    """Circle the top samples by the tracker's own ranking score and list the first ten; returns how many."""
    from memcallbacks.metrics.dynamics import top_k

    d, seen = traj.statistics, traj.seen
    x, y = d["variability"], d["mean"]
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
            f"{int(traj.sample_ids[r])} ({fmt(score[r])})"
            for r in top_k(score, min(10, int(seen.sum())), tiebreak=d["variability"])
        )
    )
    return k


def _canaries(run: RunDirectory, ax: Any, s: Section, traj: TrajectoryFiles) -> None:
    """Star the canaries' training copies (from the default ``canary/`` folder) and say how they rank."""
    try:
        exp = run.exposure()
    except RunDirectoryError:
        exp = None
    if exp is None:
        return
    d, seen = traj.statistics, traj.seen
    _canary_stars(ax, s, exp, traj.sample_ids, seen, d["variability"], d["mean"])
    # the canaries inserted 16 times or more (or, when none was, the most inserted ones)
    most = int(exp.repetitions.max()) if exp.repetitions.size else 16
    by = traj.score_by
    ranked = canary_copies_ranked(traj, exp, by=by, min_repetitions=min(16, most))
    if ranked is not None:
        s.lines.append(
            f"{ranked.in_top} of the {ranked.copies} training copies ({100 * ranked.share:.0f}%) of the "
            f"canaries inserted >= {ranked.min_repetitions} times rank in the top 1% "
            f"({ranked.top_size} of the {int(seen.sum())} samples) by `{by}`"
        )
        sampling = str(traj.meta.get("sampling") or "")
        if ranked.draws is not None and sampling in ("poisson", "with_replacement"):
            s.lines.append(
                f"{sampling.replace('_', ' ')} sampling: an epoch draws each copy 0, 1 or more times, so the "
                f"{ranked.copies} copies are those drawn at least once; the sampler drew them {ranked.draws} times "
                f"in the {len(traj.epochs)} recorded epoch(s) (`visits` in statistics.npz)"
            )


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
    #: times the sampler drew those copies (``statistics.npz["visits"]``; None: not recorded)
    draws: int | None = None

    @property
    def share(self) -> float:
        """The fraction of the copies in the top."""
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
    # every draw, repeats included (Poisson sampling repeats and skips samples)
    visits = traj.statistics.get("visits")
    draws = None if visits is None else int(np.asarray(visits)[sel].sum())
    return CanaryRanking(int(np.isin(sel, best).sum()), int(sel.size), k, int(min_repetitions), draws)


def _canary_stars(
    ax: Any, s: Section, exp: ExposureFiles, ids: np.ndarray, seen: np.ndarray, x: np.ndarray, y: np.ndarray
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
