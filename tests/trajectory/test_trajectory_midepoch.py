"""Resume from a mid-epoch checkpoint: the partial epoch is restored from the checkpoint, the rest recorded."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from helpers.data import make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks import IndexedDataset, LossTrajectoryTracker

N, BATCH, STEPS_BEFORE_CKPT = 40, 8, 3  # 5 steps per epoch; the checkpoint after step 3 of epoch 0


def _loader() -> DataLoader:
    return DataLoader(IndexedDataset(make_blobs(N, seed=4)), batch_size=BATCH, shuffle=False)


def _model() -> TinyClassifier:
    torch.manual_seed(0)
    return TinyClassifier(hidden=8, lr=0.2)


def test_mid_epoch_checkpoint_keeps_the_partial_epoch(tmp_path: Path) -> None:
    straight = LossTrajectoryTracker(run_dir=tmp_path / "straight")
    trainer(tmp_path / "a", max_epochs=2, callbacks=[straight]).fit(_model(), _loader())

    first = LossTrajectoryTracker(run_dir=tmp_path / "run")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=STEPS_BEFORE_CKPT, save_top_k=-1)
    trainer(tmp_path / "b", max_epochs=1, callbacks=[first, ckpt], enable_checkpointing=True).fit(
        _model(), _loader()
    )
    path = next((tmp_path / "ckpt").glob(f"*step={STEPS_BEFORE_CKPT}.ckpt"))
    state = torch.load(path, weights_only=True)["callbacks"][first.state_key]
    assert state["store"]["num_epochs"] == 0  # the checkpoint was taken inside epoch 0
    assert state["partial"]["epoch"] == 0
    assert state["partial"]["index"].tolist() == list(range(24))

    resumed = LossTrajectoryTracker(run_dir=tmp_path / "run")
    tr = trainer(tmp_path / "c", max_epochs=2, callbacks=[resumed])
    with pytest.warns(UserWarning, match="more than once in epoch 0"):  # Lightning restarts the loader
        tr.fit(_model(), _loader(), ckpt_path=str(path))

    assert resumed.recorded_epochs == [0, 1]
    epoch0, expected = resumed.store.epoch(0), straight.store.epoch(0)
    seen = STEPS_BEFORE_CKPT * BATCH
    np.testing.assert_array_equal(epoch0[:seen], expected[:seen])  # restored from the checkpoint, bitwise
    assert not np.isnan(resumed.store.epoch(1)).any()  # the next epoch is whole
    with open(Path(tr.logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("mem/traj/visited_frac")]
    first_row = {k: float(v) for k, v in rows[0].items() if v}
    assert first_row["epoch"] == 0.0
    # the rest of epoch 0 ran over the loader's first batches again: visited = checkpointed samples
    remaining = 5 - STEPS_BEFORE_CKPT
    assert first_row["mem/traj/visited_frac"] == pytest.approx(seen / N)
    assert first_row["mem/traj/duplicates"] == remaining * BATCH
