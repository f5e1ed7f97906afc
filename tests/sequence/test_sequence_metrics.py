"""Sequence-memorisation metrics against hand-worked values and independent computations."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from memcallbacks.demos.toy import CharLSTMLM
from memcallbacks.metrics import (
    exact_match_rate,
    extraction_probability,
    min_k_prob,
    suffix_sample_logprob,
    token_match_rate,
    zlib_ratio,
)


# -- Min-K% Prob ---------------------------------------------------------------------------
def test_min_k_hand_worked() -> None:
    lp = np.log([[0.5, 0.1, 0.9, 0.2, 0.8], [0.5, 0.5, 0.25, 1.0, 1.0]])
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=bool)
    # row 0: n=5, int(0.4*5)=2 -> mean(log 0.1, log 0.2); row 1: n=3, int(1.2)=1 -> log 0.25
    got = min_k_prob(lp, mask, k=0.4)
    np.testing.assert_allclose(got, [(math.log(0.1) + math.log(0.2)) / 2, math.log(0.25)], rtol=1e-12)
    # k=1: the mean token log-probability (minus the usual loss)
    np.testing.assert_allclose(min_k_prob(lp, mask, k=1.0), [lp[0].mean(), lp[1, :3].mean()], rtol=1e-12)
    # at least one token: int(0.01 * 5) = 0 -> 1, the least likely
    np.testing.assert_allclose(min_k_prob(lp, mask, k=0.01), [math.log(0.1), math.log(0.25)], rtol=1e-12)


def test_min_k_matches_reference_implementation() -> None:
    """Shi et al.'s code: sort the sequence's token log-probs, average the first int(k*n)."""
    rng = np.random.default_rng(0)
    lp = np.log(rng.uniform(0.01, 1.0, size=(50, 40)))
    lengths = rng.integers(1, 41, size=50)
    mask = np.arange(40)[None, :] < lengths[:, None]
    for k in (0.05, 0.2, 0.29, 0.5, 1.0):
        ref = []
        for row, n in zip(lp, lengths):
            m = max(1, math.floor(round(k * n, 9)))
            ref.append(np.sort(row[:n])[:m].mean())
        np.testing.assert_allclose(min_k_prob(lp, mask, k=k), ref, rtol=1e-12, err_msg=str(k))


def test_min_k_rounding_and_kinds() -> None:
    lp = torch.log(torch.linspace(0.01, 1.0, 100, dtype=torch.float64)).unsqueeze(0)
    # 0.29 * 100 = 28.999999999999996 in floating point: still the 29 least likely
    expected = lp[0, :29].mean()
    out = min_k_prob(lp, None, k=0.29)
    assert isinstance(out, torch.Tensor)
    assert out.dtype == torch.float64
    assert float(out[0]) == pytest.approx(float(expected), rel=1e-12)
    assert isinstance(min_k_prob([0.0, -1.0], k=0.5), np.ndarray)
    assert np.isnan(min_k_prob(np.zeros((1, 3)), np.zeros((1, 3), bool), k=0.5)[0])  # no scored token


@pytest.mark.parametrize("k", [0.0, -0.1, 1.5, float("nan")])
def test_min_k_bad_k(k: float) -> None:
    with pytest.raises(ValueError, match="`k`"):
        min_k_prob(np.zeros((1, 3)), k=k)


def test_min_k_bool_k_and_bad_mask() -> None:
    with pytest.raises(TypeError, match="`k`"):
        min_k_prob(np.zeros((1, 3)), k=True)
    with pytest.raises(ValueError, match="`mask`"):
        min_k_prob(np.zeros((1, 3)), np.ones((1, 4), bool), k=0.5)


# -- zlib ratio ----------------------------------------------------------------------------
def test_zlib_ratio_hand_worked() -> None:
    texts = ["hello hello hello hello", "q8#zP!x"]
    lengths = [len(zlib.compress(t.encode(), 9)) for t in texts]
    got = zlib_ratio([2.0, 3.0], texts)
    np.testing.assert_allclose(got, [2.0 / lengths[0], 3.0 / lengths[1]], rtol=1e-15)
    assert zlib_ratio([1.0], [b"abc"])[0] == pytest.approx(1.0 / len(zlib.compress(b"abc", 9)))
    # token ids below 256 compress as single bytes
    ids = [104, 105, 104, 105]
    assert zlib_ratio([1.0], [ids])[0] == pytest.approx(1.0 / len(zlib.compress(bytes(ids), 9)))
    # wide ids: two bytes each, little-endian
    wide = np.array([300, 1], dtype=np.int64)
    assert zlib_ratio([1.0], [wide])[0] == pytest.approx(1.0 / len(zlib.compress(b"\x2c\x01\x01\x00", 9)))
    t = zlib_ratio(torch.tensor([2.0]), ["hello"])
    assert isinstance(t, torch.Tensor)
    assert t.dtype == torch.float32


def test_zlib_ratio_errors() -> None:
    with pytest.raises(ValueError, match="one text per"):
        zlib_ratio([1.0, 2.0], ["a"])
    with pytest.raises(TypeError, match="texts_or_bytes"):
        zlib_ratio([1.0], [[0.5, 1.5]])


# -- exact / token match -------------------------------------------------------------------
def test_match_rates_hand_worked() -> None:
    gen = [[1, 2, 3, 4], [4, 5, 6, 7], [9, 9, 9, 9]]
    ref = [[1, 2, 3, 4], [4, 0, 6, 7], [0, 0, 0, 0]]
    assert exact_match_rate(gen, ref) == pytest.approx(1 / 3)
    assert token_match_rate(gen, ref) == pytest.approx((1 + 0.75 + 0) / 3)
    assert exact_match_rate(torch.tensor([5, 6]), torch.tensor([5, 6])) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        exact_match_rate([[1, 2]], [[1, 2, 3]])
    with pytest.raises(TypeError, match="integer"):
        exact_match_rate([[1.5]], [[1]])


# -- (n, p) extraction -----------------------------------------------------------------------
def test_suffix_sample_logprob_hand_worked() -> None:
    p = np.array([[[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]]])
    logits = np.log(p)
    assert np.exp(suffix_sample_logprob(logits, [[0, 2]])[0]) == pytest.approx(0.5 * 0.3)
    # temperature 2: probabilities proportional to sqrt(p)
    s0, s1 = np.sqrt(p[0, 0]), np.sqrt(p[0, 1])
    expected = s0[0] / s0.sum() * s1[2] / s1.sum()
    assert np.exp(suffix_sample_logprob(logits, [[0, 2]], temperature=2.0)[0]) == pytest.approx(expected)
    # top-2 renormalised: {0: .5, 1: .3} then {1: .6, 2: .3}
    assert np.exp(suffix_sample_logprob(logits, [[0, 2]], top_k=2)[0]) == pytest.approx(0.5 / 0.8 * 0.3 / 0.9)
    assert suffix_sample_logprob(logits, [[2, 1]], top_k=2)[0] == -np.inf  # token 2 is outside the top 2
    # mask drops the second position
    got = suffix_sample_logprob(logits, [[0, 0]], mask=[[True, False]])
    assert np.exp(got[0]) == pytest.approx(0.5)


def test_top_k_keeps_ties_like_samplers_do() -> None:
    logits = torch.log(torch.tensor([[[0.4, 0.3, 0.3]]]))
    # the 2nd and 3rd tokens tie at the k-th largest logit: both kept (Hugging Face's top-k warper)
    assert float(torch.exp(suffix_sample_logprob(logits, torch.tensor([[2]]), top_k=2))[0]) == pytest.approx(
        0.3
    )


def test_long_suffix_does_not_underflow() -> None:
    v, s = 50, 64
    logits = torch.zeros(1, s, v, dtype=torch.float32)  # uniform: q = 50 ** -64 ~ 1e-109, below float32
    out = suffix_sample_logprob(logits, torch.zeros(1, s, dtype=torch.long))
    assert torch.isfinite(out).all()
    assert float(out[0]) == pytest.approx(-s * math.log(v), rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"temperature": 0.0}, ValueError, "`temperature`"),
        ({"temperature": -1.0}, ValueError, "`temperature`"),
        ({"top_k": 0}, ValueError, "`top_k`"),
        ({"top_k": 4}, ValueError, "`top_k`"),
        ({"top_k": 1.5}, TypeError, "`top_k`"),
    ],
)
def test_suffix_sample_logprob_bad_input(kwargs: dict, err: type, match: str) -> None:
    with pytest.raises(err, match=match):
        suffix_sample_logprob(np.zeros((1, 2, 3)), [[0, 1]], **kwargs)


def test_extraction_probability_hand_worked_and_stable() -> None:
    got = extraction_probability(np.array([math.log(0.5), math.log(0.01), -np.inf, 0.0]), 2)
    np.testing.assert_allclose(got, [0.75, 1 - 0.99**2, 0.0, 1.0], rtol=1e-14)
    # tiny q: the naive formula returns 0, the stable one n*q
    q = 1e-20
    assert 1 - (1 - q) ** 10 == 0.0
    assert extraction_probability(np.array([math.log(q)]), 10)[0] == pytest.approx(1e-19, rel=1e-12)
    # q close to 1 keeps its precision: log q = -1e-12 -> 1 - q ~ 1e-12, (1-q)^2 ~ 1e-24
    assert 1.0 - extraction_probability(np.array([-1e-12]), 2)[0] == pytest.approx(0.0, abs=1e-20)
    # n broadcasts
    np.testing.assert_allclose(
        extraction_probability(np.full(3, math.log(0.1)), np.array([1, 10, 100])),
        1 - 0.9 ** np.array([1, 10, 100]),
    )
    t = extraction_probability(torch.tensor([math.log(0.5)]), 3)
    assert isinstance(t, torch.Tensor)
    assert float(t[0]) == pytest.approx(0.875)


@pytest.mark.parametrize(
    ("n", "err"), [(0, ValueError), (-3, ValueError), (1.5, TypeError), (True, TypeError)]
)
def test_extraction_probability_bad_n(n: object, err: type) -> None:
    with pytest.raises(err, match="`n`"):
        extraction_probability(np.array([-1.0]), n)


def test_extraction_probability_bad_log_q() -> None:
    with pytest.raises(ValueError, match="log_q"):
        extraction_probability(np.array([0.5]), 1)


# -- against the empirical rate of actually sampling ---------------------------------------------
def _sample_suffixes(
    model: CharLSTMLM,
    prefix: torch.Tensor,
    steps: int,
    draws: int,
    temperature: float,
    top_k: int | None,
    gen: torch.Generator,
) -> torch.Tensor:
    """Independent sampler: softmax(scores / T) over the top-k scores, one token at a time."""
    state, scores = model.init_state(prefix)  # log-softmax: logits minus a per-row constant, same sampler
    state, scores = model.expand_state(state, draws), scores.expand(draws, -1)
    out = []
    for j in range(steps):
        scaled = scores / temperature
        if top_k is not None:
            kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        tok = torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=gen).squeeze(1)
        out.append(tok)
        if j + 1 < steps:
            state, scores = model.step(state, tok)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize(("temperature", "top_k"), [(1.0, None), (0.7, 3)])
def test_sampling_rate_matches_the_exact_probability(temperature: float, top_k: int | None) -> None:
    torch.manual_seed(3)
    model = CharLSTMLM(vocab_size=6, embedding_dim=8, hidden_size=16).eval()
    with torch.no_grad():
        model.head.weight.mul_(8.0)  # peaked distributions, so q is not tiny
    prefix = torch.tensor([[1, 2, 3, 4]])
    steps, n, groups = 3, 10, 3000
    with torch.inference_mode():
        greedy = []
        state, logp = model.init_state(prefix)
        for _ in range(steps):
            tok = logp.argmax(-1)
            greedy.append(tok)
            state, logp = model.step(state, tok)
        suffix = torch.stack(greedy, dim=1)  # [1, steps]: inside every top-k
        full = torch.cat([prefix, suffix], dim=1)
        logits = model(full)[:, prefix.shape[1] - 1 : -1]
        log_q = suffix_sample_logprob(logits, suffix, temperature=temperature, top_k=top_k)
        q = float(torch.exp(log_q)[0])
        draws = _sample_suffixes(
            model, prefix, steps, n * groups, temperature, top_k, torch.Generator().manual_seed(0)
        )
    hit = (draws == suffix).all(dim=1).double()
    assert 0.01 < q < 0.99
    # single draws: 30,000 Bernoulli(q); 6 standard errors (a failure by chance has probability ~2e-9)
    se = math.sqrt(q * (1 - q) / hit.numel())
    assert abs(float(hit.mean()) - q) < 6 * se
    # groups of n draws: at least one hit, against extraction_probability(log q, n)
    p_n = float(extraction_probability(log_q, n)[0])
    any_hit = hit.reshape(groups, n).amax(dim=1)
    se_n = math.sqrt(max(p_n * (1 - p_n), 1e-4) / groups)
    assert abs(float(any_hit.mean()) - p_n) < 6 * se_n
