"""Module-level models, samplers and callbacks for the trajectory tests (picklable for ddp_spawn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from _helpers import TinyClassifier
from memcallbacks.data.indexed import split_index


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


class RankRecorder(pl.Callback):
    """Each rank saves what it logged and the trackers' statistics, to compare ranks."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from memcallbacks.callbacks.trajectory import LossTrajectoryTracker

        arrays: dict[str, np.ndarray] = {}
        for key, value in trainer.callback_metrics.items():
            if key.startswith("mem/"):
                arrays["metric:" + key] = np.asarray(float(value))
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(cb, LossTrajectoryTracker):
                stats = cb.statistics()
                arrays[f"mean:{cb.name}"] = stats.mean
                arrays[f"count:{cb.name}"] = stats.count
        np.savez(Path(self.out_dir) / f"rank{trainer.global_rank}.npz", **arrays)


def per_sample_losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Independent per-sample cross-entropy of a model (for checks)."""
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none").numpy()


__all__ = [
    "FaultyClassifier",
    "NoCorrectClassifier",
    "RankRecorder",
    "per_sample_losses",
    "split_index",
]
