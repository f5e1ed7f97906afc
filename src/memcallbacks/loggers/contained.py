"""Loggers that never stop training: :func:`contain_failures` and the :class:`ContainedLogger` marker.

Lightning calls each logger's ``log_metrics`` for every scalar; a logger that raises there ends
``fit``. A contained logger counts the failure, warns once (:class:`~memcallbacks.loggers.TrackerWarning`)
and drops the call.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

from memcallbacks.loggers.dispatch import TrackerWarning

__all__ = ["ContainedLogger", "contain_failures"]

_CONTAINED_METHODS = (
    "log_metrics",
    "log_hyperparams",
    "log_graph",
    "save",
    "finalize",
    "after_save_checkpoint",
)


class ContainedLogger(abc.ABC):  # noqa: B024 - a marker, filled by register()
    """What the loggers returned by :func:`contain_failures` are (use it in ``isinstance`` checks).

    A contained logger is still an instance of its own class (a ``TensorBoardLogger`` stays one,
    so ``trainer.log_dir``, checkpoint folders and memcallbacks' rich records are unchanged); the
    calls Lightning makes on it (``log_metrics``, ``log_hyperparams``, ``log_graph``, ``save``,
    ``finalize``, ``after_save_checkpoint``) never raise: a failure is counted in ``failures``,
    the latest is in ``last_failure``, the first is warned about as a :class:`TrackerWarning`,
    and the call is dropped.
    """


def _record_failure(logger: Any, base: type, method: str, error: Exception) -> None:
    count = int(logger.__dict__.get("_memcallbacks_failures", 0)) + 1
    logger.__dict__["_memcallbacks_failures"] = count
    logger.__dict__["_memcallbacks_last_failure"] = f"{method}: {type(error).__name__}: {error}"
    if count == 1:
        from pytorch_lightning.utilities import rank_zero_warn

        rank_zero_warn(
            f"memcallbacks.contain_failures: {base.__name__}.{method} failed ({type(error).__name__}: {error}); "
            "training continues and the run directory still gets memcallbacks' numbers. Further failures "
            "of this logger are counted in `logger.failures`, not reported.",
            category=TrackerWarning,
        )


def _contained_method(base: type, name: str) -> Callable[..., Any]:
    original = getattr(base, name)

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, *args, **kwargs)
        except Exception as e:  # a tracker must never stop training
            _record_failure(self, base, name, e)
            return None

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"``{base.__name__}.{name}``; a failure is counted and warned about once, never raised."
    return method


def _failures(self: Any) -> int:
    return int(self.__dict__.get("_memcallbacks_failures", 0))


def _last_failure(self: Any) -> str | None:
    return self.__dict__.get("_memcallbacks_last_failure")


def _reduce_ex(self: Any, protocol: Any) -> Any:
    # pickled (ddp_spawn) as the logger's own class, contained again when unpickled
    contained = type(self)
    self.__class__ = contained.__bases__[0]
    try:
        reduced = self.__reduce_ex__(protocol)
    finally:
        self.__class__ = contained
    return (_rebuild_contained, (reduced,))


_CONTAINED_CLASSES: dict[type, type] = {}


def _contained_class(base: type) -> type:
    cls = _CONTAINED_CLASSES.get(base)
    if cls is None:
        namespace: dict[str, Any] = {
            name: _contained_method(base, name) for name in _CONTAINED_METHODS if hasattr(base, name)
        }
        namespace.update(
            __slots__=(),  # no new storage: the logger's class can be swapped in place
            __module__=base.__module__,
            __reduce_ex__=_reduce_ex,
            failures=property(_failures, doc="How many calls of this logger failed (and were dropped)."),
            last_failure=property(_last_failure, doc="The latest failure: 'method: Type: message'."),
        )
        cls = type(f"Contained{base.__name__}", (base,), namespace)
        ContainedLogger.register(cls)
        _CONTAINED_CLASSES[base] = cls
    return cls


def _rebuild_contained(reduced: Any) -> Any:
    func, args, *rest = reduced
    obj = func(*args)
    state = rest[0] if rest else None
    if state is not None:
        if hasattr(obj, "__setstate__"):
            obj.__setstate__(state)
        else:
            obj.__dict__.update(state[0] if isinstance(state, tuple) else state)
    return contain_failures(obj)


def contain_failures(loggers: Any) -> Any:
    """Make Lightning loggers never stop training: each failing call is counted, warned once, dropped.

    Lightning calls ``logger.log_metrics`` for every scalar (``self.log``, memcallbacks'
    ``mem/*`` keys); a logger that raises there (W&B unreachable, a full disk under
    TensorBoard, a custom logger's bug) ends ``fit``. This changes each logger *in place*
    into a :class:`ContainedLogger` of its own class (so ``isinstance(logger,
    TensorBoardLogger)``, ``trainer.log_dir`` and your other references to it still hold) and
    returns what it was given.

    Args:
        loggers: a Lightning logger or a list/tuple of them (``None``, ``True`` and ``False``
            are returned as given).

    Returns:
        ``loggers``, contained.

    Raises:
        TypeError: an item is not a Lightning ``Logger``.

    Example:
        >>> from pytorch_lightning.loggers import CSVLogger
        >>> logger = contain_failures(CSVLogger("logs"))
        >>> isinstance(logger, CSVLogger), isinstance(logger, ContainedLogger), logger.failures
        (True, True, 0)
    """
    if loggers is None or isinstance(loggers, bool):
        return loggers
    if isinstance(loggers, (list, tuple)):
        contained = [contain_failures(logger) for logger in loggers]
        return type(loggers)(contained) if isinstance(loggers, tuple) else contained
    if type(loggers) in _CONTAINED_CLASSES.values():
        return loggers
    if not callable(getattr(loggers, "log_metrics", None)) or not hasattr(loggers, "save"):
        raise TypeError(
            f"`loggers` must be Lightning loggers (with log_metrics), got {type(loggers).__name__}; pass "
            "e.g. contain_failures([WandbLogger(...), CSVLogger(...)])"
        )
    loggers.__class__ = _contained_class(type(loggers))
    return loggers
