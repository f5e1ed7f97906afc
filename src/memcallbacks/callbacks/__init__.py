"""Lightning callbacks of memcallbacks: thin glue around :mod:`memcallbacks.metrics`.

One callback, one module; imported lazily (``from memcallbacks.callbacks import CanaryExposureMonitor``
or ``from memcallbacks import CanaryExposureMonitor``).
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULES = {
    "LossTrajectoryTracker": "trajectory",
    "MembershipInferenceMonitor": "membership",
    "CanaryExposureMonitor": "exposure",
    "PrivacyAuditMonitor": "audit",
    "LeakageEarlyStopping": "stopping",
    "LeakageCondition": "stopping",
    "DPEpsilonMonitor": "dp",
    "SequenceMemorisationMonitor": "sequence",
    "ShadowScoreRecorder": "shadow",
    "MemorisationCallback": "_base",
}

__all__ = sorted(_MODULES)


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module 'memcallbacks.callbacks' has no attribute {name!r}")
    return getattr(importlib.import_module(f"memcallbacks.callbacks.{_MODULES[name]}"), name)
