"""The step and validation schedules of the base cycle (``every_n_steps``, ``evaluate_on_validation``).

One scheduling rule for every monitor: evaluations at each new multiple of ``every_n_steps``
global (optimizer) steps, or at every validation run inside ``fit``; history rows, CSV rows and
the run directory carry the global step; a checkpoint saved mid-epoch resumes to the numbers of
the uninterrupted run.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader, Dataset

from helpers import every_monitor as H
from helpers.step_score import StepScore
from memcallbacks import (
    CanaryExposureMonitor,
    MembershipInferenceMonitor,
    PrivacyAuditMonitor,
    SequenceMemorisationMonitor,
)
from memcallbacks.callbacks._base import check_schedule
from memcallbacks.data.indexed import IndexedDataset
from memcallbacks.rundir import RunDirectory
from memcallbacks.utilities.fileio import load_json, load_npz


class WeightsAtEachStep(pl.Callback):
    """Keeps a copy of the weights after every optimizer step (the independent reference)."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.weights[trainer.global_step] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def _trainer(root: Path, callbacks: list[Any], **kwargs: Any) -> pl.Trainer:
    opts: dict[str, Any] = dict(
        default_root_dir=str(root),
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=pl.loggers.CSVLogger(str(root), name="csv"),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    opts.update(kwargs)
    return pl.Trainer(**opts)


def _csv_rows(root: Path, key: str) -> list[dict[str, str]]:
    (path,) = list(root.glob("csv/version_*/metrics.csv"))
    with open(path) as f:
        return [row for row in csv.DictReader(f) if row.get(key)]


def _losses(model: torch.nn.Module, ds: Any, idx: np.ndarray) -> np.ndarray:
    x = torch.stack([ds[int(i)][0] for i in idx])
    y = torch.stack([ds[int(i)][1] for i in idx])
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none").numpy()


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"every_n_steps": 10, "every_n_epochs": 2},
            ValueError,
            "one schedule.*every_n_epochs=2 and every_n_steps=10",
        ),
        ({"every_n_steps": 0}, ValueError, "`every_n_steps` must be an integer >= 1, got 0"),
        ({"every_n_steps": -5}, ValueError, "`every_n_steps`.*-5"),
        ({"every_n_steps": True}, TypeError, "`every_n_steps`"),
        ({"every_n_steps": "100"}, TypeError, "`every_n_steps`"),
        ({"every_n_steps": 2.0}, TypeError, "`every_n_steps`"),
        ({"evaluate_on_validation": "yes"}, TypeError, "`evaluate_on_validation`"),
        ({"every_n_steps": 5, "evaluate_on_validation": True}, ValueError, "keep one of them"),
        ({"every_n_epochs": 3, "evaluate_on_validation": True}, ValueError, "keep one of them"),
    ],
)
def test_bad_schedules_fail_in_the_constructor_naming_the_fix(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        MembershipInferenceMonitor(**kwargs)
    with pytest.raises(error, match=match):
        StepScore(**kwargs)


def test_every_monitor_on_the_base_cycle_takes_the_schedule() -> None:
    data = H.Data()
    monitors = [
        MembershipInferenceMonitor(every_n_steps=7),
        SequenceMemorisationMonitor(every_n_steps=7),
        CanaryExposureMonitor(H.make_canaries(), every_n_steps=7),
        PrivacyAuditMonitor(data.audit_canaries, k_pos=2, k_neg=2, every_n_steps=7),
    ]
    for monitor in monitors:
        assert (monitor.every_n_steps, monitor.schedule) == (7, "steps"), type(monitor).__name__
    on_validation = MembershipInferenceMonitor(evaluate_on_validation=True)
    assert on_validation.schedule == "validation"
    assert MembershipInferenceMonitor().schedule == "epochs"
    assert check_schedule(1, None, False) == (1, None, False)


@pytest.mark.parametrize("limit", [{"max_steps": 4}, {"max_epochs": 1}])
def test_every_n_steps_larger_than_the_run_warns_once(tmp_path: Path, limit: dict[str, int]) -> None:
    data = H.Data()
    monitor = StepScore(every_n_steps=50)
    trainer = _trainer(tmp_path, [monitor], logger=False, **limit)
    with pytest.warns(
        UserWarning, match=r"every_n_steps=50\) will not evaluate: this run has \d+ optimizer steps"
    ):
        trainer.fit(H.HardModel(accountant=False), data.train_loader())
    assert monitor.warned("every_n_steps_too_large") == 1
    assert monitor.history == []


# -- one epoch, several monitors, each evaluation equal to an independent one ----------------------
def test_one_epoch_logs_floor_steps_over_n_evaluations_equal_to_independent_ones(tmp_path: Path) -> None:
    data = H.Data()
    weights = WeightsAtEachStep()
    mia = MembershipInferenceMonitor(nonmembers=data.val, num_probes=16, every_n_steps=2, run_dir=tmp_path)
    exposure = CanaryExposureMonitor(H.make_canaries(), method="exact", every_n_steps=4, run_dir=tmp_path)
    audit = PrivacyAuditMonitor(
        data.audit_canaries, k_pos=2, k_neg=2, seed=0, every_n_steps=3, run_dir=tmp_path
    )
    model = H.HardModel(accountant=False)
    trainer = _trainer(tmp_path, [mia, exposure, audit, weights], limit_train_batches=9)
    trainer.fit(model, data.train_loader(batch_size=4), data.val_loader())
    assert trainer.global_step == 9
    for monitor, n in ((mia, 2), (exposure, 4), (audit, 3)):
        steps = [row["step"] for row in monitor.history]
        assert steps == [n * (i + 1) for i in range(9 // n)], type(monitor).__name__
        assert all(row["epoch"] == 0 for row in monitor.history)

    # membership: each evaluation's losses are those of the weights at that step (plain torch)
    saved = load_npz(mia.run_dir / "losses.npz")
    member_idx, nonmember_idx = saved["member_indices"], saved["nonmember_indices"]
    reference = H.HardModel(accountant=False)
    for i, row in enumerate(mia.history):
        reference.load_state_dict(weights.weights[row["step"]])
        reference.eval()
        members = _losses(reference, data.train_set, member_idx)
        nonmembers = _losses(reference, data.val, nonmember_idx)
        np.testing.assert_allclose(saved["member_losses"][i], members, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(saved["nonmember_losses"][i], nonmembers, rtol=1e-5, atol=1e-6)
        labels = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
        auc = roc_auc_score(labels, -np.r_[members, nonmembers].astype(np.float64))
        assert row["mem/mia/auc"] == pytest.approx(auc, abs=1e-6)
        assert row["mem/gap/loss"] == pytest.approx(nonmembers.mean() - members.mean(), rel=1e-4, abs=1e-6)

    # the CSV logger got every evaluation at step= its global step, with its epoch
    for monitor, key in (
        (mia, "mem/mia/auc"),
        (exposure, "mem/canary/exposure_max"),
        (audit, "mem/audit/epsilon_lb"),
    ):
        rows = _csv_rows(tmp_path, key)
        assert [int(r["step"]) for r in rows] == [h["step"] for h in monitor.history], key
        assert [float(r[key]) for r in rows] == pytest.approx([h[key] for h in monitor.history], abs=1e-6)
        assert {r["epoch"] for r in rows} == {"0"}
    # the run directory carries the steps too
    assert [h["step"] for h in load_json(mia.run_dir / "metrics.json")["history"]] == [2, 4, 6, 8]
    assert [h["step"] for h in load_json(audit.run_dir / "audit.json")["history"]] == [3, 6, 9]


def test_gradient_accumulation_evaluates_once_per_global_step(tmp_path: Path) -> None:
    data = H.Data()
    monitor = StepScore(every_n_steps=1)
    trainer = _trainer(tmp_path, [monitor], accumulate_grad_batches=2, limit_train_batches=8, logger=False)
    trainer.fit(H.HardModel(accountant=False), data.train_loader(batch_size=4))
    assert trainer.global_step == 4
    assert [row["step"] for row in monitor.history] == [1, 2, 3, 4]
    assert [row["mem/test/step"] for row in monitor.history] == [1.0, 2.0, 3.0, 4.0]


def test_epoch_ends_do_not_evaluate_under_a_step_schedule(tmp_path: Path) -> None:
    data = H.Data()
    monitor = StepScore(every_n_steps=4)
    trainer = _trainer(tmp_path, [monitor], max_epochs=2, limit_train_batches=6, logger=False)
    trainer.fit(H.HardModel(accountant=False), data.train_loader(batch_size=4))
    assert [(row["epoch"], row["step"]) for row in monitor.history] == [(0, 4), (1, 8), (1, 12)]
    assert monitor.last_epoch_done == 1  # the epoch-end work still ran (nothing due there)


def test_evaluate_on_validation_follows_val_check_interval(tmp_path: Path) -> None:
    data = H.Data()
    monitor = StepScore(evaluate_on_validation=True)
    trainer = _trainer(tmp_path, [monitor], max_epochs=2, limit_train_batches=6, val_check_interval=3)
    trainer.fit(H.HardModel(accountant=False), data.train_loader(batch_size=4), data.val_loader())
    steps = [3, 6, 9, 12]
    assert [(row["epoch"], row["step"]) for row in monitor.history] == [(0, 3), (0, 6), (1, 9), (1, 12)]
    rows = _csv_rows(tmp_path, "mem/test/step")
    assert [int(r["step"]) for r in rows] == steps
    assert [float(r["mem/test/step"]) for r in rows] == [float(s) for s in steps]
    assert float(trainer.callback_metrics["mem/test/step"]) == 12.0


# -- resume from a checkpoint saved mid-epoch ---------------------------------------------------------
class _Repeated(Dataset[Any]):
    """Every batch of ``batch_size`` consecutive items is the same ``batch_size`` samples.

    Lightning restarts a plain DataLoader from its first batch when resuming mid-epoch; with every
    batch alike, the resumed run trains on the same data as the uninterrupted one.
    """

    def __init__(self, base: Any, batch_size: int, batches: int) -> None:
        self.base, self.batch_size, self.n = base, batch_size, batch_size * batches

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        return self.base[i % self.batch_size]


def _resume_run(root: Path, data: H.Data, *, max_steps: int = -1, ckpt: str | None = None) -> list[Any]:
    monitors = [
        MembershipInferenceMonitor(nonmembers=data.val, num_probes=4, every_n_steps=2, run_dir=root / "run"),
        CanaryExposureMonitor(H.make_canaries(), method="exact", every_n_steps=3, run_dir=root / "run"),
    ]
    checkpoint = ModelCheckpoint(
        dirpath=str(root / "ckpt"), every_n_train_steps=4, save_top_k=-1, filename="{step}"
    )
    train = DataLoader(IndexedDataset(_Repeated(data.train, 4, 5)), batch_size=4, shuffle=False)
    trainer = _trainer(
        root,
        [*monitors, checkpoint],
        max_epochs=2,
        max_steps=max_steps,
        enable_checkpointing=True,
        logger=False,
    )
    torch.manual_seed(0)  # the same initial weights in every run
    trainer.fit(H.HardModel(accountant=False), train, data.val_loader(), ckpt_path=ckpt)
    return monitors


def test_resume_from_a_mid_epoch_checkpoint_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    data = H.Data()
    straight = _resume_run(tmp_path / "a", data)
    _resume_run(tmp_path / "b", data, max_steps=4)  # stops at step 4, in the middle of epoch 0
    (ckpt,) = (tmp_path / "b" / "ckpt").glob("step=4*.ckpt")
    resumed = _resume_run(tmp_path / "b", data, ckpt=str(ckpt))
    for a, b in zip(straight, resumed, strict=True):
        assert [row["step"] for row in a.history] == [row["step"] for row in b.history], type(a).__name__
        assert a.history == b.history, type(a).__name__  # number by number
    assert [row["step"] for row in straight[0].history] == [2, 4, 6, 8, 10]
    same = load_json(tmp_path / "a" / "run" / "membership" / "metrics.json")["history"]
    assert load_json(tmp_path / "b" / "run" / "membership" / "metrics.json")["history"] == same
    losses_a = load_npz(tmp_path / "a" / "run" / "membership" / "losses.npz")
    losses_b = load_npz(tmp_path / "b" / "run" / "membership" / "losses.npz")
    np.testing.assert_array_equal(losses_a["member_losses"], losses_b["member_losses"])
    exposure_a = load_npz(tmp_path / "a" / "run" / "canary" / "exposure.npz")
    exposure_b = load_npz(tmp_path / "b" / "run" / "canary" / "exposure.npz")
    np.testing.assert_array_equal(exposure_a["exposure"], exposure_b["exposure"])


def test_sequence_monitor_on_a_step_schedule(tmp_path: Path) -> None:
    from memcallbacks import CharTokenizer
    from memcallbacks.demos.toy import CharLSTMLM, TokenDataset, lm_loader, make_payment_corpus

    tok = CharTokenizer()
    texts = make_payment_corpus(24, seed=0)
    monitor = SequenceMemorisationMonitor(
        TokenDataset(texts[:8], tok),
        TokenDataset(texts[8:16], tok),
        prefix_len=8,
        suffix_len=8,
        batch_size=16,
        tokenizer=tok,
        every_n_steps=3,
        run_dir=tmp_path,
    )
    model = CharLSTMLM(tok.vocab_size, embedding_dim=8, hidden_size=16, lr=2e-2)
    trainer = _trainer(tmp_path, [monitor])
    trainer.fit(model, lm_loader(texts[:8] * 4, tok, batch_size=4, shuffle=False))
    assert trainer.global_step == 8
    assert [(row["epoch"], row["step"]) for row in monitor.history] == [(0, 3), (0, 6)]
    rows = _csv_rows(tmp_path, "mem/extract/exact_rate")
    assert [int(r["step"]) for r in rows] == [3, 6]
    assert [h["step"] for h in load_json(monitor.run_dir / "metrics.json")["history"]] == [3, 6]
    sequence = RunDirectory(tmp_path).sequence()  # sequences.npz carries the steps too
    assert sequence is not None
    assert sequence.steps is not None
    assert sequence.steps.tolist() == [3, 6]


def test_evaluate_on_validation_without_validation_warns_once(tmp_path: Path) -> None:
    data = H.Data()
    monitor = StepScore(evaluate_on_validation=True)
    with pytest.warns(
        UserWarning, match=r"evaluate_on_validation=True\) did not evaluate: no validation ran"
    ):
        _trainer(tmp_path, [monitor], logger=False).fit(H.HardModel(accountant=False), data.train_loader())
    assert monitor.history == []
    assert monitor.warned("no_validation_run") == 1


class _OnlyGlobalStep:
    """A Trainer stand-in that has nothing but ``global_step``: any other read fails the test."""

    def __init__(self, step: int) -> None:
        self.global_step = step

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"read trainer.{name}")


def test_a_step_with_nothing_due_reads_only_the_global_step() -> None:
    monitor = StepScore(every_n_steps=4)
    for step in (0, 1, 2, 3, 5, 7):
        monitor.on_train_batch_end(_OnlyGlobalStep(step), None, None, None, 0)  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match="read trainer"):  # step 4 is due: the evaluation starts
        monitor.on_train_batch_end(_OnlyGlobalStep(4), None, None, None, 0)  # type: ignore[arg-type]
    by_epochs = StepScore()
    by_epochs.on_train_batch_end(_OnlyGlobalStep(4), None, None, None, 0)  # type: ignore[arg-type]
