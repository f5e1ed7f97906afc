"""LeakageEarlyStopping's resume contract, Trainer modes and state key (issues 12, 13 and 16)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from helpers.callbacks import RisingScore
from helpers.data import loaders, make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks import LeakageEarlyStopping


def _fit(
    root: Path, callbacks: list[Any], epochs: int, ckpt_path: str | None = None, **kw: Any
) -> pl.Trainer:
    tl, _ = loaders(make_blobs(32))
    t = trainer(root, max_epochs=epochs, callbacks=callbacks, **kw)
    t.fit(TinyClassifier(), tl, ckpt_path=ckpt_path)
    return t


def _stopped_run(tmp_path: Path) -> Path:
    """A run stopped at epoch 2 (values 0, 1, 2 > 1.5) with a checkpoint saved after the stop."""
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    stopper = LeakageEarlyStopping("mem/test/score", 1.5)
    t = _fit(tmp_path / "first", [RisingScore(), stopper, ckpt], 10, enable_checkpointing=True)
    assert stopper.stopped_epoch == 2
    assert t.current_epoch == 3
    return tmp_path / "ckpt" / "last.ckpt"


def test_resuming_a_stopped_run_stops_again_at_once(tmp_path: Path) -> None:
    ckpt = _stopped_run(tmp_path)
    monitor, stopper = RisingScore(record_weights=True), LeakageEarlyStopping("mem/test/score", 1.5)
    model = TinyClassifier()
    tl, _ = loaders(make_blobs(32))
    t = trainer(tmp_path / "second", max_epochs=10, callbacks=[monitor, stopper])
    with pytest.warns(UserWarning, match=r"stopped at epoch 2 .*continue_after_stop=True"):
        t.fit(model, tl, ckpt_path=str(ckpt))
    assert t.global_step == torch.load(ckpt, weights_only=True)["global_step"]  # no training step
    assert monitor.last_epoch_done == -1
    assert monitor.weights_at == {}
    assert stopper.stopped_epoch == 2
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())  # weights unchanged


def test_continue_after_stop_trains_on(tmp_path: Path) -> None:
    ckpt = _stopped_run(tmp_path)
    stopper = LeakageEarlyStopping("mem/test/score", 100.0, continue_after_stop=True)  # a new threshold
    t = _fit(tmp_path / "second", [RisingScore(), stopper], 5, ckpt_path=str(ckpt))
    assert t.current_epoch == 5
    assert stopper.stopped_epoch is None
    info = json.loads(stopper.stopping_path.read_text())
    assert info["stopped"] is False
    assert info["last_epoch"] == 4


def test_changed_threshold_and_patience_carry_the_counters_over(tmp_path: Path) -> None:
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = LeakageEarlyStopping("mem/test/score", 0.5, patience=5)
    _fit(tmp_path / "a", [RisingScore(), first, ckpt], 3, enable_checkpointing=True)
    assert first.counters == {"mem/test/score": 2}  # values 1, 2 past 0.5
    second = LeakageEarlyStopping("mem/test/score", 0.7, patience=3, run_dir=tmp_path / "moved")
    assert second.state_key == first.state_key  # thresholds, patience, run_dir: not in the key
    _fit(tmp_path / "b", [RisingScore(), second], 10, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert second.stopped_epoch == 3  # the third value past the threshold: counter 2 carried over
    assert json.loads((tmp_path / "moved" / "stopping.json").read_text())["stopped_epoch"] == 3


def test_state_key_names_the_keys_and_duplicates_need_a_name(tmp_path: Path) -> None:
    a = LeakageEarlyStopping("mem/test/score", 1.0)
    assert a.state_key == "LeakageEarlyStopping{'monitors': ['mem/test/score']}"
    assert a.state_key == LeakageEarlyStopping("mem/test/score", 5.0, patience=3).state_key
    b = LeakageEarlyStopping("mem/test/score", 2.0)
    with pytest.raises(ValueError, match=r"two LeakageEarlyStopping .*give each a distinct `name=`"):
        _fit(tmp_path, [RisingScore(), a, b], 1)  # in Trainer(...), before Lightning's state-key error
    named = LeakageEarlyStopping("mem/test/score", 2.0, name="strict")
    _fit(tmp_path / "ok", [RisingScore(), LeakageEarlyStopping("mem/test/score", 1.0), named], 1)


def test_fast_dev_run_skips_the_stopper_and_the_monitors(tmp_path: Path) -> None:
    import memcallbacks.callbacks._base as base

    base._FAST_DEV_RUN_WARNED.clear()
    monitor, stopper = RisingScore(start=5.0), LeakageEarlyStopping("mem/test/score", 1.0)
    with pytest.warns(UserWarning, match="RisingScore is skipped under `Trainer\\(fast_dev_run=...\\)`"):
        t = _fit(tmp_path, [monitor, stopper], 3, fast_dev_run=True)
    assert "mem/test/score" not in t.callback_metrics
    assert monitor.last_epoch_done == -1
    assert stopper.stopped_epoch is None
    assert not list(tmp_path.rglob("memcallbacks"))  # no run directory written


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"check_finite": "false"}, TypeError, "`check_finite` must be True or False, got 'false'"),
        ({"save_best_safe": 1}, TypeError, "`save_best_safe` must be True or False"),
        ({"continue_after_stop": "yes"}, TypeError, "`continue_after_stop` must be True or False"),
        ({"min_epochs": 1.5}, TypeError, "`min_epochs` must be an integer >= 0, got 1.5"),
        ({"patience": True}, TypeError, "`patience` must be an integer >= 1, got True"),
        ({"run_dir": 123}, TypeError, "`run_dir` must be a path"),
        ({"name": ""}, TypeError, "`name` must be a non-empty string"),
    ],
)
def test_arguments_go_through_the_one_validation_policy(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        LeakageEarlyStopping("mem/x", 1.0, **kwargs)


def test_best_safe_weights_are_safetensors_not_pickle(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    stopper = LeakageEarlyStopping("mem/test/score", 1.5, restore="best_safe", save_best_safe=True)
    _fit(tmp_path, [RisingScore(), stopper], 5)
    path = stopper.best_safe_path
    assert path.name == "stopping_best_safe.safetensors"
    assert path.is_file()
    assert not list(tmp_path.rglob("*.pt"))
    head = path.read_bytes()[:16]
    assert not head.startswith(b"\x80")
    assert not head.startswith(b"PK")
    assert set(load_file(path)) == set(TinyClassifier().state_dict())
