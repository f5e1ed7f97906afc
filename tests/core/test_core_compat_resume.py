"""The two Lightning internals the resume catch-up and the twin-monitor check read (memcallbacks.utilities.compat).

Each test runs a real Trainer and fails, naming the function, when a Lightning release moves what it reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl

from helpers.data import loaders, make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks.utilities import compat


def test_showing_epoch_makes_current_epoch_read_another_epoch_and_puts_it_back(tmp_path: Path) -> None:
    t = trainer(tmp_path, max_epochs=2)
    t.fit(TinyClassifier(), loaders(make_blobs(32))[0])
    assert t.current_epoch == 2
    with compat.showing_epoch(t, 1):
        assert t.current_epoch == 1, "compat.showing_epoch: current_epoch no longer follows epoch_progress"
    assert t.current_epoch == 2
    with pytest.raises(KeyError), compat.showing_epoch(t, 0):
        raise KeyError("inside")
    assert t.current_epoch == 2  # restored when the block raises


class _Stateful(pl.Callback):
    """Records what compat.callbacks_being_validated returns when the Trainer reads its state key."""

    seen: list[Any] | None = None

    @property
    def state_key(self) -> str:
        found = compat.callbacks_being_validated()
        if found is not None:
            self.seen = found
        return "Stateful"

    def state_dict(self) -> dict[str, Any]:
        return {}


def test_callbacks_being_validated_sees_the_trainers_callback_list(tmp_path: Path) -> None:
    cb = _Stateful()
    trainer(tmp_path, callbacks=[cb])
    assert cb.seen is not None, (
        "compat.callbacks_being_validated: Lightning's Trainer(...) no longer checks state keys in "
        "_validate_callbacks_list(callbacks); update the function"
    )
    assert any(c is cb for c in cb.seen)
    assert compat.callbacks_being_validated() is None  # anywhere else: None
