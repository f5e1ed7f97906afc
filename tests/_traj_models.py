"""Deprecated alias of :mod:`helpers.models` (kept while test files switch their imports)."""

from helpers.models import FaultyClassifier, NoCorrectClassifier, per_sample_losses

__all__ = ["FaultyClassifier", "NoCorrectClassifier", "per_sample_losses"]
