"""Module-level models, data and callback sets for the hardening tests (picklable for ddp_spawn).

One tiny LightningModule carries every monitor at once: a linear classifier on Gaussian blobs
(trajectories, membership, the data-point audit) and a bigram language model trained on a few
canaries (exposure), plus a real Opacus RDP accountant stepped once per training step (the DP
logger). ``build_callbacks`` returns all seven callbacks with a fixed run directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset, TensorDataset

from _helpers import EpochShuffleSampler
from memcallbacks import _io
from memcallbacks.data.indexed import IndexedDataset, split_index

DIM, CLASSES = 8, 3


def make_blobs(n: int, seed: int) -> TensorDataset:
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
        DPEpsilonLogger,
        LeakageCondition,
        LeakageEarlyStopping,
        LossTrajectoryTracker,
        MembershipInferenceMonitor,
        PrivacyAuditMonitor,
    )

    cbs: list[Any] = [
        LossTrajectoryTracker(run_dir=run_dir),
        MembershipInferenceMonitor(nonmembers=data.val, num_probe=16, calibrate=True, run_dir=run_dir),
        CanaryExposureMonitor(make_canaries(), method="exact", run_dir=run_dir),
        PrivacyAuditMonitor(data.audit_canaries, k_pos=2, k_neg=2, seed=0, run_dir=run_dir),
        DPEpsilonLogger(delta=1e-5, run_dir=run_dir),
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


def snapshot(callbacks: list[Any]) -> dict[str, Any]:
    """Every recorded number of the callbacks, as plain arrays (for exact comparisons)."""
    from memcallbacks import (
        CanaryExposureMonitor,
        DPEpsilonLogger,
        LeakageEarlyStopping,
        LossTrajectoryTracker,
        MembershipInferenceMonitor,
        PrivacyAuditMonitor,
    )

    out: dict[str, Any] = {}
    for cb in callbacks:
        if isinstance(cb, LossTrajectoryTracker):
            assert cb.store is not None
            out["traj/matrix"] = cb.store.matrix()
            out["traj/correct"] = cb.store.correct_matrix()
            out["traj/epochs"] = np.asarray(cb.recorded_epochs)
            st = cb.statistics()
            for f in ("count", "mean", "std", "last", "min", "forgetting_events", "learned_epoch"):
                out[f"traj/stat/{f}"] = np.asarray(getattr(st, f))
        elif isinstance(cb, MembershipInferenceMonitor):
            out["mia/member_losses"] = cb.member_losses
            out["mia/nonmember_losses"] = cb.nonmember_losses
            out["mia/history"] = json.dumps(cb.history, sort_keys=True)
        elif isinstance(cb, CanaryExposureMonitor):
            for k, v in cb.history.items():
                out[f"canary/{k}"] = v
        elif isinstance(cb, PrivacyAuditMonitor):
            out["audit/history"] = json.dumps(cb.history, sort_keys=True)
        elif isinstance(cb, DPEpsilonLogger):
            out["dp/history"] = json.dumps(cb.history, sort_keys=True)
        elif isinstance(cb, LeakageEarlyStopping):
            out["stop/state"] = json.dumps(cb.state_dict(), sort_keys=True, default=str)
    return out


def load_tree(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Every non-hidden file under ``root`` loaded through memcallbacks._io (relative path -> content)."""
    out: dict[str, Any] = {}
    root = Path(root)
    for path in sorted(root.rglob("*")):
        if path.is_dir() or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        rel = str(path.relative_to(root))
        if path.suffix == ".npz":
            out[rel] = _io.load_npz(path)
        elif path.suffix == ".npy":
            out[rel] = _io.load_npy(path)
        elif path.suffix == ".json":
            out[rel] = _io.load_json(path)
        elif path.suffix == ".pt":
            out[rel] = torch.load(path, weights_only=True)
        else:
            out[rel] = path.read_bytes()
    return out


class StopAfter(pl.Callback):
    """Raises at the start of epoch ``epoch``: an interruption after the previous epoch's checkpoint."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise InterruptedError(f"simulated interruption before epoch {self.epoch}")


class DumpRank(pl.Callback):
    """At the end of fit every rank writes what its memcallbacks callbacks recorded to rank<k>.npz."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from memcallbacks.callbacks._base import MemorisationCallback
        from memcallbacks.callbacks.stopping import LeakageEarlyStopping

        cbs = [cb for cb in trainer.callbacks if isinstance(cb, (MemorisationCallback, LeakageEarlyStopping))]  # type: ignore[attr-defined]
        snap = snapshot([cb for cb in cbs if trainer.is_global_zero or not hasattr(cb, "store")])
        for cb in cbs:  # non-zero ranks keep statistics only
            if hasattr(cb, "store") and cb.store is not None:
                st = cb.statistics()
                snap["traj/stat/count"], snap["traj/stat/mean"] = st.count, st.mean
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("mem/")}
        snap["metrics"] = json.dumps(metrics, sort_keys=True)
        arrays = {k: (np.asarray(v) if v is not None else np.zeros(0)) for k, v in snap.items()}
        np.savez(Path(self.folder) / f"rank{trainer.global_rank}.npz", **arrays)


def same(a: Any, b: Any) -> bool:
    """Exact equality of two snapshot values (NaN equal to NaN)."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (str, bytes)):
        return bool(a == b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "fc":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys whose values differ (or exist on one side only)."""
    return sorted(k for k in set(a) | set(b) if k not in a or k not in b or not same(a[k], b[k]))


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
