"""Tiny real models and Trainers shared by the callback tests (module level: picklable for ddp_spawn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler, TensorDataset

from memcallbacks.data.indexed import IndexedDataset, split_index


def make_blobs(n: int = 64, dim: int = 8, classes: int = 3, seed: int = 0) -> TensorDataset:
    """A small, learnable classification set (Gaussian blobs)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    centers = torch.randn(classes, dim, generator=g) * 2.0
    x = centers[y] + torch.randn(n, dim, generator=g)
    return TensorDataset(x, y)


class TinyClassifier(pl.LightningModule):
    """Linear/MLP classifier whose ``training_step`` returns per-sample losses (the three-line change).

    Batches come from ``IndexedDataset(TensorDataset(x, y))``.
    """

    def __init__(self, dim: int = 8, classes: int = 3, hidden: int = 0, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        if hidden:
            self.net: torch.nn.Module = torch.nn.Sequential(
                torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, classes)
            )
        else:
            self.net = torch.nn.Linear(dim, classes)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        index, (x, y) = split_index(batch)
        logits = self(x)
        per_sample = F.cross_entropy(logits, y, reduction="none")
        return {
            "loss": per_sample.mean(),
            "sample_loss": per_sample.detach(),
            "sample_index": index,
            "sample_correct": logits.argmax(-1) == y,
        }

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        _, batch = split_index(batch, missing_ok=True)
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def loaders(
    train: Any, val: Any = None, batch_size: int = 16, shuffle: bool = True
) -> tuple[DataLoader, Any]:
    tl = DataLoader(IndexedDataset(train), batch_size=batch_size, shuffle=shuffle)
    vl = DataLoader(val, batch_size=batch_size) if val is not None else None
    return tl, vl


def trainer(tmp_path: Path, **kwargs: Any) -> pl.Trainer:
    """A quiet CPU Trainer writing under ``tmp_path``."""
    opts: dict[str, Any] = dict(
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=pl.loggers.CSVLogger(str(tmp_path), name="csv"),
        num_sanity_val_steps=0,
    )
    opts.update(kwargs)
    return pl.Trainer(**opts)


class EpochShuffleSampler(Sampler[int]):
    """Shuffles with a generator seeded by (seed, epoch): the order survives a resume (Lightning calls set_epoch)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Any:
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())
