"""Exact rank of a canary in its randomness space by best-first search over the secret trie.

The Secret Sharer (Carlini et al., "The Secret Sharer", USENIX Security 2019, Sec. 8) ranks a
canary without scoring every candidate: a node of the trie of secrets is a prefix of ``d``
characters, its cost the summed NLL of those characters, which lower-bounds the log-perplexity
of every completion (each NLL is >= 0). Expanding nodes cheapest first (Dijkstra) and only while
their cost does not exceed the secret's score finds every candidate at least as likely as the
secret after a number of model steps that grows with the rank, not with the space.

Runs on any :class:`~memcallbacks.lm.scoring.IncrementalLM` (a Hugging Face causal LM through
:class:`memcallbacks.lm.hf.HFIncrementalLM`). No Lightning import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from memcallbacks.lm.model import evaluating, module_device
from memcallbacks.lm.scoring import require_incremental, start_incremental
from memcallbacks.utilities.validation import check_int

__all__ = ["BestFirstResult", "rank_best_first", "ranks_best_first"]


@dataclass(frozen=True)
class BestFirstResult:
    """Outcome of :func:`rank_best_first`.

    Attributes:
        rank: the exact rank of the secret among all ``space_size`` candidates (1 = the
            model's favourite; ties count against the secret), or None when the expansion
            budget ran out first.
        lower_bound_rank: ``1 + #(other candidates found with log-perplexity <= the
            secret's)``; equals ``rank`` when the search finished, a lower bound otherwise.
        explored: trie nodes expanded (the root included); each but the root costs one
            model step row.
        canary_score: the secret's log-perplexity (natural log), as the search computed it.
        space_size: ``alphabet ** length``.
        nonfinite: NaN/inf costs met (a diverged model); when > 0 no rank is exact.

    Example:
        >>> r = BestFirstResult(rank=None, lower_bound_rank=7, explored=100, canary_score=3.2, space_size=1000)
        >>> r.exact, r.lower_bound_rank
        (False, 7)
    """

    rank: int | None
    lower_bound_rank: int
    explored: int
    canary_score: float
    space_size: int
    nonfinite: int = 0

    @property
    def exact(self) -> bool:
        """Whether ``rank`` is known (the search finished within its budget)."""
        return self.rank is not None


def _check_logprobs(logp: torch.Tensor) -> None:
    if bool((logp > 1e-3).any()):
        raise ValueError(
            "the module's init_state/step returned values > 0 where natural-log probabilities "
            f"(log_softmax, all <= 0) are expected (max {float(logp.max()):.4g}); the best-first search "
            "needs every token's NLL to be >= 0: return F.log_softmax(logits, -1)"
        )


def _best_first_space(canaries: Any, secret: Any) -> tuple[list[int], int]:
    from memcallbacks.data.canaries import CanarySet  # local: canaries.py is the heavier module

    if not isinstance(canaries, CanarySet):
        raise TypeError(f"`canaries` must be a memcallbacks.CanarySet, got {type(canaries).__name__}")
    fix = 'use method="exact" (trie, spaces up to max_exact) or method="extrapolated"'
    if canaries.alphabet is None or canaries.length is None:
        raise ValueError(
            f"the best-first search needs an alphabet/length randomness space, got explicit `candidates` "
            f"({canaries.space_size} strings); {fix}"
        )
    chars = canaries.char_token_ids()
    if chars is None:
        raise ValueError(
            f"the best-first search needs every character of `alphabet`={canaries.alphabet!r} to encode to "
            f"exactly one token (and secrets to encode character by character); the tokenizer does not; {fix}"
        )
    if canaries.space_size > 2**62:
        raise ValueError(
            f"the best-first search indexes candidates with int64, and the space has {canaries.space_size} "
            '> 2**62 candidates; use a shorter `length` or method="extrapolated"'
        )
    alphabet, length = canaries.alphabet, canaries.length
    if not isinstance(secret, str) or len(secret) != length or any(c not in alphabet for c in secret):
        shown = f"a string of length {len(secret)}" if isinstance(secret, str) else type(secret).__name__
        raise ValueError(
            f"`secret` must be a string of {length} characters of `alphabet`={alphabet!r} (a candidate of "
            f"the CanarySet's space), got {shown}"
        )
    if canaries.encode_secret(secret) != [chars[alphabet.index(c)] for c in secret]:
        raise ValueError(
            "`secret` does not encode character by character with this tokenizer, so its score would not "
            f"be the trie's; {fix}"
        )
    return chars, length


def rank_best_first(
    module: Any,
    canaries: Any,
    secret: str,
    *,
    max_expansions: int = 100_000,
    batch_size: int = 4096,
) -> BestFirstResult:
    """Exact rank of ``secret`` in its randomness space by best-first search (Dijkstra over the trie).

    The Secret Sharer (Carlini et al., USENIX Security 2019, Sec. 8) ranks a canary without
    scoring every candidate: the cost of a trie node (a prefix of the secret of ``d``
    characters) is the summed NLL of those characters, which lower-bounds the
    log-perplexity of all its completions because every NLL is >= 0. Nodes are expanded
    cheapest first, up to ``batch_size`` at a time in batched :class:`IncrementalLM` steps,
    and only while their cost does not exceed the secret's score ``s``. When nothing cheaper
    than ``s`` is left, every candidate scoring ``<= s`` has been found and the rank
    ``1 + #(other candidates with log-perplexity <= s)`` (ties against the secret, as in
    :func:`memcallbacks.metrics.exposure.exposure_rank`) is exact. The score is the
    log-perplexity of the secret's tokens only, as in :func:`score_space_trie` and
    :class:`~memcallbacks.CanaryExposureMonitor`.

    The work grows with the rank, not with the space: a canary of rank ``r`` needs roughly
    ``r`` to ``r * length`` expansions, so the search suits highly exposed canaries; when
    ``max_expansions`` runs out it returns ``rank=None`` and a lower bound on the rank.

    Args:
        module: an :class:`IncrementalLM` whose ``init_state``/``step`` return natural-log
            probabilities (log_softmax).
        canaries: the :class:`~memcallbacks.CanarySet` that defines the space (an
            ``alphabet``/``length`` space whose characters are single tokens) and the prefix.
        secret: the candidate to rank (usually a canary's secret).
        max_expansions: most trie nodes expanded (the root included), >= 1.
        batch_size: most nodes expanded per model step, >= 1.

    Returns:
        A :class:`BestFirstResult`.

    Raises:
        TypeError: ``module`` is not an :class:`IncrementalLM`; ``canaries`` is not a CanarySet.
        ValueError: the space is given by ``candidates``, its characters are not single tokens
            or it exceeds ``2**62`` candidates (use ``method="exact"`` or ``"extrapolated"``);
            ``secret`` is not a candidate of the space; bad ``max_expansions``/``batch_size``;
            the module returns values > 0 where log-probabilities are expected.

    Example:
        >>> from memcallbacks import CanarySet, CharTokenizer
        >>> from memcallbacks.demos.toy import WindowLM
        >>> cs = CanarySet("pin {secret}", CharTokenizer(), alphabet="0123", length=4, per_count=1,
        ...                repetitions=(1,), seed=0)
        >>> result = rank_best_first(WindowLM(CharTokenizer().vocab_size), cs, cs[0].secret)
        >>> result.exact, 1 <= result.rank <= 256
        (True, True)
    """
    return ranks_best_first(module, canaries, [secret], max_expansions=max_expansions, batch_size=batch_size)[
        0
    ]


def ranks_best_first(
    module: Any,
    canaries: Any,
    secrets: Sequence[str],
    *,
    max_expansions: int = 100_000,
    batch_size: int = 4096,
) -> list[BestFirstResult]:
    """Exact ranks of several secrets from one best-first search sharing its expansion budget.

    The search of :func:`rank_best_first`, run once for all secrets in order of their scores:
    it expands the nodes within the most exposed unfinished secret's score until none is
    left (that secret's rank is then exact, exactly when its own search would have
    finished), then moves on to the next, reusing every node already expanded. Within the
    shared ``max_expansions`` budget it therefore ranks exactly what separate searches of
    the most exposed secrets would, without repeating their work. The others
    get ``rank=None`` and a lower bound. ``explored`` is the shared search's count.

    A non-finite log-probability (a diverged model) makes every result inexact (it could
    hide candidates); the results then carry the count in ``nonfinite``.

    Args:
        module: an :class:`IncrementalLM` returning natural-log probabilities.
        canaries: the :class:`~memcallbacks.CanarySet` that defines the space and the prefix.
        secrets: candidates of the space to rank (usually the canaries' secrets).
        max_expansions: most trie nodes expanded in all (the root included), >= 1.
        batch_size: most nodes expanded per model step, >= 1.

    Returns:
        One :class:`BestFirstResult` per secret, in order.

    Raises:
        Same as :func:`rank_best_first`.

    Example:
        >>> from memcallbacks import CanarySet, CharTokenizer
        >>> from memcallbacks.demos.toy import WindowLM
        >>> cs = CanarySet("pin {secret}", CharTokenizer(), alphabet="0123", length=4, per_count=2,
        ...                repetitions=(1,), seed=0)
        >>> results = ranks_best_first(WindowLM(CharTokenizer().vocab_size), cs, cs.secrets)
        >>> [r.exact for r in results]
        [True, True]
    """
    require_incremental(module)
    if isinstance(secrets, str) or not isinstance(secrets, Sequence) or not secrets:
        raise ValueError(f"`secrets` must be a non-empty sequence of candidate strings, got {secrets!r}")
    chars, length = _best_first_space(canaries, secrets[0])
    for secret in secrets[1:]:
        _best_first_space(canaries, secret)
    max_expansions = check_int("max_expansions", max_expansions, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    device = module_device(module)
    score0 = _secret_scores(module, canaries, secrets, chars, device)
    # expand a little past each score: the batched steps of the search round differently from the
    # one-row pass above, and a secret's own leaf must be found to compare like with like
    thresholds = score0 + 1e-5 * np.maximum(1.0, np.abs(score0))
    finite = np.isfinite(thresholds)
    search = _BestFirstSearch(
        module,
        torch.as_tensor(chars, dtype=torch.long, device=device),
        length,
        threshold=float(thresholds[finite].max()) if finite.any() else -np.inf,
        nonfinite=int(np.count_nonzero(~finite)),
    )
    with evaluating(module):
        search.run(canaries.prefix_ids, np.sort(thresholds[finite]), max_expansions, batch_size)
    secret_index = np.array([int(canaries.candidate_index(s)) for s in secrets], dtype=np.int64)
    return search.results(secret_index, score0, thresholds, int(canaries.space_size))


def _secret_scores(
    module: Any, canaries: Any, secrets: Sequence[str], chars: list[int], device: torch.device
) -> np.ndarray:
    """The secrets' scores, one row each, as :func:`~memcallbacks.lm.scoring.score_shared_prefix` computes them."""
    alphabet, length = canaries.alphabet, len(secrets[0])
    score0 = np.zeros(len(secrets))
    with evaluating(module):
        for i, secret in enumerate(secrets):
            state, logp = start_incremental(module, canaries.prefix_ids, device)
            for j, c in enumerate(secret):
                _check_logprobs(logp)
                token = chars[alphabet.index(c)]
                score0[i] -= float(logp[0, token])
                if j + 1 < length:
                    state, logp = module.step(state, torch.tensor([token], device=device))
                    logp = logp.float()
    return score0


class _BestFirstSearch:
    """The search's state: the frontier (nodes not yet expanded, all with cost <= threshold), the
    model states of the nodes expanded together (chunks), and the leaves found."""

    def __init__(
        self, module: Any, char_t: torch.Tensor, length: int, *, threshold: float, nonfinite: int
    ) -> None:
        self.module, self.char_t, self.length = module, char_t, length
        self.a = int(char_t.numel())
        self.threshold, self.nonfinite, self.explored = threshold, nonfinite, 1
        self.leaf_cost: list[np.ndarray] = []
        self.leaf_path: list[np.ndarray] = []
        self.states: dict[int, Any] = {}  # chunk id -> state of the nodes expanded together
        self.pending: dict[int, int] = {}  # chunk id -> frontier entries still pointing at it
        self.depth_of: dict[int, int] = {}  # chunk id -> depth (secret characters) of its nodes
        self.rows_of: dict[int, int] = {}  # chunk id -> rows in its state
        self.f_cost = np.empty(0, dtype=np.float64)
        self.f_chunk = np.empty(0, dtype=np.int64)
        self.f_row = np.empty(0, dtype=np.int64)
        self.f_char = np.empty(0, dtype=np.int64)
        self.f_path = np.empty(0, dtype=np.int64)
        self.next_id = 0

    def add_children(
        self, cost: np.ndarray, logp: torch.Tensor, path: np.ndarray, depth: int, state: Any
    ) -> None:
        """The nodes (cost [m], path [m], ``depth`` characters) were just stepped: logp [m, V], state of m rows."""
        child = cost[:, None] - logp[:, self.char_t].double().cpu().numpy()  # [m, A]
        self.nonfinite += int(np.count_nonzero(~np.isfinite(child)))
        child_path = path[:, None] * self.a + np.arange(self.a, dtype=np.int64)
        keep = child <= self.threshold
        if depth + 1 == self.length:
            self.leaf_cost.append(child[keep])
            self.leaf_path.append(child_path[keep])
            return
        rows, cols = np.nonzero(keep)
        if rows.size == 0:
            return
        cid, self.next_id = self.next_id, self.next_id + 1
        self.states[cid], self.pending[cid], self.depth_of[cid], self.rows_of[cid] = (
            state,
            int(rows.size),
            depth,
            len(cost),
        )
        self.f_cost = np.concatenate([self.f_cost, child[keep]])
        self.f_chunk = np.concatenate([self.f_chunk, np.full(rows.size, cid, dtype=np.int64)])
        self.f_row = np.concatenate([self.f_row, rows])
        self.f_char = np.concatenate([self.f_char, cols])
        self.f_path = np.concatenate([self.f_path, child_path[keep]])

    def run(
        self, prefix_ids: Sequence[int], levels: np.ndarray, max_expansions: int, batch_size: int
    ) -> None:
        """Expands the frontier, finishing the secrets in order of score (``levels``, sorted)."""
        device = self.char_t.device
        state0, logp0 = start_incremental(self.module, prefix_ids, device)
        _check_logprobs(logp0)
        self.add_children(np.zeros(1), logp0, np.zeros(1, dtype=np.int64), 0, state0)
        level = 0
        while self.f_cost.size and self.explored < max_expansions:
            # finish the secrets in order of score: expand only nodes within the next unfinished one's
            # threshold, so the budget goes to the most exposed secrets first, as separate searches would
            while level < levels.size and not (self.f_cost <= levels[level]).any():
                level += 1
            if level == levels.size:
                break
            eligible = np.flatnonzero(self.f_cost <= levels[level])
            k = min(batch_size, max_expansions - self.explored, eligible.size)
            pick = (
                eligible[np.argpartition(self.f_cost[eligible], k - 1)[:k]] if k < eligible.size else eligible
            )
            pick = pick[
                np.lexsort((self.f_char[pick], self.f_row[pick], self.f_chunk[pick]))
            ]  # rows in state order
            self._expand(pick)

    def _expand(self, pick: np.ndarray) -> None:
        """Takes the frontier entries ``pick`` (sorted by chunk, row) off the frontier and steps them."""
        p_cost, p_chunk, p_row, p_char, p_path = (
            self.f_cost[pick],
            self.f_chunk[pick],
            self.f_row[pick],
            self.f_char[pick],
            self.f_path[pick],
        )
        rest = np.ones(self.f_cost.size, dtype=bool)
        rest[pick] = False
        self.f_cost, self.f_chunk, self.f_row, self.f_char, self.f_path = (
            self.f_cost[rest],
            self.f_chunk[rest],
            self.f_row[rest],
            self.f_char[rest],
            self.f_path[rest],
        )
        device = self.char_t.device
        bounds = np.flatnonzero(np.diff(p_chunk)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, pick.size]):
            cid = int(p_chunk[lo])
            counts = np.bincount(p_row[lo:hi], minlength=self.rows_of[cid])
            state = self.states[cid]
            if not (counts == 1).all():
                state = self.module.expand_state(
                    state, torch.as_tensor(counts, dtype=torch.long, device=device)
                )
            state, logp = self.module.step(state, self.char_t[torch.as_tensor(p_char[lo:hi], device=device)])
            logp = logp.float()
            _check_logprobs(logp)
            self.explored += int(hi - lo)
            depth = self.depth_of[cid] + 1  # the expanded nodes' depth
            self.pending[cid] -= int(hi - lo)
            if self.pending[cid] == 0:  # every child of this chunk is expanded: free its state
                del self.states[cid], self.pending[cid], self.depth_of[cid], self.rows_of[cid]
            self.add_children(p_cost[lo:hi], logp, p_path[lo:hi], depth, state)

    def results(
        self, secret_index: np.ndarray, score0: np.ndarray, thresholds: np.ndarray, space_size: int
    ) -> list[BestFirstResult]:
        """One result per secret, from the leaves found and what is left on the frontier."""
        costs = np.concatenate(self.leaf_cost) if self.leaf_cost else np.empty(0)
        paths = np.concatenate(self.leaf_path) if self.leaf_path else np.empty(0, dtype=np.int64)
        cheapest_left = float(self.f_cost.min()) if self.f_cost.size else np.inf
        finite = np.isfinite(thresholds)
        results = []
        for i in range(secret_index.size):
            own = paths == secret_index[i]
            score = float(costs[own][0]) if own.any() else float(score0[i])
            others = int(np.count_nonzero(~own & (costs <= score)))
            # every node cheaper than this secret's threshold is expanded: its rank is complete
            done = self.nonfinite == 0 and bool(finite[i]) and cheapest_left > thresholds[i]
            results.append(
                BestFirstResult(
                    rank=1 + others if done else None,
                    lower_bound_rank=1 + others,
                    explored=self.explored,
                    canary_score=score,
                    space_size=space_size,
                    nonfinite=self.nonfinite,
                )
            )
        return results
