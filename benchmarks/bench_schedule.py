"""Cost of the per-step schedule check when no evaluation is due (a benchmark, not a test).

Every figure is a ratio of END-TO-END ``trainer.fit`` wall times (set-up, every epoch, epoch ends,
teardown) of a small MLP (32-256-10, batch 256, 2 epochs), configurations interleaved in one
process, their order rotated every repetition, garbage collected between fits:

``bare``
    no callback: what a user has before adding memcallbacks.
``noop``
    two callbacks whose ``on_train_batch_end`` does nothing: Lightning's own floor for per-step callbacks.
``epochs``
    two ``MembershipInferenceMonitor`` (explicit members and non-members) on the epoch schedule with
    ``every_n_epochs=10**9``: set up, never due.
``steps``
    the same two monitors with ``every_n_steps=10**9``: ``on_train_batch_end`` runs the schedule
    check (one integer comparison) at every step, never due.

Printed: each configuration's median fit time over ``bare``'s (and the paired ratio: the median over
repetitions of the ratio to the ``bare`` fit of the same repetition), and ``steps/epochs``, the
cost of the per-step check itself (target: indistinguishable from 1).

Run (full size, a few minutes on 2 quiet cores):
    python benchmarks/bench_schedule.py --out /tmp/schedule.json
Small (a smoke run):
    python benchmarks/bench_schedule.py --samples 20000 --reps 2
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset, TensorDataset

from memcallbacks import MembershipInferenceMonitor

NEVER = 10**9


class Net(pl.LightningModule):
    """The MLP of the step-capture benchmark (32-256-10), plain cross-entropy."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Noop(pl.Callback):
    """A callback whose per-step hook does nothing."""

    def on_train_batch_end(self, *args: Any) -> None:
        pass


def _monitors(train: TensorDataset, held_out: TensorDataset, **schedule: int) -> list[pl.Callback]:
    """Two membership monitors whose evaluation is never due under ``schedule``."""
    members, nonmembers = Subset(train, range(256)), Subset(held_out, range(256))
    return [
        MembershipInferenceMonitor(
            members=members, nonmembers=nonmembers, num_probes=256, name=name, **schedule
        )
        for name in ("a", "b")
    ]


def _fit(train: TensorDataset, callbacks: list[pl.Callback], epochs: int) -> float:
    """Seconds of one ``trainer.fit`` of :class:`Net` on ``train`` with ``callbacks``."""
    torch.manual_seed(0)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        default_root_dir=tempfile.mkdtemp(prefix="bench-schedule-"),
    )
    loader = DataLoader(train, batch_size=256, shuffle=True)
    start = time.perf_counter()
    trainer.fit(Net(), loader)
    return time.perf_counter() - start


def _configs(train: TensorDataset, held_out: TensorDataset, epochs: int) -> dict[str, Callable[[], float]]:
    return {
        "bare": lambda: _fit(train, [], epochs),
        "noop": lambda: _fit(train, [Noop(), Noop()], epochs),
        "epochs": lambda: _fit(train, _monitors(train, held_out, every_n_epochs=NEVER), epochs),
        "steps": lambda: _fit(train, _monitors(train, held_out, every_n_steps=NEVER), epochs),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the interleaved fits and print the ratios; return them (also written to ``--out``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=200_000, help="training samples (default 200000)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per fit (default 2)")
    parser.add_argument("--reps", type=int, default=7, help="repetitions, median taken (default 7)")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")  # every_n_steps larger than the run warns, by design here
    torch.manual_seed(0)
    train = TensorDataset(torch.randn(args.samples, 32), torch.randint(0, 10, (args.samples,)))
    held_out = TensorDataset(torch.randn(1024, 32), torch.randint(0, 10, (1024,)))
    configs = _configs(train, held_out, args.epochs)
    configs["steps"](), configs["epochs"]()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in configs}
    order = list(configs)
    for rep in range(args.reps):
        for k in order[rep % len(order) :] + order[: rep % len(order)]:
            gc.collect()
            times[k].append(configs[k]())
    median = {k: statistics.median(v) for k, v in times.items()}
    result: dict[str, Any] = {
        "samples": args.samples,
        "epochs": args.epochs,
        "reps": args.reps,
        "seconds": median,
    }
    for k in ("noop", "epochs", "steps"):
        result[f"{k}/bare"] = median[k] / median["bare"]
        result[f"{k}/bare paired"] = statistics.median(t / b for t, b in zip(times[k], times["bare"]))
    result["steps/epochs"] = median["steps"] / median["epochs"]
    result["steps/epochs paired"] = statistics.median(s / e for s, e in zip(times["steps"], times["epochs"]))
    print(f"median fit seconds: {', '.join(f'{k} {v:.3f}' for k, v in median.items())}")
    for k in ("noop", "epochs", "steps"):
        print(f"{k}/bare {result[f'{k}/bare']:.3f} (paired {result[f'{k}/bare paired']:.3f})")
    print(
        f"schedule check, steps/epochs (never due): {result['steps/epochs']:.3f} "
        f"(paired {result['steps/epochs paired']:.3f})"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
