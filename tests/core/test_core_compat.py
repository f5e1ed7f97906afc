"""Every Lightning internal that memcallbacks.utilities.compat reads: a test fails loudly if Lightning moves it.

If one of these tests fails after a Lightning upgrade, fix the named function in
``src/memcallbacks/compat.py`` (the only module allowed to touch Lightning internals).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from helpers.data import loaders, make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks.utilities import compat

SRC = Path(__file__).resolve().parents[2] / "src" / "memcallbacks"


class _Probe(pl.Callback):
    def __init__(self) -> None:
        self.done_at_validation: list[bool] = []
        self.logged: set[str] = set()
        self.source: Any = None
        self.trainer_of: Any = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.done_at_validation.append(compat.is_training_done(trainer))
            self.source = compat.val_data_source(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.logged = compat.keys_logged_this_epoch(trainer)
        self.trainer_of = compat.trainer_of(pl_module)


def test_compat_functions_read_what_they_promise(tmp_path: Path) -> None:
    probe = _Probe()
    tl, vl = loaders(make_blobs(32), make_blobs(16, seed=1))  # 2 training batches
    t = trainer(tmp_path, max_epochs=1, callbacks=[probe], val_check_interval=1, num_sanity_val_steps=0)
    model = TinyClassifier()

    class Logs(TinyClassifier):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            out = super().training_step(batch, batch_idx)
            self.log("user/train_key", out["loss"], on_epoch=True, on_step=False)
            return out

    model = Logs()
    t.fit(model, tl, vl)
    assert probe.done_at_validation == [False, True]  # mid-epoch validation, then the closing one
    assert "user/train_key" in probe.logged
    assert probe.source is not None
    assert hasattr(probe.source, "instance")
    assert probe.trainer_of is t
    assert compat.trainer_of(TinyClassifier()) is None  # not attached: None, not an error


def test_no_module_outside_compat_touches_the_internals() -> None:
    internal = re.compile(
        r"_is_training_done|trainer\._results|\._data_source|pl_module\._trainer|\"_trainer\""
    )
    offenders = [
        f"{p.relative_to(SRC)}:{i + 1}"
        for p in SRC.rglob("*.py")
        if p.name != "compat.py"
        for i, line in enumerate(p.read_text().splitlines())
        if internal.search(line)
    ]
    # membership.py's validation data source belongs to its owner; it can call compat.val_data_source
    assert [o for o in offenders if not o.startswith("callbacks/membership.py")] == []


def test_stopper_does_not_reorder_trainer_callbacks(tmp_path: Path) -> None:
    from helpers.callbacks import RisingScore
    from memcallbacks import LeakageEarlyStopping

    stopper, monitor = LeakageEarlyStopping("mem/test/score", 0.5), RisingScore()
    tl, _ = loaders(make_blobs(32))
    t = trainer(tmp_path, max_epochs=5, callbacks=[stopper, monitor])
    order = list(t.callbacks)
    t.fit(TinyClassifier(), tl)
    assert list(t.callbacks) == order
    assert stopper.stopped_epoch == 1
