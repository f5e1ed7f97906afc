"""Test-only callbacks for the tracker and stopping tests (module level: picklable for ddp_spawn)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from memcallbacks import trackers
from memcallbacks.callbacks._base import MemorisationCallback


class RecordEmitter(MemorisationCallback):
    """Logs ``mem/test/*`` scalars and emits one record of every kind each evaluated epoch."""

    subdir = "test_emitter"

    def on_memorisation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.is_due(trainer):
            return
        epoch = trainer.current_epoch
        self.log_metrics(pl_module, {"mem/test/score": 0.5 + epoch, "mem/test/other": 2.0 * epoch})
        rng = np.random.default_rng(epoch)
        self.emit(trainer, trackers.Histogram("mem/test/hist", rng.normal(size=200), epoch, num_bins=2000))
        self.emit(
            trainer, trackers.Table("mem/test/table", ["id", "loss"], [[0, 0.5], [1, float(epoch)]], epoch)
        )
        self.emit(
            trainer,
            trackers.Table("mem/test/per_sample", ["id", "loss"], [[7, 0.1]], epoch, per_sample=True),
        )
        self.emit(
            trainer,
            trackers.LineSeries(
                "mem/test/series", [1, 2, 4], {"a": [0.0, 1.0, 2.0], "b": [1.0, 1.0, 3.0]}, epoch
            ),
        )
        fpr = np.array([0.0, 0.001, 0.01, 0.1, 1.0])
        self.emit(trainer, trackers.RocCurve("mem/test/roc", fpr, np.sqrt(fpr), epoch))
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(2, 2))
        FigureCanvasAgg(fig)
        fig.add_subplot(1, 1, 1).plot([0, 1], [0, epoch])
        self.emit(trainer, trackers.Figure("mem/test/figure", fig, epoch))
        self.emit(trainer, trackers.Alert("Test alert", f"alert text at epoch {epoch}", epoch))


class RisingScore(MemorisationCallback):
    """Logs ``mem/test/score = start + step * epoch`` on due epochs (optionally different per rank)."""

    subdir = "rising"

    def __init__(
        self,
        *,
        start: float = 0.0,
        step: float = 1.0,
        key: str = "mem/test/score",
        rank_offset: float = 0.0,
        record_weights: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.start, self.step, self.key, self.rank_offset = start, step, key, rank_offset
        self.record_weights = record_weights
        self.weights_at: dict[int, dict[str, torch.Tensor]] = {}

    def value(self, epoch: int, rank: int = 0) -> float:
        return self.start + self.step * epoch + self.rank_offset * rank

    def on_memorisation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.is_due(trainer):
            return
        epoch = trainer.current_epoch
        if self.record_weights:
            self.weights_at[epoch] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.log_metrics(pl_module, {self.key: self.value(epoch, trainer.global_rank)})


class RankRecorder(pl.Callback):
    """Writes, per rank, the epoch training ended at and the stopper's view (for the DDP test)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import json
        import os

        from memcallbacks.callbacks.stopping import LeakageEarlyStopping

        stopper = next(cb for cb in trainer.callbacks if isinstance(cb, LeakageEarlyStopping))
        info = {
            "current_epoch": trainer.current_epoch,
            "stopped_epoch": stopper.stopped_epoch,
            "reason": stopper.reason,
        }
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(info, f)


class UserLoggedScore(pl.LightningModule):
    """Logs ``mem/user/score`` itself from ``validation_step`` (no memcallbacks monitor)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(8, 3)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        _, (x, y) = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("mem/user/score", float(self.current_epoch), on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)
