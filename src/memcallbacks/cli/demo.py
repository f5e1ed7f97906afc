"""``memcallbacks demo``: train a small canary language model with every monitor and write a report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from memcallbacks.cli.arguments import finite_float, int_in

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``demo`` sub-command to ``memcallbacks``' sub-parsers; returns its parser."""
    d: argparse.ArgumentParser = sub.add_parser(
        "demo",
        help="train a small canary language model with every monitor and write a report",
        description=(
            "Train a small character language model on generated payment records with secret "
            "canaries inserted 1-32 times, with every memcallbacks monitor attached; log to an "
            "offline W&B run and CSV, and write an HTML/Markdown report. No account, no network. "
            "A second run into the same --out folder replaces the first."
        ),
    )
    d.add_argument("--out", type=Path, default=Path("demo_run"), help="output folder (default: demo_run)")
    d.add_argument("--epochs", type=int_in(1, 1000), default=4, help="training epochs, 1-1000 (default: 4)")
    d.add_argument(
        "--sentences",
        type=int_in(100, 10_000_000),
        default=10000,
        help="generated training sentences, 100-10,000,000 (default: 10000)",
    )
    d.add_argument(
        "--logger",
        choices=("wandb", "tensorboard", "mlflow", "csv"),
        action="append",
        help="experiment tracker(s), repeatable (default: wandb and csv)",
    )
    d.add_argument("--dp", action="store_true", help="train with DP-SGD (Opacus) and log epsilon")
    d.add_argument(
        "--stop-bits",
        type=finite_float,
        default=18.0,
        help="stop when mem/canary/exposure_max exceeds this many bits and restore the last safe weights "
        "(default: 18; a negative value turns early stopping off)",
    )
    d.add_argument("--seed", type=int_in(0, 2**32 - 1), default=0, help="seed, 0-4294967295 (default: 0)")
    d.add_argument("--no-report", action="store_true", help="skip the report at the end")
    return d


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Body of ``memcallbacks demo``: 0 on success; an unusable ``--out`` exits 2 through ``parser.error``."""
    from memcallbacks.demos.demo import DemoOutputError, run_demo

    try:
        run_demo(
            out=args.out,
            epochs=args.epochs,
            sentences=args.sentences,
            loggers=tuple(args.logger or ("wandb", "csv")),
            dp=args.dp,
            stop_bits=args.stop_bits if args.stop_bits >= 0 else None,
            seed=args.seed,
            report=not args.no_report,
        )
    except DemoOutputError as e:
        parser.error(f"argument --out: {e}")
    return 0
