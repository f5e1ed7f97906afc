"""Canary scoring: log-perplexity of a secret given its prefix, batched, in pure torch.

The score of a candidate secret ``s`` after a prefix ``p`` is its log-perplexity, the sum
of the negative log-likelihoods (natural log) of the secret's tokens given everything
before them (Carlini et al., "The Secret Sharer", USENIX Security 2019, Sec. 4;
docs/canaries.md). Lower means more likely. Exposure (:mod:`memcallbacks.metrics.exposure`) ranks
a canary's score among other candidates' scores.

Three ways to get scores, fastest last:

* :func:`score_sequences`: the batched naive path. Any module whose forward maps token ids
  ``[B, T]`` to logits ``[B, T, V]`` (or returns an object with ``.logits``, as Hugging Face
  causal LMs do) works with the default :func:`log_perplexity`; otherwise pass
  ``score_fn(module, token_ids, target_mask) -> Tensor[B]``.
* :func:`score_shared_prefix`: for a module implementing :class:`IncrementalLM`, the
  prefix is run once and each candidate only steps through its secret tokens.
* :func:`score_space_trie`: exact scoring of a whole ``alphabet ** length`` space for an
  :class:`IncrementalLM`. Candidates share leading characters, so the secret is expanded
  position by position, a trie: ``A + A**2 + ... + A**(L-1)`` model steps instead of
  ``A**L`` full sequences (for 6 digits, 111,110 steps instead of 10**6 sequences).
* :func:`rank_best_first`: the exact rank of one secret without scoring the whole space,
  by a best-first (Dijkstra, shortest-path) search over the same trie (Carlini et al.
  2019, Sec. 8): only prefixes at least as likely as the secret are expanded, so a highly
  exposed canary is ranked after a handful of model steps, whatever the space's size.

All run in eval mode under ``torch.inference_mode()``, restore the module's train mode, and
show a tqdm progress bar when a call takes more than a few seconds, on rank 0 and only
when stdout is a terminal (``progress=True``/``False`` forces it).

No Lightning import: this module is usable on a bare ``nn.Module``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from memcallbacks.utilities.validation import check_int

__all__ = [
    "BestFirstResult",
    "IncrementalLM",
    "ScoreFn",
    "beam_search",
    "is_incremental",
    "log_perplexity",
    "pad_sequences",
    "rank_best_first",
    "ranks_best_first",
    "score_sequences",
    "score_shared_prefix",
    "score_space_trie",
]

ScoreFn = Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]
"""``score_fn(module, token_ids [B, T], target_mask [B, T] bool) -> Tensor[B]``: the
log-perplexity (sum of natural-log NLL) of the tokens where ``target_mask`` is true, each
given the tokens before it. Rows are right-padded with 0."""


@runtime_checkable
class IncrementalLM(Protocol):
    """A language model that can continue from a state (an RNN's hidden state, a KV cache).

    Implement these three methods on your module to get the shared-prefix and trie paths.
    Log-probabilities are natural-log, over the whole vocabulary.

    * ``init_state(prefix_ids)``: ``prefix_ids`` is a LongTensor ``[1, T]`` (``T >= 1``).
      Returns ``(state, next_logprobs [1, V])``: the state after the prefix and the
      log-probabilities of the next token.
    * ``step(state, token_ids)``: ``token_ids`` is a LongTensor ``[B]`` for a state of
      batch ``B``. Returns ``(state, next_logprobs [B, V])`` after appending the tokens.
    * ``expand_state(state, repeats)``: repeats each batch row of ``state`` like
      ``torch.repeat_interleave(rows, repeats, dim=batch)``; ``repeats`` is an int or a
      LongTensor ``[B]`` (zeros drop rows, so it also selects).

    Example:
        >>> from memcallbacks.demos.toy import CharLSTMLM
        >>> isinstance(CharLSTMLM(vocab_size=12), IncrementalLM)
        True
    """

    def init_state(self, prefix_ids: torch.Tensor) -> tuple[Any, torch.Tensor]: ...

    def step(self, state: Any, token_ids: torch.Tensor) -> tuple[Any, torch.Tensor]: ...

    def expand_state(self, state: Any, repeats: int | torch.Tensor) -> Any: ...


def is_incremental(module: Any) -> bool:
    """Whether ``module`` implements :class:`IncrementalLM`."""
    return all(callable(getattr(module, name, None)) for name in ("init_state", "step", "expand_state"))


# --------------------------------------------------------------------------------------
# The default score function
# --------------------------------------------------------------------------------------
def _logits_of(out: Any, token_ids: torch.Tensor) -> torch.Tensor:
    logits = getattr(out, "logits", out)
    if isinstance(logits, (list, tuple)) and logits:
        logits = logits[0]
    shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(out).__name__
    if (
        not isinstance(logits, torch.Tensor)
        or logits.dim() != 3
        or tuple(logits.shape[:2]) != tuple(token_ids.shape)
    ):
        raise TypeError(
            f"the default score_fn needs `module(token_ids)` with token_ids [B, T]={tuple(token_ids.shape)} "
            f"to return logits [B, T, V] (a Tensor or an object with `.logits`), got {shape}; "
            "pass `score_fn(module, token_ids, target_mask) -> Tensor[B]` (log-perplexity of the "
            "masked tokens)"
        )
    return logits


def log_perplexity(module: Any, token_ids: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Sum of the NLL (natural log) of the tokens where ``target_mask`` is true, given the rest.

    The default ``score_fn``: ``module(token_ids)`` must return causal-LM logits ``[B, T, V]``
    (position ``t`` predicts token ``t + 1``) or an object with ``.logits``.

    Args:
        module: the language model.
        token_ids: LongTensor ``[B, T]``.
        target_mask: BoolTensor ``[B, T]``, false at position 0.

    Returns:
        float32 Tensor ``[B]``.

    Raises:
        TypeError: if the module's output is not ``[B, T, V]`` logits.

    Example:
        >>> class Uniform(torch.nn.Module):
        ...     def forward(self, ids):
        ...         return torch.zeros(*ids.shape, 4)
        >>> ids = torch.tensor([[1, 2, 3]])
        >>> log_perplexity(Uniform(), ids, torch.tensor([[False, True, True]]))  # 2 * log 4
        tensor([2.7726])
    """
    try:
        out = module(token_ids)
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        raise TypeError(
            f"the default score_fn calls `module(token_ids)` with token ids [B, T]={tuple(token_ids.shape)} "
            f"and expects logits [B, T, V]; the module raised {type(e).__name__}: {e}. Pass "
            "`score_fn(module, token_ids, target_mask) -> Tensor[B]` for a model with another interface"
        ) from e
    logits = _logits_of(out, token_ids)
    cols = torch.nonzero(target_mask[:, 1:].any(0)).flatten()
    if cols.numel() == 0:
        return torch.zeros(token_ids.shape[0], device=token_ids.device)
    lo, hi = int(cols[0]), int(cols[-1]) + 1  # prediction positions lo..hi-1 predict tokens lo+1..hi
    logp = F.log_softmax(logits[:, lo:hi].float(), dim=-1)
    targets = token_ids[:, lo + 1 : hi + 1]
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (nll * target_mask[:, lo + 1 : hi + 1]).sum(1)


def pad_sequences(
    sequences: Sequence[Sequence[int]], secret_starts: Sequence[int], pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pads token sequences and marks their secret tokens (from ``secret_start`` to the end).

    Returns:
        ``(token_ids [N, T_max] int64, target_mask [N, T_max] bool)``.
    """
    n = len(sequences)
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=n)
    width = int(lengths.max()) if n else 0
    if n and (lengths == width).all():  # fast path: one array conversion, no per-row tensors
        ids = torch.from_numpy(np.asarray(sequences, dtype=np.int64).reshape(n, width))
        starts = torch.as_tensor(np.asarray(secret_starts, dtype=np.int64))
        return ids, torch.arange(width).unsqueeze(0) >= starts.unsqueeze(1)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.bool)
    for i, (seq, start) in enumerate(zip(sequences, secret_starts)):
        ids[i, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[i, start : len(seq)] = True
    return ids, mask


# --------------------------------------------------------------------------------------
# Evaluation context and progress
# --------------------------------------------------------------------------------------
def _device_of(module: Any) -> torch.device:
    for p in module.parameters() if hasattr(module, "parameters") else ():
        return p.device  # type: ignore[no-any-return]
    return torch.device("cpu")


@contextlib.contextmanager
def _evaluating(module: Any) -> Iterator[None]:
    was_training = bool(getattr(module, "training", False))
    if hasattr(module, "eval"):
        module.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        if was_training and hasattr(module, "train"):
            module.train()


def _global_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)


class _Progress:
    """A tqdm bar that appears only once a call has run ``delay`` seconds (auto mode)."""

    def __init__(self, total: int, desc: str, enabled: bool | None, delay: float = 3.0) -> None:
        self.total, self.desc, self.done = total, desc, 0
        if enabled is None:
            enabled = _global_rank() == 0 and bool(getattr(sys.stdout, "isatty", lambda: False)())
            self.delay = delay
        else:
            enabled = bool(enabled) and _global_rank() == 0
            self.delay = 0.0
        self.enabled = enabled
        self.start = time.perf_counter()
        self.bar: Any = None

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.bar is None and time.perf_counter() - self.start >= self.delay:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # pragma: no cover - tqdm ships with Lightning
                self.enabled = False
                return
            self.bar = tqdm(
                total=self.total, desc=self.desc, initial=self.done, leave=False, dynamic_ncols=True
            )
        elif self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------
# Batched naive scoring
# --------------------------------------------------------------------------------------
def score_sequences(
    module: Any,
    sequences: Sequence[Sequence[int]],
    secret_starts: Sequence[int] | int,
    *,
    score_fn: ScoreFn | None = None,
    batch_size: int = 1024,
    progress: bool | None = None,
    desc: str = "scoring canaries",
) -> np.ndarray:
    """Log-perplexity of each sequence's tokens from ``secret_start`` on, in batches.

    Args:
        module: the language model (moved to nothing: batches go to its device).
        sequences: token ids of prefix + secret (anything after the secret is scored too).
        secret_starts: position of each sequence's first secret token (>= 1), or one for all.
        score_fn: ``score_fn(module, token_ids, target_mask) -> Tensor[B]``; default
            :func:`log_perplexity`.
        batch_size: sequences per forward pass.
        progress: show a progress bar (None: when slow, on rank 0, stdout a terminal).
        desc: progress-bar label.

    Returns:
        float64 array ``[N]``.

    Raises:
        ValueError: if a secret starts at position 0 (nothing to condition on).
        TypeError: if the module's output is not ``[B, T, V]`` and no ``score_fn`` is given.

    Example:
        >>> class Uniform(torch.nn.Module):
        ...     def forward(self, ids):
        ...         return torch.zeros(*ids.shape, 4)
        >>> score_sequences(Uniform(), [[1, 2, 3], [1, 2]], 1).round(4)
        array([2.7726, 1.3863])
    """
    n = len(sequences)
    starts = [int(secret_starts)] * n if isinstance(secret_starts, int) else [int(s) for s in secret_starts]
    if len(starts) != n:
        raise ValueError(f"`secret_starts` has {len(starts)} entries for {n} sequences")
    if any(s < 1 for s in starts):
        raise ValueError(
            "a secret starts at token 0, so its first token has nothing to be conditioned on; "
            "give the format a prefix, or a tokenizer that adds a BOS token"
        )
    fn = score_fn if score_fn is not None else log_perplexity
    device = _device_of(module)
    out = np.empty(n, dtype=np.float64)
    bar = _Progress(n, desc, progress)
    try:
        with _evaluating(module):
            for lo in range(0, n, batch_size):
                hi = min(n, lo + batch_size)
                ids, mask = pad_sequences(sequences[lo:hi], starts[lo:hi])
                scores = fn(module, ids.to(device), mask.to(device))
                if not isinstance(scores, torch.Tensor) or scores.shape != (hi - lo,):
                    got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
                    raise TypeError(
                        f"`score_fn` must return a Tensor of shape [{hi - lo}] (one per sequence), got {got}"
                    )
                out[lo:hi] = scores.detach().double().cpu().numpy()
                bar.update(hi - lo)
    finally:
        bar.close()
    return out


# --------------------------------------------------------------------------------------
# Shared-prefix paths (IncrementalLM)
# --------------------------------------------------------------------------------------
def _require_incremental(module: Any) -> None:
    if not is_incremental(module):
        raise TypeError(
            f"{type(module).__name__} does not implement memcallbacks.lm.scoring.IncrementalLM "
            "(init_state, step, expand_state); use score_sequences() instead"
        )


def _init(module: Any, prefix_ids: Sequence[int], device: torch.device) -> tuple[Any, torch.Tensor]:
    if len(prefix_ids) == 0:
        raise ValueError("the prefix encodes to no token; the first secret token cannot be scored")
    prefix = torch.as_tensor(list(prefix_ids), dtype=torch.long, device=device).unsqueeze(0)
    state, logp = module.init_state(prefix)
    return state, logp.float()


def score_shared_prefix(
    module: Any,
    prefix_ids: Sequence[int],
    secret_ids: Any,
    *,
    batch_size: int = 4096,
    progress: bool | None = None,
    desc: str = "scoring canaries",
) -> np.ndarray:
    """Log-perplexity of equal-length secrets after one shared prefix, for an :class:`IncrementalLM`.

    The prefix runs once; each batch of candidates then takes ``L - 1`` steps.

    Args:
        module: an :class:`IncrementalLM`.
        prefix_ids: token ids of the prefix (non-empty).
        secret_ids: int array ``[N, L]`` of secret token ids.
        batch_size: candidates per step.
        progress: progress bar (see :func:`score_sequences`).
        desc: progress-bar label.

    Returns:
        float64 array ``[N]``, equal to :func:`score_sequences` on prefix + secret.

    Raises:
        TypeError: if the module is not incremental.
    """
    _require_incremental(module)
    device = _device_of(module)
    secrets = torch.as_tensor(np.asarray(secret_ids), dtype=torch.long)
    if secrets.dim() != 2:
        raise ValueError(f"`secret_ids` must be [N, L], got shape {tuple(secrets.shape)}")
    n, length = secrets.shape
    out = np.empty(n, dtype=np.float64)
    bar = _Progress(n, desc, progress)
    try:
        with _evaluating(module):
            state0, logp0 = _init(module, prefix_ids, device)
            for lo in range(0, n, batch_size):
                hi = min(n, lo + batch_size)
                tok = secrets[lo:hi].to(device)
                score = -logp0[0, tok[:, 0]]
                state = module.expand_state(state0, hi - lo)
                for j in range(1, length):
                    state, logp = module.step(state, tok[:, j - 1])
                    score = score - logp.float().gather(1, tok[:, j : j + 1]).squeeze(1)
                out[lo:hi] = score.double().cpu().numpy()
                bar.update(hi - lo)
    finally:
        bar.close()
    return out


def score_space_trie(
    module: Any,
    prefix_ids: Sequence[int],
    char_ids: Sequence[int],
    length: int,
    *,
    batch_size: int = 16384,
    progress: bool | None = None,
    desc: str = "scoring the randomness space",
) -> np.ndarray:
    """Scores of every secret of ``length`` characters over an alphabet, by trie expansion.

    Candidate ``i`` is the base-``A`` number ``i`` written with ``char_ids`` as digits, most
    significant first (the order of :meth:`memcallbacks.CanarySet.candidate`). Each trie
    level steps every node once; nodes are processed depth-first in chunks of
    ``batch_size`` rows, so memory stays bounded.

    Args:
        module: an :class:`IncrementalLM`.
        prefix_ids: token ids of the prefix (non-empty).
        char_ids: the token id of each alphabet character (one token per character).
        length: secret length in characters.
        batch_size: most rows per model step.
        progress: progress bar (see :func:`score_sequences`).
        desc: progress-bar label.

    Returns:
        float64 array ``[A ** length]``.

    Raises:
        TypeError: if the module is not incremental.
    """
    _require_incremental(module)
    device = _device_of(module)
    chars = torch.as_tensor(list(char_ids), dtype=torch.long, device=device)
    a = int(chars.numel())
    if length < 1 or a < 1:
        raise ValueError(f"`length` and the alphabet must be non-empty, got length={length}, {a} characters")
    total_steps = sum(a**d for d in range(1, length))
    bar = _Progress(max(total_steps, 1), desc, progress)
    chunks: list[torch.Tensor] = []
    rows = max(a, int(batch_size))

    def expand(state: Any, logp: torch.Tensor, scores: torch.Tensor, depth: int) -> None:
        # scores [N] of N nodes that hold `depth` secret chars; logp [N, V] their next-token log-probs
        child = (scores.unsqueeze(1) - logp[:, chars].double()).reshape(-1)  # [N * A], lexicographic
        if depth + 1 == length:
            chunks.append(child.cpu())
            return
        n = scores.numel()
        per = max(1, rows // a)  # parents per chunk
        for lo in range(0, n, per):
            hi = min(n, lo + per)
            if lo == 0 and hi == n:
                sub = state
            else:
                pick = torch.zeros(n, dtype=torch.long, device=device)
                pick[lo:hi] = 1
                sub = module.expand_state(state, pick)
            sub = module.expand_state(sub, a)
            sub, sub_logp = module.step(sub, chars.repeat(hi - lo))
            bar.update((hi - lo) * a)
            expand(sub, sub_logp.float(), child[lo * a : hi * a], depth + 1)

    try:
        with _evaluating(module):
            state0, logp0 = _init(module, prefix_ids, device)
            expand(state0, logp0, torch.zeros(1, dtype=torch.float64, device=device), 0)
    finally:
        bar.close()
    return torch.cat(chunks).numpy()


# --------------------------------------------------------------------------------------
# Best-first (shortest-path) rank of one secret
# --------------------------------------------------------------------------------------
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
    _require_incremental(module)
    if isinstance(secrets, str) or not isinstance(secrets, Sequence) or not secrets:
        raise ValueError(f"`secrets` must be a non-empty sequence of candidate strings, got {secrets!r}")
    chars, length = _best_first_space(canaries, secrets[0])
    for secret in secrets[1:]:
        _best_first_space(canaries, secret)
    max_expansions = check_int("max_expansions", max_expansions, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    a = len(chars)
    device = _device_of(module)
    char_t = torch.as_tensor(chars, dtype=torch.long, device=device)
    secret_index = np.array([int(canaries.candidate_index(s)) for s in secrets], dtype=np.int64)
    alphabet = canaries.alphabet
    with _evaluating(module):  # the secrets' scores, one row each, as score_shared_prefix computes them
        score0 = np.zeros(len(secrets))
        for i, secret in enumerate(secrets):
            state, logp = _init(module, canaries.prefix_ids, device)
            for j, c in enumerate(secret):
                _check_logprobs(logp)
                token = chars[alphabet.index(c)]
                score0[i] -= float(logp[0, token])
                if j + 1 < length:
                    state, logp = module.step(state, torch.tensor([token], device=device))
                    logp = logp.float()
    # expand a little past each score: the batched steps of the search round differently from the
    # one-row pass above, and a secret's own leaf must be found to compare like with like
    thresholds = score0 + 1e-5 * np.maximum(1.0, np.abs(score0))
    finite = np.isfinite(thresholds)
    threshold = float(thresholds[finite].max()) if finite.any() else -np.inf
    nonfinite = int(np.count_nonzero(~finite))

    leaf_cost: list[np.ndarray] = []
    leaf_path: list[np.ndarray] = []
    states: dict[int, Any] = {}  # chunk id -> state of the nodes expanded together
    pending: dict[int, int] = {}  # chunk id -> frontier entries still pointing at it
    depth_of: dict[int, int] = {}  # chunk id -> depth (secret characters) of its nodes
    rows_of: dict[int, int] = {}  # chunk id -> rows in its state
    # the frontier: nodes not yet expanded, all with cost <= threshold (the others are never expanded)
    f_cost = np.empty(0, dtype=np.float64)
    f_chunk = np.empty(0, dtype=np.int64)
    f_row = np.empty(0, dtype=np.int64)
    f_char = np.empty(0, dtype=np.int64)
    f_path = np.empty(0, dtype=np.int64)
    next_id = 0

    def add_children(cost: np.ndarray, logp: torch.Tensor, path: np.ndarray, depth: int, state: Any) -> None:
        # the nodes (cost [m], path [m], `depth` characters) were just stepped: logp [m, V], state of m rows
        nonlocal f_cost, f_chunk, f_row, f_char, f_path, next_id, nonfinite
        child = cost[:, None] - logp[:, char_t].double().cpu().numpy()  # [m, A]
        nonfinite += int(np.count_nonzero(~np.isfinite(child)))
        child_path = path[:, None] * a + np.arange(a, dtype=np.int64)
        keep = child <= threshold
        if depth + 1 == length:
            leaf_cost.append(child[keep])
            leaf_path.append(child_path[keep])
            return
        rows, cols = np.nonzero(keep)
        if rows.size == 0:
            return
        cid, next_id = next_id, next_id + 1
        states[cid], pending[cid], depth_of[cid], rows_of[cid] = state, int(rows.size), depth, len(cost)
        f_cost = np.concatenate([f_cost, child[keep]])
        f_chunk = np.concatenate([f_chunk, np.full(rows.size, cid, dtype=np.int64)])
        f_row = np.concatenate([f_row, rows])
        f_char = np.concatenate([f_char, cols])
        f_path = np.concatenate([f_path, child_path[keep]])

    explored = 1
    with _evaluating(module):
        state0, logp0 = _init(module, canaries.prefix_ids, device)
        _check_logprobs(logp0)
        add_children(np.zeros(1), logp0, np.zeros(1, dtype=np.int64), 0, state0)
        levels = np.sort(thresholds[finite])
        level = 0
        while f_cost.size and explored < max_expansions:
            # finish the secrets in order of score: expand only nodes within the next unfinished one's
            # threshold, so the budget goes to the most exposed secrets first, as separate searches would
            while level < levels.size and not (f_cost <= levels[level]).any():
                level += 1
            if level == levels.size:
                break
            eligible = np.flatnonzero(f_cost <= levels[level])
            k = min(batch_size, max_expansions - explored, eligible.size)
            pick = eligible[np.argpartition(f_cost[eligible], k - 1)[:k]] if k < eligible.size else eligible
            pick = pick[np.lexsort((f_char[pick], f_row[pick], f_chunk[pick]))]  # rows in state order
            p_cost, p_chunk, p_row, p_char, p_path = (
                f_cost[pick],
                f_chunk[pick],
                f_row[pick],
                f_char[pick],
                f_path[pick],
            )
            rest = np.ones(f_cost.size, dtype=bool)
            rest[pick] = False
            f_cost, f_chunk, f_row, f_char, f_path = (
                f_cost[rest],
                f_chunk[rest],
                f_row[rest],
                f_char[rest],
                f_path[rest],
            )
            bounds = np.flatnonzero(np.diff(p_chunk)) + 1
            for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, k]):
                cid = int(p_chunk[lo])
                counts = np.bincount(p_row[lo:hi], minlength=rows_of[cid])
                state = states[cid]
                if not (counts == 1).all():
                    state = module.expand_state(
                        state, torch.as_tensor(counts, dtype=torch.long, device=device)
                    )
                state, logp = module.step(state, char_t[torch.as_tensor(p_char[lo:hi], device=device)])
                logp = logp.float()
                _check_logprobs(logp)
                explored += int(hi - lo)
                depth = depth_of[cid] + 1  # the expanded nodes' depth
                pending[cid] -= int(hi - lo)
                if pending[cid] == 0:  # every child of this chunk is expanded: free its state
                    del states[cid], pending[cid], depth_of[cid], rows_of[cid]
                add_children(p_cost[lo:hi], logp, p_path[lo:hi], depth, state)

    costs = np.concatenate(leaf_cost) if leaf_cost else np.empty(0)
    paths = np.concatenate(leaf_path) if leaf_path else np.empty(0, dtype=np.int64)
    cheapest_left = float(f_cost.min()) if f_cost.size else np.inf
    results = []
    for i in range(len(secrets)):
        own = paths == secret_index[i]
        score = float(costs[own][0]) if own.any() else float(score0[i])
        others = int(np.count_nonzero(~own & (costs <= score)))
        # every node cheaper than this secret's threshold is expanded: its rank is complete
        done = nonfinite == 0 and bool(finite[i]) and cheapest_left > thresholds[i]
        results.append(
            BestFirstResult(
                rank=1 + others if done else None,
                lower_bound_rank=1 + others,
                explored=explored,
                canary_score=score,
                space_size=int(canaries.space_size),
                nonfinite=nonfinite,
            )
        )
    return results


# --------------------------------------------------------------------------------------
# Extraction: greedy / beam decoding from the prefix
# --------------------------------------------------------------------------------------
def beam_search(
    module: Any,
    prefix_ids: Sequence[int],
    steps: int,
    *,
    width: int = 1,
) -> list[tuple[int, ...]]:
    """The ``width`` most likely continuations of ``steps`` tokens after the prefix, best first.

    ``width=1`` is greedy decoding. Uses the :class:`IncrementalLM` interface when the module
    has it, else full forward passes of the default ``[B, T, V]`` interface. Decoding is over
    the whole vocabulary (the model is free to emit anything).

    Args:
        module: the language model.
        prefix_ids: token ids of the prefix.
        steps: tokens to decode.
        width: beam width (>= 1).

    Returns:
        A list of up to ``width`` token-id tuples of length ``steps``.
    """
    if width < 1:
        raise ValueError(f"`beam_width` must be >= 1, got {width}")
    device = _device_of(module)
    incremental = is_incremental(module)
    with _evaluating(module):
        prefix = torch.as_tensor(list(prefix_ids), dtype=torch.long, device=device).unsqueeze(0)
        if incremental:
            state, logp = _init(module, prefix_ids, device)
        else:
            logp = F.log_softmax(_logits_of(module(prefix), prefix)[:, -1].float(), -1)
            state = None
        seqs = torch.zeros((1, 0), dtype=torch.long, device=device)
        scores = torch.zeros(1, dtype=torch.float64, device=device)
        for d in range(steps):
            total = (scores.unsqueeze(1) - logp.double()).reshape(-1)
            k = min(width, total.numel())
            best = torch.topk(total, k, largest=False).indices
            v = logp.shape[1]
            parent, token = best // v, best % v
            order = torch.argsort(parent, stable=True)
            parent, token = parent[order], token[order]
            scores = total[best[order]]
            seqs = torch.cat([seqs[parent], token.unsqueeze(1)], dim=1)
            if d + 1 == steps:
                break
            if incremental:
                counts = torch.bincount(parent, minlength=logp.shape[0])
                state = module.expand_state(state, counts)
                state, logp = module.step(state, token)
                logp = logp.float()
            else:
                ids = torch.cat([prefix.expand(seqs.shape[0], -1), seqs], dim=1)
                logp = F.log_softmax(_logits_of(module(ids), ids)[:, -1].float(), -1)
        order = torch.argsort(scores, stable=True)
        return [tuple(int(t) for t in seqs[i].tolist()) for i in order.tolist()]
