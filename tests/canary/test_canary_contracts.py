"""CanaryExposureMonitor contracts: resume arguments, bad input, diverged models, exact ranks of
exposed canaries (hybrid), subword (BPE) secrets scored as the training text tokenises them."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers.language_models import NaiveOnlyLM, tiny_window_lm
from helpers.training import trainer as make_trainer
from memcallbacks import CanaryExposureMonitor, CanarySet, CharTokenizer
from memcallbacks.demos.toy import WindowLM, lm_loader, make_payment_corpus
from memcallbacks.lm.scoring import score_space_trie
from memcallbacks.utilities.fileio import load_npz

TOK = CharTokenizer()


def canaries(**kw) -> CanarySet:
    opts = dict(length=3, repetitions=(1, 8), per_count=2, seed=0)
    opts.update(kw)
    return CanarySet("my pin is {secret}.", TOK, **opts)


def loader(cs: CanarySet, n: int = 40):
    return lm_loader(cs.inject(make_payment_corpus(n, seed=1)), TOK, batch_size=32, shuffle=False)


# ------------------------------------------------------------------------------------ resume
def test_changed_canary_seed_raises_on_resume_and_when_where_args_carry_over(tmp_path) -> None:
    def run(root, epochs, cs, ckpt=None, **kw):
        torch.manual_seed(0)
        monitor = CanaryExposureMonitor(cs, method="exact", **kw)
        trainer = make_trainer(root, max_epochs=epochs, callbacks=[monitor])
        trainer.fit(tiny_window_lm(TOK.vocab_size), loader(canaries()), ckpt_path=ckpt)
        return monitor, trainer

    _, first = run(tmp_path / "a", 1, canaries())
    ckpt = str(tmp_path / "a" / "last.ckpt")
    first.save_checkpoint(ckpt)
    with pytest.raises(ValueError, match=r"`canary_seed`=0, this callback has `canary_seed`=1"):
        run(tmp_path / "b", 2, canaries(seed=1), ckpt=ckpt)
    with pytest.raises(ValueError, match=r"`num_references`=10000, this callback has `num_references`=50"):
        run(tmp_path / "b", 2, canaries(), ckpt=ckpt, num_references=50)
    # every_n_epochs and run_dir say when and where: the history carries over
    moved = tmp_path / "moved"
    monitor, _ = run(tmp_path / "c", 2, canaries(), ckpt=ckpt, every_n_epochs=2, run_dir=moved)
    assert monitor.arrays["epochs"].tolist() == [0, 1] == [row["epoch"] for row in monitor.history]
    assert load_npz(moved / "canary" / "exposure.npz")["epochs"].tolist() == [0, 1]


def test_bad_arguments_name_the_argument() -> None:
    cs = canaries()
    with pytest.raises(TypeError, match=r"`seed` must be an integer.*'x'"):
        CanaryExposureMonitor(cs, seed="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`seed` must be an integer in \[0, .*got -1"):
        CanaryExposureMonitor(cs, seed=-1)
    with pytest.raises(TypeError, match=r"`extraction` must be True or False"):
        CanaryExposureMonitor(cs, extraction="false")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`progress` must be True or False"):
        CanaryExposureMonitor(cs, progress="no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`max_expansions` must be an integer >= 1"):
        CanaryExposureMonitor(cs, max_expansions=0)
    with pytest.raises(TypeError, match=r"`batch_size` must be an integer"):
        CanaryExposureMonitor(cs, batch_size=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`seed` must be an integer in \[0, "):
        canaries(seed=-1)


def test_two_monitors_need_distinct_names(tmp_path) -> None:
    a = CanaryExposureMonitor(canaries(), method="exact")
    b = CanaryExposureMonitor(canaries(seed=3), method="exact")
    # refused when the Trainer starts, naming the fix
    with pytest.raises(ValueError, match="without `name=`"):
        make_trainer(tmp_path, max_epochs=1, callbacks=[a, b]).fit(
            tiny_window_lm(TOK.vocab_size), loader(canaries())
        )
    named = [
        CanaryExposureMonitor(canaries(), method="exact", name="a"),
        CanaryExposureMonitor(canaries(seed=3), method="exact", name="b"),
    ]
    assert named[0].state_key != named[1].state_key
    trainer = make_trainer(tmp_path / "named", max_epochs=1, callbacks=named)
    trainer.fit(tiny_window_lm(TOK.vocab_size), loader(canaries()))
    # each logs under its own keys (one shared key would be averaged by Lightning) and folder
    logged = trainer.callback_metrics
    for monitor in named:
        row = monitor.history[-1]
        assert float(logged[f"mem/canary/exposure_max/{monitor.name}"]) == pytest.approx(
            row["mem/canary/exposure_max"]
        )
        assert (monitor.run_dir / "exposure.npz").is_file()
        assert monitor.run_dir.name == f"canary_{monitor.name}"
    assert "mem/canary/exposure_max" not in logged


# ------------------------------------------------------------------------------------ diverged model
class NaNAfterFirstEpoch(WindowLM):
    """A WindowLM whose weights turn NaN after the first epoch (a diverged run)."""

    def on_train_epoch_end(self) -> None:
        if self.current_epoch == 0:
            with torch.no_grad():
                for p in self.parameters():
                    p.fill_(float("nan"))


@pytest.mark.parametrize("method", ["exact", "extrapolated"])
def test_diverged_model_logs_nan_never_a_safe_value(tmp_path, method) -> None:
    cs = canaries()
    monitor = CanaryExposureMonitor(cs, method=method, num_references=100)
    model = NaNAfterFirstEpoch(TOK.vocab_size, context=4, embedding_dim=4, hidden_size=16)
    trainer = make_trainer(tmp_path, max_epochs=3, callbacks=[monitor])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, loader(cs))
    hist = monitor.arrays
    assert hist["epochs"].tolist() == [0, 1, 2]  # training was not ended
    rows = monitor.history  # the per-evaluation view says the same: NaN, never a safe value
    assert [math.isnan(r["mem/canary/exposure_max"]) for r in rows] == [False, True, True]
    assert np.isfinite(hist["exposure"][0]).all()
    assert hist["nonfinite"][0] == 0
    assert np.isnan(hist["exposure"][1:]).all()
    assert np.isnan(hist["rank"][1:]).all()
    assert (hist["nonfinite"][1:] > 0).all()
    metrics = trainer.callback_metrics
    assert math.isnan(float(metrics["mem/canary/exposure_max"]))
    assert math.isnan(float(metrics["mem/canary/exposure_mean/r8"]))
    rank_key = "mem/canary/rank_min" if method == "exact" else "mem/canary/reference_rank_min"
    assert math.isnan(float(metrics[rank_key]))  # not |R|: that would read as safe
    assert float(metrics["mem/canary/nonfinite"]) > 0
    assert float(metrics["mem/canary/saturated"]) == 0
    nan_warnings = [w for w in caught if "NaN or infinite" in str(w.message)]
    assert len(nan_warnings) == 1  # warned once


# ------------------------------------------------------------------------------------ hybrid: exact ranks
def train_on(model: WindowLM, text_ids: list[int], steps: int = 80) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    ids = torch.tensor([text_ids])
    for _ in range(steps):
        loss = F.cross_entropy(model(ids[:, :-1]).transpose(1, 2), ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_hybrid_gives_an_exposed_canary_its_exact_rank() -> None:
    torch.manual_seed(0)
    cs = CanarySet("pin {secret}.", TOK, alphabet="0123", length=6, repetitions=(1,), per_count=3, seed=0)
    model = WindowLM(TOK.vocab_size, context=8, embedding_dim=8, hidden_size=32)
    train_on(model, list(cs[0].token_ids))
    # full enumeration of the 4096 candidates: the independent ranks
    scores = score_space_trie(model, cs.prefix_ids, cs.char_token_ids(), cs.length)
    true_rank = np.array([int(np.sum(scores <= scores[i])) for i in cs.candidate_index_array()])
    assert true_rank[0] <= 3  # the trained canary is highly exposed

    monitor = CanaryExposureMonitor(cs, max_exact=1000, num_references=300, max_expansions=200)
    assert monitor._resolve_method(model) == "hybrid"
    result = monitor.compute(model)
    log2_space = math.log2(4096)
    assert result.rank_exact[0]
    assert result.rank[0] == true_rank[0]
    assert result.exposure[0] == pytest.approx(log2_space - math.log2(true_rank[0]))
    for i in range(len(cs)):
        if result.rank_exact[i]:
            assert result.rank[i] == true_rank[i]
        else:  # a proven lower bound, and the extrapolation never claims more than it allows
            assert 1 <= result.rank[i] <= true_rank[i]
            assert result.exposure[i] <= log2_space - math.log2(result.rank[i]) + 1e-9
            assert true_rank[i] > 10  # the budget of 200 expansions covers every rank up to 10 here
    metrics = monitor._metrics(result)
    assert metrics["mem/canary/rank_min"] == true_rank.min()  # a rank in R, not among the references
    assert metrics["mem/canary/rank_lower_bound"] == true_rank.min()  # the best rank is exact here
    assert metrics["mem/canary/reference_rank_min"] == float(np.min(result.reference_rank))
    assert metrics["mem/canary/rank_exact"] == float(result.rank_exact.sum())
    # the extrapolated method alone misreports it (the reason for the hybrid)
    alone = CanaryExposureMonitor(cs, method="extrapolated", num_references=300).compute(model)
    assert not alone.rank_exact.any()


# ------------------------------------------------------------------------------------ subword secrets
@pytest.fixture(scope="module")
def bpe():
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from tokenizers import models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    rng = np.random.default_rng(0)  # number-rich lines, so that digits merge into multi-digit tokens
    numbers = [" ".join(str(n) for n in rng.integers(0, 1000, 8)) for _ in range(500)]
    tok.train_from_iterator(
        make_payment_corpus(2000, seed=0) + numbers,
        trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok)


def one_by_one(model, tokenizer, cs: CanarySet, secrets, context: int) -> np.ndarray:
    """Each candidate's whole text tokenised and run alone; NLL of the tokens touching the secret."""
    out = []
    start = len(cs.prefix)
    model.eval()
    with torch.no_grad():
        for s in secrets:
            enc = tokenizer(cs.prefix + s + cs.suffix, return_offsets_mapping=True)
            ids, offsets = enc["input_ids"], enc["offset_mapping"]
            end = max(i for i, (a, b) in enumerate(offsets) if a < start + len(s) and b > start) + 1
            logp = torch.log_softmax(model(torch.tensor([ids]))[0].double(), -1)
            out.append(-sum(float(logp[t - 1, ids[t]]) for t in range(context, end)))
    return np.array(out)


@pytest.mark.parametrize("model_fn", [tiny_window_lm, NaiveOnlyLM])
def test_bpe_secrets_scored_as_the_training_text_tokenises_them(bpe, model_fn) -> None:
    torch.manual_seed(0)
    cs = CanarySet("my pin is {secret}.", bpe, length=3, repetitions=(1, 4), per_count=2, seed=0)
    assert cs.char_token_ids() is None  # digits merge: no trie, no best-first
    with pytest.warns(UserWarning, match="merge with the secret"):
        sequences, context = cs.candidate_sequences(cs.enumerate_candidates())
    assert context == len(cs.prefix_ids) - 1  # "my pin is " ends with a space that joins the secret
    assert len({len(s) for s in sequences}) > 1  # candidates tokenise to different lengths
    for c in cs:  # a canary's tokens are those of its text, as the training pipeline tokenises it
        assert list(c.token_ids) == bpe(c.text)["input_ids"]

    model = model_fn(len(bpe))
    monitor = CanaryExposureMonitor(cs, method="exact")
    assert monitor._resolve_method(model) == "exact_list"
    result = monitor.compute(model)  # (warned once per CanarySet, above)
    space = one_by_one(model, bpe, cs, cs.enumerate_candidates(), context)
    canary_scores = space[cs.candidate_index_array()]
    np.testing.assert_allclose(result.log_perplexity, canary_scores, atol=1e-4)
    ranks = np.array([int(np.sum(space <= s)) for s in canary_scores])  # ties against the canary
    np.testing.assert_array_equal(result.rank, ranks)
    np.testing.assert_allclose(result.exposure, math.log2(1000) - np.log2(ranks), atol=1e-9)


@pytest.mark.parametrize(
    ("rank", "exact", "expected"),
    [
        ([3.0, 40.0], [True, False], 3.0),  # the others' bounds are above: 3 is the best rank
        ([30.0, 4.0], [True, False], math.nan),  # a canary bounded at >= 4 may rank better than 30
        ([5.0, 5.0], [True, False], 5.0),  # a bound equal to the exact rank: nothing ranks better
        ([7.0, 9.0], [False, False], math.nan),  # bounds only: no exact rank to report
        ([1.0, math.nan], [True, False], math.nan),  # a non-finite score: NaN, never a safe value
        ([2.0, 6.0], [True, True], 2.0),
    ],
)
def test_best_exact_rank_is_exact_or_nan(rank: list[float], exact: list[bool], expected: float) -> None:
    from memcallbacks.callbacks.exposure import best_exact_rank

    got = best_exact_rank(np.array(rank), np.array(exact))
    assert (math.isnan(got) and math.isnan(expected)) or got == expected
