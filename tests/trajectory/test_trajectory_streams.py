"""Streamed data: IndexedStream ids, canaries interleaved into a stream, and a ``max_steps`` run over an
``IterableDataset`` that measures, logs and stops mid-stream."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from helpers.data import make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks import LeakageEarlyStopping, LossTrajectoryTracker, MembershipInferenceMonitor, split_index
from memcallbacks.data.canaries import CanarySet, CharTokenizer
from memcallbacks.data.streams import IndexedStream, canary_stream, interleave, text_id

N = 40


class Blobs(IterableDataset):
    """An endless deterministic stream of the ``(x, y)`` items of ``make_blobs(N)``, in order."""

    def __init__(self, n: int = N, passes: int | None = None) -> None:
        self.data, self.passes = make_blobs(n, seed=4), passes

    def __iter__(self) -> Iterator[Any]:
        p = 0
        while self.passes is None or p < self.passes:
            yield from (self.data[i] for i in range(len(self.data)))
            p += 1


def _model() -> TinyClassifier:
    torch.manual_seed(0)
    return TinyClassifier(hidden=8, lr=0.2)


# -- ids ------------------------------------------------------------------------------------------
def test_text_id_is_a_stable_63_bit_hash() -> None:
    assert text_id("my pin is 1234") == text_id(b"my pin is 1234")
    ids = {text_id(f"sample {i}") for i in range(1000)}
    assert len(ids) == 1000
    assert all(0 <= i < 2**63 for i in ids)
    digest = hashlib.blake2b(b"a", digest_size=8).digest()
    assert text_id("a") == int.from_bytes(digest, "little") & (2**63 - 1)
    with pytest.raises(TypeError, match="`text` must be str or bytes"):
        text_id(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("shard", [True, False])
def test_running_ids_survive_dataloader_workers(shard: bool) -> None:
    items = [f"t{i}" for i in range(12)]
    if shard:
        stream: Any = IndexedStream(items)
    else:  # an iterable that shards itself: each worker yields its own items

        class SelfSharded(IterableDataset):
            def __iter__(self) -> Iterator[str]:
                info = torch.utils.data.get_worker_info()
                w, nw = (info.id, info.num_workers) if info else (0, 1)
                return iter(items[w::nw])

        stream = IndexedStream(SelfSharded(), shard=False)
    seen = {}
    for batch in DataLoader(stream, batch_size=2, num_workers=2):
        index, texts = split_index(batch)
        seen.update(zip(index.tolist(), texts))
    assert sorted(seen.values()) == sorted(items)  # every item once
    assert len(seen) == 12
    if shard:
        assert seen == {i: f"t{i}" for i in range(12)}  # the id is the position in the stream
    again = {}
    for batch in DataLoader(stream, batch_size=2, num_workers=2):
        index, texts = split_index(batch)
        again.update(zip(index.tolist(), texts))
    assert again == seen


def test_id_fn_gives_dict_items_an_index_key() -> None:
    stream = IndexedStream([{"text": "a"}, {"text": "b"}], id_fn=lambda item: text_id(item["text"]))
    batch = next(iter(DataLoader(stream, batch_size=2)))
    index, rest = split_index(batch)
    assert index.tolist() == [text_id("a"), text_id("b")]
    assert rest == {"text": ["a", "b"]}
    with pytest.raises(ValueError, match="id_fn` must return an int"):
        list(IndexedStream(["a"], id_fn=lambda item: -1))
    with pytest.raises(KeyError, match="already have an 'index' key"):
        list(IndexedStream([{"index": 3}]))
    with pytest.raises(TypeError, match="`iterable` must be iterable"):
        IndexedStream(3)  # type: ignore[arg-type]


def test_interleave_puts_items_at_seeded_positions() -> None:
    mixed = interleave([f"s{i}" for i in range(20)], ["X", "Y", "Y"], within=20, seed=3)
    out = list(mixed)
    assert len(out) == 23
    assert [out[p] for p in mixed.positions] == ["X", "Y", "Y"]
    assert [s for s in out if s.startswith("s")] == [f"s{i}" for i in range(20)]
    assert interleave(range(20), ["X", "Y", "Y"], within=20, seed=3).positions == mixed.positions
    short = interleave(["a"], ["X", "Y"], within=10, seed=0)
    assert sorted(short) == ["X", "Y", "a"]  # a stream shorter than `within`: the rest at its end


def test_canary_stream_records_the_ids_of_each_copy() -> None:
    canaries = CanarySet("pin {secret}", CharTokenizer(), repetitions=(1, 4), per_count=1, seed=0)
    mixed = canary_stream(canaries, [f"text {i}" for i in range(50)], within=50, seed=1)
    by_id = dict(split_index_pairs(IndexedStream(mixed)))
    for canary in canaries:
        positions = canaries.injected_indices[canary.id]
        assert len(positions) == canary.repetitions
        assert all(by_id[p] == canary.text for p in positions)


def split_index_pairs(stream: IndexedStream) -> list[tuple[int, Any]]:
    return [(int(i), item) for i, item in stream]


# -- the tracker ----------------------------------------------------------------------------------
def test_a_max_steps_run_on_a_stream_records_windows_by_running_index(tmp_path: Path) -> None:
    # the running id is the position in the stream: a max_steps run visits max_steps x batch ids
    tracker = LossTrajectoryTracker(every_n_steps=5, num_samples=12 * 8, run_dir=tmp_path / "run")
    trainer(tmp_path, max_epochs=-1, max_steps=12, callbacks=[tracker]).fit(
        _model(), DataLoader(IndexedStream(Blobs()), batch_size=8)
    )
    assert tracker.recorded_steps == [5, 10]
    assert tracker.recorded_epochs == [0, 0]
    assert tracker.store is not None
    for j, window in enumerate([range(0, 40), range(40, 80)]):
        column = tracker.store.epoch(j)
        assert np.isfinite(column[list(window)]).all()
        assert np.isnan(np.delete(column, list(window))).all()


def test_a_finite_stream_gets_the_same_running_ids_every_epoch(tmp_path: Path) -> None:
    tracker = LossTrajectoryTracker(num_samples=N, run_dir=tmp_path / "run")
    trainer(tmp_path, max_epochs=2, callbacks=[tracker]).fit(
        _model(), DataLoader(IndexedStream(Blobs(passes=1)), batch_size=8)
    )
    assert [row["mem/traj/visited_frac"] for row in tracker.history] == [1.0, 1.0]


def test_an_iterable_without_ids_names_the_fix_before_training(tmp_path: Path) -> None:
    tracker = LossTrajectoryTracker(run_dir=tmp_path / "run")
    with pytest.raises(ValueError, match=r"has no length.*IndexedStream\(stream\)"):
        trainer(tmp_path, max_steps=2, callbacks=[tracker]).fit(_model(), DataLoader(Blobs(), batch_size=8))
    hashed = IndexedStream(Blobs(), id_fn=lambda item: 0)
    with pytest.raises(ValueError, match="id_space='hashed', num_samples="):
        trainer(tmp_path, max_steps=2, callbacks=[LossTrajectoryTracker(num_samples=N)]).fit(
            _model(), DataLoader(hashed, batch_size=8)
        )
    with pytest.raises(ValueError, match="`id_space='hashed'` needs `num_samples=`"):
        LossTrajectoryTracker(id_space="hashed")


def test_hashed_ids_map_to_rows_in_order_of_arrival(tmp_path: Path) -> None:
    def blob_id(item: Any) -> int:
        return text_id(str(item[0].tolist()))

    tracker = LossTrajectoryTracker(
        every_n_steps=5, num_samples=N, id_space="hashed", run_dir=tmp_path / "run"
    )
    trainer(tmp_path, max_epochs=-1, max_steps=10, callbacks=[tracker]).fit(
        _model(), DataLoader(IndexedStream(Blobs(), id_fn=blob_id), batch_size=8)
    )
    data = make_blobs(N, seed=4)
    expected = [blob_id(data[i]) for i in range(N)]
    assert tracker.sample_ids.tolist() == expected  # row r holds the r-th id to arrive
    assert tracker.recorded_steps == [5, 10]
    assert np.isfinite(tracker.store.epoch(1)).all()  # the second pass lands on the same rows
    state = tracker.state_dict()
    assert state["id_table"].tolist() == expected
    top = tracker.most_memorised(3)
    assert set(top.tolist()) <= set(expected)


def test_hashed_ids_beyond_num_samples_name_the_fix(tmp_path: Path) -> None:
    tracker = LossTrajectoryTracker(
        every_n_steps=5, num_samples=10, id_space="hashed", run_dir=tmp_path / "run"
    )
    stream = IndexedStream(Blobs(), id_fn=lambda item: text_id(str(item[0].tolist())))
    with pytest.raises(
        ValueError, match="more than num_samples=10 distinct sample ids.*larger `num_samples=`"
    ):
        trainer(tmp_path, max_epochs=-1, max_steps=6, callbacks=[tracker]).fit(
            _model(), DataLoader(stream, batch_size=8)
        )


def test_max_steps_stream_measures_logs_and_stops_mid_stream(tmp_path: Path) -> None:
    data = make_blobs(N, seed=4)
    held_out = make_blobs(N, seed=9)
    tracker = LossTrajectoryTracker(every_n_steps=2, num_samples=100 * 8, run_dir=tmp_path / "run")
    mia = MembershipInferenceMonitor(
        members=data, nonmembers=held_out, every_n_steps=3, run_dir=tmp_path / "run", batch_size=64
    )
    stopper = LeakageEarlyStopping("mem/traj/epochs", threshold=2.5, run_dir=tmp_path / "run")
    fit = trainer(tmp_path, max_epochs=-1, max_steps=100, callbacks=[tracker, mia, stopper])
    fit.fit(_model(), DataLoader(IndexedStream(Blobs()), batch_size=8))
    assert (stopper.stopped_epoch, stopper.stopped_step) == (0, 6)  # the third window
    assert fit.global_step == 6
    assert tracker.recorded_steps == [2, 4, 6]
    assert [row["step"] for row in mia.history] == [3, 6]
    assert all(np.isfinite(row["mem/mia/auc"]) for row in mia.history)
    logged = (Path(fit.logger.log_dir) / "metrics.csv").read_text()
    assert "mem/mia/auc" in logged
    assert "mem/traj/loss_mean" in logged


def test_running_ids_split_a_stream_across_ddp_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    shares = []
    for rank in (0, 1):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        shares.append(list(IndexedStream([f"t{i}" for i in range(7)])))
    assert shares[0] == [(0, "t0"), (2, "t2"), (4, "t4"), (6, "t6")]
    assert shares[1] == [(1, "t1"), (3, "t3"), (5, "t5")]
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    assert [i for i, _ in IndexedStream(["a", "b", "c"], shard=False)] == [1, 3, 5]  # counter x 2 + rank
