"""Every recorded number of a set of callbacks, the run directory as data, and exact comparisons.

Used to check that a resumed, crashed-and-resumed or distributed run holds exactly what an
uninterrupted one-process run holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memcallbacks.utilities import fileio


def snapshot(callbacks: list[Any], *, full_store: bool = True) -> dict[str, Any]:
    """Every recorded number of the memcallbacks callbacks in ``callbacks``, as plain values.

    A :class:`~memcallbacks.LossTrajectoryTracker` appears under ``traj`` (``traj[<name>]`` when it
    has a ``name``): with ``full_store`` its whole loss and correctness matrices (only rank 0 keeps
    them in a DDP run), always its per-sample statistics.
    """
    from memcallbacks import (
        CanaryExposureMonitor,
        DPEpsilonMonitor,
        LeakageEarlyStopping,
        LossTrajectoryTracker,
        MembershipInferenceMonitor,
        PrivacyAuditMonitor,
    )

    out: dict[str, Any] = {}
    for cb in callbacks:
        if isinstance(cb, LossTrajectoryTracker):
            if cb.store is None:
                continue
            p = "traj" if cb.name is None else f"traj[{cb.name}]"
            if full_store:
                out[f"{p}/matrix"] = cb.store.matrix()
                out[f"{p}/correct"] = cb.store.correct_matrix()
                out[f"{p}/epochs"] = np.asarray(cb.recorded_epochs)
            st = cb.statistics()
            for f in ("count", "mean", "std", "last", "min", "forgetting_events", "learned_epoch"):
                out[f"{p}/stat/{f}"] = np.asarray(getattr(st, f))
        elif isinstance(cb, MembershipInferenceMonitor):
            out["mia/member_losses"] = cb.member_losses
            out["mia/nonmember_losses"] = cb.nonmember_losses
            out["mia/history"] = json.dumps(cb.history, sort_keys=True)
        elif isinstance(cb, CanaryExposureMonitor):
            for k, v in cb.arrays.items():
                out[f"canary/{k}"] = v
        elif isinstance(cb, PrivacyAuditMonitor):
            out["audit/history"] = json.dumps(cb.history, sort_keys=True)
        elif isinstance(cb, DPEpsilonMonitor):
            out["dp/history"] = json.dumps(cb.history, sort_keys=True)
        elif isinstance(cb, LeakageEarlyStopping):
            out["stop/state"] = json.dumps(cb.state_dict(), sort_keys=True, default=str)
            out["stop/stopped_epoch"] = cb.stopped_epoch
            out["stop/reason"] = cb.reason
    return out


def load_tree(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Every non-hidden file under ``root`` loaded through memcallbacks.utilities.fileio (relative path -> content)."""
    out: dict[str, Any] = {}
    root = Path(root)
    for path in sorted(root.rglob("*")):
        if path.is_dir() or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        rel = str(path.relative_to(root))
        if path.suffix == ".npz":
            out[rel] = fileio.load_npz(path)
        elif path.suffix == ".npy":
            out[rel] = fileio.load_npy(path)
        elif path.suffix == ".json":
            out[rel] = fileio.load_json(path)
        elif path.suffix == ".pt":
            out[rel] = torch.load(path, weights_only=True)
        else:
            out[rel] = path.read_bytes()
    return out


def same(a: Any, b: Any) -> bool:
    """Exact equality of two snapshot values (NaN equal to NaN)."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (str, bytes)):
        return bool(a == b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "fc":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys whose values differ (or exist on one side only)."""
    return sorted(k for k in set(a) | set(b) if k not in a or k not in b or not same(a[k], b[k]))


def without_run_ids(tree: dict[str, Any]) -> dict[str, Any]:
    """A run directory's tree without what names the run that wrote it (``run.json``, ``run_id`` fields).

    Two fits compared file by file are two runs: their run ids differ by design.
    """
    return {
        name: {k: v for k, v in content.items() if k != "run_id"} if isinstance(content, dict) else content
        for name, content in tree.items()
        if name != "run.json"
    }
