"""memcallbacks: PyTorch Lightning callbacks that measure memorisation during training.

Add a callback to an existing ``Trainer``; per-sample loss trajectories, canary exposure
(Carlini et al. 2019), train/held-out loss gaps and membership-inference scores (Yeom et
al. 2018; Carlini et al. 2022), and a one-run privacy audit (Steinke et al. 2023) are
computed during training and logged to the loggers the Trainer already has.

Example:
    >>> import pytorch_lightning as pl
    >>> from memcallbacks import LossTrajectoryTracker, MembershipInferenceMonitor
    >>> trainer = pl.Trainer(callbacks=[LossTrajectoryTracker(), MembershipInferenceMonitor()])

Public names are imported lazily, so ``import memcallbacks.metrics`` does not import
Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The one export list: public name -> module that defines it. ``__all__``, ``__getattr__`` and
# ``__dir__`` derive from it; the ``TYPE_CHECKING`` block below repeats it for type checkers (a
# test keeps the two equal).
_EXPORTS: dict[str, str] = {
    # data
    "IndexedDataset": "memcallbacks.data.indexed",
    "split_index": "memcallbacks.data.indexed",
    "IndexedStream": "memcallbacks.data.streams",
    "text_id": "memcallbacks.data.streams",
    "CanarySet": "memcallbacks.data.canaries",
    "Canary": "memcallbacks.data.canaries",
    "CharTokenizer": "memcallbacks.data.canaries",
    "TrajectoryStore": "memcallbacks.data.store",
    # packed language-model batches whose samples stay the texts
    "PackingCollator": "memcallbacks.lm.packing",
    "packed_text_losses": "memcallbacks.lm.packing",
    "packed_model_inputs": "memcallbacks.lm.packing",
    # callbacks, and their base class (the extension point for a new monitor)
    "MemorisationCallback": "memcallbacks.callbacks._base",
    "LossTrajectoryTracker": "memcallbacks.callbacks.trajectory",
    "MembershipInferenceMonitor": "memcallbacks.callbacks.membership",
    "CanaryExposureMonitor": "memcallbacks.callbacks.exposure",
    "PrivacyAuditMonitor": "memcallbacks.callbacks.audit",
    "LeakageEarlyStopping": "memcallbacks.callbacks.stopping",
    "LeakageCondition": "memcallbacks.callbacks.stopping",
    "DPEpsilonMonitor": "memcallbacks.callbacks.dp",
    "SequenceMemorisationMonitor": "memcallbacks.callbacks.sequence",
    "ShadowScoreRecorder": "memcallbacks.callbacks.shadow",
    "shadow_split": "memcallbacks.callbacks.shadow",
    # reading a run directory, and the offline analyses over several runs
    "RunDirectory": "memcallbacks.rundir",
    "run_attack": "memcallbacks.offline.attack",
    "log_attack_results": "memcallbacks.offline.attack",
    "run_memorisation": "memcallbacks.offline.counterfactual",
    # metrics (also importable from memcallbacks.metrics)
    "MembershipReport": "memcallbacks.metrics.membership",
    "AttackReport": "memcallbacks.metrics.attacks",
    "CounterfactualResult": "memcallbacks.metrics.counterfactual",
    "LossThresholdMIA": "memcallbacks.metrics.classes",
    "TrajectoryStatistics": "memcallbacks.metrics.dynamics",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'memcallbacks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover - static names for type checkers and IDEs
    from memcallbacks.callbacks._base import MemorisationCallback
    from memcallbacks.callbacks.audit import PrivacyAuditMonitor
    from memcallbacks.callbacks.dp import DPEpsilonMonitor
    from memcallbacks.callbacks.exposure import CanaryExposureMonitor
    from memcallbacks.callbacks.membership import MembershipInferenceMonitor
    from memcallbacks.callbacks.sequence import SequenceMemorisationMonitor
    from memcallbacks.callbacks.shadow import ShadowScoreRecorder, shadow_split
    from memcallbacks.callbacks.stopping import LeakageCondition, LeakageEarlyStopping
    from memcallbacks.callbacks.trajectory import LossTrajectoryTracker
    from memcallbacks.data.canaries import Canary, CanarySet, CharTokenizer
    from memcallbacks.data.indexed import IndexedDataset, split_index
    from memcallbacks.data.store import TrajectoryStore
    from memcallbacks.data.streams import IndexedStream, text_id
    from memcallbacks.lm.packing import PackingCollator, packed_model_inputs, packed_text_losses
    from memcallbacks.metrics.attacks import AttackReport
    from memcallbacks.metrics.classes import LossThresholdMIA
    from memcallbacks.metrics.counterfactual import CounterfactualResult
    from memcallbacks.metrics.dynamics import TrajectoryStatistics
    from memcallbacks.metrics.membership import MembershipReport
    from memcallbacks.offline.attack import log_attack_results, run_attack
    from memcallbacks.offline.counterfactual import run_memorisation
    from memcallbacks.rundir import RunDirectory
