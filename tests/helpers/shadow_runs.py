"""Synthetic pools and real Lightning shadow runs for the attack tests, the example's test and the benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from helpers.training import trainer as quiet_trainer
from memcallbacks.callbacks.shadow import ShadowScoreRecorder
from memcallbacks.demos.toy import MLPClassifier


def make_pool(
    n: int, *, dim: int = 20, classes: int = 10, label_noise: float = 0.2, seed: int = 0
) -> TensorDataset:
    """Gaussian class clusters, half the samples easy (tight) and half hard (wide), some labels flipped.

    Per-sample difficulty varies, so a plain confidence threshold mistakes easy non-members for
    members: what LiRA and RMIA calibrate away with reference runs.
    """
    g = np.random.default_rng(seed)
    y = g.integers(0, classes, n)
    centers = g.normal(size=(classes, dim))
    scale = g.choice([0.3, 1.5], size=n)
    x = centers[y] + g.normal(size=(n, dim)) * scale[:, None]
    flip = g.random(n) < label_noise
    y = np.where(flip, g.integers(0, classes, n), y)
    return TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y))


def train_shadow_run(
    pool: Any,
    root: Path,
    run_index: int,
    *,
    num_runs: int | None,
    epochs: int,
    seed: int = 0,
    batch_size: int = 64,
    **recorder_kwargs: Any,
) -> tuple[Path, ShadowScoreRecorder, MLPClassifier]:
    """One shadow run with a real Trainer; returns its default_root_dir, the recorder and the model."""
    pl.seed_everything(seed * 1000 + run_index, verbose=False)
    recorder = ShadowScoreRecorder(pool, run_index=run_index, num_runs=num_runs, seed=seed, **recorder_kwargs)
    x0, _ = pool[0]
    model = MLPClassifier(int(x0.shape[0]), 10, lr=3e-3)
    run_dir = root / f"run{run_index}"
    trainer = quiet_trainer(run_dir, max_epochs=epochs, logger=False, callbacks=[recorder])
    trainer.fit(model, DataLoader(recorder.train_dataset, batch_size=batch_size, shuffle=True))
    return run_dir, recorder, model


def write_shadow_files(
    root: Path, *, runs: int = 4, pool_size: int = 600, signal: float = 1.0, seed: int = 0
) -> list[Path]:
    """Hand-made shadow runs without training: the recorder's two files, as it writes them, in
    ``root/run<i>/memcallbacks/shadow`` for a balanced split of ``runs``; members score ``signal`` higher
    on average (a sample's base score plus noise, as a trained model's confidences spread)."""
    from memcallbacks import rundir
    from memcallbacks.callbacks.shadow import shadow_split

    g = np.random.default_rng(seed)
    base = g.normal(size=pool_size)
    dirs = []
    for i in range(runs):
        split = shadow_split(pool_size, run_index=i, num_runs=runs, seed=seed)
        folder = root / f"run{i}" / "memcallbacks" / "shadow"
        rundir.write_shadow_inclusion(folder, split, "hand-made-pool")
        scores = base + signal * split.inclusion + 0.3 * g.normal(size=pool_size)
        rundir.write_shadow_scores(
            folder,
            scores,
            score_kind="logit_confidence",
            fingerprint="hand-made-pool",
            epochs_completed=3,
            global_step=30,
        )
        dirs.append(root / f"run{i}")
    return dirs
