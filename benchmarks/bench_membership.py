"""Cost of MembershipInferenceMonitor on a CPU MLP.

Two figures (see benchmarks/RESULTS.md):

1. per-evaluation cost: the monitor's whole epoch-end work (probe forward passes, metrics,
   ``losses.npz``/``metrics.json``, tracker records, ``log_dict``), read from
   ``monitor.last_eval_seconds`` during a real ``Trainer.fit``, divided by one bare inference
   pass over the same probe samples (same DataLoader path and batch size: a loop of
   ``F.cross_entropy(model(x), y, reduction="none")`` under ``torch.inference_mode()``).
   Target: <= 1.05.
2. epoch-time overhead: wall time of a training epoch with the monitor (default probes: 1,000
   members + 1,000 non-members) over a bare Trainer, on 50,000 training samples.

Run::

    .venv/bin/python benchmarks/bench_membership.py            # defaults below, ~2 minutes
    .venv/bin/python benchmarks/bench_membership.py --train 50000 --epochs 5 --threads 1
    .venv/bin/python benchmarks/bench_membership.py --dim 784 --hidden 1024 --epochs 4
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
import warnings
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Subset, TensorDataset

from memcallbacks import MembershipInferenceMonitor
from memcallbacks.callbacks.probes import random_subset


class MLP(pl.LightningModule):
    def __init__(self, dim: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class EpochTimer(pl.Callback):
    """Wall time from one training epoch's start to the next's (so epoch-end work is included)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.starts.append(time.perf_counter())

    def epoch_times(self) -> list[float]:
        return [b - a for a, b in zip(self.starts[:-1], self.starts[1:])]


def data(n_train: int, n_val: int, dim: int, classes: int) -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(classes, dim, generator=g)

    def make(n: int) -> TensorDataset:
        y = torch.randint(0, classes, (n,), generator=g)
        return TensorDataset(centers[y] + 2.0 * torch.randn(n, dim, generator=g), y)

    return make(n_train), make(n_val)


def bare_pass(model: torch.nn.Module, probe: Any, batch_size: int) -> float:
    was = model.training
    model.eval()
    start = time.perf_counter()
    with torch.inference_mode():
        out = [
            F.cross_entropy(model(x), y, reduction="none")
            for x, y in DataLoader(probe, batch_size=batch_size)
        ]
        torch.cat(out).cpu()
    elapsed = time.perf_counter() - start
    model.train(was)
    return elapsed


def fit(
    train: Any,
    val: Any,
    args: argparse.Namespace,
    monitor: MembershipInferenceMonitor | None,
    extra: Any = (),
) -> tuple[MLP, list[float]]:
    torch.manual_seed(0)
    model = MLP(args.dim, args.hidden, args.classes)
    timer = EpochTimer()
    callbacks: list[pl.Callback] = [timer, *([monitor] if monitor is not None else []), *extra]
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        logger=pl.loggers.CSVLogger(tempfile.mkdtemp()),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
    )
    trainer.fit(
        model, DataLoader(train, batch_size=args.batch_size, shuffle=True), DataLoader(val, batch_size=256)
    )
    return model, timer.epoch_times()


def instrument(monitor: MembershipInferenceMonitor) -> dict[str, list[float]]:
    """Time the parts of the monitor's epoch-end work (wraps private methods; benchmark only)."""
    parts: dict[str, list[float]] = {}
    names = {
        "_evaluate": "probe forward passes",
        "_metrics": "metrics",
        "log_metrics": "log_dict (Lightning)",
        "_save": "run-dir snapshot + hand-off",
        "_emit_records": "tracker records",
    }
    for attr, label in names.items():
        inner = getattr(monitor, attr)

        def timed(*a: Any, _inner: Any = inner, _label: str = label, **k: Any) -> Any:
            t = time.perf_counter()
            out = _inner(*a, **k)
            parts.setdefault(_label, []).append(time.perf_counter() - t)
            return out

        setattr(monitor, attr, timed)
    return parts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--train", type=int, default=50_000)
    p.add_argument("--val", type=int, default=5_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--num-probe", type=int, default=1000)
    p.add_argument("--bare-reps", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    train, val = data(args.train, args.val, args.dim, args.classes)
    monitor = MembershipInferenceMonitor(num_probes=args.num_probe, run_dir=tempfile.mkdtemp())
    parts = instrument(monitor)
    evals: list[float] = []
    in_training_bare: list[float] = []
    # the same probe samples the monitor uses, through the same DataLoader path and batch size
    members, _ = random_subset(train, args.num_probe, seed=0)
    probe = ConcatDataset([members, Subset(val, range(min(args.num_probe, len(val))))])

    class Collect(pl.Callback):
        """Right after the monitor's evaluation, time a bare pass in the same state of the process."""

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            evals.append(monitor.last_eval_seconds)
            in_training_bare.append(bare_pass(pl_module, probe, 256))

    model, _ = fit(train, val, args, monitor, extra=[Collect()])
    # epoch times: a separate run without the in-training bare passes of Collect
    _, with_times = fit(
        train, val, args, MembershipInferenceMonitor(num_probes=args.num_probe, run_dir=tempfile.mkdtemp())
    )
    _, bare_times = fit(train, val, args, None)

    bare_after = statistics.median([bare_pass(model, probe, 256) for _ in range(args.bare_reps)])
    bare = statistics.median(in_training_bare[1:])
    ev = statistics.median(evals[1:])  # the first evaluation also resolves the probes

    print(
        f"python {platform.python_version()}, torch {torch.__version__}, lightning {pl.__version__}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"model: MLP {args.dim}-{args.hidden}-{args.hidden}-{args.classes}; "
        f"probe: {len(probe)} samples ({args.num_probe} members + {len(probe) - args.num_probe} non-members)"
    )
    print(
        f"bare inference pass over the probes: {bare * 1e3:.1f} ms at epoch end (median of epochs 1..), "
        f"{bare_after * 1e3:.1f} ms after fit (median of {args.bare_reps})"
    )
    print(f"monitor evaluation (median of epochs 1..): {ev * 1e3:.1f} ms -> ratio {ev / bare:.3f}")
    for label, values in parts.items():
        print(f"  {label:30s} {statistics.median(values[1:]) * 1e3:8.2f} ms")
    w, b = statistics.median(with_times[1:]), statistics.median(bare_times[1:])
    print(
        f"epoch time ({args.train} samples, batch {args.batch_size}): bare {b:.2f} s, with monitor {w:.2f} s "
        f"-> overhead {100 * (w / b - 1):+.1f}% (median of epochs 1..)"
    )
    print(
        f"epoch times with monitor: {[round(t, 2) for t in with_times]}; bare: {[round(t, 2) for t in bare_times]}"
    )


if __name__ == "__main__":
    main()
