"""LossTrajectoryTracker contracts: saturation, duplicates, what "visited" means, clear errors, resume args."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers.data import loaders, make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks import LossTrajectoryTracker, TrajectoryStore


class OutputsFault(TinyClassifier):
    """TinyClassifier whose step outputs carry one fault (module level: picklable)."""

    def __init__(self, fault: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fault = fault

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        out = super().training_step(batch, batch_idx)
        if self.fault == "huge" and batch_idx == 0:
            loss = out["sample_loss"].clone()
            loss[0] = 70000.0  # above float16's largest finite value, 65504
            out["sample_loss"] = loss
        elif self.fault == "all_nan":
            out["sample_loss"] = torch.full_like(out["sample_loss"], float("nan"))
        elif self.fault == "none_index" or (self.fault == "none_index_late" and batch_idx == 3):
            out["sample_index"] = None
        elif self.fault == "repeat_first_batch":
            out["sample_index"] = out["sample_index"] % 8  # every batch claims samples 0..7
        return out


def _rows(tr: Any) -> list[dict[str, float]]:
    with open(Path(tr.logger.log_dir) / "metrics.csv") as f:
        return [
            {k: float(v) for k, v in r.items() if v} for r in csv.DictReader(f) if r.get("mem/traj/epochs")
        ]


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_losses_beyond_float16_are_counted_and_warned_once(tmp_path: Path, dtype: str) -> None:
    tracker = LossTrajectoryTracker(dtype=dtype)
    tr = trainer(tmp_path, max_epochs=2, callbacks=[tracker])
    with pytest.warns() as record:
        tr.fit(OutputsFault("huge"), loaders(make_blobs(24), batch_size=8, shuffle=False)[0])
    saturation = [w for w in record if "exceed the float16 range" in str(w.message)]
    rows = _rows(tr)
    if dtype == "float16":
        assert len(saturation) == 1  # once, though it happens every epoch
        assert [r["mem/traj/clipped"] for r in rows] == [1.0, 1.0]
        assert tracker.store.matrix()[0].tolist() == [65504.0, 65504.0]
        assert tracker.store.clipped_total == 2
    else:
        assert not saturation
        assert [r["mem/traj/clipped"] for r in rows] == [0.0, 0.0]
        assert tracker.store.matrix()[0].tolist() == [70000.0, 70000.0]


def test_duplicate_indices_warn_once_and_count(tmp_path: Path) -> None:
    tracker = LossTrajectoryTracker(num_samples=24)
    tr = trainer(tmp_path, max_epochs=2, callbacks=[tracker])
    with pytest.warns(UserWarning, match="16 sample index") as record:
        tr.fit(OutputsFault("repeat_first_batch"), loaders(make_blobs(24), batch_size=8, shuffle=False)[0])
    assert sum("more than once" in str(w.message) for w in record) == 1
    assert [r["mem/traj/duplicates"] for r in _rows(tr)] == [16.0, 16.0]
    assert tracker.statistics().count.tolist() == [2] * 8 + [0] * 16  # the first record of each is kept


def test_all_nan_epoch_is_not_visited(tmp_path: Path) -> None:
    tracker = LossTrajectoryTracker()
    tr = trainer(tmp_path, max_epochs=1, callbacks=[tracker])
    with pytest.warns(UserWarning, match="24 sample loss"):
        tr.fit(OutputsFault("all_nan"), loaders(make_blobs(24), batch_size=8)[0])
    row = _rows(tr)[-1]
    assert row["mem/traj/visited_frac"] == 0.0
    assert row["mem/traj/nonfinite"] == 24.0
    assert math.isnan(row["mem/traj/loss_mean"])
    assert math.isnan(row["mem/traj/unlearned_frac"])


@pytest.mark.parametrize("fault", ["none_index", "none_index_late"])
def test_sample_index_none_is_a_clear_error(tmp_path: Path, fault: str) -> None:
    tr = trainer(tmp_path, max_epochs=1, callbacks=[LossTrajectoryTracker()])
    with pytest.raises(
        TypeError, match=r"`sample_index` returned by training_step is None.*split_index\(batch\)"
    ):
        tr.fit(OutputsFault(fault), loaders(make_blobs(40), batch_size=8)[0])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"memory_budget_bytes": "big"},
            TypeError,
            r"`memory_budget_bytes` must be an integer >= 0, got 'big'.*bytes",
        ),
        ({"memory_budget_bytes": -1}, ValueError, r"`memory_budget_bytes` must be an integer >= 0, got -1"),
        ({"seed": "x"}, TypeError, r"`seed` must be an integer .*got 'x'.*non-negative integer"),
        ({"num_probes": 2.5}, TypeError, r"`num_probes` must be an integer >= 1, got 2.5"),
        ({"num_top": True}, TypeError, r"`num_top` must be an integer >= 0, got True"),
        ({"num_samples": 0}, ValueError, r"`num_samples` must be an integer >= 1"),
        (
            {"score": "auc"},
            ValueError,
            r"`score` can be 'mean_loss', 'min_loss', 'low_loss', 'loss_drop', 'calibrated_loss', got 'auc'",
        ),
        ({"index_key": None}, TypeError, r"`index_key` must be a non-empty string"),
        ({"index_key": "sample_loss"}, ValueError, r"must differ"),
        ({"name": "a b"}, ValueError, r"`name` must be None or a non-empty string of letters, digits"),
        ({"log_per_sample": "false"}, TypeError, r"`log_per_sample` must be True or False"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        LossTrajectoryTracker(**kwargs)


def test_store_budget_is_checked_by_the_store_too() -> None:
    with pytest.raises(TypeError, match=r"`memory_budget_bytes` must be an integer >= 0, got 'big'"):
        TrajectoryStore(3, memory_budget_bytes="big")  # type: ignore[arg-type]


def test_resume_contract_name_identifies_measured_args_must_match() -> None:
    a = LossTrajectoryTracker(source="probe", seed=1, every_n_epochs=1)
    b = LossTrajectoryTracker(source="probe", seed=1, every_n_epochs=3, run_dir="elsewhere")
    assert a.state_key == b.state_key == LossTrajectoryTracker(name=None).state_key  # only `name` identifies
    assert a.state_key != LossTrajectoryTracker(name="probe").state_key
    b.load_state_dict(a.state_dict())  # when/where arguments carry the state over
    with pytest.raises(ValueError, match=r"recorded with `seed`=1, this callback has `seed`=2"):
        LossTrajectoryTracker(source="probe", seed=2).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match=r"`dtype`='float16', this callback has `dtype`='float32'"):
        LossTrajectoryTracker(source="probe", seed=1, dtype="float32").load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match=r"`source`='probe', this callback has `source`='step'"):
        LossTrajectoryTracker().load_state_dict(a.state_dict())
