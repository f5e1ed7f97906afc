"""The TensorBoard backend: histograms, Markdown tables, figures (see the table in :mod:`memcallbacks.loggers`)."""

from __future__ import annotations

from typing import Any

from memcallbacks.loggers.records import Figure, Histogram, LineSeries, Record, RocCurve, Table
from memcallbacks.loggers.rendering import (
    finite_values,
    histogram_counts,
    markdown_table,
    render_figure,
    table_rows,
)

__all__ = ["emit_tensorboard"]


def emit_tensorboard(logger: Any, record: Record) -> None:
    """Write ``record`` to a ``TensorBoardLogger``'s writer at ``global_step=record.epoch``, then flush."""
    writer = logger.experiment
    if not hasattr(writer, "add_histogram"):  # DummyExperiment off rank 0
        return
    step = int(record.epoch)
    if isinstance(record, Histogram):
        values = finite_values(record.values)
        if values.size == 0:
            return
        counts, edges = histogram_counts(record, values)
        writer.add_histogram_raw(
            record.key,
            min=float(values.min()) if record.exact else float(edges[0]),
            max=float(values.max()) if record.exact else float(edges[-1]),
            num=int(values.size),
            sum=float(values.sum()),
            sum_squares=float((values**2).sum()),
            bucket_limits=edges[1:].tolist(),
            bucket_counts=counts.tolist(),
            global_step=step,
        )
    elif isinstance(record, Table):
        writer.add_text(record.key, markdown_table(record.columns, table_rows(record)), global_step=step)
    elif isinstance(record, (LineSeries, RocCurve)):
        writer.add_figure(record.key, render_figure(record), global_step=step, close=False)
    elif isinstance(record, Figure):
        writer.add_figure(record.key, record.figure, global_step=step, close=False)
    else:
        writer.add_text("mem/alerts", f"**{record.title}** ({record.level}): {record.text}", global_step=step)
    writer.flush()
