"""Shared pieces of the report sections: the section record, number formatting, figure files, titles."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memcallbacks.rundir import (
    AUDIT,
    CANARY,
    DP,
    MEMBERSHIP,
    SEQUENCE,
    RunDirectory,
    RunDirectoryError,
)
from memcallbacks.utilities import fileio

__all__ = [
    "Section",
    "evaluation_axis",
    "fmt",
    "integer_epochs",
    "name_tag",
    "read_or_note",
    "restored_epoch",
    "safe_name",
    "save_figure",
    "step_scheduled",
    "steps_of_history",
    "titled",
]


@dataclass
class Section:
    """One section of the report: its title, Markdown lines, figures, tables and unreadable files."""

    title: str
    lines: list[str] = field(default_factory=list)  # Markdown bullet lines (plain text)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (file name, caption)
    tables: list[tuple[list[str], list[list[str]]]] = field(default_factory=list)  # (header, rows)
    problems: list[str] = field(default_factory=list)  # unreadable files, for the caller


def fmt(x: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; ``None`` (how JSON writes NaN/inf) and non-finite values as ``n/a``."""
    if x is None:  # how the run directory's JSON writes NaN/inf
        return "n/a"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.{digits}f}"


def save_figure(fig: Any, out_dir: Path, name: str) -> str:
    """Write ``fig`` as ``<out_dir>/<name>`` (PNG, atomically), close it, and return ``name``."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    fileio.atomic_write_bytes(out_dir / name, buf.getvalue())
    return name


def name_tag(subdir: str) -> str:
    """``""`` for a callback's default folder, ``"_x"`` for ``<folder>_x`` (a callback given ``name="x"``)."""
    return "" if "_" not in subdir else "_" + subdir.split("_", 1)[1]


def titled(title: str, subdir: str) -> str:
    """A section title, with the folder appended when it is a named monitor's (``<folder>_<name>``)."""
    return title if not name_tag(subdir) else f"{title}, `{subdir}`"


def integer_epochs(ax: Any) -> None:
    """Integer ticks and the label "epoch" on the x axis of ``ax``."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")


def evaluation_axis(epochs: Any, steps: Any) -> tuple[Any, str]:
    """The x values and label of a per-evaluation chart: ``(steps, "global step")`` when several
    evaluations share an epoch (a step or validation schedule) and the file records their steps,
    else ``(epochs, "epoch")``."""
    e = [int(v) for v in epochs]
    if (
        steps is not None
        and len(steps) == len(e)
        and len(set(e)) < len(e)
        and all(int(s) >= 0 for s in steps)
    ):
        return steps, "global step"
    return epochs, "epoch"


def steps_of_history(history: list[dict[str, Any]]) -> list[int] | None:
    """The ``step`` of each history row, or ``None`` when a row lacks it (written before steps were recorded)."""
    steps = [row.get("step") for row in history]
    if any(not isinstance(v, int) or isinstance(v, bool) for v in steps):
        return None
    return [int(v) for v in steps]  # type: ignore[arg-type]


def step_scheduled(run: RunDirectory) -> bool:
    """Whether a monitor of ``run`` evaluated more than once within an epoch (a step or validation schedule).

    Read from the files that record each evaluation's epoch and global step (membership, sequence,
    canary, audit and DP folders, named ones included); an unreadable file counts as no evidence.
    """
    readers: dict[str, Callable[[str], Any]] = {
        MEMBERSHIP: run.membership,
        SEQUENCE: run.sequence,
        CANARY: run.exposure,
        AUDIT: run.audit,
        DP: run.dp,
    }
    for kind, reader in readers.items():
        for sub in run.folders(kind):
            try:
                files = reader(sub)
                if files is None:
                    continue
                if hasattr(files, "epochs"):
                    epochs, steps = files.epochs, files.steps
                else:
                    epochs = [int(row["epoch"]) for row in files.history]
                    steps = steps_of_history(files.history)
                if evaluation_axis(epochs, steps)[1] == "global step":
                    return True
            except (RunDirectoryError, AttributeError, KeyError, TypeError, ValueError):
                continue  # unreadable or older files: no evidence either way
    return False


def restored_epoch(run: RunDirectory) -> int | None:
    """The epoch whose weights early stopping restored, or ``None`` (also when ``stopping.json`` is unreadable)."""
    try:
        stop = run.stopping()
    except RunDirectoryError:
        return None
    return None if stop is None else stop.restored_epoch


def safe_name(text: str) -> str:
    """``text`` with every character other than letters, digits, ``-`` and ``_`` as ``_`` (a file-name part)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text) or "attack"


def read_or_note(reader: Callable[[], Any]) -> Any:
    """``reader()``, or the :class:`~memcallbacks.rundir.RunDirectoryError` it raised (to note in a section)."""
    try:
        return reader()
    except RunDirectoryError as e:
        return e
