"""Pure memorisation metrics on tensors and arrays; no Lightning import.

* :mod:`~memcallbacks.metrics.exposure`: canary exposure, exact and extrapolated
  (Carlini et al., "The Secret Sharer", USENIX Security 2019).
* :mod:`~memcallbacks.metrics.membership`: loss-threshold membership inference (Yeom et al.
  2018) with exact ROC and low-FPR TPR (Carlini et al., "Membership Inference Attacks From
  First Principles", S&P 2022).
* :mod:`~memcallbacks.metrics.dynamics`: per-sample training dynamics (Toneva et al. 2019
  forgetting events; Swayamdipta et al. 2020 Dataset Cartography).
* :mod:`~memcallbacks.metrics.audit`: one-run privacy audit (Steinke, Nasr and Jagielski,
  NeurIPS 2023).

Every function takes torch tensors or numpy arrays and returns floats, numpy arrays or
frozen dataclasses.
"""

from memcallbacks.metrics.audit import audit_guesses, count_correct, epsilon_lower_bound, p_value_audit
from memcallbacks.metrics.dynamics import (
    TrajectoryAccumulator,
    TrajectoryStatistics,
    memorisation_score,
    top_k,
    trajectory_statistics,
)
from memcallbacks.metrics.exposure import (
    SkewNormalFit,
    exposure_exact,
    exposure_extrapolated,
    exposure_from_rank,
    exposure_rank,
    exposure_saturated,
    fit_skewnorm,
)
from memcallbacks.metrics.membership import MembershipReport, loss_gap, membership_inference, roc_curve

__all__ = [
    "MembershipReport",
    "SkewNormalFit",
    "TrajectoryAccumulator",
    "TrajectoryStatistics",
    "audit_guesses",
    "count_correct",
    "epsilon_lower_bound",
    "exposure_exact",
    "exposure_extrapolated",
    "exposure_from_rank",
    "exposure_rank",
    "exposure_saturated",
    "fit_skewnorm",
    "loss_gap",
    "membership_inference",
    "memorisation_score",
    "p_value_audit",
    "roc_curve",
    "top_k",
    "trajectory_statistics",
]
