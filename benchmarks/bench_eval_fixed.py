"""The fixed cost of one evaluation, per monitor (a benchmark, not a test).

For each monitor, inside a real ``Trainer.fit`` (one training batch per epoch, one evaluation per
epoch), the evaluation's wall time (``on_train_epoch_end``: measure, metrics, ``log_dict``,
run-directory hand-off, records, the wait for the writer) is split into

* the probe loop: data loading and the forward passes over the probes
  (``memcallbacks.callbacks.probes.evaluate_sample_losses``, timed from outside);
* the fixed cost: everything else (resolution, metrics, logging, files, records), by phase;

and set against a bare inference pass over the same probes in the same epoch (a loop of
``F.cross_entropy(model(x), y, reduction="none")`` under ``torch.inference_mode()``, same
DataLoader and batch size). Target (issue 29): fixed / bare <= 0.05 over 10,000 probes for the
trajectory probe source and the membership monitor.

Beside them, in the same epoch of the same fit, Lightning's own floor: ``pl_module.log_dict`` of
as many float keys as the monitor logged, from a callback that runs right after it (first epoch:
the keys are created; later epochs: updated). ``ours`` is the fixed cost minus that floor (and
minus the trajectory attack's model fit, a measurement of its own, reported apart): what
memcallbacks adds beyond one ``log_dict`` call. ``background`` is the writer thread's wall and CPU
time per evaluation (run-directory files), which overlaps training and is not in the fixed cost;
the benchmark waits for it (untimed) before the floor and the bare pass, so that neither shares
the CPU with it, and reports ``ours`` plus the writer's CPU as the figure for a machine with no
core to spare. No W&B/TensorBoard/MLflow logger is attached, so no records are built
(``records`` reads 0).

Monitors: ``LossTrajectoryTracker(source="probe")`` over 10,000 probes, and
``MembershipInferenceMonitor`` with 5,000 members + 5,000 non-members (``trajectory_attack`` off
and on: the attack's cost grows with the evaluations). The first evaluation (first-call costs,
probe resolution, key creation) is reported apart; the figures are medians of the later ones.

Run (about 1 minute on 2 cores):
    python benchmarks/bench_eval_fixed.py --out /tmp/eval_fixed.json
Small:
    python benchmarks/bench_eval_fixed.py --probes 2000 --evals 3
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from bench_common import environment, finish, quiet, quiet_trainer, synthetic
from torch.utils.data import DataLoader, Subset

from memcallbacks import LossTrajectoryTracker, MembershipInferenceMonitor
from memcallbacks.callbacks import probes

_PHASES = ("measure", "metrics", "log_metrics", "write_files", "records", "flush")
_ATTACK = "_trajectory_scores"  # the membership monitor's trajectory attack (fit and scores)


class MLP(pl.LightningModule):
    def __init__(self, dim: int = 32, hidden: int = 256, classes: int = 10) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def timed_monitor(cls: type) -> type:
    """``cls`` with ``on_train_epoch_end`` and each phase of the evaluation cycle timed per epoch."""

    def wrapper(name: str) -> Any:
        base = getattr(cls, name)

        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return base(self, *args, **kwargs)
            finally:
                self.phase_times[-1][name] += time.perf_counter() - t0

        return method

    def epoch_end(self: Any, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.phase_times.append(collections.defaultdict(float))
        t0, loop0 = time.perf_counter(), PROBE_LOOP.seconds
        cls.on_train_epoch_end(self, trainer, pl_module)
        self.phase_times[-1]["total"] = time.perf_counter() - t0
        self.phase_times[-1]["loop"] = PROBE_LOOP.seconds - loop0

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        cls.__init__(self, *args, **kwargs)
        self.phase_times = []
        # evaluation index -> writer-thread seconds, wall and CPU
        self.background = collections.defaultdict(float)
        self.background_cpu = collections.defaultdict(float)

    def write_in_background(self: Any, fn: Any, *args: Any, **kwargs: Any) -> None:
        index = len(self.phase_times) - 1

        def timed(*a: Any, **k: Any) -> Any:
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                self.background[index] += time.perf_counter() - t0
                self.background_cpu[index] += time.thread_time() - c0

        cls.write_in_background(self, timed, *args, **kwargs)

    phases = _PHASES + ((_ATTACK,) if hasattr(cls, _ATTACK) else ())
    namespace: dict[str, Any] = {name: wrapper(name) for name in phases}
    namespace.update(on_train_epoch_end=epoch_end, __init__=init, write_in_background=write_in_background)
    return type(f"Timed{cls.__name__}", (cls,), namespace)


class BareInference(pl.Callback):
    """One bare inference pass over ``probe`` at every epoch end (after the monitor)."""

    def __init__(self, probe: Any, batch_size: int) -> None:
        self.probe, self.batch_size, self.times = probe, batch_size, []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        t0 = time.perf_counter()
        pl_module.eval()
        with torch.inference_mode():
            for x, y in DataLoader(self.probe, batch_size=self.batch_size):
                F.cross_entropy(pl_module(x), y, reduction="none")
        pl_module.train()
        self.times.append(time.perf_counter() - t0)


class Settle(pl.Callback):
    """Waits (untimed) for the monitor's background writes, so the next callbacks run alone."""

    def __init__(self, monitor: Any) -> None:
        self.monitor = monitor

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        type(self.monitor).__mro__[1].flush(self.monitor)  # not the timed `flush` phase


class LogFloor(pl.Callback):
    """Lightning's floor: ``pl_module.log_dict`` of as many float values as ``monitor`` logged, each epoch end."""

    def __init__(self, monitor: Any) -> None:
        self.monitor, self.keys, self.times = monitor, 0, []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.keys = len(self.monitor.history[-1]) - 2  # the row holds epoch, step and the logged keys
        values = {f"bench/key{i}": float(i) for i in range(self.keys)}
        t0 = time.perf_counter()
        pl_module.log_dict(values, on_step=False, on_epoch=True, sync_dist=False, add_dataloader_idx=False)
        self.times.append(time.perf_counter() - t0)


class _ProbeLoopClock:
    """Adds the wall time of every ``probes.evaluate_sample_losses`` call to ``seconds`` while active."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._original = probes.evaluate_sample_losses

    def __enter__(self) -> _ProbeLoopClock:
        original = self._original

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        probes.evaluate_sample_losses = timed  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: Any) -> None:
        probes.evaluate_sample_losses = self._original  # type: ignore[assignment]


PROBE_LOOP = _ProbeLoopClock()


def run_monitor(label: str, make: Any, probe: Any, *, evals: int, batch: int, root: Path) -> dict[str, Any]:
    """One fit with ``make(root)`` (a timed monitor), then per epoch the log floor and a bare inference pass."""
    monitor = make(root)
    floor = LogFloor(monitor)
    bare = BareInference(probe, batch)
    trainer = quiet_trainer(
        tempfile.mkdtemp(prefix="fit-", dir=root),
        max_epochs=evals + 1,
        limit_train_batches=1,
        callbacks=[monitor, Settle(monitor), floor, bare],
    )
    with PROBE_LOOP:
        trainer.fit(MLP(), DataLoader(synthetic(1024, seed=2), batch_size=256))
    rows = []
    for i, (times, floor_s, bare_s) in enumerate(zip(monitor.phase_times, floor.times, bare.times)):
        fixed = times["total"] - times["loop"]
        ours = fixed - floor_s - times.get(_ATTACK, 0.0)
        rows.append({**times, "fixed": fixed, "floor": floor_s, "ours": ours, "bare": bare_s})
        rows[-1]["background"] = monitor.background.get(i, 0.0)
        rows[-1]["background_cpu"] = monitor.background_cpu.get(i, 0.0)
        rows[-1]["ours_and_writer_cpu"] = ours + rows[-1]["background_cpu"]
    med = statistics.median
    later = rows[1:] or rows
    phases = {p: round(1000 * med(r.get(p, 0.0) for r in later), 2) for p in (*_PHASES, _ATTACK)}
    phases["measure_minus_loop"] = round(1000 * med(r["measure"] - r["loop"] for r in later), 2)
    return {
        "monitor": label,
        "probes": len(probe),
        "keys_logged": floor.keys,
        "bare_ms": round(1000 * med(r["bare"] for r in later), 2),
        "eval_ms": round(1000 * med(r["total"] for r in later), 2),
        "loop_ms": round(1000 * med(r["loop"] for r in later), 2),
        "fixed_ms": round(1000 * med(r["fixed"] for r in later), 2),
        "log_dict_floor_ms": round(1000 * med(r["floor"] for r in later), 2),
        "ours_ms": round(1000 * med(r["ours"] for r in later), 2),
        "background_ms": round(1000 * med(r["background"] for r in later), 2),
        "background_cpu_ms": round(1000 * med(r["background_cpu"] for r in later), 2),
        "eval_over_bare": round(med(r["total"] / r["bare"] for r in later), 4),
        "fixed_over_bare": round(med(r["fixed"] / r["bare"] for r in later), 4),
        "ours_over_bare": round(med(r["ours"] / r["bare"] for r in later), 4),
        "ours_and_writer_cpu_over_bare": round(med(r["ours_and_writer_cpu"] / r["bare"] for r in later), 4),
        "phases_ms": phases,
        "first_eval": {k: round(1000 * rows[0][k], 2) for k in ("total", "loop", "fixed", "floor", "bare")},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probes", type=int, default=10_000, help="probe samples per monitor")
    parser.add_argument("--evals", type=int, default=5, help="evaluations after the first (median)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON result here")
    args = parser.parse_args(argv)
    quiet(args.threads)
    root = Path(tempfile.mkdtemp(prefix="bench-eval-fixed-"))
    probe = synthetic(args.probes, seed=1)
    half = args.probes // 2
    train = synthetic(half, seed=4)
    held_out = Subset(probe, range(half))
    tracker_cls, membership_cls = (
        timed_monitor(LossTrajectoryTracker),
        timed_monitor(MembershipInferenceMonitor),
    )
    monitors = {
        "trajectory_probe": (
            lambda r: tracker_cls(source="probe", probe_dataset=probe, run_dir=r / "t"),
            probe,
        ),
        "membership": (
            lambda r: membership_cls(train, held_out, trajectory_attack=False, run_dir=r / "m"),
            torch.utils.data.ConcatDataset([train, held_out]),
        ),
        "membership_traj_attack": (
            lambda r: membership_cls(train, held_out, run_dir=r / "mt"),
            torch.utils.data.ConcatDataset([train, held_out]),
        ),
    }
    results: dict[str, Any] = {
        name: run_monitor(name, make, data, evals=args.evals, batch=args.batch, root=root)
        for name, (make, data) in monitors.items()
    }
    results["env"] = environment()
    finish(results, root, args.out)
    return results


if __name__ == "__main__":
    main()
