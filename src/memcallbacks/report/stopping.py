"""The report section of :class:`~memcallbacks.LeakageEarlyStopping`: whether, when and why it stopped."""

from __future__ import annotations

from pathlib import Path

from memcallbacks.report.common import (
    Section,
    step_scheduled,
)
from memcallbacks.rundir import (
    RunDirectory,
)

__all__ = ["STOPPING_TITLE", "stopping_section"]


STOPPING_TITLE = "Early-stopping decision"


def stopping_section(run: RunDirectory, out_dir: Path) -> Section | None:
    """What ``stopping.json`` says: stopped or not, the reason, the restored evaluation, the conditions.

    When the run was scheduled by steps or validation runs (:func:`~memcallbacks.report.common.step_scheduled`),
    the stop, the restored evaluation and the last check are named by global step and epoch
    (``stopped_step``, ``restored_step``, ``last_step``); else by epoch, as before.
    """
    stop = run.stopping()
    if stop is None:
        return None
    info = stop.info
    by_step = step_scheduled(run)
    s = Section(STOPPING_TITLE)
    if stop.stopped:
        where = _when(info.get("stopped_epoch"), info.get("stopped_step"), by_step)
        s.lines.append(f"**stopped** at {where}: {info.get('reason')}")
    else:
        last = info.get("last_epoch")
        checked = (
            f" (last step checked: {_when(last, info.get('last_step'), by_step)})"
            if by_step and info.get("last_step") is not None
            else (f" (last epoch checked: {last})" if last is not None else "")
        )
        s.lines.append("early stopping did not fire: no leakage threshold was crossed" + checked)
    if stop.restored_epoch is not None:
        restored_step = info.get("restored_step")
        if by_step and restored_step is not None:
            s.lines.append(
                f"weights restored from global step {restored_step} (epoch {stop.restored_epoch}; the last "
                "evaluation below every threshold): the model left in memory at the end of fit holds that "
                "step's weights"
            )
        else:
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


def _when(epoch: object, step: object, by_step: bool) -> str:
    """``"global step <s> (epoch <e>)"`` for a step-scheduled run that recorded the step, else ``"epoch <e>"``."""
    if by_step and step is not None:
        return f"global step {step} (epoch {epoch})"
    return f"epoch {epoch}"
