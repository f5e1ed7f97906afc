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
* :mod:`~memcallbacks.metrics.attacks`: attacks from reference (shadow) runs: LiRA (Carlini et al.,
  S&P 2022) and RMIA (Zarifzadeh, Liu and Shokri, ICML 2024), with an exact low-FPR report.
* :mod:`~memcallbacks.metrics.counterfactual`: counterfactual memorisation from subset trainings
  (Feldman & Zhang, NeurIPS 2020; Zhang et al., NeurIPS 2023) and Spearman rank correlation.
* :mod:`~memcallbacks.metrics.trajectory_mia`: the loss-trajectory attack (Liu et al., CCS 2022)
  on per-epoch probe losses, a cross-validated logistic regression.
* :mod:`~memcallbacks.metrics.sequence`: LM sequence memorisation: k-extractable rate (Carlini et
  al., ICLR 2023), Min-K% Prob (Shi et al., ICLR 2024), zlib ratio (Carlini et al., USENIX
  Security 2021), (n, p)-discoverable extraction (Hayes et al. 2024).
* :mod:`~memcallbacks.metrics.classes`: ``torchmetrics.Metric`` classes over the functions above
  (:class:`LossThresholdMIA`, :class:`LossGap`), states synced across ranks; imported (with
  torchmetrics) on first use.

Every function takes torch tensors or numpy arrays and returns floats, numpy arrays or
frozen dataclasses.
"""

from typing import TYPE_CHECKING

from memcallbacks.metrics.attacks import (
    AttackReport,
    attack_report,
    lira_scores,
    logit_confidence,
    rmia_scores,
)
from memcallbacks.metrics.audit import audit_guesses, count_correct, epsilon_lower_bound, p_value_audit
from memcallbacks.metrics.counterfactual import (
    CounterfactualResult,
    SpearmanResult,
    counterfactual_memorisation,
    spearman,
)
from memcallbacks.metrics.dynamics import (
    TrajectoryAccumulator,
    TrajectoryStatistics,
    memorisation_score,
    top_k,
    trajectory_statistics,
    unlearned_fraction,
    zlib_entropy,
)
from memcallbacks.metrics.exposure import (
    ExposureResult,
    SkewNormalFit,
    exposure_exact,
    exposure_extrapolated,
    exposure_from_rank,
    exposure_from_references,
    exposure_rank,
    exposure_rank_in_space,
    exposure_saturated,
    fit_skewnorm,
)
from memcallbacks.metrics.membership import (
    MembershipReport,
    calibrated_losses,
    loss_gap,
    loss_ratio,
    membership_inference,
    roc_curve,
    slice_aucs,
)
from memcallbacks.metrics.sequence import (
    exact_match_rate,
    extraction_probability,
    min_k_prob,
    suffix_sample_logprob,
    token_match_rate,
    zlib_ratio,
)
from memcallbacks.metrics.trajectory_mia import trajectory_attack, trajectory_attack_scores

__all__ = [
    "AttackReport",
    "CounterfactualResult",
    "ExposureResult",
    "LossGap",
    "LossThresholdMIA",
    "MembershipReport",
    "SkewNormalFit",
    "SpearmanResult",
    "TrajectoryAccumulator",
    "TrajectoryStatistics",
    "attack_report",
    "audit_guesses",
    "calibrated_losses",
    "count_correct",
    "counterfactual_memorisation",
    "epsilon_lower_bound",
    "exact_match_rate",
    "exposure_exact",
    "exposure_extrapolated",
    "exposure_from_rank",
    "exposure_from_references",
    "exposure_rank",
    "exposure_rank_in_space",
    "exposure_saturated",
    "extraction_probability",
    "fit_skewnorm",
    "lira_scores",
    "logit_confidence",
    "loss_gap",
    "loss_ratio",
    "membership_inference",
    "memorisation_score",
    "min_k_prob",
    "p_value_audit",
    "rmia_scores",
    "roc_curve",
    "slice_aucs",
    "spearman",
    "suffix_sample_logprob",
    "token_match_rate",
    "top_k",
    "trajectory_attack",
    "trajectory_attack_scores",
    "trajectory_statistics",
    "unlearned_fraction",
    "zlib_entropy",
    "zlib_ratio",
]

if TYPE_CHECKING:  # pragma: no cover - static names for type checkers
    from memcallbacks.metrics.classes import LossGap, LossThresholdMIA

_LAZY = {"LossGap": "memcallbacks.metrics.classes", "LossThresholdMIA": "memcallbacks.metrics.classes"}


def __getattr__(name: str) -> object:
    # the torchmetrics classes import torchmetrics: only when first used
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'memcallbacks.metrics' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
