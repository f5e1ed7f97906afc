"""Rendering shared by the tracker backends and the report: records as plain values, figures, tables.

Each backend turns a record into its own form through these helpers, so a histogram has the same
bins, a table the same cells and a ROC curve the same points and log-log axes everywhere.

Example:
    >>> print(markdown_table(["attack", "auc"], [["loss", 0.61]]))
    | attack | auc |
    |---|---|
    | loss | 0.61 |
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from memcallbacks.loggers.records import (
    MAX_CURVE_POINTS,
    MAX_HISTOGRAM_BINS,
    MAX_TABLE_ROWS,
    Histogram,
    LineSeries,
    RocCurve,
    Table,
)

__all__ = [
    "artifact_path",
    "finite_values",
    "HISTOGRAM_QUANTILES",
    "coarse_histogram",
    "histogram_bins",
    "histogram_counts",
    "histogram_summary",
    "log_log_roc_axes",
    "markdown_table",
    "plain_cell",
    "render_figure",
    "roc_points",
    "series_points",
    "table_rows",
]


def finite_values(values: Any) -> np.ndarray:
    """The finite values of ``values`` (a tensor or array-like) as a flat float64 array."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    return arr[np.isfinite(arr)]


def histogram_bins(record: Histogram) -> int:
    """The number of bins of ``record``, between 1 and :data:`MAX_HISTOGRAM_BINS`."""
    return max(1, min(int(record.num_bins), MAX_HISTOGRAM_BINS))


#: the quantiles whose values, rounded outward, bound a histogram sent without per-sample opt-in
HISTOGRAM_QUANTILES = (0.01, 0.99)


def _grid_step(low: float, high: float) -> float:
    """A round step (a power of ten) about a tenth of the spread of ``[low, high]``."""
    spread = high - low
    scale = spread if spread > 0 else max(abs(low), abs(high), 1.0)
    return float(10.0 ** (math.floor(math.log10(scale)) - 1))


def coarse_histogram(values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts and bin edges of ``values`` that reveal no exact extreme.

    The range is the 1% and 99% quantiles (:data:`HISTOGRAM_QUANTILES`) rounded outward to a grid of
    a tenth of their spread (a power of ten); values outside it are counted in the first or last bin.
    So no edge equals the smallest or largest value (the most or least memorised sample's loss)
    unless that value happens to lie on the grid.

    Example:
        >>> counts, edges = coarse_histogram(np.array([0.0123, 0.5, 0.7, 3.21]), bins=4)
        >>> int(counts.sum()), float(edges[0]) != 0.0123, float(edges[-1]) != 3.21
        (4, True, True)
    """
    low, high = (float(q) for q in np.quantile(values, HISTOGRAM_QUANTILES))
    step = _grid_step(low, high)
    low, high = math.floor(low / step) * step, math.ceil(high / step) * step
    if high <= low:
        high = low + step
    edges = np.linspace(low, high, bins + 1)
    counts, _ = np.histogram(np.clip(values, low, high), bins=edges)
    return counts, edges


def histogram_counts(record: Histogram, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts and edges of ``record``'s finite ``values``: exact range only when ``record.exact``
    (the per-sample opt-in), else :func:`coarse_histogram`."""
    if record.exact:
        return np.histogram(values, bins=histogram_bins(record))
    return coarse_histogram(values, histogram_bins(record))


def histogram_summary(record: Histogram) -> dict[str, Any] | None:
    """Bin edges, counts and summary statistics of a histogram (``None`` without a finite value).

    ``min`` and ``max`` are only included when ``record.exact`` (the per-sample opt-in).
    """
    values = finite_values(record.values)
    if values.size == 0:
        return None
    counts, edges = histogram_counts(record, values)
    summary: dict[str, Any] = {
        "key": record.key,
        "epoch": int(record.epoch),
        "count": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std()),
    }
    if record.exact:
        summary.update(min=float(values.min()), max=float(values.max()))
    return {**summary, "bin_edges": edges.tolist(), "counts": counts.tolist()}


def plain_cell(value: Any) -> Any:
    """A JSON/W&B-friendly cell: numpy and torch scalars unwrapped, arrays as lists, NaN as None."""
    if isinstance(value, np.generic):
        value = value.item()
    elif hasattr(value, "detach"):
        value = value.detach().cpu().tolist()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def table_rows(record: Table) -> list[list[Any]]:
    """At most :data:`MAX_TABLE_ROWS` rows of ``record``, each cell a plain JSON value."""
    return [[plain_cell(v) for v in row] for row in list(record.rows)[:MAX_TABLE_ROWS]]


def _thin(n: int, max_points: int = MAX_CURVE_POINTS) -> np.ndarray:
    """Indices of at most ``max_points`` points of a curve of ``n``, first and last kept."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))


def roc_points(record: RocCurve) -> tuple[np.ndarray, np.ndarray]:
    """At most :data:`MAX_CURVE_POINTS` ``(fpr, tpr)`` points of ``record`` (first and last kept)."""
    fpr = np.asarray(_finite_or_raw(record.fpr), dtype=np.float64).reshape(-1)
    tpr = np.asarray(_finite_or_raw(record.tpr), dtype=np.float64).reshape(-1)
    if fpr.shape != tpr.shape:
        raise ValueError(f"RocCurve {record.key!r}: fpr has {fpr.size} points, tpr {tpr.size}")
    keep = _thin(fpr.size)
    return fpr[keep], tpr[keep]


def _finite_or_raw(values: Any) -> Any:
    if hasattr(values, "detach"):
        return values.detach().float().cpu().numpy()
    return values


def series_points(record: LineSeries) -> tuple[list[float], dict[str, list[float]]]:
    """The x values and each named series of ``record`` as floats (lengths checked)."""
    xs = [float(x) for x in _finite_or_raw(record.xs)]
    ys = {str(name): [float(y) for y in _finite_or_raw(values)] for name, values in record.ys.items()}
    for name, values in ys.items():
        if len(values) != len(xs):
            raise ValueError(
                f"LineSeries {record.key!r}: series {name!r} has {len(values)} points, xs {len(xs)}"
            )
    return xs, ys


def log_log_roc_axes(ax: Any, floor: float) -> None:
    """Sets a matplotlib ``ax`` up for a ROC curve: log-log from ``floor`` to 1, both axes labelled.

    Log scales show the low false-positive region where membership attacks are judged.
    """
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(floor, 1.0)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")


def render_figure(record: LineSeries | RocCurve) -> Any:
    """A matplotlib figure (Agg canvas, no pyplot state) for backends without a native form."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(5, 4), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if isinstance(record, RocCurve):
        fpr, tpr = roc_points(record)
        ax.plot(fpr, tpr, label="attack")
        floor = min(0.5, max(1e-5, float(fpr[fpr > 0].min()) if np.any(fpr > 0) else 1e-5))
        ax.plot([floor, 1.0], [floor, 1.0], linestyle="--", color="grey", label="chance")
        log_log_roc_axes(ax, floor)
    else:
        xs, ys = series_points(record)
        for name, values in ys.items():
            ax.plot(xs, values, marker="o", label=name)
        ax.set_xlabel(record.xname)
        ax.set_ylabel(record.yname)
    ax.set_title(f"{record.title or record.key} (epoch {record.epoch})")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def markdown_table(columns: Sequence[str], rows: list[list[Any]]) -> str:
    """A Markdown table of ``columns`` and ``rows`` (``|`` escaped, newlines as spaces)."""

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(cell(c) for c in columns) + " |"
    rule = "|" + "---|" * len(columns)
    return "\n".join([head, rule, *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)])


def artifact_path(key: str, epoch: int, suffix: str) -> str:
    """Where a record goes among a run's artifacts: ``memcallbacks/<key>/epoch_NNNN<suffix>``."""
    safe = re.sub(r"[^A-Za-z0-9_.\-/]+", "_", key).strip("/") or "record"
    return f"memcallbacks/{safe}/epoch_{int(epoch):04d}{suffix}"
