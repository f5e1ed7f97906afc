"""LeakageEarlyStopping in a real 2-process gloo DDP run: one rank crosses, both stop together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.callbacks import RankDump, RisingScore
from helpers.data import loaders, make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks import LeakageEarlyStopping


@pytest.mark.ddp
@pytest.mark.timeout(180)
def test_one_rank_crossing_stops_both_ranks_at_the_same_epoch(tmp_path: Path, rank_dump: RankDump) -> None:
    # rank 0 logs 0, 1, 2, 3, ... (crosses 2.5 at epoch 3); rank 1 logs 2, 3, ... (crosses at epoch 1)
    monitor = RisingScore(rank_offset=2.0, run_dir=tmp_path / "run")
    stopper = LeakageEarlyStopping("mem/test/score", 2.5, run_dir=tmp_path / "run", restore="best_safe")
    tl, _ = loaders(make_blobs(32), batch_size=8)
    t = trainer(
        tmp_path,
        max_epochs=6,
        strategy="ddp_spawn",
        devices=2,
        callbacks=[stopper, monitor, rank_dump],
    )
    t.fit(TinyClassifier(), tl)
    ranks = rank_dump.read()
    assert [r["stop/stopped_epoch"] for r in ranks] == [1, 1]
    assert [r["current_epoch"] for r in ranks] == [2, 2]
    expected = "Leakage: mem/test/score = 3.0 > 2.5 (rank 1) at epoch 1; restored the weights of epoch 0"
    assert ranks[0]["stop/reason"] == ranks[1]["stop/reason"] == expected
    saved = json.loads((tmp_path / "run" / "stopping.json").read_text())
    assert saved["stopped_epoch"] == 1
    assert saved["reason"] == expected
