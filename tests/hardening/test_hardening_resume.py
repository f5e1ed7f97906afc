"""Resume equals uninterrupted, for every callback together in one Trainer (issue 8, item 1).

Per-callback resume tests live beside each callback; this one runs all seven at once (so
their hooks interleave as in a real run), interrupts after epoch 0, resumes in a new Trainer
with ``ckpt_path=`` and requires every recorded number and every run-directory file to be
bitwise equal to an uninterrupted run. It covers both places ModelCheckpoint saves: at the
end of the training epoch, and at the closing validation's end (``save_on_train_epoch_end=False``),
which is why :class:`~memcallbacks.callbacks._base.MemorisationCallback` runs monitors at the
validation epoch end.

It stays in tests/hardening: it checks every callback together in one Trainer; each callback's own
resume test is in tests/<area>/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from helpers import every_monitor as H

EPOCHS = 3


def _trainer(root: Path, callbacks: list[Any], ckpt_dir: Path, at_train_end: bool) -> pl.Trainer:
    checkpoint = ModelCheckpoint(
        dirpath=str(ckpt_dir),
        filename="{epoch}",
        save_top_k=-1,
        every_n_epochs=1,
        save_on_train_epoch_end=at_train_end,
    )
    return pl.Trainer(
        default_root_dir=str(root),
        accelerator="cpu",
        devices=1,
        max_epochs=EPOCHS,
        logger=False,
        callbacks=[*callbacks, checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=1,
        val_check_interval=1.0,
        deterministic=True,
    )


def _fit(trainer: pl.Trainer, data: H.Data, ckpt_path: str | None = None) -> H.HardModel:
    model = H.HardModel()
    trainer.fit(model, data.train_loader(), data.val_loader(), ckpt_path=ckpt_path)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("save_at", ["train_epoch_end", "validation_end"])
def test_resume_equals_uninterrupted_for_all_callbacks(tmp_path: Path, save_at: str) -> None:
    at_train_end = save_at == "train_epoch_end"
    data = H.Data()

    pl.seed_everything(0)
    straight = H.build_callbacks(tmp_path / "straight", data)
    model_a = _fit(_trainer(tmp_path / "a", straight, tmp_path / "ck_a", at_train_end), data)

    pl.seed_everything(0)
    first = H.build_callbacks(tmp_path / "resumed", data)
    with pytest.raises(InterruptedError):
        _fit(_trainer(tmp_path / "b", [*first, H.StopAfter(1)], tmp_path / "ck_b", at_train_end), data)
    ckpt = tmp_path / "ck_b" / "epoch=0.ckpt"
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["epoch=0.ckpt"]

    # the checkpoint is plain data: no pickled classes
    state = torch.load(ckpt, weights_only=True)
    keys = [k.split("{")[0] for k in state["callbacks"]]
    for name in ("LossTrajectoryTracker", "MembershipInferenceMonitor", "CanaryExposureMonitor",
                 "PrivacyAuditMonitor", "DPEpsilonMonitor", "LeakageEarlyStopping"):  # fmt: skip
        assert name in keys
    # the epoch-0 numbers are already in the checkpoint, wherever it was saved
    traj_state = next(v for k, v in state["callbacks"].items() if k.startswith("LossTrajectoryTracker"))
    assert traj_state["recorded_epochs"] == [0]

    pl.seed_everything(0)
    resumed = H.build_callbacks(tmp_path / "resumed", data)
    model_c = _fit(_trainer(tmp_path / "c", resumed, tmp_path / "ck_c", at_train_end), data, str(ckpt))

    # same weights: the resumed run trained the same steps on the same batches
    for (name, p), q in zip(model_a.named_parameters(), model_c.parameters()):
        assert torch.equal(p, q), name

    a, c = H.snapshot(straight), H.snapshot(resumed)
    assert H.differences(a, c) == []
    # the numbers are not trivially constant: trajectories move, exposure is measured each epoch
    assert a["traj/matrix"].shape == (len(data.train_set), EPOCHS)
    assert not np.array_equal(a["traj/matrix"][:, 0], a["traj/matrix"][:, -1])
    assert a["canary/exposure"].shape == (EPOCHS, 4)
    assert list(a["traj/epochs"]) == [0, 1, 2]
    # the stop counter survived the resume: patience 3 on a key crossed every epoch stops at epoch 2
    stop_a = next(cb for cb in straight if type(cb).__name__ == "LeakageEarlyStopping")
    stop_c = next(cb for cb in resumed if type(cb).__name__ == "LeakageEarlyStopping")
    assert stop_a.stopped_epoch == stop_c.stopped_epoch == 2

    # run directories: the same files, bitwise the same content, each epoch exactly once
    tree_a = H.without_run_ids(H.load_tree(tmp_path / "straight"))
    tree_c = H.without_run_ids(H.load_tree(tmp_path / "resumed"))
    assert sorted(tree_a) == sorted(tree_c)
    assert H.differences(tree_a, tree_c) == []
    epochs = sorted(k for k in tree_c if k.startswith("trajectory/epoch_"))
    assert epochs == [f"trajectory/epoch_{j:04d}.npy" for j in range(EPOCHS)]
    assert sorted(k for k in tree_c if k.startswith("audit/epoch_")) == [
        f"audit/epoch_{j:04d}.npz" for j in range(EPOCHS)
    ]
    assert tree_c["trajectory/meta.json"]["epochs"] == [0, 1, 2]
    assert list(tree_c["membership/losses.npz"]["epochs"]) == [0, 1, 2]
    assert list(tree_c["canary/exposure.npz"]["epochs"]) == [0, 1, 2]
    assert [h["epoch"] for h in tree_c["audit/audit.json"]["history"]] == [0, 1, 2]
    assert [h["epoch"] for h in tree_c["dp/dp.json"]["history"]] == [0, 1, 2]
    assert tree_c["stopping.json"]["stopped_epoch"] == 2
