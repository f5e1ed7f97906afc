"""The in-run trajectory attack (Liu et al., CCS 2022) of MembershipInferenceMonitor on a real Trainer."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from helpers.data import loaders
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks import MembershipInferenceMonitor
from memcallbacks.metrics import membership_inference, trajectory_attack
from memcallbacks.utilities.fileio import load_json, load_npz

pytestmark = pytest.mark.filterwarnings("ignore:.*non-member\\(s\\), fewer than 1/FPR:UserWarning")

FPRS = (0.01, 0.1)


def _random_labels(n: int, seed: int) -> TensorDataset:
    """Features with labels unrelated to them: anything the model gets right on a member it memorised."""
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g))


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MembershipInferenceMonitor]:
    tmp = tmp_path_factory.mktemp("traj")
    torch.manual_seed(0)
    tl, vl = loaders(_random_labels(48, seed=0), _random_labels(48, seed=1), batch_size=8, shuffle=False)
    monitor = MembershipInferenceMonitor(num_probes=48, fprs=FPRS, seed=4)
    trainer(tmp, max_epochs=6, callbacks=[monitor]).fit(TinyClassifier(hidden=64, lr=0.5), tl, vl)
    return tmp, monitor


def _csv_metric(tmp: Path, key: str) -> dict[int, float]:
    (path,) = list(tmp.glob("csv/version_*/metrics.csv"))
    with open(path) as f:
        return {int(r["epoch"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}


@pytest.mark.slow
def test_trajectory_auc_is_logged_from_the_second_epoch(overfit_run: Any) -> None:
    tmp, monitor = overfit_run
    logged = _csv_metric(tmp, "mem/mia_traj/auc")
    assert sorted(logged) == [1, 2, 3, 4, 5]  # not at epoch 0: one evaluation is no trajectory
    assert all(math.isfinite(v) for v in logged.values())
    tpr = _csv_metric(tmp, "mem/mia_traj/tpr@1%fpr")
    assert sorted(tpr) == [1, 2, 3, 4, 5]
    assert all(0.0 <= v <= 1.0 for v in tpr.values())
    assert sorted(_csv_metric(tmp, "mem/mia_traj/tpr@10%fpr")) == [1, 2, 3, 4, 5]
    assert _csv_metric(tmp, "mem/mia_traj/dropped")[5] == 0.0
    assert _csv_metric(tmp, "mem/mia_traj/n_members")[5] == 48.0
    # the model memorises random labels: the attack sees it
    # (the CSV holds Lightning's float32 copy)
    assert logged[5] > 0.6
    assert monitor.trajectory_report.auc == pytest.approx(logged[5], abs=1e-6)
    history = load_json(monitor.run_dir / "metrics.json")["history"]
    assert "mem/mia_traj/auc" not in history[0]
    assert history[5]["mem/mia_traj/auc"] == monitor.trajectory_report.auc


@pytest.mark.slow
def test_callback_value_equals_the_pure_function_on_the_saved_histories(overfit_run: Any) -> None:
    _, monitor = overfit_run
    saved = load_npz(monitor.run_dir / "losses.npz")
    members, nonmembers = saved["member_losses"], saved["nonmember_losses"]  # [E, n], float32
    assert members.shape == (6, 48)
    for e in range(1, 6):
        report = trajectory_attack(members[: e + 1].T, nonmembers[: e + 1].T, folds=2, seed=4, fprs=FPRS)
        row = monitor.history[e]
        assert row["mem/mia_traj/auc"] == report.auc
        assert row["mem/mia_traj/tpr@1%fpr"] == report.tpr_at_fpr[0.01]
        assert row["mem/mia_traj/tpr@10%fpr"] == report.tpr_at_fpr[0.1]
        assert (row["mem/mia_traj/n_members"], row["mem/mia_traj/n_nonmembers"]) == (48.0, 48.0)
    # and it is a different attack from the loss threshold on the last epoch
    assert monitor.history[5]["mem/mia/auc"] == membership_inference(members[5], nonmembers[5], fprs=FPRS).auc


def test_nonfinite_probe_is_dropped_for_the_rest_of_the_run_and_counted() -> None:
    rng = np.random.default_rng(0)
    m0, n0 = rng.gamma(1.0, size=30).astype(np.float32), rng.gamma(2.0, size=20).astype(np.float32)
    monitor = MembershipInferenceMonitor(fprs=(0.1,))
    monitor._member_history, monitor._nonmember_history = [m0.copy()], [n0.copy()]
    monitor._member_history[0][4] = np.nan  # NaN at the first evaluation only
    with pytest.warns(UserWarning, match="NaN/inf"):
        metrics = monitor._metrics(1, m0 * 0.5, np.r_[np.inf, n0[1:]].astype(np.float32))
    assert metrics["mem/mia_traj/dropped"] == 2.0
    assert (metrics["mem/mia_traj/n_members"], metrics["mem/mia_traj/n_nonmembers"]) == (29.0, 19.0)
    assert math.isfinite(metrics["mem/mia_traj/auc"])
    # too few finite rows in a class: NaN, never a chance-looking 0.5
    monitor._nonmember_history = [np.full(20, np.nan, np.float32)]
    metrics = monitor._metrics(1, m0, n0)
    assert math.isnan(metrics["mem/mia_traj/auc"])
    assert math.isnan(metrics["mem/mia_traj/tpr@10%fpr"])
    assert metrics["mem/mia_traj/dropped"] == 21.0
    assert monitor.trajectory_report is None


def test_switched_off_logs_no_trajectory_key() -> None:
    rng = np.random.default_rng(1)
    m0, n0 = rng.gamma(1.0, size=30).astype(np.float32), rng.gamma(2.0, size=20).astype(np.float32)
    monitor = MembershipInferenceMonitor(fprs=(0.1,), trajectory_attack=False)
    monitor._member_history, monitor._nonmember_history = [m0], [n0]
    assert not any(k.startswith("mem/mia_traj/") for k in monitor._metrics(1, m0, n0))
