"""The only place in memcallbacks that touches Lightning internals.

Every function here reads something that is not part of Lightning's public API (checked
against ``pytorch-lightning`` and ``lightning`` 2.1-2.6). Each has a test in
``tests/core/test_core_compat.py`` that runs a real Trainer and fails loudly, naming
the function, when a Lightning release moves what it reads. When that happens, fix the one
function here; no callback reaches into Lightning by itself.

- :func:`is_training_done`: whether the current training epoch has run its last batch
  (``fit_loop.epoch_loop._is_training_done``), used to tell the validation run that closes an
  epoch from one in the middle of it (``val_check_interval < 1``).
- :func:`keys_logged_this_epoch`: keys logged with ``self.log`` since the running loop's last
  reset (``trainer._results``), used by :class:`~memcallbacks.LeakageEarlyStopping` for keys
  that no memcallbacks monitor logs.
- :func:`val_data_source`: the object the validation loop takes its dataloaders from
  (``val_loop._data_source``), for a monitor that evaluates on the validation data.
- :func:`callbacks_being_validated`: the callback list the Trainer's constructor checks for
  duplicate state keys (the ``callbacks`` local of ``_validate_callbacks_list``), so that a
  monitor can refuse a twin with a message that names ``name=`` before Lightning's own error.
- :func:`showing_epoch`: ``trainer.current_epoch`` reads another epoch for a while
  (``fit_loop.epoch_progress.current.completed``), for the evaluation of an epoch whose end a
  resume skipped (:class:`~memcallbacks.callbacks._base.MemorisationCallback`).

Public API used instead of internals elsewhere: ``LightningModule.trainer`` (through
:func:`trainer_of`), ``Trainer.callbacks`` (read, never reordered), ``Trainer.fast_dev_run``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

__all__ = [
    "callbacks_being_validated",
    "is_training_done",
    "keys_logged_this_epoch",
    "showing_epoch",
    "trainer_of",
    "val_data_source",
]


def trainer_of(pl_module: Any) -> Any:
    """The Trainer ``pl_module`` is attached to, or ``None`` (public ``LightningModule.trainer``)."""
    try:
        return pl_module.trainer
    except (RuntimeError, AttributeError):  # "... is not attached to a `Trainer`"
        return None


def is_training_done(trainer: Any) -> bool:
    """Whether the running training epoch has done its last batch (or ``max_steps`` is reached).

    Reads ``trainer.fit_loop.epoch_loop._is_training_done`` (private in Lightning 2.x).

    Raises:
        RuntimeError: this Lightning version no longer has the attribute (update this function).
    """
    try:
        return bool(trainer.fit_loop.epoch_loop._is_training_done)
    except AttributeError as e:
        raise RuntimeError(
            "memcallbacks.utilities.compat.is_training_done: this Lightning version has no "
            f"`fit_loop.epoch_loop._is_training_done` ({e}); memcallbacks needs an update for it"
        ) from e


def keys_logged_this_epoch(trainer: Any) -> set[str]:
    """Names of the values in the running loop's result collection (``self.log`` since its last reset).

    Reads ``trainer._results`` (private in Lightning 2.x); returns an empty set outside a loop.

    Raises:
        RuntimeError: this Lightning version no longer has the attribute (update this function).
    """
    if not hasattr(trainer, "_results"):
        raise RuntimeError(
            "memcallbacks.utilities.compat.keys_logged_this_epoch: this Lightning version has no `trainer._results`; "
            "memcallbacks needs an update for it"
        )
    results = trainer._results
    if results is None:
        return set()
    return {str(v.meta.name) for _, v in results.valid_items() if hasattr(v, "meta")}


def val_data_source(trainer: Any) -> Any:
    """The validation loop's data source (``trainer.fit_loop.epoch_loop.val_loop._data_source``).

    Its ``instance`` is the LightningModule or datamodule that provides ``val_dataloader()``,
    or the loaders passed to ``fit``.

    Raises:
        RuntimeError: this Lightning version no longer has the attribute (update this function).
    """
    try:
        return trainer.fit_loop.epoch_loop.val_loop._data_source
    except AttributeError as e:
        raise RuntimeError(
            "memcallbacks.utilities.compat.val_data_source: this Lightning version has no "
            f"`fit_loop.epoch_loop.val_loop._data_source` ({e}); memcallbacks needs an update for it"
        ) from e


@contextlib.contextmanager
def showing_epoch(trainer: Any, epoch: int) -> Iterator[None]:
    """``trainer.current_epoch`` reads ``epoch`` inside the ``with`` block, and its own value again after it.

    Sets ``trainer.fit_loop.epoch_progress.current.completed`` (what ``current_epoch`` returns in
    Lightning 2.x) and puts it back, also when the block raises.

    Raises:
        RuntimeError: this Lightning version no longer has the attribute (update this function).
    """
    try:
        progress = trainer.fit_loop.epoch_progress.current
        saved = progress.completed
    except AttributeError as e:
        raise RuntimeError(
            "memcallbacks.utilities.compat.showing_epoch: this Lightning version has no "
            f"`fit_loop.epoch_progress.current.completed` ({e}); memcallbacks needs an update for it"
        ) from e
    progress.completed = int(epoch)
    try:
        if trainer.current_epoch != int(epoch):
            raise RuntimeError(
                "memcallbacks.utilities.compat.showing_epoch: `trainer.current_epoch` no longer reads "
                "`fit_loop.epoch_progress.current.completed`; memcallbacks needs an update for it"
            )
        yield
    finally:
        progress.completed = saved


def callbacks_being_validated(max_depth: int = 1) -> list[Any] | None:
    """The callbacks Lightning's ``Trainer(...)`` is checking for duplicate state keys, when called inside that check.

    Looks up to ``max_depth`` frames above the caller (a ``state_key`` property: 1, Lightning's
    function itself) for Lightning 2.x's ``_validate_callbacks_list(callbacks)`` (it reads every
    stateful callback's ``state_key``) and returns its ``callbacks`` list; ``None`` anywhere else
    (then Lightning's own check still runs). Cheap: Lightning reads ``state_key`` in every hook call.
    """
    frame = sys._getframe(1)
    for _ in range(max_depth):
        frame = frame.f_back  # type: ignore[assignment]
        if frame is None:
            return None
        if frame.f_code.co_name == "_validate_callbacks_list":
            callbacks = frame.f_locals.get("callbacks")
            return list(callbacks) if isinstance(callbacks, list) else None
    return None
