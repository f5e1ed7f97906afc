"""One-run privacy audit: an empirical lower bound on a training run's epsilon.

Implements Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run",
NeurIPS 2023. ``m`` canaries are each included in training independently with probability
1/2 (a seeded draw). After training the auditor scores every canary, guesses "in" for the
``k_pos`` highest scores and "out" for the ``k_neg`` lowest (both fixed *before* scoring;
choosing the best ``k`` afterwards inflates epsilon unless corrected, e.g. by Bonferroni
over the ``k`` tried) and abstains on the rest. If ``v`` of the ``r = k_pos + k_neg``
guesses are right, every epsilon whose p-value is below ``beta`` is rejected, and the
largest rejected epsilon is a lower bound on the training's epsilon at confidence
``1 - beta``.

For ``delta = 0`` the p-value is ``P[Binomial(r, e^eps / (1 + e^eps)) >= v]`` (their
Theorem 3.1); for ``delta > 0`` it is Theorem 5.2's, computed exactly as the paper's
reference code (its appendix) does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import optimize, special, stats

from memcallbacks.utilities.validation import as_numpy, check_float_array, check_int, check_real

__all__ = ["audit_guesses", "count_correct", "epsilon_lower_bound", "p_value_audit"]


def _check_count(value: Any, name: str) -> int:
    return check_int(name, value, minimum=0)


def _check_beta(value: Any) -> float:
    return check_real(
        "beta", value, minimum=0.0, maximum=1.0, min_inclusive=False, max_inclusive=False,
        hint="a significance level, e.g. beta=0.05",
    )  # fmt: skip


def _check_audit_args(
    num_correct: Any, num_guesses: Any, num_canaries: Any, delta: Any
) -> tuple[int, int, int | None, float]:
    v = _check_count(num_correct, "num_correct")
    r = _check_count(num_guesses, "num_guesses")
    if v > r:
        raise ValueError(f"`num_correct` must be <= `num_guesses` ({r}), got {v}")
    m = None
    if num_canaries is not None:
        m = _check_count(num_canaries, "num_canaries")
        if r > m:
            raise ValueError(
                f"`num_guesses` must be <= `num_canaries` ({m}), got {r}; each canary gets at most one guess"
            )
    delta = check_real("delta", delta, minimum=0.0, maximum=1.0, hint="e.g. delta=1e-5")
    if delta > 0 and m is None:
        raise ValueError(
            f"`num_canaries` is required when `delta` > 0 (got delta={delta!r}): the p-value of "
            "Theorem 5.2 grows with the number of canaries m; pass num_canaries=m"
        )
    return v, r, m, float(delta)


def _p_value(m: int | None, r: int, v: int, epsilon: float, delta: float) -> float:
    """Theorem 5.2 p-value (Theorem 3.1 when ``delta == 0``), vectorised over ``i``."""
    q = float(special.expit(epsilon))  # e^eps / (1 + e^eps)
    tail = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if delta == 0.0 or v == 0:
        return min(tail, 1.0)
    i = np.arange(1, v + 1)
    # alpha = max_i (1/i) sum_{j=1..i} P[Binomial(r, q) = v - j], as the reference's running max
    partial_sums = np.cumsum(stats.binom.pmf(v - i, r, q))
    alpha = max(0.0, float(np.max(partial_sums / i)))
    assert m is not None
    return min(tail + alpha * delta * 2 * m, 1.0)


def p_value_audit(
    num_correct: int,
    num_guesses: int,
    *,
    epsilon: float,
    num_canaries: int | None = None,
    delta: float = 0.0,
) -> float:
    """p-value of observing ``num_correct`` right guesses out of ``num_guesses`` under (eps, delta)-DP.

    Steinke et al. (2023), Theorem 3.1 (``delta = 0``) and Theorem 5.2 (``delta > 0``).

    Args:
        num_correct: ``v``, number of correct guesses.
        num_guesses: ``r``, number of guesses made (abstentions excluded).
        epsilon: the epsilon tested, >= 0.
        num_canaries: ``m``, number of canaries (required when ``delta > 0``).
        delta: the delta tested, in ``[0, 1]``.

    Returns:
        The p-value, in ``[0, 1]``.

    Raises:
        ValueError: if not ``0 <= num_correct <= num_guesses <= num_canaries``, ``epsilon``
            is negative or not finite, ``delta`` is outside ``[0, 1]``, or ``delta > 0``
            without ``num_canaries``.
        TypeError: if a count is not an int.

    Example:
        >>> round(p_value_audit(10, 10, epsilon=0.0), 6)  # ten right coin flips: 2**-10
        0.000977
    """
    v, r, m, delta = _check_audit_args(num_correct, num_guesses, num_canaries, delta)
    epsilon = check_real("epsilon", epsilon, minimum=0.0)
    return _p_value(m, r, v, epsilon, delta)


def epsilon_lower_bound(
    num_correct: int,
    num_guesses: int,
    *,
    num_canaries: int | None = None,
    delta: float = 0.0,
    beta: float = 0.05,
) -> float:
    """Empirical epsilon lower bound from a one-run audit (Steinke et al. 2023).

    The largest epsilon rejected at confidence ``1 - beta``, i.e. the root of
    ``p_value_audit(eps) = beta`` (the p-value increases with epsilon), found by Brent's
    method to ~1e-12. 0.0 when even ``epsilon = 0`` is not rejected.

    Args:
        num_correct: ``v``, number of correct guesses.
        num_guesses: ``r``, number of guesses made (abstentions excluded).
        num_canaries: ``m``, number of canaries; required when ``delta > 0``.
        delta: the delta of the (eps, delta)-DP guarantee audited, in ``[0, 1]``.
        beta: significance level in ``(0, 1)``; the bound holds with probability
            ``1 - beta``.

    Returns:
        The lower bound on epsilon, a float >= 0.

    Raises:
        ValueError: if not ``0 <= num_correct <= num_guesses <= num_canaries``, ``beta`` is
            outside ``(0, 1)``, ``delta`` outside ``[0, 1]``, or ``delta > 0`` without
            ``num_canaries``.
        TypeError: if a count is not an int.

    Example:
        >>> round(epsilon_lower_bound(95, 100), 4)
        2.1724
        >>> round(epsilon_lower_bound(95, 100, num_canaries=1000, delta=1e-5), 4)
        2.1652
        >>> epsilon_lower_bound(50, 100)
        0.0
    """
    v, r, m, delta = _check_audit_args(num_correct, num_guesses, num_canaries, delta)
    beta = _check_beta(beta)

    def excess(epsilon: float) -> float:
        return _p_value(m, r, v, epsilon, delta) - beta

    if excess(0.0) >= 0.0:
        return 0.0
    upper = 1.0
    # at epsilon ~ 40, e^eps / (1 + e^eps) rounds to 1 and the p-value is 1: the loop ends
    while excess(upper) < 0.0:
        upper *= 2.0
    root = optimize.brentq(excess, 0.0, upper, xtol=1e-12, rtol=4 * np.finfo(float).eps, maxiter=200)
    return float(root)


def audit_guesses(scores: Any, *, k_pos: int, k_neg: int) -> NDArray[np.int8]:
    """The auditor's guesses: +1 ("in") for the ``k_pos`` highest scores, -1 ("out") for the ``k_neg`` lowest.

    Fix ``k_pos`` and ``k_neg`` before looking at the scores. Ties at a boundary go by index
    (a stable sort: among equal scores the later index counts as higher).

    Args:
        scores: per-canary membership score, higher = more likely included, shape ``[m]``,
            finite.
        k_pos: number of "in" guesses, >= 0.
        k_neg: number of "out" guesses, >= 0; ``k_pos + k_neg <= m``.

    Returns:
        int8 array of shape ``[m]`` with values in {-1, 0, +1} (0 = abstain).

    Raises:
        ValueError: if ``k_pos + k_neg`` exceeds the number of canaries, or ``scores`` is
            empty, not 1-D or not finite.
        TypeError: if ``k_pos`` or ``k_neg`` is not an int.

    Example:
        >>> audit_guesses([0.9, 0.1, 0.5, 0.7, 0.2], k_pos=2, k_neg=1)
        array([ 1, -1,  0,  1,  0], dtype=int8)
    """
    k_pos = _check_count(k_pos, "k_pos")
    k_neg = _check_count(k_neg, "k_neg")
    values = check_float_array(scores, "scores", hint="; pass one score per canary")
    m = values.size
    if k_pos + k_neg > m:
        raise ValueError(
            f"`k_pos` + `k_neg` must be <= the number of canaries ({m}), got {k_pos} + {k_neg} = {k_pos + k_neg}"
        )
    order = np.argsort(values, kind="stable")
    guesses = np.zeros(m, dtype=np.int8)
    guesses[order[:k_neg]] = -1
    if k_pos:
        guesses[order[m - k_pos :]] = 1
    return guesses


def count_correct(guesses: Any, included: Any) -> tuple[int, int]:
    """Counts the right guesses: +1 on an included canary or -1 on an excluded one.

    Args:
        guesses: shape ``[m]``, values in {-1, 0, +1} (from :func:`audit_guesses`).
        included: shape ``[m]``, bool (or 0/1): whether each canary was in the training set.

    Returns:
        ``(num_correct, num_guesses)`` as ints; abstentions (0) are not guesses.

    Raises:
        ValueError: if shapes differ or values are outside {-1, 0, +1} / {0, 1}.

    Example:
        >>> count_correct([1, -1, 0, 1, 0], [True, False, True, False, False])
        (2, 3)
    """
    g = as_numpy(guesses, "guesses")
    inc = as_numpy(included, "included")
    if g.ndim != 1:
        raise ValueError(f"`guesses` must be 1-D, got shape {tuple(g.shape)}")
    if inc.shape != g.shape:
        raise ValueError(
            f"`included` must have the shape of `guesses` {tuple(g.shape)}, got {tuple(inc.shape)}"
        )
    if g.dtype == np.bool_ or not np.isin(g, (-1, 0, 1)).all():
        raise ValueError("`guesses` must hold -1 (out), 0 (abstain) or +1 (in); use audit_guesses()")
    if inc.dtype != np.bool_:
        if not np.isin(inc, (0, 1)).all():
            raise ValueError("`included` must be bool or 0/1 (whether each canary was trained on)")
        inc = inc.astype(bool)
    g = g.astype(np.int8)
    num_correct = int(np.count_nonzero((g == 1) & inc) + np.count_nonzero((g == -1) & ~inc))
    return num_correct, int(np.count_nonzero(g))
