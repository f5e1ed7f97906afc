"""CanaryExposureMonitor in real Trainer runs: exposure against brute force, files, records, resume, DDP."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

import memcallbacks.loggers as trackers_module
from helpers.language_models import NaiveOnlyLM, PooledLM, PositionalLM, ShortContextLM, tiny_window_lm
from helpers.training import trainer as make_trainer
from memcallbacks import CanaryExposureMonitor, CanarySet, CharTokenizer
from memcallbacks.demos.toy import lm_loader, make_payment_corpus
from memcallbacks.metrics.exposure import exposure_extrapolated
from memcallbacks.utilities.fileio import load_npz

TOK = CharTokenizer()


def canaries(**kw) -> CanarySet:
    opts = dict(length=3, repetitions=(1, 8), per_count=2, seed=0)
    opts.update(kw)
    return CanarySet("my pin is {secret}.", TOK, **opts)


def loader(cs: CanarySet, n: int = 60, shuffle: bool = True):
    return lm_loader(cs.inject(make_payment_corpus(n, seed=1)), TOK, batch_size=32, shuffle=shuffle)


def brute_force_scores(model, cs: CanarySet, secrets) -> np.ndarray:
    """One candidate at a time, plain loop, full forward: the independent computation."""
    model.eval()
    out = []
    with torch.no_grad():
        for s in secrets:
            ids = torch.tensor([TOK.encode(cs.prefix + s)])
            lp = torch.log_softmax(model(ids)[0].double(), -1)
            start = len(TOK.encode(cs.prefix))
            out.append(-sum(float(lp[t - 1, ids[0, t]]) for t in range(start, ids.shape[1])))
    return np.array(out)


def read_csv_metrics(tmp_path: Path) -> list[dict[str, str]]:
    files = list(tmp_path.rglob("metrics.csv"))
    assert files, "CSVLogger wrote no metrics.csv"
    with open(files[0]) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    "model_fn", [tiny_window_lm, lambda v: NaiveOnlyLM(v, context=4, embedding_dim=4, hidden_size=16)]
)
def test_exact_exposure_matches_brute_force(tmp_path, model_fn) -> None:
    cs = canaries()
    model = model_fn(TOK.vocab_size)
    monitor = CanaryExposureMonitor(cs, method="exact")
    trainer = make_trainer(tmp_path, max_epochs=2, callbacks=[monitor])
    trainer.fit(model, loader(cs))

    scores = brute_force_scores(model, cs, cs.enumerate_candidates())
    canary_scores = scores[[cs.candidate_index(s) for s in cs.secrets]]
    ranks = np.array([int(np.sum(scores <= s)) for s in canary_scores])  # ties count against the canary
    expected = math.log2(1000) - np.log2(ranks)
    hist = monitor.arrays
    np.testing.assert_allclose(hist["log_perplexity"][-1], canary_scores, atol=1e-4)
    np.testing.assert_array_equal(hist["rank"][-1], ranks)
    np.testing.assert_allclose(hist["exposure"][-1], expected, atol=1e-9)

    metrics = trainer.callback_metrics
    assert float(metrics["mem/canary/exposure_max"]) == pytest.approx(expected.max())
    assert float(metrics["mem/canary/exposure_mean"]) == pytest.approx(expected.mean())
    assert float(metrics["mem/canary/exposure_mean/r8"]) == pytest.approx(expected[2:].mean())
    assert float(metrics["mem/canary/exposure_mean/r1"]) == pytest.approx(expected[:2].mean())
    assert float(metrics["mem/canary/rank_min"]) == ranks.min()
    assert float(metrics["mem/canary/saturated"]) == np.sum(ranks == 1)
    rows = [r for r in read_csv_metrics(tmp_path) if r.get("mem/canary/exposure_max")]
    assert len(rows) == 2  # one per epoch, reaching the CSV logger

    saved = load_npz(monitor.run_dir / "exposure.npz")
    assert saved["exposure"].shape == (2, 4)
    assert saved["epochs"].tolist() == [0, 1]
    assert saved["canary_ids"].tolist() == cs.ids
    assert saved["repetitions"].tolist() == [1, 1, 8, 8]
    assert str(saved["method"]) == "exact"  # the file keeps its earlier vocabulary
    assert str(saved["strategy"]) in ("exact_trie", "exact_list")  # the trie needs an IncrementalLM
    assert saved["rank_exact"].all()
    assert np.isnan(saved["reference_rank"]).all()
    assert not (monitor.run_dir / "secrets.json").exists()
    assert not any(
        str(v) in cs.secrets for arr in saved.values() if arr.dtype.kind == "U" for v in arr.ravel()
    )


def test_extrapolated_matches_independent_fit_and_references_fixed(tmp_path, monkeypatch) -> None:
    records = []
    real_emit = trackers_module.emit
    monkeypatch.setattr(
        trackers_module, "emit", lambda t, r, **kw: (records.append((r, kw)), real_emit(t, r, **kw))
    )
    cs = canaries(length=6)
    model = tiny_window_lm(TOK.vocab_size)
    monitor = CanaryExposureMonitor(cs, method="extrapolated", num_references=300, max_exact=1000)
    tensorboard = pl.loggers.TensorBoardLogger(str(tmp_path), name="tb")  # a logger that takes records
    trainer = make_trainer(tmp_path, max_epochs=2, callbacks=[monitor], logger=tensorboard)
    trainer.fit(model, loader(cs))
    assert monitor.resolved_method == "extrapolated"
    refs = monitor.references
    assert refs == cs.sample_references(300, seed=cs.seed + 1)  # fixed at setup, seeded

    ref_scores = brute_force_scores(model, cs, refs)
    canary_scores = brute_force_scores(model, cs, cs.secrets)
    expected = exposure_extrapolated(canary_scores, ref_scores, space_size=10**6)
    np.testing.assert_allclose(monitor.arrays["exposure"][-1], expected, atol=1e-3)
    assert (monitor.arrays["exposure"] <= math.log2(10**6) + 1e-9).all()
    saved = load_npz(monitor.run_dir / "exposure.npz")
    np.testing.assert_allclose(saved["reference_scores"], ref_scores, atol=1e-3)

    # records: one line series per epoch so far; the table is per-sample (no secrets) and not sent
    lines = [r for r, _ in records if isinstance(r, trackers_module.LineSeries)]
    assert len(lines) == 2
    assert list(lines[-1].ys) == ["epoch 0", "epoch 1"]
    assert lines[-1].xs == [1.0, 8.0]
    tables = [(r, kw) for r, kw in records if isinstance(r, trackers_module.Table)]
    assert all(t.per_sample and not t.secret and "secret" not in t.columns for t, _ in tables)
    assert all(not kw["allow_secrets"] for _, kw in tables)


def test_log_secrets_table_and_file(tmp_path, monkeypatch) -> None:
    records = []
    monkeypatch.setattr(trackers_module, "emit", lambda t, r, **kw: records.append((r, kw)))
    cs = canaries()
    monitor = CanaryExposureMonitor(cs, method="exact", log_secrets=True)
    tensorboard = pl.loggers.TensorBoardLogger(str(tmp_path), name="tb")
    trainer = make_trainer(tmp_path, max_epochs=1, callbacks=[monitor], logger=tensorboard)
    trainer.fit(tiny_window_lm(TOK.vocab_size), loader(cs))
    assert json.loads((monitor.run_dir / "secrets.json").read_text()) == {c.id: c.secret for c in cs}
    table, kw = next((r, kw) for r, kw in records if isinstance(r, trackers_module.Table))
    assert table.secret
    assert kw["allow_secrets"]
    assert table.columns[-1] == "secret"
    assert [row[-1] for row in table.rows] == cs.secrets


def test_extraction_counts_emitted_secret() -> None:
    cs = canaries(length=6, per_count=1)
    target = cs[1]
    model = PositionalLM(list(target.token_ids), TOK.vocab_size)
    monitor = CanaryExposureMonitor(
        cs, method="extrapolated", num_references=200, extraction=True, beam_width=1
    )
    result = monitor.compute(model)
    extracted = monitor._extract(model)
    assert extracted.tolist() == [False, True]
    assert result.exposure[1] == pytest.approx(math.log2(10**6))  # capped
    assert result.saturated == 1
    assert result.reference_rank[1] == 1
    assert result.rank[1] == 1
    assert not result.rank_exact[1]
    metrics = monitor._metrics(result, extracted)
    assert metrics["mem/canary/extracted"] == 1.0
    assert metrics["mem/canary/reference_rank_min"] == 1.0
    # the reference rank 1 is no rank in R: with extrapolation rank_min (1 = the model's favourite of
    # all 10^6 candidates) is not logged at all (it used to read 1 here, the reference rank)
    assert "mem/canary/rank_min" not in metrics
    assert "mem/canary/rank_lower_bound" not in metrics


def test_resume_gives_identical_numbers(tmp_path) -> None:
    def run(root: Path, epochs: int, ckpt: str | None = None, save: bool = False):
        torch.manual_seed(0)
        cs = canaries(length=6)
        monitor = CanaryExposureMonitor(cs, method="extrapolated", num_references=200)
        model = tiny_window_lm(TOK.vocab_size)
        trainer = make_trainer(root, max_epochs=epochs, callbacks=[monitor])
        trainer.fit(model, loader(cs, shuffle=False), ckpt_path=ckpt)
        if save:
            trainer.save_checkpoint(str(root / "last.ckpt"))
        return monitor

    straight = run(tmp_path / "a", 3)
    run(tmp_path / "b", 1, save=True)
    state = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)  # plain state
    assert any("CanaryExposureMonitor" in k for k in state["callbacks"])
    resumed = run(tmp_path / "c", 3, ckpt=str(tmp_path / "b" / "last.ckpt"))
    a, c = straight.arrays, resumed.arrays
    assert c["epochs"].tolist() == [0, 1, 2]
    for key in ("exposure", "rank", "log_perplexity"):
        np.testing.assert_allclose(c[key], a[key], atol=1e-6)
    assert resumed.references == straight.references


def test_bad_models_and_arguments(tmp_path) -> None:
    cs = canaries()
    with pytest.raises(TypeError, match="pass `score_fn"):
        make_trainer(tmp_path, max_epochs=1, callbacks=[CanaryExposureMonitor(cs, method="exact")]).fit(
            PooledLM(TOK.vocab_size), loader(cs)
        )
    with pytest.raises(ValueError, match="`max_len`=5"):
        make_trainer(tmp_path, max_epochs=1, callbacks=[CanaryExposureMonitor(cs, method="exact")]).fit(
            ShortContextLM(TOK.vocab_size), loader(cs)
        )
    with pytest.raises(ValueError, match="method='extrapolated'"):
        CanaryExposureMonitor(canaries(length=6), method="exact", max_exact=1000)
    with pytest.raises(ValueError, match="`method` can be"):
        CanaryExposureMonitor(cs, method="fast")
    with pytest.raises(ValueError, match="`num_references`"):
        CanaryExposureMonitor(cs, num_references=0)
    with pytest.raises(TypeError, match="CanarySet"):
        CanaryExposureMonitor(["c"])  # type: ignore[arg-type]
    no_prefix = CanarySet("{secret}.", lambda s: [ord(c) for c in s], length=3, repetitions=(1,), per_count=1)
    with pytest.raises(ValueError, match="`format`"):
        make_trainer(
            tmp_path, max_epochs=1, callbacks=[CanaryExposureMonitor(no_prefix, method="exact")]
        ).fit(tiny_window_lm(200), loader(cs))
    # a too-large reference set for the space is refused at fit start
    with pytest.raises(ValueError, match="`num_references`"):
        make_trainer(
            tmp_path,
            max_epochs=1,
            callbacks=[CanaryExposureMonitor(cs, method="extrapolated", num_references=999)],
        ).fit(tiny_window_lm(TOK.vocab_size), loader(cs))


@pytest.mark.ddp
def test_ddp_all_ranks_log_the_same(tmp_path, rank_dump) -> None:
    cs = canaries()
    monitor = CanaryExposureMonitor(cs, method="exact")
    trainer = make_trainer(
        tmp_path,
        max_epochs=1,
        strategy="ddp_spawn",
        accelerator="cpu",
        devices=2,
        callbacks=[monitor, rank_dump],
    )
    trainer.fit(tiny_window_lm(TOK.vocab_size), loader(cs))
    r0, r1 = (rank["metrics"] for rank in rank_dump.read())
    assert "mem/canary/exposure_max" in r0
    assert r0 == r1
    saved = load_npz(next((tmp_path).rglob("exposure.npz")))
    assert saved["exposure"].shape == (1, 4)
    assert float(r0["mem/canary/exposure_mean"]) == pytest.approx(float(saved["exposure"].mean()), abs=1e-5)


def test_auto_picks_exact_for_incremental_model() -> None:
    cs = canaries(length=6)
    monitor = CanaryExposureMonitor(cs)
    assert monitor._resolve_method(tiny_window_lm(TOK.vocab_size)) == "exact_trie"
    assert monitor._resolve_method(NaiveOnlyLM(TOK.vocab_size)) == "extrapolated"
    beyond = CanaryExposureMonitor(cs, max_exact=1000)  # the trie is too big: best-first + extrapolation
    assert beyond._resolve_method(tiny_window_lm(TOK.vocab_size)) == "hybrid"
    small = CanaryExposureMonitor(canaries(length=3), score_fn=lambda m, i, k: torch.zeros(i.shape[0]))
    assert small._resolve_method(pl.LightningModule()) == "exact_list"  # 1000 <= 10,000 references
