"""Bad input to MembershipInferenceMonitor: clear errors naming the argument; NaN losses."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch.utils.data import TensorDataset

from helpers.data import loaders, make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks import MembershipInferenceMonitor
from memcallbacks.utilities.fileio import load_npz


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_every_n_epochs_must_be_positive(value: Any) -> None:
    with pytest.raises((TypeError, ValueError), match=r"`every_n_epochs` must be an integer >= 1, got"):
        MembershipInferenceMonitor(every_n_epochs=value)


@pytest.mark.parametrize("fprs", [(0.0,), (1.0,), (-0.01, 0.01), (0.01, 1.5), (float("nan"),)])
def test_fprs_outside_open_unit_interval(fprs: Any) -> None:
    with pytest.raises(ValueError, match=r"`fprs` must hold false-positive rates in \(0, 1\)"):
        MembershipInferenceMonitor(fprs=fprs)


def test_fprs_wrong_type() -> None:
    with pytest.raises(TypeError, match="`fprs`"):
        MembershipInferenceMonitor(fprs=("1%",))


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"num_probes": 0}, "num_probes"),
        ({"min_slice_size": 0}, "min_slice_size"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_positive_integers(kw: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=f"`{name}` must be an integer >= 1, got 0"):
        MembershipInferenceMonitor(**kw)


def test_slices_must_be_class_or_callable() -> None:
    with pytest.raises(TypeError, match="`slices` must be None, 'class' or a function"):
        MembershipInferenceMonitor(slices="label")


def test_empty_probes() -> None:
    empty = TensorDataset(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`members` is empty"):
        MembershipInferenceMonitor(members=empty)
    with pytest.raises(ValueError, match=r"`nonmembers` is empty"):
        MembershipInferenceMonitor(nonmembers=empty)


def test_probe_must_be_map_style() -> None:
    with pytest.raises(TypeError, match="`members` must be a map-style dataset"):
        MembershipInferenceMonitor(members=iter([1, 2]))


class DictItems(torch.utils.data.Dataset):
    def __init__(self, base: TensorDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, y = self.base[i]
        return {"x": x, "y": y}


def test_members_and_nonmembers_with_different_structures() -> None:
    a, b = make_blobs(10), make_blobs(10, seed=1)
    with pytest.raises(
        ValueError, match=r"`members` and `nonmembers` must yield items of the same structure"
    ):
        MembershipInferenceMonitor(members=a, nonmembers=DictItems(b))


def test_structure_mismatch_found_at_first_evaluation(tmp_path: Path) -> None:
    train = make_blobs(24)
    tl, _ = loaders(train)
    vl = torch.utils.data.DataLoader(DictItems(make_blobs(12, seed=1)), batch_size=4)

    class DictVal(TinyClassifier):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", F.cross_entropy(self(batch["x"]), batch["y"]))

    t = trainer(tmp_path, max_epochs=1, callbacks=[MembershipInferenceMonitor()])
    with pytest.raises(ValueError, match="same structure"):
        t.fit(DictVal(), tl, vl)


def test_scalar_loss_says_reduction_none(tmp_path: Path) -> None:
    tl, vl = loaders(make_blobs(24), make_blobs(12, seed=1))
    monitor = MembershipInferenceMonitor(sample_loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]))
    with pytest.raises(ValueError, match=r"returned a scalar.*reduction='none'"):
        trainer(tmp_path, max_epochs=1, callbacks=[monitor]).fit(TinyClassifier(), tl, vl)


def test_sample_loss_fn_not_callable() -> None:
    with pytest.raises(TypeError, match="`sample_loss_fn` must be callable"):
        MembershipInferenceMonitor(sample_loss_fn="ce")  # type: ignore[arg-type]


def nan_for_large_first_feature(module: Any, batch: Any) -> torch.Tensor:
    x, y = batch
    loss = F.cross_entropy(module(x), y, reduction="none")
    return torch.where(x[:, 0] > 1.0, torch.full_like(loss, float("nan")), loss)


def test_nan_losses_counted_excluded_and_warned_once(tmp_path: Path) -> None:
    train, val = make_blobs(60, seed=0), make_blobs(60, seed=1)
    tl, vl = loaders(train, val)
    monitor = MembershipInferenceMonitor(sample_loss_fn=nan_for_large_first_feature, fprs=(0.1,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, max_epochs=3, callbacks=[monitor]).fit(TinyClassifier(), tl, vl)
    nan_warnings = [w for w in caught if "NaN/inf" in str(w.message)]
    assert len(nan_warnings) == 1
    expected_nan = int((train.tensors[0][:, 0] > 1.0).sum() + (val.tensors[0][:, 0] > 1.0).sum())
    assert expected_nan > 0
    saved = load_npz(monitor.run_dir / "losses.npz")
    for e, row in enumerate(monitor.history):
        assert row["mem/mia/nonfinite"] == expected_nan
        m, n = saved["member_losses"][e], saved["nonmember_losses"][e]
        m, n = m[np.isfinite(m)], n[np.isfinite(n)]
        assert row["mem/mia/n_members"] == m.size
        assert row["mem/mia/n_nonmembers"] == n.size
        labels = np.r_[np.ones(m.size), np.zeros(n.size)]
        assert row["mem/mia/auc"] == pytest.approx(roc_auc_score(labels, -np.r_[m, n]), abs=1e-12)
    assert np.isnan(saved["member_losses"]).sum() > 0  # the raw numbers keep the NaN


@pytest.mark.parametrize(
    ("kw", "error", "pattern"),
    [
        (
            {"seed": -1},
            ValueError,
            r"`seed` must be an integer in \[0, .*got -1 \(int\); pass a non-negative",
        ),
        ({"seed": "a"}, TypeError, r"`seed` must be an integer .*got 'a' \(str\)"),
        ({"seed": 1.0}, TypeError, r"`seed` must be an integer"),
        ({"calibrate": "no"}, TypeError, r"`calibrate` must be True or False, got 'no'"),
        (
            {"trajectory_attack": "false"},
            TypeError,
            r"`trajectory_attack` must be True or False, got 'false'",
        ),
        ({"trajectory_attack": 1}, TypeError, r"`trajectory_attack` must be True or False, got 1"),
        ({"log_per_sample": "false"}, TypeError, r"`log_per_sample` must be True or False"),
        ({"num_probes": True}, TypeError, r"`num_probes` must be an integer >= 1, got True"),
        ({"name": "a/b"}, ValueError, r"`name` must be None or a non-empty string"),
        ({"collate_fn": 3}, TypeError, r"`collate_fn` must be None or a function"),
    ],
)
def test_bad_arguments_name_the_argument_and_the_fix(kw: dict[str, Any], error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        MembershipInferenceMonitor(**kw)


def test_numpy_integers_are_integers() -> None:
    m = MembershipInferenceMonitor(seed=np.int64(3), num_probes=np.int32(10))
    assert m.seed == 3
    assert m.num_probes == 10
    assert type(m.seed) is int


def test_heldout_set_with_another_feature_shape_is_named() -> None:
    with pytest.raises(
        ValueError, match=r"the held-out set \(`nonmembers`, the non-members\) yields tensors of shape"
    ):
        MembershipInferenceMonitor(members=make_blobs(10, dim=8), nonmembers=make_blobs(10, dim=5))


def test_validation_set_with_another_feature_shape_is_named(tmp_path: Path) -> None:
    tl, vl = loaders(make_blobs(24, dim=8), make_blobs(12, dim=5, seed=1))

    class NoVal(TinyClassifier):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            return None

    t = trainer(tmp_path, max_epochs=1, callbacks=[MembershipInferenceMonitor()], limit_val_batches=0)
    with pytest.raises(ValueError, match=r"the held-out set \(the validation dataset, the non-members\)"):
        t.fit(NoVal(), tl, vl)


def test_heldout_labels_out_of_range_are_named(tmp_path: Path) -> None:
    train, held = make_blobs(24, classes=3), make_blobs(12, classes=3, seed=1)
    bad = TensorDataset(held.tensors[0], held.tensors[1] + 5)  # labels 5..7 for a 3-class model
    tl, _ = loaders(train)
    monitor = MembershipInferenceMonitor(nonmembers=bad)
    with pytest.raises(
        ValueError, match=r"held-out set \(`nonmembers`.*\) cannot be scored .*0 <= y < number of logits"
    ):
        trainer(tmp_path, max_epochs=1, callbacks=[monitor]).fit(TinyClassifier(), tl)


def nan_from_second_epoch(module: Any, batch: Any) -> torch.Tensor:
    x, y = batch
    loss = F.cross_entropy(module(x), y, reduction="none")
    return loss * float("nan") if module.trainer.current_epoch >= 1 else loss


def test_all_nan_probe_losses_log_nan_never_a_safe_value_and_training_goes_on(tmp_path: Path) -> None:
    tl, vl = loaders(make_blobs(48, seed=0), make_blobs(40, seed=1))
    monitor = MembershipInferenceMonitor(sample_loss_fn=nan_from_second_epoch, calibrate=True, fprs=(0.1,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = trainer(tmp_path, max_epochs=3, callbacks=[monitor])
        t.fit(TinyClassifier(), tl, vl)
    assert t.current_epoch == 3  # training was not ended
    assert len([w for w in caught if "NaN/inf" in str(w.message)]) == 1
    first, *later = monitor.history
    assert 0.0 <= first["mem/mia/auc"] <= 1.0
    for row in later:
        assert row["mem/mia/nonfinite"] == 48 + 40
        assert row["mem/mia/n_members"] == 0
        assert row["mem/mia/n_nonmembers"] == 0
        for key in (
            "mem/mia/auc",
            "mem/mia/advantage",
            "mem/mia/tpr@10%fpr",
            "mem/mia/balanced_accuracy",
            "mem/gap/loss",
            "mem/gap/loss_ratio",
            "mem/mia_cal/auc",
            "mem/mia_cal/tpr@10%fpr",
        ):
            assert np.isnan(row[key]), key
    assert np.isnan(float(t.callback_metrics["mem/mia/auc"]))  # not the stale epoch-0 value
    assert monitor.report is None


def _unvisited_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "have not been visited by training" in str(w.message)]


def test_members_never_trained_on_are_counted_and_warned_once(tmp_path: Path) -> None:
    train, val = make_blobs(96, seed=0), make_blobs(40, seed=1)
    tl, vl = loaders(train, val, shuffle=False)  # sequential: the loop sees samples 0..31 every epoch
    monitor = MembershipInferenceMonitor(num_probes=40, seed=3, fprs=(0.1,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, max_epochs=2, limit_train_batches=2, callbacks=[monitor]).fit(
            TinyClassifier(), tl, vl
        )
    idx = np.sort(np.random.default_rng(3).choice(96, size=40, replace=False))
    expected = int((idx >= 32).sum())
    assert expected > 0
    (message,) = _unvisited_warnings(caught)
    assert message.startswith(f"MembershipInferenceMonitor: {expected} of the 40 member probes")
    assert "`limit_train_batches` or `max_steps`" in message
    assert "`members=`" in message


def test_max_steps_mid_epoch_warns_with_an_estimate_and_full_epochs_do_not(tmp_path: Path) -> None:
    train, val = make_blobs(96, seed=0), make_blobs(40, seed=1)
    tl, vl = loaders(train, val, shuffle=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor = MembershipInferenceMonitor(num_probes=40, fprs=(0.1,))
        trainer(tmp_path / "a", max_epochs=3, max_steps=2, callbacks=[monitor]).fit(TinyClassifier(), tl, vl)
    (message,) = _unvisited_warnings(caught)
    assert "about 27 (expected, the loader shuffles) of the 40" in message  # 40 * (1 - 2/6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor = MembershipInferenceMonitor(num_probes=40, fprs=(0.1,))
        trainer(tmp_path / "b", max_epochs=2, callbacks=[monitor]).fit(TinyClassifier(), tl, vl)
    assert _unvisited_warnings(caught) == []
