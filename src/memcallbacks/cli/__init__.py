"""Command line: ``memcallbacks demo``, ``report RUN_DIR``, ``attack RUN_DIR...``, ``memorisation RUN_DIR...``.

Also available as ``python -m memcallbacks.cli``. Exit codes: 0 success, 2 bad command-line input
(a flag out of range, a path that does not exist or cannot be written; one line on stderr, no
traceback), 1 a report written with a section missing because a run-directory file could not be
read (the file is named on stderr and in the report), or attack results written but a tracker of
``attack --log`` failed (named on stderr; ``attack.json`` holds the numbers).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["main"]


def _int_in(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            allowed = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"must be an integer {allowed}, got {text!r}")
        return value

    parse.__name__ = "integer"
    return parse


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(
            f"must be a finite number (bits; negative turns it off), got {text!r}"
        )
    return value


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
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
            "offline W&B run and CSV, and write an HTML/Markdown report. No account, no network. "
            "A second run into the same --out folder replaces the first."
        ),
    )
    d.add_argument("--out", type=Path, default=Path("demo_run"), help="output folder (default: demo_run)")
    d.add_argument("--epochs", type=_int_in(1, 1000), default=4, help="training epochs, 1-1000 (default: 4)")
    d.add_argument(
        "--sentences",
        type=_int_in(100, 10_000_000),
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
        type=_finite_float,
        default=18.0,
        help="stop when mem/canary/exposure_max exceeds this many bits and restore the last safe weights "
        "(default: 18; a negative value turns early stopping off)",
    )
    d.add_argument("--seed", type=_int_in(0, 2**32 - 1), default=0, help="seed, 0-4294967295 (default: 0)")
    d.add_argument("--no-report", action="store_true", help="skip the report at the end")

    r = sub.add_parser(
        "report",
        help="write figures, an HTML page and a Markdown summary from a run directory",
        description=(
            "Write figures, report.html and summary.md from a memcallbacks run directory alone. "
            "Exit code 1 when a file could not be read (its section says which)."
        ),
    )
    r.add_argument(
        "run_dir",
        type=Path,
        help="a memcallbacks run directory (the folder holding trajectory/, canary/...) or a folder above "
        "it, such as the demo's output folder",
    )
    r.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the report (default: <run directory>/report, where the demo writes it)",
    )
    r.add_argument(
        "--attack",
        type=Path,
        action="append",
        metavar="DIR",
        help="also show the results of `memcallbacks attack` written to DIR (its --out folder), repeatable; "
        "the run directory's own attack/ and attack_<x>/ folders are shown without it",
    )
    from memcallbacks.offline.attack import add_attack_parser
    from memcallbacks.offline.counterfactual import add_memorisation_parser

    return p, {
        "demo": d,
        "report": r,
        "attack": add_attack_parser(sub),
        "memorisation": add_memorisation_parser(sub),
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``memcallbacks`` console script."""
    parser, subparsers = _parser()
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    command = subparsers[args.command]
    if extra:  # the sub-command's own usage, not the top-level one
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "attack":
        from memcallbacks.offline.attack import attack_command

        return attack_command(args, command)
    if args.command == "memorisation":
        from memcallbacks.offline.counterfactual import memorisation_command

        return memorisation_command(args, command)
    if args.command == "demo":
        return _demo(args, command)
    return _report(args, command)


def _demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
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


def _report(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from memcallbacks.report import build_report, find_run_dir

    try:
        run_dir = find_run_dir(args.run_dir)
    except (FileNotFoundError, NotADirectoryError) as e:
        parser.error(f"argument run_dir: {e}")
    for folder in args.attack or []:
        if not (folder / "attack.json").is_file() and not (folder.is_file() and folder.suffix == ".json"):
            parser.error(
                f"argument --attack: {str(folder)!r} holds no attack.json; pass the --out folder of "
                "`memcallbacks attack`"
            )
    try:
        paths = build_report(run_dir, out=args.out, attacks=args.attack or ())
    except NotADirectoryError as e:
        parser.error(f"argument --out: {e}")
    except PermissionError as e:
        parser.error(f"{e}" if args.out is None else f"argument --out: {e}")
    print(f"run directory:  {run_dir}")
    print(f"report written: {paths['html']}")
    print(f"summary:        {paths['markdown']}")
    if paths["problems"]:
        for problem in paths["problems"]:
            print(f"memcallbacks report: section missing: {problem}", file=sys.stderr)
        return 1
    return 0
