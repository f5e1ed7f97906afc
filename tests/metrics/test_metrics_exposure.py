"""Tests for memcallbacks.metrics.exposure (Carlini et al. 2019, Secret Sharer)."""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from memcallbacks.metrics import (
    ExposureResult,
    SkewNormalFit,
    exposure_exact,
    exposure_extrapolated,
    exposure_from_rank,
    exposure_from_references,
    exposure_rank,
    exposure_rank_in_space,
    exposure_saturated,
    fit_skewnorm,
)
from memcallbacks.metrics.exposure import _skewnorm_log_cdf

REFERENCES = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])  # 7 references -> space 8 by default


# ---------------------------------------------------------------- exposure_from_rank
def test_exposure_from_rank_scalar_and_array() -> None:
    # log2(1024) - log2(1) = 10; log2(1024) - log2(2) = 9; log2(1024) - log2(1024) = 0
    assert exposure_from_rank(1, 1024) == 10.0
    assert isinstance(exposure_from_rank(1, 1024), float)
    np.testing.assert_array_equal(exposure_from_rank(np.array([1, 2, 1024]), 1024), [10.0, 9.0, 0.0])
    # huge space as a Python int: log2(26**30) = 30 * log2(26) = 141.0135...
    assert exposure_from_rank(1, 26**30) == pytest.approx(30 * math.log2(26))


@pytest.mark.parametrize("rank", [0, -1, 0.5])
def test_exposure_from_rank_rejects_rank_below_one(rank: float) -> None:
    with pytest.raises(ValueError, match="`rank` must be >= 1"):
        exposure_from_rank(rank, 10)


@pytest.mark.parametrize("space_size", [0, 0.5, -3, float("nan"), float("inf")])
def test_space_size_below_one_or_not_finite(space_size: float) -> None:
    with pytest.raises(ValueError, match=r"`space_size` must be a finite number >= 1.*got"):
        exposure_from_rank(1, space_size)
    with pytest.raises(ValueError, match="space_size"):
        exposure_exact([1.0], REFERENCES, space_size=space_size)
    with pytest.raises(ValueError, match="space_size"):
        exposure_extrapolated([1.0], REFERENCES, space_size=space_size)


@pytest.mark.parametrize("space_size", ["8", None, True])
def test_space_size_type(space_size: object) -> None:
    with pytest.raises(TypeError, match="space_size"):
        exposure_from_rank(1, space_size)


# ---------------------------------------------------------------- exact exposure
def test_canary_better_than_every_reference_has_full_exposure() -> None:
    # rank = 1 + #(refs <= 0.5) = 1; space = 7 + 1 = 8 -> log2(8) - log2(1) = 3 bits
    assert exposure_rank([0.5], REFERENCES).tolist() == [1]
    np.testing.assert_allclose(exposure_exact([0.5], REFERENCES), [3.0])


def test_canary_worse_than_every_reference_has_zero_exposure() -> None:
    # rank = 1 + 7 = 8 -> log2(8) - log2(8) = 0
    assert exposure_rank([100.0], REFERENCES).tolist() == [8]
    np.testing.assert_allclose(exposure_exact([100.0], REFERENCES), [0.0])


def test_ties_count_against_the_canary() -> None:
    # canary 3.0 ties the reference 3.0: rank = 1 + #{1, 2, 3} = 4 -> log2(8) - log2(4) = 1 bit
    # (a strict count would give rank 3 and log2(8/3) = 1.415 bits)
    assert exposure_rank([3.0], REFERENCES).tolist() == [4]
    np.testing.assert_allclose(exposure_exact([3.0], REFERENCES), [1.0])


def test_model_scoring_every_candidate_alike_has_zero_exposure() -> None:
    # ties count against the canary: a collapsed model must not show maximum exposure
    refs = np.full(1000, 7.25)
    np.testing.assert_array_equal(exposure_exact([7.25, 7.25], refs), [0.0, 0.0])


def test_single_reference() -> None:
    # one reference 2.0, space 2: canary 1.0 -> rank 1 -> 1 bit; canary 2.0 (tie) -> rank 2 -> 0 bits
    np.testing.assert_allclose(exposure_exact([1.0, 2.0, 3.0], [2.0]), [1.0, 0.0, 0.0])


def test_space_size_tf_privacy_convention() -> None:
    # space = len(refs) = 7: best canary log2(7) = 2.807; worst log2(7) - log2(8) = -0.193 (as TF Privacy)
    values = exposure_exact([0.5, 100.0], REFERENCES, space_size=len(REFERENCES))
    np.testing.assert_allclose(values, [math.log2(7), math.log2(7) - 3.0])


def test_explicit_space_size() -> None:
    # rank 2 (one reference <= 1.5) in a space of 10**6: log2(1e6) - 1 = 18.93
    np.testing.assert_allclose(exposure_exact([1.5], REFERENCES, space_size=10**6), [math.log2(1e6) - 1])


def test_exact_matches_brute_force_and_torch_input() -> None:
    rng = np.random.default_rng(0)
    refs = rng.integers(0, 50, size=500).astype(np.float64)  # many ties
    canaries = rng.integers(0, 52, size=200).astype(np.float64)
    brute = np.array([1 + np.sum(refs <= c) for c in canaries])
    np.testing.assert_array_equal(exposure_rank(canaries, refs), brute)
    expected = math.log2(501) - np.log2(brute)
    np.testing.assert_allclose(exposure_exact(canaries, refs), expected)
    for dtype in (torch.float32, torch.float64, torch.float16):
        got = exposure_exact(torch.tensor(canaries, dtype=dtype), torch.tensor(refs, dtype=dtype))
        np.testing.assert_allclose(got, expected)
        assert got.dtype == np.float64


def test_scalar_canary_is_one_canary() -> None:
    assert exposure_exact(0.5, REFERENCES).shape == (1,)
    assert exposure_exact(torch.tensor(0.5), REFERENCES).shape == (1,)


@settings(max_examples=40, deadline=None)
@given(
    refs=st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=40),
    scores=st.lists(st.floats(-60, 60, allow_nan=False), min_size=2, max_size=20),
)
def test_exact_exposure_non_increasing_in_score(refs: list[float], scores: list[float]) -> None:
    ordered = np.sort(np.array(scores))
    values = exposure_exact(ordered, refs)
    assert np.all(np.diff(values) <= 0)
    assert np.all(values >= 0)
    assert np.all(values <= math.log2(len(refs) + 1) + 1e-12)


def test_empty_reference_set() -> None:
    with pytest.raises(ValueError, match=r"`reference_scores` must be non-empty, got 0 values"):
        exposure_exact([1.0], [])
    with pytest.raises(ValueError, match="`canary_scores` must be non-empty"):
        exposure_exact([], REFERENCES)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_scores(bad: float) -> None:
    with pytest.raises(ValueError, match=r"`canary_scores` must be finite, got .* at index 1"):
        exposure_exact([1.0, bad], REFERENCES)
    with pytest.raises(ValueError, match="`reference_scores` must be finite"):
        exposure_exact([1.0], [1.0, bad])
    with pytest.raises(ValueError, match="`canary_scores` must be finite"):
        exposure_extrapolated([bad], fit=SkewNormalFit(0.0, 0.0, 1.0))


def test_two_dimensional_input_rejected() -> None:
    with pytest.raises(ValueError, match=r"`reference_scores` must be 1-D, got shape \(2, 2\)"):
        exposure_exact([1.0], np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"`canary_scores` must be 1-D"):
        exposure_rank(torch.ones(2, 3), REFERENCES)


def test_non_numeric_input_rejected() -> None:
    with pytest.raises(TypeError, match="`canary_scores` must hold real numbers"):
        exposure_exact(np.array(["a"]), REFERENCES)
    with pytest.raises(TypeError, match="`reference_scores`"):
        exposure_exact([1.0], "abc")
    with pytest.raises(TypeError, match="`canary_scores` must hold real numbers"):
        exposure_exact(np.array([True]), REFERENCES)


# ---------------------------------------------------------------- accurate skew-normal log-CDF
def _mp_log_cdf(z: float, a: float) -> float:
    """log F(z; a) by mpmath quadrature of 2 phi(t) Phi(a t) over t = z - u, u in [0, inf)."""
    mp.mp.dps = 30
    zm, am = mp.mpf(z), mp.mpf(a)
    lam = max(abs(zm) * (1 + am * am), mp.mpf(1))
    points = sorted({mp.mpf(0), 1 / lam, 4 / lam, 16 / lam, 64 / lam, mp.mpf(2), mp.mpf(8)})
    value = mp.quad(lambda u: 2 * mp.npdf(zm - u) * mp.ncdf(am * (zm - u)), [*points, mp.inf])
    return float(mp.log(value))


@pytest.mark.parametrize(
    ("a", "z"),
    [(4.0, -10.0), (4.0, -20.0), (4.0, -40.0), (4.0, -1.5), (-4.0, -3.0), (-4.0, -45.0)]
    + [(-4.0, 1.0), (0.0, -2.0), (0.0, -40.0), (20.0, -0.3)],
)
def test_extrapolated_exposure_matches_mpmath(a: float, z: float) -> None:
    fit = SkewNormalFit(a=a, loc=3.0, scale=2.0)
    got = exposure_extrapolated([3.0 + 2.0 * z], fit=fit)[0]
    expected = -_mp_log_cdf(z, a) / math.log(2)
    assert np.isfinite(got)
    assert got == pytest.approx(expected, rel=1e-2, abs=1e-9)
    # in fact far better than the required 1%
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_far_tail_is_large_and_finite_where_scipy_gives_inf() -> None:
    # scipy's skewnorm.logcdf returns -inf about 10 scale units into the light tail of a=4
    z = np.array([-10.0, -20.0, -40.0])
    with np.errstate(all="ignore"):
        assert np.isneginf(stats.skewnorm.logcdf(-40.0, 4.0))
    values = _skewnorm_log_cdf(z, 4.0)
    assert np.all(np.isfinite(values))
    assert np.all(np.diff(values) < 0)
    # light tail: log F ~ -(1 + a^2) z^2 / 2 = -17 * 800 = -13600 nats at z = -40
    assert values[-1] == pytest.approx(-13600, rel=1e-3)


@pytest.mark.parametrize("a", [-6.0, -1.0, 0.0, 0.7, 4.0, 30.0])
def test_log_cdf_agrees_with_scipy_where_scipy_is_accurate(a: float) -> None:
    z = np.linspace(-3.0, 4.0, 57)
    expected = stats.skewnorm.logcdf(z, a)
    ok = expected > -20  # scipy loses relative accuracy further out
    np.testing.assert_allclose(_skewnorm_log_cdf(z, a)[ok], expected[ok], rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("a", [-4.0, 0.0, 4.0, 12.0])
def test_log_cdf_is_monotone_and_continuous_across_branches(a: float) -> None:
    z = np.linspace(-60.0, 6.0, 20001)
    values = _skewnorm_log_cdf(z, a)
    assert np.all(np.isfinite(values))
    assert np.all(np.diff(values) >= -1e-9 * np.abs(values[1:]) - 1e-15)
    # no jump where the closed form hands over to the quadrature: consecutive steps of the
    # smooth log-CDF differ by well under 10% (a jump would show as one outlying step)
    steps = np.diff(values)
    body = values[1:-1] < -1e-3
    ratio = steps[1:][body] / steps[:-1][body]
    assert np.all((ratio > 0.9) & (ratio < 1.1))


@settings(max_examples=30, deadline=None)
@given(scores=st.lists(st.floats(-200, 200, allow_nan=False), min_size=2, max_size=30))
def test_extrapolated_exposure_non_increasing_in_score(scores: list[float]) -> None:
    fit = SkewNormalFit(a=4.0, loc=60.0, scale=5.0)
    values = exposure_extrapolated(np.sort(np.array(scores)), fit=fit)
    assert np.all(np.isfinite(values))
    assert np.all(values >= 0)
    assert np.all(np.diff(values) <= 1e-9 * np.maximum(values[:-1], 1.0))


def test_fit_skewnorm_recovers_parameters_and_extrapolates() -> None:
    a, loc, scale = 4.0, 50.0, 5.0
    refs = stats.skewnorm.rvs(a, loc, scale, size=5000, random_state=np.random.default_rng(1))
    fit = fit_skewnorm(torch.tensor(refs))
    assert fit == SkewNormalFit(a=fit.a, loc=fit.loc, scale=fit.scale)
    assert fit.a == pytest.approx(a, rel=0.3)
    assert fit.scale == pytest.approx(scale, rel=0.1)
    # fitted from references or given as fit: the same values
    canaries = np.array([20.0, 45.0, 55.0, 70.0])
    np.testing.assert_allclose(
        exposure_extrapolated(canaries, refs), exposure_extrapolated(canaries, fit=fit)
    )
    # agrees with the rank-based exposure for a canary inside the references' range
    np.testing.assert_allclose(exposure_extrapolated([55.0], fit=fit), exposure_exact([55.0], refs), atol=0.1)


def test_extrapolation_capped_at_space_size_and_saturation_counted() -> None:
    fit = SkewNormalFit(a=4.0, loc=50.0, scale=5.0)
    canaries = np.array([0.0, 10.0, 48.0, 80.0])
    uncapped = exposure_extrapolated(canaries, fit=fit)
    cap = math.log2(10**6)  # 19.93 bits
    assert uncapped[0] > uncapped[1] > cap > uncapped[2] > uncapped[3] >= 0
    capped = exposure_extrapolated(canaries, fit=fit, space_size=10**6)
    np.testing.assert_array_equal(capped[:2], [cap, cap])
    np.testing.assert_array_equal(capped[2:], uncapped[2:])
    assert exposure_saturated(capped, 10**6) == 2
    assert exposure_saturated(uncapped, 10**6) == 2
    assert exposure_saturated([], 10**6) == 0


def test_extrapolated_exactly_one_of_references_and_fit() -> None:
    with pytest.raises(ValueError, match="exactly one of `reference_scores` and `fit`.*neither"):
        exposure_extrapolated([1.0])
    with pytest.raises(ValueError, match="exactly one of `reference_scores` and `fit`.*both"):
        exposure_extrapolated([1.0], REFERENCES, fit=SkewNormalFit(0.0, 0.0, 1.0))
    with pytest.raises(TypeError, match="`fit` must be a SkewNormalFit"):
        exposure_extrapolated([1.0], fit=(0.0, 0.0, 1.0))  # type: ignore[arg-type]


def test_fit_skewnorm_bad_input() -> None:
    with pytest.raises(ValueError, match="`reference_scores` must be non-empty"):
        fit_skewnorm([])
    with pytest.raises(ValueError, match="`reference_scores` must hold at least 3 values"):
        fit_skewnorm([1.0, 2.0])
    with pytest.raises(ValueError, match="`reference_scores` are all equal"):
        fit_skewnorm([2.0] * 10)
    with pytest.raises(ValueError, match="`scale` must be > 0"):
        SkewNormalFit(a=0.0, loc=0.0, scale=0.0)
    with pytest.raises(ValueError, match="`a` must be a finite number"):
        SkewNormalFit(a=float("nan"), loc=0.0, scale=1.0)


# ---------------------------------------------------------------- ranks in the space, reports
def test_rank_above_space_size_raises() -> None:
    # 5 candidates cannot rank a secret 5th in a space of 3: this once returned -0.74 bits
    with pytest.raises(ValueError, match=r"`rank` must be <= `space_size`.*got rank 5"):
        exposure_from_rank(5, 3)
    assert exposure_from_rank(3, 3) == 0.0


def test_rank_in_space_counts_ties_and_itself() -> None:
    space = np.array([3.0, 1.0, 2.0, 2.0, 5.0])
    # by hand: 1.0 -> only itself; 2.0 -> 1.0 and both 2.0s; 5.0 -> everything
    assert exposure_rank_in_space([1.0, 2.0, 5.0], space).tolist() == [1, 3, 5]
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 30, size=400).astype(np.float64)
    picks = scores[:25]
    brute = [int(np.sum(scores <= c)) for c in picks]
    assert exposure_rank_in_space(picks, scores).tolist() == brute
    # the same tie rule as the reference rank: rank in space == rank among the others
    others = np.delete(scores, 0)
    assert exposure_rank_in_space(scores[:1], scores)[0] == exposure_rank(scores[:1], others)[0]
    with pytest.raises(ValueError, match="must include the canaries' own secrets"):
        exposure_rank_in_space([0.5], space)


def test_degenerate_references_follow_the_tie_rule() -> None:
    refs = np.full(50, 4.0)
    got = exposure_from_references([4.0, 9.0, 1.0], refs, space_size=1024)
    np.testing.assert_array_equal(got, [0.0, 0.0, 10.0])


def test_references_report_equals_capped_extrapolation_and_respects_bounds() -> None:
    rng = np.random.default_rng(0)
    refs = rng.normal(50.0, 3.0, size=500)
    canaries = np.array([20.0, 45.0, 50.0])
    plain = exposure_extrapolated(canaries, refs, space_size=10**6)
    np.testing.assert_allclose(exposure_from_references(canaries, refs, space_size=10**6), plain)
    # a proven lower bound of 1024 on the first canary's rank caps it at log2(10**6 / 1024)
    bounded = exposure_from_references(
        canaries, refs, space_size=10**6, rank_lower_bound=[1024.0, np.nan, 1.0]
    )
    assert bounded[0] == pytest.approx(math.log2(10**6) - 10.0)
    np.testing.assert_allclose(bounded[1:], plain[1:])


def test_non_finite_scores_report_nan_never_a_safe_value() -> None:
    refs = np.linspace(1.0, 9.0, 50)
    got = exposure_from_references([np.nan, 2.0, np.inf], refs, space_size=1000)
    assert np.isnan(got[0])
    assert np.isnan(got[2])
    assert np.isfinite(got[1])
    diverged = exposure_from_references([2.0, 3.0], np.r_[refs, np.nan], space_size=1000)
    assert np.isnan(diverged).all()
    result = ExposureResult(
        exposure=np.array([np.nan, 3.0]),
        rank=np.array([np.nan, 4.0]),
        rank_exact=np.array([False, True]),
        log_perplexity=np.array([np.nan, 1.0]),
        space_size=1000,
        method="extrapolated",
    )
    assert math.isnan(result.rank_min)
    assert result.saturated == 0
