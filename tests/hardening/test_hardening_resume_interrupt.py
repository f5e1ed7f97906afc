"""Ctrl-C says what was kept (issue 26, item 5): the folder and last evaluation of every monitor, once.

Lightning turns a ``KeyboardInterrupt`` into ``on_exception`` on every callback and then exits;
the monitors write one report line per Trainer, naming where to resume from.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl

from helpers.data import loaders, make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks import LossTrajectoryTracker, MembershipInferenceMonitor


class _CtrlC(pl.Callback):
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 2:
            raise KeyboardInterrupt


def test_ctrl_c_reports_each_monitors_folder_and_last_evaluation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    monitors = [
        LossTrajectoryTracker(run_dir=run),
        MembershipInferenceMonitor(nonmembers=make_blobs(16, seed=1), run_dir=run),
        MembershipInferenceMonitor(nonmembers=make_blobs(16, seed=2), run_dir=run, name="other"),
    ]
    t = trainer(tmp_path, max_epochs=5, callbacks=[*monitors, _CtrlC()])
    handler = signal.getsignal(signal.SIGINT)
    try:
        with caplog.at_level(logging.INFO), pytest.raises(SystemExit):
            t.fit(TinyClassifier(), loaders(make_blobs(32))[0])
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after a KeyboardInterrupt
    reports = [r.getMessage() for r in caplog.records if "training was interrupted" in r.getMessage()]
    assert len(reports) == 1  # once per Trainer, not once per monitor
    text = reports[0]
    assert f"LossTrajectoryTracker: {run / 'trajectory'} (last evaluated epoch 1, step 4)" in text
    assert f"MembershipInferenceMonitor: {run / 'membership'} (last evaluated epoch 1, step 4)" in text
    assert f"MembershipInferenceMonitor(name='other'): {run / 'membership_other'}" in text
    assert "ckpt_path=" in text
