"""Loss-threshold membership inference: exact ROC, AUC, advantage and low-FPR TPR.

The attack of Yeom, Giacomelli, Fredrikson and Jha, "Privacy Risk in Machine Learning:
Analyzing the Connection to Overfitting", CSF 2018: predict "member" when a sample's loss is
at most a threshold. Members are the positive class and the attack score is ``-loss``.
Following Carlini, Chien, Nasr, Song, Terzis and Tramer, "Membership Inference Attacks
From First Principles", IEEE S&P 2022, the report includes the true-positive rate at low
false-positive rates (0.1%, 1%, 10%), which says far more about what an attacker can
confidently extract than AUC or accuracy.

The ROC curve is computed exactly from one sort of the losses (never from a grid of
thresholds), with tied losses forming a single ROC point; AUC is the trapezoidal area,
which counts a tied member/non-member pair as one half (the Mann-Whitney statistic), as
scikit-learn and torchmetrics do. AUC below 0.5 is reported as is. TPR at FPR ``x`` is the
highest TPR among ROC points whose FPR is ``<= x``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from memcallbacks.utilities.validation import check_float_array, check_int, check_real

__all__ = [
    "LOSS_RATIO_EPS",
    "MembershipReport",
    "calibrated_losses",
    "check_fprs",
    "format_fpr",
    "loss_gap",
    "loss_ratio",
    "membership_inference",
    "roc_curve",
    "slice_aucs",
]

#: the denominator of :func:`loss_ratio` is at least this (guards a division by ~0)
LOSS_RATIO_EPS = 1e-6


def format_fpr(fpr: float) -> str:
    """A false-positive rate as the percentage used in metric keys: 0.001 -> '0.1%', 0.01 -> '1%'.

    Example:
        >>> [format_fpr(x) for x in (0.001, 0.01, 0.1)]
        ['0.1%', '1%', '10%']
    """
    return np.format_float_positional(round(fpr * 100.0, 10), trim="-") + "%"


def roc_summary_metrics(
    prefix: str, *, auc: float, advantage: float, tpr_at_fpr: dict[float, float]
) -> dict[str, float]:
    """``{prefix}/auc``, ``{prefix}/advantage`` and ``{prefix}/tpr@<x>%fpr`` as Python floats.

    The keys every membership-attack report shares; ``prefix`` has no trailing slash.
    """
    metrics = {f"{prefix}/auc": float(auc), f"{prefix}/advantage": float(advantage)}
    for fpr, tpr in tpr_at_fpr.items():
        metrics[f"{prefix}/tpr@{format_fpr(fpr)}fpr"] = float(tpr)
    return metrics


@dataclass(frozen=True)
class MembershipReport:
    """Result of a loss-threshold membership-inference attack.

    Attributes:
        auc: area under the ROC curve (members positive, score ``-loss``); 0.5 is chance,
            below 0.5 is reported as is.
        advantage: attacker advantage ``max over thresholds of TPR - FPR`` (Yeom et al.),
            in ``[0, 1]``.
        tpr_at_fpr: ``{fpr: tpr}``, the highest TPR at an FPR ``<= fpr``.
        balanced_accuracy: ``(TPR + 1 - FPR) / 2`` at the best threshold,
            i.e. ``(1 + advantage) / 2``.
        threshold: the loss threshold attaining the advantage: predict member when
            ``loss <= threshold`` (``-inf`` when no threshold beats predicting nobody).
        n_members: number of member losses.
        n_nonmembers: number of non-member losses.

    Example:
        >>> report = membership_inference([0.1, 0.2, 0.9], [0.5, 1.0, 2.0], fprs=(0.5,))
        >>> round(report.auc, 4), report.tpr_at_fpr, report.to_metrics()["mem/mia/auc"] == report.auc
        (0.8889, {0.5: 1.0}, True)
    """

    auc: float
    advantage: float
    tpr_at_fpr: dict[float, float] = field(hash=False)
    balanced_accuracy: float
    threshold: float
    n_members: int
    n_nonmembers: int

    def to_metrics(self, prefix: str = "mem/mia") -> dict[str, float]:
        """Flat ``{key: float}`` dict for ``log_dict``.

        Keys: ``{prefix}/auc``, ``{prefix}/advantage``, ``{prefix}/tpr@<x>%fpr`` for each
        requested FPR (``0.001 -> tpr@0.1%fpr``), ``{prefix}/balanced_accuracy``,
        ``{prefix}/n_members``, ``{prefix}/n_nonmembers``.

        Args:
            prefix: key prefix, without a trailing slash.

        Returns:
            dict of Python floats.

        Example:
            >>> report = membership_inference([0.1, 0.2, 0.3], [0.25, 0.4, 0.5], fprs=(0.5,))
            >>> report.to_metrics()  # doctest: +NORMALIZE_WHITESPACE
            {'mem/mia/auc': 0.8888888888888888, 'mem/mia/advantage': 0.6666666666666666,
             'mem/mia/tpr@50%fpr': 1.0, 'mem/mia/balanced_accuracy': 0.8333333333333334,
             'mem/mia/n_members': 3.0, 'mem/mia/n_nonmembers': 3.0}
        """
        prefix = prefix.rstrip("/")
        metrics = roc_summary_metrics(
            prefix, auc=self.auc, advantage=self.advantage, tpr_at_fpr=self.tpr_at_fpr
        )
        metrics[f"{prefix}/balanced_accuracy"] = float(self.balanced_accuracy)
        metrics[f"{prefix}/n_members"] = float(self.n_members)
        metrics[f"{prefix}/n_nonmembers"] = float(self.n_nonmembers)
        return metrics


def _check_losses(member_losses: Any, nonmember_losses: Any) -> tuple[np.ndarray, np.ndarray]:
    members = check_float_array(
        member_losses, "member_losses", hint="; pass one loss per member (training) sample"
    )
    nonmembers = check_float_array(
        nonmember_losses, "nonmember_losses", hint="; pass one loss per held-out sample"
    )
    return members, nonmembers


def _roc_counts(
    members: NDArray[np.float64], nonmembers: NDArray[np.float64]
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """Cumulative (true positives, false positives) at each distinct loss, ascending.

    Each array has one entry per distinct loss value ``t``: members / non-members with
    loss ``<= t``. Each group is value-sorted on its own (fast SIMD sorts), then the two
    sorted runs are merged by a stable argsort, which detects the runs and merges them in
    linear time; no O(n log n) argsort of the union and no binary searches.
    """
    runs = np.concatenate([np.sort(members), np.sort(nonmembers)])
    order = np.argsort(runs, kind="stable")
    union = runs[order]
    last_of_value = np.empty(union.size, dtype=bool)
    np.not_equal(union[1:], union[:-1], out=last_of_value[:-1])
    last_of_value[-1] = True
    ends = np.flatnonzero(last_of_value)
    true_positives = np.cumsum(order < members.size, dtype=np.int64)[ends]
    false_positives = ends + 1 - true_positives
    return true_positives, false_positives, union[ends]


def roc_curve(
    member_losses: Any, nonmember_losses: Any
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Exact ROC curve of the loss-threshold attack (members positive, score ``-loss``).

    One point per distinct loss value ``t`` (predict member when ``loss <= t``), preceded by
    the point ``(0, 0)`` at threshold ``-inf``. Unlike ``sklearn.metrics.roc_curve`` no
    collinear points are dropped and thresholds are losses, not scores.

    Args:
        member_losses: per-sample losses of members (training samples), shape ``[M]``.
        nonmember_losses: per-sample losses of non-members (held out), shape ``[N]``.

    Returns:
        ``(fpr, tpr, thresholds)``, float64 arrays of equal length, fpr and tpr
        non-decreasing from 0 to 1, thresholds increasing from ``-inf``.

    Raises:
        ValueError: if an input is empty, not 1-D or holds NaN/inf.
        TypeError: if an input is not numeric.

    Example:
        >>> fpr, tpr, thresholds = roc_curve([0.1, 0.2], [0.2, 0.5])
        >>> fpr, tpr, thresholds
        (array([0. , 0. , 0.5, 1. ]), array([0. , 0.5, 1. , 1. ]), array([-inf,  0.1,  0.2,  0.5]))
    """
    members, nonmembers = _check_losses(member_losses, nonmember_losses)
    true_positives, false_positives, thresholds = _roc_counts(members, nonmembers)
    fpr = np.concatenate([[0.0], false_positives / nonmembers.size])
    tpr = np.concatenate([[0.0], true_positives / members.size])
    return fpr, tpr, np.concatenate([[-np.inf], thresholds])


def membership_inference(
    member_losses: Any,
    nonmember_losses: Any,
    *,
    fprs: Iterable[float] = (0.001, 0.01, 0.1),
) -> MembershipReport:
    """Loss-threshold membership inference (Yeom et al. 2018) with low-FPR TPR (Carlini et al. 2022).

    Members are the positive class, score ``-loss``; the ROC is exact (see
    :func:`roc_curve`). Warns once per call when there are fewer than ``1/x`` non-members
    for a requested FPR ``x``: TPR at ``x`` then rests on less than one false positive
    (with 1,000 non-members, TPR at 0.1% FPR rests on a single sample).

    Args:
        member_losses: per-sample losses of members, shape ``[M]``, finite (filter NaN first).
        nonmember_losses: per-sample losses of non-members, shape ``[N]``, finite.
        fprs: false-positive rates in ``(0, 1)`` at which to report the TPR.

    Returns:
        A :class:`MembershipReport`.

    Raises:
        ValueError: if an input is empty, not 1-D or holds NaN/inf, or an FPR is outside
            ``(0, 1)``.
        TypeError: if an input is not numeric.

    Example:
        >>> report = membership_inference([0.1, 0.2, 0.3], [0.25, 0.4, 0.5], fprs=(0.5,))
        >>> round(report.auc, 4), round(report.advantage, 4), report.tpr_at_fpr, report.threshold
        (0.8889, 0.6667, {0.5: 1.0}, 0.2)
    """
    requested = check_fprs(fprs)
    members, nonmembers = _check_losses(member_losses, nonmember_losses)
    n_members, n_nonmembers = members.size, nonmembers.size
    true_positives, false_positives, thresholds = _roc_counts(members, nonmembers)

    tpr = np.concatenate([[0.0], true_positives / n_members])
    # AUC and TPR - FPR from integer counts (exact up to the final division), so that equal
    # gains at two thresholds compare equal and the first (lowest) threshold wins
    tp = np.concatenate([[0], true_positives])
    fp = np.concatenate([[0], false_positives])
    pairs = n_members * n_nonmembers
    if 2 * pairs < 2**62:
        auc = float(np.sum(np.diff(fp) * (tp[1:] + tp[:-1]))) / (2 * pairs)
        gain = tp * n_nonmembers - fp * n_members
    else:  # beyond int64: rates in float64
        fpr = fp / n_nonmembers
        auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)
        gain = tpr - fpr
    best = int(np.argmax(gain))
    if 2 * pairs < 2**62:
        advantage = int(gain[best]) / pairs
        balanced_accuracy = (pairs + int(gain[best])) / (2 * pairs)
    else:
        advantage = float(gain[best])
        balanced_accuracy = (1.0 + advantage) / 2.0
    threshold = float(-np.inf) if best == 0 else float(thresholds[best - 1])

    tpr_at_fpr: dict[float, float] = {}
    too_few = []
    for x in requested:
        # compare counts, not rounded rates: FPR <= x  <=>  FP <= floor(x * N)
        allowed = math.floor(x * n_nonmembers * (1.0 + 1e-12))
        # fp_counts is non-decreasing and tpr too, so the best point is the last one allowed
        last = int(np.searchsorted(fp, allowed, side="right")) - 1
        tpr_at_fpr[x] = float(tpr[last])
        if n_nonmembers * x < 1.0:
            too_few.append(x)
    if too_few:
        listed = ", ".join(f"{format_fpr(x)} (needs {math.ceil(1 / x - 1e-9)})" for x in too_few)
        warnings.warn(
            f"membership_inference: only {n_nonmembers} non-member(s), fewer than 1/FPR for FPR {listed}; "
            "TPR at these FPRs rests on less than one false positive and means little. "
            "Use a larger held-out probe set.",
            UserWarning,
            stacklevel=2,
        )
    return MembershipReport(
        auc=auc,
        advantage=advantage,
        tpr_at_fpr=tpr_at_fpr,
        balanced_accuracy=balanced_accuracy,
        threshold=threshold,
        n_members=int(n_members),
        n_nonmembers=int(n_nonmembers),
    )


def check_fprs(fprs: Any) -> tuple[float, ...]:
    """Validate the false-positive rates at which TPR is reported: numbers in ``(0, 1)``.

    Args:
        fprs: one rate or an iterable of rates (Python or numpy numbers, not bools).

    Returns:
        The rates as a tuple of floats, in the order given.

    Raises:
        TypeError: ``fprs`` is not iterable or holds a non-number.
        ValueError: a rate outside the open interval ``(0, 1)`` (or NaN).

    Example:
        >>> check_fprs((0.001, 0.01))
        (0.001, 0.01)
    """
    if isinstance(fprs, (int, float, np.integer, np.floating)) and not isinstance(fprs, (bool, np.bool_)):
        fprs = (fprs,)
    try:
        values = tuple(fprs)
    except TypeError as e:
        raise TypeError(f"`fprs` must be a sequence of rates in (0, 1), got {fprs!r}") from e
    result = []
    for x in values:
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating)):
            raise TypeError(f"`fprs` must hold numbers in (0, 1), got {x!r} in {values!r}")
        if not 0.0 < float(x) < 1.0:
            raise ValueError(
                f"`fprs` must hold false-positive rates in (0, 1), got {x!r} in {values!r}; "
                "e.g. fprs=(0.001, 0.01, 0.1)"
            )
        result.append(float(x))
    return tuple(result)


_check_fprs = check_fprs  # former private name


def loss_ratio(member_losses: Any, nonmember_losses: Any, *, eps: float = LOSS_RATIO_EPS) -> float:
    """Ratio of the mean non-member loss to the mean member loss (1 means no generalisation gap).

    The multiplicative form of the gap that Yeom et al. (CSF 2018) tie to membership advantage:
    ``mean(nonmember_losses) / max(mean(member_losses), eps)``. Defined for non-negative losses
    (cross-entropy); the clamp turns a member loss driven to 0 into a large finite number rather
    than a division by zero. Use :func:`loss_gap` for losses that can be negative.

    Args:
        member_losses: per-sample losses of members, shape ``[M]``, finite.
        nonmember_losses: per-sample losses of non-members, shape ``[N]``, finite.
        eps: the smallest denominator, ``> 0``.

    Returns:
        The ratio as a float.

    Raises:
        ValueError: an input empty, not 1-D or non-finite, or ``eps <= 0``.

    Example:
        >>> loss_ratio([0.5, 1.5], [2.0, 3.0])
        2.5
        >>> loss_ratio([0.0, 0.0], [1.0, 1.0])
        1000000.0
    """
    eps = check_real("eps", eps, minimum=0.0, min_inclusive=False, hint="e.g. eps=1e-6")
    members, nonmembers = _check_losses(member_losses, nonmember_losses)
    return float(np.mean(nonmembers)) / max(float(np.mean(members)), eps)


def calibrated_losses(losses: Any, reference_losses: Any) -> NDArray[np.float64]:
    """Difficulty-calibrated scores: each sample's loss minus its loss at a reference point.

    Watson, Guo, Cormode and Sablayrolles, "On the Importance of Difficulty Calibration in
    Membership Inference Attacks", ICLR 2022: subtracting a per-sample reference loss (here the
    sample's loss at the first evaluation, before much training) removes how easy a sample is
    anyway, so the loss-threshold attack on the result (:func:`membership_inference`) measures
    what training did to it. Non-finite inputs give NaN (filter them before the attack).

    Args:
        losses: current per-sample losses, shape ``[N]`` (NaN/inf allowed).
        reference_losses: the same samples' reference losses, shape ``[N]`` (NaN/inf allowed).

    Returns:
        float64 ``[N]``: ``losses - reference_losses``, NaN where either is non-finite.

    Raises:
        ValueError: the two inputs have different lengths or are not 1-D.

    Example:
        >>> calibrated_losses([0.5, 0.2, float("nan")], [1.0, 0.1, 0.3])
        array([-0.5,  0.1,  nan])
    """
    now = check_float_array(losses, "losses", allow_nan=True, allow_inf=True, allow_empty=True)
    ref = check_float_array(
        reference_losses, "reference_losses", allow_nan=True, allow_inf=True, allow_empty=True
    )
    if now.shape != ref.shape:
        raise ValueError(
            f"`losses` has {now.size} values but `reference_losses` has {ref.size}; pass one reference loss "
            "per sample, in the same order"
        )
    out = now - ref
    out[~(np.isfinite(now) & np.isfinite(ref))] = np.nan
    return out


def slice_aucs(
    member_losses: Any,
    nonmember_losses: Any,
    *,
    member_slices: Any,
    nonmember_slices: Any,
    min_size: int = 1,
) -> dict[str, float]:
    """Loss-threshold attack AUC per slice (class, group) of the probes.

    An average AUC can hide a slice that leaks far more (Carlini et al., S&P 2022, on per-example
    vulnerability); this reports the AUC of :func:`membership_inference` within each slice that
    has at least ``min_size`` finite member and non-member losses. Non-finite losses are left out.

    Args:
        member_losses: per-sample member losses ``[M]`` (NaN/inf allowed, excluded).
        nonmember_losses: per-sample non-member losses ``[N]`` (NaN/inf allowed, excluded).
        member_slices: the slice name of each member, ``[M]`` strings.
        nonmember_slices: the slice name of each non-member, ``[N]`` strings.
        min_size: smallest number of finite members and of finite non-members a slice needs.

    Returns:
        ``{slice name: AUC}`` sorted by name, for the slices present in both sets with enough samples.

    Raises:
        ValueError: lengths that do not match, or ``min_size < 1``.

    Example:
        >>> slice_aucs([0.1, 0.9, 0.2, 0.3], [0.5, 0.1, 0.8, 0.4],
        ...            member_slices=["a", "a", "b", "b"], nonmember_slices=["a", "a", "b", "b"])
        {'a': 0.375, 'b': 1.0}
    """
    min_size = check_int("min_size", min_size, minimum=1, hint="e.g. min_size=50")
    m = check_float_array(member_losses, "member_losses", allow_nan=True, allow_inf=True, allow_empty=True)
    n = check_float_array(
        nonmember_losses, "nonmember_losses", allow_nan=True, allow_inf=True, allow_empty=True
    )
    ms, ns = np.asarray(member_slices).astype(str), np.asarray(nonmember_slices).astype(str)
    if ms.shape != m.shape or ns.shape != n.shape:
        raise ValueError(
            f"`member_slices` ({ms.size}) and `nonmember_slices` ({ns.size}) need one name per loss "
            f"({m.size} members, {n.size} non-members)"
        )
    fin_m, fin_n = np.isfinite(m), np.isfinite(n)
    out: dict[str, float] = {}
    for key in sorted(set(ms.tolist()) & set(ns.tolist())):
        sm, sn = m[(ms == key) & fin_m], n[(ns == key) & fin_n]
        if sm.size >= min_size and sn.size >= min_size:
            out[key] = membership_inference(sm, sn, fprs=()).auc
    return out


def loss_gap(member_losses: Any, nonmember_losses: Any) -> float:
    """Generalisation gap: mean non-member loss minus mean member loss.

    Positive when the model fits its training samples better than held-out ones, the
    signal the loss-threshold attack of Yeom et al. (2018) exploits.

    Args:
        member_losses: per-sample losses of members, shape ``[M]``, finite.
        nonmember_losses: per-sample losses of non-members, shape ``[N]``, finite.

    Returns:
        ``mean(nonmember_losses) - mean(member_losses)`` as a float.

    Raises:
        ValueError: if an input is empty, not 1-D or holds NaN/inf.

    Example:
        >>> loss_gap([0.5, 1.5], [2.0, 3.0])
        1.5
    """
    members, nonmembers = _check_losses(member_losses, nonmember_losses)
    return float(np.mean(nonmembers) - np.mean(members))
