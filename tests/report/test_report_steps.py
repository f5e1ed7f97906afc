"""The report of a step-scheduled run names global steps: the stopping section says the step of the
stop, of the restored evaluation and of the last check, and the privacy figure (DP epsilon and the
audit's lower bound) is drawn against the global step. Read from the files a real short run wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl

from helpers import every_monitor as H
from helpers.step_score import StepScore
from memcallbacks import DPEpsilonMonitor, LeakageEarlyStopping, LossTrajectoryTracker, PrivacyAuditMonitor
from memcallbacks.report.common import step_scheduled
from memcallbacks.report.privacy import privacy_section
from memcallbacks.report.stopping import stopping_section
from memcallbacks.rundir import RunDirectory


def _fit(root: Path, threshold: float, schedule: dict[str, int], max_epochs: int = 1) -> pl.Trainer:
    data = H.Data()
    callbacks: list[Any] = [
        StepScore(run_dir=root, **schedule),
        DPEpsilonMonitor(delta=1e-5, run_dir=root, **schedule),
        PrivacyAuditMonitor(data.audit_canaries, k_pos=2, k_neg=2, seed=0, run_dir=root, **schedule),
        LeakageEarlyStopping("mem/test/step", threshold=threshold, restore="best_safe", run_dir=root),
    ]
    trainer = pl.Trainer(
        default_root_dir=str(root),
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=False,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(H.HardModel(), data.train_loader(batch_size=4), data.val_loader())
    for cb in callbacks[:3]:
        cb.flush()
    return trainer


def test_a_step_scheduled_stop_is_reported_by_global_step(tmp_path: Path) -> None:
    _fit(tmp_path, threshold=7.5, schedule={"every_n_steps": 3})  # evaluations at steps 3, 6, 9: stops at 9
    run = RunDirectory(tmp_path)
    assert step_scheduled(run)
    section = stopping_section(run, tmp_path / "out")
    assert section is not None
    text = "\n".join(section.lines)
    assert "**stopped** at global step 9 (epoch 0): Leakage: mem/test/step = 9.0 > 7.5 at step 9" in text
    assert "weights restored from global step 6 (epoch 0;" in text

    out = tmp_path / "out"
    out.mkdir()
    privacy = privacy_section(run, out)
    assert privacy is not None
    lines = "\n".join(privacy.lines)
    assert "DP-SGD epsilon after step 9 (epoch 0):" in lines
    assert "one-run audit after step 9 (epoch 0):" in lines
    assert privacy.figures == [
        (
            "epsilon.png",
            "Epsilon by global step: the accountant's guarantee (upper bound) and the audit's lower bound",
        )
    ]
    assert (out / "epsilon.png").stat().st_size > 0


def test_an_unstopped_step_run_names_its_last_step(tmp_path: Path) -> None:
    trainer = _fit(tmp_path, threshold=1e9, schedule={"every_n_steps": 3})
    section = stopping_section(RunDirectory(tmp_path), tmp_path)
    assert section is not None
    assert section.lines[0] == (
        "early stopping did not fire: no leakage threshold was crossed "
        f"(last step checked: global step {trainer.global_step} (epoch 0))"
    )


def test_an_epoch_scheduled_run_is_still_reported_by_epoch(tmp_path: Path) -> None:
    _fit(
        tmp_path, threshold=1.5, schedule={"every_n_epochs": 1}, max_epochs=2
    )  # the value is the step: 11, 22
    run = RunDirectory(tmp_path)
    assert not step_scheduled(run)
    section = stopping_section(run, tmp_path)
    assert section is not None
    assert section.lines[0].startswith("**stopped** at epoch 0: ")
    out = tmp_path / "out"
    out.mkdir()
    privacy = privacy_section(run, out)
    assert privacy is not None
    assert "DP-SGD epsilon after epoch 0:" in "\n".join(privacy.lines)
    assert privacy.figures[0][1].startswith("Epsilon by epoch:")


def test_dp_monitor_on_validation_runs_is_drawn_by_global_step(tmp_path: Path) -> None:
    data = H.Data()
    dp = DPEpsilonMonitor(delta=1e-5, evaluate_on_validation=True, run_dir=tmp_path)
    assert dp.schedule == "validation"
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        val_check_interval=5,  # validation at steps 5 and 10 of the 11-batch epoch
        logger=False,
        callbacks=[dp],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(H.HardModel(), data.train_loader(batch_size=4), data.val_loader())
    assert [(row["epoch"], row["step"]) for row in dp.history] == [(0, 5), (0, 10)]
    out = tmp_path / "out"
    out.mkdir()
    privacy = privacy_section(RunDirectory(tmp_path), out)
    assert privacy is not None
    assert "DP-SGD epsilon after step 10 (epoch 0):" in "\n".join(privacy.lines)
    assert privacy.figures[0][1].startswith("Epsilon by global step:")


@pytest.mark.parametrize("value", [True, 1])
def test_the_tracker_refuses_evaluate_on_validation_naming_the_fix(value: Any) -> None:
    with pytest.raises(ValueError, match=r"evaluate_on_validation \(got .*every_n_steps equal to"):
        LossTrajectoryTracker(evaluate_on_validation=value)


def test_dp_monitor_refuses_two_schedules() -> None:
    with pytest.raises(ValueError, match="evaluate_on_validation"):
        DPEpsilonMonitor(every_n_steps=3, evaluate_on_validation=True)
