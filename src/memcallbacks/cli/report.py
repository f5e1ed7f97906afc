"""``memcallbacks report RUN_DIR``: figures, an HTML page and a Markdown summary from a run directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``report`` sub-command to ``memcallbacks``' sub-parsers; returns its parser."""
    r: argparse.ArgumentParser = sub.add_parser(
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
    return r


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Body of ``memcallbacks report``: 0, or 1 when a section is missing; bad input exits 2."""
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
    for title in paths["other_runs"]:
        print(f"memcallbacks report: written by another run, shown apart: {title}", file=sys.stderr)
    if paths["problems"]:
        for problem in paths["problems"]:
            print(f"memcallbacks report: section missing: {problem}", file=sys.stderr)
        return 1
    return 0
