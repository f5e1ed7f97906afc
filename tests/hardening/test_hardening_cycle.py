"""The one monitor cycle of the base class, for every monitor together: one history shape, one
``name=`` rule (keys ``<key>/<name>``, folder ``<subdir>_<name>``), one persisted warn-once.

It stays in tests/hardening: it checks every monitor together in one Trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl

from helpers import every_monitor as H
from memcallbacks import (
    CanaryExposureMonitor,
    LossTrajectoryTracker,
    MembershipInferenceMonitor,
    MemorisationCallback,
)


def _fit(root: Path, callbacks: list[Any]) -> pl.Trainer:
    data = H.Data()
    trainer = pl.Trainer(
        default_root_dir=str(root),
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(H.HardModel(), data.train_loader(), data.val_loader())
    return trainer


def test_every_monitor_keeps_one_history_shape(tmp_path: Path) -> None:
    callbacks = H.build_callbacks(tmp_path / "run", H.Data(), stopping=False)
    trainer = _fit(tmp_path, callbacks)
    monitors = [cb for cb in callbacks if isinstance(cb, MemorisationCallback)]
    assert {type(m).__name__ for m in monitors} >= {"LossTrajectoryTracker", "DPEpsilonMonitor"}
    for monitor in monitors:
        rows = monitor.history
        assert [row["epoch"] for row in rows] == [0, 1], type(monitor).__name__
        for row in rows:
            assert type(row["epoch"]) is int
            assert type(row["step"]) is int
            assert all(key.startswith("mem/") for key in row if key not in ("epoch", "step")), row
        assert rows[-1]["step"] == trainer.global_step
        logged = {key for key in rows[-1] if key.startswith("mem/")}
        assert logged
        assert logged <= set(trainer.callback_metrics)
        assert monitor.last_eval_seconds >= 0.0


def test_history_and_warnings_survive_the_checkpoint() -> None:
    monitor = MembershipInferenceMonitor(nonmembers=H.make_blobs(4, seed=0))
    monitor._history = [{"epoch": 0, "step": 3, "mem/mia/auc": 0.5}]
    with pytest.warns(UserWarning, match="first"):
        assert monitor.warn_once("k", "first")
    assert not monitor.warn_once("k", "again")  # counted, not repeated
    assert monitor.warned("k") == 2
    resumed = MembershipInferenceMonitor(nonmembers=H.make_blobs(4, seed=0))
    resumed.load_state_dict(monitor.state_dict())
    assert resumed.history == monitor.history
    assert not resumed.warn_once("k", "after the resume")  # a resumed run does not repeat it
    older = MembershipInferenceMonitor(nonmembers=H.make_blobs(4, seed=0))
    older.load_state_dict({"history": [{"epoch": 1.0, "mem/mia/auc": 0.5}]})  # before `step` and int epochs
    assert older.history == [{"epoch": 1, "step": -1, "mem/mia/auc": 0.5}]
    assert older.warned("k") == 0


@pytest.mark.parametrize(
    ("make", "folder"),
    [
        (lambda name: LossTrajectoryTracker(name=name), "trajectory"),
        (lambda name: MembershipInferenceMonitor(name=name), "membership"),
        (lambda name: CanaryExposureMonitor(H.make_canaries(), name=name), "canary"),
    ],
)
def test_one_name_rule_for_folders(tmp_path: Path, make: Any, folder: str) -> None:
    assert make(None).folder == folder
    named = make("x")
    assert named.folder == f"{folder}_x"
    named._run_dir = tmp_path
    assert named.run_dir == tmp_path / f"{folder}_x"
    with pytest.raises(ValueError, match=r"`name` must be None or a non-empty string"):
        make("a/b")


def test_a_named_canary_monitor_writes_canary_name(tmp_path: Path) -> None:
    """``CanaryExposureMonitor(name="x")`` writes ``canary_x/`` (and logs ``mem/canary/.../x``)."""
    monitor = CanaryExposureMonitor(H.make_canaries(), method="exact", name="x", run_dir=tmp_path / "run")
    trainer = _fit(tmp_path, [monitor])
    assert (tmp_path / "run" / "canary_x" / "exposure.npz").is_file()
    assert not (tmp_path / "run" / "canary").exists()
    assert "mem/canary/exposure_max/x" in trainer.callback_metrics
    assert "mem/canary/exposure_max" in monitor.history[-1]
