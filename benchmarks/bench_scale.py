"""TrajectoryStore at scale: N samples x E epochs of synthetic losses with a small memory budget.

Measures wall time, peak tracemalloc (numpy allocations) and peak RSS of appending E epochs
of N per-sample losses (float16 storage spilled to disk beyond the budget) and streaming the
statistics, then checks the statistics against ``trajectory_statistics`` on a random row
sample of the full matrix.

Usage: ``python benchmarks/bench_scale.py [--n 10000000] [--epochs 20] [--budget-mb 8]``
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from memcallbacks.data.store import TrajectoryStore
from memcallbacks.metrics.dynamics import trajectory_statistics


def epoch_column(n: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(epoch)
    losses = (rng.random(n, dtype=np.float32) * 3.0) * np.float32(0.9**epoch)
    losses[rng.integers(0, n, n // 100)] = np.nan
    return losses, losses < 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--budget-mb", type=float, default=8.0)
    parser.add_argument("--no-tracemalloc", action="store_true", help="measure peak RSS without tracing")
    args = parser.parse_args()
    n, epochs, budget = args.n, args.epochs, int(args.budget_mb * 2**20)

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        store = TrajectoryStore(n, directory=Path(tmp), memory_budget_bytes=budget)
        gen_time = 0.0
        if not args.no_tracemalloc:
            tracemalloc.start()
        start = time.perf_counter()
        for e in range(epochs):
            t = time.perf_counter()
            losses, correct = epoch_column(n, e)
            gen_time += time.perf_counter() - t
            store.append(losses, correct)
            del losses, correct
        stats = store.statistics()
        elapsed = time.perf_counter() - start - gen_time
        peak = tracemalloc.get_traced_memory()[1] if tracemalloc.is_tracing() else -1
        tracemalloc.stop()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        disk = sum(p.stat().st_size for p in Path(tmp).iterdir())

        rows = np.random.default_rng(1).choice(n, min(n, 100_000), replace=False)
        t = time.perf_counter()
        stored = store.trajectories(rows)
        check_time = time.perf_counter() - t
        ref = trajectory_statistics(stored.astype(np.float64))
        max_rel = float(np.nanmax(np.abs(stats.mean[rows] - ref.mean) / np.maximum(np.abs(ref.mean), 1e-12)))
        counts_equal = bool(np.array_equal(stats.count[rows], ref.count))

    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, {platform.platform()}")
    print(f"N={n:,} epochs={epochs} budget={budget / 2**20:.0f} MiB on_disk=True")
    print(f"append+stats time (excl. data generation): {elapsed:.1f} s ({elapsed / epochs:.2f} s/epoch)")
    print(f"data generation time: {gen_time:.1f} s")
    if peak >= 0:
        print(f"peak tracemalloc: {peak / 2**20:.0f} MiB = budget + {(peak - budget) / n:.0f} B/sample")
    print(f"peak RSS: {rss / 2**10:.0f} MiB (before the store: {rss0 / 2**10:.0f} MiB)")
    print(f"disk: {disk / 2**20:.0f} MiB ({disk / (n * epochs):.2f} B per sample-epoch)")
    print(
        f"check on {len(rows):,} rows: counts equal {counts_equal}, max rel. diff of mean {max_rel:.1e}, "
        f"row read {check_time:.1f} s"
    )


if __name__ == "__main__":
    main()
