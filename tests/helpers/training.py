"""The quiet CPU ``Trainer`` of the callback tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl


def trainer(tmp_path: Path, **kwargs: Any) -> pl.Trainer:
    """A quiet CPU Trainer writing under ``tmp_path`` (2 epochs, CSV logger, no checkpoints); ``kwargs`` override."""
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
