"""Set-up checks before the first step: a collate that drops the index, probes the model cannot score."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks import IndexedDataset, LossTrajectoryTracker, split_index


class DictBlobs(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int = 24) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


def drop_index(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """A user's collate that rebuilds the batch from the keys it knows: the index is lost."""
    return {"x": torch.stack([it["x"] for it in items]), "y": torch.stack([it["y"] for it in items])}


def rename_index(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """A collate that keeps the index under its own key (training_step reads it from there)."""
    return {**drop_index(items), "idx": torch.tensor([it["index"] for it in items])}


class DictClassifier(TinyClassifier):
    steps = 0

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        self.steps += 1
        index = batch["idx"] if "idx" in batch else split_index(batch)[0]
        per_sample = F.cross_entropy(self(batch["x"]), batch["y"], reduction="none")
        return {"loss": per_sample.mean(), "sample_loss": per_sample.detach(), "sample_index": index}


def test_collate_that_drops_the_index_is_named_before_the_first_step(tmp_path: Path) -> None:
    model = DictClassifier()
    loader = DataLoader(IndexedDataset(DictBlobs()), batch_size=8, collate_fn=drop_index)
    with pytest.raises(ValueError, match=r"collate_fn \(drop_index\) dropped the sample index") as err:
        trainer(tmp_path, max_epochs=1, callbacks=[LossTrajectoryTracker(num_top=0)]).fit(model, loader)
    assert "Wrap the training set" not in str(err.value)
    assert model.steps == 0


def test_collate_that_keeps_the_index_under_another_key_is_accepted(tmp_path: Path) -> None:
    tracker = LossTrajectoryTracker(num_top=0, correct_key=None)
    loader = DataLoader(IndexedDataset(DictBlobs()), batch_size=8, collate_fn=rename_index)
    trainer(tmp_path, max_epochs=1, callbacks=[tracker]).fit(DictClassifier(), loader)
    assert tracker.history[-1]["mem/traj/visited_frac"] == 1.0


class NoIndexOutput(DictClassifier):
    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        return {"loss": super().training_step(batch, batch_idx)["loss"]}


def test_missing_outputs_with_an_indexed_dataset_do_not_ask_to_wrap_it(tmp_path: Path) -> None:
    loader = DataLoader(IndexedDataset(DictBlobs()), batch_size=8, collate_fn=rename_index)
    with pytest.raises(RuntimeError, match="wrapped in IndexedDataset already") as err:
        trainer(tmp_path, max_epochs=1, callbacks=[LossTrajectoryTracker(num_top=0)]).fit(
            NoIndexOutput(), loader
        )
    assert "Wrap the training set" not in str(err.value)


def test_probes_the_model_cannot_score_are_refused_before_the_first_step(tmp_path: Path) -> None:
    """A probe set of another feature width fails at fit start, not at the first evaluation."""
    from torch.utils.data import TensorDataset

    from helpers.data import loaders, make_blobs

    model = TinyClassifier()  # 8 features
    probes = TensorDataset(torch.zeros(5, 4), torch.zeros(5, dtype=torch.long))
    tracker = LossTrajectoryTracker(source="probe", probe_dataset=probes, num_top=0)
    with pytest.raises(
        ValueError, match=r"source='probe'\): the model cannot score the probe set.*sample_loss_fn="
    ):
        trainer(tmp_path, max_epochs=1, callbacks=[tracker]).fit(model, loaders(make_blobs(16))[0])
    assert model.global_step == 0
