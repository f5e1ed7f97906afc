"""memcallbacks' callbacks as subclasses of ``lightning.pytorch.Callback`` (for ``lightning`` users).

memcallbacks' callbacks subclass ``pytorch_lightning.Callback``. A ``lightning.pytorch.Trainer``
runs them as they are, but ``lightning.pytorch.cli.LightningCLI`` checks a YAML ``class_path``
against ``lightning.pytorch.Callback`` and rejects them. This module offers every callback of
``memcallbacks`` under the same name, as a subclass of both: the memcallbacks class first (one
implementation, no copy) and ``lightning.pytorch.Callback`` mixed in. The classes are built on
first access, for every name :mod:`memcallbacks.callbacks` exports; other names (``LeakageCondition``,
``CanarySet``, ...) are memcallbacks' own objects.

A class built here has the same ``__qualname__`` as the original, so its checkpoint state key
is the same: a checkpoint written with ``memcallbacks.X`` resumes with ``memcallbacks.lightning.X``
and back.

Example:
    >>> from memcallbacks.lightning import MembershipInferenceMonitor  # doctest: +SKIP
    >>> import lightning.pytorch as L  # doctest: +SKIP
    >>> issubclass(MembershipInferenceMonitor, L.Callback)  # doctest: +SKIP
    True

In a ``lightning.pytorch.cli.LightningCLI`` YAML file::

    trainer:
      callbacks:
        - class_path: memcallbacks.lightning.MembershipInferenceMonitor
          init_args: {num_probes: 500}
        - class_path: memcallbacks.lightning.LeakageEarlyStopping
          init_args: {monitor: mem/mia/auc, threshold: 0.7}
"""

from __future__ import annotations

from typing import Any

from memcallbacks import callbacks


def _callback_names() -> list[str]:
    """The names :mod:`memcallbacks.callbacks` exports."""
    return sorted(callbacks.__all__)


def _lightning_callback() -> type:
    try:
        from lightning.pytorch import Callback
    except ImportError as e:
        raise ImportError(
            "memcallbacks.lightning needs the `lightning` package (pip install lightning); with "
            "`pytorch_lightning` use the classes of `memcallbacks` itself"
        ) from e
    return Callback


def for_lightning(cls: type) -> type:
    """``cls`` (a ``pytorch_lightning.Callback`` subclass) as a subclass of ``lightning.pytorch.Callback`` too.

    Returns ``cls`` itself when it already is one.
    """
    base = _lightning_callback()
    if issubclass(cls, base):
        return cls
    doc = (
        f"{cls.__name__} as a ``lightning.pytorch.Callback`` (for ``lightning.pytorch.cli.LightningCLI``); "
        f"the same class as ``{cls.__module__}.{cls.__qualname__}``.\n\n{cls.__doc__ or ''}"
    )
    return type(
        cls.__name__,
        (cls, base),
        {"__module__": __name__, "__qualname__": cls.__qualname__, "__doc__": doc},
    )


def __getattr__(name: str) -> Any:
    if name not in callbacks.__all__:
        raise AttributeError(
            f"module 'memcallbacks.lightning' has no attribute {name!r}; it offers {', '.join(_callback_names())}"
        )
    value = getattr(callbacks, name)
    import pytorch_lightning as pl

    if isinstance(value, type) and issubclass(value, pl.Callback):
        value = for_lightning(value)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return [*_callback_names(), "for_lightning"]


__all__ = ["for_lightning"]
