"""LiRA, RMIA, logit confidence and the attack report against hand-worked cases and loop references."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from memcallbacks.metrics import (
    attack_report,
    lira_scores,
    logit_confidence,
    membership_inference,
    rmia_scores,
)

# -- logit_confidence ------------------------------------------------------------------------------


def test_logit_confidence_hand_worked() -> None:
    # [1, 2, 3], label 2: 3 - log(e^1 + e^2) = 2 - log(1 + e)
    out = logit_confidence([[2.0, 0.0, -np.inf], [1.0, 2.0, 0.0], [1.0, 2.0, 3.0]], [0, 1, 2])
    assert out[0] == pytest.approx(2.0)  # a class with logit -inf has probability 0
    assert out[1] == pytest.approx(2.0 - math.log(math.e + 1.0))  # 2 - log(e^1 + e^0)
    assert out[2] == pytest.approx(2.0 - math.log(1.0 + math.e))


def test_logit_confidence_equals_log_odds_of_the_softmax() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 5)) * 3
    y = rng.integers(0, 5, size=50)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    py = p[np.arange(50), y]
    np.testing.assert_allclose(logit_confidence(z, y), np.log(py / (1 - py)), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(
        logit_confidence(p, y, from_probs=True), np.log(py / (1 - py)), rtol=1e-9, atol=1e-9
    )


def test_logit_confidence_is_stable_where_the_naive_formula_overflows() -> None:
    out = logit_confidence(torch.tensor([[60.0, 0.0, 0.0]]), torch.tensor([0]))
    assert out[0] == pytest.approx(60.0 - math.log(2.0))  # naive log(p / (1 - p)) gives inf in float64
    assert logit_confidence([[0.0, 60.0]], [0])[0] == pytest.approx(-60.0)


def test_logit_confidence_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="labels"):
        logit_confidence([[0.0, 1.0]], [2])
    with pytest.raises(ValueError, match="shape"):
        logit_confidence([[0.0, 1.0]], [0, 1])
    with pytest.raises(TypeError, match="integer"):
        logit_confidence([[0.0, 1.0]], [0.0])
    with pytest.raises(ValueError, match="at least 2 classes"):
        logit_confidence([[0.0]], [0])
    with pytest.raises(TypeError, match="from_probs"):
        logit_confidence([[0.0, 1.0]], [0], from_probs="yes")


# -- LiRA ------------------------------------------------------------------------------------------

REF = np.array([[2.0], [4.0], [0.0], [2.0]])
REF_IN = np.array([[True], [True], [False], [False]])


def test_lira_online_hand_worked() -> None:
    # in: 2, 4 -> mean 3, unbiased std sqrt(2); out: 0, 2 -> mean 1, std sqrt(2); target 3
    # log N(3; 3, 2) - log N(3; 1, 2) = 0 - (-(2^2) / (2 * 2)) = 1
    assert lira_scores([3.0], REF, ref_in=REF_IN)[0] == pytest.approx(1.0)
    # target 1 sits on the out mean: -1
    assert lira_scores([1.0], REF, ref_in=REF_IN)[0] == pytest.approx(-1.0)


def test_lira_offline_hand_worked() -> None:
    # log Pr[Z <= 3], Z ~ N(1, 2): log Phi(2 / sqrt 2) = log((1 + erf(1)) / 2)
    expected = math.log(0.5 * (1.0 + math.erf(1.0)))
    assert lira_scores([3.0], REF, ref_in=REF_IN, online=False)[0] == pytest.approx(expected)
    assert lira_scores([1.0], REF, ref_in=REF_IN, online=False)[0] == pytest.approx(math.log(0.5))


def test_lira_fixed_variance_pools_within_sample_deviations() -> None:
    # sample 0: out 0, 2 (squared deviations 2, dof 1); sample 1: out 10, 14, 12 (squares 8, dof 2)
    ref = np.array([[0.0, 10.0], [2.0, 14.0], [9.0, 12.0], [9.0, 9.0]])
    ref_in = np.array([[False, False], [False, False], [True, False], [True, True]])
    pooled = math.sqrt((2.0 + 8.0) / 3.0)
    out = lira_scores([1.0 + pooled, 12.0], ref, ref_in=ref_in, online=False, fixed_variance=True)
    assert out[0] == pytest.approx(math.log(stats.norm.cdf(1.0)))
    assert out[1] == pytest.approx(math.log(0.5))
    # per-sample: sample 1's own std is 2
    out = lira_scores([1.0, 14.0], ref, ref_in=ref_in, online=False)
    assert out[1] == pytest.approx(math.log(stats.norm.cdf(1.0)))
    # sample 0 has one in value (9) only: its in-std is the pooled in-std; sample 1 has one too
    # -> no sample has 2 in values: the pooled in-std is the spread of all in values (9, 9): floored
    online = lira_scores([9.0, 9.0], ref, ref_in=ref_in)
    assert np.isfinite(online).all()
    assert (online > 0).all()


def _lira_loop(target, ref, ref_in, online, fixed):  # an independent, per-sample reference
    n = target.size
    ins = [ref[ref_in[:, j], j] for j in range(n)]
    outs = [ref[~ref_in[:, j], j] for j in range(n)]

    def pooled(groups):
        num = sum(((g - g.mean()) ** 2).sum() for g in groups if g.size >= 2)
        dof = sum(g.size - 1 for g in groups if g.size >= 2)
        return math.sqrt(num / dof)

    p_in, p_out = pooled(ins), pooled(outs)
    result = []
    for j in range(n):
        s_out = p_out if fixed or outs[j].size < 2 else outs[j].std(ddof=1)
        if not online:
            result.append(stats.norm.logcdf(target[j], outs[j].mean(), s_out))
            continue
        s_in = p_in if fixed or ins[j].size < 2 else ins[j].std(ddof=1)
        result.append(
            stats.norm.logpdf(target[j], ins[j].mean(), s_in)
            - stats.norm.logpdf(target[j], outs[j].mean(), s_out)
        )
    return np.array(result)


@pytest.mark.parametrize("online", [True, False])
@pytest.mark.parametrize("fixed", [True, False])
def test_lira_matches_a_per_sample_loop(online: bool, fixed: bool) -> None:
    rng = np.random.default_rng(1)
    r, n = 8, 40
    ref_in = np.zeros((r, n), dtype=bool)
    for j in range(n):  # balanced: 4 in, 4 out, so every group has >= 2 values
        ref_in[rng.permutation(r)[:4], j] = True
    ref = rng.normal(size=(r, n)) + 2.0 * ref_in
    target = rng.normal(size=n) + 1.0
    np.testing.assert_allclose(
        lira_scores(target, ref, ref_in=ref_in, online=online, fixed_variance=fixed),
        _lira_loop(target, ref, ref_in, online, fixed),
        rtol=1e-9,
        atol=1e-9,
    )


def test_lira_nan_where_a_sample_lacks_in_or_out_references() -> None:
    ref = np.array([[1.0, 2.0, 3.0], [2.0, 3.0, 4.0]])
    ref_in = np.array([[True, False, True], [False, False, True]])
    online = lira_scores([1.0, 1.0, 1.0], ref, ref_in=ref_in)
    assert np.isfinite(online[0])
    assert np.isnan(online[1])
    assert np.isnan(online[2])
    offline = lira_scores([1.0, 1.0, 1.0], ref, ref_in=ref_in, online=False)
    assert np.isfinite(offline[:2]).all()
    assert np.isnan(offline[2])


def test_lira_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        lira_scores([1.0, 2.0], REF, ref_in=REF_IN)
    with pytest.raises(TypeError, match="ref_in"):
        lira_scores([1.0], REF, ref_in=REF_IN.astype(int))
    with pytest.raises(ValueError, match="finite"):
        lira_scores([float("nan")], REF, ref_in=REF_IN)
    with pytest.raises(TypeError, match="online"):
        lira_scores([1.0], REF, ref_in=REF_IN, online="false")


# -- RMIA ------------------------------------------------------------------------------------------


def test_rmia_online_hand_worked() -> None:
    # two references: Pr(x) = mean = [0.5, 0.5, 0.25, 0.8]; LR = [1.6, 1.0, 2.0, 0.5]
    target = [0.8, 0.5, 0.5, 0.4]
    refs = [[0.6, 0.4, 0.1, 0.8], [0.4, 0.6, 0.4, 0.8]]
    ref_in = [[True, False, False, True], [False, True, False, True]]
    # population = samples 1, 2, 3 (LR 1.0, 2.0, 0.5); gamma 1: count of LR(z) <= LR(x)
    out = rmia_scores(target, refs, ref_in=np.array(ref_in), population_idx=[1, 2, 3])
    np.testing.assert_allclose(out, [2 / 3, 2 / 3, 3 / 3, 1 / 3])
    # gamma 2: LR(z) <= LR(x) / 2 -> [0.8, 0.5, 1.0, 0.25]
    out = rmia_scores(target, refs, ref_in=np.array(ref_in), population_idx=[1, 2, 3], gamma=2.0)
    np.testing.assert_allclose(out, [1 / 3, 1 / 3, 2 / 3, 0.0])


def test_rmia_offline_uses_out_references_and_a() -> None:
    target = [0.55, 0.5]
    refs = [[0.4, 0.3], [0.9, 0.5]]
    ref_in = np.array([[False, True], [True, True]])
    # sample 0: one out reference (0.4); a = 0.5 -> Pr = (1.5 * 0.4 + 0.5) / 2 = 0.55 -> LR 1
    # sample 1: no out reference -> mean of all references (0.4) -> LR 1.25
    out = rmia_scores(target, refs, ref_in=ref_in, population_idx=[0, 1], offline=True, a=0.5)
    np.testing.assert_allclose(out, [0.5, 1.0])
    # a = 1: Pr = the out mean (0.4) -> LR 1.375 > 1.25
    out = rmia_scores(target, refs, ref_in=ref_in, population_idx=[0, 1], offline=True, a=1.0)
    np.testing.assert_allclose(out, [1.0, 0.5])


def test_rmia_matches_a_pairwise_loop() -> None:
    rng = np.random.default_rng(2)
    r, n = 3, 60
    refs = rng.uniform(0.05, 1.0, size=(r, n))
    ref_in = rng.random((r, n)) < 0.5
    target = rng.uniform(0.05, 1.0, size=n)
    pop = rng.choice(n, size=25, replace=False)
    marginal = []
    for j in range(n):  # online: half in, half out when the sample has both kinds of reference
        ins, outs = refs[ref_in[:, j], j], refs[~ref_in[:, j], j]
        marginal.append((ins.mean() + outs.mean()) / 2 if ins.size and outs.size else refs[:, j].mean())
    lr = target / np.array(marginal)
    expected = np.array([np.mean([lr[i] / lr[z] >= 1.3 for z in pop]) for i in range(n)])
    np.testing.assert_allclose(
        rmia_scores(target, refs, ref_in=ref_in, population_idx=pop, gamma=1.3), expected
    )


def test_rmia_nan_reference_is_left_out() -> None:
    target = [0.5, 0.5]
    refs = np.array([[0.25, np.nan], [0.5, np.nan]])
    out = rmia_scores(target, refs, ref_in=np.array([[False, False], [True, False]]), population_idx=[0, 1])
    # sample 0: (0.5 + 0.25) / 2 -> LR 4/3; sample 1 has no reference: NaN (and is no population sample)
    assert out[0] == 1.0
    assert np.isnan(out[1])


def test_rmia_rejects_bad_input() -> None:
    ok = {"ref_in": np.array([[False, False]]), "population_idx": [0, 1]}
    with pytest.raises(ValueError, match="probabilities"):
        rmia_scores([1.5, 0.5], [[0.5, 0.5]], **ok)
    with pytest.raises(ValueError, match="population_idx"):
        rmia_scores([0.5, 0.5], [[0.5, 0.5]], ref_in=ok["ref_in"], population_idx=[2])
    with pytest.raises(TypeError, match="population_idx"):
        rmia_scores([0.5, 0.5], [[0.5, 0.5]], ref_in=ok["ref_in"], population_idx=[])
    with pytest.raises(ValueError, match="`a`"):
        rmia_scores([0.5, 0.5], [[0.5, 0.5]], **ok, offline=True, a=1.5)
    with pytest.raises(ValueError, match="gamma"):
        rmia_scores([0.5, 0.5], [[0.5, 0.5]], **ok, gamma=0.0)


# -- attack_report ---------------------------------------------------------------------------------


def test_attack_report_hand_worked_and_same_as_the_loss_threshold_roc() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    member = np.array([True, False, True, True, False, False])
    report = attack_report(scores, member, fprs=(0.34, 0.5))
    # pairs (member > non-member): 0.9 beats 3, 0.7 beats 2, 0.6 beats 2 -> 7 / 9
    assert report.auc == pytest.approx(7 / 9)
    # FPR <= 1/3 allows one false positive (0.8): TPR 3/3 at threshold 0.6
    assert report.tpr_at_fpr == {0.34: 1.0, 0.5: 1.0}
    reference = membership_inference(-scores[member], -scores[~member], fprs=(0.34, 0.5))
    assert report.auc == reference.auc
    assert report.advantage == reference.advantage
    assert report.fpr[0] == 0.0
    assert report.tpr[-1] == 1.0
    assert attack_report(-scores, member, fprs=(0.34,)).auc == pytest.approx(2 / 9)  # below 0.5 as is


def test_attack_report_low_fpr_uses_at_most_rule_and_exact_counts() -> None:
    # 1000 non-members, 10 members; one non-member above every member: TPR@0.1% FPR = 1 (1 FP allowed)
    rng = np.random.default_rng(3)
    non = rng.uniform(0, 1, 1000)
    non[0] = 10.0
    mem = np.full(10, 5.0)
    report = attack_report(np.concatenate([mem, non]), np.arange(1010) < 10, fprs=(0.001,))
    assert report.tpr_at_fpr[0.001] == 1.0


def test_attack_report_excludes_nan_and_orders_infinities() -> None:
    scores = [np.inf, 1.0, np.nan, -np.inf, 0.5]
    member = np.array([True, True, False, False, False])
    with pytest.warns(UserWarning, match="1 of 5"):
        report = attack_report(scores, member, fprs=(0.5,))
    assert report.n_excluded == 1
    assert report.n_nonmembers == 2
    assert report.auc == 1.0


def test_attack_report_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match="is_member"):
        attack_report([0.1, 0.2], [1, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="members and non-members"):
            attack_report([0.1, np.nan], np.array([True, False]))
    with pytest.raises(ValueError, match="shape"):
        attack_report([0.1, 0.2], np.array([True]))


def test_rmia_break_ties_orders_equal_fractions_by_the_ratio_only() -> None:
    # LR = [3, 2, 1.5, 1]; population = samples 2, 3 -> fractions [1, 1, 1, 0.5]
    target = [0.75, 0.5, 0.375, 0.25]
    refs = [[0.25, 0.25, 0.25, 0.25]]
    kwargs = {"ref_in": np.array([[False] * 4]), "population_idx": [2, 3]}
    plain = rmia_scores(target, refs, **kwargs)
    np.testing.assert_allclose(plain, [1.0, 1.0, 1.0, 0.5])
    refined = rmia_scores(target, refs, **kwargs, break_ties=True)
    assert list(np.argsort(-refined)) == [0, 1, 2, 3]
    assert (refined - plain >= 0).all()
    assert (refined - plain < 0.5).all()
