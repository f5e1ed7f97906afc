"""loggers.emit against real W&B (offline and disabled), read back from disk."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl

from helpers.callbacks import RecordEmitter
from helpers.data import loaders, make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from helpers.wandb_reader import history_rows, read_records, wait_for_run_file
from memcallbacks import loggers


def _fit(tmp_path: Path, logger: object, epochs: int = 2, **kw: object) -> pl.Trainer:
    tl, vl = loaders(make_blobs(48), make_blobs(16, seed=1))
    t = trainer(
        tmp_path, max_epochs=epochs, logger=logger, callbacks=[RecordEmitter(run_dir=tmp_path / "run")], **kw
    )
    t.fit(TinyClassifier(), tl, vl)
    return t


def test_wandb_offline_writes_scalars_histogram_table_by_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = pl.loggers.WandbLogger(save_dir=str(tmp_path), project="memcallbacks-test")
    _fit(tmp_path, logger)
    wandb.finish()
    path = wait_for_run_file(tmp_path)
    rows = history_rows(path)
    keys = set().union(*rows)
    # scalars from log_dict, rich records from emit; the per-sample table is not sent without opt-in
    assert {"mem/test/score", "mem/test/other", "epoch"} <= keys
    assert {"mem/test/hist/_type", "mem/test/table/_type", "mem/test/figure/_type"} <= keys
    assert not any(k.startswith("mem/test/per_sample") for k in keys)
    hist_rows = [r for r in rows if "mem/test/hist/_type" in r]
    assert [r["epoch"] for r in hist_rows] == [0, 1]  # one histogram per epoch, in that epoch's row
    for r in hist_rows:
        assert r["mem/test/hist/_type"] == "histogram"
        assert len(r["mem/test/hist/values"]) == loggers.MAX_HISTOGRAM_BINS  # 2000 asked, capped
        assert sum(r["mem/test/hist/values"]) == 200
        assert r["mem/test/score"] == pytest.approx(0.5 + r["epoch"])  # rich record joined the epoch's row
    table_row = [r for r in rows if "mem/test/table/_type" in r][-1]
    assert table_row["mem/test/table/nrows"] == 2
    assert table_row["mem/test/table/ncols"] == 2
    records = read_records(path)
    metrics = [r.metric for r in records if r.WhichOneof("record_type") == "metric"]
    assert any(m.glob_name == "mem/*" and m.step_metric == "epoch" for m in metrics)
    alerts = [r.alert for r in records if r.WhichOneof("record_type") == "alert"]
    assert [a.text for a in alerts] == ["alert text at epoch 0", "alert text at epoch 1"]
    assert all(a.title == "Test alert" and a.level == "WARN" for a in alerts)


def test_wandb_disabled_mode_trains_without_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", loggers.TrackerWarning)
        t = _fit(tmp_path, pl.loggers.WandbLogger(save_dir=str(tmp_path), project="p"), epochs=1)
    wandb.finish()
    assert t.current_epoch == 1
