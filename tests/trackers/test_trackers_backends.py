"""loggers.emit against TensorBoard, a failing logger and the privacy gate, read back from disk."""

from __future__ import annotations

import warnings
from pathlib import Path

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


def test_tensorboard_reads_back_scalars_histograms_images_text(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = pl.loggers.TensorBoardLogger(str(tmp_path), name="tb")
    _fit(tmp_path, logger)
    acc = EventAccumulator(
        logger.log_dir, size_guidance={"histograms": 0, "images": 0, "tensors": 0, "scalars": 0}
    )
    acc.Reload()
    tags = acc.Tags()
    assert [e.value for e in acc.Scalars("mem/test/score")] == [0.5, 1.5]
    hists = acc.Histograms("mem/test/hist")
    assert [h.step for h in hists] == [0, 1]  # step = epoch
    assert hists[0].histogram_value.num == 200
    assert len(hists[0].histogram_value.bucket) <= loggers.MAX_HISTOGRAM_BINS
    assert {"mem/test/figure", "mem/test/series", "mem/test/roc"} <= set(tags["images"])
    assert [i.step for i in acc.Images("mem/test/roc")] == [0, 1]
    text_tags = set(tags["tensors"])  # add_text is stored as a text tensor summary
    assert "mem/test/table/text_summary" in text_tags
    assert "mem/alerts/text_summary" in text_tags
    assert not any("per_sample" in t for t in text_tags)
    table = acc.Tensors("mem/test/table/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert table.splitlines()[0] == "| id | loss |"
    assert "| 1 | 1.0 |" in table
    alert = acc.Tensors("mem/alerts/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "alert text at epoch 0" in alert


class _BrokenWriter:
    """A SummaryWriter stand-in whose every call raises (a tracker that is down)."""

    def __getattr__(self, name: str) -> object:
        def fail(*args: object, **kwargs: object) -> None:
            raise ConnectionError(f"tracker unreachable ({name})")

        return fail


class BrokenTensorBoardLogger(pl.loggers.TensorBoardLogger):
    @property
    def experiment(self) -> _BrokenWriter:  # type: ignore[override]
        return _BrokenWriter()

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        pass

    def log_hyperparams(self, params: object, metrics: object = None) -> None:
        pass

    def log_graph(self, model: object, input_array: object = None) -> None:
        pass

    def save(self) -> None:
        pass

    def finalize(self, status: str) -> None:
        pass


def test_logger_that_raises_warns_once_and_training_completes(tmp_path: Path) -> None:
    broken = BrokenTensorBoardLogger(str(tmp_path), name="broken")
    csv = pl.loggers.CSVLogger(str(tmp_path), name="csv")
    with pytest.warns(loggers.TrackerWarning) as caught:
        t = _fit(tmp_path, [broken, csv], epochs=3)
    assert t.current_epoch == 3
    ours = [w for w in caught if issubclass(w.category, loggers.TrackerWarning)]
    assert len(ours) == 1  # 3 epochs x 6 records failed; reported once
    assert "BrokenTensorBoardLogger" in str(ours[0].message)
    assert "tracker unreachable" in str(ours[0].message)
    assert "mem/test/score" in (Path(csv.log_dir) / "metrics.csv").read_text()


def test_emit_rejects_non_records_and_skips_other_ranks(tmp_path: Path) -> None:
    class FakeTrainer:
        is_global_zero = False
        loggers = [BrokenTensorBoardLogger(str(tmp_path))]

    with pytest.raises(TypeError, match="`record` must be"):
        loggers.emit(FakeTrainer(), {"mem/x": 1.0})  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loggers.emit(FakeTrainer(), loggers.Alert("t", "x", 0))  # rank != 0: nothing is called


def test_privacy_opt_ins_gate_per_sample_and_secret_records(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = pl.loggers.TensorBoardLogger(str(tmp_path), name="tb")

    class T:
        is_global_zero = True
        loggers = [logger]

    rows = [[1, "my pin is 123456"]]
    loggers.emit(T(), loggers.Table("mem/p/secret", ["id", "s"], rows, 0, secret=True))
    loggers.emit(T(), loggers.Table("mem/p/sample", ["id", "s"], rows, 0, per_sample=True))
    loggers.emit(T(), loggers.Table("mem/p/secret_ok", ["id", "s"], rows, 0, secret=True), allow_secrets=True)
    loggers.emit(
        T(), loggers.Table("mem/p/sample_ok", ["id", "s"], rows, 0, per_sample=True), allow_per_sample=True
    )
    logger.experiment.flush()
    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    assert sorted(acc.Tags()["tensors"]) == ["mem/p/sample_ok/text_summary", "mem/p/secret_ok/text_summary"]
