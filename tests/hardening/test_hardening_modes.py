"""Trainer modes (issue 16.2): fast_dev_run skips every callback; validate/test/predict run none.

It stays in tests/hardening: the rule (MemorisationCallback's scheduling) is checked on every
callback at once.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from helpers import every_monitor as H
from memcallbacks.callbacks import _base


class _Model(H.HardModel):
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)


def _trainer(root: Path, callbacks: list[Any], **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=str(root),
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def test_fast_dev_run_skips_every_callback_and_writes_nothing(tmp_path: Path) -> None:
    _base._FAST_DEV_RUN_WARNED.clear()
    data = H.Data()
    callbacks = H.build_callbacks(tmp_path / "run", data)
    names = {type(cb).__name__ for cb in callbacks}
    t = _trainer(tmp_path, callbacks, fast_dev_run=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit(_Model(), data.train_loader(), data.val_loader())
    assert t.global_step == 1  # Lightning ran its one batch
    assert not (tmp_path / "run").exists()  # no run directory at all
    assert not [k for k in t.callback_metrics if k.startswith("mem/")]
    skipped = {str(w.message).split(" is skipped")[0] for w in caught if "is skipped under" in str(w.message)}
    assert skipped == names  # one warning per class, each named
    # a second fast_dev_run does not warn again
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        _trainer(tmp_path, H.build_callbacks(tmp_path / "run", data), fast_dev_run=True).fit(
            _Model(), data.train_loader(), data.val_loader()
        )
    assert not [w for w in again if "is skipped under" in str(w.message)]


def test_validate_test_and_predict_run_no_monitor(tmp_path: Path) -> None:
    data = H.Data()
    callbacks = H.build_callbacks(tmp_path / "run", data)
    t = _trainer(tmp_path, callbacks)
    model = _Model()
    t.validate(model, data.val_loader())
    t.test(model, data.val_loader())
    predictions = t.predict(model, DataLoader(data.val.tensors[0], batch_size=8))
    assert predictions is not None
    assert torch.cat(predictions).shape == (len(data.val), H.CLASSES)
    assert not [k for k in t.callback_metrics if k.startswith("mem/")]
    assert not list((tmp_path / "run").rglob("*.np*"))
    assert not list((tmp_path / "run").rglob("*.json"))
    assert all(getattr(cb, "last_epoch_done", -1) == -1 for cb in callbacks)
