"""Command line: ``memcallbacks demo`` and ``memcallbacks report RUN_DIR``."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    raise SystemExit("memcallbacks: the CLI is being built")
