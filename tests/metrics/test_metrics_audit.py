"""Tests for memcallbacks.metrics.audit (Steinke, Nasr and Jagielski, NeurIPS 2023)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memcallbacks.metrics import audit_guesses, count_correct, epsilon_lower_bound, p_value_audit


# ---------------------------------------------------------------- the paper's reference code
# Copied from the appendix of Steinke et al. (2023) as the independent implementation.
def p_value_DP_audit(m, r, v, eps, delta):
    q = 1 / (1 + math.exp(-eps))
    beta = scipy.stats.binom.sf(v - 1, r, q)  # P[Binomial(r,q) >= v]
    alpha = 0
    s = 0
    for i in range(1, v + 1):
        s = s + scipy.stats.binom.pmf(v - i, r, q)
        if s > i * alpha:
            alpha = s / i
    p = beta + alpha * delta * 2 * m
    return min(p, 1)


def get_eps_audit(m, r, v, delta, p):
    eps_min, eps_max = 0, 1
    while p_value_DP_audit(m, r, v, eps_max, delta) < p:
        eps_max = eps_max + 1
    for _ in range(30):
        eps = (eps_min + eps_max) / 2
        if p_value_DP_audit(m, r, v, eps, delta) < p:
            eps_min = eps
        else:
            eps_max = eps
    return eps_min


CASES = [
    # (m, r, v, delta)
    (1000, 100, 95, 0.0),
    (1000, 100, 95, 1e-5),
    (1000, 100, 70, 1e-5),
    (1000, 150, 100, 1e-6),
    (10_000, 60, 58, 1e-5),
    (200, 20, 20, 0.0),
    (200, 20, 20, 1e-3),  # at beta 0.01 even eps = 0 is not rejected: p(0) = 0.029
]
# the reference's Python loop is slow for large v: p-values only
LARGE_CASES = [(1000, 1000, 600, 1e-6), (5000, 2000, 1700, 1e-5)]


@pytest.mark.parametrize(
    ("m", "r", "v", "delta", "beta"),
    [(*case, 0.05) for case in CASES] + [(*case, 0.01) for case in CASES if case[2] <= 20],
)
def test_epsilon_matches_reference(m: int, r: int, v: int, delta: float, beta: float) -> None:
    expected = get_eps_audit(m, r, v, delta, beta)
    got = epsilon_lower_bound(v, r, num_canaries=m, delta=delta, beta=beta)
    # the reference bisects 30 times on [0, eps_max]: its answer is within eps_max / 2**30 below ours
    assert got == pytest.approx(expected, abs=1e-7)
    if got > 0:  # the bound is where the p-value reaches beta
        assert p_value_audit(v, r, epsilon=got, num_canaries=m, delta=delta) == pytest.approx(beta, rel=1e-6)
    else:
        assert p_value_audit(v, r, epsilon=0.0, num_canaries=m, delta=delta) >= beta


@pytest.mark.parametrize(
    ("m", "r", "v", "delta", "eps"),
    [(*case, eps) for case in CASES for eps in (0.0, 0.5, 2.0, 5.0)]
    + [(*case, eps) for case in LARGE_CASES for eps in (0.5, 2.0)],
)
def test_p_value_matches_reference(m: int, r: int, v: int, delta: float, eps: float) -> None:
    expected = p_value_DP_audit(m, r, v, eps, delta)
    assert p_value_audit(v, r, epsilon=eps, num_canaries=m, delta=delta) == pytest.approx(expected, rel=1e-9)


def test_hand_worked_pure_dp() -> None:
    # 10 of 10 right: p(eps) = q^10 with q = e^eps / (1 + e^eps).
    # p(0) = 2^-10 < 0.05, so eps = 0 is rejected; the bound solves q^10 = 0.05:
    # q = 0.05^(1/10) = 0.741134, eps = log(q / (1 - q)) = 1.0517
    q = 0.05 ** (1 / 10)
    assert epsilon_lower_bound(10, 10) == pytest.approx(math.log(q / (1 - q)), abs=1e-10)
    assert p_value_audit(10, 10, epsilon=0.0) == pytest.approx(2.0**-10)


def test_nothing_rejected_gives_zero() -> None:
    # 5 of 10 right is what a coin gives: p(0) = P[Bin(10, 1/2) >= 5] = 0.623 > 0.05
    assert epsilon_lower_bound(5, 10) == 0.0
    assert epsilon_lower_bound(0, 0) == 0.0  # no guesses, no evidence
    assert epsilon_lower_bound(0, 50, num_canaries=100, delta=1e-5) == 0.0


@settings(max_examples=25, deadline=None)
@given(r=st.integers(1, 300), data=st.data())
def test_epsilon_monotone_in_num_correct(r: int, data: st.DataObject) -> None:
    v1 = data.draw(st.integers(0, r))
    v2 = data.draw(st.integers(v1, r))
    assert epsilon_lower_bound(v1, r) <= epsilon_lower_bound(v2, r) + 1e-9
    m = 2 * r
    low = epsilon_lower_bound(v1, r, num_canaries=m, delta=1e-5)
    high = epsilon_lower_bound(v2, r, num_canaries=m, delta=1e-5)
    assert low <= high + 1e-9
    # delta > 0 only makes it harder to reject
    assert high <= epsilon_lower_bound(v2, r) + 1e-9


@pytest.mark.parametrize("beta", [0.0, 1.0, -0.1, 1.5])
def test_beta_outside_open_interval(beta: float) -> None:
    with pytest.raises(
        ValueError, match=r"`beta` must be a finite number in \(0.0, 1.0\), got .*significance level"
    ):
        epsilon_lower_bound(9, 10, beta=beta)


def test_count_validation() -> None:
    with pytest.raises(ValueError, match=r"`num_correct` must be <= `num_guesses` \(10\), got 11"):
        epsilon_lower_bound(11, 10)
    with pytest.raises(ValueError, match=r"`num_guesses` must be <= `num_canaries` \(5\), got 10"):
        epsilon_lower_bound(9, 10, num_canaries=5)
    with pytest.raises(ValueError, match="`num_correct` must be an integer >= 0, got -1"):
        epsilon_lower_bound(-1, 10)
    with pytest.raises(TypeError, match="`num_guesses` must be an integer >= 0, got 10.0"):
        epsilon_lower_bound(9, 10.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`num_canaries` is required when `delta` > 0"):
        epsilon_lower_bound(9, 10, delta=1e-5)
    with pytest.raises(ValueError, match=r"`delta` must be a finite number in \[0.0, 1.0\], got 2"):
        epsilon_lower_bound(9, 10, num_canaries=20, delta=2)
    with pytest.raises(ValueError, match="`epsilon` must be a finite number in \\[0.0, inf\\), got -1.0"):
        p_value_audit(9, 10, epsilon=-1.0)
    assert epsilon_lower_bound(np.int64(9), np.int64(10)) > 0  # numpy ints are ints


# ---------------------------------------------------------------- guesses
def test_audit_guesses_hand_worked() -> None:
    # scores 0.9 0.1 0.5 0.7 0.2: two highest (0.9, 0.7) in, lowest (0.1) out
    guesses = audit_guesses([0.9, 0.1, 0.5, 0.7, 0.2], k_pos=2, k_neg=1)
    np.testing.assert_array_equal(guesses, [1, -1, 0, 1, 0])
    assert guesses.dtype == np.int8
    # included: T F T F F -> +1 on 0 right, -1 on 1 right, +1 on 3 wrong -> 2 of 3
    assert count_correct(guesses, [True, False, True, False, False]) == (2, 3)
    assert count_correct(torch.tensor(guesses), torch.tensor([1, 0, 1, 0, 0])) == (2, 3)


def test_audit_guesses_edges() -> None:
    scores = torch.tensor([3.0, 1.0, 2.0])
    np.testing.assert_array_equal(audit_guesses(scores, k_pos=0, k_neg=0), [0, 0, 0])
    np.testing.assert_array_equal(audit_guesses(scores, k_pos=3, k_neg=0), [1, 1, 1])
    np.testing.assert_array_equal(audit_guesses(scores, k_pos=1, k_neg=2), [1, -1, -1])
    with pytest.raises(
        ValueError, match=r"`k_pos` \+ `k_neg` must be <= the number of canaries \(3\), got 2 \+ 2"
    ):
        audit_guesses(scores, k_pos=2, k_neg=2)
    with pytest.raises(ValueError, match="`scores` must be finite"):
        audit_guesses([1.0, np.nan], k_pos=1, k_neg=0)
    with pytest.raises(TypeError, match="`k_neg` must be an integer >= 0, got None"):
        audit_guesses(scores, k_pos=1, k_neg=None)  # type: ignore[arg-type]


def test_count_correct_validation() -> None:
    with pytest.raises(ValueError, match="`included` must have the shape of `guesses`"):
        count_correct([1, 0], [True])
    with pytest.raises(ValueError, match="`guesses` must hold -1"):
        count_correct([2, 0], [True, False])
    with pytest.raises(ValueError, match="`included` must be bool or 0/1"):
        count_correct([1, 0], [3, 0])


def test_end_to_end_audit_separates_leaky_from_private() -> None:
    rng = np.random.default_rng(0)
    m = 1000
    included = rng.random(m) < 0.5
    leaky = included + rng.normal(0, 0.3, m)  # scores reveal membership
    private = rng.normal(0, 1.0, m)  # scores independent of membership
    eps = {}
    for name, scores in (("leaky", leaky), ("private", private)):
        v, r = count_correct(audit_guesses(scores, k_pos=100, k_neg=100), included)
        eps[name] = epsilon_lower_bound(v, r, num_canaries=m, delta=1e-5)
    assert eps["leaky"] > 2.0
    assert eps["private"] < 0.5
