"""DP-SGD in Lightning (make_private) and DPEpsilonMonitor, checked against closed-form GDP accounting."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from opacus.accountants import GaussianAccountant, RDPAccountant
from opacus.data_loader import DPDataLoader
from scipy import optimize, stats
from torch.utils.data import DataLoader

from helpers.data import make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks import DPEpsilonMonitor, PrivacyAuditMonitor
from memcallbacks.callbacks.dp import is_poisson_loader, make_private
from memcallbacks.callbacks.probes import evaluate_sample_losses
from memcallbacks.data.indexed import IndexedDataset
from memcallbacks.utilities.fileio import load_json

N, BATCH, SIGMA = 256, 32, 1.0


class DPClassifier(TinyClassifier):
    def __init__(self, accountant: str = "rdp", poisson: bool = True, **kw: Any) -> None:
        super().__init__(hidden=16, **kw)
        self.accountant = accountant
        self.poisson = poisson

    def configure_optimizers(self) -> torch.optim.Optimizer:
        opt = torch.optim.SGD(self.parameters(), lr=self.lr)
        return make_private(
            self,
            opt,
            noise_multiplier=SIGMA,
            max_grad_norm=1.0,
            accountant=self.accountant,
            poisson_sampling=self.poisson,
        )


def _poisson_loader(dataset: Any = None) -> DataLoader:
    ds = IndexedDataset(dataset if dataset is not None else make_blobs(N))
    return DPDataLoader.from_data_loader(DataLoader(ds, batch_size=BATCH))


def _metrics(root: Path) -> pd.DataFrame:
    (csv,) = list(Path(root).rglob("metrics.csv"))
    return pd.read_csv(csv)


def _gdp_epsilon(q: float, steps: int, sigma: float, delta: float) -> float:
    """Closed form: Poisson-subsampled Gaussian under the CLT is mu-GDP with
    mu = q sqrt(T (e^{1/sigma^2} - 1)) (Bu, Dong, Long and Su 2020, Thm. 5); mu-GDP gives
    delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2) (Dong, Roth, Su 2019, Cor. 2.13)."""
    mu = q * math.sqrt(steps * (math.exp(1 / sigma**2) - 1))

    def excess(eps: float) -> float:
        return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2) - delta

    return float(optimize.brentq(excess, 0.0, 100.0, xtol=1e-12))


def test_logged_epsilon_matches_closed_form_gdp_and_does_not_touch_the_accountant(tmp_path: Path) -> None:
    cb = DPEpsilonMonitor(delta=1e-5)
    model = DPClassifier(accountant="gdp")
    trainer(tmp_path, max_epochs=3, callbacks=[cb]).fit(model, _poisson_loader())

    df = _metrics(tmp_path).dropna(subset=["mem/dp/epsilon"])
    steps_per_epoch = N // BATCH
    expected = [_gdp_epsilon(BATCH / N, steps_per_epoch * (e + 1), SIGMA, 1e-5) for e in range(3)]
    assert list(df["epoch"]) == [0, 1, 2]
    np.testing.assert_allclose(df["mem/dp/epsilon"], expected, rtol=1e-5)
    np.testing.assert_allclose(df["mem/dp/delta"], 1e-5, rtol=1e-6)  # logged as float32
    assert [h["epoch"] for h in cb.history] == [0, 1, 2]
    assert [h["steps"] for h in load_json(Path(cb.run_dir) / "dp.json")["history"]] == [8, 16, 24]
    # the live accountant still holds its full history and reports the same number afterwards
    acc = model.privacy_engine.accountant
    assert isinstance(acc, GaussianAccountant)
    assert acc.history == [(SIGMA, BATCH / N, 24)]
    assert acc.get_epsilon(1e-5) == pytest.approx(expected[-1], rel=1e-5)
    meta = load_json(Path(cb.run_dir) / "dp.json")
    assert meta["accountant"] == "gdp"
    assert meta["delta"] == 1e-5
    assert meta["poisson_sampling"] is True
    assert [h["epsilon"] for h in meta["history"]] == pytest.approx(expected, rel=1e-5)


class PoppingAccountant(RDPAccountant):
    """An accountant whose get_epsilon consumes its history (the old GDP accountant's bug)."""

    def get_epsilon(self, delta: float, **kwargs: Any) -> float:  # type: ignore[override]
        eps = super().get_epsilon(delta, **kwargs)
        self.history.pop()
        return eps


def test_reading_epsilon_never_mutates_the_accountant() -> None:
    acc = PoppingAccountant()
    for _ in range(10):
        acc.step(noise_multiplier=1.0, sample_rate=0.01)
    cb = DPEpsilonMonitor(delta=1e-5, privacy_engine=acc)
    before = list(acc.history)
    first = cb.read_epsilon(acc)
    assert acc.history == before
    assert cb.read_epsilon(acc) == first
    assert first == pytest.approx(RDPAccountant.get_epsilon(acc, 1e-5))


class FailingAccountant(RDPAccountant):
    def get_epsilon(self, delta: float, **kwargs: Any) -> float:  # type: ignore[override]
        raise RuntimeError("cannot compute epsilon")


def test_accountant_failure_warns_once_and_skips(tmp_path: Path) -> None:
    from opacus import PrivacyEngine

    engine = PrivacyEngine(accountant="rdp")
    engine.accountant = FailingAccountant()
    cb = DPEpsilonMonitor(delta=1e-5, privacy_engine=engine)

    class Model(DPClassifier):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            opt = torch.optim.SGD(self.parameters(), lr=self.lr)
            return make_private(self, opt, noise_multiplier=1.0, max_grad_norm=1.0, privacy_engine=engine)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, max_epochs=3, callbacks=[cb]).fit(Model(), _poisson_loader())
    failures = [w for w in caught if "could not compute epsilon" in str(w.message)]
    assert len(failures) == 1
    assert "cannot compute epsilon" in str(failures[0].message)
    assert "rdp" in str(failures[0].message)
    csvs = list(Path(tmp_path).rglob("metrics.csv"))  # nothing else is logged: no file at all
    assert not csvs or "mem/dp/epsilon" not in pd.read_csv(csvs[0]).columns
    assert cb.history == []


def test_no_accountant_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="privacy_engine"):
        trainer(tmp_path, max_epochs=1, callbacks=[DPEpsilonMonitor()]).fit(
            TinyClassifier(), DataLoader(IndexedDataset(make_blobs(32)), batch_size=16)
        )


@pytest.mark.parametrize("delta", [1.0, -0.1, float("nan"), "1e-5"])
def test_bad_delta(delta: Any) -> None:
    error = TypeError if isinstance(delta, str) else ValueError
    with pytest.raises(error, match=f"`delta` must be a finite number in \\[0.0, 1.0\\), got {delta!r}"):
        DPEpsilonMonitor(delta=delta)


def test_non_poisson_loader_is_refused_or_warned(tmp_path: Path) -> None:
    plain = DataLoader(IndexedDataset(make_blobs(N)), batch_size=BATCH, shuffle=True)
    assert not is_poisson_loader(plain)
    assert is_poisson_loader(_poisson_loader())
    with pytest.raises(ValueError, match="does not sample Poisson-style.*DPDataLoader.from_data_loader"):
        trainer(tmp_path / "a", max_epochs=1).fit(DPClassifier(), plain)
    cb = DPEpsilonMonitor(delta=1e-5)
    with pytest.warns(UserWarning, match="training DataLoader does not sample Poisson-style"):
        trainer(tmp_path / "b", max_epochs=1, callbacks=[cb]).fit(DPClassifier(poisson=False), plain)
    assert load_json(Path(cb.run_dir) / "dp.json")["poisson_sampling"] is False


def test_make_private_outside_a_trainer_explains() -> None:
    model = TinyClassifier()
    with pytest.raises(RuntimeError, match="inside configure_optimizers"):
        make_private(
            model, torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=1.0, max_grad_norm=1.0
        )


def test_resume_restores_the_accountant(tmp_path: Path) -> None:
    def run(root: Path, epochs: int, ckpt: str | None = None) -> DPEpsilonMonitor:
        cb = DPEpsilonMonitor(delta=1e-5)
        ck = pl.callbacks.ModelCheckpoint(dirpath=str(root / "ckpt"), save_last=True)
        tr = trainer(root, max_epochs=epochs, callbacks=[cb, ck], enable_checkpointing=True)
        tr.fit(DPClassifier(), _poisson_loader(), ckpt_path=ckpt)
        return cb

    straight = run(tmp_path / "a", 3)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "c", 3, ckpt=str(tmp_path / "b" / "ckpt" / "last.ckpt"))
    assert [h["steps"] for h in load_json(resumed.run_dir / "dp.json")["history"]] == [8, 16, 24]
    assert [h["mem/dp/epsilon"] for h in resumed.history] == pytest.approx(
        [h["mem/dp/epsilon"] for h in straight.history]
    )
    torch.load(tmp_path / "b" / "ckpt" / "last.ckpt", weights_only=True)


def test_monitors_work_on_the_dp_model(tmp_path: Path) -> None:
    canaries = make_blobs(40, seed=3)
    audit = PrivacyAuditMonitor(canaries, k_pos=5, k_neg=5, delta=1e-5)
    cb = DPEpsilonMonitor(delta=1e-5)
    model = DPClassifier()
    trainer(tmp_path, max_epochs=2, callbacks=[cb, audit]).fit(
        model, _poisson_loader(audit.inject(make_blobs(N)))
    )
    assert len(audit.history) == 2
    assert len(cb.history) == 2
    # scoring left nothing in Opacus' per-sample buffers, and matches a plain forward
    for mod in model.modules():
        assert not getattr(mod, "activations", [])
    losses, _ = evaluate_sample_losses(model, canaries)
    with torch.no_grad():
        model.eval()
        plain = torch.nn.functional.cross_entropy(
            model(canaries.tensors[0]), canaries.tensors[1], reduction="none"
        )
    np.testing.assert_allclose(losses.numpy(), plain.numpy(), rtol=1e-6)
    # the lower bound cannot exceed the accountant's epsilon (with probability 1 - beta)
    assert audit.history[-1]["mem/audit/epsilon_lb"] <= cb.history[-1]["mem/dp/epsilon"]
