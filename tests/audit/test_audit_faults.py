"""PrivacyAuditMonitor under faults: an early-dying resume, a diverged model, wrong canaries (issue 13)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import TensorDataset

from helpers.callbacks import StopAfter
from helpers.data import loaders, make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks import LeakageEarlyStopping, PrivacyAuditMonitor
from memcallbacks.utilities.fileio import load_json, load_npz


def _canaries(m: int = 20, dim: int = 8, seed: int = 1) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(m, dim, generator=g), torch.randint(0, 3, (m,), generator=g))


def test_a_resume_that_dies_before_its_first_evaluation_keeps_audit_json(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    audit = PrivacyAuditMonitor(_canaries(), seed=5, k_pos=3, k_neg=3, run_dir=run_dir)
    tl, _ = loaders(audit.inject(make_blobs(32)))
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path / "a", max_epochs=2, callbacks=[audit, ckpt], enable_checkpointing=True).fit(
        TinyClassifier(), tl
    )
    before = (run_dir / "audit" / "audit.json").read_bytes()
    assert [h["epoch"] for h in load_json(run_dir / "audit" / "audit.json")["history"]] == [0, 1]

    again = PrivacyAuditMonitor(_canaries(), seed=5, k_pos=3, k_neg=3, run_dir=run_dir)
    t = trainer(tmp_path / "b", max_epochs=4, callbacks=[again, StopAfter(2)])
    with pytest.raises(InterruptedError):
        t.fit(TinyClassifier(), tl, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert (run_dir / "audit" / "audit.json").read_bytes() == before  # not rewritten with less


def test_a_changed_seed_on_resume_names_both_values(tmp_path: Path) -> None:
    audit = PrivacyAuditMonitor(_canaries(), seed=5, k_pos=3, k_neg=3, run_dir=tmp_path / "run")
    tl, _ = loaders(audit.inject(make_blobs(32)))
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path / "a", max_epochs=1, callbacks=[audit, ckpt], enable_checkpointing=True).fit(
        TinyClassifier(), tl
    )
    moved = PrivacyAuditMonitor(_canaries(), seed=7, k_pos=3, k_neg=3, run_dir=tmp_path / "elsewhere")
    assert moved.state_key == audit.state_key  # the key does not hide the change: the state is checked
    t = trainer(tmp_path / "b", max_epochs=2, callbacks=[moved])
    with pytest.raises(ValueError, match="recorded with `seed`=5, this callback has `seed`=7"):
        t.fit(TinyClassifier(), tl, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    # every_n_epochs and run_dir carry the state over
    carried = PrivacyAuditMonitor(
        _canaries(), seed=5, k_pos=3, k_neg=3, every_n_epochs=2, run_dir=tmp_path / "new"
    )
    trainer(tmp_path / "c", max_epochs=2, callbacks=[carried]).fit(
        TinyClassifier(), tl, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    assert [h["epoch"] for h in carried.history] == [0, 1]


class _Diverging(TinyClassifier):
    """Its weights become NaN after the first epoch (a diverged run)."""

    def on_train_epoch_end(self) -> None:
        if self.current_epoch == 0:
            with torch.no_grad():
                for p in self.parameters():
                    p.fill_(math.nan)


def test_nan_weights_give_nan_audit_values_and_training_goes_on(tmp_path: Path) -> None:
    audit = PrivacyAuditMonitor(_canaries(), seed=5, k_pos=3, k_neg=3)
    tl, _ = loaders(audit.inject(make_blobs(32)))
    t = trainer(tmp_path, max_epochs=3, callbacks=[audit])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit(_Diverging(), tl)
    assert t.current_epoch == 3  # trained to the end
    nonfinite = [w for w in caught if "audit scores are NaN or infinite" in str(w.message)]
    assert len(nonfinite) == 1  # warned once for two diverged evaluations
    first, *diverged = audit.history
    assert first["mem/audit/nonfinite"] == 0
    assert math.isfinite(first["mem/audit/epsilon_lb"])
    for row in diverged:  # never a safe-looking 0
        assert row["mem/audit/nonfinite"] == 20
        assert math.isnan(row["mem/audit/epsilon_lb"])
        assert math.isnan(row["mem/audit/correct"])
    assert math.isnan(float(t.callback_metrics["mem/audit/epsilon_lb"]))
    assert float(t.callback_metrics["mem/audit/nonfinite"]) == 20.0
    saved = load_json(audit.run_dir / "audit.json")["history"]
    assert saved[-1]["epsilon_lb"] is None  # NaN in JSON is null
    assert np.isnan(load_npz(audit.run_dir / "epoch_0002.npz")["scores"]).all()


def test_nan_audit_value_stops_only_when_the_stop_condition_asks(tmp_path: Path) -> None:
    audit = PrivacyAuditMonitor(_canaries(), seed=5, k_pos=3, k_neg=3)
    stopper = LeakageEarlyStopping.audit_epsilon(50.0)  # check_finite=True: a NaN bound stops
    tl, _ = loaders(audit.inject(make_blobs(32)))
    t = trainer(tmp_path, max_epochs=3, callbacks=[audit, stopper])
    t.fit(_Diverging(), tl)
    assert stopper.stopped_epoch == 1
    assert "is not finite" in (stopper.reason or "")


def test_canaries_of_the_wrong_shape_get_a_clear_error(tmp_path: Path) -> None:
    audit = PrivacyAuditMonitor(_canaries(dim=5), seed=5, k_pos=3, k_neg=3)
    tl, _ = loaders(make_blobs(32))
    t = trainer(tmp_path, max_epochs=1, callbacks=[audit])
    with pytest.raises(
        ValueError, match=r"could not score its 20 audit canaries.*same feature shape.*Tensor\(5,\)"
    ):
        t.fit(TinyClassifier(), tl)
