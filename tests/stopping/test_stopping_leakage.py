"""LeakageEarlyStopping on a tiny real Trainer: stop epoch, reason, freshness, ordering, restore, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from helpers.callbacks import RisingScore
from helpers.data import loaders, make_blobs
from helpers.models import TinyClassifier, UserLoggedScore
from helpers.training import trainer
from memcallbacks import LeakageEarlyStopping
from memcallbacks.callbacks.stopping import LeakageCondition


def _fit(tmp_path: Path, callbacks: list[Any], epochs: int = 10, val: bool = False, **kw: Any) -> pl.Trainer:
    tl, vl = loaders(make_blobs(32), make_blobs(16, seed=1) if val else None)
    t = trainer(tmp_path, max_epochs=epochs, callbacks=callbacks, **kw)
    t.fit(TinyClassifier(), tl, vl)
    return t


@pytest.mark.parametrize("order", ["stopper_first", "monitor_first"])
@pytest.mark.parametrize("val", [False, True])
def test_stops_at_first_crossing_whatever_the_callback_order(tmp_path: Path, order: str, val: bool) -> None:
    monitor = RisingScore(start=0.0, step=1.0)  # 0, 1, 2, 3, ...
    stopper = LeakageEarlyStopping("mem/test/score", threshold=2.5)
    callbacks = [stopper, monitor] if order == "stopper_first" else [monitor, stopper]
    t = _fit(tmp_path, callbacks, val=val)
    assert stopper.stopped_epoch == 3  # a stopper deciding before the monitor would stop at 4
    assert t.current_epoch == 4  # epochs 0..3 ran
    assert stopper.reason == "Leakage: mem/test/score = 3.0 > 2.5 at epoch 3"
    saved = json.loads((Path(t.log_dir) / "memcallbacks" / "stopping.json").read_text())
    assert saved["stopped_epoch"] == 3
    assert saved["reason"] == stopper.reason
    assert saved["values"] == {"mem/test/score": 3.0}
    assert saved["conditions"] == [
        {"monitor": "mem/test/score", "threshold": 2.5, "mode": "max", "patience": 1}
    ]


def test_patience_counts_fresh_evaluations_only(tmp_path: Path) -> None:
    # evaluated at epochs 1, 3, 5, 7 with values 1, 3, 5, 7: past 2.5 at the evaluations of epochs 3 and 5.
    # Counting the stale value of epoch 3 again at epoch 4 (as EarlyStopping on callback_metrics would) stops at 4.
    monitor = RisingScore(every_n_epochs=2)
    stopper = LeakageEarlyStopping("mem/test/score", 2.5, patience=2)
    _fit(tmp_path, [stopper, monitor])
    assert stopper.stopped_epoch == 5


def test_min_mode_min_epochs_and_several_conditions(tmp_path: Path) -> None:
    falling = RisingScore(start=1.0, step=-0.1, key="mem/test/falling")  # 1.0, 0.9, 0.8, ...
    rising = RisingScore(start=0.0, step=1.0)
    stopper = LeakageEarlyStopping(
        conditions=[
            {"monitor": "mem/test/falling", "threshold": 0.85, "mode": "min"},  # crossed from epoch 2
            LeakageCondition("mem/test/score", 100.0),
        ],
        min_epochs=4,
    )
    _fit(tmp_path, [stopper, falling, rising])
    assert stopper.stopped_epoch == 3  # crossed at 2, but 4 epochs must complete first
    assert stopper.reason == "Leakage: mem/test/falling = 0.7 < 0.85 at epoch 3"


def test_restore_best_safe_loads_last_safe_weights(tmp_path: Path) -> None:
    monitor = RisingScore(record_weights=True)
    stopper = LeakageEarlyStopping("mem/test/score", 2.5, restore="best_safe", save_best_safe=True)
    model = TinyClassifier()
    tl, _ = loaders(make_blobs(32))
    t = trainer(tmp_path, max_epochs=10, callbacks=[monitor, stopper])
    t.fit(model, tl)
    assert stopper.stopped_epoch == 3
    assert stopper.best_safe_epoch == 2
    final = model.state_dict()
    for k, v in monitor.weights_at[2].items():
        assert torch.equal(final[k], v)
    assert not all(torch.equal(final[k], v) for k, v in monitor.weights_at[3].items())
    from safetensors.torch import load_file

    on_disk = load_file(stopper.best_safe_path)
    assert all(torch.equal(on_disk[k], v) for k, v in monitor.weights_at[2].items())
    assert stopper.reason.endswith("; restored the weights of epoch 2")
    assert json.loads(stopper.stopping_path.read_text())["restored_epoch"] == 2


def test_restore_best_safe_without_safe_evaluation_warns_and_keeps_weights(tmp_path: Path) -> None:
    stopper = LeakageEarlyStopping("mem/test/score", 0.5, restore="best_safe")
    with pytest.warns(UserWarning, match="no evaluation below every threshold"):
        _fit(tmp_path, [stopper, RisingScore(start=1.0)])
    assert stopper.stopped_epoch == 0
    assert stopper.best_safe_epoch is None


def test_non_finite_value_stops_when_check_finite(tmp_path: Path) -> None:
    stopper = LeakageEarlyStopping("mem/test/score", 100.0)
    _fit(tmp_path, [stopper, RisingScore(start=math.nan)])
    assert stopper.stopped_epoch == 0
    assert "is not finite" in (stopper.reason or "")
    relaxed = LeakageEarlyStopping("mem/test/score", 100.0, check_finite=False)
    t = _fit(tmp_path / "b", [relaxed, RisingScore(start=math.nan)], epochs=2)
    assert relaxed.stopped_epoch is None
    assert t.current_epoch == 2


def test_missing_key_raises_after_first_evaluation_listing_keys(tmp_path: Path) -> None:
    stopper = LeakageEarlyStopping("mem/canary/exposure_max", 15.0)
    with pytest.raises(RuntimeError, match=r"mem/canary/exposure_max.*Logged mem/\* keys: mem/test/score"):
        _fit(tmp_path, [stopper, RisingScore(every_n_epochs=2)])
    assert stopper._last_epoch_decided == 1  # waited for the every-2-epochs monitor's first evaluation


def test_key_logged_by_the_module_itself_is_fresh(tmp_path: Path) -> None:
    stopper = LeakageEarlyStopping("mem/user/score", 1.5, patience=2)
    tl, vl = loaders(make_blobs(32), make_blobs(16, seed=1))
    t = trainer(tmp_path, max_epochs=10, callbacks=[stopper])
    t.fit(UserLoggedScore(), tl, vl)
    assert stopper.stopped_epoch == 3  # values 2 (epoch 2) and 3 (epoch 3) past 1.5


def test_alert_reaches_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = pl.loggers.TensorBoardLogger(str(tmp_path), name="tb")
    stopper = LeakageEarlyStopping.exposure(bits=15.0)
    _fit(tmp_path, [stopper, RisingScore(start=14.0, step=4.2, key="mem/canary/exposure_max")], logger=tb)
    acc = EventAccumulator(tb.log_dir)
    acc.Reload()
    text = acc.Tensors("mem/alerts/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "Leakage: mem/canary/exposure_max = 18.2 bits > 15.0 at epoch 1" in text


def test_presets_build_documented_keys() -> None:
    assert LeakageEarlyStopping.exposure(bits=12).conditions == (
        LeakageCondition("mem/canary/exposure_max", 12.0, "max", 1),
    )
    assert LeakageEarlyStopping.mia_auc(0.6).conditions[0].monitor == "mem/mia/auc"
    assert LeakageEarlyStopping.tpr_at_fpr(0.1, fpr=0.01).conditions[0].monitor == "mem/mia/tpr@1%fpr"
    assert LeakageEarlyStopping.tpr_at_fpr(0.1, fpr=0.001).conditions[0].monitor == "mem/mia/tpr@0.1%fpr"
    assert LeakageEarlyStopping.loss_gap(0.5, patience=3).conditions[0] == LeakageCondition(
        "mem/gap/loss", 0.5, "max", 3
    )
    assert LeakageEarlyStopping.audit_epsilon(2.0).conditions[0].monitor == "mem/audit/epsilon_lb"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"monitor": "mem/x", "threshold": math.nan}, ValueError, "must not be NaN"),
        (
            {"monitor": "mem/x", "threshold": 1.0, "mode": "maximum"},
            ValueError,
            "`mode` can be 'max'.*'maximum'",
        ),
        (
            {"monitor": "mem/x", "threshold": 1.0, "patience": 0},
            ValueError,
            r"`patience` must be an integer >= 1, got 0",
        ),
        ({"monitor": "mem/x", "threshold": "1"}, TypeError, "`threshold` must be a number"),
        ({"monitor": "mem/x"}, ValueError, "give both `monitor` and `threshold`"),
        ({}, ValueError, "needs a condition"),
        ({"monitor": "mem/x", "threshold": 1.0, "restore": "best"}, ValueError, "`restore` can be"),
        ({"monitor": "mem/x", "threshold": 1.0, "min_epochs": -1}, ValueError, "`min_epochs`"),
        ({"conditions": [{"monitor": "mem/x", "limit": 1.0}]}, TypeError, "condition dict takes the keys"),
        ({"conditions": [("mem/x", 1.0)]}, TypeError, "LeakageCondition or dicts"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        LeakageEarlyStopping(**kwargs)


def test_resume_from_checkpoint_gives_the_same_stop(tmp_path: Path) -> None:
    def make() -> tuple[RisingScore, LeakageEarlyStopping]:
        return RisingScore(), LeakageEarlyStopping(
            "mem/test/score", 1.5, patience=3, restore="best_safe", save_best_safe=True
        )

    monitor, straight = make()
    _fit(tmp_path / "straight", [monitor, straight])
    assert straight.stopped_epoch == 4
    assert straight.best_safe_epoch == 1

    tl, _ = loaders(make_blobs(32))
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    monitor, first = make()
    t1 = trainer(
        tmp_path / "resumed", max_epochs=3, callbacks=[monitor, first, ckpt], enable_checkpointing=True
    )
    t1.fit(TinyClassifier(), tl)
    assert first.stopped_epoch is None
    assert first.counters == {"mem/test/score": 1}
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)  # loads without unpickling code
    assert state["callbacks"][first.state_key]["counters"] == {"mem/test/score": 1}
    monitor, second = make()
    t2 = trainer(tmp_path / "resumed", max_epochs=10, callbacks=[monitor, second])
    model = TinyClassifier()
    t2.fit(model, tl, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert second.stopped_epoch == 4
    assert second.reason == straight.reason
    assert second.best_safe_epoch == 1  # weights from the first process, reloaded from disk
    assert "restored the weights of epoch 1" in (second.reason or "")
