"""Counterfactual memorisation from many trainings on random subsets, and rank correlation.

A sample is memorised when the model does well on it *only because it was trained on it*
(Feldman, "Does Learning Require Memorization? A Short Tale about a Long Tail", STOC 2020).
Feldman and Zhang ("What Neural Networks Memorize and Why: Discovering the Long Tail via
Influence Estimation", NeurIPS 2020) estimate it from ``R`` trainings, each on a random subset of
a pool: for pool sample ``i``,

    ``mem(i) = mean over runs that trained on i of its correctness
             - mean over runs that did not train on i of its correctness``.

Zhang et al. ("Counterfactual Memorization in Neural Language Models", NeurIPS 2023) apply the
same difference to a language model's per-token accuracy (or negative loss) of each sequence.
The per-sample performance can therefore be any number: 0/1 correctness, an accuracy in
``[0, 1]``, or minus a loss.

:func:`counterfactual_memorisation` computes the estimator for every sample at once (one
masked matrix reduction over runs x samples, no per-sample loop); :func:`spearman` is the rank
correlation used to compare it with the cheap signals a single run records (mean loss, learning
speed, forgetting events; Jiang et al., "Characterizing Structural Regularities of Labeled Data in
Overparameterized Models", ICML 2021, show learning speed tracks the consistency score).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from memcallbacks.utilities.validation import as_numpy, check_float_array

__all__ = ["CounterfactualResult", "SpearmanResult", "counterfactual_memorisation", "spearman"]


@dataclass(frozen=True, eq=False)
class CounterfactualResult:
    """Per-sample counterfactual memorisation; every array has shape ``[N]``.

    A sample in no run (``n_in == 0``) or in every run (``n_out == 0``) has no counterfactual:
    its ``mem`` is NaN (never 0) and it is counted in :attr:`num_never_in` /
    :attr:`num_never_out`.

    Attributes:
        mem: ``mean_in - mean_out``; NaN where either side has no run.
        se: standard error of ``mem``, ``sqrt(s_in^2 / n_in + s_out^2 / n_out)`` with the sample
            variances (ddof=1) of each side; NaN where a side has fewer than 2 runs.
        mean_in: mean performance over the runs that trained on the sample (NaN if none).
        mean_out: mean performance over the runs that did not (NaN if none).
        n_in: number of runs that trained on the sample, int64.
        n_out: number of runs that did not, int64.

    Example:
        >>> r = counterfactual_memorisation([[1, 0], [0, 0]], [[True, True], [False, True]])
        >>> r.mem.tolist(), r.n_in.tolist(), r.num_never_out
        ([1.0, nan], [1, 2], 1)
    """

    mem: NDArray[np.float64]
    se: NDArray[np.float64]
    mean_in: NDArray[np.float64]
    mean_out: NDArray[np.float64]
    n_in: NDArray[np.int64]
    n_out: NDArray[np.int64]

    @property
    def num_samples(self) -> int:
        """Number of pool samples ``N``."""
        return int(self.mem.shape[0])

    @property
    def num_never_in(self) -> int:
        """Samples no run trained on (``mem`` is NaN)."""
        return int((self.n_in == 0).sum())

    @property
    def num_never_out(self) -> int:
        """Samples every run trained on (``mem`` is NaN)."""
        return int((self.n_out == 0).sum())

    @property
    def num_undefined(self) -> int:
        """Samples whose ``mem`` is NaN (never in or never out of any run)."""
        return int(np.isnan(self.mem).sum())


@dataclass(frozen=True)
class SpearmanResult:
    """Spearman rank correlation over the pairs where both values are finite.

    Attributes:
        rho: the correlation in ``[-1, 1]``; NaN with fewer than 3 pairs or a constant side.
        p_value: two-sided p-value of ``rho == 0`` (scipy's t approximation); NaN with ``rho``.
        n: number of pairs used.
    """

    rho: float
    p_value: float
    n: int


def _performance(correct: Any) -> NDArray[np.float64]:
    array = as_numpy(correct, "correct")
    if array.dtype == np.bool_:
        array = array.astype(np.float64)
    return check_float_array(
        array,
        "correct",
        ndim=2,
        hint="; pass a [runs, samples] matrix of correctness (bool or 0/1), accuracy or minus a loss",
    )


def _inclusion(included: Any, shape: tuple[int, ...]) -> NDArray[np.bool_]:
    array = as_numpy(included, "included")
    if array.dtype != np.bool_:
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise TypeError(f"`included` must be bool (or 0/1), got dtype {array.dtype}")
        if not np.isin(array, (0, 1)).all():
            bad = array[~np.isin(array, (0, 1))].flat[0]
            raise ValueError(
                f"`included` must be bool or 0/1, got {bad.item()!r}; pass the runs' inclusion masks"
            )
        array = array.astype(bool)
    if array.shape != shape:
        raise ValueError(
            f"`included` must have the shape of `correct` {shape} (runs x samples), got {tuple(array.shape)}"
        )
    return array


def counterfactual_memorisation(correct: Any, included: Any) -> CounterfactualResult:
    """Feldman & Zhang's counterfactual memorisation of every pool sample from ``R`` subset trainings.

    ``mem(i) = mean(correct[r, i] for r with included[r, i]) - mean(correct[r, i] for r without)``
    (Feldman & Zhang, NeurIPS 2020, Eq. 3 estimated from random subsets; Zhang et al., NeurIPS
    2023 on a language model's per-token accuracy). Computed for all samples at once with masked
    sums over the ``[R, N]`` matrices.

    Args:
        correct: ``[R, N]`` performance of run ``r`` on pool sample ``i`` at the end of training:
            bool/0-1 correctness (classifiers), per-token accuracy or minus the loss (language
            models). Must be finite.
        included: ``[R, N]`` bool, True where run ``r`` trained on sample ``i``.

    Returns:
        A :class:`CounterfactualResult`. A sample never in or never out of any run gets NaN
        ``mem`` (and ``se``), counted in ``num_never_in`` / ``num_never_out``; ``se`` is also NaN
        where a side has a single run.

    Raises:
        ValueError: shapes that differ or are not 2-D, non-finite performance, an inclusion value
            other than 0/1.
        TypeError: non-numeric input.

    Example:
        >>> correct = [[1, 1, 0], [0, 1, 1], [1, 0, 1], [0, 1, 0]]    # 4 runs x 3 samples
        >>> included = [[1, 0, 1], [0, 1, 1], [1, 0, 0], [0, 1, 0]]
        >>> r = counterfactual_memorisation(correct, included)
        >>> r.mem.tolist(), r.n_in.tolist(), r.n_out.tolist()
        ([1.0, 0.5, 0.0], [2, 2, 2], [2, 2, 2])
        >>> r.se.round(4).tolist()
        [0.0, 0.5, 0.7071]
    """
    values = _performance(correct)
    inc = _inclusion(included, values.shape)
    n_runs = values.shape[0]
    n_in = inc.sum(axis=0, dtype=np.int64)
    n_out = n_runs - n_in
    w_in = inc.astype(np.float64)
    w_out = 1.0 - w_in
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_in = (values * w_in).sum(axis=0) / n_in
        mean_out = (values * w_out).sum(axis=0) / n_out
        # centred sums of squares (no cancellation), each side's own mean
        ss_in = (np.square(values - mean_in) * w_in).sum(axis=0)
        ss_out = (np.square(values - mean_out) * w_out).sum(axis=0)
        var_in = np.where(n_in > 1, ss_in / (n_in - 1), np.nan)
        var_out = np.where(n_out > 1, ss_out / (n_out - 1), np.nan)
        se = np.sqrt(var_in / n_in + var_out / n_out)
    mean_in = np.where(n_in > 0, mean_in, np.nan)
    mean_out = np.where(n_out > 0, mean_out, np.nan)
    mem = mean_in - mean_out
    return CounterfactualResult(
        mem=mem,
        se=np.where(np.isnan(mem), np.nan, se),
        mean_in=mean_in,
        mean_out=mean_out,
        n_in=n_in,
        n_out=n_out,
    )


def spearman(a: Any, b: Any) -> SpearmanResult:
    """Spearman rank correlation of ``a`` and ``b``, ignoring every pair where either is NaN.

    Ties get average ranks (``scipy.stats.spearmanr``). Used to ask how well an in-run signal
    (mean loss, learning speed; Jiang et al., ICML 2021) ranks samples as the counterfactual
    memorisation of Feldman & Zhang (NeurIPS 2020) does.

    Args:
        a: ``[N]`` numbers; NaN marks a missing value.
        b: ``[N]`` numbers; NaN marks a missing value.

    Returns:
        A :class:`SpearmanResult`; ``rho`` and ``p_value`` are NaN with fewer than 3 complete pairs
        or when one side is constant over them (no ranking to compare), never 0.

    Raises:
        ValueError: ``a`` and ``b`` differ in shape or are not 1-D; infinities.
        TypeError: non-numeric input.

    Example:
        >>> result = spearman([1.0, 2.0, 3.0, np.nan], [10.0, 30.0, 20.0, 5.0])
        >>> round(result.rho, 6), result.n
        (0.5, 3)
    """
    x = check_float_array(a, "a", allow_nan=True, allow_empty=True)
    y = check_float_array(b, "b", allow_nan=True, allow_empty=True)
    if x.shape != y.shape:
        raise ValueError(f"`a` and `b` must have the same shape, got {x.shape} and {y.shape}")
    keep = ~(np.isnan(x) | np.isnan(y))
    n = int(keep.sum())
    x, y = x[keep], y[keep]
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return SpearmanResult(rho=float("nan"), p_value=float("nan"), n=n)
    from scipy.stats import spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = spearmanr(x, y)
    return SpearmanResult(rho=float(result.statistic), p_value=float(result.pvalue), n=n)
