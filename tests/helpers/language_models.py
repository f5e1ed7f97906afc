"""Tiny language models for the canary tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from memcallbacks.demos.toy import WindowLM


def tiny_window_lm(vocab_size: int) -> WindowLM:
    """A small WindowLM (fast on CPU)."""
    return WindowLM(vocab_size, context=4, embedding_dim=4, hidden_size=16, lr=1e-2)


class NaiveOnlyLM(WindowLM):
    """A WindowLM without the incremental interface: forces the batched naive path."""

    init_state = None  # type: ignore[assignment]
    step = None  # type: ignore[assignment]
    expand_state = None  # type: ignore[assignment]


class PooledLM(WindowLM):
    """Returns [B, V] logits (not [B, T, V]): the default score_fn must refuse it."""

    init_state = None  # type: ignore[assignment]
    step = None  # type: ignore[assignment]
    expand_state = None  # type: ignore[assignment]

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(token_ids)[:, -1]


class ShortContextLM(WindowLM):
    """Declares a context of 5 tokens."""

    max_len = 5


class PositionalLM(torch.nn.Module):
    """Predicts token ``target[t + 1]`` at position ``t`` with high confidence: emits ``target``."""

    def __init__(self, target: list[int], vocab_size: int) -> None:
        super().__init__()
        self.register_buffer("target", torch.tensor(target, dtype=torch.long))
        self.vocab_size = vocab_size
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        b, t = token_ids.shape
        logits = torch.zeros(b, t, self.vocab_size)
        nxt = self.target[1 : t + 1]
        logits[:, : nxt.numel()] = F.one_hot(nxt, self.vocab_size).float() * 10.0
        return logits
