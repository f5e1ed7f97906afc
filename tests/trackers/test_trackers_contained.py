"""contain_failures: a logger that raises in Lightning's own calls does not end training (issue 13.9)."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger

from helpers.callbacks import RisingScore
from helpers.data import loaders, make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks.loggers import ContainedLogger, TrackerWarning, contain_failures


class DownTracker(Logger):
    """A custom logger whose backend is unreachable: every metric upload raises."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    @property
    def name(self) -> str:
        return "down"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls += 1
        raise ConnectionError("tracker unreachable")


def _fit(tmp_path: Path, loggers: Any) -> Any:
    tl, _ = loaders(make_blobs(32))
    t = trainer(tmp_path, max_epochs=3, callbacks=[RisingScore()], logger=loggers)
    t.fit(TinyClassifier(), tl)
    return t


def test_without_containment_a_failing_log_metrics_ends_training(tmp_path: Path) -> None:
    with pytest.raises(ConnectionError, match="tracker unreachable"):
        _fit(tmp_path, [DownTracker()])


def test_contained_logger_warns_once_counts_and_training_goes_on(tmp_path: Path) -> None:
    down, csv = DownTracker(), CSVLogger(str(tmp_path), name="csv")
    loggers = contain_failures([down, csv])
    assert loggers[0] is down
    assert isinstance(down, DownTracker)
    assert isinstance(down, ContainedLogger)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = _fit(tmp_path, loggers)
    assert t.current_epoch == 3
    mine = [w for w in caught if issubclass(w.category, TrackerWarning)]
    assert len(mine) == 1
    assert "DownTracker.log_metrics failed (ConnectionError: tracker unreachable)" in str(mine[0].message)
    assert down.failures == down.calls >= 3  # one per epoch at least, every one counted
    assert down.last_failure == "log_metrics: ConnectionError: tracker unreachable"
    metrics = pd.read_csv(Path(csv.log_dir) / "metrics.csv")  # the other logger got everything
    assert list(metrics["mem/test/score"].dropna()) == [0.0, 1.0, 2.0]


def test_contained_logger_keeps_its_class_paths_and_pickles(tmp_path: Path) -> None:
    tb = TensorBoardLogger(str(tmp_path), name="tb")
    plain_dir = tb.log_dir
    assert contain_failures(tb) is tb
    assert contain_failures(tb) is tb
    assert isinstance(tb, TensorBoardLogger)
    assert tb.log_dir == plain_dir
    assert tb.failures == 0
    t = _fit(tmp_path, tb)
    assert t.log_dir == plain_dir  # the run directory stays where it was
    assert (Path(plain_dir) / "memcallbacks").is_dir()
    clone = pickle.loads(pickle.dumps(tb))  # ddp_spawn pickles the Trainer's loggers
    assert isinstance(clone, ContainedLogger)
    assert isinstance(clone, TensorBoardLogger)
    assert clone.log_dir == plain_dir
    with pytest.raises(TypeError, match="must be Lightning loggers"):
        contain_failures(["wandb"])
