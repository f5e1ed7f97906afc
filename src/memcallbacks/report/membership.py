"""The membership-inference section (Yeom et al. 2018): the log-log ROC, loss gap and AUC over epochs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from memcallbacks.report.common import (
    Section,
    evaluation_axis,
    fmt,
    integer_epochs,
    name_tag,
    save_figure,
    titled,
)
from memcallbacks.rundir import (
    MEMBERSHIP,
    MembershipFiles,
    RunDirectory,
    as_number,
)

__all__ = ["MEMBERSHIP_TITLE", "membership_section"]


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


MEMBERSHIP_TITLE = "Membership inference (loss threshold)"


def membership_section(
    run: RunDirectory, out_dir: Path, subdir: str = MEMBERSHIP, title: str | None = None
) -> Section | None:
    """The last evaluation's AUC and TPR at low FPR, the log-log ROC, and gap and AUC over epochs.

    Args:
        run: the run directory.
        out_dir: where the figures ``mia_roc[_<name>].png`` and ``gap_auc[_<name>].png`` go.
        subdir: the monitor's folder (``membership`` or ``membership_<name>``).
        title: the section's title (default: the standard title, with the folder when named).

    Returns:
        The section, or ``None`` when the folder holds no ``losses.npz``.
    """
    mem = run.membership(subdir)
    if mem is None:
        return None
    s = Section(title or titled(MEMBERSHIP_TITLE, subdir))
    tag = name_tag(subdir)
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
        f"last evaluation (epoch {epoch}): AUC {fmt(auc)} (chance 0.500), advantage "
        f"{fmt(last.get('mem/mia/advantage'))} (chance 0), "
        + ", ".join(
            f"TPR@{f:.1%}FPR {fmt(last.get(k))} (chance {f:.3f})".replace(".0%", "%") for f, k in tprs
        )
        + f" ({n_mem} members, {n_non} non-members: FPR {low:.1%} allows {int(n_non * low)} false positive(s), "
        f"so TPR there is {'coarse' if n_non * low < 10 else 'resolved'})"
    )
    if math.isfinite(auc) and auc <= 0.5:
        s.lines.append(
            f"**members are not above chance (AUC {fmt(auc)} <= 0.5)**: the attack tells members from held-out "
            "samples no better than a coin, so this evaluation shows no membership leakage"
        )
    if "mem/mia_cal/auc" in last:
        s.lines.append(
            f"difficulty-calibrated attack (Watson et al. 2022): AUC {fmt(last.get('mem/mia_cal/auc'))} "
            "(chance 0.500)"
        )
    if "mem/mia_ref/auc" in last:
        s.lines.append(
            "reference attack, loss minus the loss under `reference=` at fit start (Carlini et al. 2021; "
            f"Mireshghallah et al. 2022): AUC {fmt(last.get('mem/mia_ref/auc'))} (chance 0.500)"
        )
    roc = _roc_figure(mem, last, tprs, out_dir, f"mia_roc{tag}.png")
    if roc is not None:
        s.figures.append((roc, f"ROC of the loss-threshold attack, epoch {epoch} (log-log)"))
    s.figures.append(
        (
            _gap_auc_figure(mem, out_dir, f"gap_auc{tag}.png"),
            "Train/held-out loss gap and attack AUC per epoch",
        )
    )
    return s


def _roc_figure(
    mem: MembershipFiles, last: dict[str, Any], tprs: list[tuple[float, str]], out_dir: Path, name: str
) -> str | None:
    """The last evaluation's ROC on log-log axes, TPR at the logged FPRs marked; ``None`` without losses."""
    from memcallbacks import loggers
    from memcallbacks.metrics.membership import roc_curve

    m, n = mem.member_losses[-1], mem.nonmember_losses[-1]
    m, n = m[np.isfinite(m)], n[np.isfinite(n)]
    if not (m.size and n.size):
        return None
    fpr, tpr, _ = roc_curve(m, n)
    # the trackers' own drawing (TensorBoard, MLflow): one picture of the ROC everywhere
    fig = loggers.render_figure(
        loggers.RocCurve("mem/mia/roc", fpr, tpr, int(mem.epochs[-1]), title="Membership-inference ROC")
    )
    ax = fig.axes[0]
    floor = ax.get_xlim()[0]
    ax.lines[0].set_label(f"attack (AUC {fmt(as_number(last.get('mem/mia/auc')))})")
    ax.lines[1].set_label("chance (random guess: TPR = FPR)")
    for f, k in tprs:
        value = as_number(last.get(k))
        if f >= floor and math.isfinite(value):
            ax.plot([f], [max(value, ax.get_ylim()[0])], "o", label=f"TPR@{f:.1%} FPR = {value:.3f}")
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, out_dir, name)


def _gap_auc_figure(mem: MembershipFiles, out_dir: Path, name: str) -> str:
    """Loss gap (left axis) and attack AUC (right axis) per evaluated epoch."""
    import matplotlib.pyplot as plt

    xs, xlabel = evaluation_axis(mem.epochs, mem.steps)  # global steps under a step schedule
    fig, ax1 = plt.subplots(figsize=(6, 4))
    h1 = ax1.plot(xs, mem.metric("mem/gap/loss"), marker="o", color="tab:blue", label="loss gap (left axis)")
    ax1.set_ylabel("held-out minus member loss", color="tab:blue")
    integer_epochs(ax1)
    ax1.set_xlabel(xlabel)
    ax2 = ax1.twinx()
    h2 = ax2.plot(xs, mem.metric("mem/mia/auc"), marker="s", color="tab:red", label="attack AUC (right axis)")
    h3 = [ax2.axhline(0.5, color="tab:red", ls=":", lw=1, label="chance: AUC 0.5")]
    ax2.set_ylabel("attack AUC", color="tab:red")
    ax1.legend(handles=h1 + h2 + h3, fontsize=8, loc="best")
    ax1.set_title("Loss gap and membership AUC over training")
    return save_figure(fig, out_dir, name)
