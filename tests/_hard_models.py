"""Deprecated alias of :mod:`helpers.every_monitor` (kept while test files switch their imports)."""

from helpers.every_monitor import *  # noqa: F403
from helpers.every_monitor import __all__  # noqa: F401
