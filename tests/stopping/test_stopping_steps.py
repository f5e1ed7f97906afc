"""LeakageEarlyStopping in the middle of an epoch: it decides after each step-scheduled evaluation,
stops within the epoch, and ``restore="best_safe"`` returns the weights of the last safe evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from helpers import every_monitor as H
from helpers.step_score import StepScore
from helpers.training import trainer as quiet_trainer
from memcallbacks import LeakageCondition, LeakageEarlyStopping


def _fit(root: Path, callbacks: list[Any], **kwargs: Any) -> tuple[pl.Trainer, pl.LightningModule]:
    data = H.Data()
    opts: dict[str, Any] = dict(max_epochs=3, logger=False, callbacks=callbacks)
    trainer = quiet_trainer(root, **{**opts, **kwargs})
    model = H.HardModel(accountant=False)
    trainer.fit(model, data.train_loader(batch_size=4), data.val_loader())
    return trainer, model


def test_stops_mid_epoch_and_restores_the_last_safe_evaluation_bitwise(tmp_path: Path) -> None:
    stopper = LeakageEarlyStopping("mem/test/step", threshold=4.5, restore="best_safe", run_dir=tmp_path)
    monitor = StepScore(every_n_steps=2, run_dir=tmp_path)
    # the stopper first in the list: it still decides after the monitor
    trainer, model = _fit(tmp_path, [stopper, monitor])
    assert (stopper.stopped_epoch, stopper.stopped_step) == (0, 6)
    assert trainer.global_step == 6  # stopped after the batch of step 6, in the first epoch (11 batches)
    assert (stopper.best_safe_epoch, stopper.best_safe_step) == (0, 4)
    assert [row["step"] for row in monitor.history] == [2, 4, 6]
    restored = model.state_dict()
    for key, value in monitor.weights_at[4].items():
        assert torch.equal(restored[key], value), key  # bitwise, CPU
    assert not all(torch.equal(restored[k], v) for k, v in monitor.weights_at[6].items())
    assert stopper.reason == (
        "Leakage: mem/test/step = 6.0 > 4.5 at step 6 (epoch 0); restored the weights of step 4 (epoch 0)"
    )
    saved = json.loads(stopper.stopping_path.read_text())
    assert (saved["stopped_epoch"], saved["stopped_step"]) == (0, 6)
    assert (saved["restored_epoch"], saved["restored_step"]) == (0, 4)


def test_patience_counts_step_evaluations(tmp_path: Path) -> None:
    stopper = LeakageEarlyStopping("mem/test/step", threshold=2.5, patience=3, run_dir=tmp_path)
    monitor = StepScore(every_n_steps=2, run_dir=tmp_path)
    trainer, _ = _fit(tmp_path, [monitor, stopper])
    assert stopper.stopped_step == 8  # 4, 6, 8 past the threshold
    assert trainer.global_step == 8
    assert stopper.counters["mem/test/step"] == 3


def test_min_epochs_holds_a_mid_epoch_stop_until_an_epoch_has_completed(tmp_path: Path) -> None:
    stopper = LeakageEarlyStopping("mem/test/step", threshold=2.5, min_epochs=1, run_dir=tmp_path)
    monitor = StepScore(every_n_steps=5, run_dir=tmp_path)
    trainer, _ = _fit(tmp_path, [monitor, stopper])
    # 11 batches per epoch: steps 5 and 10 fall in epoch 0 (no epoch completed yet), 15 in epoch 1
    assert (stopper.stopped_epoch, stopper.stopped_step) == (1, 15)
    assert trainer.global_step == 15


def test_two_monitors_due_at_one_step_are_decided_together(tmp_path: Path) -> None:
    stopper = LeakageEarlyStopping(
        conditions=[LeakageCondition("mem/test/a", 100.0), LeakageCondition("mem/test/b", 9.5)],
        restore="best_safe",
        run_dir=tmp_path,
    )
    a = StepScore("mem/test/a", every_n_steps=2, run_dir=tmp_path)
    b = StepScore("mem/test/b", every_n_steps=4, run_dir=tmp_path)
    _fit(tmp_path, [stopper, a, b])
    assert stopper.stopped_step == 12  # b: 4, 8 safe, 12 past 9.5
    # safe needs every key fresh and below: steps 4 and 8 (where both evaluated), not 10
    assert stopper.best_safe_step == 8


def test_a_mid_epoch_stop_survives_the_checkpoint(tmp_path: Path) -> None:
    stopper = LeakageEarlyStopping("mem/test/step", threshold=4.5, run_dir=tmp_path)
    monitor = StepScore(every_n_steps=2, run_dir=tmp_path)
    _fit(tmp_path, [monitor, stopper])
    again = LeakageEarlyStopping("mem/test/step", threshold=4.5, run_dir=tmp_path)
    again.load_state_dict(stopper.state_dict())
    assert (again.stopped_epoch, again.stopped_step) == (0, 6)
    assert again.state_dict() == stopper.state_dict()


def test_an_unstopped_step_run_writes_its_last_step(tmp_path: Path) -> None:
    stopper = LeakageEarlyStopping("mem/test/step", threshold=1e9, run_dir=tmp_path)
    monitor = StepScore(every_n_steps=5, run_dir=tmp_path)
    trainer, _ = _fit(tmp_path, [monitor, stopper], max_epochs=1)
    saved = json.loads(stopper.stopping_path.read_text())
    assert saved["stopped"] is False
    assert saved["stopped_step"] is None
    assert saved["last_step"] == trainer.global_step == 11
    assert stopper.last_values == {"mem/test/step": 10.0}


@pytest.mark.parametrize("strict", [True, False])
def test_a_key_no_step_monitor_logs_is_reported_after_the_first_evaluations(
    tmp_path: Path, strict: bool
) -> None:
    stopper = LeakageEarlyStopping("mem/test/missing", threshold=1.0, strict=strict, run_dir=tmp_path)
    monitor = StepScore(every_n_steps=3, run_dir=tmp_path)
    if strict:
        with pytest.raises(RuntimeError, match="mem/test/missing"):
            _fit(tmp_path, [monitor, stopper], max_epochs=1)
    else:
        with pytest.warns(UserWarning, match="mem/test/missing"):
            _fit(tmp_path, [monitor, stopper], max_epochs=1)
        assert stopper.warned("missing") >= 1


def test_stops_at_a_mid_epoch_validation_run(tmp_path: Path) -> None:
    stopper = LeakageEarlyStopping("mem/test/step", threshold=4.5, restore="best_safe", run_dir=tmp_path)
    monitor = StepScore(evaluate_on_validation=True, run_dir=tmp_path)
    trainer, model = _fit(tmp_path, [stopper, monitor], val_check_interval=3)
    assert (stopper.stopped_epoch, stopper.stopped_step) == (0, 6)
    assert trainer.global_step == 6
    assert stopper.best_safe_step == 3
    restored = model.state_dict()
    assert all(torch.equal(restored[k], v) for k, v in monitor.weights_at[3].items())


@pytest.mark.ddp
@pytest.mark.timeout(180)
def test_one_rank_crossing_mid_epoch_stops_both_ranks_at_the_same_step(tmp_path: Path) -> None:
    from helpers.callbacks import RankDump
    from helpers.data import loaders, make_blobs
    from helpers.models import TinyClassifier
    from helpers.training import trainer

    # rank 0 logs 2, 4, 6, ... (crosses 6.5 at step 8); rank 1 logs 6, 8, ... (crosses at step 4)
    monitor = StepScore(rank_offset=4.0, every_n_steps=2, run_dir=tmp_path / "run")
    stopper = LeakageEarlyStopping("mem/test/step", 6.5, run_dir=tmp_path / "run", restore="best_safe")
    dump = RankDump(tmp_path / "ranks")
    tl, _ = loaders(make_blobs(160), batch_size=8)  # 10 batches per rank and epoch
    t = trainer(tmp_path, max_epochs=3, strategy="ddp_spawn", devices=2, callbacks=[stopper, monitor, dump])
    t.fit(TinyClassifier(), tl)
    ranks = dump.read()
    expected = (
        "Leakage: mem/test/step = 8.0 > 6.5 (rank 1) at step 4 (epoch 0); "
        "restored the weights of step 2 (epoch 0)"
    )
    assert [r["stop/reason"] for r in ranks] == [expected, expected]
    assert [r["current_epoch"] for r in ranks] == [1, 1]  # stopped within the first epoch
    saved = json.loads((tmp_path / "run" / "stopping.json").read_text())
    assert (saved["stopped_epoch"], saved["stopped_step"], saved["restored_step"]) == (0, 4, 2)
