"""Small data sets and loaders for the callback tests."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from memcallbacks.data.indexed import IndexedDataset


def make_blobs(n: int = 64, dim: int = 8, classes: int = 3, seed: int = 0) -> TensorDataset:
    """A small, learnable classification set (Gaussian blobs)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    centers = torch.randn(classes, dim, generator=g) * 2.0
    x = centers[y] + torch.randn(n, dim, generator=g)
    return TensorDataset(x, y)


def loaders(
    train: Any, val: Any = None, batch_size: int = 16, shuffle: bool = True
) -> tuple[DataLoader, Any]:
    """A training loader over ``IndexedDataset(train)`` and, if ``val`` is given, a plain validation loader."""
    tl = DataLoader(IndexedDataset(train), batch_size=batch_size, shuffle=shuffle)
    vl = DataLoader(val, batch_size=batch_size) if val is not None else None
    return tl, vl


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


class BlobsDataModule(pl.LightningDataModule):
    """Train and validation loaders from a DataModule (validation requested lazily by Lightning)."""

    def __init__(self, train: Any, val: Any) -> None:
        super().__init__()
        self.train, self.val = train, val

    def train_dataloader(self) -> DataLoader:
        return DataLoader(IndexedDataset(self.train), batch_size=16, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=16)
