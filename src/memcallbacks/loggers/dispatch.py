"""The dispatch and the privacy gate: one record to every attached logger, in that logger's form.

:func:`emit` (inside training, rank 0 only) and :func:`emit_to` (any list of loggers) withhold a
record flagged ``per_sample`` or ``secret`` unless the caller opted in, then hand it to the adapter of
each logger's backend (W&B, TensorBoard, MLflow; other loggers get nothing). A failing adapter is
warned about once per logger (:class:`TrackerWarning`) and never raised.

Example:
    >>> from memcallbacks.loggers import Alert
    >>> emit_to([], Alert("Leakage", "mem/canary/exposure_max = 18.2 bits > 15.0", epoch=7))
    0
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from memcallbacks.loggers.mlflow_backend import emit_mlflow
from memcallbacks.loggers.records import RECORD_TYPES, Histogram, Record
from memcallbacks.loggers.tensorboard_backend import emit_tensorboard
from memcallbacks.loggers.wandb_backend import emit_wandb

__all__ = ["TrackerWarning", "emit", "emit_to", "takes_records"]


class TrackerWarning(UserWarning):
    """A tracker (logger) call failed; training continues and the run directory still gets the numbers."""


_Adapter = Callable[[Any, Any], None]


def emit(
    trainer: Any, record: Record, *, allow_per_sample: bool = False, allow_secrets: bool = False
) -> None:
    """Send ``record`` to every logger of ``trainer`` that supports its kind (rank 0 only).

    Each logger in ``trainer.loggers`` gets its own form (see the module docstring); loggers
    without an adapter (``CSVLogger``, custom ones) get nothing. A logger call that raises
    is caught and reported once per logger as a :class:`TrackerWarning`.

    Args:
        trainer: the running ``Trainer``.
        record: one of :class:`Histogram`, :class:`Table`, :class:`LineSeries`,
            :class:`RocCurve`, :class:`Figure`, :class:`Alert`.
        allow_per_sample: the user opted in to sending per-sample values (``log_per_sample=True``).
        allow_secrets: the user opted in to sending canary secrets (``log_secrets=True``).

    Raises:
        TypeError: ``record`` is not one of the record types.

    Example:
        >>> emit(trainer, Alert("Leakage", "mem/canary/exposure_max = 18.2 bits > 15.0", epoch=7))  # doctest: +SKIP
    """
    _check_record(record)
    if not getattr(trainer, "is_global_zero", True):
        return
    emit_to(
        getattr(trainer, "loggers", None) or [],
        record,
        allow_per_sample=allow_per_sample,
        allow_secrets=allow_secrets,
    )


def emit_to(
    loggers: Sequence[Any], record: Record, *, allow_per_sample: bool = False, allow_secrets: bool = False
) -> int:
    """:func:`emit` without a Trainer: send ``record`` to each of ``loggers`` (e.g. after training).

    Returns:
        How many loggers failed (each failure is warned about once per logger, never raised);
        a record withheld by the privacy opt-ins counts as no failure.

    Raises:
        TypeError: ``record`` is not one of the record types.

    Example:
        >>> emit_to([TensorBoardLogger("tb_logs")], Figure("attack/roc", fig, epoch=0))  # doctest: +SKIP
        0
    """
    _check_record(record)
    if (getattr(record, "per_sample", False) and not allow_per_sample) or (
        getattr(record, "secret", False) and not allow_secrets
    ):
        return 0
    if isinstance(record, Histogram):  # exact extremes only with the per-sample opt-in
        record = dataclasses.replace(record, exact=allow_per_sample)
    failed = 0
    for logger in loggers:
        adapter = _adapter_for(logger)
        if adapter is None:
            continue
        try:
            adapter(logger, record)
        except Exception as e:  # a tracker must never stop training
            _warn_once(logger, record, e)
            failed += 1
    return failed


def takes_records(trainer: Any) -> bool:
    """Whether :func:`emit` would hand a record to any logger of ``trainer`` (W&B, TensorBoard, MLflow).

    Lets a monitor skip building records (ROC curves, histograms) that no logger would receive.

    Example:
        >>> takes_records(None)
        False
    """
    return any(_adapter_for(logger) is not None for logger in getattr(trainer, "loggers", None) or [])


def _check_record(record: Any) -> None:
    if not isinstance(record, RECORD_TYPES):
        raise TypeError(
            f"`record` must be a memcallbacks.loggers record (Histogram, Table, LineSeries, RocCurve, "
            f"Figure, Alert), got {type(record).__name__}"
        )


def _class_names(obj: Any) -> set[str]:
    # Match by class name so both ``pytorch_lightning.loggers`` and ``lightning.pytorch.loggers``
    # (distinct classes) and user subclasses are recognised, without importing optional packages.
    return {cls.__name__ for cls in type(obj).__mro__}


def _adapter_for(logger: Any) -> _Adapter | None:
    names = _class_names(logger)
    if "WandbLogger" in names:
        return emit_wandb
    if "TensorBoardLogger" in names:
        return emit_tensorboard
    if "MLFlowLogger" in names:
        return emit_mlflow
    return None


_warned: weakref.WeakSet[Any] = weakref.WeakSet()
_warned_ids: set[int] = set()


def _warn_once(logger: Any, record: Any, error: Exception) -> None:
    try:
        if logger in _warned:
            return
        _warned.add(logger)
    except TypeError:  # not weak-referenceable
        if id(logger) in _warned_ids:
            return
        _warned_ids.add(id(logger))
    from pytorch_lightning.utilities import rank_zero_warn

    rank_zero_warn(
        f"memcallbacks: {type(logger).__name__} failed to record {type(record).__name__} "
        f"{getattr(record, 'key', getattr(record, 'title', ''))!r}: {type(error).__name__}: {error}. "
        "Training continues and the run directory still gets the numbers; further failures of this "
        "logger are not reported.",
        category=TrackerWarning,
    )
