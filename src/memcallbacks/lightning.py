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

It also holds the one rule for sharded training (:func:`sharded_run`): whether every forward pass
of the trained model is a collective, so that every monitor evaluates on every rank in lockstep.

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

import warnings
from typing import Any

from memcallbacks.utilities.distributed import parameters_sharded, world_size

_warned_unclassified: set[str] = set()


def _callback_names() -> list[str]:
    """The names :mod:`memcallbacks.callbacks` exports."""
    from memcallbacks import callbacks  # here, not at the top: the callbacks import this module

    return sorted(callbacks.__all__)


def _strategy_classes() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """``(sharding, whole-model)`` strategy classes of ``pytorch_lightning`` and, when installed, ``lightning``.

    Sharding: every forward pass is a collective. Whole model: every rank holds all parameters
    (checked after the sharding ones: ``DeepSpeedStrategy`` is a ``DDPStrategy``).
    """
    from pytorch_lightning.strategies import (
        DDPStrategy,
        DeepSpeedStrategy,
        FSDPStrategy,
        ModelParallelStrategy,
        SingleDeviceStrategy,
    )

    sharding: list[type] = [FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy]
    whole: list[type] = [DDPStrategy, SingleDeviceStrategy]
    try:
        from lightning.pytorch import strategies as unified
    except ImportError:
        return tuple(sharding), tuple(whole)
    sharding += [unified.FSDPStrategy, unified.DeepSpeedStrategy, unified.ModelParallelStrategy]
    whole += [unified.DDPStrategy, unified.SingleDeviceStrategy]
    return tuple(sharding), tuple(whole)


def strategy_shards_parameters(strategy: Any) -> bool | None:
    """Whether a Lightning strategy shards the model's parameters across ranks, by ``isinstance``.

    True for ``FSDPStrategy``, ``DeepSpeedStrategy`` and ``ModelParallelStrategy`` (and their
    subclasses) of both Lightning namespaces; False for ``DDPStrategy`` and ``SingleDeviceStrategy``
    (and subclasses); ``None`` for any other strategy (this rule cannot tell).

    Example:
        >>> from pytorch_lightning.strategies import DDPStrategy, ModelParallelStrategy
        >>> strategy_shards_parameters(ModelParallelStrategy()), strategy_shards_parameters(DDPStrategy())
        (True, False)
    """
    sharding, whole = _strategy_classes()
    if isinstance(strategy, sharding):
        return True
    if isinstance(strategy, whole):
        return False
    return None


def sharded_run(trainer: Any, module: Any = None) -> bool:
    """The one rule of memcallbacks for "every forward pass of the trained model is a collective".

    True when the run has more than one process and either the model's parameters are sharded
    (:func:`memcallbacks.utilities.distributed.parameters_sharded`: ``DTensor`` parameters,
    FSDP-wrapped modules, DeepSpeed ZeRO-3 parameters) or the strategy is one that shards them
    (:func:`strategy_shards_parameters`; before ``configure_model`` has run, the model itself does not
    show it yet). Then every monitor runs the same number of forward calls on every rank. A strategy
    this rule cannot classify, with no sharded parameter in sight, counts as sharded (the evaluation
    that never hangs; it costs a forward pass on every rank), with one warning per strategy class.

    Args:
        trainer: the running Trainer (``None``: one process).
        module: the trained model (default ``trainer.lightning_module``).

    Returns:
        Whether monitors must evaluate on every rank in lockstep.
    """
    if trainer is None or world_size(trainer) <= 1:
        return False
    if module is None:
        module = getattr(trainer, "lightning_module", None)
    if parameters_sharded(module):
        return True
    strategy = getattr(trainer, "strategy", None)
    verdict = strategy_shards_parameters(strategy)
    if verdict is not None:
        return verdict
    name = f"{type(strategy).__module__}.{type(strategy).__qualname__}"
    if name not in _warned_unclassified:
        _warned_unclassified.add(name)
        warnings.warn(
            f"memcallbacks cannot tell whether the strategy {name} shards the model's parameters (it is no "
            "subclass of DDPStrategy, FSDPStrategy, DeepSpeedStrategy or ModelParallelStrategy, and no parameter "
            "is a DTensor, FSDP-wrapped or DeepSpeed ZeRO-3 partitioned): the monitors evaluate as under "
            "sharding, every rank running every forward pass (never hangs, costs more); subclass the Lightning "
            "strategy your strategy behaves like to skip this",
            stacklevel=2,
        )
    return True


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
    from memcallbacks import callbacks

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
    return [*_callback_names(), *__all__]


__all__ = ["for_lightning", "sharded_run", "strategy_shards_parameters"]
