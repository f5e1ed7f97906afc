"""``DPEpsilonMonitor(every_n_steps=N)`` logs epsilon at global steps; ShadowScoreRecorder refuses a schedule."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from opacus.data_loader import DPDataLoader
from scipy import optimize, stats
from torch.utils.data import DataLoader

from helpers.data import make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks import DPEpsilonMonitor, IndexedDataset, ShadowScoreRecorder
from memcallbacks.callbacks.dp import make_private
from memcallbacks.rundir import RunDirectory
from memcallbacks.utilities.fileio import load_json

N, BATCH, SIGMA = 256, 32, 1.0


class DPClassifier(TinyClassifier):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        opt = torch.optim.SGD(self.parameters(), lr=self.lr)
        return make_private(self, opt, noise_multiplier=SIGMA, max_grad_norm=1.0, accountant="gdp")


def _gdp_epsilon(q: float, steps: int, sigma: float, delta: float) -> float:
    """Closed form (as in test_dp_epsilon): Poisson-subsampled Gaussian under the CLT is mu-GDP."""
    mu = q * math.sqrt(steps * (math.exp(1 / sigma**2) - 1))

    def excess(eps: float) -> float:
        return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2) - delta

    return float(optimize.brentq(excess, 0.0, 100.0, xtol=1e-12))


def _poisson_loader() -> Any:
    return DPDataLoader.from_data_loader(DataLoader(IndexedDataset(make_blobs(N)), batch_size=BATCH))


def test_epsilon_at_every_n_steps_matches_closed_form_gdp(tmp_path: Path) -> None:
    cb = DPEpsilonMonitor(delta=1e-5, every_n_steps=3)
    tr = trainer(tmp_path, max_epochs=1, callbacks=[cb], logger=False)
    tr.fit(DPClassifier(hidden=16), _poisson_loader())
    assert tr.global_step == N // BATCH  # 8 steps: evaluations at 3 and 6
    assert [(h["epoch"], h["step"]) for h in cb.history] == [(0, 3), (0, 6)]
    expected = [_gdp_epsilon(BATCH / N, s, SIGMA, 1e-5) for s in (3, 6)]
    np.testing.assert_allclose([h["mem/dp/epsilon"] for h in cb.history], expected, rtol=1e-5)
    rows = load_json(Path(cb.run_dir) / "dp.json")["history"]
    assert [(r["epoch"], r["step"], r["steps"]) for r in rows] == [(0, 3, 3), (0, 6, 6)]
    dp = RunDirectory(tmp_path / "memcallbacks").dp()
    assert dp is not None
    np.testing.assert_allclose(dp.epsilon, expected, rtol=1e-5)


def test_every_n_steps_with_every_n_epochs_is_refused() -> None:
    with pytest.raises(ValueError, match="every_n_steps"):
        DPEpsilonMonitor(every_n_steps=3, every_n_epochs=2)


def test_shadow_recorder_refuses_every_n_steps() -> None:
    pool = [(np.zeros(3, dtype=np.float32), 0)] * 4
    with pytest.raises(ValueError, match=r"every_n_steps=5.*end of fit.*remove `every_n_steps`"):
        ShadowScoreRecorder(pool, run_index=0, every_n_steps=5)  # type: ignore[arg-type]
