"""Membership-inference attacks from reference runs: LiRA and RMIA, with an exact low-FPR report.

Given one *target* run and ``R`` *reference* (shadow) runs trained on random halves of the same
candidate pool, each run's per-sample score on every pool sample and whether the run trained on it:

* :func:`logit_confidence`: the statistic LiRA models, the logit-scaled confidence of the true label
  ``log(p_y / (1 - p_y))``, computed stably from logits as ``z_y - logsumexp(z_j, j != y)`` (Carlini,
  Chien, Nasr, Song, Terzis and Tramer, "Membership Inference Attacks From First Principles", IEEE
  S&P 2022, Sec. IV-C).
* :func:`lira_scores`: the Likelihood Ratio Attack of the same paper (Algorithm 1): per sample, a
  Gaussian fitted to its scores in the reference runs that trained on it (*in*) and one to those
  that did not (*out*). Online: the log-likelihood ratio of the target's score under the two.
  Offline (out runs only): the one-sided tail ``log Pr[Z <= observed]``, ``Z ~ N(mu_out, s_out^2)``.
* :func:`rmia_scores`: RMIA of Zarifzadeh, Liu and Shokri, "Low-Cost High-Power Membership Inference
  Attacks", ICML 2024: the target's probability of the true label over its average across the
  reference runs, compared pairwise with population samples.
* :func:`attack_report`: AUC and TPR at low FPR of any score (larger = member) through the exact ROC
  of :mod:`memcallbacks.metrics.membership` (members positive, TPR at FPR ``<= x``).

Every function is vectorised over samples and reference runs (no per-sample Python loop).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import special, stats

from memcallbacks.metrics.membership import (
    check_fprs,
    membership_inference,
    roc_curve,
    roc_summary_metrics,
)
from memcallbacks.utilities.validation import as_numpy, check_bool, check_float_array, check_real

__all__ = [
    "AttackReport",
    "attack_report",
    "lira_scores",
    "logit_confidence",
    "rmia_scores",
]

#: the smallest standard deviation a LiRA Gaussian may have (identical reference scores)
MIN_STD = 1e-6
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def logit_confidence(logits: Any, labels: Any, *, from_probs: bool = False) -> NDArray[np.float64]:
    """LiRA's statistic: the logit-scaled confidence ``log(p_y / (1 - p_y))`` of the true label.

    Carlini et al., "Membership Inference Attacks From First Principles", IEEE S&P 2022, Sec. IV-C:
    the confidence ``p_y`` is squashed to near 0 or 1 for most samples; its logit is close to
    Gaussian across models, which is what LiRA fits. From logits it is computed without
    forming ``p_y``: ``z_y - logsumexp(z_j for j != y)`` (exact, since the softmax normaliser
    cancels), so a confidence of ``1 - 1e-20`` still gives 46 rather than ``inf``. From
    probabilities: ``log p_y - log(sum of the other p_j)`` (the sum of the others, not ``1 - p_y``,
    avoids the cancellation).

    Args:
        logits: ``[N, C]`` logits (or probabilities with ``from_probs=True``), ``C >= 2``.
        labels: ``[N]`` integer true labels in ``[0, C)``.
        from_probs: the first argument holds probabilities (rows summing to 1), not logits.

    Returns:
        float64 ``[N]``; ``+inf``/``-inf`` only from probabilities of exactly 1 or 0.

    Raises:
        ValueError: shapes that do not match, a label out of range, NaN or ``+inf`` logits.
        TypeError: non-numeric input or non-integer labels.

    Example:
        >>> logit_confidence([[2.0, 0.0], [0.0, 0.0]], [0, 1]).round(4)
        array([2., 0.])
        >>> logit_confidence([[0.5, 0.25, 0.25]], [0], from_probs=True)
        array([0.])
    """
    from_probs = check_bool("from_probs", from_probs)
    z = check_float_array(logits, "logits", ndim=2, allow_inf=True)
    if (z == np.inf).any():
        raise ValueError("`logits` holds +inf; pass finite logits (-inf marks an impossible class)")
    y = as_numpy(labels, "labels")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"`labels` must hold integer class labels, got dtype {y.dtype}")
    n, c = z.shape
    if y.shape != (n,):
        raise ValueError(f"`labels` must have shape [{n}] (one per row of `logits`), got {tuple(y.shape)}")
    if c < 2:
        raise ValueError(f"`logits` needs at least 2 classes, got shape {tuple(z.shape)}")
    if n and (y.min() < 0 or y.max() >= c):
        raise ValueError(f"`labels` must lie in [0, {c}), got values from {int(y.min())} to {int(y.max())}")
    rows = np.arange(n)
    others = np.ones_like(z, dtype=bool)
    others[rows, y] = False
    if from_probs:
        if (z < 0).any():
            raise ValueError("`logits` holds negative probabilities; pass from_probs=False for logits")
        with np.errstate(divide="ignore"):
            return np.log(z[rows, y]) - np.log(np.where(others, z, 0.0).sum(axis=1))
    rest = special.logsumexp(np.where(others, z, -np.inf), axis=1)
    return z[rows, y] - rest


def _check_references(
    target: Any, references: Any, ref_in: Any, names: tuple[str, str]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_], NDArray[np.bool_]]:
    """Validated ``(target, references with NaN as 0, in-mask, out-mask)``; a NaN reference is in neither mask."""
    t = check_float_array(target, names[0], hint="; pass one score per pool sample")
    r = check_float_array(
        references, names[1], ndim=2, allow_nan=True, hint="; pass [R reference runs, N samples]"
    )
    m = as_numpy(ref_in, "ref_in")
    if m.dtype != np.bool_:
        raise TypeError(
            f"`ref_in` must be a bool array (True = the reference run trained on the sample), got {m.dtype}"
        )
    if r.shape[1] != t.size or m.shape != r.shape:
        raise ValueError(
            f"`{names[1]}` must have shape [R, {t.size}] and `ref_in` the same shape, got {tuple(r.shape)} and "
            f"{tuple(m.shape)}; pass one row per reference run, one column per sample of `{names[0]}`"
        )
    known = ~np.isnan(r)
    return t, np.where(known, r, 0.0), m & known, ~m & known


def _group_moments(
    scores: NDArray[np.float64], mask: NDArray[np.bool_]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Per-sample count, mean and sum of squared deviations of ``scores`` where ``mask``."""
    count = mask.sum(axis=0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(mask, scores, 0.0).sum(axis=0) / count
    squares = np.where(mask, (scores - mean) ** 2, 0.0).sum(axis=0)
    return count, mean, squares


def _std(
    scores: NDArray[np.float64],
    mask: NDArray[np.bool_],
    count: NDArray[np.float64],
    squares: NDArray[np.float64],
    *,
    fixed: bool,
) -> NDArray[np.float64]:
    """Per-sample unbiased std, or the pooled one where fixed / fewer than 2 values."""
    several = count >= 2
    dof = float((count[several] - 1).sum())
    if dof > 0:
        pooled = math.sqrt(float(squares[several].sum()) / dof)
    elif mask.any():  # one value per sample at most: the spread of all values about their mean
        pooled = float(np.std(scores[mask]))
    else:
        pooled = math.nan
    if fixed:
        std = np.full(count.shape, pooled)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            std = np.where(several, np.sqrt(squares / np.maximum(count - 1, 1)), pooled)
    return np.maximum(std, MIN_STD)


def lira_scores(
    target_scores: Any,
    ref_scores: Any,
    *,
    ref_in: Any,
    online: bool = True,
    fixed_variance: bool = False,
) -> NDArray[np.float64]:
    """LiRA membership scores (Carlini et al., IEEE S&P 2022, Algorithm 1); larger = member.

    For each sample, Gaussians are fitted to its scores (usually :func:`logit_confidence`) in the
    reference runs that trained on it (*in*: mean ``mu_in``, std ``s_in``) and in those that did not
    (*out*). Means are sample means (the paper's Algorithm 1); standard deviations are unbiased
    (``ddof=1``). With ``fixed_variance=True`` every sample shares one std per group, the pooled
    within-sample std ``sqrt(sum of squared deviations / sum of (n_i - 1))`` (the paper's "global
    variance", better with few references); a sample with fewer than 2 values in a group always
    gets the pooled std. When no sample has 2 values (one reference run) the pooled std is the
    spread of all the group's values about their mean. Stds are at least ``MIN_STD`` (1e-6).

    * online: ``log N(s; mu_in, s_in^2) - log N(s; mu_out, s_out^2)`` for the target's score ``s``;
      NaN for a sample that no reference run included, or none excluded (it cannot be scored:
      :func:`attack_report` leaves it out and counts it).
    * offline: ``log Pr[Z <= s]``, ``Z ~ N(mu_out, s_out^2)`` (the paper's one-sided test, Sec. VI-C):
      a member's score lies above what models without it give. NaN where no run excluded the sample.

    Args:
        target_scores: ``[N]`` the target run's score per pool sample (higher = more confident).
        ref_scores: ``[R, N]`` the reference runs' scores on the same samples, ``R >= 1``; NaN marks
            a reference left out for that sample (e.g. to give every sample as many in- and
            out-references, so the counts cannot reveal the target's membership).
        ref_in: ``[R, N]`` bool, True where reference run ``r`` trained on sample ``n``.
        online: use the in *and* out Gaussians (needs references of both kinds); False = offline.
        fixed_variance: one pooled std per group instead of per-sample stds.

    Returns:
        float64 ``[N]`` scores, larger = more likely a member (NaN where a sample cannot be scored).

    Raises:
        ValueError: shapes that do not match, non-finite scores.
        TypeError: a non-bool ``ref_in``, ``online`` or ``fixed_variance``.

    Example:
        >>> ref = [[2.0], [4.0], [0.0], [2.0]]       # in runs: 2, 4; out runs: 0, 2
        >>> ref_in = [[True], [True], [False], [False]]
        >>> lira_scores([3.0], ref, ref_in=ref_in).round(4)   # mu_in 3, mu_out 1, both std sqrt(2)
        array([1.])
        >>> lira_scores([3.0], ref, ref_in=ref_in, online=False).round(4)  # log Phi(2 / sqrt(2))
        array([-0.0819])
    """
    online = check_bool("online", online)
    fixed_variance = check_bool("fixed_variance", fixed_variance)
    target, refs, inside, outside = _check_references(
        target_scores, ref_scores, ref_in, ("target_scores", "ref_scores")
    )
    n_out, mu_out, sq_out = _group_moments(refs, outside)
    s_out = _std(refs, outside, n_out, sq_out, fixed=fixed_variance)
    z_out = (target - mu_out) / s_out
    if not online:
        score = special.log_ndtr(z_out)
        return np.where(n_out > 0, score, np.nan)
    n_in, mu_in, sq_in = _group_moments(refs, inside)
    s_in = _std(refs, inside, n_in, sq_in, fixed=fixed_variance)
    z_in = (target - mu_in) / s_in
    log_in = -0.5 * z_in**2 - np.log(s_in) - _HALF_LOG_2PI
    log_out = -0.5 * z_out**2 - np.log(s_out) - _HALF_LOG_2PI
    return np.where((n_in > 0) & (n_out > 0), log_in - log_out, np.nan)


def rmia_scores(
    target_probs: Any,
    ref_probs: Any,
    *,
    ref_in: Any,
    population_idx: Any,
    offline: bool = False,
    a: float = 0.3,
    gamma: float = 1.0,
    break_ties: bool = False,
) -> NDArray[np.float64]:
    """RMIA membership scores (Zarifzadeh, Liu and Shokri, ICML 2024); larger = member.

    With ``Pr(x | theta)`` the target model's probability of ``x``'s true label (for a classifier
    ``p_y = sigmoid(logit confidence)``; for a language model ``exp(-mean token loss)``), the
    likelihood ratio is ``LR(x) = Pr(x | theta) / Pr(x)``, where ``Pr(x)`` is the average of
    ``Pr(x | theta')`` over the reference models (the paper's Eq. 3 normaliser, estimated as in
    its Sec. 3):

    * online: ``(mean_in(x) + mean_out(x)) / 2`` over the runs that trained on ``x`` and those that did
      not (the paper's online setting, half the reference models trained on ``x``); a sample with
      references of one kind only gets the mean of its references;
    * offline (``offline=True``): only runs that did not train on ``x`` are used, and the missing
      in-half is approximated linearly (the paper's offline approximation, Appendix B.2.2):
      ``Pr(x) = ((1 + a) * mean_out(x) + (1 - a)) / 2``; ``a = 1`` trusts the out mean alone,
      ``a = 0`` assumes an in-model gives probability 1. A sample that every reference trained on
      falls back to the mean of all its references.

    The score is the pairwise test against population samples ``z`` (Eq. 4-5): the fraction of
    ``z`` in ``population_idx`` with ``LR(x) / LR(z) >= gamma``, where ``LR(z)`` is computed the
    same way. A population sample scored against itself counts (ratio 1), as in the reference
    code. Vectorised: one sort of the population ratios and a binary search per sample.

    Args:
        target_probs: ``[N]`` the target model's probability of each sample's true label, in ``[0, 1]``.
        ref_probs: ``[R, N]`` the same for each reference run, ``R >= 1``; NaN marks a reference left
            out for that sample (a sample with none gets a NaN score).
        ref_in: ``[R, N]`` bool, True where reference run ``r`` trained on sample ``n``.
        population_idx: indices into the ``N`` samples of the population samples ``z`` (at least one):
            samples from the data distribution, ideally not in the target's training set.
        offline: use only the reference runs that did not train on each sample, with ``a``.
        a: the offline approximation parameter in ``[0, 1]`` (the paper tunes it on reference
            models; 0.3 is a common default).
        gamma: the pairwise threshold, ``> 0`` (the paper's default is 1).
        break_ties: add ``rank(LR(x)) / ((N + 1) * |Z|)``, less than one step of the fraction, so that
            samples with the same fraction are ordered by their own ``LR(x)``. The fraction is a step
            function of ``LR(x)`` (resolution ``1 / |Z|``): without this, every sample above the
            highest population ratio scores 1, and when the population holds the target's
            non-members its top non-member ties with every member above it, which empties the ROC
            at the lowest FPRs. The order between different fractions is unchanged.

    Returns:
        float64 ``[N]`` scores in ``[0, 1]`` (NaN for a sample without any reference).

    Raises:
        ValueError: shapes that do not match, probabilities outside ``[0, 1]``, an index out of range,
            ``a`` outside ``[0, 1]`` or ``gamma <= 0``.
        TypeError: a non-bool ``ref_in``/``offline`` or non-integer indices.

    Example:
        >>> target = [0.9, 0.5, 0.5]
        >>> refs = [[0.6, 0.5, 0.25]]  # one reference run, which trained on nothing
        >>> rmia_scores(target, refs, ref_in=[[False] * 3], population_idx=[0, 1, 2])  # LR 1.5, 1, 2
        array([0.66666667, 0.33333333, 1.        ])
    """
    offline = check_bool("offline", offline)
    a = check_real("a", a, minimum=0.0, maximum=1.0, hint="e.g. a=0.3")
    gamma = check_real("gamma", gamma, minimum=0.0, min_inclusive=False, hint="e.g. gamma=1.0")
    target, refs, inside, outside = _check_references(
        target_probs, ref_probs, ref_in, ("target_probs", "ref_probs")
    )
    for name, values in (("target_probs", target), ("ref_probs", refs)):
        if values.min() < 0.0 or values.max() > 1.0:
            raise ValueError(
                f"`{name}` must hold probabilities in [0, 1], got values from {values.min()} to {values.max()}; "
                "convert logit confidences with scipy.special.expit and negative losses with numpy.exp"
            )
    idx = as_numpy(population_idx, "population_idx").reshape(-1)
    if idx.size == 0 or not (np.issubdtype(idx.dtype, np.integer) and idx.dtype != np.bool_):
        raise TypeError(
            f"`population_idx` must be a non-empty array of integer indices, got dtype {idx.dtype}, size {idx.size}"
        )
    if idx.min() < 0 or idx.max() >= target.size:
        raise ValueError(
            f"`population_idx` must index the {target.size} samples, got values from {idx.min()} to {idx.max()}"
        )
    n_in, mean_in, _ = _group_moments(refs, inside)
    n_out, mean_out, _ = _group_moments(refs, outside)
    with np.errstate(invalid="ignore", divide="ignore"):
        overall = (n_in * np.nan_to_num(mean_in) + n_out * np.nan_to_num(mean_out)) / (n_in + n_out)
    if offline:
        marginal = np.where(n_out > 0, ((1.0 + a) * mean_out + (1.0 - a)) / 2.0, overall)
    else:
        marginal = np.where((n_in > 0) & (n_out > 0), (mean_in + mean_out) / 2.0, overall)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = target / np.maximum(marginal, np.finfo(np.float64).tiny)
    population = np.sort(ratio[idx][~np.isnan(ratio[idx])])
    if population.size == 0:
        raise ValueError("no population sample in `population_idx` has a reference score; pass other indices")
    counts = np.searchsorted(population, ratio / gamma, side="right").astype(np.float64)
    if check_bool("break_ties", break_ties):
        known = ~np.isnan(ratio)
        ranks = np.zeros(ratio.shape)
        ranks[known] = stats.rankdata(ratio[known], method="dense")
        counts += ranks / (ratio.size + 1.0)
    return np.where(np.isnan(ratio), np.nan, counts / float(population.size))


@dataclass(frozen=True)
class AttackReport:
    """What :func:`attack_report` measured for one attack's scores.

    Attributes:
        auc: ROC AUC, members positive (0.5 chance; below 0.5 reported as is).
        advantage: ``max(TPR - FPR)`` over thresholds.
        tpr_at_fpr: ``{fpr: tpr}``, the highest TPR at an FPR ``<= fpr``.
        n_members: members scored.
        n_nonmembers: non-members scored.
        n_excluded: samples left out because their score was NaN.
        fpr: the exact ROC's false-positive rates (ascending from 0).
        tpr: the matching true-positive rates.

    Example:
        >>> report = attack_report([3.0, 2.0, 1.0, 0.0], [True, True, False, False], fprs=(0.5,))
        >>> report.auc, report.tpr_at_fpr, report.to_metrics("attack/lira")["attack/lira/auc"]
        (1.0, {0.5: 1.0}, 1.0)
    """

    auc: float
    advantage: float
    tpr_at_fpr: dict[float, float] = field(hash=False)
    n_members: int
    n_nonmembers: int
    n_excluded: int
    fpr: NDArray[np.float64] = field(repr=False, compare=False, hash=False)
    tpr: NDArray[np.float64] = field(repr=False, compare=False, hash=False)

    def to_metrics(self, prefix: str) -> dict[str, float]:
        """Flat ``{key: float}``: ``{prefix}/auc``, ``/advantage``, ``/tpr@<x>%fpr``, ``/n_members``,
        ``/n_nonmembers``, ``/n_excluded``."""
        prefix = prefix.rstrip("/")
        out = roc_summary_metrics(prefix, auc=self.auc, advantage=self.advantage, tpr_at_fpr=self.tpr_at_fpr)
        out[f"{prefix}/n_members"] = float(self.n_members)
        out[f"{prefix}/n_nonmembers"] = float(self.n_nonmembers)
        out[f"{prefix}/n_excluded"] = float(self.n_excluded)
        return out


def attack_report(scores: Any, is_member: Any, *, fprs: Iterable[float] = (0.001, 0.01)) -> AttackReport:
    """AUC, advantage and TPR at low FPR of membership scores (larger = member).

    Members are the positive class; the ROC is the exact one of
    :func:`memcallbacks.metrics.membership.roc_curve` (one sort, ties one point), TPR at FPR ``x``
    is the highest TPR at an FPR ``<= x`` (Carlini et al., IEEE S&P 2022, report TPR at 0.1% and
    1% FPR). Only the order of the scores matters (they are rank-transformed, so ``+-inf`` are
    fine). NaN scores (a sample :func:`lira_scores` could not score) are left out, counted in
    ``n_excluded`` and warned about. Warns when there are fewer than ``1/x`` non-members for a
    requested FPR ``x``.

    Args:
        scores: ``[N]`` membership scores, larger = more likely a member.
        is_member: ``[N]`` bool ground truth.
        fprs: false-positive rates in ``(0, 1)`` for the TPR.

    Returns:
        An :class:`AttackReport`.

    Raises:
        ValueError: shapes that differ, or no member or no non-member left.
        TypeError: a non-bool ``is_member``.

    Example:
        >>> report = attack_report([0.9, 0.1, 0.8, 0.7, 0.2], [True, False, False, True, False], fprs=(0.34,))
        >>> round(report.auc, 4), report.tpr_at_fpr, report.n_excluded
        (0.8333, {0.34: 1.0}, 0)
    """
    requested = check_fprs(fprs)
    s = check_float_array(scores, "scores", allow_nan=True, allow_inf=True)
    member = as_numpy(is_member, "is_member")
    if member.dtype != np.bool_:
        raise TypeError(f"`is_member` must be a bool array, got dtype {member.dtype}")
    if member.shape != s.shape:
        raise ValueError(f"`is_member` must have the shape of `scores` {s.shape}, got {member.shape}")
    keep = ~np.isnan(s)
    excluded = int(s.size - keep.sum())
    if excluded:
        warnings.warn(
            f"attack_report: {excluded} of {s.size} sample(s) have a NaN score (e.g. no reference run "
            "included or excluded them) and are left out of the ROC",
            UserWarning,
            stacklevel=2,
        )
    ranks = stats.rankdata(s[keep], method="dense").astype(np.float64)
    m = member[keep]
    if m.all() or not m.any():
        raise ValueError(
            f"attack_report needs members and non-members with a score, got {int(m.sum())} member(s) and "
            f"{int((~m).sum())} non-member(s)"
        )
    losses_in, losses_out = -ranks[m], -ranks[~m]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = membership_inference(losses_in, losses_out, fprs=requested)
    for w in caught:  # re-issue the resolution warning as this function's own
        text = str(w.message).replace("membership_inference", "attack_report")
        text = text.replace("Use a larger held-out probe set.", "Use a larger pool or more runs.")
        warnings.warn(text, UserWarning, stacklevel=2)
    fpr, tpr, _ = roc_curve(losses_in, losses_out)
    return AttackReport(
        auc=report.auc,
        advantage=report.advantage,
        tpr_at_fpr=report.tpr_at_fpr,
        n_members=report.n_members,
        n_nonmembers=report.n_nonmembers,
        n_excluded=excluded,
        fpr=fpr,
        tpr=tpr,
    )
