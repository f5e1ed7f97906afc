"""Scale: 1,000,000 samples x 20 epochs through TrajectoryStore with an 8 MB budget (issue 8, item 5).

Peak traced memory (numpy allocations are traced by tracemalloc) must stay within the budget
plus O(N) -- in particular it must not grow with the number of epochs -- and the streamed
statistics must equal the in-memory computation on the full matrix.

Measured here: the O(N) term is about 150 bytes per sample, almost all of it the streaming
accumulator of :mod:`memcallbacks.metrics.dynamics` (ten float64/int64 arrays, 81 B) and the
temporaries of its update (fancy-indexed copies); the float16 epochs themselves go to disk.
``benchmarks/bench_scale.py`` measures the same at 10**7 samples.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from memcallbacks.data.store import TrajectoryStore
from memcallbacks.metrics.dynamics import trajectory_statistics

N = 1_000_000
EPOCHS = 20
BUDGET = 8 * 2**20
BYTES_PER_SAMPLE = 200  # O(N) allowance; measured ~150 (see the module docstring)


def epoch_column(n: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic per-sample losses (1% unvisited) and correctness of one epoch, reproducible."""
    rng = np.random.default_rng(epoch)
    losses = (rng.random(n, dtype=np.float32) * 3.0) * np.float32(0.9**epoch)
    losses[rng.integers(0, n, n // 100)] = np.nan
    correct = losses < 1.0
    return losses, correct


def fill(store: TrajectoryStore, epochs: int) -> int:
    """Append ``epochs`` epochs under tracemalloc; returns the peak traced bytes."""
    tracemalloc.start()
    try:
        for e in range(epochs):
            losses, correct = epoch_column(store.num_samples, e)
            store.append(losses, correct)
            del losses, correct
        store.statistics()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_million_samples_twenty_epochs_within_budget(tmp_path: Path) -> None:
    short = TrajectoryStore(N, directory=tmp_path / "short", memory_budget_bytes=BUDGET)
    peak_short = fill(short, 2)
    del short

    store = TrajectoryStore(N, directory=tmp_path / "long", memory_budget_bytes=BUDGET)
    peak = fill(store, EPOCHS)
    assert store.on_disk
    assert store.nbytes_in_memory == 0
    assert peak < BUDGET + BYTES_PER_SAMPLE * N, f"peak {peak / 2**20:.1f} MiB"
    # O(N), not O(N x E): 20 epochs peak no higher than 2 epochs (+ 5%)
    assert peak <= peak_short * 1.05 + 2**20, (peak, peak_short)
    files = sorted(p.name for p in (tmp_path / "long").iterdir() if p.name.startswith("epoch_"))
    assert files == [f"epoch_{j:04d}.npy" for j in range(EPOCHS)]

    stats = store.statistics()
    matrix = store.matrix()  # float16 [N, E], read back from disk
    correct = store.correct_matrix()
    reference = trajectory_statistics(matrix, correct)
    for field in ("count", "forgetting_events", "learned_epoch", "correctness"):
        np.testing.assert_array_equal(getattr(stats, field), getattr(reference, field), err_msg=field)
    for field in ("mean", "std", "last", "min", "confidence", "variability"):
        np.testing.assert_allclose(getattr(stats, field), getattr(reference, field), rtol=1e-9, atol=1e-12)
    del matrix, reference

    # against the original float32 values: float16 storage tolerance (relative 2**-11)
    rows = np.random.default_rng(1).choice(N, 20_000, replace=False)
    original = np.stack([epoch_column(N, e)[0][rows] for e in range(EPOCHS)], axis=1)
    exact = trajectory_statistics(original.astype(np.float64))
    np.testing.assert_array_equal(stats.count[rows], exact.count)
    np.testing.assert_allclose(stats.mean[rows], exact.mean, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(stats.last[rows], exact.last, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(stats.std[rows], exact.std, rtol=1e-2, atol=1e-3)
