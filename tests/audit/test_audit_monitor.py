"""PrivacyAuditMonitor: inclusion draw, guesses/counts/epsilon against hand-worked values, logging, resume."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import TensorDataset

from helpers.data import loaders, make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks import PrivacyAuditMonitor
from memcallbacks.callbacks.audit import default_num_guesses
from memcallbacks.metrics.audit import epsilon_lower_bound
from memcallbacks.utilities.fileio import load_json, load_npz


def _canaries(m: int = 40, seed: int = 1) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(m, 8, generator=g), torch.randint(0, 3, (m,), generator=g))


def _metrics(tmp_path: Path) -> pd.DataFrame:
    (csv,) = list(Path(tmp_path).rglob("metrics.csv"))
    return pd.read_csv(csv)


# -- construction and the inclusion draw -----------------------------------------------
def test_inclusion_is_a_seeded_fair_coin_per_canary() -> None:
    a = PrivacyAuditMonitor(_canaries(1000), seed=3)
    b = PrivacyAuditMonitor(_canaries(1000), seed=3)
    c = PrivacyAuditMonitor(_canaries(1000), seed=4)
    assert a.included.dtype == np.bool_
    assert a.included.shape == (1000,)
    np.testing.assert_array_equal(a.included, b.included)
    assert not np.array_equal(a.included, c.included)
    # independent of the canaries' content: numpy's documented generator, one uniform per canary
    np.testing.assert_array_equal(a.included, np.random.default_rng(3).random(1000) < 0.5)
    assert 430 < a.included.sum() < 570  # Binomial(1000, 1/2): > 4 sd from 500 is < 1e-4
    a.included[:] = True  # a copy: the monitor's mask cannot be changed from outside
    np.testing.assert_array_equal(a.included, b.included)


def test_included_dataset_and_inject_hold_exactly_the_included_canaries() -> None:
    canaries = _canaries(30)
    audit = PrivacyAuditMonitor(canaries, seed=0)
    idx = np.flatnonzero(audit.included)
    sub = audit.included_dataset()
    assert len(sub) == len(idx)
    for j, i in enumerate(idx):
        assert torch.equal(sub[j][0], canaries[int(i)][0])
    base = make_blobs(50)
    train = audit.inject(base)
    assert len(train) == 50 + len(idx)
    assert torch.equal(train[50][0], canaries[int(idx[0])][0])
    monitor, half = PrivacyAuditMonitor.split(canaries, seed=0, k_pos=3, k_neg=3)
    assert len(half) == len(idx)
    assert monitor.k_pos == 3


def test_defaults_for_the_number_of_guesses() -> None:
    assert default_num_guesses(1000) == 100
    assert default_num_guesses(40) == 4
    assert default_num_guesses(4) == 2
    assert default_num_guesses(2) == 1
    m = PrivacyAuditMonitor(_canaries(200))
    assert (m.k_pos, m.k_neg) == (20, 20)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            dict(k_pos=30, k_neg=11),
            "k_pos` \\+ `k_neg` must be between 1 and the number of canaries \\(40\\)",
        ),
        (dict(k_pos=0, k_neg=0), "k_pos` \\+ `k_neg`"),
        (dict(k_pos=-1), "`k_pos` must be an integer >= 0, got -1"),
        (dict(delta=1.0), "`delta` must be a finite number in \\[0.0, 1.0\\), got 1.0"),
        (dict(delta=-1e-5), "`delta`"),
        (dict(beta=0.0), "`beta` must be a finite number in \\(0.0, 1.0\\), got 0.0 .*significance level"),
        (dict(beta=1.0), "`beta`"),
        (dict(included=[True, False]), "`included` must be a bool mask of shape \\(40,\\)"),
        (dict(seed=1.5), "`seed` must be an integer"),
    ],
)
def test_bad_arguments_are_refused_with_the_value(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        PrivacyAuditMonitor(_canaries(40), **kwargs)


@pytest.mark.parametrize("m", [0, 1])
def test_fewer_than_two_canaries_is_refused(m: int) -> None:
    with pytest.raises(ValueError, match=f"at least 2 audit canaries, got {m}"):
        PrivacyAuditMonitor(_canaries(m))


# -- guesses, counts and epsilon on hand-worked numbers --------------------------------
def test_audit_of_a_hand_built_score_vector() -> None:
    #            0     1     2     3     4     5     6     7     8     9
    included = [True, False, True, True, False, False, True, False, True, False]
    scores = [0.9, 0.8, 0.1, 0.7, 0.2, 0.3, 0.6, 0.0, 0.4, 0.5]
    audit = PrivacyAuditMonitor(_canaries(10), included=included, k_pos=3, k_neg=3, delta=1e-3, beta=0.1)
    out = audit.audit(scores)
    # highest three: 0 (0.9, in: right), 1 (0.8, out: wrong), 3 (0.7, in: right)
    # lowest three: 7 (0.0, out: right), 2 (0.1, in: wrong), 4 (0.2, out: right)
    np.testing.assert_array_equal(out["guesses"], [1, 1, -1, 1, -1, 0, 0, -1, 0, 0])
    assert (out["correct"], out["guesses_made"]) == (4, 6)
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["epsilon_lb"] == epsilon_lower_bound(4, 6, num_canaries=10, delta=1e-3, beta=0.1)


def test_perfect_guesses_give_the_closed_form_bound() -> None:
    # delta = 0 and all r guesses right: p-value = q**r with q = e^eps / (1 + e^eps), so the
    # bound solves q**r = beta: eps = logit(beta ** (1 / r)), independent of the library's root finder.
    m, k = 40, 10
    included = np.zeros(m, dtype=bool)
    included[::2] = True
    scores = np.where(included, 1.0, -1.0) + np.linspace(0, 0.01, m)
    audit = PrivacyAuditMonitor(_canaries(m), included=included, k_pos=k, k_neg=k, beta=0.05)
    out = audit.audit(scores)
    assert (out["correct"], out["guesses_made"]) == (20, 20)
    q = 0.05 ** (1 / 20)
    assert out["epsilon_lb"] == pytest.approx(math.log(q / (1 - q)), abs=1e-9)


def test_uninformative_scores_give_zero() -> None:
    included = np.array([True, False] * 20)
    audit = PrivacyAuditMonitor(_canaries(40), included=included, k_pos=5, k_neg=5)
    out = audit.audit(np.zeros(40))  # all tied: guesses go by index, half of them right
    assert out["epsilon_lb"] == 0.0


# -- the callback in a real Trainer ---------------------------------------------------------
class FixedScores:
    """canary_score_fn returning a preset score vector per call (one row per evaluation)."""

    def __init__(self, rows: list[np.ndarray]) -> None:
        self.rows = rows
        self.calls = 0

    def __call__(self, module: Any, canaries: Any) -> np.ndarray:
        row = self.rows[min(self.calls, len(self.rows) - 1)]
        self.calls += 1
        return row


def test_logged_keys_and_run_directory(tmp_path: Path) -> None:
    m = 20
    included = np.array([True, False] * 10)
    perfect = np.where(included, 1.0, 0.0) + np.arange(m) * 1e-3
    rows = [np.zeros(m) + np.arange(m) * 1e-3, perfect]  # epoch 0: guesses by index; epoch 1: perfect
    audit = PrivacyAuditMonitor(
        _canaries(m), included=included, k_pos=4, k_neg=4, canary_score_fn=FixedScores(rows)
    )
    train, _ = loaders(make_blobs(32))
    trainer(tmp_path, max_epochs=2, callbacks=[audit]).fit(TinyClassifier(), train)

    df = _metrics(tmp_path).dropna(subset=["mem/audit/epsilon_lb"])
    assert list(df["epoch"]) == [0, 1]
    # epoch 0, scores increasing with index: "in" = 16..19 (in: 16, 18), "out" = 0..3 (out: 1, 3)
    assert list(df["mem/audit/correct"]) == [4, 8]
    assert list(df["mem/audit/guesses"]) == [8, 8]
    assert list(df["mem/audit/accuracy"]) == pytest.approx([0.5, 1.0])
    assert df["mem/audit/epsilon_lb"].iloc[0] == 0.0
    q = 0.05 ** (1 / 8)
    assert df["mem/audit/epsilon_lb"].iloc[1] == pytest.approx(math.log(q / (1 - q)), rel=1e-6)

    run = Path(audit.run_dir)
    inc = load_npz(run / "inclusion.npz")
    np.testing.assert_array_equal(inc["included"], included)
    e1 = load_npz(run / "epoch_0001.npz")
    np.testing.assert_allclose(e1["scores"], perfect)
    np.testing.assert_array_equal(e1["included"], included)
    assert set(np.unique(e1["guesses"])) == {-1, 0, 1}
    meta = load_json(run / "audit.json")
    assert (meta["k_pos"], meta["k_neg"], meta["num_canaries"], meta["delta"], meta["beta"]) == (
        4,
        4,
        m,
        0.0,
        0.05,
    )
    assert [h["correct"] for h in meta["history"]] == [4, 8]
    assert audit.history[1]["mem/audit/epsilon_lb"] == pytest.approx(df["mem/audit/epsilon_lb"].iloc[1])


def test_default_score_is_minus_the_eval_mode_per_sample_loss(tmp_path: Path) -> None:
    canaries = _canaries(12)
    audit = PrivacyAuditMonitor(canaries, k_pos=2, k_neg=2)
    model = TinyClassifier()
    model.train()
    scores = audit.compute_scores(model)
    with torch.no_grad():
        expected = -torch.nn.functional.cross_entropy(
            model(canaries.tensors[0]), canaries.tensors[1], reduction="none"
        )
    np.testing.assert_allclose(scores, expected.double().numpy(), rtol=1e-6)
    assert model.training  # train mode restored


def test_every_n_epochs(tmp_path: Path) -> None:
    audit = PrivacyAuditMonitor(_canaries(12), k_pos=2, k_neg=2, every_n_epochs=2)
    train, _ = loaders(make_blobs(32))
    trainer(tmp_path, max_epochs=4, callbacks=[audit]).fit(TinyClassifier(), train)
    assert [h["epoch"] for h in audit.history] == [1, 3]


def test_resume_gives_identical_numbers(tmp_path: Path) -> None:
    canaries = _canaries(40)

    def run(root: Path, epochs: int, ckpt: str | None = None, model: pl.LightningModule | None = None) -> Any:
        audit = PrivacyAuditMonitor(canaries, seed=5, k_pos=5, k_neg=5)
        train, _ = loaders(audit.inject(make_blobs(48)), batch_size=16, shuffle=False)
        cb = pl.callbacks.ModelCheckpoint(dirpath=str(root / "ckpt"), save_last=True)
        tr = trainer(root, max_epochs=epochs, callbacks=[audit, cb], enable_checkpointing=True)
        torch.manual_seed(0)
        tr.fit(model or TinyClassifier(lr=0.5), train, ckpt_path=ckpt)
        return audit

    straight = run(tmp_path / "a", 3)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "c", 3, ckpt=str(tmp_path / "b" / "ckpt" / "last.ckpt"))
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    assert resumed.history == straight.history
    # the epoch computed after the resume saw the same model: identical scores
    a = load_npz(Path(straight.run_dir) / "epoch_0002.npz")["scores"]
    c = load_npz(Path(resumed.run_dir) / "epoch_0002.npz")["scores"]
    np.testing.assert_array_equal(a, c)

    state = torch.load(tmp_path / "b" / "ckpt" / "last.ckpt", weights_only=True)["callbacks"]
    (key,) = [k for k in state if k.startswith("PrivacyAuditMonitor")]
    other_seed = PrivacyAuditMonitor(canaries, seed=6, k_pos=5, k_neg=5)
    with pytest.raises(ValueError, match="recorded with `seed`=5, this callback has `seed`=6"):
        other_seed.load_state_dict(state[key])
    # same seed, another mask given explicitly: the mask check names the counts
    flipped = PrivacyAuditMonitor(canaries, seed=5, k_pos=5, k_neg=5, included=~resumed.included)
    with pytest.raises(
        ValueError, match="inclusion mask differs.*first differing canaries: \\[0, 1, 2, 3, 4\\]"
    ):
        flipped.load_state_dict(state[key])


# -- token-sequence canaries (CanarySet) ---------------------------------------------------
class BigramLM(torch.nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 16)
        self.out = torch.nn.Linear(16, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(ids))


def test_token_canaries_score_minus_log_perplexity_and_inject_repetitions() -> None:
    from memcallbacks import CanarySet, CharTokenizer
    from memcallbacks.lm.scoring import score_sequences

    tok = CharTokenizer()
    cs = CanarySet("my pin is {secret}.", tok, repetitions=(2,), per_count=10, seed=0)
    audit = PrivacyAuditMonitor(cs, k_pos=2, k_neg=2, seed=1)
    lm = BigramLM(tok.vocab_size)
    scores = audit.compute_scores(lm)
    ref = score_sequences(lm, [c.scored_ids for c in cs], [c.secret_start for c in cs])
    np.testing.assert_allclose(scores, -ref)
    # each included canary's log-perplexity by hand: sum of -log p(secret token | previous token)
    c = cs[0]
    with torch.no_grad():
        logp = torch.log_softmax(lm(torch.tensor([c.scored_ids])), -1)[0]
    by_hand = -sum(float(logp[t - 1, c.scored_ids[t]]) for t in range(c.secret_start, c.secret_end))
    assert scores[0] == pytest.approx(-by_hand, rel=1e-5)

    items = audit.included_dataset()
    n_in = int(audit.included.sum())
    assert len(items) == 2 * n_in
    texts = {cs[int(i)].text for i in audit.included_indices()}
    assert {items[j] for j in range(len(items))} == texts
    assert len(audit.inject(["a", "b"], make_item=lambda c: c.token_ids)) == 2 + 2 * n_in
