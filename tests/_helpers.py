"""Deprecated alias of :mod:`helpers` (kept while test files switch their imports)."""

from helpers.data import EpochShuffleSampler, loaders, make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer

__all__ = ["EpochShuffleSampler", "TinyClassifier", "loaders", "make_blobs", "trainer"]
