"""Resume: a checkpoint at the end of epoch k + resume == an uninterrupted run, bitwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from helpers.data import EpochShuffleSampler, make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks import IndexedDataset, LossTrajectoryTracker

EPOCHS = 4


def _loader() -> DataLoader:
    ds = make_blobs(45, seed=2)
    return DataLoader(IndexedDataset(ds), batch_size=8, sampler=EpochShuffleSampler(len(ds), seed=1))


def _model() -> TinyClassifier:
    torch.manual_seed(0)
    return TinyClassifier(hidden=8, lr=0.3)


@pytest.mark.parametrize(
    ("budget", "same_run_dir"), [(10**9, True), (0, False)], ids=["memory-same-dir", "disk-new-dir"]
)
def test_resume_reproduces_uninterrupted_trajectories(
    tmp_path: Path, budget: int, same_run_dir: bool
) -> None:
    straight = LossTrajectoryTracker(memory_budget_bytes=budget, run_dir=tmp_path / "straight")
    trainer(tmp_path / "a", max_epochs=EPOCHS, callbacks=[straight]).fit(_model(), _loader())

    # interrupted run: checkpoints every epoch, "crashes" after epoch 2 (3 epochs written to the run dir)
    first_dir = tmp_path / "resumed"
    first = LossTrajectoryTracker(memory_budget_bytes=budget, run_dir=first_dir)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    trainer(tmp_path / "b", max_epochs=3, callbacks=[first, ckpt], enable_checkpointing=True).fit(
        _model(), _loader()
    )
    path = next((tmp_path / "ckpt").glob("epoch=1-*.ckpt"))  # end of epoch 1: two epochs recorded
    state = torch.load(path, weights_only=True)["callbacks"][first.state_key]  # no pickle needed
    assert state["store"]["num_epochs"] == 2
    assert ("losses" in state["store"]) == (budget > 0)

    second_dir = first_dir if same_run_dir else tmp_path / "resumed_elsewhere"
    resumed = LossTrajectoryTracker(memory_budget_bytes=budget, run_dir=second_dir)
    trainer(tmp_path / "c", max_epochs=EPOCHS, callbacks=[resumed]).fit(
        _model(), _loader(), ckpt_path=str(path)
    )

    expected = straight.store.matrix()
    np.testing.assert_array_equal(resumed.store.matrix(), expected)  # bitwise (NaN-free here)
    np.testing.assert_array_equal(resumed.store.correct_matrix(), straight.store.correct_matrix())
    assert resumed.recorded_epochs == list(range(EPOCHS))
    for field in ("mean", "variability", "forgetting_events", "learned_epoch"):
        np.testing.assert_array_equal(
            getattr(resumed.statistics(), field), getattr(straight.statistics(), field)
        )
    files = sorted((second_dir / "trajectory").glob("epoch_*.npy"))
    assert [f.name for f in files] == [f"epoch_{j:04d}.npy" for j in range(EPOCHS)]  # none missing or doubled
    on_disk = np.stack([np.load(f) for f in files], axis=1)
    np.testing.assert_array_equal(on_disk, expected)
    # every draw of each sample, carried across the resume: once per epoch here
    visits = np.load(second_dir / "trajectory" / "statistics.npz")["visits"]
    np.testing.assert_array_equal(visits, np.full(45, EPOCHS))
