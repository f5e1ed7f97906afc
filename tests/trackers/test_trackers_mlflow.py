"""loggers.emit against MLflow (sqlite store) and several loggers at once, read back from disk."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl

from helpers.callbacks import RecordEmitter
from helpers.data import loaders, make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks import loggers


def _fit(tmp_path: Path, logger: object, epochs: int = 2, **kw: object) -> pl.Trainer:
    tl, vl = loaders(make_blobs(48), make_blobs(16, seed=1))
    t = trainer(
        tmp_path, max_epochs=epochs, logger=logger, callbacks=[RecordEmitter(run_dir=tmp_path / "run")], **kw
    )
    t.fit(TinyClassifier(), tl, vl)
    return t


def test_mlflow_sqlite_reads_back_metrics_and_artifacts(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = pl.loggers.MLFlowLogger(
        experiment_name="memcallbacks", tracking_uri=uri, artifact_location=str(tmp_path / "artifacts")
    )
    _fit(tmp_path, logger)
    client = MlflowClient(uri)
    run_id = logger.run_id
    assert [m.value for m in client.get_metric_history(run_id, "mem/test/score")] == [0.5, 1.5]
    epochs = {m.step: m.value for m in client.get_metric_history(run_id, "epoch")}
    assert set(epochs.values()) >= {0.0, 1.0}

    def listing(path: str) -> list[str]:
        return sorted(Path(f.path).name for f in client.list_artifacts(run_id, path))

    assert listing("memcallbacks/mem/test/hist") == ["epoch_0000.json", "epoch_0001.json"]
    assert listing("memcallbacks/mem/test/roc") == [
        "epoch_0000.json",
        "epoch_0000.png",
        "epoch_0001.json",
        "epoch_0001.png",
    ]
    assert "epoch_0001.png" in listing("memcallbacks/mem/test/figure")
    assert listing("memcallbacks/mem/test/per_sample") == []
    local = Path(
        client.download_artifacts(run_id, "memcallbacks/mem/test/hist/epoch_0001.json", str(tmp_path / "dl"))
    )
    hist = json.loads(local.read_text())
    expected = np.random.default_rng(1).normal(size=200)
    assert hist["count"] == 200
    assert hist["mean"] == pytest.approx(expected.mean())
    assert len(hist["counts"]) == loggers.MAX_HISTOGRAM_BINS
    assert sum(hist["counts"]) == 200
    table = Path(
        client.download_artifacts(run_id, "memcallbacks/mem/test/table/epoch_0001.json", str(tmp_path / "dl"))
    )
    assert json.loads(table.read_text())["data"] == [[0, 0.5], [1, 1.0]]
    assert (
        client.get_run(run_id).data.tags["memcallbacks.alert"] == "[WARN] Test alert: alert text at epoch 1"
    )


def test_several_loggers_each_get_their_form_csv_gets_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = pl.loggers.TensorBoardLogger(str(tmp_path), name="tb")
    csv = pl.loggers.CSVLogger(str(tmp_path), name="csv")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ml = pl.loggers.MLFlowLogger(experiment_name="m", tracking_uri=uri, artifact_location=str(tmp_path / "a"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", loggers.TrackerWarning)
        _fit(tmp_path, [csv, tb, ml], epochs=1)
    acc = EventAccumulator(tb.log_dir, size_guidance={"histograms": 0})
    acc.Reload()
    assert len(acc.Histograms("mem/test/hist")) == 1
    assert ml.experiment.list_artifacts(ml.run_id, "memcallbacks/mem/test/hist")
    metrics_csv = (Path(csv.log_dir) / "metrics.csv").read_text()
    assert "mem/test/score" in metrics_csv.splitlines()[0]
    assert sorted(p.name for p in Path(csv.log_dir).iterdir()) == ["hparams.yaml", "metrics.csv"]
