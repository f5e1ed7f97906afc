"""Training run that freezes inside an epoch's end, after a step checkpoint of its last batch (issue 27, item 5).

Usage: ``python crash_epoch_end.py RUN_DIR CKPT_DIR MARKER``.

Every memcallbacks callback (``helpers.every_monitor``) trains under :func:`lost_epoch_trainer`:
``ModelCheckpoint(every_n_train_steps=<batches per epoch>)`` saves after the last batch of every
epoch, before the epoch-end work. At the end of epoch 1, before any monitor evaluates it, the script
writes MARKER and sleeps, so that the test can SIGKILL it: the last checkpoint then holds epoch 1's
training and none of its evaluations, and Lightning resumes from it at epoch 2.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the package helpers

import torch

torch.set_num_threads(1)

import pytorch_lightning as pl  # noqa: E402
from pytorch_lightning.callbacks import ModelCheckpoint  # noqa: E402

from helpers import every_monitor as H  # noqa: E402

FROZEN_EPOCH = 1
MAX_EPOCHS = 4


class FreezeAtEpochEnd(pl.Callback):
    """First in ``callbacks``: runs before every monitor's ``on_train_epoch_end``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == FROZEN_EPOCH:
            Path(self.marker + ".part").write_text(
                f"epoch {trainer.current_epoch} step {trainer.global_step}"
            )
            os.replace(self.marker + ".part", self.marker)
            time.sleep(600)


class StepAccountantModel(H.HardModel):
    """Steps its accountant with each optimizer step, as Opacus does (before any checkpoint of that step)."""

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        return None

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.privacy_engine.step(noise_multiplier=1.0, sample_rate=0.05)


def lost_epoch_trainer(
    root: str | os.PathLike[str], callbacks: list[Any], ckpt_dir: str | os.PathLike[str], steps_per_epoch: int
) -> pl.Trainer:
    """4 epochs, a checkpoint every ``steps_per_epoch`` optimizer steps (after each epoch's last batch)."""
    checkpoint = ModelCheckpoint(
        dirpath=str(ckpt_dir), filename="{epoch}-{step}", save_top_k=-1, every_n_train_steps=steps_per_epoch
    )
    return pl.Trainer(
        default_root_dir=str(root),
        accelerator="cpu",
        devices=1,
        max_epochs=MAX_EPOCHS,
        logger=False,
        callbacks=[*callbacks, checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        deterministic=True,
    )


def main() -> None:
    run_dir, ckpt_dir, marker = sys.argv[1:4]
    data = H.Data()
    pl.seed_everything(0)
    loader = data.train_loader()
    callbacks = [FreezeAtEpochEnd(marker), *H.build_callbacks(run_dir, data)]
    trainer = lost_epoch_trainer(run_dir, callbacks, ckpt_dir, len(loader))
    trainer.fit(StepAccountantModel(), loader)
    Path(marker + ".finished").write_text("the run was not frozen")


if __name__ == "__main__":
    main()
