"""Real Lightning shadow runs (ShadowScoreRecorder + LossTrajectoryTracker) on a tiny pool, for the CLI tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from helpers.shadow_runs import make_pool as shadow_pool
from helpers.training import trainer as quiet_trainer
from memcallbacks import IndexedDataset, LossTrajectoryTracker, ShadowScoreRecorder
from memcallbacks.demos.toy import MLPClassifier


def make_pool(n: int = 48, *, seed: int = 0) -> TensorDataset:
    """The shadow-run pool of the attack tests, small: 6 features, 3 classes, a fifth of the labels flipped."""
    return shadow_pool(n, dim=6, classes=3, label_noise=0.2, seed=seed)


def train_run(
    pool: TensorDataset,
    root: Path,
    run_index: int,
    *,
    num_runs: int | None = 4,
    epochs: int = 3,
    trajectory: bool = True,
    pool_indexed: bool = False,
) -> Path:
    """One shadow run; with ``pool_indexed`` the trajectory ids are pool positions, else training-set positions."""
    pl.seed_everything(run_index, verbose=False)
    recorder = ShadowScoreRecorder(pool, run_index=run_index, num_runs=num_runs, seed=0, batch_size=64)
    callbacks: list[pl.Callback] = [recorder]
    if trajectory:
        n = len(pool) if pool_indexed else None
        callbacks.append(LossTrajectoryTracker(correct_key="sample_correct", num_samples=n))
    if pool_indexed:
        from torch.utils.data import Subset

        train: Any = Subset(IndexedDataset(pool), recorder.split.indices.tolist())
    else:
        train = IndexedDataset(recorder.train_dataset)
    run_dir = root / f"run{run_index}"
    trainer = quiet_trainer(run_dir, max_epochs=epochs, logger=False, callbacks=callbacks)
    model = MLPClassifier(int(pool[0][0].shape[0]), 3, hidden=32, lr=1e-2)
    trainer.fit(model, DataLoader(train, batch_size=16, shuffle=True))
    return run_dir


def make_lm_pool(n: int = 24, *, length: int = 8, vocab: int = 12, seed: int = 0) -> TensorDataset:
    """Random token sequences as (input, next-token target) pairs: a language-model pool."""
    g = np.random.default_rng(seed)
    tokens = torch.tensor(g.integers(0, vocab, size=(n, length + 1)))
    return TensorDataset(tokens[:, :-1], tokens[:, 1:])


class TinyLM(pl.LightningModule):
    def __init__(self, vocab: int = 12) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 32)
        self.out = torch.nn.Linear(32, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(x))  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x).flatten(0, 1), y.flatten())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def train_lm_run(pool: TensorDataset, root: Path, run_index: int, *, num_runs: int = 2) -> Path:
    pl.seed_everything(run_index, verbose=False)
    recorder = ShadowScoreRecorder(pool, run_index=run_index, num_runs=num_runs, seed=0)
    run_dir = root / f"lm{run_index}"
    trainer = quiet_trainer(run_dir, max_epochs=2, logger=False, callbacks=[recorder])
    trainer.fit(TinyLM(), DataLoader(recorder.train_dataset, batch_size=8, shuffle=True))
    return run_dir
