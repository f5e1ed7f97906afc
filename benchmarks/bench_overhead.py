"""End-to-end cost of step capture (LossTrajectoryTracker) against a bare Trainer (a benchmark, not a test).

Every figure is a ratio of END-TO-END ``trainer.fit`` wall times (set-up, every epoch, epoch ends,
teardown and the run-directory writes that fit waits for) to a bare Trainer on the raw dataset;
beside them, the same ratios of the process's CPU seconds, which other jobs on a shared machine
disturb less.
The configurations run interleaved in one process (their order rotates every repetition, so load
drift on a shared machine hits all of them alike); each ratio is the median fit time of a
configuration over the median fit time of ``raw``; beside it the paired ratio, the median over
repetitions of each configuration's fit time over the ``raw`` fit of the same repetition (the runs
of one repetition are seconds apart, so slow drift of a shared machine cancels in the pair):

``raw``
    ``DataLoader(TensorDataset)``, ``training_step`` returns ``F.cross_entropy(logits, y)``: what a
    user has before adding memcallbacks.
``indexed``
    ``DataLoader(IndexedDataset(...))`` and the step-capture ``training_step`` (per-sample losses,
    ``{"loss", "sample_loss", "sample_index"}``), no callback.
``noop``
    ``indexed`` plus a callback whose ``on_train_batch_end`` does nothing: Lightning's own floor for
    any per-step callback.
``tracker``
    ``indexed`` plus ``LossTrajectoryTracker()`` (step source, float16 store in the run directory).

Two models: the MLP of the issue (32-256-10, 200,000 samples, batch 256, 2 epochs, median of 7;
targets tracker/raw <= 1.05) and a wide MLP whose training step takes >= 10 ms (the printed
``step_ms`` says how long it took; target tracker/raw <= 1.02). Also printed: bytes per
sample-epoch of the float16 store, and (``--probe``) the probe source's epoch-end evaluation over
one bare inference pass.

Run (full size, about 10-15 minutes on 2 quiet cores):
    python benchmarks/bench_overhead.py --out benchmarks/overhead.json
Small (a smoke run):
    python benchmarks/bench_overhead.py --samples 50000 --reps 3 --wide-samples 8192 --wide-reps 3 --probe 2000
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from memcallbacks import IndexedDataset, LossTrajectoryTracker, split_index

CONFIGS = ("raw", "indexed", "noop", "tracker")


def synthetic(n: int, dim: int = 32, classes: int = 10, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + 1.5 * torch.randn(n, dim, generator=g)
    return TensorDataset(x, y)


class MLP(pl.LightningModule):
    """``dim``-``hidden`` x ``layers``-``classes`` MLP; ``capture`` selects the step-capture training_step."""

    def __init__(
        self, dim: int = 32, hidden: int = 256, classes: int = 10, layers: int = 1, capture: bool = True
    ):
        super().__init__()
        blocks: list[torch.nn.Module] = []
        width = dim
        for _ in range(layers):
            blocks += [torch.nn.Linear(width, hidden), torch.nn.ReLU()]
            width = hidden
        self.net = torch.nn.Sequential(*blocks, torch.nn.Linear(width, classes))
        self.capture = capture

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if not self.capture:  # the user's code before memcallbacks
            x, y = batch
            return F.cross_entropy(self(x), y)
        index, (x, y) = split_index(batch)
        per_sample = F.cross_entropy(self(x), y, reduction="none")
        return {"loss": per_sample.mean(), "sample_loss": per_sample.detach(), "sample_index": index}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class NoOp(pl.Callback):
    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        pass


class StepClock(pl.Callback):
    """Median wall time of a training batch (start of the batch to the end of the last hook)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, *args: Any, **kwargs: Any) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.times.append(time.perf_counter() - self._t0)


def fit_once(
    config: str, data: TensorDataset, model_kw: dict[str, Any], epochs: int, batch: int, root: Path
) -> tuple[float, float, Any]:
    torch.manual_seed(0)
    model = MLP(capture=config != "raw", **model_kw)
    dataset = data if config == "raw" else IndexedDataset(data)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True)
    callbacks: list[pl.Callback] = []
    tracker = None
    if config == "noop":
        callbacks.append(NoOp())
    elif config == "tracker":
        tracker = LossTrajectoryTracker(run_dir=root / f"run{time.monotonic_ns()}")
        callbacks.append(tracker)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        callbacks=callbacks,
    )
    gc.collect()  # garbage of the previous fit is not charged to this one
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.fit(model, loader)
    return time.perf_counter() - t0, time.process_time() - c0, tracker


def compare(
    label: str,
    data: TensorDataset,
    model_kw: dict[str, Any],
    *,
    epochs: int,
    batch: int,
    reps: int,
    root: Path,
) -> dict[str, Any]:
    times: dict[str, list[float]] = {c: [] for c in CONFIGS}
    cpu: dict[str, list[float]] = {c: [] for c in CONFIGS}
    fit_once("indexed", data, model_kw, 1, batch, root)  # warm-up (imports, allocator, caches)
    tracker = None
    for rep in range(reps):
        shift = rep % len(CONFIGS)
        for config in CONFIGS[shift:] + CONFIGS[:shift]:
            seconds, cpu_seconds, tr = fit_once(config, data, model_kw, epochs, batch, root)
            times[config].append(seconds)
            cpu[config].append(cpu_seconds)
            tracker = tr or tracker
    raw = statistics.median(times["raw"])
    clock = StepClock()  # one short extra run for the step time of this model
    torch.manual_seed(0)
    pl.Trainer(
        max_epochs=1,
        limit_train_batches=20,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        callbacks=[clock],
    ).fit(MLP(capture=False, **model_kw), DataLoader(data, batch_size=batch, shuffle=True))
    out: dict[str, Any] = {
        "model": label,
        "samples": len(data),
        "batch": batch,
        "epochs": epochs,
        "reps": reps,
        "step_ms_median": round(1000 * statistics.median(clock.times[5:] or clock.times), 2),
        "fit_s_median": {c: round(statistics.median(v), 3) for c, v in times.items()},
        "ratio_vs_raw": {c: round(statistics.median(v) / raw, 4) for c, v in times.items()},
        "paired_ratio_vs_raw": {
            c: round(statistics.median(t / r for t, r in zip(v, times["raw"])), 4) for c, v in times.items()
        },
        "tracker_vs_noop": round(statistics.median(times["tracker"]) / statistics.median(times["noop"]), 4),
        # CPU seconds of this process (all its threads): less sensitive to other jobs on a shared machine
        "cpu_s_median": {c: round(statistics.median(v), 3) for c, v in cpu.items()},
        "cpu_ratio_vs_raw": {
            c: round(statistics.median(v) / statistics.median(cpu["raw"]), 4) for c, v in cpu.items()
        },
        "ratio_vs_raw_per_rep": {
            c: [round(t / r, 3) for t, r in zip(v, times["raw"])] for c, v in times.items() if c != "raw"
        },
    }
    if tracker is not None and tracker.store is not None:
        store = tracker.store
        out["store_bytes_per_sample_epoch_disk"] = round(
            store.epoch_path(0).stat().st_size / store.num_samples, 4
        )
        out["store_bytes_per_sample_epoch_memory"] = round(
            store.nbytes_in_memory / (store.num_samples * store.num_epochs), 4
        )
    return out


def probe_ratio(data: TensorDataset, probe_n: int, reps: int, root: Path) -> dict[str, Any]:
    """The probe source's epoch-end evaluation (gather, store, statistics) over one bare inference pass."""
    probe = synthetic(probe_n, seed=1)
    tracker = LossTrajectoryTracker(source="probe", probe_dataset=probe, run_dir=root / "probe", name="probe")
    probe_t: list[float] = []
    infer_t: list[float] = []
    inner = tracker.on_memorisation_epoch_end

    def timed(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        t0 = time.perf_counter()
        inner(trainer, pl_module)
        probe_t.append(time.perf_counter() - t0)

    tracker.on_memorisation_epoch_end = timed  # type: ignore[method-assign]

    class BareInference(pl.Callback):
        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            t0 = time.perf_counter()
            pl_module.eval()
            with torch.inference_mode():
                for x, _ in DataLoader(probe, batch_size=256):
                    pl_module(x)
            pl_module.train()
            infer_t.append(time.perf_counter() - t0)

    pl.Trainer(
        max_epochs=2 * reps + 1,
        limit_train_batches=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        callbacks=[tracker, BareInference()],
    ).fit(MLP(), DataLoader(IndexedDataset(data), batch_size=256))
    return {
        "probe_samples": probe_n,
        "probe_ratio_median": round(statistics.median(probe_t[1:]) / statistics.median(infer_t[1:]), 4),
        "probe_eval_s_median": round(statistics.median(probe_t[1:]), 4),
        "bare_inference_s_median": round(statistics.median(infer_t[1:]), 4),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=200_000, help="MLP 32-256-10 training samples")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--reps", type=int, default=7, help="interleaved repetitions (median)")
    parser.add_argument("--wide-samples", type=int, default=32768, help="samples for the >= 10 ms-step model")
    parser.add_argument("--wide-hidden", type=int, default=1024)
    parser.add_argument("--wide-reps", type=int, default=5)
    parser.add_argument("--probe", type=int, default=10_000, help="probe samples (0 skips the probe ratio)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON result here")
    args = parser.parse_args(argv)
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)  # keep stdout to the JSON result
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    results: dict[str, Any] = {
        "mlp": compare(
            "MLP 32-256-10",
            synthetic(args.samples),
            {"hidden": 256},
            epochs=args.epochs,
            batch=args.batch,
            reps=args.reps,
            root=root,
        ),
        "wide": compare(
            f"MLP 32-{args.wide_hidden}x3-10",
            synthetic(args.wide_samples),
            {"hidden": args.wide_hidden, "layers": 3},
            epochs=args.epochs,
            batch=args.batch,
            reps=args.wide_reps,
            root=root,
        ),
    }
    if args.probe:
        results["probe"] = probe_ratio(synthetic(4096), args.probe, 3, root)
    results["env"] = {
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return results


if __name__ == "__main__":
    main()
