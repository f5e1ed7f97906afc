"""The quiet CPU ``Trainer`` of the callback tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint


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


def fit_with_epoch_checkpoints(
    tmp: Path,
    max_epochs: int,
    callback: pl.Callback,
    model: pl.LightningModule,
    train: Any,
    val: Any = None,
    *,
    ckpt_path: str | None = None,
) -> None:
    """Fit ``model`` with ``callback`` and a checkpoint after every epoch, ``tmp/ckpt/epoch={n}.ckpt``.

    Args:
        tmp: The run's folder (the Trainer's root; the checkpoints go under ``tmp/ckpt``).
        max_epochs: The Trainer's ``max_epochs``.
        callback: The callback under test.
        model: The model to fit.
        train: The training loader.
        val: The validation loader, if any.
        ckpt_path: A checkpoint to resume from, or None for a fresh fit.
    """
    ckpt = ModelCheckpoint(dirpath=tmp / "ckpt", every_n_epochs=1, save_top_k=-1, filename="{epoch}")
    t = trainer(tmp, max_epochs=max_epochs, callbacks=[callback, ckpt], enable_checkpointing=True)
    t.fit(model, train, val, ckpt_path=ckpt_path)
