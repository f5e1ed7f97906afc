"""The resume check shared by the monitors with ``reference="fit_start"`` or a reference module."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from helpers.models import TinyClassifier, dataset_losses


def check_resume_keeps_the_stored_reference(
    tmp: Path,
    kind: str,
    resumable: Callable[..., Any],
    stored_reference: Callable[[Any], np.ndarray | None],
    train: TensorDataset,
) -> None:
    """A fit resumed from its epoch-1 checkpoint keeps the reference losses stored at fit start.

    Args:
        tmp: The test's folder.
        kind: ``"fit_start"`` or ``"module"`` (a reference module, changed before the resume).
        resumable: ``resumable(tmp, max_epochs, reference, ckpt_path=None)`` fits a callback with a
            checkpoint per epoch and returns it.
        stored_reference: The callback's stored reference losses of the ``train`` probes.
        train: The training probes.
    """
    torch.manual_seed(3)
    base = TinyClassifier(hidden=8)
    reference: object = "fit_start" if kind == "fit_start" else base
    straight = resumable(tmp / "straight", 3, reference)
    first = resumable(tmp / "first", 2, reference)
    first_stored = stored_reference(first)
    assert first_stored is not None
    stored = first_stored.copy()
    if kind == "module":
        np.testing.assert_allclose(stored, dataset_losses(base, train), rtol=1e-5, atol=1e-6)
        with torch.no_grad():  # another reference module now: a recomputation would show
            for p in base.parameters():
                p.add_(1.0)
    # fit_start: the resumed weights (after 2 epochs) differ from the initial ones; a recomputation would show
    resumed = resumable(tmp / "first", 3, reference, ckpt_path=str(tmp / "first" / "ckpt" / "epoch=1.ckpt"))
    resumed_stored = stored_reference(resumed)
    assert resumed_stored is not None
    np.testing.assert_array_equal(resumed_stored, stored)
    assert resumed.history == straight.history
