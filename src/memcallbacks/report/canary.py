"""The canary-exposure section (Carlini et al. 2019): exposure against insertion count, per epoch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from memcallbacks.report.common import (
    Section,
    evaluation_axis,
    fmt,
    name_tag,
    restored_epoch,
    save_figure,
)
from memcallbacks.rundir import (
    CANARY,
    ExposureFiles,
    RunDirectory,
    mean_by_repetition,
)

__all__ = ["CANARY_TITLE", "canary_section", "chance_exposure"]

CANARY_TITLE = "Canary exposure (Secret Sharer)"


def chance_exposure(log2_space_size: float = math.inf) -> float:
    """The expected exposure of a secret the model never saw: the chance level of exposure, in bits.

    With ``exposure = log2|R| - log2 rank`` (Carlini et al. 2019, Def. 4) and the rank of an unseen
    secret uniform over ``1..|R|``, the expectation is ``log2|R| - log2(|R|!) / |R|``, which tends to
    ``1 / ln 2 = 1.443`` bits as ``|R|`` grows (Stirling); the extrapolated exposure ``-log2 CDF`` of
    a secret drawn like the references has exactly that mean (``-log2`` of a uniform variable). An
    unknown space (NaN or inf) gives the limit.

    Example:
        >>> round(chance_exposure(), 4), round(chance_exposure(math.log2(10**6)), 4), round(chance_exposure(1.0), 4)
        (1.4427, 1.4427, 0.5)
    """
    if not math.isfinite(log2_space_size):
        return 1.0 / math.log(2.0)
    n = 2.0**log2_space_size
    return log2_space_size - math.lgamma(n + 1.0) / (n * math.log(2.0))


def canary_section(
    run: RunDirectory, out_dir: Path, subdir: str = CANARY, title: str = CANARY_TITLE
) -> Section | None:
    """Exposure per insertion count at the last evaluation, the weights kept, and the figure per epoch.

    Args:
        run: the run directory.
        out_dir: where the figure ``exposure_vs_repetitions[_<name>].png`` goes.
        subdir: the monitor's folder (``canary`` or ``canary_<name>``).
        title: the section's title.

    Returns:
        The section, or ``None`` when the folder holds no ``exposure.npz``.
    """
    exp = run.exposure(subdir)
    if exp is None:
        return None
    epochs, reps, exposure = exp.epochs, exp.repetitions, exp.exposure
    cap = exp.log2_space_size
    s = Section(title)
    s.lines.append(
        f"{len(reps)} canaries, method {exp.method}, randomness space {fmt(cap, 1)} bits; "
        f"evaluated at epochs {', '.join(str(int(e)) for e in epochs)}"
    )
    if not exposure.size:
        s.lines.append("no evaluation recorded yet")
        return s
    per = ", ".join(f"x{k}: {fmt(v, 1)}" for k, v in exp.mean_by_repetition(-1).items())
    s.lines.append(
        f"mean exposure (bits) by insertion count at the last evaluation (epoch {int(epochs[-1])}): {per}; "
        f"chance (a secret never trained on) {chance_exposure(cap):.2f} bits, the most {fmt(cap, 1)} bits: a "
        "canary near the most ranks first among the whole space and can be extracted (Carlini et al. 2019)"
    )
    s.lines.append(f"largest exposure at epoch {int(epochs[-1])}: {fmt(np.max(exposure[-1]), 1)} bits")
    restored = restored_epoch(run)
    if restored is not None and restored in epochs.tolist():
        row = epochs.tolist().index(restored)
        kept = ", ".join(f"x{k}: {fmt(v, 1)}" for k, v in exp.mean_by_repetition(row).items())
        s.lines.append(f"weights kept (restored from epoch {restored}) measured at that epoch: {kept}")
    name = _exposure_figure(exp, restored, out_dir, f"exposure_vs_repetitions{name_tag(subdir)}.png")
    s.figures.append((name, "Exposure vs repetition count per epoch"))
    return s


def _exposure_figure(exp: ExposureFiles, restored: int | None, out_dir: Path, name: str) -> str:
    """Mean exposure against insertion count (log2 axis), one line per evaluated epoch."""
    import matplotlib.pyplot as plt

    epochs, reps, exposure, cap = exp.epochs, exp.repetitions, exp.exposure, exp.log2_space_size
    counts = sorted(set(reps.tolist()))
    fig, ax = plt.subplots(figsize=(6, 4))
    cmap = plt.get_cmap("viridis")
    by_step = evaluation_axis(epochs, exp.steps)[1] == "global step"  # several evaluations per epoch
    for i, e in enumerate(epochs):
        means = mean_by_repetition(exposure[i], reps)
        label = f"step {int(exp.steps[i])}" if by_step and exp.steps is not None else f"epoch {int(e)}"
        label += " (weights kept)" if restored is not None and int(e) == restored and not by_step else ""
        ax.plot(
            counts,
            [means[c] for c in counts],
            marker="o",
            color=cmap(i / max(1, len(epochs) - 1)),
            label=label,
        )
    if math.isfinite(cap):
        ax.axhline(cap, color="grey", ls="--", lw=1, label=f"maximum: log2|R| = {cap:.1f} bits")
    chance = chance_exposure(cap)
    ax.axhline(
        chance, color="black", ls=":", lw=1, label=f"chance: {chance:.2f} bits (a secret never trained on)"
    )
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(int(c)) for c in counts])
    ax.minorticks_off()
    ax.set_xlabel("times the canary was inserted")
    ax.set_ylabel("mean exposure (bits)")
    ax.set_title("Exposure vs repetition count")
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, name)
