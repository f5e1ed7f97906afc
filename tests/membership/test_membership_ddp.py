"""2-process gloo DDP: every rank logs identical numbers, equal to a 1-process run on the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from helpers.callbacks import RankDump
from helpers.data import loaders, make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks import MembershipInferenceMonitor
from memcallbacks.utilities.fileio import load_npz


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_ranks_agree_and_match_single_process(tmp_path: Path) -> None:
    train, val = make_blobs(64, seed=0), make_blobs(40, seed=1)
    tl, vl = loaders(train, val)
    # 51 members + 40 non-members = 91 probes: odd, so the second rank's shard is padded
    monitor = MembershipInferenceMonitor(
        num_probes=51, calibrate=True, batch_size=16, run_dir=tmp_path / "ddp"
    )
    model = TinyClassifier(hidden=8)
    dump = RankDump(tmp_path / "ranks", weights=True)
    t = trainer(
        tmp_path,
        max_epochs=2,
        strategy="ddp_spawn",
        devices=2,
        callbacks=[monitor, dump],
    )
    t.fit(model, tl, vl)

    rank0, rank1 = (rank["metrics"] for rank in dump.read())
    mem_keys = sorted(k for k in rank0 if k.startswith("mem/"))
    assert "mem/mia/auc" in mem_keys
    assert "mem/mia_cal/auc" in mem_keys
    assert {k: rank0[k] for k in mem_keys} == {k: rank1[k] for k in mem_keys}  # bitwise identical

    saved = load_npz(tmp_path / "ddp" / "membership" / "losses.npz")
    assert saved["member_losses"].shape == (2, 51)
    assert saved["nonmember_losses"].shape == (2, 40)
    labels = np.r_[np.ones(51), np.zeros(40)]
    sk = roc_auc_score(labels, -np.r_[saved["member_losses"][-1], saved["nonmember_losses"][-1]])
    assert rank0["mem/mia/auc"] == pytest.approx(sk, abs=1e-6)

    # one process, same probes, the final DDP weights (lr=0: the weights do not move)
    single_model = TinyClassifier(hidden=8, lr=0.0)
    single_model.load_state_dict(dump.saved_weights())
    single = MembershipInferenceMonitor(num_probes=51, batch_size=16, run_dir=tmp_path / "single")
    s = trainer(tmp_path / "one", max_epochs=1, callbacks=[single])
    s.fit(single_model, *loaders(train, val))
    one = load_npz(tmp_path / "single" / "membership" / "losses.npz")
    np.testing.assert_array_equal(one["member_indices"], saved["member_indices"])
    np.testing.assert_allclose(one["member_losses"][0], saved["member_losses"][-1], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        one["nonmember_losses"][0], saved["nonmember_losses"][-1], rtol=1e-6, atol=1e-7
    )
    for k in ("mem/mia/auc", "mem/mia/advantage", "mem/mia/tpr@10%fpr", "mem/mia/n_members", "mem/gap/loss"):
        assert float(s.callback_metrics[k]) == pytest.approx(rank0[k], abs=1e-6), k
