"""One model and one data set that carry every monitor at once (the cross-callback tests).

One tiny LightningModule serves every monitor: a classifier on Gaussian blobs (trajectories,
membership, the data-point audit) and a bigram language model trained on a few canaries
(exposure), plus a real Opacus RDP accountant stepped once per training step (the DP logger).
:func:`build_callbacks` returns every memcallbacks callback with a fixed run directory;
:func:`crash_trainer` is the Trainer of the resume and crash-safety runs. The comparison helpers
of :mod:`helpers.state` and the callbacks of :mod:`helpers.callbacks` those tests use are
re-exported, so a test imports this module alone (``from helpers import every_monitor as H``).
"""

from __future__ import annotations

import os
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset, TensorDataset

from helpers.callbacks import RankDump, StopAfter
from helpers.data import EpochShuffleSampler
from helpers.state import differences, load_tree, same, snapshot, without_run_ids
from memcallbacks.data.indexed import IndexedDataset, split_index

__all__ = [
    "CLASSES",
    "DIM",
    "Data",
    "HardModel",
    "RankDump",
    "StopAfter",
    "build_callbacks",
    "canary_tokens",
    "crash_trainer",
    "differences",
    "load_tree",
    "make_blobs",
    "make_canaries",
    "same",
    "snapshot",
    "without_run_ids",
]

DIM, CLASSES = 8, 3


def make_blobs(n: int, seed: int) -> TensorDataset:
    """Blobs around fixed centres (the same classes for every ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    centers = torch.randn(CLASSES, DIM, generator=torch.Generator().manual_seed(123)) * 1.5
    x = centers[y] + torch.randn(n, DIM, generator=g)
    return TensorDataset(x, y)


def make_canaries() -> Any:
    from memcallbacks import CanarySet, CharTokenizer

    return CanarySet(
        "pin {secret}.", CharTokenizer(), alphabet="0123", length=3, repetitions=(1, 4), per_count=2, seed=0
    )


def canary_tokens(cs: Any) -> torch.Tensor:
    rows = [list(c.token_ids) for c in cs for _ in range(c.repetitions)]
    return torch.tensor(rows, dtype=torch.long)


class HardModel(pl.LightningModule):
    """Classifier on float inputs ``[B, DIM]``; bigram LM (logits ``[B, T, V]``) on long inputs."""

    def __init__(self, lr: float = 0.2, vocab_size: int = 98, accountant: bool = True) -> None:
        super().__init__()
        self.lr = lr
        self.net = torch.nn.Sequential(
            torch.nn.Linear(DIM, 16), torch.nn.Tanh(), torch.nn.Linear(16, CLASSES)
        )
        self.embed = torch.nn.Embedding(vocab_size, 8)
        self.head = torch.nn.Linear(8, vocab_size)
        self.register_buffer("lm_tokens", canary_tokens(make_canaries()))
        if accountant:
            from opacus.accountants import RDPAccountant

            self.privacy_engine = RDPAccountant()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.long:
            return self.head(self.embed(x))
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        index, (x, y) = split_index(batch)
        logits = self(x)
        per_sample = F.cross_entropy(logits, y, reduction="none")
        tokens = self.lm_tokens
        lm = F.cross_entropy(
            self(tokens[:, :-1]).reshape(-1, self.head.out_features), tokens[:, 1:].reshape(-1)
        )
        return {
            "loss": per_sample.mean() + lm,
            "sample_loss": per_sample.detach(),
            "sample_index": index,
            "sample_correct": logits.argmax(-1) == y,
        }

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        acc = getattr(self, "privacy_engine", None)
        if acc is not None:
            acc.step(noise_multiplier=1.0, sample_rate=0.05)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class Data:
    """Training set (blobs + the audit canaries drawn in), held-out set, audit canaries."""

    def __init__(self, n_train: int = 40, n_val: int = 24, n_audit: int = 12) -> None:
        from memcallbacks import PrivacyAuditMonitor

        self.train = make_blobs(n_train, seed=1)
        self.val = make_blobs(n_val, seed=2)
        self.audit_canaries = make_blobs(n_audit, seed=3)
        probe = PrivacyAuditMonitor(self.audit_canaries, k_pos=2, k_neg=2, seed=0)
        self.train_set: Dataset[Any] = ConcatDataset([self.train, probe.included_dataset()])

    def train_loader(self, batch_size: int = 8, drop_last: bool = False, sampler: bool = True) -> DataLoader:
        ds = IndexedDataset(self.train_set)
        return DataLoader(
            ds,
            batch_size=batch_size,
            sampler=EpochShuffleSampler(len(ds)) if sampler else None,
            shuffle=False,
            drop_last=drop_last,
        )

    def val_loader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=8)


def build_callbacks(run_dir: str | os.PathLike[str], data: Data, *, stopping: bool = True) -> list[Any]:
    """Every memcallbacks callback, writing under ``run_dir``."""
    from memcallbacks import (
        CanaryExposureMonitor,
        DPEpsilonMonitor,
        LeakageCondition,
        LeakageEarlyStopping,
        LossTrajectoryTracker,
        MembershipInferenceMonitor,
        PrivacyAuditMonitor,
    )

    cbs: list[Any] = [
        LossTrajectoryTracker(run_dir=run_dir),
        MembershipInferenceMonitor(nonmembers=data.val, num_probes=16, calibrate=True, run_dir=run_dir),
        CanaryExposureMonitor(make_canaries(), method="exact", run_dir=run_dir),
        PrivacyAuditMonitor(data.audit_canaries, k_pos=2, k_neg=2, seed=0, run_dir=run_dir),
        DPEpsilonMonitor(delta=1e-5, run_dir=run_dir),
    ]
    if stopping:
        # mem/traj/epochs is 1, 2, 3: crossed every epoch, so patience 3 stops at epoch 2 only if the
        # counter survives a resume; the second condition never triggers
        cbs.append(
            LeakageEarlyStopping(
                conditions=[
                    LeakageCondition("mem/traj/epochs", 0.5, "max", patience=3),
                    LeakageCondition("mem/mia/auc", 1.01, "max"),
                ],
                run_dir=run_dir,
            )
        )
    return cbs


def crash_trainer(
    root: str | os.PathLike[str], callbacks: list[Any], ckpt_dir: str | os.PathLike[str]
) -> pl.Trainer:
    """The Trainer of the crash-safety runs: checkpoint at every train-epoch end, 3 epochs."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    checkpoint = ModelCheckpoint(dirpath=str(ckpt_dir), filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    return pl.Trainer(
        default_root_dir=str(root),
        accelerator="cpu",
        devices=1,
        max_epochs=3,
        logger=False,
        callbacks=[*callbacks, checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
