"""How a canary's exposure is computed: one small interface, four strategies, one registry.

Exposure (Carlini, Liu, Erlingsson, Kos and Song, "The Secret Sharer", USENIX Security
2019, Def. 4) needs the canary's rank among every candidate of the randomness space ``R``.
The strategies differ in how they get it:

=================  ==========================================================================
``exact_list``     score every candidate (batched forward passes, or shared-prefix steps for an
                   :class:`~memcallbacks.lm.scoring.IncrementalLM`) and rank the canaries among them
``exact_trie``     the same, scoring the space as a trie of single-token characters
                   (:func:`~memcallbacks.lm.scoring.score_space_trie`)
``extrapolated``   fit a skew-normal to the scores of sampled references (Sec. 4.3), capped at
                   ``log2|R|`` and at what the references prove
``hybrid``         best-first search (:func:`~memcallbacks.lm.best_first.ranks_best_first`, Sec. 8)
                   for exact ranks of the exposed canaries within an expansion budget; the
                   others are extrapolated, never above what the budget proves
=================  ==========================================================================

Each is an :class:`ExposureStrategy` whose ``compute(module, canaries, config, references)``
returns a :class:`~memcallbacks.metrics.exposure.ExposureResult`; :data:`EXPOSURE_STRATEGIES`
maps names to instances (register your own there), and :func:`resolve_exposure_method` turns
``"auto"``/``"exact"`` into one of them for a module. Rank and exposure maths live in
:mod:`memcallbacks.metrics.exposure`; scoring in :mod:`memcallbacks.lm.scoring`. No Lightning import.
"""

from __future__ import annotations

import abc
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from memcallbacks.data.canaries import CanarySet
from memcallbacks.lm.best_first import ranks_best_first
from memcallbacks.lm.hf import why_not_incremental
from memcallbacks.lm.scoring import (
    ScoreFn,
    is_incremental,
    score_sequences,
    score_shared_prefix,
    score_space_trie,
)
from memcallbacks.metrics.exposure import (
    ExposureResult,
    exposure_from_rank,
    exposure_from_references,
    exposure_rank,
    exposure_rank_in_space,
)

__all__ = [
    "EXPOSURE_STRATEGIES",
    "ExactList",
    "ExactTrie",
    "ExposureConfig",
    "ExposureStrategy",
    "Extrapolated",
    "Hybrid",
    "exact_unavailable_reason",
    "resolve_exposure_method",
    "score_candidates",
]


@dataclass(frozen=True)
class ExposureConfig:
    """Scoring options shared by the strategies.

    Attributes:
        score_fn: ``score_fn(module, token_ids, target_mask) -> Tensor[B]``; None for the default
            log-perplexity (and the shared-prefix fast paths on an ``IncrementalLM``).
        batch_size: candidates per forward pass.
        max_exact: the largest space scored exactly.
        max_expansions: best-first node-expansion budget per evaluation (shared by the canaries).
        progress: progress bar (None: when slow and stdout is a terminal).
    """

    score_fn: ScoreFn | None = None
    batch_size: int = 1024
    max_exact: int = 1_000_000
    max_expansions: int = 100_000
    progress: bool | None = None


def score_candidates(
    module: Any, canaries: CanarySet, secrets: Sequence[str], config: ExposureConfig
) -> np.ndarray:
    """Log-perplexity of each candidate as it is tokenised inside the canary text.

    Every candidate's tokens come from :meth:`CanarySet.candidate_sequences` (the whole text
    tokenised, so subword merges are those of the training text), scored from the shared
    context on. Candidates whose scored spans have the same length go through the
    shared-prefix path together when the module is an ``IncrementalLM``; otherwise batched
    forward passes (spans of any length).

    Returns:
        float64 array ``[len(secrets)]``.
    """
    sequences, context = canaries.candidate_sequences(secrets)
    if config.score_fn is None and is_incremental(module) and sequences:
        out = np.empty(len(sequences), dtype=np.float64)
        prefix = sequences[0][:context]
        by_length: dict[int, list[int]] = {}
        for i, seq in enumerate(sequences):
            by_length.setdefault(len(seq), []).append(i)
        for members in by_length.values():
            spans = np.array([sequences[i][context:] for i in members], dtype=np.int64)
            out[members] = score_shared_prefix(
                module, prefix, spans, batch_size=max(config.batch_size, 4096), progress=config.progress
            )
        return out
    return score_sequences(
        module,
        sequences,
        context,
        score_fn=config.score_fn,
        batch_size=config.batch_size,
        progress=config.progress,
    )


def _walks_the_trie(module: Any, canaries: CanarySet, config: ExposureConfig) -> bool:
    """Whether the secret space can be walked as a trie: an incremental module, no custom score
    function, and secrets that tokenise character by character in context."""
    return config.score_fn is None and is_incremental(module) and canaries.char_token_ids() is not None


class ExposureStrategy(abc.ABC):
    """One way of computing the canaries' exposure (see the module docstring).

    Subclasses set ``name`` (the registry key and the ``method`` logged) and
    ``needs_references``, and implement :meth:`compute`; :meth:`supports` says whether the
    strategy can run on a module and space.
    """

    name: ClassVar[str]
    needs_references: ClassVar[bool] = False

    def supports(self, module: Any, canaries: CanarySet, config: ExposureConfig) -> bool:
        """Whether this strategy can run on ``module`` for this space and config."""
        return True

    @abc.abstractmethod
    def compute(
        self,
        module: Any,
        canaries: CanarySet,
        config: ExposureConfig,
        references: Sequence[str] | None = None,
    ) -> ExposureResult:
        """Scores the canaries now and returns their exposure."""


def _exact_result(name: str, canaries: CanarySet, all_scores: np.ndarray) -> ExposureResult:
    canary_scores = all_scores[canaries.candidate_index_array()]
    n = len(canaries)
    nonfinite = int(np.count_nonzero(~np.isfinite(all_scores)))
    if nonfinite:  # a diverged model: no rank can be trusted, and no value may read as safe
        rank = np.full(n, np.nan)
        exposure = np.full(n, np.nan)
    else:
        rank = exposure_rank_in_space(canary_scores, all_scores).astype(np.float64)
        exposure = np.asarray(exposure_from_rank(rank, canaries.space_size), dtype=np.float64).reshape(n)
    return ExposureResult(
        exposure=exposure,
        rank=rank,
        rank_exact=np.full(n, not nonfinite),
        log_perplexity=np.asarray(canary_scores, dtype=np.float64),
        space_size=int(canaries.space_size),
        method=name,
        reference_scores=all_scores if all_scores.size <= 100_000 else None,
        nonfinite=nonfinite,
    )


class ExactList(ExposureStrategy):
    """Every candidate scored (list path), canaries ranked among all of them."""

    name = "exact_list"

    def supports(self, module: Any, canaries: CanarySet, config: ExposureConfig) -> bool:
        return canaries.space_size <= config.max_exact

    def compute(
        self,
        module: Any,
        canaries: CanarySet,
        config: ExposureConfig,
        references: Sequence[str] | None = None,
    ) -> ExposureResult:
        all_scores = score_candidates(
            module, canaries, canaries.enumerate_candidates(config.max_exact), config
        )
        return _exact_result(self.name, canaries, all_scores)


class ExactTrie(ExposureStrategy):
    """Every candidate scored by trie expansion (single-token characters, an ``IncrementalLM``)."""

    name = "exact_trie"

    def supports(self, module: Any, canaries: CanarySet, config: ExposureConfig) -> bool:
        return canaries.space_size <= config.max_exact and _walks_the_trie(module, canaries, config)

    def compute(
        self,
        module: Any,
        canaries: CanarySet,
        config: ExposureConfig,
        references: Sequence[str] | None = None,
    ) -> ExposureResult:
        chars = canaries.char_token_ids()
        assert chars is not None
        all_scores = score_space_trie(
            module,
            canaries.prefix_ids,
            chars,
            canaries.length or 0,
            batch_size=max(config.batch_size, 16384),
            progress=config.progress,
        )
        return _exact_result(self.name, canaries, all_scores)


def _reference_result(
    name: str,
    canaries: CanarySet,
    scores: np.ndarray,
    *,
    exact_rank: np.ndarray | None = None,
    rank_bound: np.ndarray | None = None,
) -> ExposureResult:
    """Result from canary + reference scores, with optional exact ranks / proven lower bounds in R."""
    n = len(canaries)
    canary_scores, reference_scores = scores[:n], scores[n:]
    nonfinite = int(np.count_nonzero(~np.isfinite(scores)))
    refs_ok = bool(np.isfinite(reference_scores).all())
    ok = np.isfinite(canary_scores) & refs_ok
    reference_rank = np.full(n, np.nan)
    if ok.any():
        reference_rank[ok] = exposure_rank(canary_scores[ok], reference_scores)
    # the references are distinct candidates other than the canaries: a canary's rank in R is at
    # least its rank among them
    bound = reference_rank.copy()
    if rank_bound is not None:
        bound = np.where(ok, np.fmax(bound, rank_bound), np.nan)
    exposure = exposure_from_references(
        canary_scores, reference_scores, space_size=canaries.space_size, rank_lower_bound=bound
    )
    rank = bound
    rank_exact = np.zeros(n, dtype=bool)
    if exact_rank is not None:
        known = ok & ~np.isnan(exact_rank)
        rank = np.where(known, exact_rank, rank)
        rank_exact = known
        if known.any():
            exposure[known] = exposure_from_rank(exact_rank[known], canaries.space_size)
    return ExposureResult(
        exposure=exposure,
        rank=rank,
        rank_exact=rank_exact,
        log_perplexity=np.asarray(canary_scores, dtype=np.float64),
        space_size=int(canaries.space_size),
        method=name,
        reference_rank=reference_rank,
        reference_scores=np.asarray(reference_scores, dtype=np.float64),
        nonfinite=nonfinite,
    )


def _score_with_references(
    name: str, module: Any, canaries: CanarySet, config: ExposureConfig, references: Sequence[str] | None
) -> np.ndarray:
    """Scores of the canaries' secrets, then of the sampled references (``[C + R]``)."""
    if not references:
        raise ValueError(f"the {name!r} exposure strategy needs sampled references; pass `references=`")
    return score_candidates(module, canaries, [*canaries.secrets, *references], config)


class Extrapolated(ExposureStrategy):
    """Skew-normal extrapolation from sampled references (Sec. 4.3), capped by what they prove."""

    name = "extrapolated"
    needs_references = True

    def compute(
        self,
        module: Any,
        canaries: CanarySet,
        config: ExposureConfig,
        references: Sequence[str] | None = None,
    ) -> ExposureResult:
        scores = _score_with_references(self.name, module, canaries, config, references)
        return _reference_result(self.name, canaries, scores)


class Hybrid(ExposureStrategy):
    """Exact ranks by budgeted best-first search where it finishes; extrapolation, bounded, elsewhere.

    One best-first search (Carlini et al. 2019, Sec. 8) shares ``max_expansions`` among the
    canaries, cheapest nodes first: every canary whose rank needs no more expansions than
    the budget gets its exact rank and exposure (the canaries exposed enough to matter). Each
    other canary gets the extrapolated exposure, capped at ``log2|R| - log2 L`` where ``L`` is
    the larger of its proven rank lower bounds (best-first candidates found at or below its
    score, and the references it does not beat).
    """

    name = "hybrid"
    needs_references = True

    def supports(self, module: Any, canaries: CanarySet, config: ExposureConfig) -> bool:
        return (
            canaries.alphabet is not None
            and canaries.space_size <= 2**62
            and _walks_the_trie(module, canaries, config)
        )

    def compute(
        self,
        module: Any,
        canaries: CanarySet,
        config: ExposureConfig,
        references: Sequence[str] | None = None,
    ) -> ExposureResult:
        scores = _score_with_references(self.name, module, canaries, config, references)
        n = len(canaries)
        exact = np.full(n, np.nan)
        bound = np.full(n, np.nan)
        finite = np.flatnonzero(np.isfinite(scores[:n]))
        if finite.size and np.isfinite(scores[n:]).all():
            found = ranks_best_first(
                module,
                canaries,
                [canaries.secrets[i] for i in finite],
                max_expansions=config.max_expansions,
                batch_size=max(config.batch_size, 4096),
            )
            for i, r in zip(finite, found):
                bound[i] = r.lower_bound_rank
                if r.rank is not None:
                    exact[i] = r.rank
        return _reference_result(self.name, canaries, scores, exact_rank=exact, rank_bound=bound)


EXPOSURE_STRATEGIES: dict[str, ExposureStrategy] = {
    s.name: s for s in (ExactList(), ExactTrie(), Extrapolated(), Hybrid())
}
"""Strategy name -> instance. Add an :class:`ExposureStrategy` here to make its name a valid ``method``."""


_EXACT = ("exact_trie", "exact_list")
_WARNED: set[str] = set()  # fallback messages already warned about (once per process)


def exact_unavailable_reason(module: Any, canaries: CanarySet, config: ExposureConfig) -> str | None:
    """Why the exact trie (:class:`ExactTrie`) cannot score this space on ``module``; None when it can.

    Example:
        >>> import torch
        >>> from memcallbacks import CanarySet, CharTokenizer
        >>> cs = CanarySet("pin {secret}", CharTokenizer(), length=4, seed=0)
        >>> exact_unavailable_reason(torch.nn.Linear(2, 2), cs, ExposureConfig())  # doctest: +ELLIPSIS
        'Linear is not an IncrementalLM ...'
    """
    if canaries.space_size > config.max_exact:
        return (
            f"the space has {canaries.space_size} candidates, more than `max_exact`={config.max_exact} "
            "(raise `max_exact` to score every candidate)"
        )
    if config.score_fn is not None:
        return "a custom `score_fn` is given, so candidates cannot share their prefix's computation"
    if not is_incremental(module):
        return (
            f"{type(module).__name__} is not an IncrementalLM (no init_state/step/expand_state) and gets no "
            f"KV-cache adapter: {why_not_incremental(module)}"
        )
    if canaries.char_token_ids() is None:
        return (
            "the secrets' characters are not one token each in context (a tokenizer that merges them), "
            "so the space is not a trie of single tokens"
        )
    return None


def resolve_exposure_method(
    method: str, module: Any, canaries: CanarySet, config: ExposureConfig, *, num_references: int
) -> str:
    """The strategy name that ``method`` means for this module and space.

    ``"exact"``: the trie when it applies, else the list. ``"auto"``: exact when the space is
    no larger than the references plus the canaries, or when the trie applies and
    ``|R| <= max_exact``; else ``"hybrid"`` when the best-first search applies; else
    ``"extrapolated"``. A registered name is returned as is; any other name raises. When ``"auto"`` ends at
    ``"extrapolated"`` (no exact rank at all), a ``UserWarning`` says so once per reason
    (:func:`exact_unavailable_reason`).

    Raises:
        ValueError: ``method`` is neither ``"auto"``, ``"exact"`` nor a name in :data:`EXPOSURE_STRATEGIES`
            (the message lists them).

    Example:
        >>> from memcallbacks import CanarySet, CharTokenizer
        >>> from memcallbacks.demos.toy import WindowLM
        >>> cs = CanarySet("pin {secret}", CharTokenizer(), length=8, seed=0)
        >>> resolve_exposure_method("auto", WindowLM(100), cs, ExposureConfig(), num_references=10_000)
        'hybrid'
    """
    trie, listed, hybrid = (EXPOSURE_STRATEGIES[k] for k in ("exact_trie", "exact_list", "hybrid"))
    if method == "exact":
        return trie.name if trie.supports(module, canaries, config) else listed.name
    if method != "auto":
        if method not in EXPOSURE_STRATEGIES:
            raise ValueError(
                f"`method`={method!r} is not an exposure strategy; use 'auto', 'exact' or a registered name: "
                f"{sorted(EXPOSURE_STRATEGIES)} (register a new ExposureStrategy in EXPOSURE_STRATEGIES first)"
            )
        return method
    if canaries.space_size <= num_references + len(canaries):
        return trie.name if trie.supports(module, canaries, config) else listed.name
    if trie.supports(module, canaries, config):
        return trie.name
    if hybrid.supports(module, canaries, config):
        return hybrid.name
    reason = exact_unavailable_reason(module, canaries, config) or "the hybrid search does not apply"
    message = (
        f"exposure method='auto' falls back to 'extrapolated' (skew-normal fit to sampled references, no "
        f"exact rank) because {reason}. Extrapolation can overstate the exposure of the most exposed "
        "canaries; give the monitor an IncrementalLM or a Hugging Face causal LM, or pass method='exact'."
    )
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, UserWarning, stacklevel=2)
    return "extrapolated"
