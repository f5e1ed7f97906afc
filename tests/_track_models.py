"""Deprecated alias of :mod:`helpers` (kept while test files switch their imports)."""

from helpers.callbacks import RecordEmitter, RisingScore
from helpers.models import UserLoggedScore

__all__ = ["RecordEmitter", "RisingScore", "UserLoggedScore"]
