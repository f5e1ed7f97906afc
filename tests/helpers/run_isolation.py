"""Picklable pieces of the run-isolation DDP test (``ddp_spawn`` pickles them to the workers)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers.logger import Logger


class PerProcessVersionLogger(Logger):
    """A logger like W&B's: a string run id that only rank 0 knows (here, each process makes up its own)."""

    def __init__(self, save_dir: str) -> None:
        super().__init__()
        self._save_dir = save_dir

    @property
    def name(self) -> str:
        return "project"

    @property
    def version(self) -> str:
        return f"run-{os.getpid()}"

    @property
    def save_dir(self) -> str:
        return self._save_dir

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


class RunDirRecorder(pl.Callback):
    """Writes, on every rank at fit end, the run directory and run id a monitor chose there."""

    def __init__(self, folder: Path, monitor: Any) -> None:
        self.folder, self.monitor = Path(folder), monitor

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        text = f"{self.monitor.run_dir.parent}\n{self.monitor._run_id}\n"
        (self.folder / f"rank{trainer.global_rank}.txt").write_text(text)
