"""Counterfactual memorisation on digits with flipped labels, and how well in-run signals predict it.

The pool is sklearn's 1,797 bundled digits (no download) with 10% of the labels flipped to another
class (fixed seed). Each of 16 shadow runs trains a small MLP on its seeded half of the pool with
:class:`memcallbacks.ShadowScoreRecorder` (every pool sample's end-of-training correctness) and a
:class:`memcallbacks.LossTrajectoryTracker` (the run's own per-sample loss trajectories). Then
:func:`memcallbacks.offline.counterfactual.run_memorisation` computes Feldman & Zhang's counterfactual
memorisation ``mem(i)`` = accuracy on ``i`` of the runs that trained on it minus that of the runs
that did not (NeurIPS 2020), and the Spearman correlation of each in-run signal with it.

Expected (Feldman & Zhang): a flipped label is only ever predicted by a model that saw it, so
flipped samples have ``mem`` near 1 and clean ones near 0; slowly learned, low-confidence,
high-loss samples (Jiang et al., ICML 2021) are the memorised ones.

Run (about 3 minutes on a laptop CPU)::

    python examples/counterfactual_digits.py --out runs/counterfactual_digits

Or one run per process (the same script with ``--run-index``), then the command line::

    for i in $(seq 0 15); do python examples/counterfactual_digits.py --run-index $i; done
    memcallbacks memorisation runs/counterfactual_digits/run* --out runs/counterfactual_digits/memorisation

A quick check: ``--runs 4 --epochs 8``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from memcallbacks import IndexedDataset, LossTrajectoryTracker, ShadowScoreRecorder
from memcallbacks.demos.toy import MLPClassifier, digits_dataset
from memcallbacks.offline.counterfactual import MemorisationResult, run_memorisation, write_outputs


def train_run(pool: TensorDataset, run_index: int, args: argparse.Namespace) -> Path:
    """One shadow run on its seeded half; the trajectory ids are positions in that half."""
    pl.seed_everything(args.seed * 1000 + run_index, verbose=False)
    recorder = ShadowScoreRecorder(pool, run_index=run_index, num_runs=args.runs, seed=args.seed)
    tracker = LossTrajectoryTracker(correct_key="sample_correct")
    run_dir = Path(args.out) / f"run{run_index}"
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        default_root_dir=run_dir,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder, tracker],
    )
    loader = DataLoader(IndexedDataset(recorder.train_dataset), batch_size=args.batch_size, shuffle=True)
    trainer.fit(MLPClassifier(hidden=args.hidden, lr=args.lr), loader)
    return run_dir


def main(argv: list[str] | None = None) -> tuple[MemorisationResult, np.ndarray] | None:
    """Train the runs (unless ``--memorisation-only``), then print mem by group and the proxy table.

    Returns:
        The result and the flipped mask, or ``None`` when only one run was trained (``--run-index``).
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=16, help="number of shadow runs (default 16; at least 2)")
    p.add_argument("--epochs", type=int, default=30, help="training epochs per run (default 30)")
    p.add_argument("--run-index", type=int, default=None, help="train only this run")
    p.add_argument("--memorisation-only", action="store_true", help="skip training; use the runs under --out")
    p.add_argument("--noise", type=float, default=0.1, help="fraction of flipped labels (default 0.1)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/counterfactual_digits"))
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: small MLP, faster)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pool, flipped = digits_dataset(args.noise, seed=args.seed)
    start = time.perf_counter()
    if args.run_index is not None:
        train_run(pool, args.run_index, args)
        return None
    if not args.memorisation_only:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            for i in range(args.runs):
                train_run(pool, i, args)
    result = run_memorisation([Path(args.out) / f"run{i}" for i in range(args.runs)])
    paths = write_outputs(result, Path(args.out) / "memorisation")
    if not args.quiet:
        mem = result.estimate.mem
        print(
            f"{args.runs} shadow runs of {args.epochs} epochs, pool of {len(flipped)} digits, {flipped.sum()} flipped"
        )
        print(f"mean mem: flipped {np.nanmean(mem[flipped]):.3f}, clean {np.nanmean(mem[~flipped]):.3f}")
        top = result.most_memorised(int(flipped.sum()))
        print(f"flipped among the {top.size} most memorised: {flipped[top].mean():.0%}")
        print(result.proxy_table())
        print(f"done in {time.perf_counter() - start:.0f} s; outputs in {paths['json'].parent}")
    return result, flipped


if __name__ == "__main__":
    main()
