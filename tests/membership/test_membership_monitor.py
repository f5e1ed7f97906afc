"""MembershipInferenceMonitor on a real Trainer: fidelity against sklearn and a manual forward pass."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from helpers.data import BlobsDataModule, loaders, make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks import MembershipInferenceMonitor, loggers
from memcallbacks.utilities.fileio import load_json, load_npz


def _csv_rows(tmp_path: Path) -> list[dict[str, str]]:
    (path,) = list(tmp_path.glob("csv/version_*/metrics.csv"))
    with open(path) as f:
        return list(csv.DictReader(f))


def _csv_metric(tmp_path: Path, key: str) -> dict[int, float]:
    return {int(r["epoch"]): float(r[key]) for r in _csv_rows(tmp_path) if r.get(key)}


def _sk_auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    labels = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    return float(roc_auc_score(labels, -np.r_[members, nonmembers].astype(np.float64)))


def _manual_losses(model: torch.nn.Module, ds: Any, idx: np.ndarray) -> np.ndarray:
    x = torch.stack([ds[int(i)][0] for i in idx])
    y = torch.stack([ds[int(i)][1] for i in idx])
    model.eval()
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none").numpy()


def test_auc_matches_sklearn_on_saved_losses_and_manual_forward(tmp_path: Path) -> None:
    train, val = make_blobs(96, seed=0), make_blobs(60, seed=1)
    tl, vl = loaders(train, val)
    monitor = MembershipInferenceMonitor(num_probes=64, seed=3)
    model = TinyClassifier(hidden=16)
    trainer(tmp_path, max_epochs=3, callbacks=[monitor]).fit(model, tl, vl)

    saved = load_npz(monitor.run_dir / "losses.npz")
    assert saved["epochs"].tolist() == [0, 1, 2]
    assert saved["member_losses"].shape == (3, 64)
    assert saved["nonmember_losses"].shape == (3, 60)
    # default members: a seeded random subset of the training set; non-members: the first of val
    expected_idx = np.sort(np.random.default_rng(3).choice(96, size=64, replace=False))
    np.testing.assert_array_equal(saved["member_indices"], expected_idx)
    np.testing.assert_array_equal(saved["nonmember_indices"], np.arange(60))

    csv_auc = _csv_metric(tmp_path, "mem/mia/auc")
    history = load_json(monitor.run_dir / "metrics.json")["history"]
    for e in range(3):
        auc = _sk_auc(saved["member_losses"][e], saved["nonmember_losses"][e])
        assert csv_auc[e] == pytest.approx(auc, abs=1e-6)
        assert history[e]["mem/mia/auc"] == pytest.approx(auc, abs=1e-12)
        gap = saved["nonmember_losses"][e].astype(np.float64).mean() - saved["member_losses"][e].mean()
        assert history[e]["mem/gap/loss"] == pytest.approx(gap, rel=1e-6)
        ratio = saved["nonmember_losses"][e].astype(np.float64).mean() / saved["member_losses"][e].mean()
        assert history[e]["mem/gap/loss_ratio"] == pytest.approx(ratio, rel=1e-6)
    last = _sk_auc(saved["member_losses"][-1], saved["nonmember_losses"][-1])
    assert float(pl_metric := monitor.report.auc) == pytest.approx(last, abs=1e-12)  # type: ignore[union-attr]
    assert pl_metric > 0.5

    # the saved vectors are the model's eval-mode losses (independent forward pass)
    np.testing.assert_allclose(
        saved["member_losses"][-1],
        _manual_losses(model, train, saved["member_indices"]),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        saved["nonmember_losses"][-1], _manual_losses(model, val, np.arange(60)), rtol=1e-5, atol=1e-6
    )
    assert monitor.member_losses.shape == (3, 64)
    assert [row["epoch"] for row in monitor.history] == [0.0, 1.0, 2.0]


def test_logged_keys_reach_callback_metrics_and_csv(tmp_path: Path) -> None:
    tl, vl = loaders(make_blobs(48, seed=0), make_blobs(40, seed=1))
    monitor = MembershipInferenceMonitor(fprs=(0.001, 0.01))
    t = trainer(tmp_path, max_epochs=2, callbacks=[monitor])
    with pytest.warns(UserWarning, match="fewer than 1/FPR"):
        t.fit(TinyClassifier(), tl, vl)
    keys = {
        "mem/gap/loss",
        "mem/gap/loss_ratio",
        "mem/mia/auc",
        "mem/mia/advantage",
        "mem/mia/tpr@0.1%fpr",
        "mem/mia/tpr@1%fpr",
        "mem/mia/balanced_accuracy",
        "mem/mia/n_members",
        "mem/mia/n_nonmembers",
        "mem/mia/nonfinite",
    }
    assert keys <= set(t.callback_metrics)
    assert "mem/mia/tpr@10%fpr" not in t.callback_metrics
    assert float(t.callback_metrics["mem/mia/n_members"]) == 48
    assert float(t.callback_metrics["mem/mia/n_nonmembers"]) == 40
    report = monitor.report
    assert report is not None
    assert float(t.callback_metrics["mem/mia/auc"]) == pytest.approx(report.auc, abs=1e-6)
    assert float(t.callback_metrics["mem/mia/advantage"]) == pytest.approx(report.advantage, abs=1e-6)
    assert keys <= set(_csv_rows(tmp_path)[0])


def test_validation_not_loaded_yet_is_requested_from_the_data_source(tmp_path: Path) -> None:
    # check_val_every_n_epoch=2 and no sanity check: no validation has run when epoch 0 ends
    train, val = make_blobs(48, seed=0), make_blobs(30, seed=1)
    tl, vl = loaders(train, val)
    monitor = MembershipInferenceMonitor()
    model = TinyClassifier()
    t = trainer(
        tmp_path, max_epochs=1, num_sanity_val_steps=0, check_val_every_n_epoch=2, callbacks=[monitor]
    )
    t.fit(model, tl, vl)
    assert t.val_dataloaders is None  # Lightning never loaded it; the monitor asked the source
    saved = load_npz(monitor.run_dir / "losses.npz")
    np.testing.assert_allclose(
        saved["nonmember_losses"][0], _manual_losses(model, val, np.arange(30)), rtol=1e-5, atol=1e-6
    )


def test_datamodule_validation_data_with_no_sanity_steps(tmp_path: Path) -> None:
    train, val = make_blobs(48, seed=0), make_blobs(30, seed=1)
    monitor = MembershipInferenceMonitor(num_probes=20)
    t = trainer(
        tmp_path, max_epochs=1, num_sanity_val_steps=0, check_val_every_n_epoch=3, callbacks=[monitor]
    )
    t.fit(TinyClassifier(), datamodule=BlobsDataModule(train, val))
    saved = load_npz(monitor.run_dir / "losses.npz")
    assert saved["member_losses"].shape == (1, 20)
    assert saved["nonmember_losses"].shape == (1, 20)
    np.testing.assert_array_equal(saved["nonmember_indices"], np.arange(20))


def test_no_held_out_data_says_how_to_pass_it(tmp_path: Path) -> None:
    tl, _ = loaders(make_blobs(32))
    t = trainer(tmp_path, max_epochs=1, callbacks=[MembershipInferenceMonitor()], limit_val_batches=0)
    with pytest.raises(RuntimeError, match=r"nonmembers=held_out"):
        t.fit(TinyClassifier(), tl)


def test_explicit_probes_every_n_epochs_and_train_mode(tmp_path: Path) -> None:
    train, held = make_blobs(40, seed=0), make_blobs(24, seed=5)
    tl, _ = loaders(train)
    seen: list[bool] = []

    class After(pl.Callback):
        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            seen.append(pl_module.training)

    monitor = MembershipInferenceMonitor(members=train, nonmembers=held, every_n_epochs=2)
    trainer(tmp_path, max_epochs=4, callbacks=[monitor, After()]).fit(TinyClassifier(), tl)
    saved = load_npz(monitor.run_dir / "losses.npz")
    assert saved["epochs"].tolist() == [1, 3]
    assert saved["member_losses"].shape == (2, 40)
    assert saved["nonmember_losses"].shape == (2, 24)
    assert seen == [True] * 4


def test_calibrated_attack_against_sklearn(tmp_path: Path) -> None:
    tl, vl = loaders(make_blobs(64, seed=0), make_blobs(64, seed=1))
    monitor = MembershipInferenceMonitor(calibrate=True)
    trainer(tmp_path, max_epochs=3, callbacks=[monitor]).fit(TinyClassifier(hidden=16), tl, vl)
    saved = load_npz(monitor.run_dir / "losses.npz")
    ml, nl = saved["member_losses"].astype(np.float64), saved["nonmember_losses"].astype(np.float64)
    h = monitor.history
    # the reference evaluation: every difference is 0 -> the chance values, documented
    assert h[0]["mem/mia_cal/auc"] == 0.5
    assert h[0]["mem/mia_cal/advantage"] == 0.0
    assert h[0]["mem/mia_cal/tpr@1%fpr"] == 0.0
    for e in (1, 2):
        expected = _sk_auc(ml[e] - ml[0], nl[e] - nl[0])
        assert h[e]["mem/mia_cal/auc"] == pytest.approx(expected, abs=1e-12)
    cal_csv = _csv_metric(tmp_path, "mem/mia_cal/auc")
    assert cal_csv[2] == pytest.approx(h[2]["mem/mia_cal/auc"], abs=1e-6)
    assert monitor.calibrated_report is not None


def test_class_slices_and_group_function(tmp_path: Path) -> None:
    train, val = make_blobs(90, seed=0), make_blobs(90, seed=1)
    tl, vl = loaders(train, val)
    monitor = MembershipInferenceMonitor(slices="class", min_slice_size=25)
    grouped = MembershipInferenceMonitor(
        slices=lambda item: "even" if int(item[1]) % 2 == 0 else "odd",
        min_slice_size=1,
        run_dir=tmp_path / "g",
        name="grouped",
    )
    trainer(tmp_path, max_epochs=1, callbacks=[monitor, grouped]).fit(TinyClassifier(), tl, vl)
    saved = load_npz(monitor.run_dir / "losses.npz")
    ym = np.array([int(train[i][1]) for i in saved["member_indices"]])
    yn = np.array([int(val[i][1]) for i in saved["nonmember_indices"]])
    row = monitor.history[0]
    for c in range(3):
        key = f"mem/mia/auc/class_{c}"
        if (ym == c).sum() >= 25 and (yn == c).sum() >= 25:
            expected = _sk_auc(saved["member_losses"][0][ym == c], saved["nonmember_losses"][0][yn == c])
            assert row[key] == pytest.approx(expected, abs=1e-12)
        else:
            assert key not in row
    assert any(k.startswith("mem/mia/auc/class_") for k in row)
    g = grouped.history[0]
    even_m, even_n = ym % 2 == 0, yn % 2 == 0
    assert g["mem/mia/auc/group_even"] == pytest.approx(
        _sk_auc(saved["member_losses"][0][even_m], saved["nonmember_losses"][0][even_n]), abs=1e-6
    )
    assert "mem/mia/auc/group_odd" in g


def test_small_slices_are_not_logged(tmp_path: Path) -> None:
    tl, vl = loaders(make_blobs(30, seed=0), make_blobs(30, seed=1))
    monitor = MembershipInferenceMonitor(slices="class", min_slice_size=31)
    trainer(tmp_path, max_epochs=1, callbacks=[monitor]).fit(TinyClassifier(), tl, vl)
    assert not [k for k in monitor.history[0] if "/class_" in k]


def test_records_roc_and_histograms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records: list[Any] = []
    real_emit = loggers.emit

    def capture(trainer: Any, record: Any, **kw: Any) -> None:
        records.append(record)
        real_emit(trainer, record, **kw)

    monkeypatch.setattr(loggers, "emit", capture)
    tl, vl = loaders(make_blobs(40, seed=0), make_blobs(40, seed=1))
    # only a CSV logger: no logger takes records, none is built
    trainer(tmp_path / "csv", max_epochs=2, callbacks=[MembershipInferenceMonitor()]).fit(
        TinyClassifier(), tl, vl
    )
    assert records == []
    monitor = MembershipInferenceMonitor(calibrate=True)
    tensorboard = pl.loggers.TensorBoardLogger(str(tmp_path), name="tb")
    trainer(tmp_path, max_epochs=2, callbacks=[monitor], logger=tensorboard).fit(TinyClassifier(), tl, vl)
    rocs = [r for r in records if isinstance(r, loggers.RocCurve)]
    hists = [r for r in records if isinstance(r, loggers.Histogram)]
    assert [(r.key, r.epoch) for r in rocs] == [
        ("mem/mia/roc", 0),
        ("mem/mia_cal/roc", 0),
        ("mem/mia/roc", 1),
        ("mem/mia_cal/roc", 1),
        ("mem/mia_traj/roc", 1),  # a trajectory needs a second evaluation
    ]
    assert float(np.trapezoid(rocs[-1].tpr, rocs[-1].fpr)) == pytest.approx(
        monitor.history[1]["mem/mia_traj/auc"], abs=1e-12
    )
    assert sorted({r.key for r in hists}) == ["mem/mia/member_losses", "mem/mia/nonmember_losses"]
    saved = load_npz(monitor.run_dir / "losses.npz")
    last_roc = rocs[2]
    # the area under the emitted curve is the logged AUC
    assert float(np.trapezoid(last_roc.tpr, last_roc.fpr)) == pytest.approx(
        monitor.history[1]["mem/mia/auc"], abs=1e-12
    )
    member_hist = [r for r in hists if r.key == "mem/mia/member_losses"][-1]
    np.testing.assert_array_equal(np.sort(member_hist.values), np.sort(saved["member_losses"][1]))


@pytest.mark.slow
def test_bf16_mixed_run_measures_probes_in_float32(tmp_path: Path) -> None:
    train, val = make_blobs(64, seed=0), make_blobs(40, seed=1)
    tl, vl = loaders(train, val)
    monitor = MembershipInferenceMonitor(num_probes=32, fprs=(0.1,))
    model = TinyClassifier(hidden=32)
    trainer(tmp_path, max_epochs=2, precision="bf16-mixed", callbacks=[monitor]).fit(model, tl, vl)

    idx = monitor.member_indices
    assert idx is not None
    float32 = _manual_losses(model, train, idx)  # the same final weights, plain float32
    np.testing.assert_allclose(monitor.member_losses[-1], float32, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        monitor.nonmember_losses[-1], _manual_losses(model, val, np.arange(32)), rtol=1e-6
    )
    # what autocast would have measured differs by far more than that tolerance
    x = torch.stack([train[int(i)][0] for i in idx])
    y = torch.stack([train[int(i)][1] for i in idx])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = F.cross_entropy(model(x).float(), y, reduction="none").numpy()
    assert np.abs(bf16 - float32).max() > 1e-4


def test_every_logged_key_is_spelled_in_the_callback() -> None:
    import inspect

    import memcallbacks.callbacks.membership as module

    source = inspect.getsource(module)
    rng = np.random.default_rng(0)
    members, nonmembers = (
        rng.gamma(1.0, size=60).astype(np.float32),
        rng.gamma(2.0, size=60).astype(np.float32),
    )
    monitor = MembershipInferenceMonitor(calibrate=True, slices="class", min_slice_size=5, fprs=(0.01, 0.1))
    monitor._ref_members, monitor._ref_nonmembers = members + 0.5, nonmembers + 0.1
    monitor._member_slices = monitor._nonmember_slices = np.array(["class_0", "class_1"] * 30)
    keys = monitor._metrics(0, members, nonmembers)
    assert not any(k.startswith("mem/mia_traj/") for k in keys)  # one evaluation: no trajectory yet
    monitor._member_history, monitor._nonmember_history = [members + 1.0], [nonmembers]
    keys = monitor._metrics(1, members, nonmembers)
    assert "mem/mia_cal/auc/class_1" in keys
    assert "mem/mia/tpr@1%fpr" in keys
    assert {"mem/mia_traj/auc", "mem/mia_traj/tpr@1%fpr", "mem/mia_traj/dropped"} <= set(keys)
    templated = {  # keys built from an argument: a literal prefix in an f-string
        "mem/mia/tpr@": 'f"mem/mia/tpr@{',
        "mem/mia_cal/tpr@": 'f"mem/mia_cal/tpr@{',
        "mem/mia/auc/": 'f"mem/mia/auc/{',
        "mem/mia_cal/auc/": 'f"mem/mia_cal/auc/{',
        "mem/mia_traj/tpr@": 'f"mem/mia_traj/tpr@{',
    }
    for key in keys:
        prefix = next((p for p in templated if key.startswith(p)), None)
        assert (f'"{key}"' in source) if prefix is None else (templated[prefix] in source), key
