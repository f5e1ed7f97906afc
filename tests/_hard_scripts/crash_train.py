"""Training run that freezes at a chosen point so that a test can SIGKILL it (issue 8, crash safety).

Usage: ``python crash_train.py RUN_DIR CKPT_DIR MARKER MODE`` with MODE

* ``batch``: freeze in the middle of epoch 2 (after its second training batch);
* ``write``: freeze inside the atomic write of ``audit/epoch_0002.npz``, after the temporary file
  is written and flushed and before its rename: the trajectory, membership and exposure files of
  epoch 2 are already written, the epoch-2 checkpoint is not.

On reaching the point the script writes MARKER (the path of what it froze in) and sleeps.
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

from helpers import every_monitor as H  # noqa: E402


def freeze(marker: str, what: str) -> None:
    Path(marker + ".part").write_text(what)
    os.replace(marker + ".part", marker)
    time.sleep(600)


class FreezeInBatch(pl.Callback):
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.current_epoch == 2 and batch_idx == 1:
            freeze(self.marker, f"epoch 2 batch {batch_idx}")


def install_write_freeze(marker: str, target: str) -> None:
    """Freeze in os.fsync when the file being synced is the temporary file of ``target``."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return
        if (
            Path(name).name.startswith(f".{Path(target).name}.")
            and Path(name).parent.name == Path(target).parent.name
        ):
            freeze(marker, name)

    os.fsync = fsync  # type: ignore[assignment]


def main() -> None:
    run_dir, ckpt_dir, marker, mode = sys.argv[1:5]
    data = H.Data()
    pl.seed_everything(0)
    callbacks = H.build_callbacks(run_dir, data)
    if mode == "batch":
        callbacks.append(FreezeInBatch(marker))
    elif mode == "write":
        install_write_freeze(marker, "audit/epoch_0002.npz")
    else:
        raise SystemExit(f"unknown MODE {mode!r}")
    trainer = H.crash_trainer(run_dir, callbacks, ckpt_dir)
    trainer.fit(H.HardModel(), data.train_loader(), data.val_loader())
    Path(marker + ".finished").write_text("the run was not frozen")


if __name__ == "__main__":
    main()
