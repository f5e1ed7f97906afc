"""The step source's per-step buffer: no copy of already-detached losses, never a held autograd graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_lightning import Callback

from helpers.data import loaders, make_blobs
from helpers.models import TinyClassifier, per_sample_losses
from helpers.training import trainer
from memcallbacks import LossTrajectoryTracker, split_index


class _Returned(TinyClassifier):
    """Keeps each step's returned ``sample_loss``; ``detach=False`` returns it with its graph."""

    def __init__(self, *, detach: bool) -> None:
        super().__init__(lr=0.0)
        self.detach = detach
        self.returned: list[torch.Tensor] = []

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        index, (x, y) = split_index(batch)
        per_sample = F.cross_entropy(self(x), y, reduction="none")
        sample_loss = per_sample.detach() if self.detach else per_sample
        self.returned.append(sample_loss)
        return {"loss": per_sample.mean(), "sample_loss": sample_loss, "sample_index": index}


class _Buffered(Callback):
    """After the tracker's hook (later in the callback list): the tracker's buffer at the epoch's last step."""

    def __init__(self, tracker: LossTrajectoryTracker, last: int) -> None:
        self.tracker, self.last = tracker, last
        self.steps: list[Any] = []

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == self.last:
            self.steps = list(self.tracker._steps)


@pytest.mark.parametrize("detach", [True, False])
def test_step_buffer_holds_detached_losses_without_copies(tmp_path: Path, detach: bool) -> None:
    ds = make_blobs(48)
    model = _Returned(detach=detach)
    expected = per_sample_losses(model, *ds.tensors)  # lr=0: the losses of every step
    tracker = LossTrajectoryTracker()
    probe = _Buffered(tracker, last=5)  # 48 samples / batch 8 = 6 steps
    trainer(tmp_path, max_epochs=1, callbacks=[tracker, probe]).fit(model, loaders(ds, batch_size=8)[0])

    assert len(probe.steps) == 6
    assert all(not s[0].requires_grad and s[0].grad_fn is None for s in probe.steps)  # no graph kept alive
    unchecked = probe.steps[
        2:
    ]  # after the fully checked first steps: one append, no copy when already detached
    same = [buffered[0] is returned for buffered, returned in zip(unchecked, model.returned[2:])]
    assert all(same) if detach else not any(same)
    # whichever way they were returned, the stored values are the model's own per-sample losses
    np.testing.assert_array_equal(tracker.store.matrix()[:, 0], expected.astype(np.float16))


class _LateFault(TinyClassifier):
    """Returns a broken output at one later step only (after the fully checked first steps of the epoch)."""

    def __init__(self, fault: str, step: int = 4) -> None:
        super().__init__()
        self.fault, self.step = fault, step

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        out = super().training_step(batch, batch_idx)
        if batch_idx == self.step:
            if self.fault == "short_index":
                out["sample_index"] = out["sample_index"][:-1]
            elif self.fault == "float_index":
                out["sample_index"] = out["sample_index"].float()
            elif self.fault == "short_correct":
                out["sample_correct"] = out["sample_correct"][:-1]
            elif self.fault == "column_loss":
                out["sample_loss"] = out["sample_loss"][:, None]
        return out


@pytest.mark.parametrize(
    ("fault", "error", "match"),
    [
        ("short_index", ValueError, r"must both have shape \[B\]"),
        ("float_index", TypeError, "integer tensor of sample indices, got dtype torch.float32"),
        ("short_correct", ValueError, r"`sample_correct` must have shape \[B\] = \(8,\), got \(7,\)"),
        ("column_loss", ValueError, r"must both have shape \[B\]"),
    ],
)
def test_a_later_step_unlike_the_checked_ones_fails_at_epoch_end(
    tmp_path: Path, fault: str, error: type, match: str
) -> None:
    """Steps are checked again at the epoch end whenever their shapes or dtypes change."""
    tr = trainer(tmp_path, max_epochs=1, callbacks=[LossTrajectoryTracker()])
    with pytest.raises(error, match=match):
        tr.fit(_LateFault(fault), loaders(make_blobs(48), batch_size=8)[0])
