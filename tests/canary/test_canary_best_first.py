"""Best-first (Dijkstra) canary rank == the rank from scoring the whole space; budget; errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers.language_models import NaiveOnlyLM, tiny_window_lm
from memcallbacks import CanarySet, CharTokenizer
from memcallbacks.demos.toy import CharLSTMLM, WindowLM
from memcallbacks.lm.best_first import BestFirstResult, rank_best_first
from memcallbacks.lm.scoring import score_space_trie

TOK = CharTokenizer()
TRIE_NODES = 1 + 4 + 16 + 64  # root and the inner nodes of a 4-character trie over "0123"


def space(**kw) -> CanarySet:
    opts = dict(alphabet="0123", length=4, repetitions=(1,), per_count=2, seed=0)
    opts.update(kw)
    return CanarySet("pin {secret}.", TOK, **opts)


def trie_ranks(model, cs: CanarySet) -> np.ndarray:
    """Rank of every candidate from scoring all of them: 1 + #(others <= its score)."""
    scores = score_space_trie(model, cs.prefix_ids, cs.char_token_ids(), cs.length)
    return np.searchsorted(np.sort(scores), scores, side="right")


def train_on(model: WindowLM, text_ids: list[int], steps: int = 60) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    ids = torch.tensor([text_ids])
    for _ in range(steps):
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("model_cls", [tiny_window_lm, CharLSTMLM])
def test_every_candidate_rank_equals_the_whole_space_rank(model_cls) -> None:
    cs = space()
    model = model_cls(TOK.vocab_size)
    expected = trie_ranks(model, cs)
    got = []
    every = range(0, cs.space_size, 2)  # half the space keeps the file fast; all ranks 1..256 occur
    for i in every:
        # a small batch splits the frontier into many chunks
        result = rank_best_first(model, cs, cs.candidate(i), batch_size=5)
        assert result.exact
        assert result.lower_bound_rank == result.rank
        assert result.explored <= TRIE_NODES
        got.append(result.rank)
    np.testing.assert_array_equal(got, expected[::2])
    top = int(np.argmin(expected))
    mid = int(np.argsort(expected)[128])
    assert rank_best_first(model, cs, cs.candidate(top)).rank == expected[top] == 1
    assert rank_best_first(model, cs, cs.candidate(mid)).rank == expected[mid]


def test_memorised_canary_is_rank_one_after_few_expansions() -> None:
    cs = space()
    model = tiny_window_lm(TOK.vocab_size)
    train_on(model, list(cs[0].token_ids))
    model.train()
    expected = trie_ranks(model, cs)
    canary = cs.candidate_index(cs[0].secret)
    assert expected[canary] == 1
    result = rank_best_first(model, cs, cs[0].secret)
    assert isinstance(result, BestFirstResult)
    assert result.rank == 1
    assert result.exact
    assert result.explored < 20  # far fewer than the 85 nodes of the whole trie
    assert model.training  # train mode restored
    # its score is the log-perplexity of the secret tokens, as the trie computes it
    full = score_space_trie(model, cs.prefix_ids, cs.char_token_ids(), 4)
    assert result.canary_score == pytest.approx(full[canary], abs=1e-5)
    # the other canary, not trained on, keeps its whole-space rank
    other = cs.candidate_index(cs[1].secret)
    assert rank_best_first(model, cs, cs[1].secret).rank == expected[other] > 1


def test_ties_count_against_the_canary() -> None:
    cs = space()
    model = WindowLM(TOK.vocab_size, context=4, embedding_dim=4, hidden_size=8)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # uniform predictions: every candidate has the same score
    result = rank_best_first(model, cs, cs[0].secret)
    assert result.rank == cs.space_size == 256
    assert result.explored == TRIE_NODES
    assert result.canary_score == pytest.approx(4 * np.log(TOK.vocab_size))


def test_budget_exhausted_gives_a_lower_bound() -> None:
    cs = space()
    model = CharLSTMLM(TOK.vocab_size)
    expected = trie_ranks(model, cs)
    worst = int(np.argmax(expected))  # needs the whole trie
    bounds = []
    for budget in (1, 2, 10, 30, 84):
        result = rank_best_first(model, cs, cs.candidate(worst), max_expansions=budget, batch_size=4)
        assert result.rank is None
        assert not result.exact
        assert result.explored <= budget
        assert 1 <= result.lower_bound_rank <= expected[worst]
        bounds.append(result.lower_bound_rank)
    assert bounds == sorted(bounds)
    assert bounds[-1] > 1
    enough = rank_best_first(model, cs, cs.candidate(worst), max_expansions=TRIE_NODES, batch_size=4)
    assert enough.rank == expected[worst] == enough.lower_bound_rank


def test_bad_inputs_are_refused_with_the_fix() -> None:
    cs = space()
    model = tiny_window_lm(TOK.vocab_size)
    with pytest.raises(TypeError, match="IncrementalLM"):
        rank_best_first(NaiveOnlyLM(TOK.vocab_size), cs, cs[0].secret)
    with pytest.raises(TypeError, match="CanarySet"):
        rank_best_first(model, "pin {secret}", cs[0].secret)
    explicit = CanarySet("pin {secret}.", TOK, candidates=["ab", "cd", "ef"], repetitions=(1,), per_count=1)
    with pytest.raises(ValueError, match='method="exact".*method="extrapolated"'):
        rank_best_first(model, explicit, "ab")
    two_tokens = CanarySet(
        "pin {secret}.",
        lambda text: [t for c in text for t in (2 + ord(c) % 50, 60)],
        alphabet="0123",
        length=3,
        repetitions=(1,),
        per_count=1,
    )
    with pytest.raises(ValueError, match='exactly one token.*method="exact"'):
        rank_best_first(model, two_tokens, two_tokens[0].secret)
    for secret in ("012", "01234", "0129", 1234):
        with pytest.raises(ValueError, match="`secret` must be a string of 4 characters"):
            rank_best_first(model, cs, secret)
    for name in ("max_expansions", "batch_size"):
        with pytest.raises(ValueError, match=f"`{name}` must be an integer >= 1"):
            rank_best_first(model, cs, cs[0].secret, **{name: 0})

    class Unnormalised(WindowLM):
        def step(self, state, token_ids):
            window = torch.cat([state[:, 1:], token_ids.unsqueeze(1)], dim=1)
            return window, self._logits_of_windows(window) + 5.0  # logits, not log-probabilities

    with pytest.raises(ValueError, match="log_softmax"):
        rank_best_first(Unnormalised(TOK.vocab_size), cs, cs[0].secret)
