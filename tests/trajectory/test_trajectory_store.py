"""TrajectoryStore: growth by epochs, float16/float32, spill to disk, streamed statistics, state."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from memcallbacks import TrajectoryStore
from memcallbacks.metrics import trajectory_statistics


def _epochs(n: int, e: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    losses = rng.exponential(1.0, size=(n, e))
    losses[rng.random((n, e)) < 0.2] = np.nan  # unvisited
    correct = rng.random((n, e)) < 0.6
    return losses, correct


def _fill(store: TrajectoryStore, losses: np.ndarray, correct: np.ndarray | None = None) -> None:
    for j in range(losses.shape[1]):
        store.append(losses[:, j], None if correct is None else correct[:, j])


def _assert_stats_equal(a, b) -> None:
    for field in (
        "count",
        "mean",
        "std",
        "last",
        "min",
        "confidence",
        "variability",
        "forgetting_events",
        "learned_epoch",
    ):
        x, y = getattr(a, field), getattr(b, field)
        if x is None or y is None:
            assert x is None, field
            assert y is None, field
        else:
            np.testing.assert_array_equal(x, y, err_msg=field)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_matrix_values_nan_and_streamed_statistics(dtype: str) -> None:
    losses, correct = _epochs(50, 6)
    store = TrajectoryStore(50, dtype=dtype)
    _fill(store, losses, correct)
    m = store.matrix()
    assert m.shape == (50, 6)
    assert m.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(np.isnan(m), np.isnan(losses))
    np.testing.assert_allclose(m, losses, rtol=1e-3 if dtype == "float16" else 1e-7)
    np.testing.assert_array_equal(store.correct_matrix(), correct)
    # streamed statistics == batch computation on the stored (rounded) values
    _assert_stats_equal(store.statistics(), trajectory_statistics(m, correct))
    assert store.trajectories([3, 7]).shape == (2, 6)
    np.testing.assert_array_equal(store.trajectories([3])[0], m[3].astype(np.float32))


def test_nonfinite_stored_as_nan_and_overflow_saturates() -> None:
    store = TrajectoryStore(4)
    store.append(np.array([np.inf, -np.inf, 1e6, 0.5]))
    np.testing.assert_array_equal(store.epoch(0)[:2], [np.nan, np.nan])
    assert store.epoch(0)[2] == np.float16(65504)  # float16 max, not inf
    assert store.statistics().count.tolist() == [0, 0, 1, 1]


def test_bad_input() -> None:
    store = TrajectoryStore(3)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        store.append(np.zeros(4))
    store.append(np.zeros(3), np.ones(3, bool))
    with pytest.raises(ValueError, match="every epoch or at none"):
        store.append(np.zeros(3))
    with pytest.raises(ValueError, match="dtype"):
        TrajectoryStore(3, dtype="int8")
    with pytest.raises(ValueError, match="num_samples"):
        TrajectoryStore(-1)
    with pytest.raises(IndexError, match="1 epoch"):
        store.epoch(5)


def test_disk_files_atomic_and_two_bytes_per_sample_epoch(tmp_path: Path) -> None:
    n = 10_000
    store = TrajectoryStore(n, directory=tmp_path)
    _fill(store, _epochs(n, 3)[0])
    names = sorted(os.listdir(tmp_path))
    assert names == [f"epoch_000{j}.npy" for j in range(3)]  # no temporary files left behind
    size = (tmp_path / "epoch_0001.npy").stat().st_size
    assert size / n <= 2.02  # 2 bytes + a 128-byte header
    assert store.nbytes_in_memory == 3 * n * 2  # under budget: also in memory


def test_spills_above_budget_and_reads_back_memory_mapped(tmp_path: Path) -> None:
    n, e = 1000, 8
    losses, correct = _epochs(n, e)
    budget = 3 * n * 3 - 1  # fewer than 3 epochs of float16 + correctness bytes
    store = TrajectoryStore(n, directory=tmp_path, memory_budget_bytes=budget)
    ref = TrajectoryStore(n)
    for j in range(e):
        store.append(losses[:, j], correct[:, j])
        ref.append(losses[:, j], correct[:, j])
        assert store.on_disk == (j >= 2)
        assert store.nbytes_in_memory <= budget
    assert store.nbytes_in_memory == 0
    assert isinstance(store.epoch(4), np.memmap)
    np.testing.assert_array_equal(store.matrix(), ref.matrix())
    np.testing.assert_array_equal(store.correct_matrix(), ref.correct_matrix())
    _assert_stats_equal(store.statistics(), ref.statistics())
    assert len(list(tmp_path.glob("epoch_*.npy"))) == e
    assert len(list(tmp_path.glob("correct_*.npy"))) == e


def test_deferred_writes_go_to_the_writer_and_a_spill_writes_the_epochs_it_held(tmp_path: Path) -> None:
    n, e = 1000, 5
    losses, correct = _epochs(n, e)
    budget = 3 * n * 3 - 1  # the third epoch spills
    store = TrajectoryStore(n, directory=tmp_path, memory_budget_bytes=budget)
    jobs: list[tuple] = []
    for j in range(e):
        store.append(losses[:, j], correct[:, j], write=lambda *job: jobs.append(job))
        if j < 2:  # in memory: the files are the writer's, nothing is on disk yet
            assert [job[1].name for job in jobs] == [
                name for k in range(j + 1) for name in (f"epoch_{k:04d}.npy", f"correct_{k:04d}.npy")
            ]
            assert not list(tmp_path.iterdir())
    # the spill wrote the two held epochs itself (a writer that never runs loses nothing); on disk the
    # store writes before returning
    assert len(jobs) == 4
    assert sorted(p.name for p in tmp_path.glob("epoch_*.npy")) == [f"epoch_{k:04d}.npy" for k in range(e)]
    np.testing.assert_array_equal(store.matrix(), TrajectoryStore.open(tmp_path).matrix())
    np.testing.assert_array_equal(store.correct_matrix(), correct)
    for save, path, array in jobs:  # the writer running late rewrites the same bytes
        save(path, array)
    np.testing.assert_array_equal(TrajectoryStore.open(tmp_path).matrix(), store.matrix())


def test_spill_without_directory_warns_and_uses_a_temporary_folder() -> None:
    store = TrajectoryStore(100, memory_budget_bytes=250)
    store.append(np.ones(100))
    with pytest.warns(UserWarning, match="spilling epochs"):
        store.append(np.full(100, 2.0))
    assert store.on_disk
    assert store.directory is not None
    np.testing.assert_array_equal(store.matrix()[:, 1], np.full(100, 2.0, np.float16))
    np.testing.assert_array_equal(store.matrix()[:, 0], np.ones(100, np.float16))


def test_memory_stays_within_budget_plus_order_n(tmp_path: Path) -> None:
    """Retained memory <= budget; peak <= budget + O(N) while the whole matrix would be far larger."""
    n, e = 20_000, 200
    budget = 200_000
    store = TrajectoryStore(n, directory=tmp_path, memory_budget_bytes=budget)
    rng = np.random.default_rng(0)
    tracemalloc.start()
    for _ in range(e):
        store.append(rng.exponential(size=n))
    stats = store.statistics()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    matrix_bytes = n * e * 2  # 8 MB
    assert store.on_disk
    assert stats.count.min() == e
    assert current <= budget + 12 * 8 * n  # the statistics' arrays, O(N)
    assert peak <= budget + 20 * 8 * n < matrix_bytes  # 3.4 MB < 8 MB


@pytest.mark.parametrize("budget", [10**9, 0])
def test_state_round_trip_weights_only(tmp_path: Path, budget: int) -> None:
    losses, correct = _epochs(40, 5)
    run = tmp_path / "run"
    store = TrajectoryStore(40, directory=run, memory_budget_bytes=budget)
    _fill(store, losses[:, :3], correct[:, :3])
    torch.save(store.state_dict(), tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ("losses" in state) == (budget > 0)  # in-memory: arrays; disk: a reference + count
    # the run continued past the checkpoint, then crashed
    _fill(store, losses[:, 3:4], correct[:, 3:4])
    assert (run / "epoch_0003.npy").exists()

    resumed = TrajectoryStore(40, directory=run, memory_budget_bytes=budget)
    resumed.load_state_dict(state)
    assert resumed.num_epochs == 3
    assert not (run / "epoch_0003.npy").exists()
    _fill(resumed, losses[:, 3:], correct[:, 3:])
    straight = TrajectoryStore(40)
    _fill(straight, losses, correct)
    np.testing.assert_array_equal(resumed.matrix(), straight.matrix())
    _assert_stats_equal(resumed.statistics(), straight.statistics())
    assert sorted(p.name for p in run.glob("epoch_*.npy")) == [f"epoch_000{j}.npy" for j in range(5)]


def test_resume_into_another_directory_links_the_epochs(tmp_path: Path) -> None:
    losses, _ = _epochs(30, 4)
    old = TrajectoryStore(30, directory=tmp_path / "v0", memory_budget_bytes=0)
    _fill(old, losses[:, :2])
    state = old.state_dict()
    new = TrajectoryStore(30, directory=tmp_path / "v1", memory_budget_bytes=0)
    new.load_state_dict(state)
    _fill(new, losses[:, 2:])
    assert sorted(p.name for p in (tmp_path / "v1").glob("epoch_*.npy")) == [
        f"epoch_000{j}.npy" for j in range(4)
    ]
    np.testing.assert_array_equal(TrajectoryStore.open(tmp_path / "v1").matrix(), losses.astype(np.float16))
    # a checkpoint whose files are gone: a clear error
    for p in (tmp_path / "v0").glob("*.npy"):
        p.unlink()
    with pytest.raises(FileNotFoundError, match="epoch_0000.npy is missing"):
        TrajectoryStore(30, directory=tmp_path / "v2").load_state_dict(state)


def test_statistics_only_store() -> None:
    losses, correct = _epochs(20, 3)
    store = TrajectoryStore(20, keep_epochs=False)
    _fill(store, losses, correct)
    assert store.num_epochs == 3
    assert store.nbytes_in_memory == 0
    _assert_stats_equal(store.statistics(), trajectory_statistics(losses.astype(np.float16), correct))
    with pytest.raises(RuntimeError, match="keep_epochs=False"):
        store.epoch(0)


def test_open_refuses_gaps(tmp_path: Path) -> None:
    store = TrajectoryStore(5, directory=tmp_path)
    _fill(store, np.ones((5, 3)))
    (tmp_path / "epoch_0001.npy").unlink()
    with pytest.raises(FileNotFoundError, match="not contiguous"):
        TrajectoryStore.open(tmp_path)
