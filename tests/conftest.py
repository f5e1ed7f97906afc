"""Shared test set-up: quiet offline trackers, one thread, a fixed seed, and the fixtures below.

Importable helpers (models and callbacks that ``ddp_spawn`` must unpickle in its workers, data
builders, the W&B reader) live in the package ``tests/helpers``; this file puts ``tests/`` on
``sys.path`` so that ``import helpers`` works in test modules, in spawned workers (which inherit
``sys.path``) and, through the same line in each script, in ``tests/_hard_scripts``; it also puts
``examples/`` there, so an example test imports its script by name (``import secret_sharer``).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).parent))  # the package tests/helpers, also in spawned workers
# the runnable scripts of examples/, which the example tests import and run small
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import torch

from helpers.callbacks import RankDump

torch.set_num_threads(1)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*litlogger.*")
warnings.filterwarnings("ignore", message=".*litmodels.*")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def rank_dump(tmp_path: Path) -> RankDump:
    """A :class:`~helpers.callbacks.RankDump` writing to ``tmp_path / "ranks"``: add it to a DDP
    Trainer's callbacks, then ``rank_dump.read()`` gives each rank's logged metrics and monitor state."""
    return RankDump(tmp_path / "ranks")
