"""counterfactual_memorisation and spearman against hand-computed values and an independent loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from memcallbacks.metrics import counterfactual_memorisation, spearman

# 4 runs x 3 samples
CORRECT = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1], [0, 1, 0]], dtype=float)
INCLUDED = np.array([[1, 0, 1], [0, 1, 1], [1, 0, 0], [0, 1, 0]], dtype=bool)


def test_estimator_equals_the_hand_computed_toy_values() -> None:
    r = counterfactual_memorisation(CORRECT, INCLUDED)
    # sample 0: in runs 0, 2 -> (1 + 1) / 2 = 1; out runs 1, 3 -> (0 + 0) / 2 = 0; mem 1
    # sample 1: in runs 1, 3 -> (1 + 1) / 2 = 1; out runs 0, 2 -> (1 + 0) / 2 = 0.5; mem 0.5
    # sample 2: in runs 0, 1 -> (0 + 1) / 2 = 0.5; out runs 2, 3 -> (1 + 0) / 2 = 0.5; mem 0
    assert r.mem.tolist() == [1.0, 0.5, 0.0]
    assert r.mean_in.tolist() == [1.0, 1.0, 0.5]
    assert r.mean_out.tolist() == [0.0, 0.5, 0.5]
    assert r.n_in.tolist() == [2, 2, 2]
    assert r.n_out.tolist() == [2, 2, 2]
    assert r.n_in.dtype == np.int64


def test_standard_error_by_hand() -> None:
    r = counterfactual_memorisation(CORRECT, INCLUDED)
    # sample 1: in values {1, 1}: s^2 = 0; out values {1, 0}: s^2 = 0.5 (ddof=1); se = sqrt(0/2 + 0.5/2) = 0.5
    # sample 2: in {0, 1} and out {1, 0}: s^2 = 0.5 each; se = sqrt(0.25 + 0.25)
    assert r.se[0] == 0.0
    assert r.se[1] == pytest.approx(0.5)
    assert r.se[2] == pytest.approx(math.sqrt(0.5))
    # unequal sides, real-valued performance: in {0.2, 0.4, 0.9}, out {0.1, 0.3}
    values = np.array([[0.2], [0.4], [0.9], [0.1], [0.3]])
    inc = np.array([[1], [1], [1], [0], [0]], dtype=bool)
    r = counterfactual_memorisation(values, inc)
    s_in = np.var([0.2, 0.4, 0.9], ddof=1)
    s_out = np.var([0.1, 0.3], ddof=1)
    assert r.mem[0] == pytest.approx(0.5 - 0.2)
    assert r.se[0] == pytest.approx(math.sqrt(s_in / 3 + s_out / 2))


def test_never_in_and_never_out_are_nan_and_counted_never_zero() -> None:
    correct = np.array([[1, 1, 1, 0], [1, 0, 1, 1], [0, 1, 0, 1]], dtype=bool)
    included = np.array([[1, 0, 1, 1], [1, 0, 0, 0], [1, 0, 1, 0]], dtype=bool)
    r = counterfactual_memorisation(correct, included)
    # sample 0 in every run, sample 1 in none: NaN, not 0
    assert np.isnan(r.mem[0])
    assert np.isnan(r.mem[1])
    assert np.isnan(r.se[0])
    assert np.isnan(r.se[1])
    assert np.isnan(r.mean_out[0])
    assert np.isnan(r.mean_in[1])
    assert r.mean_in[0] == pytest.approx(2 / 3)
    assert r.mean_out[1] == pytest.approx(2 / 3)
    assert (r.num_never_out, r.num_never_in, r.num_undefined) == (1, 1, 2)
    # sample 2: in runs 0, 2 (1, 0), out run 1 (1): mem defined, se undefined (one out-run)
    assert r.mem[2] == pytest.approx(0.5 - 1.0)
    assert np.isnan(r.se[2])
    # sample 3: in run 0 only (0), out runs 1, 2 (1, 1)
    assert r.mem[3] == -1.0
    assert np.isnan(r.se[3])


def test_matches_a_per_sample_loop_on_random_runs() -> None:
    g = np.random.default_rng(1)
    correct = g.random((9, 200))
    included = g.random((9, 200)) < 0.5
    r = counterfactual_memorisation(correct, included)
    for i in range(200):
        a, b = correct[included[:, i], i], correct[~included[:, i], i]
        if a.size == 0 or b.size == 0:
            assert np.isnan(r.mem[i])
            continue
        assert r.mem[i] == pytest.approx(a.mean() - b.mean(), abs=1e-12)
        if a.size > 1 and b.size > 1:
            se = math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
            assert r.se[i] == pytest.approx(se, abs=1e-12)


def test_accepts_tensors_and_integer_masks() -> None:
    r = counterfactual_memorisation(
        torch.tensor(CORRECT, dtype=torch.float16), torch.tensor(INCLUDED.astype(int))
    )
    assert r.mem.tolist() == [1.0, 0.5, 0.0]


@pytest.mark.parametrize(
    ("correct", "included", "error", "match"),
    [
        (CORRECT, INCLUDED[:, :2], ValueError, "shape of `correct`"),
        (CORRECT[0], INCLUDED[0], ValueError, "2-D"),
        (np.where(CORRECT == 1, np.nan, 0.0), INCLUDED, ValueError, "`correct` must be finite"),
        (CORRECT, INCLUDED.astype(int) * 2, ValueError, "`included` must be bool or 0/1, got 2"),
        (CORRECT.astype(str), INCLUDED, TypeError, "`correct` must hold real numbers"),
    ],
)
def test_bad_input_names_the_argument(correct: object, included: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        counterfactual_memorisation(correct, included)


def test_spearman_ignores_nan_pairs_and_agrees_with_scipy() -> None:
    g = np.random.default_rng(0)
    a, b = g.normal(size=50), g.normal(size=50)
    b[:25] += a[:25]
    a[3], b[7], a[11] = np.nan, np.nan, np.nan
    result = spearman(a, b)
    keep = ~(np.isnan(a) | np.isnan(b))
    ref = stats.spearmanr(a[keep], b[keep])
    assert result.n == 47
    assert result.rho == pytest.approx(ref.statistic)
    assert result.p_value == pytest.approx(ref.pvalue)
    # ties get average ranks: a monotone transform with ties
    assert spearman([1, 2, 2, 3], [10, 20, 20, 30]).rho == pytest.approx(1.0)


def test_spearman_is_nan_never_zero_without_a_ranking() -> None:
    assert math.isnan(spearman([1.0, 2.0], [2.0, 1.0]).rho)  # fewer than 3 pairs
    constant = spearman([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0])
    assert math.isnan(constant.rho)
    assert math.isnan(constant.p_value)
    assert constant.n == 4
    assert spearman([np.nan] * 4, [1.0, 2.0, 3.0, 4.0]).n == 0
    with pytest.raises(ValueError, match="same shape"):
        spearman([1.0, 2.0, 3.0], [1.0, 2.0])
