"""Module-level helpers for the membership-monitor tests (picklable for ddp_spawn workers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from memcallbacks.data.indexed import IndexedDataset


class DumpCallbackMetrics(pl.Callback):
    """At the end of fit, every rank writes ``trainer.callback_metrics`` (and rank 0 the weights)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        Path(self.folder, f"rank{trainer.global_rank}.json").write_text(json.dumps(metrics))
        if trainer.is_global_zero:
            torch.save(pl_module.state_dict(), Path(self.folder, "weights.pt"))


class BlobsDataModule(pl.LightningDataModule):
    """Train and validation loaders from a DataModule (validation requested lazily by Lightning)."""

    def __init__(self, train: Any, val: Any) -> None:
        super().__init__()
        self.train, self.val = train, val

    def train_dataloader(self) -> DataLoader:
        return DataLoader(IndexedDataset(self.train), batch_size=16, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=16)
