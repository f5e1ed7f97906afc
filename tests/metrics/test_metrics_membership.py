"""Tests for memcallbacks.metrics.membership (Yeom et al. 2018; Carlini et al. 2022)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from torchmetrics.functional.classification import binary_auroc, binary_roc

from memcallbacks.metrics import MembershipReport, loss_gap, membership_inference, roc_curve
from memcallbacks.metrics.membership import (
    LOSS_RATIO_EPS,
    calibrated_losses,
    check_fprs,
    format_fpr,
    loss_ratio,
    slice_aucs,
)

# small hand-worked inputs trip the (tested) resolution warning; keep the output quiet
pytestmark = pytest.mark.filterwarnings("ignore:membership_inference. only:UserWarning")


def _sklearn(members: np.ndarray, nonmembers: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    y = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    score = -np.r_[members, nonmembers]
    fpr, tpr, _ = skm.roc_curve(y, score, drop_intermediate=False)
    return skm.roc_auc_score(y, score), fpr, tpr


def _tpr_at(fpr: np.ndarray, tpr: np.ndarray, x: float) -> float:
    return float(tpr[fpr <= x].max())


# ---------------------------------------------------------------- hand-worked
def test_hand_worked_report() -> None:
    # members 0.1 0.2 0.3, non-members 0.25 0.4 0.5 (score = -loss, members positive)
    # pairs (member < non-member): 0.1 -> 3, 0.2 -> 3, 0.3 -> 2 -> AUC = 8/9
    # thresholds: <=0.1 (1/3, 0), <=0.2 (2/3, 0), <=0.25 (2/3, 1/3), <=0.3 (1, 1/3), ...
    # advantage = max(TPR - FPR) = 2/3, first reached at threshold 0.2
    report = membership_inference([0.1, 0.2, 0.3], [0.25, 0.4, 0.5], fprs=(0.001, 0.34))
    assert report.auc == pytest.approx(8 / 9)
    assert report.advantage == pytest.approx(2 / 3)
    assert report.balanced_accuracy == pytest.approx(5 / 6)
    assert report.threshold == 0.2
    # FPR <= 0.001 allows no false positive: TPR 2/3; FPR <= 0.34 allows one: TPR 1
    assert report.tpr_at_fpr == pytest.approx({0.001: 2 / 3, 0.34: 1.0})
    assert (report.n_members, report.n_nonmembers) == (3, 3)


def test_roc_curve_hand_worked_with_tie() -> None:
    # losses: members 0.1 0.2, non-members 0.2 0.5; the tie at 0.2 is one ROC point
    fpr, tpr, thresholds = roc_curve([0.1, 0.2], [0.2, 0.5])
    np.testing.assert_array_equal(fpr, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_array_equal(tpr, [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(thresholds, [-np.inf, 0.1, 0.2, 0.5])
    # AUC: pairs (0.1<0.2)=1, (0.1<0.5)=1, (0.2 vs 0.2)=1/2, (0.2<0.5)=1 -> 3.5/4
    assert membership_inference([0.1, 0.2], [0.2, 0.5], fprs=(0.5,)).auc == 0.875


def test_tpr_at_fpr_uses_less_or_equal() -> None:
    # 1,000 non-members: FPR 0.1% is exactly one false positive, allowed by `<=`
    members = np.array([0.0, 0.5, 2.0])
    nonmembers = np.r_[0.25, np.full(999, 1.0)]
    report = membership_inference(members, nonmembers, fprs=(0.001,))
    # thresholds 0.0 -> (TPR 1/3, FP 0); 0.25 -> (1/3, 1); 0.5 -> (2/3, 1); 1.0 -> (2/3, 1000)
    assert report.tpr_at_fpr[0.001] == pytest.approx(2 / 3)


def test_perfect_and_inverted_attacks() -> None:
    perfect = membership_inference([0.1, 0.2], [0.3, 0.4], fprs=(0.5,))
    assert (perfect.auc, perfect.advantage, perfect.balanced_accuracy) == (1.0, 1.0, 1.0)
    assert perfect.tpr_at_fpr[0.5] == 1.0
    # members have the higher losses: AUC below 0.5 reported as is, not flipped
    inverted = membership_inference([0.3, 0.4], [0.1, 0.2], fprs=(0.5,))
    assert inverted.auc == 0.0
    assert inverted.advantage == 0.0
    assert inverted.threshold == -np.inf


def test_members_equal_nonmembers() -> None:
    losses = np.array([0.3, 0.1, 0.7, 0.7, 0.2])
    report = membership_inference(losses, losses.copy(), fprs=(0.2,))
    # identical distributions: every ROC point on the diagonal
    assert report.auc == 0.5
    assert report.advantage == 0.0
    assert report.tpr_at_fpr[0.2] == 0.2
    fpr, tpr, _ = roc_curve(losses, losses)
    np.testing.assert_array_equal(fpr, tpr)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
def test_matches_sklearn_and_torchmetrics(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    n_m, n_n = rng.integers(1, 400, size=2)
    members = rng.gamma(2.0, 0.5, size=n_m)
    nonmembers = rng.gamma(2.0, 0.7, size=n_n)
    if ties:
        members, nonmembers = np.round(members, 1), np.round(nonmembers, 1)
    report = membership_inference(members, nonmembers, fprs=(0.01, 0.1, 0.5))
    auc, sk_fpr, sk_tpr = _sklearn(members, nonmembers)
    assert report.auc == pytest.approx(auc, abs=1e-12)
    assert report.advantage == pytest.approx(np.max(sk_tpr - sk_fpr), abs=1e-12)
    for x in (0.01, 0.1, 0.5):
        assert report.tpr_at_fpr[x] == pytest.approx(_tpr_at(sk_fpr, sk_tpr, x), abs=1e-12)
    # the same curve point for point (sklearn without dropping keeps one point per distinct score)
    fpr, tpr, thresholds = roc_curve(members, nonmembers)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-12)
    # torchmetrics (exact, unbinned): preds = -loss (a sigmoid is applied; monotone)
    preds = torch.tensor(-np.r_[members, nonmembers], dtype=torch.float64)
    target = torch.tensor(np.r_[np.ones(n_m), np.zeros(n_n)], dtype=torch.long)
    assert report.auc == pytest.approx(float(binary_auroc(preds, target, thresholds=None)), abs=1e-6)
    tm_fpr, tm_tpr, _ = binary_roc(preds, target, thresholds=None)
    assert report.tpr_at_fpr[0.1] == pytest.approx(_tpr_at(tm_fpr.numpy(), tm_tpr.numpy(), 0.1), abs=1e-6)
    # threshold semantics: predict member when loss <= threshold attains the advantage
    t = report.threshold
    assert np.mean(members <= t) - np.mean(nonmembers <= t) == pytest.approx(report.advantage)


@settings(max_examples=30, deadline=None)
@given(
    members=st.lists(st.integers(0, 20), min_size=1, max_size=30),
    nonmembers=st.lists(st.integers(0, 20), min_size=1, max_size=30),
)
def test_auc_swapped_is_one_minus_auc(members: list[int], nonmembers: list[int]) -> None:
    forward = membership_inference(members, nonmembers, fprs=(0.5,)).auc
    swapped = membership_inference(nonmembers, members, fprs=(0.5,)).auc
    assert forward + swapped == pytest.approx(1.0, abs=1e-12)
    auc, _, _ = _sklearn(np.array(members, float), np.array(nonmembers, float))
    assert forward == pytest.approx(auc, abs=1e-12)


def test_torch_and_numpy_inputs_agree() -> None:
    rng = np.random.default_rng(7)
    members, nonmembers = rng.random(200), rng.random(300) + 0.1
    expected = membership_inference(members, nonmembers, fprs=(0.01,))
    for dtype in (torch.float32, torch.float64):
        got = membership_inference(
            torch.tensor(members, dtype=dtype), torch.tensor(nonmembers, dtype=dtype), fprs=(0.01,)
        )
        assert got.auc == pytest.approx(expected.auc, abs=1e-6)
    assert loss_gap(torch.tensor(members), nonmembers) == pytest.approx(nonmembers.mean() - members.mean())


# ---------------------------------------------------------------- warnings and metrics dict
def test_warns_once_when_too_few_nonmembers() -> None:
    # 500 non-members: 1/0.001 = 1000 needed for TPR@0.1%, 100 for TPR@1% (enough)
    members, nonmembers = np.linspace(0, 1, 50), np.linspace(0.5, 1.5, 500)
    with pytest.warns(UserWarning, match=r"only 500 non-member\(s\).*0\.1% \(needs 1000\)") as record:
        membership_inference(members, nonmembers)
    assert len(record) == 1
    assert "needs 100)" not in str(record[0].message)  # 1% FPR has enough non-members
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        membership_inference(members, np.linspace(0.5, 1.5, 1000))  # exactly 1/x: no warning


def test_to_metrics_keys_and_values() -> None:
    rng = np.random.default_rng(3)
    report = membership_inference(rng.random(2000), rng.random(2000) + 0.05)
    metrics = report.to_metrics()
    assert list(metrics) == [
        "mem/mia/auc",
        "mem/mia/advantage",
        "mem/mia/tpr@0.1%fpr",
        "mem/mia/tpr@1%fpr",
        "mem/mia/tpr@10%fpr",
        "mem/mia/balanced_accuracy",
        "mem/mia/n_members",
        "mem/mia/n_nonmembers",
    ]
    assert all(type(v) is float for v in metrics.values())
    assert metrics["mem/mia/tpr@1%fpr"] == report.tpr_at_fpr[0.01]
    assert metrics["mem/mia/n_members"] == 2000.0
    assert "probe/auc" in report.to_metrics(prefix="probe/")
    odd = membership_inference([0.1, 0.2], [0.3, 0.4], fprs=(0.25, 0.0005))
    assert {"x/tpr@25%fpr", "x/tpr@0.05%fpr"} <= set(odd.to_metrics("x"))


def test_report_is_frozen() -> None:
    report = membership_inference([0.1], [0.2], fprs=(0.5,))
    assert isinstance(report, MembershipReport)
    with pytest.raises(AttributeError):
        report.auc = 0.0  # type: ignore[misc]


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_losses_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="`member_losses` must be finite"):
        membership_inference([0.1, bad], [0.2])
    with pytest.raises(ValueError, match="`nonmember_losses` must be finite"):
        roc_curve([0.1], torch.tensor([0.2, bad]))
    with pytest.raises(ValueError, match="`nonmember_losses` must be finite"):
        loss_gap([0.1], [bad])


def test_empty_and_shape_errors() -> None:
    with pytest.raises(ValueError, match="`member_losses` must be non-empty, got 0 values"):
        membership_inference([], [0.2])
    with pytest.raises(ValueError, match="`nonmember_losses` must be non-empty"):
        roc_curve([0.1], np.array([]))
    with pytest.raises(ValueError, match=r"`member_losses` must be 1-D, got shape \(2, 1\)"):
        membership_inference(np.ones((2, 1)), [0.2])
    with pytest.raises(TypeError, match="`nonmember_losses` must hold real numbers"):
        membership_inference([0.1], np.array([1 + 2j]))


@pytest.mark.parametrize("fprs", [(0.0,), (1.0,), (-0.1,), (0.01, 2.0)])
def test_fprs_outside_open_unit_interval(fprs: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match=r"`fprs` must hold false-positive rates in \(0, 1\)"):
        membership_inference([0.1], [0.2], fprs=fprs)


def test_fprs_type() -> None:
    with pytest.raises(TypeError, match="`fprs`"):
        membership_inference([0.1], [0.2], fprs=("0.1",))  # type: ignore[arg-type]


# -- pure pieces the monitor logs: loss ratio, calibrated scores, slice AUCs -------------------


def test_loss_ratio_hand_computed_and_clamped() -> None:
    # (2 + 4) / 2 = 3 over (0.5 + 1.5) / 2 = 1
    assert loss_ratio([0.5, 1.5], [2.0, 4.0]) == 3.0
    assert loss_ratio(torch.tensor([1.0, 1.0]), np.array([1.0])) == 1.0  # no gap
    assert loss_ratio([0.0, 0.0], [2.0]) == 2.0 / LOSS_RATIO_EPS  # clamped, finite
    assert loss_ratio([0.0], [2.0], eps=0.5) == 4.0
    with pytest.raises(ValueError, match="`eps`"):
        loss_ratio([1.0], [1.0], eps=0.0)
    with pytest.raises(ValueError, match="`member_losses` must be finite"):
        loss_ratio([np.nan], [1.0])


def test_calibrated_losses_subtract_the_reference_and_mark_nonfinite() -> None:
    out = calibrated_losses([0.5, 0.2, np.nan, np.inf], [1.0, 0.1, 0.3, 0.3])
    np.testing.assert_array_equal(out[:2], [0.5 - 1.0, 0.2 - 0.1])
    assert np.isnan(out[2:]).all()
    assert calibrated_losses(np.zeros(0), np.zeros(0)).shape == (0,)
    with pytest.raises(ValueError, match="one reference loss per sample"):
        calibrated_losses([1.0, 2.0], [1.0])


def test_calibrated_attack_equals_sklearn_on_the_differences() -> None:
    rng = np.random.default_rng(5)
    ref_m, ref_n = rng.gamma(2.0, size=80), rng.gamma(2.0, size=70)
    now_m, now_n = ref_m - rng.uniform(0.0, 1.0, 80), ref_n - rng.uniform(0.0, 0.6, 70)
    dm, dn = calibrated_losses(now_m, ref_m), calibrated_losses(now_n, ref_n)
    auc, _, _ = _sklearn(now_m - ref_m, now_n - ref_n)
    assert membership_inference(dm, dn, fprs=()).auc == pytest.approx(auc, abs=1e-12)


def test_slice_aucs_match_sklearn_per_slice_and_skip_small_or_nonfinite() -> None:
    rng = np.random.default_rng(0)
    m, n = rng.normal(0.0, 1.0, 60), rng.normal(0.5, 1.0, 50)
    ms = np.array(["a", "b", "c"])[rng.integers(0, 3, 60)]
    ns = np.array(["a", "b", "d"])[rng.integers(0, 3, 50)]
    m[0], n[0] = np.nan, np.inf  # left out, not fatal
    got = slice_aucs(m, n, member_slices=ms, nonmember_slices=ns, min_size=5)
    assert sorted(got) == ["a", "b"]  # c and d are in one set only
    for key in ("a", "b"):
        sm, sn = m[(ms == key) & np.isfinite(m)], n[(ns == key) & np.isfinite(n)]
        assert got[key] == pytest.approx(_sklearn(sm, sn)[0], abs=1e-12)
    big = int(min(((ms == "a") & np.isfinite(m)).sum(), ((ns == "a") & np.isfinite(n)).sum()))
    assert "a" not in slice_aucs(m, n, member_slices=ms, nonmember_slices=ns, min_size=big + 1)
    with pytest.raises(ValueError, match="one name per loss"):
        slice_aucs(m, n, member_slices=ms[:3], nonmember_slices=ns)
    with pytest.raises(ValueError, match="`min_size`"):
        slice_aucs(m, n, member_slices=ms, nonmember_slices=ns, min_size=0)


def test_check_fprs_and_format_fpr() -> None:
    assert check_fprs(0.01) == (0.01,)
    assert check_fprs(np.array([0.001, 0.1])) == (0.001, 0.1)
    for bad in ((0.0,), (1.0,), (float("nan"),)):
        with pytest.raises(ValueError, match=r"`fprs` must hold false-positive rates in \(0, 1\)"):
            check_fprs(bad)
    with pytest.raises(TypeError, match="`fprs`"):
        check_fprs((True,))
    assert [format_fpr(x) for x in (0.001, 0.01, 0.1, 0.25)] == ["0.1%", "1%", "10%", "25%"]


# ---------------------------------------------------------------- trajectory attack (Liu et al., CCS 2022)
def _sklearn_trajectory_scores(
    mt: np.ndarray, nt: np.ndarray, folds: int, seed: int, l2: float
) -> np.ndarray:
    """Independent reference: StandardScaler + sklearn LogisticRegression(C=1/l2) on the same folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from memcallbacks.metrics.trajectory_mia import _fold_ids

    x, y = np.r_[mt, nt], np.r_[np.ones(len(mt)), np.zeros(len(nt))]
    fold = _fold_ids(len(mt), len(nt), folds, seed)
    scores = np.empty(len(y))
    for k in range(folds):
        train, test = fold != k, fold == k
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0 / l2, tol=1e-10, max_iter=10_000))
        scores[test] = model.fit(x[train], y[train]).decision_function(x[test])
    return scores


@pytest.mark.parametrize(("folds", "seed", "l2"), [(2, 0, 1.0), (3, 5, 0.1), (5, 1, 10.0)])
def test_trajectory_attack_matches_sklearn_logistic_regression(folds: int, seed: int, l2: float) -> None:
    from memcallbacks.metrics import trajectory_attack, trajectory_attack_scores

    rng = np.random.default_rng(seed)
    epochs = 6
    mt = rng.gamma(2.0, size=(150, epochs)) * np.linspace(1.0, 0.6, epochs)  # members' losses fall
    nt = rng.gamma(2.0, size=(120, epochs))
    sm, sn = trajectory_attack_scores(mt, nt, folds=folds, seed=seed, l2=l2)
    ref = _sklearn_trajectory_scores(mt, nt, folds, seed, l2)
    np.testing.assert_allclose(np.r_[sm, sn], ref, atol=1e-5)
    y = np.r_[np.ones(150), np.zeros(120)]
    report = trajectory_attack(mt, nt, folds=folds, seed=seed, l2=l2, fprs=(0.01, 0.1))
    assert report.auc == pytest.approx(skm.roc_auc_score(y, ref), abs=1e-3)
    assert report.auc > 0.6
    assert (report.n_members, report.n_nonmembers) == (150, 120)
    fpr, tpr, _ = skm.roc_curve(y, ref, drop_intermediate=False)
    assert report.tpr_at_fpr[0.1] == pytest.approx(_tpr_at(fpr, tpr, 0.1), abs=1 / 150 + 1e-9)
    # deterministic
    assert trajectory_attack(mt, nt, folds=folds, seed=seed, l2=l2, fprs=(0.01, 0.1)) == report


def test_trajectory_attack_separable_and_inseparable_hand_built() -> None:
    from memcallbacks.metrics import trajectory_attack

    rng = np.random.default_rng(1)
    epochs = np.arange(5)
    # the final losses have the SAME distribution; only the path differs: members fell from 3,
    # non-members hovered at their final level. The loss-threshold attack on the last epoch sees
    # nothing; the trajectory separates them perfectly.
    final_m, final_n = rng.uniform(0.2, 1.0, 100), rng.uniform(0.2, 1.0, 100)
    mt = final_m[:, None] + 3.0 * (4 - epochs) / 4
    nt = final_n[:, None] + rng.normal(0.0, 0.01, (100, 5))
    assert abs(membership_inference(mt[:, -1], nt[:, -1], fprs=()).auc - 0.5) < 0.1
    report = trajectory_attack(mt, nt, fprs=(0.01,))
    assert report.auc == 1.0
    assert report.tpr_at_fpr == {0.01: 1.0}
    assert report.advantage == 1.0
    # iid trajectories: chance, not a fitted-noise 1.0
    same = trajectory_attack(rng.gamma(2.0, size=(300, 4)), rng.gamma(2.0, size=(300, 4)), fprs=(0.01,))
    assert abs(same.auc - 0.5) < 0.07
    # identical rows in both classes (a constant feature, zero std): every score ties, AUC exactly 0.5
    tied = trajectory_attack(np.ones((10, 3)), np.ones((8, 3)), fprs=(0.5,))
    assert tied.auc == 0.5
    assert tied.tpr_at_fpr == {0.5: 0.0}


def test_trajectory_attack_drops_and_counts_nonfinite_rows() -> None:
    from memcallbacks.metrics import trajectory_attack, trajectory_attack_scores

    rng = np.random.default_rng(2)
    mt, nt = rng.gamma(1.0, size=(40, 3)), rng.gamma(2.0, size=(30, 3))
    mt[3, 0], mt[7, 2], nt[0, 1] = np.nan, np.inf, np.nan
    sm, sn = trajectory_attack_scores(mt, nt)
    assert np.isnan(sm[[3, 7]]).all()
    assert np.isnan(sn[0])
    assert np.isfinite(np.delete(sm, [3, 7])).all()
    with pytest.warns(UserWarning, match="dropped 2 member and 1 non-member"):
        report = trajectory_attack(mt, nt, fprs=(0.1,))
    assert (report.n_members, report.n_nonmembers) == (38, 29)
    # the same as the attack on the finite rows alone (dropped, not imputed)
    clean = trajectory_attack(np.delete(mt, [3, 7], axis=0), nt[1:], fprs=(0.1,))
    assert report == clean


@pytest.mark.parametrize(
    ("mt", "nt", "counts"),
    [
        (np.ones((5, 1)), np.zeros((5, 1)), (5, 5)),  # one epoch: no trajectory
        (np.zeros((5, 0)), np.zeros((4, 0)), (5, 4)),  # no epoch
        (np.ones((1, 3)), np.zeros((5, 3)), (1, 5)),  # fewer members than folds
        (np.ones((4, 3)), np.full((4, 3), np.nan), (4, 0)),  # no finite non-member row
        (np.zeros((0, 3)), np.zeros((4, 3)), (0, 4)),  # no member
    ],
)
def test_trajectory_attack_cannot_run_gives_nan_not_a_crash(
    mt: np.ndarray, nt: np.ndarray, counts: tuple
) -> None:
    from memcallbacks.metrics.trajectory_mia import trajectory_attack, trajectory_attack_scores

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = trajectory_attack(mt, nt, fprs=(0.1,))
    assert np.isnan(report.auc)
    assert np.isnan(report.advantage)
    assert np.isnan(report.tpr_at_fpr[0.1])
    assert (report.n_members, report.n_nonmembers) == counts
    sm, sn = trajectory_attack_scores(mt, nt)
    assert np.isnan(sm).all()
    assert np.isnan(sn).all()


def test_trajectory_attack_feature_cap_and_bad_input() -> None:
    from memcallbacks.metrics.trajectory_mia import feature_epochs, trajectory_attack_scores

    assert feature_epochs(100, 4).tolist() == [0, 33, 66, 99]
    assert feature_epochs(3, 32).tolist() == [0, 1, 2]
    assert feature_epochs(7, None).size == 7
    rng = np.random.default_rng(3)
    mt, nt = rng.gamma(1.0, size=(20, 40)), rng.gamma(1.5, size=(20, 40))
    cols = feature_epochs(40, 8)
    capped = trajectory_attack_scores(mt, nt, max_features=8)
    np.testing.assert_array_equal(np.r_[capped], np.r_[trajectory_attack_scores(mt[:, cols], nt[:, cols])])
    with pytest.raises(ValueError, match="3 epochs .* has 2"):
        trajectory_attack_scores(np.ones((4, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="`member_traj` must be 2-D"):
        trajectory_attack_scores(np.ones(4), np.ones((4, 2)))
    with pytest.raises(ValueError, match="`folds`"):
        trajectory_attack_scores(mt, nt, folds=1)
    with pytest.raises(TypeError, match="`folds`"):
        trajectory_attack_scores(mt, nt, folds=True)
    with pytest.raises(ValueError, match="`l2`"):
        trajectory_attack_scores(mt, nt, l2=0.0)
    with pytest.raises(ValueError, match="`max_features`"):
        trajectory_attack_scores(mt, nt, max_features=1)
    with pytest.raises(TypeError, match="`member_traj` must hold real numbers"):
        trajectory_attack_scores(np.array([["a", "b"]]), nt)
