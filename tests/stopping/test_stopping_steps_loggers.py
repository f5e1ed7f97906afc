"""Mid-epoch evaluations reach TensorBoard and W&B at their global step (read back from the real
files), up to the evaluation at which ``LeakageEarlyStopping`` stopped the run mid-epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl

from helpers import every_monitor as H
from helpers.step_score import StepScore
from memcallbacks import LeakageEarlyStopping

KEY = "mem/test/step"
STEPS = [2, 4, 6]  # every_n_steps=2 in an 11-batch epoch; 6 > 4.5 stops there


def _fit(root: Path, logger: Any) -> pl.Trainer:
    data = H.Data()
    trainer = pl.Trainer(
        default_root_dir=str(root),
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=logger,
        log_every_n_steps=50,  # the base logs mid-epoch values itself, not thinned by Lightning
        callbacks=[
            StepScore(every_n_steps=2, run_dir=root),
            LeakageEarlyStopping(KEY, threshold=4.5, run_dir=root),
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(H.HardModel(accountant=False), data.train_loader(batch_size=4), data.val_loader())
    assert trainer.global_step == 6
    return trainer


def test_tensorboard_gets_each_mid_epoch_evaluation_at_its_global_step(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = pl.loggers.TensorBoardLogger(str(tmp_path), name="tb")
    _fit(tmp_path, logger)
    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars(KEY)
    assert [e.step for e in events] == STEPS
    assert [e.value for e in events] == [float(s) for s in STEPS]
    epochs = {e.step: e.value for e in acc.Scalars("epoch")}
    assert all(epochs[s] == 0.0 for s in STEPS)  # logged with the epoch, at the same step


def test_wandb_gets_each_mid_epoch_evaluation_at_its_global_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wandb = pytest.importorskip("wandb")
    from helpers.wandb_reader import history_rows, wait_for_run_file

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    _fit(tmp_path, pl.loggers.WandbLogger(save_dir=str(tmp_path), project="memcallbacks-test"))
    wandb.finish()
    rows = [r for r in history_rows(wait_for_run_file(tmp_path)) if KEY in r]
    assert [r["trainer/global_step"] for r in rows] == STEPS
    assert [r[KEY] for r in rows] == [float(s) for s in STEPS]
    assert [r["epoch"] for r in rows] == [0, 0, 0]
