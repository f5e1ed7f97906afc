"""Canary scoring: log-perplexity against hand computation; trie == shared prefix == naive; beam search."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from helpers.language_models import NaiveOnlyLM, PooledLM
from memcallbacks import CanarySet, CharTokenizer
from memcallbacks.demos.toy import CharLSTMLM, WindowLM
from memcallbacks.lm.decoding import beam_search
from memcallbacks.lm.scoring import (
    IncrementalLM,
    is_incremental,
    log_perplexity,
    score_sequences,
    score_shared_prefix,
    score_space_trie,
)


class FixedLogits(torch.nn.Module):
    """Logits depend only on the position: easy to compute by hand."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table  # [T, V]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[: ids.shape[1]].expand(ids.shape[0], -1, -1)


def test_log_perplexity_by_hand() -> None:
    table = torch.tensor([[0.0, 1.0, 2.0], [2.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 5.0]])
    ids = torch.tensor([[0, 1, 2, 0], [2, 2, 1, 0]])
    mask = torch.tensor([[False, False, True, True], [False, True, True, False]])
    lsm = torch.log_softmax(table, -1)
    # row 0: tokens 2 (predicted at position 1) and 0 (position 2); row 1: tokens 2 (pos 0) and 1 (pos 1)
    expected = torch.tensor([-(lsm[1, 2] + lsm[2, 0]), -(lsm[0, 2] + lsm[1, 1])])
    assert torch.allclose(log_perplexity(FixedLogits(table), ids, mask), expected)
    scores = score_sequences(FixedLogits(table), [[0, 1, 2, 0], [2, 2, 1]], [2, 1])
    assert np.allclose(scores, expected.double().numpy(), atol=1e-6)


@pytest.mark.parametrize("model_cls", [CharLSTMLM, WindowLM])
def test_trie_equals_shared_prefix_equals_naive(model_cls) -> None:
    tok = CharTokenizer()
    cs = CanarySet("pin {secret}!", tok, length=3, repetitions=(1,), per_count=2, seed=3)
    model = model_cls(tok.vocab_size)
    assert isinstance(model, IncrementalLM)
    assert is_incremental(model)
    model.train()
    cands = cs.enumerate_candidates()
    naive = score_sequences(
        model, [cs.prefix_ids + cs.encode_secret(s) for s in cands], len(cs.prefix_ids), batch_size=97
    )
    shared = score_shared_prefix(
        model, cs.prefix_ids, np.array([cs.encode_secret(s) for s in cands]), batch_size=123
    )
    # a small batch_size forces the depth-first chunking of the trie
    trie = score_space_trie(model, cs.prefix_ids, cs.char_token_ids(), 3, batch_size=40)
    assert trie.shape == (1000,)
    np.testing.assert_allclose(shared, naive, atol=1e-4)
    np.testing.assert_allclose(trie, naive, atol=1e-4)
    assert model.training  # train mode restored
    assert naive.min() > 0


def test_trie_on_non_incremental_model_is_refused() -> None:
    model = NaiveOnlyLM(10)
    assert not is_incremental(model)
    with pytest.raises(TypeError, match="IncrementalLM"):
        score_space_trie(model, [1], [2, 3], 2)


def _brute_force_sorted(model, prefix, vocab, steps):
    out = []
    for seq in itertools.product(range(vocab), repeat=steps):
        ids = torch.tensor([prefix + list(seq)])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids)[0].float(), -1)
        score = -sum(float(lp[len(prefix) - 1 + j, t]) for j, t in enumerate(seq))
        out.append((score, seq))
    return [seq for _, seq in sorted(out)]


def test_beam_search_matches_brute_force() -> None:
    torch.manual_seed(1)
    model = WindowLM(6, context=3, embedding_dim=3, hidden_size=8)
    naive_model = NaiveOnlyLM(6, context=3, embedding_dim=3, hidden_size=8)
    naive_model.load_state_dict(model.state_dict())
    prefix = [1, 4]
    ranked = _brute_force_sorted(model, prefix, 6, 3)
    # a beam as wide as the space is exhaustive: it returns every sequence, best first
    full = beam_search(model, prefix, 3, width=216)
    assert full[:20] == [tuple(s) for s in ranked[:20]]
    assert beam_search(naive_model, prefix, 3, width=216)[:20] == full[:20]
    # greedy: argmax step by step
    ids = list(prefix)
    for _ in range(3):
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert beam_search(model, prefix, 3, width=1) == [tuple(ids[2:])]
    assert beam_search(naive_model, prefix, 3, width=1) == [tuple(ids[2:])]


def test_bad_model_output_says_pass_score_fn() -> None:
    with pytest.raises(TypeError, match="pass `score_fn"):
        score_sequences(PooledLM(10), [[1, 2, 3]], 1)
    with pytest.raises(TypeError, match="shape \\[2\\]"):
        score_sequences(WindowLM(10), [[1, 2], [1, 3]], 1, score_fn=lambda m, ids, mask: torch.zeros(3))
    with pytest.raises(ValueError, match="token 0"):
        score_sequences(WindowLM(10), [[1, 2]], 0)


def test_custom_score_fn_hf_style_output() -> None:
    class Out:
        def __init__(self, logits):
            self.logits = logits

    class HFStyle(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = WindowLM(10)

        def forward(self, ids):
            return Out(self.inner(ids))

    model = HFStyle()
    a = score_sequences(model, [[1, 2, 3]], 1)
    b = score_sequences(model.inner, [[1, 2, 3]], 1)
    assert a == pytest.approx(b)
    assert math.isfinite(a[0])


def test_progress_bar_forced(capsys) -> None:
    model = WindowLM(10)
    scores = score_sequences(model, [[1, 2, 3]] * 8, 1, batch_size=2, progress=True)
    assert scores.shape == (8,)
    assert "scoring" in capsys.readouterr().err
