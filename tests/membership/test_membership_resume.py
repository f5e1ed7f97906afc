"""Resuming from a checkpoint keeps probe indices, the calibration reference and the history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from helpers.data import loaders, make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks import MembershipInferenceMonitor
from memcallbacks.utilities.fileio import load_json, load_npz


def _run(tmp: Path, max_epochs: int, ckpt_path: str | None = None) -> MembershipInferenceMonitor:
    torch.manual_seed(0)
    tl, vl = loaders(make_blobs(80, seed=0), make_blobs(50, seed=1), shuffle=False)
    monitor = MembershipInferenceMonitor(
        num_probes=40, calibrate=True, slices="class", min_slice_size=5, seed=7
    )
    ckpt = ModelCheckpoint(dirpath=tmp / "ckpt", every_n_epochs=1, save_top_k=-1, filename="{epoch}")
    t = trainer(tmp, max_epochs=max_epochs, callbacks=[monitor, ckpt], enable_checkpointing=True)
    t.fit(TinyClassifier(hidden=8), tl, vl, ckpt_path=ckpt_path)
    return monitor


@pytest.mark.slow
def test_resume_gives_identical_numbers(tmp_path: Path) -> None:
    straight = _run(tmp_path / "straight", 4)
    _run(tmp_path / "first", 2)
    ckpt = tmp_path / "first" / "ckpt" / "epoch=1.ckpt"
    state = torch.load(ckpt, weights_only=True)  # plain tensors and primitives only
    (key,) = [k for k in state["callbacks"] if k.startswith("MembershipInferenceMonitor")]
    assert state["callbacks"][key]["epochs"] == [0, 1]
    resumed = _run(tmp_path / "first", 4, ckpt_path=str(ckpt))

    assert resumed.history == straight.history  # includes mem/mia_cal/* (reference from epoch 0)
    assert len(resumed.history) == 4
    assert resumed.history[2]["mem/mia_cal/auc"] != 0.5
    np.testing.assert_array_equal(resumed.member_losses, straight.member_losses)
    np.testing.assert_array_equal(resumed.nonmember_losses, straight.nonmember_losses)
    a, b = load_npz(resumed.run_dir / "losses.npz"), load_npz(straight.run_dir / "losses.npz")
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    resumed_json, straight_json = (load_json(m.run_dir / "metrics.json") for m in (resumed, straight))
    assert resumed_json.pop("run_id") != straight_json.pop("run_id")  # two runs; the resume kept its own
    assert resumed_json == straight_json


def test_state_dict_round_trip() -> None:
    m = MembershipInferenceMonitor(calibrate=True)
    m._probes.member_indices = np.array([3, 1, 4])
    m._probes.nonmember_indices = np.array([0, 1])
    m._epochs = [0]
    m._member_history = [np.array([0.1, 0.2, 0.3], np.float32)]
    m._nonmember_history = [np.array([0.5, np.nan], np.float32)]
    m._ref_members, m._ref_nonmembers = m._member_history[0].copy(), m._nonmember_history[0].copy()
    m._history = [{"epoch": 0, "step": 5, "mem/mia/auc": 1.0}]
    state = m.state_dict()
    buf = __import__("io").BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    other = MembershipInferenceMonitor(calibrate=True)
    other.load_state_dict(loaded)
    np.testing.assert_array_equal(other.member_losses, m.member_losses)
    np.testing.assert_array_equal(other.nonmember_losses, m.nonmember_losses)
    np.testing.assert_array_equal(other._ref_nonmembers, m._ref_nonmembers)
    assert other.history == m.history
    assert other.member_indices.tolist() == [3, 1, 4]
    # an older/empty state loads with defaults
    fresh = MembershipInferenceMonitor()
    fresh.load_state_dict({})
    assert fresh.history == []
    assert fresh.member_losses.shape == (0, 0)


def _fit(
    tmp: Path, monitor: MembershipInferenceMonitor, max_epochs: int, ckpt_path: str | None = None
) -> None:
    torch.manual_seed(0)
    tl, vl = loaders(make_blobs(48, seed=0), make_blobs(30, seed=1), shuffle=False)
    ckpt = ModelCheckpoint(dirpath=tmp / "ckpt", every_n_epochs=1, save_top_k=-1, filename="{epoch}")
    t = trainer(tmp, max_epochs=max_epochs, callbacks=[monitor, ckpt], enable_checkpointing=True)
    t.fit(TinyClassifier(hidden=8), tl, vl, ckpt_path=ckpt_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("changed", "pattern"),
    [
        ({"seed": 8}, r"`seed`=7, this callback has `seed`=8"),
        ({"num_probes": 20}, r"`num_probes`=24, this callback has `num_probes`=20"),
        ({"calibrate": False}, r"`calibrate`=True, this callback has `calibrate`=False"),
    ],
)
def test_resume_with_a_changed_measured_argument_raises_naming_both_values(
    tmp_path: Path, changed: dict[str, object], pattern: str
) -> None:
    args: dict[str, object] = {"num_probes": 24, "seed": 7, "calibrate": True}
    _fit(tmp_path, MembershipInferenceMonitor(**args), 1)  # type: ignore[arg-type]
    other = MembershipInferenceMonitor(**{**args, **changed})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=pattern):
        _fit(tmp_path, other, 2, ckpt_path=str(tmp_path / "ckpt" / "epoch=0.ckpt"))


@pytest.mark.slow
def test_resume_with_another_run_dir_and_schedule_keeps_the_history(tmp_path: Path) -> None:
    first = MembershipInferenceMonitor(num_probes=24, seed=7, run_dir=tmp_path / "a")
    _fit(tmp_path, first, 2)
    moved = MembershipInferenceMonitor(num_probes=24, seed=7, run_dir=tmp_path / "b", every_n_epochs=2)
    assert moved.state_key == first.state_key  # when/where arguments stay out of the key
    _fit(tmp_path, moved, 4, ckpt_path=str(tmp_path / "ckpt" / "epoch=1.ckpt"))
    assert [row["epoch"] for row in moved.history] == [0.0, 1.0, 3.0]  # 2 skipped: every 2nd epoch now
    assert moved.history[:2] == first.history
    saved = load_npz(tmp_path / "b" / "membership" / "losses.npz")
    assert saved["epochs"].tolist() == [0, 1, 3]
    np.testing.assert_array_equal(saved["member_losses"][:2], first.member_losses)
    np.testing.assert_array_equal(
        saved["member_indices"], load_npz(first.run_dir / "losses.npz")["member_indices"]
    )
