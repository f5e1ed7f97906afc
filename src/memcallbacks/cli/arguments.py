"""Argument types and helpers shared by the sub-commands of ``memcallbacks``.

Each type raises :class:`argparse.ArgumentTypeError` with the value received, so argparse prints
``argument --x: must be ..., got '...'`` and exits with code 2.

Example:
    >>> int_in(1, 10)("3"), finite_float("18"), unit_float("0.3"), non_negative_int("0")
    (3, 18.0, 0.3, 0)
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = [
    "add_run_dirs_argument",
    "finite_float",
    "int_in",
    "non_negative_int",
    "unit_float",
    "write_or_exit",
]

_T = TypeVar("_T")


def int_in(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``[minimum, maximum]`` (no upper bound when ``maximum`` is None)."""

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


def finite_float(text: str) -> float:
    """An argparse type: a finite number (``--stop-bits``; a negative value turns the stop off)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(
            f"must be a finite number (bits; negative turns it off), got {text!r}"
        )
    return value


def unit_float(text: str) -> float:
    """An argparse type: a number in ``[0, 1]``."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer ``>= 0``."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def add_run_dirs_argument(parser: argparse.ArgumentParser) -> None:
    """Adds the ``RUN_DIR...`` positional shared by the commands that read shadow runs."""
    parser.add_argument(
        "run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="the shadow runs' directories (2 or more)"
    )


def write_or_exit(parser: argparse.ArgumentParser, out: Path, write: Callable[[], _T]) -> _T:
    """``write()``; an ``OSError`` becomes ``parser.error`` (exit code 2) naming ``--out`` and the path.

    The reason is the system's own (``os.strerror``), not the training-time advice of the run-directory
    writers ("resume from the last checkpoint" means nothing to a command that only writes outputs).
    """
    try:
        return write()
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else (e.strerror or str(e))
        parser.error(
            f"argument --out: cannot write {e.filename or out}: {reason}; free disk space or pass --out a "
            "writable folder"
        )
