"""Decoding continuations from a language model: the greedy loop and beam search.

* :func:`greedy_decode`: the one greedy loop of the package. It takes the next-token logits
  after a prefix and a ``step`` function that appends one token per row and returns the next
  logits; whether ``step`` reuses an RNN state, a Hugging Face KV cache
  (:meth:`memcallbacks.lm.hf.HFIncrementalLM.greedy`) or runs the whole sequence again is the
  caller's business. Greedy decoding is what k-extractable memorisation uses (Carlini et al.,
  "Quantifying Memorization Across Neural Language Models", ICLR 2023).
* :func:`beam_search`: the ``width`` most likely continuations of a canary prefix (The Secret
  Sharer's extraction attack, Carlini et al., USENIX Security 2019, Sec. 8).

Pure torch, no Lightning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from memcallbacks.lm.model import evaluating, module_device, output_logits
from memcallbacks.lm.scoring import SCORE_FN_FIX, is_incremental, start_incremental

__all__ = ["beam_search", "greedy_decode"]


def greedy_decode(
    next_logits: torch.Tensor,
    steps: int,
    step: Callable[[torch.Tensor], torch.Tensor],
    *,
    source: str = "the model",
    batch: int | None = None,
) -> torch.Tensor:
    """Greedy continuation ``[B, steps]``: the argmax token, ``steps`` times.

    ``next_logits [B, V]`` are the scores of the first token to decode (logits or
    log-probabilities: only their argmax matters); ``step(tokens [B]) -> [B, V]`` appends one
    token per row and returns the scores of the next one. ``step`` is called ``steps - 1``
    times (never after the last token). No host synchronisation in the loop.

    Args:
        next_logits: ``[B, V]`` scores of the first decoded token.
        steps: tokens to decode (>= 0).
        step: appends tokens ``[B]`` and returns the next scores ``[B, V]``.
        source: what produced the scores, for the error message.
        batch: the expected batch size ``B`` (None: that of ``next_logits``).

    Returns:
        LongTensor ``[B, steps]`` on the scores' device.

    Raises:
        ValueError: scores that are not ``[B, V]`` for the batch.

    Example:
        >>> table = torch.eye(4)  # token t is followed by token t: a model that repeats itself
        >>> greedy_decode(table[[1, 2]], 3, lambda tok: table[tok])
        tensor([[1, 1, 1],
                [2, 2, 2]])
    """
    b = _check_scores(next_logits, batch, source)
    out = torch.empty((b, steps), dtype=torch.long, device=next_logits.device)
    for j in range(steps):
        token = next_logits.argmax(dim=-1)
        out[:, j] = token
        if j + 1 < steps:
            next_logits = step(token)
            _check_scores(next_logits, b, source)
    return out


def _check_scores(scores: Any, batch: int | None, source: str) -> int:
    if (
        not isinstance(scores, torch.Tensor)
        or scores.dim() != 2
        or (batch is not None and scores.shape[0] != batch)
    ):
        raise ValueError(
            f"{source} returned next-token scores of shape {getattr(scores, 'shape', None)} "
            f"for a batch of {batch if batch is not None else 'B'}; expected [B, V]"
        )
    return int(scores.shape[0])


def beam_search(
    module: Any,
    prefix_ids: Sequence[int],
    steps: int,
    *,
    width: int = 1,
) -> list[tuple[int, ...]]:
    """The ``width`` most likely continuations of ``steps`` tokens after the prefix, best first.

    Uses the :class:`~memcallbacks.lm.scoring.IncrementalLM` interface when the module has it,
    else full forward passes of the default ``[B, T, V]`` interface. Decoding is over the whole
    vocabulary (the model is free to emit anything). ``width=1`` keeps the single most likely
    continuation at every step.

    Args:
        module: the language model.
        prefix_ids: token ids of the prefix.
        steps: tokens to decode.
        width: beam width (>= 1).

    Returns:
        A list of up to ``width`` token-id tuples of length ``steps``.

    Raises:
        ValueError: ``width < 1``.
    """
    if width < 1:
        raise ValueError(f"`beam_width` must be >= 1, got {width}")
    device = module_device(module)
    incremental = is_incremental(module)
    with evaluating(module):
        prefix = torch.as_tensor(list(prefix_ids), dtype=torch.long, device=device).unsqueeze(0)
        if incremental:
            state, logp = start_incremental(module, prefix_ids, device)
        else:
            logp = _next_logprobs(module, prefix)
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
                state = module.expand_state(state, torch.bincount(parent, minlength=logp.shape[0]))
                state, logp = module.step(state, token)
                logp = logp.float()
            else:
                logp = _next_logprobs(module, torch.cat([prefix.expand(seqs.shape[0], -1), seqs], dim=1))
        order = torch.argsort(scores, stable=True)
        return [tuple(int(t) for t in seqs[i].tolist()) for i in order.tolist()]


def _next_logprobs(module: Any, ids: torch.Tensor) -> torch.Tensor:
    logits = output_logits(module(ids), ids, source="`module(token_ids)`", fix=SCORE_FN_FIX)
    return F.log_softmax(logits[:, -1].float(), -1)
