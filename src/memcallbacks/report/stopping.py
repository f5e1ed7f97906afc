"""The report section of :class:`~memcallbacks.LeakageEarlyStopping`: whether, when and why it stopped."""

from __future__ import annotations

from pathlib import Path

from memcallbacks.report.common import (
    Section,
)
from memcallbacks.rundir import (
    RunDirectory,
)

__all__ = ["STOPPING_TITLE", "stopping_section"]


STOPPING_TITLE = "Early-stopping decision"


def stopping_section(run: RunDirectory, out_dir: Path) -> Section | None:
    """What ``stopping.json`` says: stopped or not, the reason, the restored epoch, the conditions."""
    stop = run.stopping()
    if stop is None:
        return None
    info = stop.info
    s = Section(STOPPING_TITLE)
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
