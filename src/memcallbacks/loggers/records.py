"""The records a callback hands to the trackers, and the limits on what reaches a tracker.

Scalars travel through ``pl_module.log_dict``; what scalars cannot carry (histograms, tables,
line plots, ROC curves, figures, alerts) is described by one of these small frozen records and
handed to :func:`memcallbacks.loggers.emit`.

Example:
    >>> Histogram("mem/traj/loss", values=[0.1, 0.5, 2.0], epoch=3).num_bins
    64
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_CURVE_POINTS",
    "MAX_HISTOGRAM_BINS",
    "MAX_TABLE_ROWS",
    "RECORD_TYPES",
    "Alert",
    "Figure",
    "Histogram",
    "LineSeries",
    "Record",
    "RocCurve",
    "Table",
]

#: W&B drops histograms with more bins than this; every backend gets at most this many.
MAX_HISTOGRAM_BINS = 512
#: Rows sent to a tracker per table at most (W&B refuses tables above 200,000 rows).
MAX_TABLE_ROWS = 10_000
#: Points of a ROC curve or line series sent to a tracker at most (the run directory keeps all).
MAX_CURVE_POINTS = 2_000


@dataclass(frozen=True)
class Histogram:
    """Distribution of values (e.g. this epoch's per-sample losses). Aggregate: no opt-in needed.

    Non-finite values are dropped before binning; ``num_bins`` is capped at 512. What reaches a
    tracker carries no exact extreme: the bins span the 1% and 99% quantiles rounded outward to a
    coarse grid, values beyond fall into the end bins, and no ``min``/``max`` is sent
    (:func:`memcallbacks.loggers.rendering.coarse_histogram`). The dispatch sets ``exact`` from the
    per-sample opt-in (``log_per_sample=True``): only then are the bins drawn between the exact
    minimum and maximum.
    """

    key: str
    values: Any  # 1-D array-like
    epoch: int
    num_bins: int = 64
    exact: bool = False


@dataclass(frozen=True)
class Table:
    """Rows of values. ``per_sample``/``secret`` mark membership signals that need opt-in.

    Log a fixed-size table (e.g. the top-k samples) per epoch or a snapshot at the end; never
    re-log a table that grows every epoch. At most ``MAX_TABLE_ROWS`` rows reach a tracker.
    """

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
    per_sample: bool = False
    secret: bool = False


@dataclass(frozen=True)
class RocCurve:
    """A ROC curve (false-positive rate, true-positive rate) of a membership attack.

    Drawn on log-log axes where the backend takes a figure (Carlini et al. 2022).
    """

    key: str
    fpr: Any
    tpr: Any
    epoch: int
    title: str = ""


@dataclass(frozen=True)
class Figure:
    """A matplotlib figure. ``emit`` does not close it; the caller does."""

    key: str
    figure: Any
    epoch: int
    per_sample: bool = False
    secret: bool = False


@dataclass(frozen=True)
class Alert:
    """A human-readable alert (e.g. the leakage early-stopping decision)."""

    title: str
    text: str
    epoch: int
    level: str = "WARN"
    extra: dict[str, Any] = field(default_factory=dict)


Record = Histogram | Table | LineSeries | RocCurve | Figure | Alert

#: the record classes, for ``isinstance`` checks
RECORD_TYPES = (Histogram, Table, LineSeries, RocCurve, Figure, Alert)
