"""Canary exposure, exact (from a rank) and extrapolated (from a skew-normal fit).

Implements the exposure metric of Carlini, Liu, Erlingsson, Kos and Song, "The Secret
Sharer: Evaluating and Testing Unintended Memorization in Neural Networks", USENIX
Security 2019. For a canary whose secret ``s`` is drawn from a randomness space ``R``
(Definition 4)::

    exposure(s) = log2 |R| - log2 rank(s)

where ``rank(s)`` is the position of ``s`` among all candidates sorted by the model's
log-perplexity, lowest (most likely) first. Exposure is in bits, from 0 (the model prefers
the canary to no other candidate) to ``log2 |R|`` (the model prefers it to every other
candidate).

* :func:`exposure_exact` scores the canary against a set of reference candidates.
  **Ties count against the canary**: ``rank = 1 + #(reference scores <= canary score)``, as
  TF Privacy does when it sorts a reference before a tied secret. A model that scores every
  candidate alike therefore shows exposure 0, not the maximum.
* :func:`exposure_rank_in_space` ranks a canary among the scores of the whole space (the
  canary's own score included), the exact rank of Definition 4, with the same tie rule.
* :func:`exposure_extrapolated` follows Sec. 4.3 of the paper: fit a skew-normal
  distribution to the log-perplexities of a random sample of candidates and report
  ``-log2 CDF(score)``. It is computed from an accurate log-CDF, so a canary far in the
  light tail of the fit gets a large, finite value rather than ``inf``. An extrapolation
  knows nothing of the space's size and can exceed ``log2 |R|``; pass ``space_size`` to
  cap it and :func:`exposure_saturated` to count the canaries that hit the cap.
* :func:`exposure_from_references` is what a monitor reports from a reference sample: the
  capped extrapolation, the degenerate case (references all alike) decided by the tie rule,
  never more than a proven rank lower bound allows, and NaN for a non-finite score.
  :class:`ExposureResult` holds one evaluation's per-canary numbers.

Scores are log-perplexities (sum of token negative log-likelihoods, natural log): lower
means more likely.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import special, stats

from memcallbacks.utilities.validation import check_float_array, check_real, is_int

__all__ = [
    "ExposureResult",
    "SkewNormalFit",
    "exposure_exact",
    "exposure_extrapolated",
    "exposure_from_rank",
    "exposure_from_references",
    "exposure_rank",
    "exposure_rank_in_space",
    "exposure_saturated",
    "fit_skewnorm",
    "mean_by_repetition",
]


def _check_space_size(space_size: Any, name: str = "space_size") -> float:
    """Validates a randomness-space size (>= 1, finite) and returns ``log2`` of it."""
    if not is_int(space_size):  # huge Python ints must stay exact: not through float()
        check_real(name, space_size, allow_nan=True, allow_inf=True, hint="the number of possible secrets")
    value: Any = space_size
    if not value >= 1 or (isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(
            f"`{name}` must be a finite number >= 1 (the number of possible secrets), got {space_size!r}"
        )
    # math.log2 is exact for Python ints of any size (e.g. 26**30)
    return math.log2(int(space_size)) if is_int(space_size) else math.log2(float(space_size))


# --------------------------------------------------------------------------------------
# Exact exposure (rank based)
# --------------------------------------------------------------------------------------
def exposure_from_rank(rank: Any, space_size: Any) -> float | NDArray[np.float64]:
    """Exposure in bits from a rank: ``log2(space_size) - log2(rank)`` (Definition 4).

    Args:
        rank: rank(s) of the canary among all candidates, 1 = most likely. A number, or an
            array / tensor of ranks (each >= 1).
        space_size: size of the randomness space ``|R|`` (a number >= 1; a Python int of
            any size is exact).

    Returns:
        A float when ``rank`` is a scalar, else a float64 array of the same shape.

    Raises:
        ValueError: if a rank is below 1, above ``space_size`` (no candidate can rank below
            the whole space) or not finite, or ``space_size`` is below 1.
        TypeError: if ``space_size`` is not a number or ``rank`` not numeric.

    Example:
        >>> exposure_from_rank(1, 1024)
        10.0
        >>> exposure_from_rank([1, 2, 1024], 1024)
        array([10.,  9.,  0.])
    """
    log2_space = _check_space_size(space_size)
    ranks = check_float_array(rank, "rank", ndim=tuple(range(0, 33)), allow_empty=True)
    if (ranks < 1).any():
        bad = ranks[ranks < 1].flat[0]
        raise ValueError(f"`rank` must be >= 1 (rank 1 = most likely candidate), got {bad:g}")
    above = np.log2(ranks) > log2_space * (1 + 1e-12)
    if above.any():
        bad = ranks[above].flat[0]
        raise ValueError(
            f"`rank` must be <= `space_size` (a rank counts candidates of the space), got rank {bad:g} for "
            f"space_size={space_size!r}; pass the size of the space the rank was taken in"
        )
    result = np.maximum(log2_space - np.log2(ranks), 0.0)
    if result.ndim == 0:
        return float(result)
    return np.asarray(result, dtype=np.float64)


def exposure_rank(canary_scores: Any, reference_scores: Any) -> NDArray[np.int64]:
    """Rank of each canary among the reference candidates, ties counted against it.

    ``rank = 1 + #(reference scores <= canary score)``: rank 1 means the model finds the
    canary strictly more likely (lower log-perplexity) than every reference.

    Args:
        canary_scores: log-perplexity of each canary, shape ``[C]`` (a scalar is one canary).
        reference_scores: log-perplexity of each reference candidate, shape ``[R]``, R >= 1.

    Returns:
        int64 array of shape ``[C]`` with values in ``1..R+1``.

    Raises:
        ValueError: if either input is empty, not 1-D, or holds NaN/inf.
        TypeError: if an input is not numeric.

    Example:
        >>> exposure_rank([0.5, 2.0, 9.0], [1.0, 2.0, 3.0])
        array([1, 3, 4])
    """
    canaries = check_float_array(canary_scores, "canary_scores", hint="; pass one log-perplexity per canary")
    references = check_float_array(
        reference_scores,
        "reference_scores",
        hint="; pass at least one reference candidate's score",
    )
    return _ranks(canaries, references)


def _count_at_or_below(scores: NDArray[np.float64], canaries: NDArray[np.float64]) -> NDArray[np.int64]:
    """``#(scores <= c)`` for each canary score ``c``: the one tie rule (ties count against the canary)."""
    return np.searchsorted(np.sort(scores), canaries, side="right").astype(np.int64)


def _ranks(canaries: NDArray[np.float64], references: NDArray[np.float64]) -> NDArray[np.int64]:
    # the references exclude the canary: it is ranked behind every reference it ties with
    return _count_at_or_below(references, canaries) + 1


def exposure_rank_in_space(canary_scores: Any, space_scores: Any) -> NDArray[np.int64]:
    """Exact rank of each canary among the scores of every candidate of the space (Definition 4).

    ``space_scores`` holds the whole randomness space, the canaries' own secrets included, so
    ``rank = #(space scores <= canary score)``: the canary itself plus every candidate that
    ties with it or is more likely (ties count against the canary, as in :func:`exposure_rank`).

    Args:
        canary_scores: log-perplexity of each canary, shape ``[C]``.
        space_scores: log-perplexity of every candidate of ``R``, shape ``[|R|]``.

    Returns:
        int64 array ``[C]`` with values in ``1..|R|`` (for canaries whose score is in ``space_scores``).

    Raises:
        ValueError: an input is empty, not 1-D or holds NaN/inf, or a canary's score is below
            every candidate's (it is not a candidate of this space).

    Example:
        >>> exposure_rank_in_space([1.0, 2.0], [3.0, 1.0, 2.0, 2.0])
        array([1, 3])
    """
    canaries = check_float_array(canary_scores, "canary_scores", hint="; pass one log-perplexity per canary")
    space = check_float_array(space_scores, "space_scores", hint="; pass the score of every candidate")
    ranks = _count_at_or_below(space, canaries)
    if (ranks < 1).any():
        raise ValueError(
            "`canary_scores` holds a score below every candidate's in `space_scores`; the space must include "
            "the canaries' own secrets (use exposure_rank() to rank against references that exclude them)"
        )
    return ranks


def exposure_exact(
    canary_scores: Any, reference_scores: Any, *, space_size: Any = None
) -> NDArray[np.float64]:
    """Rank-based exposure of each canary (Carlini et al. 2019, Definition 4).

    ``exposure = log2(space_size) - log2(rank)`` with ``rank`` from :func:`exposure_rank`
    (ties count against the canary). References are sorted once and the canaries located
    by binary search, so 1,000 canaries against 10^6 references take well under a second.

    Args:
        canary_scores: log-perplexity of each canary, shape ``[C]``; lower = more likely.
        reference_scores: log-perplexity of each reference candidate, shape ``[R]``. For
            the exact metric these are all other candidates of the randomness space.
        space_size: ``|R|``, the number of candidates the rank is taken among. Defaults to
            ``len(reference_scores) + 1`` (the references plus the canary), so exposure
            runs from 0 to ``log2(R + 1)``. ``space_size=len(reference_scores)`` reproduces
            TF Privacy's convention (the worst canary then gets a slightly negative value).

    Returns:
        float64 array of shape ``[C]``, in bits.

    Raises:
        ValueError: if an input is empty, not 1-D or holds NaN/inf, or ``space_size < 1``.
        TypeError: if an input is not numeric.

    Example:
        >>> exposure_exact([0.5, 2.0, 9.0], [1.0, 2.0, 3.0])
        array([2.       , 0.4150375, 0.       ])
    """
    log2_space = None if space_size is None else _check_space_size(space_size)
    canaries = check_float_array(canary_scores, "canary_scores", hint="; pass one log-perplexity per canary")
    references = check_float_array(
        reference_scores,
        "reference_scores",
        hint="; pass at least one reference candidate's score",
    )
    if log2_space is None:
        log2_space = math.log2(references.size + 1)
    return log2_space - np.log2(_ranks(canaries, references).astype(np.float64))


def exposure_saturated(values: Any, space_size: Any) -> int:
    """Counts the exposures at or above ``log2(space_size)``, the most a secret can have.

    Use it on the output of :func:`exposure_extrapolated` (capped or not) to report how
    many canaries the extrapolation puts beyond what the randomness space can express.

    Args:
        values: exposures in bits, shape ``[C]``.
        space_size: size of the randomness space ``|R|`` (>= 1).

    Returns:
        The number of values ``>= log2(space_size)``.

    Raises:
        ValueError: if ``values`` is not 1-D or holds NaN, or ``space_size < 1``.

    Example:
        >>> exposure_saturated([3.0, 20.0, 25.0], 10**6)  # log2(10**6) = 19.93
        2
    """
    log2_space = _check_space_size(space_size)
    array = check_float_array(values, "values", allow_empty=True)
    # a capped value is exactly log2_space; allow for it having been rounded on the way
    return int(np.count_nonzero(array >= log2_space * (1 - 1e-12)))


# --------------------------------------------------------------------------------------
# Extrapolated exposure (skew-normal fit, Sec. 4.3)
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SkewNormalFit:
    """Parameters of a skew-normal fit, in scipy's convention (``scipy.stats.skewnorm``).

    Attributes:
        a: shape (skewness) parameter; 0 is a normal distribution.
        loc: location.
        scale: scale, > 0.
    """

    a: float
    loc: float
    scale: float

    def __post_init__(self) -> None:
        for name in ("a", "loc", "scale"):
            object.__setattr__(self, name, check_real(name, getattr(self, name)))
        if self.scale <= 0:
            raise ValueError(f"`scale` must be > 0, got {self.scale!r}")

    def log_cdf(self, x: Any) -> NDArray[np.float64]:
        """Natural log of the fitted CDF at ``x``, accurate far into both tails.

        Example:
            >>> round(float(SkewNormalFit(a=0.0, loc=0.0, scale=1.0).log_cdf(0.0)[0]), 6)
            -0.693147
        """
        z = (check_float_array(x, "x") - self.loc) / self.scale
        return _skewnorm_log_cdf(z, self.a)


def fit_skewnorm(reference_scores: Any) -> SkewNormalFit:
    """Fits a skew-normal distribution to reference scores by maximum likelihood.

    Uses ``scipy.stats.skewnorm.fit`` (Carlini et al. 2019, Sec. 4.3 fit the
    log-perplexities of a random sample of candidates this way).

    Args:
        reference_scores: log-perplexity of each reference candidate, shape ``[R]``,
            at least 3 values that are not all equal.

    Returns:
        A :class:`SkewNormalFit`.

    Raises:
        ValueError: if there are fewer than 3 references, they are all equal, or they hold
            NaN/inf.

    Example:
        >>> import numpy as np
        >>> scores = np.random.default_rng(0).normal(50.0, 2.0, size=2000)
        >>> fit = fit_skewnorm(scores)
        >>> abs(fit.a) < 1.0, round(fit.scale, 0)
        (True, 2.0)
    """
    references = check_float_array(
        reference_scores, "reference_scores", hint="; pass at least 3 reference candidates' scores"
    )
    if references.size < 3:
        raise ValueError(
            f"`reference_scores` must hold at least 3 values to fit a skew-normal, got {references.size}"
        )
    if np.ptp(references) == 0:
        raise ValueError(
            f"`reference_scores` are all equal ({references[0]:g}); a skew-normal cannot be fitted. "
            "The model scores every candidate alike, so exposure is 0"
        )
    a, loc, scale = stats.skewnorm.fit(references)
    return SkewNormalFit(a=float(a), loc=float(loc), scale=float(scale))


# Gauss-Laguerre nodes for the tail integral; 64 nodes are accurate to ~1e-10 relative on
# the (smooth, log-concave) integrands met below.
_LAGUERRE_NODES, _LAGUERRE_WEIGHTS = np.polynomial.laguerre.laggauss(64)
_LOG_LAGUERRE_WEIGHTS = np.log(_LAGUERRE_WEIGHTS)
_LOG_2 = math.log(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _log_integrand(t: np.ndarray, a: float) -> np.ndarray:
    """log of the skew-normal density ``2 phi(t) Phi(a t)``."""
    return _LOG_2 - 0.5 * t * t - _LOG_SQRT_2PI + special.log_ndtr(a * t)


def _skewnorm_log_cdf(z: NDArray[np.float64], a: float) -> NDArray[np.float64]:
    """``log F(z; a)`` for the standard skew-normal, ``F(z) = int_{-inf}^z 2 phi(t) Phi(a t) dt``.

    Away from the lower tail the closed form ``F = Phi(z) - 2 T(z, a)`` (Owen's T) is used.
    Where it cancels (``a > 0``: ``Phi(z)`` and ``2T`` agree to many digits) or underflows,
    the integral is done in log space: with ``t = z - u``, ``g(u) = log(2 phi(z-u) Phi(a(z-u)))``
    is concave in ``u`` and decreasing at 0 (rate ``lam = -g'(0)``), so
    ``F = exp(g(0)) / lam * int_0^inf e^{-s} exp(g(s/lam) - g(0) + s) ds``
    is computed by Gauss-Laguerre quadrature, the last factor being smooth and bounded by 1.
    """
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    with np.errstate(all="ignore"):
        direct = special.ndtr(z) - 2.0 * special.owens_t(z, a)
        # relative rounding error of the closed form is about 1e-16 * Phi(z) / F
        reliable = (direct > 1e-280) & (direct > 1e-7 * special.ndtr(z))
        out[reliable] = np.log(direct[reliable])
        # near F = 1, log1p of the survival function Phi(-z) + 2 T(z, a) keeps tiny values accurate
        upper = reliable & (direct > 0.5)
        survival = special.ndtr(-z[upper]) + 2.0 * special.owens_t(z[upper], a)
        out[upper] = np.log1p(-np.clip(survival, 0.0, 0.5))
    tail = ~reliable
    if tail.any():
        zt = z[tail]
        # g'(0) = z - a * phi(a z) / Phi(a z); the inverse Mills ratio computed in log space
        az = a * zt
        mills = np.exp(-0.5 * az * az - _LOG_SQRT_2PI - special.log_ndtr(az))
        lam = a * mills - zt
        # the tail branch is only reached well left of the mode, where g'(0) < 0; guard anyway
        lam = np.maximum(lam, 1e-3)
        g0 = _log_integrand(zt, a)
        u = _LAGUERRE_NODES[None, :] / lam[:, None]
        h = _log_integrand(zt[:, None] - u, a) - g0[:, None] + _LAGUERRE_NODES[None, :]
        out[tail] = g0 - np.log(lam) + special.logsumexp(h + _LOG_LAGUERRE_WEIGHTS[None, :], axis=1)
    return np.minimum(out, 0.0)


def exposure_extrapolated(
    canary_scores: Any,
    reference_scores: Any = None,
    *,
    fit: SkewNormalFit | None = None,
    space_size: Any = None,
) -> NDArray[np.float64]:
    """Extrapolated exposure ``-log2 CDF(score)`` under a skew-normal fit (Sec. 4.3).

    The skew-normal is fitted to ``reference_scores`` (or given as ``fit``), and each
    canary's exposure is minus the log2 of the fraction of the fitted distribution that
    lies at or below the canary's score, an estimate of ``log2 |R| - log2 rank`` that needs
    no enumeration of the space. The log-CDF is computed accurately far into the light
    tail, so a strongly memorised canary gets a large, finite value.

    Args:
        canary_scores: log-perplexity of each canary, shape ``[C]``; lower = more likely.
        reference_scores: log-perplexities of a random sample of candidates, shape ``[R]``.
            Give exactly one of ``reference_scores`` and ``fit``.
        fit: a :class:`SkewNormalFit` from :func:`fit_skewnorm`, to fit once and reuse.
        space_size: ``|R|``; when given, values are capped at ``log2(space_size)`` (count
            the capped ones with :func:`exposure_saturated`).

    Returns:
        float64 array of shape ``[C]``, in bits, ``>= 0``.

    Raises:
        ValueError: if neither or both of ``reference_scores`` and ``fit`` are given, an
            input is empty, not 1-D or holds NaN/inf, or ``space_size < 1``.
        TypeError: if ``fit`` is not a :class:`SkewNormalFit`.

    Example:
        >>> fit = SkewNormalFit(a=0.0, loc=0.0, scale=1.0)  # a standard normal
        >>> exposure_extrapolated([0.0, -40.0], fit=fit).round(3).tolist()
        [1.0, 1160.805]
        >>> exposure_extrapolated([0.0, -40.0], fit=fit, space_size=2**20)
        array([ 1., 20.])
    """
    if (reference_scores is None) == (fit is None):
        given = "both" if fit is not None else "neither"
        raise ValueError(
            f"exactly one of `reference_scores` and `fit` must be given, got {given}; "
            "pass reference candidates' scores, or a SkewNormalFit from fit_skewnorm()"
        )
    log2_space = None if space_size is None else _check_space_size(space_size)
    canaries = check_float_array(canary_scores, "canary_scores", hint="; pass one log-perplexity per canary")
    if fit is None:
        fit = fit_skewnorm(reference_scores)
    elif not isinstance(fit, SkewNormalFit):
        raise TypeError(f"`fit` must be a SkewNormalFit (from fit_skewnorm()), got {type(fit).__name__}")
    log_cdf = _skewnorm_log_cdf((canaries - fit.loc) / fit.scale, fit.a)
    exposure = -log_cdf / _LOG_2 + 0.0  # + 0.0 turns -0.0 into 0.0
    if log2_space is not None:
        exposure = np.minimum(exposure, log2_space)
    return exposure


# --------------------------------------------------------------------------------------
# What a monitor reports: references, bounds, non-finite scores
# --------------------------------------------------------------------------------------
def exposure_from_references(
    canary_scores: Any,
    reference_scores: Any,
    *,
    space_size: Any,
    rank_lower_bound: Any = None,
) -> NDArray[np.float64]:
    """Exposure of each canary from a random sample of references, as a monitor reports it.

    The extrapolated exposure of :func:`exposure_extrapolated` (Carlini et al. 2019,
    Sec. 4.3), capped at ``log2 |R|``, with three rules on top:

    * **Degenerate references**: when every reference has the same score (a model at
      initialisation or collapsed), no skew-normal can be fitted; by the tie rule a canary
      scoring the same (or worse) has exposure 0, and a canary strictly below all of them
      ``log2 |R|`` (only it beats the whole sample).
    * **Proven bounds**: ``rank_lower_bound[i]`` (a rank in ``R`` known to be at most the
      canary's true rank, e.g. from a budgeted best-first search or from the references it
      does not beat) caps the value at ``log2 |R| - log2 rank_lower_bound``, so an
      extrapolation never claims more than what is proven.
    * **Non-finite scores**: a canary whose score is NaN/inf gets NaN; when any reference's
      score is non-finite (a diverged model) every canary gets NaN. Never a value that
      reads as safe.

    Args:
        canary_scores: log-perplexity of each canary, ``[C]`` (NaN/inf allowed).
        reference_scores: log-perplexities of the sampled candidates, ``[R]`` (NaN/inf allowed).
        space_size: ``|R|`` (>= 1).
        rank_lower_bound: optional ``[C]`` ranks (>= 1, NaN for none) bounding each canary's rank
            in ``R`` from below.

    Returns:
        float64 array ``[C]`` in bits, in ``[0, log2 |R|]`` or NaN.

    Raises:
        ValueError: an input is empty or not 1-D, or ``space_size < 1``.

    Example:
        >>> exposure_from_references([1.0, 5.0], [5.0] * 100, space_size=1024)
        array([10.,  0.])
        >>> exposure_from_references([float("nan")], [1.0, 2.0, 3.0], space_size=8)
        array([nan])
    """
    log2_space = _check_space_size(space_size)
    canaries = check_float_array(canary_scores, "canary_scores", allow_nan=True, allow_inf=True)
    references = check_float_array(reference_scores, "reference_scores", allow_nan=True, allow_inf=True)
    out = np.full(canaries.shape, np.nan)
    ok = np.isfinite(canaries)
    if not np.isfinite(references).all() or not ok.any():
        return out
    if np.ptp(references) == 0:  # every candidate alike: the tie rule decides
        beats_all = canaries[ok] < references.min()
        out[ok] = np.where(beats_all, log2_space, 0.0)
    else:
        out[ok] = exposure_extrapolated(canaries[ok], fit=fit_skewnorm(references), space_size=space_size)
    if rank_lower_bound is not None:
        bound = check_float_array(rank_lower_bound, "rank_lower_bound", allow_nan=True)
        if bound.shape != canaries.shape:
            raise ValueError(
                f"`rank_lower_bound` must have one rank per canary ({canaries.size}), got shape {bound.shape}"
            )
        cap = log2_space - np.log2(np.where(np.isnan(bound), 1.0, np.maximum(bound, 1.0)))
        out = np.minimum(out, np.maximum(cap, 0.0))  # NaN stays NaN
    return out


@dataclass(frozen=True)
class ExposureResult:
    """One evaluation of the canaries: per-canary exposure, ranks and scores.

    Attributes:
        exposure: ``[C]`` bits in ``[0, log2 |R|]``; NaN where a score was not finite.
        rank: ``[C]`` rank of each canary in the whole space ``R`` (1 = the model's favourite,
            ties against the canary): exact where ``rank_exact``, else a proven lower bound
            (the true rank is at least this); NaN where a score was not finite.
        rank_exact: ``[C]`` bool, whether ``rank`` is exact.
        log_perplexity: ``[C]`` the canaries' scores (natural-log NLL of the secret tokens).
        space_size: ``|R|``.
        method: the strategy that produced it (``"exact_trie"``, ``"hybrid"``, ...).
        reference_rank: ``[C]`` rank among the sampled references (``1 + #(references <=
            score)``, 1..references+1), or None when no references were scored.
        reference_scores: the scores the ranks were taken against (references, or the whole
            space), or None.
        nonfinite: how many scores of this evaluation (canaries and candidates) were NaN/inf.

    Example:
        >>> r = ExposureResult(exposure=np.array([10.0, 0.0]), rank=np.array([1.0, 1024.0]),
        ...                    rank_exact=np.array([True, True]), log_perplexity=np.array([1.0, 9.0]),
        ...                    space_size=1024, method="exact_list")
        >>> r.saturated, r.rank_min
        (1, 1.0)
    """

    exposure: NDArray[np.float64]
    rank: NDArray[np.float64]
    rank_exact: NDArray[np.bool_]
    log_perplexity: NDArray[np.float64]
    space_size: int
    method: str
    reference_rank: NDArray[np.float64] | None = None
    reference_scores: NDArray[np.float64] | None = field(default=None, repr=False)
    nonfinite: int = 0

    @property
    def saturated(self) -> int:
        """Canaries at the cap ``log2 |R|`` (NaN exposures are not counted)."""
        values = self.exposure[np.isfinite(self.exposure)]
        return exposure_saturated(values, self.space_size)

    @property
    def rank_min(self) -> float:
        """Best canary rank in ``R``; NaN when any canary's score was not finite."""
        return float(np.min(self.rank)) if self.rank.size else math.nan


def mean_by_repetition(exposure: Any, repetitions: Any) -> dict[int, float]:
    """Mean exposure of the canaries inserted each number of times (NaN stays NaN: never a safe value).

    The per-insertion-count view of Carlini et al. 2019 (Fig. 1: exposure grows with the count).

    Args:
        exposure: one evaluation's exposures ``[C]``.
        repetitions: each canary's insertion count ``[C]``.

    Example:
        >>> mean_by_repetition([1.0, 3.0, 10.0], [1, 1, 8])
        {1: 2.0, 8: 10.0}
    """
    values, reps = np.asarray(exposure, dtype=np.float64), np.asarray(repetitions)
    return {int(r): float(values[reps == r].mean()) for r in sorted(set(reps.tolist()))}
