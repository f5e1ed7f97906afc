"""Trajectory membership inference: a cross-validated logistic regression on per-epoch probe losses.

Adapted from Liu, Wen, Backes and Zhang, "Membership Inference Attacks by Exploiting Loss
Trajectory", ACM CCS 2022 (TrajectoryMIA). The paper distils the target model and feeds the
attack the loss of each sample along the distillation trajectory plus its final loss. Here the
trajectory is the one the training run produces itself: each probe's loss at every recorded
evaluation (``[N, E]`` for members, ``[M, E]`` for non-members, as
``MembershipInferenceMonitor`` keeps them), so no shadow or distilled model is trained.

What the attack assumes: the attacker sees the sample's loss after each evaluated epoch, as
someone holding the run's checkpoints (or its per-epoch logs) does. That is a stronger
attacker than the loss-threshold attack of :mod:`memcallbacks.metrics.membership`, which sees
only the current model. It also knows the membership of half the probes (the training folds),
which is how the paper's attacker learns from a shadow model; here the labelled half comes
from the target run itself, so the number is what an auditor with labelled probes can reach
(an upper estimate of a realistic attacker's power, not a lower bound on leakage).

Procedure: rows (probes) with a non-finite loss at any recorded epoch are dropped; the rest
are split into ``folds`` stratified folds by a seeded permutation (members and non-members
separately); for each fold, an L2-regularised logistic regression (features standardised on
the training folds, intercept not penalised, damped Newton steps in float64, deterministic) is
fitted on the other folds and scores the held-out fold, so every kept probe gets one
out-of-fold score: the fitted logit. The exact ROC of :func:`~memcallbacks.metrics.membership.membership_inference`
(members positive) on those scores gives AUC and TPR at low FPR (Carlini et al., S&P 2022).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.special import expit

from memcallbacks.metrics.membership import MembershipReport, check_fprs, membership_inference
from memcallbacks.utilities.validation import check_float_array, check_int, check_real, check_seed

__all__ = ["feature_epochs", "trajectory_attack", "trajectory_attack_scores"]

NAN = float("nan")


def _fold_ids(n_members: int, n_nonmembers: int, folds: int, seed: int) -> NDArray[np.int64]:
    """Stratified fold of each row, members first: a seeded permutation per class, dealt round-robin."""
    rng = np.random.default_rng(seed)
    out = []
    for n in (n_members, n_nonmembers):
        fold = np.empty(n, dtype=np.int64)
        fold[rng.permutation(n)] = np.arange(n) % folds
        out.append(fold)
    return np.concatenate(out)


def _fit_logistic(
    x: NDArray[np.float64], y: NDArray[np.float64], *, l2: float, max_iter: int = 100
) -> NDArray[np.float64]:
    """Weights ``[d + 1]`` (intercept last) minimising ``sum logloss + l2/2 * |w|^2`` (intercept free).

    Damped Newton with Armijo backtracking: the objective is strictly convex for ``l2 > 0`` (in the
    weights; the intercept through the log-loss), so the minimum is unique and the iteration
    deterministic. The same objective as scikit-learn's ``LogisticRegression(C=1/l2)``.
    """
    n, d = x.shape
    a = np.concatenate([x, np.ones((n, 1))], axis=1)
    penalty = np.full(d + 1, l2)
    penalty[-1] = 0.0

    def objective(w: NDArray[np.float64]) -> float:
        z = a @ w
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(penalty * w * w))

    w = np.zeros(d + 1)
    f = objective(w)
    ridge = 1e-10 * np.eye(d + 1)
    for _ in range(max_iter):
        p = expit(a @ w)
        grad = a.T @ (p - y) + penalty * w
        if float(np.max(np.abs(grad))) <= 1e-9 * max(1.0, float(n)):
            break
        hess = (a * (p * (1.0 - p))[:, None]).T @ a + np.diag(penalty) + ridge
        step = np.linalg.solve(hess, grad)
        slope = float(grad @ step)
        t, f_new, w_new = 1.0, f, w
        while t > 1e-12:
            w_new = w - t * step
            f_new = objective(w_new)
            if f_new <= f - 1e-4 * t * slope:
                break
            t *= 0.5
        else:  # no decrease along the Newton direction: at the minimum to machine precision
            break
        converged = f - f_new <= 1e-13 * max(1.0, abs(f))
        w, f = w_new, f_new
        if converged:
            break
    return w


def _check_trajectories(member_traj: Any, nonmember_traj: Any) -> tuple[np.ndarray, np.ndarray]:
    hint = "; pass one row per probe and one column per recorded epoch, e.g. monitor.member_losses.T"
    members = check_float_array(
        member_traj, "member_traj", ndim=2, allow_nan=True, allow_inf=True, allow_empty=True, hint=hint
    )
    nonmembers = check_float_array(
        nonmember_traj, "nonmember_traj", ndim=2, allow_nan=True, allow_inf=True, allow_empty=True, hint=hint
    )
    if members.shape[1] != nonmembers.shape[1]:
        raise ValueError(
            f"`member_traj` has {members.shape[1]} epochs (columns) but `nonmember_traj` has "
            f"{nonmembers.shape[1]}; both must hold the losses of the same evaluations"
        )
    return members, nonmembers


def trajectory_attack_scores(
    member_traj: Any,
    nonmember_traj: Any,
    *,
    folds: int = 2,
    seed: int = 0,
    l2: float = 1.0,
    max_features: int | None = 32,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Out-of-fold membership scores of the trajectory attack (Liu et al., CCS 2022), higher = member.

    See the module docstring for the procedure and what it assumes. A row with a non-finite loss at
    any epoch gets a NaN score (it is dropped, not imputed). When fewer than 2 epochs are recorded,
    or fewer than ``folds`` finite rows remain in a class, every score is NaN: the attack cannot
    run, and NaN says so.

    Args:
        member_traj: member probe losses, ``[N, E]`` (one row per probe, one column per epoch);
            NaN/inf allowed.
        nonmember_traj: non-member probe losses, ``[M, E]``, the same epochs.
        folds: number of cross-validation folds (``>= 2``): each fold is scored by a model fitted on
            the others.
        seed: seed of the fold assignment.
        l2: L2 penalty on the (standardised) feature weights, ``> 0``; the objective is
            ``sum of log-losses + l2 / 2 * |w|^2``, i.e. scikit-learn's ``C = 1 / l2``.
        max_features: use at most this many epochs (columns) as features: when ``E`` is larger,
            ``max_features`` evenly spaced columns, the first and the last included
            (:func:`feature_epochs`); the fit costs ``O(rows * features^2)`` per Newton step.
            ``None``: every column.

    Returns:
        ``(member_scores [N], nonmember_scores [M])``, float64 out-of-fold logits, NaN where dropped.

    Raises:
        ValueError: an input not 2-D, the two with different numbers of epochs, ``folds < 2``,
            ``l2 <= 0``, ``max_features < 2`` or a negative seed.
        TypeError: a non-numeric input or a non-integer ``folds``/``seed``.

    Example:
        >>> members = [[2.0, 0.5], [2.1, 0.4], [1.9, 0.6], [2.2, 0.3]]
        >>> nonmembers = [[2.0, 1.9], [2.1, 2.0], [1.9, 2.2], [2.2, 2.1]]
        >>> m, n = trajectory_attack_scores(members, nonmembers)
        >>> bool(m.min() > n.max())
        True
    """
    members, nonmembers = _check_trajectories(member_traj, nonmember_traj)
    folds = check_int("folds", folds, minimum=2, hint="e.g. folds=2")
    seed = check_seed("seed", seed)
    l2 = check_real("l2", l2, minimum=0.0, min_inclusive=False, hint="e.g. l2=1.0")
    columns = feature_epochs(members.shape[1], max_features)
    members, nonmembers = members[:, columns], nonmembers[:, columns]
    n, m, epochs = members.shape[0], nonmembers.shape[0], members.shape[1]
    member_scores, nonmember_scores = np.full(n, np.nan), np.full(m, np.nan)
    keep_m = np.isfinite(members).all(axis=1)
    keep_n = np.isfinite(nonmembers).all(axis=1)
    kept_m, kept_n = int(keep_m.sum()), int(keep_n.sum())
    if epochs < 2 or min(kept_m, kept_n) < folds:
        return member_scores, nonmember_scores

    x = np.concatenate([members[keep_m], nonmembers[keep_n]])
    y = np.concatenate([np.ones(kept_m), np.zeros(kept_n)])
    fold = _fold_ids(kept_m, kept_n, folds, seed)
    scores = np.empty(x.shape[0])
    for k in range(folds):
        test = fold == k
        x_train = x[~test]
        mean, std = x_train.mean(axis=0), x_train.std(axis=0)
        std[std == 0.0] = 1.0
        w = _fit_logistic((x_train - mean) / std, y[~test], l2=l2)
        scores[test] = ((x[test] - mean) / std) @ w[:-1] + w[-1]
    member_scores[keep_m] = scores[:kept_m]
    nonmember_scores[keep_n] = scores[kept_m:]
    return member_scores, nonmember_scores


def feature_epochs(epochs: int, max_features: int | None = 32) -> NDArray[np.int64]:
    """The epoch columns the trajectory attack uses: all of them, or ``max_features`` evenly spaced.

    Args:
        epochs: number of recorded epochs ``E`` (``>= 0``).
        max_features: the most columns to use (``>= 2``), or ``None`` for all.

    Returns:
        Increasing column indices, the first (0) and the last (``E - 1``) included when ``E > 0``.

    Raises:
        ValueError: ``epochs < 0`` or ``max_features < 2``.

    Example:
        >>> feature_epochs(5, 3), feature_epochs(2, 3)
        (array([0, 2, 4]), array([0, 1]))
    """
    epochs = check_int("epochs", epochs, minimum=0)
    if max_features is not None:
        max_features = check_int("max_features", max_features, minimum=2, hint="e.g. max_features=32")
    if max_features is None or epochs <= max_features:
        return np.arange(epochs, dtype=np.int64)
    return np.round(np.linspace(0, epochs - 1, max_features)).astype(np.int64)


def _nan_report(fprs: tuple[float, ...], n_members: int, n_nonmembers: int) -> MembershipReport:
    return MembershipReport(
        auc=NAN,
        advantage=NAN,
        tpr_at_fpr={x: NAN for x in fprs},
        balanced_accuracy=NAN,
        threshold=NAN,
        n_members=n_members,
        n_nonmembers=n_nonmembers,
    )


def trajectory_attack(
    member_traj: Any,
    nonmember_traj: Any,
    *,
    folds: int = 2,
    seed: int = 0,
    l2: float = 1.0,
    max_features: int | None = 32,
    fprs: Iterable[float] = (0.001, 0.01, 0.1),
) -> MembershipReport:
    """Trajectory membership inference (Liu et al., CCS 2022) from per-epoch probe losses, cross-validated.

    The out-of-fold scores of :func:`trajectory_attack_scores` (members positive, higher = member)
    go through the exact ROC of :func:`~memcallbacks.metrics.membership.membership_inference`: AUC,
    advantage, TPR at each FPR ``<= x`` (Carlini et al., S&P 2022). The report's ``threshold`` is on
    the negated logit (predict member when ``-score <= threshold``); ``n_members``/``n_nonmembers``
    count the rows used. Rows with a non-finite loss are dropped and counted: a ``UserWarning``
    gives their number. Fewer than 2 epochs, or fewer than ``folds`` finite rows in a class: every
    value of the report is NaN (the counts stay), never a chance-looking 0.5.

    Assumes the attacker sees each probe's loss after every recorded epoch (a checkpoint holder)
    and knows the membership of the training folds; see the module docstring.

    Args:
        member_traj: member probe losses ``[N, E]`` (NaN/inf allowed, dropped).
        nonmember_traj: non-member probe losses ``[M, E]``, the same epochs.
        folds: cross-validation folds, ``>= 2``.
        seed: seed of the fold assignment.
        l2: L2 penalty on the standardised weights (scikit-learn's ``C = 1 / l2``), ``> 0``.
        max_features: at most this many evenly spaced epochs are used (``None``: all).
        fprs: false-positive rates in ``(0, 1)`` at which to report the TPR.

    Returns:
        A :class:`~memcallbacks.metrics.membership.MembershipReport`.

    Raises:
        ValueError: bad shapes or argument values (see :func:`trajectory_attack_scores`), an FPR
            outside ``(0, 1)``.
        TypeError: a non-numeric input or argument.

    Example:
        >>> members = [[2.0, 0.5], [2.1, 0.4], [1.9, 0.6], [2.2, 0.3]]
        >>> nonmembers = [[2.0, 1.9], [2.1, 2.0], [1.9, 2.2], [2.2, 2.1]]
        >>> report = trajectory_attack(members, nonmembers, fprs=(0.25,))
        >>> report.auc, report.tpr_at_fpr, report.n_members
        (1.0, {0.25: 1.0}, 4)
        >>> trajectory_attack([[0.1], [0.2]], [[0.5], [0.9]], fprs=(0.25,)).auc  # one epoch: NaN
        nan
    """
    requested = check_fprs(fprs)
    member_scores, nonmember_scores = trajectory_attack_scores(
        member_traj, nonmember_traj, folds=folds, seed=seed, l2=l2, max_features=max_features
    )
    members, nonmembers = _check_trajectories(member_traj, nonmember_traj)
    kept_m = int(np.isfinite(members).all(axis=1).sum())
    kept_n = int(np.isfinite(nonmembers).all(axis=1).sum())
    dropped = members.shape[0] - kept_m + nonmembers.shape[0] - kept_n
    if dropped:
        warnings.warn(
            f"trajectory_attack: dropped {members.shape[0] - kept_m} member and {nonmembers.shape[0] - kept_n} "
            "non-member probe(s) with a NaN/inf loss at some epoch; the report counts only the rest",
            UserWarning,
            stacklevel=2,
        )
    fm = member_scores[np.isfinite(member_scores)]
    fn = nonmember_scores[np.isfinite(nonmember_scores)]
    if fm.size == 0 or fn.size == 0:
        return _nan_report(requested, kept_m, kept_n)
    return membership_inference(-fm, -fn, fprs=requested)
