import os
import sys
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).parent))  # tests/_helpers.py importable, also in spawned workers

import torch  # noqa: E402

torch.set_num_threads(1)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*litlogger.*")
warnings.filterwarnings("ignore", message=".*litmodels.*")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
