"""Two CPU processes (gloo): one gather per epoch, padding de-duplicated, identical numbers on every rank."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from helpers.callbacks import RankDump
from helpers.data import make_blobs
from helpers.models import TinyClassifier, per_sample_losses
from helpers.state import same
from helpers.training import trainer
from memcallbacks import IndexedDataset, LossTrajectoryTracker
from memcallbacks.utilities.fileio import load_npz

N, BATCH, EPOCHS = 37, 4, 2  # 37 is not divisible by 2 * 4: DistributedSampler pads with a repeated index


def _fit(tmp_path: Path, **kw) -> tuple[LossTrajectoryTracker, LossTrajectoryTracker, TinyClassifier]:
    ds = make_blobs(N, seed=5)
    torch.manual_seed(0)
    model = TinyClassifier(lr=0.0)  # the model stays fixed: every process and visit sees the same losses
    step = LossTrajectoryTracker(run_dir=tmp_path / "run")
    probe = LossTrajectoryTracker(  # the fit-start reference: one collective probe pass in on_train_start
        source="probe",
        num_probes=15,
        name="probe",
        run_dir=tmp_path / "run",
        batch_size=4,
        reference="fit_start",
    )
    loader = DataLoader(IndexedDataset(ds), batch_size=BATCH, shuffle=True)
    trainer(tmp_path, max_epochs=EPOCHS, callbacks=[step, probe, RankDump(tmp_path / "ranks")], **kw).fit(
        model, loader
    )
    return step, probe, model


@pytest.mark.ddp
def test_ddp_two_processes_match_one_process(tmp_path: Path) -> None:
    one_step, one_probe, model = _fit(tmp_path / "single")
    _fit(tmp_path / "ddp", strategy="ddp_spawn", accelerator="cpu", devices=2)

    run = tmp_path / "ddp" / "run"
    ddp_losses = np.stack([np.load(run / "trajectory" / f"epoch_{j:04d}.npy") for j in range(EPOCHS)], axis=1)
    assert not np.isnan(
        ddp_losses
    ).any()  # every index recorded in every epoch (coverage = the 1-process set)
    np.testing.assert_allclose(ddp_losses, one_step.store.matrix(), rtol=2e-3)
    np.testing.assert_allclose(
        ddp_losses[:, 0], per_sample_losses(model, *make_blobs(N, seed=5).tensors), rtol=2e-3
    )
    ddp_probe = np.stack(
        [np.load(run / "trajectory_probe" / f"epoch_{j:04d}.npy") for j in range(EPOCHS)], axis=1
    )
    np.testing.assert_allclose(ddp_probe, one_probe.store.matrix(), rtol=2e-3)  # shards gathered in order
    # the fit-start reference, gathered in probe order; with lr=0 it is every column's loss
    assert one_probe._fit_reference is not None
    ddp_reference = load_npz(run / "trajectory_probe" / "statistics.npz")["reference"]
    np.testing.assert_allclose(ddp_reference, one_probe._fit_reference, rtol=1e-5)
    np.testing.assert_allclose(ddp_reference, one_probe.store.matrix()[:, 0], rtol=2e-3)

    with open(next((tmp_path / "ddp").rglob("metrics.csv"))) as f:
        rows = [r for r in csv.DictReader(f) if r.get("mem/traj/visited_frac")]
    assert [float(r["mem/traj/visited_frac"]) for r in rows] == [
        1.0
    ] * EPOCHS  # padding counted once, not 38/37

    # every rank logged the same numbers and holds the same statistics
    r0, r1 = RankDump(tmp_path / "ddp" / "ranks").read()
    assert any(k.startswith("mem/traj/") for k in r0["metrics"])
    assert r0["metrics"] == r1["metrics"]
    statistics = sorted(k for k in r1 if k.startswith(("traj/stat/", "traj[probe]/stat/")))
    assert len(statistics) == 14
    for key in statistics:
        assert same(r0[key], r1[key]), key
    assert r0["traj/stat/count"].tolist() == [EPOCHS] * N
