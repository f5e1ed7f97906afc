"""The one place that turns a record into the right call for each Lightning logger.

Scalars travel through ``pl_module.log_dict`` (they reach every logger and
``trainer.callback_metrics``). What scalars cannot carry — histograms, tables, line plots,
ROC curves, figures, alerts — is described by a small record and handed to :func:`emit`,
which calls each attached logger's adapter (W&B, TensorBoard, MLflow; CSV and unknown
loggers get nothing beyond scalars). A logger call that raises is caught, warned about
once per logger, and training continues. Only global rank 0 emits.

Privacy (DESIGN.md section 4): records flagged ``per_sample=True`` or ``secret=True`` are
sent to third-party trackers only when the emitting callback was built with
``log_per_sample=True`` / ``log_secrets=True``; the callback passes that choice here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Histogram", "Table", "LineSeries", "RocCurve", "Figure", "Alert", "Record", "emit"]


@dataclass(frozen=True)
class Histogram:
    """Distribution of values (e.g. this epoch's per-sample losses). Aggregate: no opt-in needed."""

    key: str
    values: Any  # 1-D array-like
    epoch: int


@dataclass(frozen=True)
class Table:
    """Rows of values. ``per_sample``/``secret`` mark membership signals that need opt-in."""

    key: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    epoch: int
    per_sample: bool = False
    secret: bool = False


@dataclass(frozen=True)
class LineSeries:
    """Several named series over a shared x axis (e.g. exposure vs repetition count per epoch)."""

    key: str
    xs: Sequence[float]
    ys: Mapping[str, Sequence[float]]
    epoch: int
    title: str = ""
    xname: str = "x"
    yname: str = "y"


@dataclass(frozen=True)
class RocCurve:
    """A ROC curve (false-positive rate, true-positive rate) of a membership attack."""

    key: str
    fpr: Any
    tpr: Any
    epoch: int
    title: str = ""


@dataclass(frozen=True)
class Figure:
    """A matplotlib figure."""

    key: str
    figure: Any
    epoch: int


@dataclass(frozen=True)
class Alert:
    """A human-readable alert (e.g. the leakage early-stopping decision)."""

    title: str
    text: str
    epoch: int
    level: str = "WARN"
    extra: dict[str, Any] = field(default_factory=dict)


Record = Histogram | Table | LineSeries | RocCurve | Figure | Alert


def emit(trainer: Any, record: Record, *, allow_per_sample: bool = False, allow_secrets: bool = False) -> None:
    """Send ``record`` to every logger of ``trainer`` that supports its kind (rank 0 only).

    Args:
        trainer: the running ``Trainer``.
        record: one of :class:`Histogram`, :class:`Table`, :class:`LineSeries`,
            :class:`RocCurve`, :class:`Figure`, :class:`Alert`.
        allow_per_sample: the user opted in to sending per-sample values (``log_per_sample=True``).
        allow_secrets: the user opted in to sending canary secrets (``log_secrets=True``).
    """
    if not getattr(trainer, "is_global_zero", True):
        return
    if isinstance(record, Table) and ((record.per_sample and not allow_per_sample) or (record.secret and not allow_secrets)):
        return
    # Adapters per logger are implemented in the trackers issue (#6).
    return
