"""Every callback in one 2-process CPU DDP run versus a 1-process run (issue 8, item 3).

The per-callback DDP tests (trajectory, membership, stopping) check their own callback; this one
runs all of them together over a training set whose size (45) is not divisible by the world size,
so ``DistributedSampler`` pads rank 1 with a repeat of sample 0, once without and once with
``drop_last=True``. The model's learning rate is 0: both runs then hold the same weights at every
epoch, so every per-sample loss, probe metric and exposure must agree between 1 and 2 processes
(the comparison isolates the gather, de-duplication and sharding logic from DDP's gradient
averaging). Trajectories must cover every visited index exactly once per epoch; with
``drop_last=True`` the samples of each rank's dropped last batch stay NaN and
``mem/traj/visited_frac`` < 1.

It stays in tests/hardening: it runs every callback together in one DDP run; each callback's own DDP
test is in tests/<area>/.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
from torch.utils.data import DistributedSampler

from helpers import every_monitor as H

BATCH = 4
EPOCHS = 2


def _fit(folder: Path, data: H.Data, drop_last: bool, **trainer_kwargs: Any) -> None:
    folder.mkdir(parents=True)
    callbacks = [*H.build_callbacks(folder / "run", data), H.RankDump(folder)]
    trainer = pl.Trainer(
        default_root_dir=str(folder),
        max_epochs=EPOCHS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        **trainer_kwargs,
    )
    loader = data.train_loader(batch_size=BATCH, drop_last=drop_last, sampler=False)
    pl.seed_everything(0)
    trainer.fit(H.HardModel(lr=0.0), loader, data.val_loader())


def _expected_visited(n: int, drop_last: bool, epoch: int) -> np.ndarray:
    """Indices the two ranks' loaders yield at ``epoch``: Lightning's DistributedSampler (shuffled,
    seed 0, padded), then the batching."""
    seen: list[int] = []
    for rank in range(2):
        sampler = DistributedSampler(range(n), num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(epoch)
        order = list(sampler)
        if drop_last:
            order = order[: len(order) // BATCH * BATCH]
        seen.extend(order)
    return np.unique(seen)


def _without_step(history: str) -> list[dict[str, Any]]:
    """A JSON history of :func:`helpers.state.snapshot` without the ``step`` of each row."""
    return [{k: v for k, v in row.items() if k != "step"} for row in json.loads(history)]


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("drop_last", [False, True], ids=["padded", "drop_last"])
def test_ddp_two_processes_match_one_process_for_every_callback(tmp_path: Path, drop_last: bool) -> None:
    data = H.Data(n_train=41)  # 41 blobs + 4 audit canaries drawn in = 45 samples
    n = len(data.train_set)
    assert n == 45

    _fit(tmp_path / "one", data, drop_last, accelerator="cpu", devices=1)
    _fit(tmp_path / "ddp", data, drop_last, accelerator="cpu", devices=2, strategy="ddp_spawn")

    (one,) = H.RankDump(tmp_path / "one").read()
    r0, r1 = H.RankDump(tmp_path / "ddp").read()

    # every rank logged the same numbers and holds the same monitor state
    m0, m1 = r0["metrics"], r1["metrics"]
    assert m0 == m1
    for key in ("mia/member_losses", "mia/nonmember_losses", "canary/exposure", "canary/rank",
                "audit/history", "dp/history", "stop/state", "traj/stat/count", "traj/stat/mean"):  # fmt: skip
        assert H.same(r0[key], r1[key]), key

    # trajectories: each visited index exactly once per epoch; padding never double-counts
    matrix = r0["traj/matrix"]
    assert matrix.shape == (n, EPOCHS)
    for epoch in range(EPOCHS):
        expected = _expected_visited(n, drop_last, epoch)
        assert (len(expected) == n) is (not drop_last)
        assert set(np.flatnonzero(np.isfinite(matrix[:, epoch]))) == set(expected.tolist())
        # same weights in both runs: a sample visited by both has the same loss (float16 storage)
        both = expected[np.isfinite(one["traj/matrix"][expected, epoch])]
        assert len(both) >= len(expected) - BATCH
        np.testing.assert_allclose(matrix[both, epoch], one["traj/matrix"][both, epoch], rtol=2e-3)
    assert H.same(r0["traj/stat/count"], np.isfinite(matrix).sum(axis=1).astype(r0["traj/stat/count"].dtype))
    assert m0["mem/traj/visited_frac"] == pytest.approx(len(expected) / n)
    assert (m0["mem/traj/visited_frac"] < 1.0) is drop_last

    # probes, exposure and audit: the same numbers as one process
    np.testing.assert_allclose(r0["mia/member_losses"], one["mia/member_losses"], rtol=1e-6)
    np.testing.assert_allclose(r0["mia/nonmember_losses"], one["mia/nonmember_losses"], rtol=1e-6)
    np.testing.assert_allclose(r0["canary/exposure"], one["canary/exposure"], rtol=1e-9)
    assert H.same(r0["canary/rank"], one["canary/rank"])
    # the same history rows but their `step`: two processes take half the optimizer steps
    assert H.same(_without_step(r0["audit/history"]), _without_step(one["audit/history"]))
    m_one = one["metrics"]
    for key, value in m_one.items():
        if key.startswith(("mem/mia", "mem/gap", "mem/canary", "mem/audit")):
            assert m0[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
