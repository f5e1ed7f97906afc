"""Test-only callbacks: scripted monitors, an interruption, and the one per-rank dump of DDP tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from helpers.state import snapshot
from memcallbacks import loggers
from memcallbacks.callbacks._base import MemorisationCallback


class RankDump(pl.Callback):
    """At the end of fit, every rank writes what it logged and what its monitors hold to ``rank<k>.npz``.

    The file holds ``metrics`` (every ``mem/*`` value of ``trainer.callback_metrics``), ``rank``,
    ``current_epoch`` and :func:`helpers.state.snapshot` of the trainer's callbacks (the full
    trajectory matrices on rank 0 only, where they are kept). With ``weights=True`` rank 0 also
    saves the module's ``state_dict`` to ``weights.pt``. :meth:`read` loads every rank's file back.
    Used by every DDP test to compare ranks with each other and with a one-process run.
    """

    def __init__(self, folder: str | Path, *, weights: bool = False) -> None:
        self.folder = Path(folder)
        self.weights = weights

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        snap = snapshot(list(trainer.callbacks), full_store=trainer.is_global_zero)  # type: ignore[attr-defined]
        plain: dict[str, Any] = {
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("mem/")},
            "rank": trainer.global_rank,
            "current_epoch": trainer.current_epoch,
        }
        arrays: dict[str, np.ndarray] = {}
        for key, value in snap.items():
            if isinstance(value, np.ndarray) and value.dtype != object:
                arrays[key] = value
            else:
                plain[key] = value.tolist() if isinstance(value, np.ndarray) else value
        arrays["__plain__"] = np.asarray(json.dumps(plain, sort_keys=True))
        self.folder.mkdir(parents=True, exist_ok=True)
        np.savez(self.folder / f"rank{trainer.global_rank}.npz", **arrays)
        if self.weights and trainer.is_global_zero:
            torch.save(pl_module.state_dict(), self.folder / "weights.pt")

    def read(self) -> list[dict[str, Any]]:
        """One dict per rank, rank 0 first: arrays as arrays, everything else as plain JSON values."""
        ranks = []
        for path in sorted(self.folder.glob("rank*.npz"), key=lambda p: int(p.stem[4:])):
            with np.load(path, allow_pickle=False) as f:
                data: dict[str, Any] = {k: f[k] for k in f.files if k != "__plain__"}
                data.update(json.loads(str(f["__plain__"])))
            ranks.append(data)
        return ranks

    def saved_weights(self) -> dict[str, torch.Tensor]:
        """Rank 0's final ``state_dict`` (``weights=True``)."""
        return torch.load(self.folder / "weights.pt", weights_only=True)


class StopAfter(pl.Callback):
    """Raises at the start of epoch ``epoch``: an interruption after the previous epoch's checkpoint."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise InterruptedError(f"simulated interruption before epoch {self.epoch}")


class RecordEmitter(MemorisationCallback):
    """Logs ``mem/test/*`` scalars and emits one record of every kind each evaluated epoch."""

    subdir = "test_emitter"

    def on_memorisation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.is_due(trainer):
            return
        epoch = trainer.current_epoch
        self.log_metrics(pl_module, {"mem/test/score": 0.5 + epoch, "mem/test/other": 2.0 * epoch})
        rng = np.random.default_rng(epoch)
        self.emit(trainer, loggers.Histogram("mem/test/hist", rng.normal(size=200), epoch, num_bins=2000))
        self.emit(
            trainer, loggers.Table("mem/test/table", ["id", "loss"], [[0, 0.5], [1, float(epoch)]], epoch)
        )
        self.emit(
            trainer,
            loggers.Table("mem/test/per_sample", ["id", "loss"], [[7, 0.1]], epoch, per_sample=True),
        )
        self.emit(
            trainer,
            loggers.LineSeries(
                "mem/test/series", [1, 2, 4], {"a": [0.0, 1.0, 2.0], "b": [1.0, 1.0, 3.0]}, epoch
            ),
        )
        fpr = np.array([0.0, 0.001, 0.01, 0.1, 1.0])
        self.emit(trainer, loggers.RocCurve("mem/test/roc", fpr, np.sqrt(fpr), epoch))
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(2, 2))
        FigureCanvasAgg(fig)
        fig.add_subplot(1, 1, 1).plot([0, 1], [0, epoch])
        self.emit(trainer, loggers.Figure("mem/test/figure", fig, epoch))
        self.emit(trainer, loggers.Alert("Test alert", f"alert text at epoch {epoch}", epoch))


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

    def _state_key_args(self) -> dict[str, Any]:
        return {"key": self.key}  # two RisingScore on different keys may share a Trainer

    def value(self, epoch: int, rank: int = 0) -> float:
        return self.start + self.step * epoch + self.rank_offset * rank

    def on_memorisation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.is_due(trainer):
            return
        epoch = trainer.current_epoch
        if self.record_weights:
            self.weights_at[epoch] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.log_metrics(pl_module, {self.key: self.value(epoch, trainer.global_rank)})
