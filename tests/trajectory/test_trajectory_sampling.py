"""Samplers that draw with replacement (Opacus' Poisson sampling): no duplicate warning, every draw counted."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler

from helpers.data import make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks import IndexedDataset, LossTrajectoryTracker
from memcallbacks.callbacks.trajectory import sampling_of
from memcallbacks.utilities.fileio import load_npz

N, BATCH = 128, 16


class RecordingClassifier(TinyClassifier):
    """Keeps the sample indices of every step, per epoch: what the sampler really drew."""

    def __init__(self) -> None:
        super().__init__(lr=0.2)
        self.drawn: dict[int, list[np.ndarray]] = {}

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        out = super().training_step(batch, batch_idx)
        self.drawn.setdefault(self.current_epoch, []).append(out["sample_index"].numpy().copy())
        return out


def _fit(tmp_path: Path, loader: DataLoader) -> tuple[LossTrajectoryTracker, RecordingClassifier, list[str]]:
    torch.manual_seed(0)
    tracker = LossTrajectoryTracker(num_top=0)
    model = RecordingClassifier()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, max_epochs=3, callbacks=[tracker]).fit(model, loader)
    return tracker, model, [str(w.message) for w in caught]


def test_poisson_loader_counts_every_draw_without_a_duplicate_warning(tmp_path: Path) -> None:
    opacus_data_loader = pytest.importorskip("opacus.data_loader")
    loader = opacus_data_loader.DPDataLoader.from_data_loader(
        DataLoader(IndexedDataset(make_blobs(N)), batch_size=BATCH),
        generator=torch.Generator().manual_seed(1),
    )
    tracker, model, messages = _fit(tmp_path, loader)

    assert not [m for m in messages if "more than once" in m]
    drawn = {e: np.concatenate(v) for e, v in model.drawn.items()}
    repeats = [d.size - np.unique(d).size for d in drawn.values()]
    assert sum(repeats) > 0  # Poisson sampling did repeat samples within an epoch
    for row, epoch in zip(tracker.history, sorted(drawn)):
        assert row["mem/traj/visited_frac"] == pytest.approx(np.unique(drawn[epoch]).size / N)
        assert row["mem/traj/duplicates"] == repeats[epoch]
    saved = load_npz(tracker.run_dir / "statistics.npz")
    np.testing.assert_array_equal(
        saved["visits"], np.bincount(np.concatenate(list(drawn.values())), minlength=N)
    )
    meta = json.loads((tracker.run_dir / "meta.json").read_text())
    q, steps = BATCH / N, N // BATCH
    assert meta["sampling"] == "poisson"
    assert meta["expected_visited_frac"] == pytest.approx(1 - (1 - q) ** steps)
    assert "63%" in meta["visited_frac"]


def test_sampler_with_replacement_is_recognised(tmp_path: Path) -> None:
    data = IndexedDataset(make_blobs(N))
    sampler = RandomSampler(data, replacement=True, generator=torch.Generator().manual_seed(0))
    tracker, model, messages = _fit(tmp_path, DataLoader(data, batch_size=BATCH, sampler=sampler))
    assert not [m for m in messages if "more than once" in m]
    meta = json.loads((tracker.run_dir / "meta.json").read_text())
    assert meta["sampling"] == "with_replacement"
    assert meta["expected_visited_frac"] == pytest.approx(1 - (1 - 1 / N) ** N)


def test_plain_loader_still_warns_about_repeats(tmp_path: Path) -> None:
    """A sampler that should draw each sample once but repeats one: warned, counted, visits still exact."""
    data = IndexedDataset(make_blobs(N))
    order = list(range(N)) + [0, 1]  # two repeats per epoch
    tracker, model, messages = _fit(tmp_path, DataLoader(data, batch_size=BATCH, sampler=order))
    assert [m for m in messages if "more than once" in m]
    assert tracker.history[-1]["mem/traj/duplicates"] == 2
    saved = load_npz(tracker.run_dir / "statistics.npz")
    expected = np.full(N, 3)
    expected[:2] = 6
    np.testing.assert_array_equal(saved["visits"], expected)
    assert json.loads((tracker.run_dir / "meta.json").read_text())["sampling"] == "without_replacement"


def test_sampling_of_weighted_sampler() -> None:
    from torch.utils.data import WeightedRandomSampler

    weights = torch.tensor([1.0, 3.0])
    loader = DataLoader([0, 1], sampler=WeightedRandomSampler(weights, num_samples=2, replacement=True))
    p = np.array([0.25, 0.75])
    assert sampling_of(loader) == ("with_replacement", pytest.approx(float((1 - (1 - p) ** 2).mean())))
    assert sampling_of(DataLoader([0, 1], shuffle=True)) == ("without_replacement", None)


def test_report_counts_canary_copies_from_the_real_draws(tmp_path: Path) -> None:
    """``canary_copies_ranked`` adds up the sampler's draws of the copies (``visits``), not one per copy."""
    opacus_data_loader = pytest.importorskip("opacus.data_loader")
    from memcallbacks.report import canary_copies_ranked
    from memcallbacks.rundir import ExposureFiles, RunDirectory

    loader = opacus_data_loader.DPDataLoader.from_data_loader(
        DataLoader(IndexedDataset(make_blobs(N)), batch_size=BATCH),
        generator=torch.Generator().manual_seed(2),
    )
    tracker, model, _ = _fit(tmp_path, loader)
    traj = RunDirectory(tracker.run_dir.parent).trajectory()
    assert traj is not None
    copies = np.arange(16)  # pretend rows 0-15 are the 16 copies of one canary
    exp = ExposureFiles(
        arrays={
            "injected_index": copies,
            "injected_canary": np.zeros(16, dtype=np.int64),
            "canary_ids": np.array([0]),
            "repetitions": np.array([16]),
        }
    )
    ranked = canary_copies_ranked(traj, exp, by="mean_loss", min_repetitions=16)
    assert ranked is not None
    drawn = np.bincount(np.concatenate([np.concatenate(v) for v in model.drawn.values()]), minlength=N)
    assert ranked.copies == int((drawn[copies] > 0).sum())
    assert ranked.draws == int(drawn[copies].sum())
