"""The MLflow backend: JSON artifacts, figures, alert tags (see the table in :mod:`memcallbacks.loggers`)."""

from __future__ import annotations

import json
from typing import Any

from memcallbacks.loggers.records import Figure, Histogram, LineSeries, Record, RocCurve, Table
from memcallbacks.loggers.rendering import (
    artifact_path,
    histogram_summary,
    render_figure,
    roc_points,
    series_points,
    table_rows,
)

__all__ = ["emit_mlflow"]


def emit_mlflow(logger: Any, record: Record) -> None:
    """Send ``record`` to an ``MLFlowLogger``'s run as artifacts (JSON, PNG, text) under ``memcallbacks/``."""
    client = logger.experiment
    run_id = logger.run_id
    if run_id is None or not hasattr(client, "log_dict"):
        return
    epoch = int(record.epoch)
    if isinstance(record, Histogram):
        summary = histogram_summary(record)
        if summary is not None:
            client.log_dict(run_id, summary, artifact_path(record.key, epoch, ".json"))
    elif isinstance(record, Table):
        data = {"columns": [str(c) for c in record.columns], "data": table_rows(record), "epoch": epoch}
        client.log_dict(
            run_id, json.loads(json.dumps(data, default=str)), artifact_path(record.key, epoch, ".json")
        )
    elif isinstance(record, LineSeries):
        xs, ys = series_points(record)
        client.log_dict(run_id, {"epoch": epoch, "x": xs, "y": ys}, artifact_path(record.key, epoch, ".json"))
        client.log_figure(run_id, render_figure(record), artifact_path(record.key, epoch, ".png"))
    elif isinstance(record, RocCurve):
        fpr, tpr = roc_points(record)
        data = {"epoch": epoch, "fpr": fpr.tolist(), "tpr": tpr.tolist()}
        client.log_dict(run_id, data, artifact_path(record.key, epoch, ".json"))
        client.log_figure(run_id, render_figure(record), artifact_path(record.key, epoch, ".png"))
    elif isinstance(record, Figure):
        client.log_figure(run_id, record.figure, artifact_path(record.key, epoch, ".png"))
    else:
        text = f"[{record.level}] {record.title}: {record.text}"
        client.log_text(run_id, text + "\n", artifact_path("mem/alerts", epoch, ".txt"))
        client.set_tag(run_id, "memcallbacks.alert", text[:4900])
