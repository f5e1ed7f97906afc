"""LeakageEarlyStopping: set-up errors before the first step, twins, and no patience across a lost epoch.

Issue 26 item 5 (errors that come late or say the wrong thing) and issue 27 item 5 (an epoch whose
evaluation a resume lost: the monitors evaluate it on resume; where they cannot, the stopper
records the gap and restarts its patience instead of counting across it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from helpers.data import loaders, make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks import LeakageEarlyStopping, MembershipInferenceMonitor
from memcallbacks.callbacks._base import MemorisationCallback


def _fit(
    root: Path, callbacks: list[Any], epochs: int, ckpt_path: str | None = None, **kw: Any
) -> pl.Trainer:
    tl, _ = loaders(make_blobs(32))  # 2 batches of 16 per epoch
    t = trainer(root, max_epochs=epochs, callbacks=callbacks, **kw)
    t.fit(TinyClassifier(), tl, ckpt_path=ckpt_path)
    return t


class _EpochScore(MemorisationCallback):
    """Logs ``mem/test/score`` = the epoch at every evaluation; keeps its state in the checkpoint."""

    subdir = "epoch_score"

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float:
        return float(trainer.current_epoch)

    def metrics(self, result: float) -> dict[str, float]:
        return {"mem/test/score": result}

    def state_dict(self) -> dict[str, Any]:
        return self.base_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.load_base_state(state_dict)


class _FailAtEpochEnd(pl.Callback):
    """First in ``callbacks``: fails in the end of epoch ``epoch`` before any monitor evaluates it."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise InterruptedError(f"killed during the end of epoch {self.epoch}")


def test_a_memcallbacks_key_without_its_monitor_fails_at_setup(tmp_path: Path) -> None:
    stopper = LeakageEarlyStopping("mem/canary/exposure_max", 15.0)
    t = trainer(tmp_path, callbacks=[stopper])
    with pytest.raises(
        MisconfigurationException, match=r"no memcallbacks monitor.*Add CanaryExposureMonitor"
    ):
        t.fit(TinyClassifier(), loaders(make_blobs(32))[0])
    assert t.global_step == 0  # before the first step, not after epoch 0


def test_without_strict_it_warns_at_setup_and_trains(tmp_path: Path) -> None:
    stopper = LeakageEarlyStopping(
        conditions=[{"monitor": "mem/mia/auc/probe", "threshold": 0.6}], strict=False
    )
    with pytest.warns(UserWarning, match=r"\['mem/mia/auc/probe'\].*Add MembershipInferenceMonitor"):
        t = _fit(tmp_path, [stopper], 1)
    assert t.current_epoch == 1
    assert stopper.warned("no_monitor") >= 1


def test_two_unnamed_monitors_of_one_class_are_refused_naming_name(tmp_path: Path) -> None:
    nonmembers = make_blobs(16, seed=1)
    with pytest.raises(
        ValueError, match=r"two MembershipInferenceMonitor callbacks without `name=`.*name='a'"
    ):
        trainer(
            tmp_path,
            callbacks=[
                MembershipInferenceMonitor(nonmembers=nonmembers),
                MembershipInferenceMonitor(nonmembers=nonmembers),
            ],
        )
    with pytest.raises(ValueError, match=r"with the same name='x'"):
        trainer(
            tmp_path,
            callbacks=[
                MembershipInferenceMonitor(nonmembers=nonmembers, name="x"),
                MembershipInferenceMonitor(nonmembers=nonmembers, name="x"),
            ],
        )
    named = [
        MembershipInferenceMonitor(nonmembers=nonmembers),
        MembershipInferenceMonitor(nonmembers=nonmembers, name="b"),
    ]
    _fit(tmp_path / "ok", named, 1)
    assert [m.history[0]["epoch"] for m in named] == [0, 0]


def _interrupted_at_epoch_end(tmp_path: Path) -> Path:
    """Values 0, 1, 2, ... every epoch (all past -0.5); killed in the end of epoch 1 after its step checkpoint."""
    ckpt = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ck", filename="{epoch}-{step}", save_top_k=-1, every_n_train_steps=2
    )
    stopper = LeakageEarlyStopping("mem/test/score", -0.5, patience=2, run_dir=tmp_path / "first")
    with pytest.raises(InterruptedError):
        _fit(
            tmp_path / "first",
            [_FailAtEpochEnd(1), _EpochScore(run_dir=tmp_path / "first"), stopper, ckpt],
            10,
            enable_checkpointing=True,
        )
    assert stopper.counters == {"mem/test/score": 1}  # epoch 0 only
    return tmp_path / "ck" / "epoch=1-step=4.ckpt"


def test_the_lost_epoch_is_evaluated_on_resume_and_the_stopper_decides_on_it(tmp_path: Path) -> None:
    ckpt = _interrupted_at_epoch_end(tmp_path)
    monitor, stopper = _EpochScore(), LeakageEarlyStopping("mem/test/score", -0.5, patience=2)
    t = _fit(tmp_path / "second", [monitor, stopper], 10, ckpt_path=str(ckpt))
    assert [(row["epoch"], row["step"]) for row in monitor.history] == [(0, 2), (1, 4)]
    assert stopper.stopped_epoch == 1  # the second evaluation past the threshold, as without the kill
    assert t.global_step == 4  # decided in on_train_start: no step trained past the stop
    assert stopper.gaps == []


def test_an_epoch_left_without_evaluation_restarts_patience(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where an epoch's evaluation is really lost (the catch-up disabled here), patience does not span the gap."""
    ckpt = _interrupted_at_epoch_end(tmp_path)
    monkeypatch.setattr(MemorisationCallback, "_lost_epoch", lambda self, trainer: None)
    monitor = _EpochScore()
    stopper = LeakageEarlyStopping("mem/test/score", -0.5, patience=2, run_dir=tmp_path / "second")
    with pytest.warns(UserWarning, match=r"no decision was taken for epoch 1 .*patience restarts"):
        _fit(tmp_path / "second", [monitor, stopper], 10, ckpt_path=str(ckpt))
    assert [row["epoch"] for row in monitor.history] == [0, 2, 3]
    assert stopper.gaps == [[1, 1]]
    assert stopper.stopped_epoch == 3  # epochs 2 and 3 after the gap; counting across it would stop at 2
    saved = json.loads((tmp_path / "second" / "stopping.json").read_text())
    assert saved["gaps"] == [[1, 1]]


def test_checkpoints_after_a_rollback_say_which_epochs_weights_they_hold(tmp_path: Path) -> None:
    """Issue 26 item 4: ``epoch=2-step=6.ckpt`` written after restoring epoch 1's weights says epoch 1."""
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", filename="{epoch}-{step}", save_top_k=-1)
    stopper = LeakageEarlyStopping("mem/test/score", 1.5, restore="best_safe", run_dir=tmp_path / "run")
    with pytest.warns(UserWarning, match=r"saved at epoch 2, step 6 holds the weights of epoch 1 \(step 4\)"):
        _fit(tmp_path, [_EpochScore(run_dir=tmp_path / "run"), stopper, ckpt], 10, enable_checkpointing=True)
    assert (stopper.stopped_epoch, stopper.restored_epoch, stopper.restored_step) == (2, 1, 4)
    last = torch.load(tmp_path / "ck" / "epoch=2-step=6.ckpt", weights_only=True)
    safe = torch.load(tmp_path / "ck" / "epoch=1-step=4.ckpt", weights_only=True)
    assert last["memcallbacks_weights"]["epoch"] == 1
    assert last["memcallbacks_weights"]["step"] == 4
    assert (
        last["memcallbacks_weights"]["saved_at_epoch"],
        last["memcallbacks_weights"]["saved_at_step"],
    ) == (2, 6)
    assert "memcallbacks_weights" not in safe  # written before the rollback: its own weights
    assert all(torch.equal(last["state_dict"][k], v) for k, v in safe["state_dict"].items())
    saved = json.loads((tmp_path / "run" / "stopping.json").read_text())
    assert (saved["restored_epoch"], saved["restored_step"]) == (1, 4)
