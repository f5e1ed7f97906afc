"""``memcallbacks attack RUN_DIR...``: membership inference across shadow runs (loss, LiRA, RMIA).

The numbers come from :func:`memcallbacks.offline.attack.run_attack`; this module parses the flags,
prints the table, writes ``attack.json``/``roc.png`` and, with ``--log``, logs the aggregates to
tracker runs. Exit codes: 0 success, 2 bad input, 1 results written but a tracker failed.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from memcallbacks import rundir
from memcallbacks.cli.arguments import add_run_dirs_argument, unit_float, write_or_exit
from memcallbacks.loggers import TrackerWarning
from memcallbacks.loggers.runs import TRACKERS, close_loggers, logged_where, make_loggers, quiet_trackers
from memcallbacks.offline.attack import (
    METHODS,
    AttackInputError,
    AttackResult,
    default_out,
    log_attack_results,
    run_attack,
    write_outputs,
)

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``attack`` sub-command to ``memcallbacks``' sub-parsers; returns its parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "attack",
        help="LiRA / RMIA / loss membership inference across shadow runs",
        description=(
            "Membership inference across shadow runs recorded with ShadowScoreRecorder: each run in turn is the "
            "target and the others its references. Prints AUC and TPR at 0.1% and 1% FPR per attack; writes "
            "attack.json and a log-log roc.png into --out (default: the first run's memcallbacks/attack folder, "
            "where `memcallbacks report` finds them). With --log, also logs the aggregate numbers and the ROC "
            "figure to experiment-tracker runs (never per-sample scores). Exit codes: 0 success, 2 bad input, "
            "1 results written but a tracker failed (named on stderr)."
        ),
    )
    add_run_dirs_argument(p)
    p.add_argument(
        "--method", choices=METHODS, action="append", help="attack(s) to run, repeatable (default: all three)"
    )
    p.add_argument(
        "--offline", action="store_true", help="LiRA/RMIA use only references that did not train on a sample"
    )
    p.add_argument(
        "--variance",
        choices=("auto", "global", "per-sample"),
        default="auto",
        help="LiRA's variance: global, per-sample, or auto (global below 64 reference runs; default)",
    )
    p.add_argument(
        "--rmia-a", type=unit_float, default=0.3, help="RMIA's offline parameter a in [0, 1] (default: 0.3)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: attack/, or attack_offline/ with --offline, in the first run's "
        "memcallbacks run directory, beside its shadow/ folder)",
    )
    p.add_argument(
        "--log",
        choices=TRACKERS,
        action="append",
        help="also log AUC, TPR at low FPR, the summary table and the ROC figure to this tracker, repeatable "
        "(aggregates only; W&B honours WANDB_MODE=offline, MLflow MLFLOW_TRACKING_URI)",
    )
    p.add_argument(
        "--log-dir",
        type=Path,
        default=None,
        help="where the trackers write (wandb/, tensorboard/, csv/, mlflow.db; default: the --out folder)",
    )
    p.add_argument("--project", default=None, help="W&B project / MLflow experiment (default: memcallbacks)")
    p.add_argument("--run-name", default=None, help="tracker run name (default: attack)")
    return p


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Body of ``memcallbacks attack``: 0 on success; bad input exits 2 through ``parser.error``."""
    fixed = {"auto": None, "global": True, "per-sample": False}[args.variance]
    if not args.log:
        given = [
            f
            for f, v in (
                ("--log-dir", args.log_dir),
                ("--project", args.project),
                ("--run-name", args.run_name),
            )
            if v is not None
        ]
        if given:
            parser.error(f"argument {given[0]}: only used with --log wandb|tensorboard|mlflow|csv")
    try:
        result = run_attack(
            args.run_dirs,
            methods=tuple(args.method or METHODS),
            offline=args.offline,
            fixed_variance=fixed,
            a=args.rmia_a,
        )
    except AttackInputError as e:
        parser.error(str(e))
    out = args.out if args.out is not None else default_out(result)
    paths = write_or_exit(parser, out, lambda: write_outputs(result, out))  # JSON first, trackers after
    print(
        f"{len(result.runs)} shadow runs, pool of {result.settings['pool_size']} samples, each run the target once"
    )
    print(result.table())
    print(f"written: {paths['json']}")
    print(f"         {paths['png']}")
    sys.stdout.flush()
    if not args.log:
        return 0
    return _log_command(result, args, out)


def _log_command(result: AttackResult, args: argparse.Namespace, out: Path) -> int:
    """``--log``: 0 when every tracker got everything, else 1 (each failure named on stderr)."""
    names = list(dict.fromkeys(args.log))
    with quiet_trackers(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TrackerWarning)
        loggers, failures = make_loggers(
            names,
            args.log_dir if args.log_dir is not None else out,
            project=args.project or "memcallbacks",
            run_name=args.run_name or "attack",
        )
        failures += log_attack_results(result, loggers)
        failures += close_loggers(loggers)
    for w in caught:
        if issubclass(w.category, TrackerWarning):
            text = str(w.message)
            print(
                text if text.startswith("memcallbacks") else f"memcallbacks attack: {text}", file=sys.stderr
            )
        else:  # the trackers' own warnings, shown as usual
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    for logger in loggers:
        where = logged_where(logger)
        if where:
            print(f"tracker run: {where}")
    if failures:
        print(
            f"memcallbacks attack: {failures} tracker call(s) failed; the results are in "
            f"{out / rundir.ATTACK_FILE} (exit code 1)",
            file=sys.stderr,
        )
        return 1
    return 0
