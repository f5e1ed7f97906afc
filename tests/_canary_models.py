"""Deprecated alias of :mod:`helpers.language_models` (kept while test files switch their imports)."""

from helpers.language_models import NaiveOnlyLM, PooledLM, PositionalLM, ShortContextLM, tiny_window_lm

__all__ = ["NaiveOnlyLM", "PooledLM", "PositionalLM", "ShortContextLM", "tiny_window_lm"]
