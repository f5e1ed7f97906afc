"""Command line: ``memcallbacks demo`` and ``memcallbacks report RUN_DIR``.

Also available as ``python -m memcallbacks``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="memcallbacks",
        description="Measure memorisation while a PyTorch Lightning model trains.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser(
        "demo",
        help="train a small canary language model with every monitor and write a report",
        description=(
            "Train a small character language model on generated payment records with secret "
            "canaries inserted 1-32 times, with every memcallbacks monitor attached; log to an "
            "offline W&B run and CSV, and write an HTML/Markdown report. No account, no network."
        ),
    )
    d.add_argument("--out", type=Path, default=Path("demo_run"), help="output folder (default: demo_run)")
    d.add_argument("--epochs", type=int, default=4, help="training epochs (default: 4)")
    d.add_argument(
        "--sentences", type=int, default=10000, help="generated training sentences (default: 10000)"
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
        type=float,
        default=18.0,
        help="stop when mem/canary/exposure_max exceeds this many bits and restore the last safe weights "
        "(default: 18; a negative value turns early stopping off)",
    )
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-report", action="store_true", help="skip the report at the end")

    r = sub.add_parser(
        "report", help="write figures, an HTML page and a Markdown summary from a run directory"
    )
    r.add_argument(
        "run_dir", type=Path, help="a memcallbacks run directory (the folder holding trajectory/, canary/...)"
    )
    r.add_argument(
        "--out", type=Path, default=None, help="where to write the report (default: RUN_DIR/report)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``memcallbacks`` console script."""
    parser = _parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "demo":
        from memcallbacks.demo import run_demo

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
        return 0
    if args.command == "report":
        from memcallbacks.report import build_report, find_run_dir

        try:
            run_dir = find_run_dir(args.run_dir)
        except FileNotFoundError as e:
            parser.error(str(e))
        paths = build_report(run_dir, out=args.out)
        print(f"run directory:  {run_dir}")
        print(f"report written: {paths['html']}")
        print(f"summary:        {paths['markdown']}")
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands
