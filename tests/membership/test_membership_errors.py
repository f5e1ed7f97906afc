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

from _helpers import TinyClassifier, loaders, make_blobs, trainer
from memcallbacks import MembershipInferenceMonitor
from memcallbacks._io import load_npz


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_every_n_epochs_must_be_positive(value: Any) -> None:
    with pytest.raises(ValueError, match=r"`every_n_epochs` must be an integer >= 1, got"):
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
        ({"num_probe": 0}, "num_probe"),
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
        assert row["mem/mia/n_members"] == m.size and row["mem/mia/n_nonmembers"] == n.size
        labels = np.r_[np.ones(m.size), np.zeros(n.size)]
        assert row["mem/mia/auc"] == pytest.approx(roc_auc_score(labels, -np.r_[m, n]), abs=1e-12)
    assert np.isnan(saved["member_losses"]).sum() > 0  # the raw numbers keep the NaN
