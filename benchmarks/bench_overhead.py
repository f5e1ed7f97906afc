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
``noop_again``
    ``noop`` once more, an A/A control: ``noop_again/noop`` should read 1, and how far it strays is
    the noise floor of this run. A tracker ratio closer to 1 than that cannot be told from noise.

What a user runs, as the independent harness ``../shared/bench/step_capture_overhead.py`` does:
torch's default intra-op threads (``--threads 0``; this benchmark used to pin 1 thread, which
leaves the second core of a 2-core machine free for the tracker's writer thread and the kernel's
write-back), the tracker's default run directory (``<default_root_dir>/memcallbacks``, a fresh
``default_root_dir`` per fit), every configuration (the tracker included) warmed up once before
timing. The run directories are deleted at the end.

On a shared 2-core machine the per-repetition ratios spread by +-30%, more than the effect: read
the end-to-end ratios together with the diagnosis, which does not move with machine load
(``--diagnose N``, 3 pairs by default, 0 skips): extra fits with timed subclasses of the no-op
callback and of the tracker, giving the CPU microseconds per step of each ``on_train_batch_end``
(the same timing wrapper on both, so their difference is the tracker's own per-step cost), the
tracker's fixed per-fit cost (set-up, epoch ends, fit end, teardown; wall and main-thread CPU),
the writer thread's CPU, counts of work per fit (threads started, ``fsync`` calls, files in
the run directory), and the median microseconds of one ``on_train_batch_end`` call right after a
real training step (:func:`hook_call_us`).

Two models: the MLP of the issue (32-256-10, 200,000 samples, batch 256, 2 epochs, median of 7;
targets tracker/raw <= 1.05) and a wide MLP whose training step takes >= 10 ms (the printed
``step_ms`` says how long it took; target tracker/raw <= 1.02). Also printed: bytes per
sample-epoch of the float16 store, and (``--probe``) the probe source's epoch-end evaluation over
one bare inference pass.

Run (full size, about 10-15 minutes on 2 quiet cores):
    python benchmarks/bench_overhead.py --out benchmarks/overhead.json
The MLP alone with its diagnosis (about 2 minutes):
    python benchmarks/bench_overhead.py --reps 5 --wide-samples 0 --probe 0 --diagnose 2
Small (a smoke run):
    python benchmarks/bench_overhead.py --samples 50000 --reps 3 --wide-samples 8192 --wide-reps 3 --probe 2000
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from bench_common import environment, finish, quiet, quiet_trainer, synthetic
from torch.utils.data import DataLoader, TensorDataset

from memcallbacks import IndexedDataset, LossTrajectoryTracker, rundir, split_index

CONFIGS = ("raw", "indexed", "noop", "tracker", "noop_again")


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
    if config in ("noop", "noop_again"):
        callbacks.append(NoOp())
    elif config == "tracker":
        tracker = LossTrajectoryTracker()  # the default run directory, as a user has it
        callbacks.append(tracker)
    trainer = quiet_trainer(
        tempfile.mkdtemp(prefix="fit-", dir=root),
        max_epochs=epochs,
        devices=1,
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
    for config in CONFIGS:  # warm-up of every configuration (imports, first-call costs, allocator, caches)
        fit_once(config, data, model_kw, 1, batch, root)
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
    quiet_trainer(
        root,
        max_epochs=1,
        limit_train_batches=20,
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
        "paired_tracker_vs_noop": round(
            statistics.median(t / n for t, n in zip(times["tracker"], times["noop"])), 4
        ),
        # the A/A control: two identical configurations; how far this is from 1 is the noise floor
        "noop_again_vs_noop": round(
            statistics.median(times["noop_again"]) / statistics.median(times["noop"]), 4
        ),
        "paired_noop_again_vs_noop": round(
            statistics.median(a / n for a, n in zip(times["noop_again"], times["noop"])), 4
        ),
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


_HOOKS = (
    "setup",
    "on_fit_start",
    "on_train_start",
    "on_train_epoch_start",
    "on_train_batch_end",
    "on_train_epoch_end",
    "on_train_end",
    "on_fit_end",
    "teardown",
)
_PHASES = {
    "set-up": ("setup", "on_fit_start", "on_train_start"),
    "epoch ends": ("on_train_epoch_start", "on_train_epoch_end"),
    "fit end": ("on_train_end", "on_fit_end", "teardown"),
}


def timed_class(cls: type) -> type:
    """A subclass of callback class ``cls`` whose Lightning hooks add their wall and thread-CPU seconds
    to ``self.timings[hook] = [wall, cpu, calls]`` (class-level wrappers: the base's ``setup`` drops
    instance attributes named like hooks)."""

    def wrapper(name: str) -> Any:
        base = getattr(cls, name)

        def hook(self: Any, *args: Any, **kwargs: Any) -> Any:
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return base(self, *args, **kwargs)
            finally:
                row = self.timings[name]
                row[0] += time.perf_counter() - t0
                row[1] += time.thread_time() - c0
                row[2] += 1

        return hook

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        cls.__init__(self, *args, **kwargs)
        self.timings = collections.defaultdict(lambda: [0.0, 0.0, 0])

    namespace: dict[str, Any] = {name: wrapper(name) for name in _HOOKS if hasattr(cls, name)}
    return type(f"Timed{cls.__name__}", (cls,), {"__init__": init, **namespace})


class _WorkCounter:
    """Counts, while active, ``os.fsync`` calls, threads started and the CPU seconds of the tracker's
    background summary writes (measured on the writer thread)."""

    def __init__(self) -> None:
        self.fsyncs = 0
        self.threads = 0
        self.writer_cpu = 0.0
        self._saved: list[tuple[Any, str, Any]] = []

    def _patch(self, owner: Any, name: str, make: Any) -> None:
        original = getattr(owner, name)
        self._saved.append((owner, name, original))
        setattr(owner, name, make(original))

    def __enter__(self) -> _WorkCounter:
        def counting_fsync(original: Any) -> Any:
            def fsync(fd: Any) -> None:
                self.fsyncs += 1
                original(fd)

            return fsync

        def counting_start(original: Any) -> Any:
            def start(thread: Any) -> None:
                self.threads += 1
                original(thread)

            return start

        def cpu_timed(original: Any) -> Any:
            def write(*args: Any, **kwargs: Any) -> Any:
                c0 = time.thread_time()
                try:
                    return original(*args, **kwargs)
                finally:
                    self.writer_cpu += time.thread_time() - c0

            return write

        self._patch(os, "fsync", counting_fsync)
        self._patch(threading.Thread, "start", counting_start)
        self._patch(rundir, "write_trajectory_summary", cpu_timed)
        self._patch(rundir, "sync_trajectory_summary", cpu_timed)
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)


def _timed_fit(
    cls: type, data: TensorDataset, model_kw: dict[str, Any], epochs: int, batch: int, root: Path
) -> tuple[Any, float, float, _WorkCounter]:
    torch.manual_seed(0)
    callback = cls()
    trainer = quiet_trainer(
        tempfile.mkdtemp(prefix="diag-", dir=root),
        max_epochs=epochs,
        devices=1,
        callbacks=[callback],
    )
    loader = DataLoader(IndexedDataset(data), batch_size=batch, shuffle=True)
    gc.collect()
    with _WorkCounter() as work:
        t0, c0 = time.perf_counter(), time.thread_time()
        trainer.fit(MLP(**model_kw), loader)
        wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    return callback, wall, cpu, work


def diagnose(
    data: TensorDataset, model_kw: dict[str, Any], *, epochs: int, batch: int, reps: int, root: Path
) -> dict[str, Any]:
    """Hook time of the tracker against the no-op callback inside real fits (medians over ``reps`` pairs).

    The figures that do not move with load: CPU microseconds per step of each ``on_train_batch_end``
    (same wrapper on both), the tracker's fixed cost per fit by phase, the writer thread's CPU and
    counts of work. Hook wall time includes waits (``fsync``, the writer's flush) and, on a loaded
    machine, time the process was not scheduled.
    """
    noop_cls, tracker_cls = timed_class(NoOp), timed_class(LossTrajectoryTracker)
    per_step: dict[str, list[float]] = {"noop": [], "tracker": []}
    phases: dict[str, list[tuple[float, float]]] = {p: [] for p in _PHASES}
    fit_wall: list[float] = []
    fit_cpu: list[float] = []
    counts: dict[str, list[float]] = {"fsyncs": [], "threads_started": [], "files": [], "writer_cpu_ms": []}
    for _ in range(reps):
        noop, *_unused = _timed_fit(noop_cls, data, model_kw, epochs, batch, root)
        tracker, wall, cpu, work = _timed_fit(tracker_cls, data, model_kw, epochs, batch, root)
        for name, cb in (("noop", noop), ("tracker", tracker)):
            _, step_cpu, steps = cb.timings["on_train_batch_end"]
            per_step[name].append(1e6 * step_cpu / max(steps, 1))
        for phase, hooks in _PHASES.items():
            rows = [tracker.timings[h] for h in hooks if h in tracker.timings]
            phases[phase].append((sum(r[0] for r in rows), sum(r[1] for r in rows)))
        fit_wall.append(wall)
        fit_cpu.append(cpu)
        counts["fsyncs"].append(work.fsyncs)
        counts["threads_started"].append(work.threads)
        counts["files"].append(sum(1 for p in tracker.run_dir.rglob("*") if p.is_file()))
        counts["writer_cpu_ms"].append(1000 * work.writer_cpu)
    med = statistics.median
    fixed_wall = sum(med(w for w, _ in v) for v in phases.values())
    fixed_cpu = sum(med(c for _, c in v) for v in phases.values())
    step_cost = med(t - n for t, n in zip(per_step["tracker"], per_step["noop"]))
    steps = len(data) // batch + (len(data) % batch > 0)
    return {
        "reps": reps,
        "step_cpu_us": {k: round(med(v), 2) for k, v in per_step.items()},
        "tracker_minus_noop_step_cpu_us": round(step_cost, 2),
        "fixed_per_fit_ms": {
            p: {"wall": round(1000 * med(w for w, _ in v), 1), "cpu": round(1000 * med(c for _, c in v), 1)}
            for p, v in phases.items()
        },
        "fixed_wall_ms": round(1000 * fixed_wall, 1),
        "fixed_cpu_ms": round(1000 * fixed_cpu, 1),
        "tracker_fit_wall_s": round(med(fit_wall), 3),
        "tracker_fit_main_cpu_s": round(med(fit_cpu), 3),
        # the tracker's own cost over its fit: fixed wall plus the per-step difference on every step
        "hook_share_of_fit": round((fixed_wall + 1e-6 * step_cost * steps * epochs) / med(fit_wall), 4),
        "hook_cpu_share_of_fit_cpu": round((fixed_cpu + 1e-6 * step_cost * steps * epochs) / med(fit_cpu), 4),
        "per_fit": {k: med(v) for k, v in counts.items()},
    }


def hook_call_us(calls: int = 1500, rounds: int = 5, batch: int = 256) -> dict[str, float]:
    """Median wall microseconds of one ``on_train_batch_end`` call, no-op and tracker, each call right
    after a real training step of the MLP (caches as a fit leaves them), outside Lightning.

    A per-call median: a call preempted by another job is an outlier, not a shift, so this figure
    holds on a loaded machine."""
    net = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    x, y, index = torch.randn(batch, 32), torch.randint(0, 10, (batch,)), torch.arange(batch)

    def run(callback: pl.Callback) -> float:
        if isinstance(callback, LossTrajectoryTracker):  # as after on_train_epoch_start of a due epoch
            callback._collecting, callback._buffer.checked = True, 0
            callback._buffer.steps.clear()
        hook, times = callback.on_train_batch_end, []
        for i in range(calls):
            per_sample = F.cross_entropy(net(x), y, reduction="none")
            loss = per_sample.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            out = {"loss": loss.detach(), "sample_loss": per_sample.detach(), "sample_index": index}
            t0 = time.perf_counter_ns()
            hook(None, None, out, None, i)  # type: ignore[arg-type]
            times.append(time.perf_counter_ns() - t0)
        return statistics.median(times[10:]) / 1000

    res: dict[str, list[float]] = {"noop": [], "tracker": []}
    for _ in range(rounds):
        res["noop"].append(run(NoOp()))
        res["tracker"].append(run(LossTrajectoryTracker()))
    out = {k: round(statistics.median(v), 2) for k, v in res.items()}
    out["tracker_minus_noop"] = round(out["tracker"] - out["noop"], 2)
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

    quiet_trainer(
        root,
        max_epochs=2 * reps + 1,
        limit_train_batches=1,
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
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: torch's default, what a user has)"
    )
    parser.add_argument(
        "--diagnose",
        type=int,
        default=3,
        help="pairs of timed no-op/tracker fits for the hook diagnosis (0 skips)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON result here")
    args = parser.parse_args(argv)
    quiet(args.threads)
    root = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    mlp_data = synthetic(args.samples)
    results: dict[str, Any] = {
        "mlp": compare(
            "MLP 32-256-10",
            mlp_data,
            {"hidden": 256},
            epochs=args.epochs,
            batch=args.batch,
            reps=args.reps,
            root=root,
        )
    }
    if args.diagnose:
        results["mlp"]["diagnosis"] = diagnose(
            mlp_data, {"hidden": 256}, epochs=args.epochs, batch=args.batch, reps=args.diagnose, root=root
        )
        results["mlp"]["diagnosis"]["hook_call_us_between_steps"] = hook_call_us(batch=args.batch)
    if args.wide_samples and args.wide_reps:
        results["wide"] = compare(
            f"MLP 32-{args.wide_hidden}x3-10",
            synthetic(args.wide_samples),
            {"hidden": args.wide_hidden, "layers": 3},
            epochs=args.epochs,
            batch=args.batch,
            reps=args.wide_reps,
            root=root,
        )
    if args.probe:
        results["probe"] = probe_ratio(synthetic(4096), args.probe, 3, root)
    results["env"] = environment(numpy=np.__version__)
    finish(results, root, args.out)
    return results


if __name__ == "__main__":
    main()
