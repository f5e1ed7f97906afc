"""Pieces shared by the benchmark scripts (run as ``python benchmarks/bench_x.py``, they import this module)."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import TensorDataset


def synthetic(n: int, dim: int = 32, classes: int = 10, seed: int = 0) -> TensorDataset:
    """``n`` Gaussian-blob samples: ``classes`` random centres in ``dim`` dimensions, noise 1.5."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + 1.5 * torch.randn(n, dim, generator=g)
    return TensorDataset(x, y)


def quiet(threads: int) -> None:
    """Silence Lightning's logs and all warnings (stdout keeps the JSON result); ``threads > 0`` pins torch's."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    if threads > 0:
        torch.set_num_threads(threads)


def quiet_trainer(default_root_dir: str | Path, **kwargs: Any) -> pl.Trainer:
    """A CPU Trainer with no logger, checkpoints, progress bar or model summary; ``kwargs`` add to it."""
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(default_root_dir),
        **kwargs,
    )


def environment(**versions: str) -> dict[str, Any]:
    """The machine a result was measured on: versions (``versions`` after torch and Lightning), threads, load."""
    return {
        "torch": torch.__version__,
        "lightning": pl.__version__,
        **versions,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def finish(results: dict[str, Any], root: Path, out: Path | None) -> None:
    """Delete the run directories under ``root``, print ``results`` as JSON and also write it to ``out``."""
    shutil.rmtree(
        root, ignore_errors=True
    )  # the run directories (about 18 MB per tracker fit at 200,000 samples)
    text = json.dumps(results, indent=2)
    print(text)
    if out is not None:
        out.write_text(text + "\n")
