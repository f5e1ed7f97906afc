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
* :func:`memcallbacks.lm.best_first.rank_best_first`: the exact rank of one secret without scoring the whole space,
  by a best-first (Dijkstra, shortest-path) search over the same trie (Carlini et al.
  2019, Sec. 8): only prefixes at least as likely as the secret are expanded, so a highly
  exposed canary is ranked after a handful of model steps, whatever the space's size.

All run in eval mode under ``torch.no_grad()``, restore the module's train mode, and
show a tqdm progress bar when a call takes more than a few seconds, on rank 0 and only
when stdout is a terminal (``progress=True``/``False`` forces it).

No Lightning import: this module is usable on a bare ``nn.Module``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from memcallbacks.lm.model import evaluating, module_device, output_logits

__all__ = [
    "SCORE_FN_FIX",
    "IncrementalLM",
    "ScoreFn",
    "is_incremental",
    "log_perplexity",
    "pad_sequences",
    "score_sequences",
    "score_shared_prefix",
    "score_space_trie",
    "require_incremental",
    "start_incremental",
]

ScoreFn = Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]
"""``score_fn(module, token_ids [B, T], target_mask [B, T] bool) -> Tensor[B]``: the
log-perplexity (sum of natural-log NLL) of the tokens where ``target_mask`` is true, each
given the tokens before it. Rows are right-padded with 0."""

SCORE_FN_FIX = (
    "pass `score_fn(module, token_ids, target_mask) -> Tensor[B]` (log-perplexity of the masked tokens) "
    "for a model with another interface"
)


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
    logits = output_logits(out, token_ids, source="`module(token_ids)`", fix=SCORE_FN_FIX)
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
    device = module_device(module)
    out = np.empty(n, dtype=np.float64)
    bar = _Progress(n, desc, progress)
    try:
        with evaluating(module):
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
def require_incremental(module: Any) -> None:
    """Raises a ``TypeError`` naming the fallback when ``module`` is not an :class:`IncrementalLM`."""
    if not is_incremental(module):
        raise TypeError(
            f"{type(module).__name__} does not implement memcallbacks.lm.scoring.IncrementalLM "
            "(init_state, step, expand_state); use score_sequences() instead"
        )


def start_incremental(
    module: Any, prefix_ids: Sequence[int], device: torch.device
) -> tuple[Any, torch.Tensor]:
    """``module.init_state`` on a non-empty prefix: the state and float32 next-token log-probabilities ``[1, V]``."""
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
    require_incremental(module)
    device = module_device(module)
    secrets = torch.as_tensor(np.asarray(secret_ids), dtype=torch.long)
    if secrets.dim() != 2:
        raise ValueError(f"`secret_ids` must be [N, L], got shape {tuple(secrets.shape)}")
    n, length = secrets.shape
    out = np.empty(n, dtype=np.float64)
    bar = _Progress(n, desc, progress)
    try:
        with evaluating(module):
            state0, logp0 = start_incremental(module, prefix_ids, device)
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
    require_incremental(module)
    device = module_device(module)
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
        with evaluating(module):
            state0, logp0 = start_incremental(module, prefix_ids, device)
            expand(state0, logp0, torch.zeros(1, dtype=torch.float64, device=device), 0)
    finally:
        bar.close()
    return torch.cat(chunks).numpy()
