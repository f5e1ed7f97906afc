"""Run-directory files of step-scheduled monitors carry the global step of each evaluation.

``losses.npz``, ``sequences.npz`` and ``exposure.npz`` hold a ``steps`` array beside ``epochs``
(equal to the history rows' steps), the audit writes one ``step_XXXXXXXX.npz`` per evaluation,
and :class:`~memcallbacks.rundir.RunDirectory` reads them back (``steps`` is ``None`` for files
written without it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl

from helpers import every_monitor as H
from helpers.training import trainer
from memcallbacks import CanaryExposureMonitor, MembershipInferenceMonitor, PrivacyAuditMonitor
from memcallbacks.rundir import RunDirectory
from memcallbacks.utilities.fileio import load_npz, save_npz


def _trainer(root: Path, callbacks: list[Any], **kwargs: Any) -> pl.Trainer:
    opts: dict[str, Any] = dict(max_epochs=1, logger=False, callbacks=callbacks, deterministic=True)
    return trainer(root, **{**opts, **kwargs})


def _fit(root: Path, schedule: dict[str, int], **trainer_kwargs: Any) -> list[Any]:
    data = H.Data()
    monitors = [
        MembershipInferenceMonitor(nonmembers=data.val, num_probes=8, run_dir=root, **schedule),
        CanaryExposureMonitor(H.make_canaries(), method="exact", run_dir=root, **schedule),
        PrivacyAuditMonitor(data.audit_canaries, k_pos=2, k_neg=2, seed=0, run_dir=root, **schedule),
    ]
    trainer = _trainer(root, monitors, **trainer_kwargs)
    trainer.fit(H.HardModel(accountant=False), data.train_loader(batch_size=4), data.val_loader())
    for monitor in monitors:
        monitor.flush()
    return monitors


def test_step_scheduled_files_carry_the_history_steps(tmp_path: Path) -> None:
    mia, exposure, audit = _fit(tmp_path, {"every_n_steps": 3}, limit_train_batches=9)
    steps = [3, 6, 9]
    for monitor in (mia, exposure, audit):
        assert [row["step"] for row in monitor.history] == steps, type(monitor).__name__
    losses = load_npz(mia.run_dir / "losses.npz")
    assert losses["steps"].dtype == np.int64
    assert losses["steps"].tolist() == steps
    assert losses["epochs"].tolist() == [0, 0, 0]
    assert load_npz(exposure.run_dir / "exposure.npz")["steps"].tolist() == steps
    # one audit file per evaluation, named by the global step; no epoch file
    assert sorted(p.name for p in audit.run_dir.glob("*_*.npz")) == [f"step_{s:08d}.npz" for s in steps]

    run = RunDirectory(tmp_path)
    membership = run.membership()
    assert membership is not None
    assert membership.steps is not None
    assert membership.steps.tolist() == steps
    exposure_files = run.exposure()
    assert exposure_files is not None
    assert exposure_files.steps is not None
    assert exposure_files.steps.tolist() == steps
    audit_files = run.audit()
    assert audit_files is not None
    for step in steps:
        evaluation = audit_files.evaluation(step=step)
        assert set(evaluation) >= {"scores", "guesses", "included"}
    with pytest.raises(ValueError, match="exactly one of epoch and step"):
        audit_files.evaluation(0, step=3)


def test_the_exposure_series_has_one_line_per_step_evaluation(tmp_path: Path) -> None:
    _, exposure, _ = _fit(tmp_path, {"every_n_steps": 3}, limit_train_batches=9)
    (series, _table) = exposure.records(None)
    assert list(series.ys) == ["step 3", "step 6", "step 9"]


def test_epoch_scheduled_files_keep_the_epoch_layout(tmp_path: Path) -> None:
    mia, exposure, audit = _fit(tmp_path, {}, max_epochs=2, limit_train_batches=3)
    assert load_npz(mia.run_dir / "losses.npz")["steps"].tolist() == [row["step"] for row in mia.history]
    assert load_npz(exposure.run_dir / "exposure.npz")["steps"].tolist() == [3, 6]
    assert sorted(p.name for p in audit.run_dir.glob("*_*.npz")) == ["epoch_0000.npz", "epoch_0001.npz"]
    (series, _table) = exposure.records(None)
    assert list(series.ys) == ["epoch 0", "epoch 1"]
    audit_files = RunDirectory(tmp_path).audit()
    assert audit_files is not None
    assert set(audit_files.evaluation(1)) >= {"scores", "guesses", "included"}


def test_files_without_steps_read_as_none(tmp_path: Path) -> None:
    mia, exposure, _ = _fit(tmp_path, {}, limit_train_batches=3)
    for path in (mia.run_dir / "losses.npz", exposure.run_dir / "exposure.npz"):
        arrays = dict(load_npz(path))
        del arrays["steps"]
        save_npz(path, **arrays)
    run = RunDirectory(tmp_path)
    membership, exposure_files = run.membership(), run.exposure()
    assert membership is not None
    assert membership.steps is None
    assert exposure_files is not None
    assert exposure_files.steps is None


def test_a_checkpoint_without_steps_loads_with_unknown_steps() -> None:
    data = H.Data()
    monitor = MembershipInferenceMonitor(nonmembers=data.val, num_probes=8)
    state = {"epochs": [0, 1]}
    monitor.load_state_dict(state)
    assert monitor.state_dict()["steps"] == [-1, -1]


def test_the_report_draws_step_scheduled_runs_by_global_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib.axes

    from memcallbacks.report import build_report
    from memcallbacks.report.common import evaluation_axis

    assert evaluation_axis(np.array([0, 0, 1]), np.array([3, 6, 9]))[1] == "global step"
    assert evaluation_axis(np.array([0, 1]), np.array([3, 6]))[1] == "epoch"  # one evaluation per epoch
    assert evaluation_axis(np.array([0, 0]), None)[1] == "epoch"  # a file written without steps
    _fit(tmp_path, {"every_n_steps": 3}, limit_train_batches=9)
    xlabels: list[str] = []
    legend: list[str] = []
    set_xlabel, plot = matplotlib.axes.Axes.set_xlabel, matplotlib.axes.Axes.plot

    def spy_xlabel(self: Any, label: str, *args: Any, **kwargs: Any) -> Any:
        xlabels.append(label)
        return set_xlabel(self, label, *args, **kwargs)

    def spy_plot(self: Any, *args: Any, **kwargs: Any) -> Any:
        legend.append(str(kwargs.get("label")))
        return plot(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "set_xlabel", spy_xlabel)
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy_plot)
    paths = build_report(tmp_path, out=tmp_path / "report")
    assert not paths["problems"]
    assert "global step" in xlabels  # the membership gap/AUC figure
    assert {"step 3", "step 6", "step 9"} <= set(legend)  # the exposure figure: one line per evaluation
