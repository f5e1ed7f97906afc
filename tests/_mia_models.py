"""Deprecated alias of :mod:`helpers` (kept while test files switch their imports)."""

from helpers.data import BlobsDataModule

__all__ = ["BlobsDataModule"]
