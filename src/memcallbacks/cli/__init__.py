"""Command line: ``memcallbacks demo``, ``report RUN_DIR``, ``attack RUN_DIR...``, ``memorisation RUN_DIR...``.

Also available as ``python -m memcallbacks.cli``. One module per command (:mod:`~memcallbacks.cli.demo`,
:mod:`~memcallbacks.cli.report`, :mod:`~memcallbacks.cli.attack`, :mod:`~memcallbacks.cli.memorisation`),
each with ``add_parser(sub)`` and ``run(args, parser)``; shared argument types in
:mod:`~memcallbacks.cli.arguments`. Exit codes: 0 success, 2 bad command-line input
(a flag out of range, a path that does not exist or cannot be written; one line on stderr, no
traceback), 1 a report written with a section missing because a run-directory file could not be
read (the file is named on stderr and in the report), or attack results written but a tracker of
``attack --log`` failed (named on stderr; ``attack.json`` holds the numbers).
"""

from __future__ import annotations

import argparse
import sys

from memcallbacks.cli import attack, demo, memorisation, report

__all__ = ["build_parser", "main"]

#: the sub-commands, in the order ``memcallbacks --help`` lists them
COMMANDS = {"demo": demo, "report": report, "attack": attack, "memorisation": memorisation}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``memcallbacks`` parser and each sub-command's own parser (for its usage in errors)."""
    parser = argparse.ArgumentParser(
        prog="memcallbacks",
        description="Measure memorisation while a PyTorch Lightning model trains.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    return parser, {name: module.add_parser(sub) for name, module in COMMANDS.items()}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``memcallbacks`` console script; returns the exit code.

    Example:
        >>> main(["report", "lightning_logs/version_0"])  # doctest: +SKIP
        0
    """
    parser, subparsers = build_parser()
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    command = subparsers[args.command]
    if extra:  # the sub-command's own usage, not the top-level one
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    return int(COMMANDS[args.command].run(args, command))
