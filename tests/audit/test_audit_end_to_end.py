"""End to end: an over-fitting model proves epsilon > 0 on its canaries; a model that never saw them does not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from helpers.data import loaders, make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks import PrivacyAuditMonitor


def _random_label_canaries(m: int, seed: int = 7) -> TensorDataset:
    # random inputs with random labels (10 classes): only memorisation can get them right
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(m, 32, generator=g), torch.randint(0, 10, (m,), generator=g))


@pytest.mark.slow
@pytest.mark.parametrize("trained_on_canaries", [True, False])
def test_audit_separates_memorised_from_unseen_canaries(tmp_path: Path, trained_on_canaries: bool) -> None:
    m = 200
    audit = PrivacyAuditMonitor(_random_label_canaries(m), seed=0, every_n_epochs=40)  # k = 20 + 20
    base = make_blobs(100, dim=32, classes=10)
    train_set = audit.inject(base) if trained_on_canaries else base
    train, _ = loaders(train_set, batch_size=50)
    model = TinyClassifier(dim=32, classes=10, hidden=256, lr=0.0)
    model.configure_optimizers = lambda: torch.optim.Adam(model.parameters(), lr=1e-2)  # type: ignore[method-assign]
    trainer(tmp_path, max_epochs=80, callbacks=[audit]).fit(model, train)

    last = audit.history[-1]
    assert last["epoch"] == 79
    assert last["mem/audit/guesses"] == 40
    if trained_on_canaries:
        # the 100 included canaries are memorised: nearly every guess is right
        assert last["mem/audit/accuracy"] >= 0.95
        assert last["mem/audit/epsilon_lb"] > 2.0  # 40/40 right would give 2.55
    else:
        assert last["mem/audit/accuracy"] <= 0.75
        assert last["mem/audit/epsilon_lb"] < 0.5
