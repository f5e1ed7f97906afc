"""Deprecated alias of :mod:`helpers.wandb_reader` (kept while test files switch their imports)."""

from helpers.wandb_reader import find_run_file, history_rows, read_records, wait_for_run_file

__all__ = ["find_run_file", "history_rows", "read_records", "wait_for_run_file"]
