"""The Weights & Biases backend: each record in its W&B form (see :mod:`memcallbacks.loggers`)."""

from __future__ import annotations

import weakref
from typing import Any

from memcallbacks.loggers.records import Alert, Figure, Histogram, LineSeries, Record, RocCurve, Table
from memcallbacks.loggers.rendering import (
    finite_values,
    histogram_counts,
    roc_points,
    series_points,
    table_rows,
)

__all__ = ["emit_wandb"]

_wandb_defined: weakref.WeakSet[Any] = weakref.WeakSet()
_wandb_defined_ids: set[str] = set()


def _wandb_define_axes(run: Any) -> None:
    try:
        if run in _wandb_defined:
            return
        _wandb_defined.add(run)
    except TypeError:
        run_id = str(getattr(run, "id", id(run)))
        if run_id in _wandb_defined_ids:
            return
        _wandb_defined_ids.add(run_id)
    run.define_metric("epoch")
    run.define_metric("mem/*", step_metric="epoch")


def emit_wandb(logger: Any, record: Record) -> None:
    """Log ``record`` to a ``WandbLogger``'s run with ``epoch`` and ``commit=False`` (joins the next row)."""
    import wandb  # WandbLogger itself requires wandb; imported here so memcallbacks does not

    run = logger.experiment
    if not hasattr(run, "log"):  # Lightning's DummyExperiment off rank 0
        return
    _wandb_define_axes(run)
    payload: dict[str, Any]
    if isinstance(record, Histogram):
        values = finite_values(record.values)
        if values.size == 0:
            return
        counts, edges = histogram_counts(record, values)
        payload = {record.key: wandb.Histogram(np_histogram=(counts.tolist(), edges.tolist()))}
    elif isinstance(record, Table):
        payload = {record.key: wandb.Table(columns=[str(c) for c in record.columns], data=table_rows(record))}
    elif isinstance(record, LineSeries):
        xs, ys = series_points(record)
        payload = {
            record.key: wandb.plot.line_series(
                xs=xs,
                ys=list(ys.values()),
                keys=list(ys),
                title=record.title or record.key,
                xname=record.xname,
            )
        }
    elif isinstance(record, RocCurve):
        fpr, tpr = roc_points(record)
        table = wandb.Table(columns=["fpr", "tpr"], data=[[float(a), float(b)] for a, b in zip(fpr, tpr)])
        payload = {record.key: wandb.plot.line(table, "fpr", "tpr", title=record.title or record.key)}
    elif isinstance(record, Figure):
        payload = {record.key: wandb.Image(record.figure)}
    else:
        _wandb_alert(run, record)
        return
    run.log({**payload, "epoch": int(record.epoch)}, commit=False)


def _wandb_alert(run: Any, record: Alert) -> None:
    import wandb

    try:
        level = getattr(wandb.AlertLevel, str(record.level).upper(), wandb.AlertLevel.WARN)  # type: ignore[attr-defined]
        run.alert(title=record.title, text=record.text, level=level)
    except Exception:  # alerts need a server; offline runs may refuse them
        text = wandb.Html(f"<b>{record.title}</b>: {record.text}")
        run.log({"mem/alert": text, "epoch": int(record.epoch)}, commit=False)
