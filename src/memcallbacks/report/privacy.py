"""The privacy section: DP-SGD epsilon (an upper bound) and the one-run audit lower bound (Steinke et al. 2023)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from memcallbacks.report.common import (
    Section,
    evaluation_axis,
    fmt,
    integer_epochs,
    read_or_note,
    safe_name,
    save_figure,
    steps_of_history,
)
from memcallbacks.rundir import (
    AUDIT,
    DP,
    AuditFiles,
    DPFiles,
    RunDirectory,
    RunDirectoryError,
)

__all__ = ["AUDIT_TITLE", "DP_TITLE", "PRIVACY_TITLE", "privacy_section"]

PRIVACY_TITLE = "Privacy: DP-SGD epsilon and the one-run audit"
#: the titles of a named monitor's own section (``dp_<name>/``, ``audit_<name>/``)
DP_TITLE = "Privacy: DP-SGD epsilon"
AUDIT_TITLE = "Privacy: the one-run audit"


def privacy_section(
    run: RunDirectory,
    out_dir: Path,
    *,
    title: str = PRIVACY_TITLE,
    dp_subdir: str | None = DP,
    audit_subdir: str | None = AUDIT,
) -> Section | None:
    """DP-SGD epsilon (an upper bound) and the audit's lower bound over epochs, in one figure.

    The x axis is the global step when either monitor evaluated several times within an epoch (a step or
    validation schedule) and its file records the steps; else the epoch.

    Args:
        run: the run directory.
        out_dir: where the figure goes: ``epsilon.png`` for the default folders, else
            ``epsilon_<folder>.png``.
        title: the section's title.
        dp_subdir: the DP monitor's folder (``dp``, ``dp_<name>``), or ``None`` for none.
        audit_subdir: the audit monitor's folder (``audit``, ``audit_<name>``), or ``None`` for none.

    Returns:
        The section, or ``None`` when neither folder holds anything.
    """
    dp = None if dp_subdir is None else read_or_note(partial(run.dp, dp_subdir))
    audit = None if audit_subdir is None else read_or_note(partial(run.audit, audit_subdir))
    if dp is None and audit is None:
        return None
    import matplotlib.pyplot as plt

    s = Section(title)
    for value in (dp, audit):
        if isinstance(value, RunDirectoryError):
            s.lines.append(f"could not be drawn: {value}")
            s.problems.append(str(value))
    fig, ax = plt.subplots(figsize=(6, 4))
    by_step = _by_step(dp) or _by_step(audit)
    drawn = _dp_curve(ax, s, dp, by_step) | _audit_curve(ax, s, audit, by_step)
    if not drawn:
        plt.close(fig)
        s.lines.append("no evaluation recorded yet")
        return s
    integer_epochs(ax)
    unit = "global step" if by_step else "epoch"
    ax.set_xlabel(unit)
    ax.set_ylabel("epsilon")
    ax.set_ylim(bottom=0)
    ax.set_title("Privacy loss over training")
    ax.legend(fontsize=7, loc="lower right")
    named = next(
        (sub for sub in (dp_subdir, audit_subdir) if sub is not None and sub not in (DP, AUDIT)), None
    )
    s.figures.append(
        (
            save_figure(fig, out_dir, "epsilon.png" if named is None else f"epsilon_{safe_name(named)}.png"),
            f"Epsilon by {unit}: the accountant's guarantee (upper bound) and the audit's lower bound",
        )
    )
    return s


def _by_step(files: Any) -> bool:
    """Whether a DP or audit history was evaluated several times within an epoch and records the steps."""
    history = getattr(files, "history", None)
    if not history:
        return False
    try:
        epochs = [int(h.get("epoch", -1)) for h in history]
        return evaluation_axis(epochs, steps_of_history(history))[1] == "global step"
    except (TypeError, ValueError, AttributeError):  # an edited file: draw by epoch as before
        return False


def _xs(s: Section, history: list[dict[str, Any]], by_step: bool, what: str) -> list[int] | None:
    """The x values of a curve: its epochs, or its global steps on a step axis (``None``, noted, when its
    file predates steps)."""
    if not by_step:
        return [h["epoch"] for h in history]
    steps = steps_of_history(history)
    if steps is None:
        s.lines.append(f"{what} not drawn: its file records no global steps to place it on the step axis")
    return steps


def _at(row: dict[str, Any], by_step: bool) -> str:
    """``"step <s> (epoch <e>)"`` on a step axis, else ``"epoch <e>"``."""
    return f"step {row.get('step')} (epoch {row['epoch']})" if by_step else f"epoch {row['epoch']}"


def _dp_curve(ax: Any, s: Section, dp: Any, by_step: bool = False) -> bool:
    """Draw the accountant's epsilon per epoch (or global step); whether anything was drawn."""
    if not (isinstance(dp, DPFiles) and dp.history):
        return False
    xs = _xs(s, dp.history, by_step, "DP-SGD epsilon")
    if xs is None:
        return False
    delta, acc = dp.summary.get("delta"), dp.summary.get("accountant")
    ax.plot(
        xs,
        dp.epsilon,
        marker="o",
        label=f"DP-SGD epsilon, an upper bound ({acc}, delta={delta})",
    )
    s.lines.append(
        f"DP-SGD epsilon after {_at(dp.history[-1], by_step)}: {fmt(dp.epsilon[-1])} at delta {delta} "
        f"({acc} accountant; a guarantee: epsilon is at most this)"
    )
    return True


def _audit_curve(ax: Any, s: Section, audit: Any, by_step: bool = False) -> bool:
    """Draw the audit's epsilon lower bound per epoch or global step (and say what 0 means); whether anything
    was drawn."""
    if not (isinstance(audit, AuditFiles) and audit.history):
        return False
    xs = _xs(s, audit.history, by_step, "one-run audit")
    if xs is None:
        return False
    eps = audit.epsilon_lb()
    conf = audit.confidence
    ax.plot(
        xs,
        eps,
        marker="s",
        label=f"audit: epsilon lower bound at {conf:.0%} confidence ({audit.summary.get('num_canaries')} canaries)",
    )
    last = audit.history[-1]
    s.lines.append(
        f"one-run audit after {_at(last, by_step)}: epsilon >= {fmt(last.get('epsilon_lb'))} with confidence "
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
    return True
