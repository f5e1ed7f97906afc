"""``LossTrajectoryTracker(every_n_steps=N)``: one store column per window of ``N`` global steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from helpers.data import make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks import IndexedDataset, LossTrajectoryTracker
from memcallbacks.rundir import RunDirectory
from memcallbacks.utilities.fileio import load_json, load_npz

N, BATCH = 40, 8  # 5 steps per epoch


class _Columns(LossTrajectoryTracker):
    """Keeps the indices buffered at each window's end (what the column was built from)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.windows: list[list[int]] = []

    def measure(self, trainer: Any, pl_module: Any) -> Any:
        self.windows.append(sorted(int(i) for s in self._steps for i in torch.as_tensor(s[1]).tolist()))
        return super().measure(trainer, pl_module)


def _loader() -> DataLoader:
    return DataLoader(IndexedDataset(make_blobs(N, seed=4)), batch_size=BATCH, shuffle=False)


def _model() -> TinyClassifier:
    torch.manual_seed(0)
    return TinyClassifier(hidden=8, lr=0.2)


def test_a_one_epoch_run_has_one_column_per_window(tmp_path: Path) -> None:
    tracker = _Columns(every_n_steps=2, run_dir=tmp_path / "run")
    trainer(tmp_path, max_epochs=1, callbacks=[tracker]).fit(_model(), _loader())
    tracker.flush()
    assert tracker.store is not None
    assert tracker.store.num_epochs == 2  # floor(5 / 2): the fifth step is not recorded
    assert tracker.recorded_steps == [2, 4]
    assert tracker.recorded_epochs == [0, 0]
    assert [row["step"] for row in tracker.history] == [2, 4]
    assert tracker.windows == [list(range(0, 16)), list(range(16, 32))]
    for j, window in enumerate(tracker.windows):
        column = tracker.store.epoch(j)
        assert np.isfinite(column[window]).all()
        assert np.isnan(np.delete(column, window)).all()
    assert [row["mem/traj/visited_frac"] for row in tracker.history] == [16 / N, 16 / N]
    assert [row["mem/traj/epochs"] for row in tracker.history] == [1.0, 2.0]
    stats = load_npz(tmp_path / "run" / "trajectory" / "statistics.npz")
    assert stats["steps"].tolist() == [2, 4]
    assert load_json(tmp_path / "run" / "trajectory" / "meta.json")["steps"] == [2, 4]
    files = RunDirectory(tmp_path / "run").trajectory()
    assert files is not None
    assert files.steps is not None
    assert files.steps.tolist() == [2, 4]


def test_a_window_crosses_the_epoch_end(tmp_path: Path) -> None:
    tracker = _Columns(every_n_steps=3, run_dir=tmp_path / "run")
    trainer(tmp_path, max_epochs=2, callbacks=[tracker]).fit(_model(), _loader())
    assert tracker.recorded_steps == [3, 6, 9]
    assert tracker.recorded_epochs == [0, 1, 1]
    # steps 4, 5 (epoch 0) and 6 (epoch 1, the loader's first batch)
    assert tracker.windows[1] == sorted([*range(24, 40), *range(0, 8)])


def test_a_window_longer_than_the_epoch_keeps_the_first_loss(tmp_path: Path) -> None:
    tracker = LossTrajectoryTracker(every_n_steps=7, run_dir=tmp_path / "run")
    trainer(tmp_path, max_epochs=2, callbacks=[tracker]).fit(_model(), _loader())
    assert tracker.recorded_steps == [7]
    assert tracker.history[0]["mem/traj/duplicates"] == 2 * BATCH  # steps 6 and 7 revisit batches 0 and 1
    assert tracker.history[0]["mem/traj/visited_frac"] == 1.0


def test_statistics_are_per_window(tmp_path: Path) -> None:
    tracker = LossTrajectoryTracker(every_n_steps=5, run_dir=tmp_path / "run")
    trainer(tmp_path, max_epochs=3, callbacks=[tracker]).fit(_model(), _loader())
    by_epoch = LossTrajectoryTracker(run_dir=tmp_path / "epochs")
    trainer(tmp_path / "e", max_epochs=3, callbacks=[by_epoch]).fit(_model(), _loader())
    # windows of one epoch's steps are the epochs: the same columns and statistics
    assert tracker.store is not None
    assert by_epoch.store is not None
    for j in range(3):
        np.testing.assert_array_equal(tracker.store.epoch(j), by_epoch.store.epoch(j))
    a, b = tracker.statistics(), by_epoch.statistics()
    np.testing.assert_array_equal(a.learned_epoch, b.learned_epoch)
    np.testing.assert_array_equal(a.forgetting_events, b.forgetting_events)
    np.testing.assert_allclose(a.variability, b.variability)


class _SameBatch(torch.utils.data.Dataset):
    """Every batch of ``BATCH`` consecutive items is samples ``0..BATCH-1``, with their index.

    Lightning restarts a plain DataLoader from its first batch when resuming mid-epoch; with every
    batch alike, the resumed run trains on the same data as the uninterrupted one.
    """

    def __init__(self) -> None:
        self.base = make_blobs(BATCH, seed=4)

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> Any:
        return i % BATCH, self.base[i % BATCH]


def _resumable_run(root: Path, *, max_steps: int = -1, ckpt: str | None = None) -> LossTrajectoryTracker:
    tracker = LossTrajectoryTracker(every_n_steps=3, num_samples=BATCH, run_dir=root / "run")
    checkpoint = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=4, save_top_k=-1)
    tr = trainer(
        root, max_epochs=2, max_steps=max_steps, callbacks=[tracker, checkpoint], enable_checkpointing=True
    )
    tr.fit(_model(), DataLoader(_SameBatch(), batch_size=BATCH, shuffle=False), ckpt_path=ckpt)
    return tracker


def test_resume_inside_a_window_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    straight = _resumable_run(tmp_path / "a")
    _resumable_run(tmp_path / "b", max_steps=4)  # stops at step 4: the window of steps 4-6 is open
    (ckpt,) = (tmp_path / "b" / "ckpt").glob("*step=4.ckpt")
    state = torch.load(ckpt, weights_only=True)["callbacks"]
    (tracker_state,) = [v for k, v in state.items() if "LossTrajectoryTracker" in k]
    assert tracker_state["partial"]["window"] == 3
    assert tracker_state["partial"]["index"].tolist() == list(range(BATCH))
    resumed = _resumable_run(tmp_path / "b", ckpt=str(ckpt))
    assert resumed.recorded_steps == straight.recorded_steps == [3, 6, 9]
    assert resumed.store is not None
    assert straight.store is not None
    for j in range(3):  # the window of steps 4-6 keeps step 4's losses, restored from the checkpoint
        np.testing.assert_array_equal(resumed.store.epoch(j), straight.store.epoch(j))
    assert resumed.history == straight.history


def test_every_n_steps_with_every_n_epochs_fails() -> None:
    with pytest.raises(ValueError, match="every_n_steps"):
        LossTrajectoryTracker(every_n_steps=2, every_n_epochs=2)
