"""LiRA and RMIA against the loss attack, from shadow runs of a Lightning MLP on sklearn's digits.

The 1,797 bundled digits (no download) are the candidate pool. Each shadow run trains a small MLP
on its seeded half of the pool with :class:`memcallbacks.ShadowScoreRecorder`, which records
every pool sample's logit-scaled confidence at the end of fit. Then every run is attacked in
turn, the other runs serving as references, and the script prints the comparison table (AUC and
TPR at 0.1% / 1% FPR) for the loss attack, LiRA offline and online (Carlini et al., IEEE S&P
2022) and RMIA offline and online (Zarifzadeh et al., ICML 2024), and writes ``attack.json``
and a log-log ``roc.png`` per mode.

Run (all runs in this process, then the attacks; a few minutes on a laptop CPU)::

    python examples/lira_digits.py --runs 8 --epochs 40 --out runs/lira_digits

Or one run per process, as on a cluster (the same script with ``--run-index``), then the attack::

    for i in 0 1 2 3 4 5 6 7; do python examples/lira_digits.py --run-index $i --out runs/lira_digits; done
    memcallbacks attack runs/lira_digits/run* --out runs/lira_digits/attack

Then a report with the comparison tables and ROCs (``--log tensorboard`` etc. on ``memcallbacks
attack`` also sends the aggregates to a tracker run)::

    memcallbacks report runs/lira_digits/run0 --attack runs/lira_digits/attack-online \
        --attack runs/lira_digits/attack-offline

A quick check: ``--runs 4 --epochs 5``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from memcallbacks import ShadowScoreRecorder
from memcallbacks.demos.toy import MLPClassifier, digits_dataset
from memcallbacks.offline.attack import AttackResult, run_attack, write_outputs


def train_run(pool: TensorDataset, run_index: int, args: argparse.Namespace) -> Path:
    """One shadow run: its seeded half of the pool, scores recorded at the end of fit."""
    pl.seed_everything(args.seed * 1000 + run_index, verbose=False)
    recorder = ShadowScoreRecorder(pool, run_index=run_index, num_runs=args.runs, seed=args.seed)
    run_dir = Path(args.out) / f"run{run_index}"
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        default_root_dir=run_dir,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
    )
    loader = DataLoader(recorder.train_dataset, batch_size=args.batch_size, shuffle=True)
    trainer.fit(MLPClassifier(hidden=args.hidden, hidden_layers=2, lr=args.lr), loader)
    return run_dir


def attack(args: argparse.Namespace) -> dict[str, AttackResult]:
    """Both modes over every run directory under ``--out``; prints one merged table."""
    dirs = [Path(args.out) / f"run{i}" for i in range(args.runs)]
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "fewer than 1/FPR non-members" on tiny runs
        for mode, offline in (("online", False), ("offline", True)):
            results[mode] = run_attack(dirs, offline=offline)
            write_outputs(results[mode], Path(args.out) / f"attack-{mode}")
    rows = {**results["offline"].reports, **results["online"].reports}
    order = ["loss", "lira-offline", "lira-online", "rmia-offline", "rmia-online"]
    if not args.quiet:
        print(
            f"{args.runs} shadow runs of {args.epochs} epochs, pool of 1,797 digits, each run the target once"
        )
        print(f"{'attack':<14} {'AUC':>7} {'TPR@0.1%FPR':>12} {'TPR@1%FPR':>10}")
        for label in order:
            r = rows[label]
            print(f"{label:<14} {r.auc:>7.4f} {r.tpr_at_fpr[0.001]:>12.4f} {r.tpr_at_fpr[0.01]:>10.4f}")
    return results


def main(argv: list[str] | None = None) -> dict[str, AttackResult] | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=8, help="number of shadow runs (default 8; at least 4)")
    p.add_argument("--epochs", type=int, default=40, help="training epochs per run (default 40)")
    p.add_argument(
        "--run-index", type=int, default=None, help="train only this run (then run the attack later)"
    )
    p.add_argument("--attack-only", action="store_true", help="skip training; attack the runs under --out")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/lira_digits"))
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: small MLP, faster)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pool, _ = digits_dataset()  # the same fixed-order pool in every run
    start = time.perf_counter()
    if args.run_index is not None:
        train_run(pool, args.run_index, args)
        return None
    if not args.attack_only:
        for i in range(args.runs):
            train_run(pool, i, args)
    results = attack(args)
    if not args.quiet:
        print(
            f"done in {time.perf_counter() - start:.0f} s; attack.json and roc.png under {args.out}/attack-*"
        )
    return results


if __name__ == "__main__":
    main()
