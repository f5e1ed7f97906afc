"""The one probe resolver (callbacks/probes.py): discovery with the validation fallback, one draw rule,
persisted indices and resume checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from helpers.data import loaders, make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks import MembershipInferenceMonitor
from memcallbacks.callbacks import probes


class _ResolveAtFirstEpochEnd(pl.Callback):
    """Resolves the probes at the end of the first training epoch, before any validation run."""

    def __init__(self, resolver: probes.ProbeResolver) -> None:
        self.resolver = resolver
        self.found: dict[str, Any] = {}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.found:
            return
        # the loaders passed to fit are not loaded yet: the validation run comes at epoch 1
        self.found["loaded_val"] = probes.dataset_of(getattr(trainer, "val_dataloaders", None))
        self.found["members"], self.found["nonmembers"] = self.resolver.resolve(trainer)


def test_validation_loaders_passed_to_fit_are_found_before_the_first_validation(tmp_path: Path) -> None:
    train, val = make_blobs(40, seed=0), make_blobs(30, seed=1)
    tl, vl = loaders(train, val)
    resolver = probes.ProbeResolver("Probe", num_probes=12, seed=0, require_nonmembers=False)
    probe = _ResolveAtFirstEpochEnd(resolver)
    trainer(tmp_path, max_epochs=1, check_val_every_n_epoch=2, callbacks=[probe]).fit(
        TinyClassifier(), tl, vl
    )
    assert probe.found["loaded_val"] is None  # a lookup of the loaded loaders alone finds nothing here
    nonmembers = probe.found["nonmembers"]
    assert nonmembers is not None
    assert len(nonmembers) == 12
    assert resolver.nonmember_indices.tolist() == list(range(12))
    torch.testing.assert_close(nonmembers[0][0], val[0][0])


def test_the_same_seed_draws_the_same_members_in_every_monitor(tmp_path: Path) -> None:
    train, val = make_blobs(50, seed=0), make_blobs(20, seed=1)
    tl, vl = loaders(train, val)
    monitor = MembershipInferenceMonitor(num_probes=10, seed=3, trajectory_attack=False)
    resolver = probes.ProbeResolver("Probe", num_probes=10, seed=3, require_nonmembers=False)
    probe = _ResolveAtFirstEpochEnd(resolver)
    trainer(tmp_path, max_epochs=1, callbacks=[monitor, probe]).fit(TinyClassifier(), tl, vl)
    expected = probes.seeded_indices(50, 10, 3)
    assert monitor.member_indices.tolist() == resolver.member_indices.tolist() == expected.tolist()
    assert monitor.nonmember_indices.tolist() == resolver.nonmember_indices.tolist() == list(range(10))
    # a given dataset drawn (draw_given=True) follows the same rule
    given = probes.ProbeResolver(
        "Probe", members=train, nonmembers=val, num_probes=10, seed=3, draw_given=True
    )
    given.resolve(None)
    assert given.member_indices.tolist() == expected.tolist()
    assert given.nonmember_indices.tolist() == list(range(10))


def test_given_probes_are_used_whole_and_indices_round_trip(tmp_path: Path) -> None:
    train, val = make_blobs(8, seed=0), make_blobs(5, seed=1)
    resolver = probes.ProbeResolver("Probe", members=train, nonmembers=val, num_probes=3, seed=0)
    members, nonmembers = resolver.resolve(None)
    assert len(members) == 8
    assert nonmembers is not None
    assert len(nonmembers) == 5
    assert resolver.measured_args() == {
        "members": "a dataset of 8 samples",
        "nonmembers": "a dataset of 5 samples",
    }
    other = probes.ProbeResolver("Probe", members=train, nonmembers=val, num_probes=3, seed=0)
    other.load_state_dict(resolver.state_dict())
    assert other.member_indices.tolist() == list(range(8))
    assert other.nonmember_indices.tolist() == list(range(5))
    fresh = probes.ProbeResolver("Probe", num_probes=3, seed=0)
    fresh.load_state_dict({})  # an older checkpoint without indices: drawn again
    assert fresh.member_indices is None
    assert fresh.nonmember_indices is None
    assert fresh.measured_args() == {
        "members": "a random subset of the training data",
        "nonmembers": "the validation data",
        "seed": 0,
        "num_probes": 3,
    }


def test_resume_checks_name_the_fix() -> None:
    train, val = make_blobs(8, seed=0), make_blobs(5, seed=1)
    resolver = probes.ProbeResolver("Probe", members=train, nonmembers=val, num_probes=3, seed=0)
    resolver.load_state_dict({"member_indices": torch.tensor([0, 9]), "nonmember_indices": torch.tensor([0])})
    with pytest.raises(
        ValueError, match=r"Probe: the stored `members` probe indices go up to 9 but the dataset has 8"
    ):
        resolver.resolve(None)
    # optional non-members: none found gives None, unless the checkpoint had some
    optional = probes.ProbeResolver("Probe", members=train, num_probes=3, seed=0, require_nonmembers=False)
    members, nonmembers = optional.resolve(None)
    assert len(members) == 8
    assert nonmembers is None
    assert optional.nonmember_indices.size == 0
    optional.load_state_dict({"member_indices": torch.tensor([0]), "nonmember_indices": torch.tensor([1, 2])})
    with pytest.raises(RuntimeError, match="the checkpoint has non-member probes"):
        optional.resolve(None)
    required = probes.ProbeResolver("Probe", members=train, num_probes=3, seed=0)
    with pytest.raises(RuntimeError, match=r"Probe needs held-out \(non-member\) samples"):
        required.resolve(None)


def test_seeded_indices_are_sorted_and_fixed() -> None:
    a, b = probes.seeded_indices(100, 7, 5), probes.seeded_indices(100, 7, 5)
    assert a.tolist() == b.tolist() == sorted(a.tolist())
    assert a.dtype == np.int64
    assert probes.seeded_indices(4, 7, 5).tolist() == [0, 1, 2, 3]
