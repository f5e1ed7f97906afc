"""Tiny classifiers whose ``training_step`` returns per-sample losses, and deliberately broken variants."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from memcallbacks.data.indexed import split_index


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


class FaultyClassifier(TinyClassifier):
    """TinyClassifier whose training_step output is broken in one configurable way."""

    def __init__(self, fault: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fault = fault

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        out = super().training_step(batch, batch_idx)
        if self.fault == "no_keys":
            return {"loss": out["loss"]}
        if self.fault == "tensor_only":
            return out["loss"]
        if self.fault == "short_index":
            out["sample_index"] = out["sample_index"][:-1]
        elif self.fault == "float_index":
            out["sample_index"] = out["sample_index"].float()
        elif self.fault == "negative_index":
            out["sample_index"] = out["sample_index"] - 1
        elif self.fault == "scalar_loss":
            out["sample_loss"] = out["sample_loss"].mean()
        elif self.fault == "nonfinite" and batch_idx == 0:
            # the first two samples of the first batch get NaN and +inf losses (batches not shuffled)
            loss = out["sample_loss"].clone()
            loss[0] = float("nan")
            loss[1] = float("inf")
            out["sample_loss"] = loss
        return out


class NoCorrectClassifier(TinyClassifier):
    """Returns sample_loss and sample_index only (no correctness)."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        out = super().training_step(batch, batch_idx)
        out.pop("sample_correct")
        return out


class UserLoggedScore(pl.LightningModule):
    """Logs ``mem/user/score`` itself from ``validation_step`` (no memcallbacks monitor)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(8, 3)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        _, (x, y) = batch
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("mem/user/score", float(self.current_epoch), on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def per_sample_losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Independent per-sample cross-entropy of a model (for checks)."""
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none").numpy()


def dataset_losses(model: torch.nn.Module, data: TensorDataset) -> np.ndarray:
    """Per-sample cross-entropy of ``model`` (put in eval mode) on a ``(x, y)`` TensorDataset, computed here."""
    model.eval()
    return per_sample_losses(model, *data.tensors)
