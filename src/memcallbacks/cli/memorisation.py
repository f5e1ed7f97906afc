"""``memcallbacks memorisation RUN_DIR...``: counterfactual memorisation from shadow runs.

The estimate comes from :func:`memcallbacks.offline.counterfactual.run_memorisation`; this module
parses the flags, prints the most memorised samples and the proxy correlations, and writes the
outputs into ``--out``. Exit code 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from memcallbacks.cli.arguments import add_run_dirs_argument, non_negative_int, write_or_exit
from memcallbacks.offline.counterfactual import (
    SIGNAL_TEXT,
    SIGNALS,
    MemorisationInputError,
    run_memorisation,
    write_outputs,
)

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``memorisation`` sub-command to ``memcallbacks``' sub-parsers; returns its parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "memorisation",
        help="counterfactual memorisation (Feldman & Zhang) from shadow runs, and in-run proxy correlations",
        description=(
            "Counterfactual memorisation of every pool sample from shadow runs recorded with ShadowScoreRecorder: "
            "mean performance of the runs that trained on it minus that of the runs that did not. Prints the most "
            "memorised pool ids and, for runs with a LossTrajectoryTracker folder, the Spearman correlation of each "
            "in-run signal with mem. Writes memorisation.npz/.json/.md and mem_histogram.png into --out. "
            "Exit code 2 on bad input."
        ),
    )
    add_run_dirs_argument(p)
    p.add_argument(
        "--signal",
        choices=SIGNALS,
        default="auto",
        help="per-sample performance: auto (correctness for classifiers, minus the loss for language models), "
        "correct, token_accuracy (only for scores.npz files holding a token_accuracy array: ShadowScoreRecorder "
        "does not write one), score (default: auto)",
    )
    p.add_argument(
        "--top", type=non_negative_int, default=20, help="most memorised samples listed (default: 20)"
    )
    p.add_argument(
        "--log-per-sample",
        action="store_true",
        help="also list the samples' labels (when the runs recorded them) in the table and outputs",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("memorisation_report"),
        help="output folder (default: memorisation_report)",
    )
    return p


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Body of ``memcallbacks memorisation``: 0 on success; bad input exits 2 through ``parser.error``."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            result = run_memorisation(args.run_dirs, signal=args.signal)
    except MemorisationInputError as err:
        parser.error(str(err))
    for w in caught:
        print(f"memcallbacks memorisation: warning: {w.message}", file=sys.stderr)
    paths = write_or_exit(
        parser,
        args.out,
        lambda: write_outputs(result, args.out, top=args.top, log_per_sample=args.log_per_sample),
    )
    e = result.estimate
    finite = e.mem[np.isfinite(e.mem)]
    print(
        f"{len(result.runs)} shadow runs, pool of {e.num_samples} samples; performance: {SIGNAL_TEXT[result.signal]}"
    )
    mean = f"{finite.mean():.4f}" if finite.size else "nan"
    print(
        f"mem: mean {mean}; undefined (NaN) for {e.num_undefined} samples "
        f"({e.num_never_in} in no run, {e.num_never_out} in every run)"
    )
    print("most memorised pool samples:")
    print(result.table(min(args.top, 10), log_per_sample=args.log_per_sample))
    print("in-run signals vs mem (Spearman rho over each run's training samples; mem without that run):")
    print(result.proxy_table())
    print(f"written: {paths['json']}")
    for key in ("npz", "png", "markdown"):
        print(f"         {paths[key]}")
    sys.stdout.flush()
    return 0
