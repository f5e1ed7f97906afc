"""Overhead of LossTrajectoryTracker against a bare Trainer (a benchmark, not a test).

Measures, in one process with interleaved repetitions:

1. step mode: median epoch time with ``LossTrajectoryTracker(source="step")`` over the median
   epoch time of a bare Trainer (also the median of per-repetition ratios of back-to-back runs,
   robust to load drift on a shared machine), same MLP, data (50,000 synthetic samples), seed, and the same
   ``training_step`` dict (so the only difference is the callback). Target <= 1.02 on CPU.
2. store size: bytes per sample-epoch of the float16 store, on disk and in memory. Target <= 2.
3. probe mode: time of one probe evaluation (including gather, store write and statistics)
   over the time of one bare inference pass over the same probe set. Target <= 1.05.

Run:
    python benchmarks/bench_overhead.py [--reps 5 --epochs 3 --samples 50000]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from memcallbacks import IndexedDataset, LossTrajectoryTracker, split_index


def synthetic(n: int, dim: int = 32, classes: int = 10, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + 1.5 * torch.randn(n, dim, generator=g)
    return TensorDataset(x, y)


class MLP(pl.LightningModule):
    def __init__(self, dim: int = 32, hidden: int = 128, classes: int = 10) -> None:
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

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        index, (x, y) = split_index(batch)
        logits = self(x)
        per_sample = F.cross_entropy(logits, y, reduction="none")
        return {
            "loss": per_sample.mean(),
            "sample_loss": per_sample.detach(),
            "sample_index": index,
            "sample_correct": logits.argmax(-1) == y,
        }

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class EpochTimer(pl.Callback):
    """Wall time of each epoch, start to after every other callback's epoch end (put it last)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.times.append(time.perf_counter() - self._t0)


class HookClock:
    """Wall time spent inside a callback's hooks (wrapped per instance; Lightning looks hooks up by name)."""

    HOOKS = ("on_train_epoch_start", "on_train_batch_end", "on_train_epoch_end", "on_validation_epoch_end")

    def __init__(self, callback: pl.Callback) -> None:
        self.seconds = 0.0
        for name in self.HOOKS:
            setattr(callback, name, self._wrap(getattr(callback, name)))

    def _wrap(self, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        return timed


def run(data: TensorDataset, epochs: int, callbacks: list[pl.Callback], root: Path) -> list[float]:
    torch.manual_seed(0)
    model = MLP()
    loader = DataLoader(IndexedDataset(data), batch_size=256, shuffle=True)
    timer = EpochTimer()
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        callbacks=[*callbacks, timer],
    )
    trainer.fit(model, loader)
    return timer.times


def bare_inference(model: torch.nn.Module, data: TensorDataset, batch_size: int = 256) -> float:
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    t0 = time.perf_counter()
    model.eval()
    with torch.inference_mode():
        for x, _ in loader:
            model(x)
    model.train()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--probe", type=int, default=10_000)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = synthetic(args.samples)
    root = Path(tempfile.mkdtemp(prefix="bench-traj-"))

    bare: list[float] = []
    tracked: list[float] = []
    hook_share: list[float] = []  # time inside the tracker's hooks / the rest of the epoch
    paired: list[float] = []  # per repetition: tracked / bare of back-to-back runs (robust to load drift)
    bytes_disk = bytes_mem = 0.0
    for rep in range(args.reps):
        order = ("bare", "tracked") if rep % 2 == 0 else ("tracked", "bare")
        for kind in order:
            if kind == "bare":
                bare_rep = run(data, args.epochs, [], root)[1:]  # first epoch is warm-up
                bare += bare_rep
            else:
                tracker = LossTrajectoryTracker(run_dir=root / f"step{rep}", correct_key=None)
                clock = HookClock(tracker)
                times = run(data, args.epochs, [tracker], root)
                tracked_rep = times[1:]  # first epoch is warm-up
                tracked += tracked_rep
                # time inside the tracker's hooks over the rest of the epochs' time (all epochs)
                hook_share.append(clock.seconds / (sum(times) - clock.seconds))
                store = tracker.store
                assert store is not None
                bytes_disk = store.epoch_path(0).stat().st_size / store.num_samples
                bytes_mem = store.nbytes_in_memory / (store.num_samples * store.num_epochs)
        paired.append(statistics.median(tracked_rep) / statistics.median(bare_rep))
    step_ratio = statistics.median(tracked) / statistics.median(bare)

    # probe mode: one probe evaluation (inside a real fit, so logging works) vs one bare inference
    # pass over the same probe set, both at every epoch end; the first epoch is warm-up
    probe = synthetic(args.probe, seed=1)
    tracker = LossTrajectoryTracker(source="probe", probe_dataset=probe, run_dir=root / "probe", name="probe")
    probe_t: list[float] = []
    infer_t: list[float] = []
    timed = tracker.on_memorisation_epoch_end

    def timed_epoch_end(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        t0 = time.perf_counter()
        timed(trainer, pl_module)
        probe_t.append(time.perf_counter() - t0)

    tracker.on_memorisation_epoch_end = timed_epoch_end  # type: ignore[method-assign]

    class BareInference(pl.Callback):
        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            infer_t.append(bare_inference(pl_module, probe))

    pl.Trainer(
        max_epochs=2 * args.reps + 1,
        limit_train_batches=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[tracker, BareInference()],
    ).fit(MLP(), DataLoader(IndexedDataset(data), batch_size=256))
    probe_t, infer_t = probe_t[1:], infer_t[1:]
    probe_ratio = statistics.median(probe_t) / statistics.median(infer_t)

    result = {
        "step_epoch_ratio_median": round(step_ratio, 4),
        "step_epoch_ratio_paired_median": round(statistics.median(paired), 4),
        "step_epoch_ratio_paired": [round(r, 3) for r in paired],
        "step_ratio_from_hook_time_median": round(1 + statistics.median(hook_share), 4),
        "bare_epoch_s_median": round(statistics.median(bare), 4),
        "tracked_epoch_s_median": round(statistics.median(tracked), 4),
        "epochs_timed_each": len(bare),
        "store_bytes_per_sample_epoch_disk": round(bytes_disk, 4),
        "store_bytes_per_sample_epoch_memory": round(bytes_mem, 4),
        "probe_ratio_median": round(probe_ratio, 4),
        "probe_eval_s_median": round(statistics.median(probe_t), 4),
        "bare_inference_s_median": round(statistics.median(infer_t), 4),
        "samples": args.samples,
        "probe_samples": args.probe,
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
