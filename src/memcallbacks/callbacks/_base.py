"""Shared Lightning glue for every memcallbacks monitor.

When the epoch-end work runs: at the end of the training epoch, or, when a validation run
closes the epoch (every batch of the training epoch done), at that validation's epoch end.
The earlier of the two matters: ``ModelCheckpoint`` saves at ``on_validation_end`` when it
does not save at train-epoch end, and a checkpoint must hold this epoch's numbers so that
resuming loses nothing. The work runs once per epoch whichever hook comes first.

Scalars are logged with ``pl_module.log_dict`` (they reach every logger and
``trainer.callback_metrics``, so ``EarlyStopping`` and :class:`LeakageEarlyStopping` see
them); every rank logs the same values. Rich records go through :mod:`memcallbacks.loggers`.

Run-directory writes submitted with :meth:`MemorisationCallback.write_in_background` are
flushed at the end of the epoch that submitted them (``on_train_epoch_end``): a failed write
(disk full) raises in that epoch, naming the file.

Trainer modes: under ``Trainer(fast_dev_run=...)`` every monitor is skipped (no evaluation,
no run directory, no logging), as Lightning skips its loggers, checkpoints and
``EarlyStopping``; a warning says so once per callback class. The (wrapped) ``setup`` of every
subclass replaces the instance's other hooks with no-ops then
(:meth:`MemorisationCallback.__init_subclass__`), so a normal run pays nothing per step.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_warn

from memcallbacks import loggers
from memcallbacks.utilities import compat, fileio
from memcallbacks.utilities.validation import check_bool, check_int, check_path

__all__ = [
    "MemorisationCallback",
    "check_every_n_epochs",
    "check_same_measured_args",
    "logged_epochs",
    "resolve_run_root",
    "state_array",
    "state_tensor",
]

# Trainer -> {key: epoch of its latest log_metrics call}; read by LeakageEarlyStopping to act on
# fresh values only (monitors that evaluate every n epochs leave stale values in callback_metrics).
_LOGGED_EPOCHS: weakref.WeakKeyDictionary[Any, dict[str, int]] = weakref.WeakKeyDictionary()


def state_tensor(array: np.ndarray | None) -> torch.Tensor | None:
    """A numpy array as a tensor for a callback's ``state_dict`` (``None`` stays ``None``).

    Checkpoints then load with ``weights_only=True``; :func:`state_array` reads it back.
    """
    return None if array is None else torch.from_numpy(np.ascontiguousarray(array))


def state_array(state_dict: dict[str, Any], key: str, dtype: Any) -> np.ndarray | None:
    """``state_dict[key]`` (a tensor, array or list, or absent/``None``) as a numpy array of ``dtype``."""
    value = state_dict.get(key)
    if value is None:
        return None
    return np.asarray(value.cpu().numpy() if hasattr(value, "cpu") else value, dtype=dtype)


def logged_epochs(trainer: Any) -> dict[str, int]:
    """For each key logged through :meth:`MemorisationCallback.log_metrics` on ``trainer``, its latest epoch."""
    try:
        return dict(_LOGGED_EPOCHS.get(trainer, {}))
    except TypeError:
        return {}


def check_every_n_epochs(value: Any) -> int:
    return check_int("every_n_epochs", value, minimum=1, hint="use 1 to evaluate every epoch")


def resolve_run_root(trainer: Any, run_dir: Path | None, owner: str, subdir: str = "") -> Path:
    """The run directory root: ``run_dir`` if given, else ``<trainer.log_dir>/memcallbacks``.

    Call it on every rank (``trainer.log_dir`` is broadcast from rank 0 by Lightning). Global
    rank 0 creates ``<root>/<subdir>`` and checks that it can write there.

    Raises:
        PermissionError: the folder cannot be created or written, naming ``owner`` and the folder.
    """
    if run_dir is not None:
        root = run_dir
    else:
        log_dir = trainer.log_dir
        root = Path(log_dir if log_dir is not None else trainer.default_root_dir) / "memcallbacks"
    if trainer.is_global_zero:
        try:
            fileio.make_writable_folder(root / subdir if subdir else root)
        except OSError as e:
            raise PermissionError(
                f"{owner}: cannot write the run directory {str(root)!r} ({e.strerror}); "
                "pass `run_dir=` a writable folder"
            ) from e
    return root


_HOOKS = frozenset(
    name
    for name in dir(Callback)
    if (name.startswith("on_") or name == "teardown") and callable(getattr(Callback, name))
) - {"on_exception"}
_FAST_DEV_RUN_WARNED: set[str] = set()


def warn_fast_dev_run(owner: str) -> None:
    """Warn once per callback class that ``fast_dev_run`` skips it."""
    if owner not in _FAST_DEV_RUN_WARNED:
        _FAST_DEV_RUN_WARNED.add(owner)
        rank_zero_warn(
            f"{owner} is skipped under `Trainer(fast_dev_run=...)`: no evaluation, no logging, nothing "
            "written to the run directory (as Lightning skips its loggers, checkpoints and EarlyStopping). "
            "Run without fast_dev_run (e.g. limit_train_batches=2, max_epochs=1) to exercise it"
        )


def _skipped_hook(*args: Any, **kwargs: Any) -> None:
    """Stands in for every Lightning hook of a callback skipped under ``fast_dev_run``."""
    return None


def _guard_setup(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``setup`` that, under ``fast_dev_run``, turns every other hook of the instance into a no-op.

    The no-ops are instance attributes (Lightning looks hooks up on the instance), so a normal run
    pays nothing per step.
    """
    if getattr(fn, "_memcallbacks_guarded", False):
        return fn

    @functools.wraps(fn)
    def setup(self: Any, trainer: Any, *args: Any, **kwargs: Any) -> Any:
        skip = bool(getattr(trainer, "fast_dev_run", False))
        self.__dict__["_skip_run"] = skip
        for name in _HOOKS:
            if skip:
                self.__dict__[name] = _skipped_hook
            else:
                self.__dict__.pop(name, None)
        if skip:
            warn_fast_dev_run(type(self).__name__)
            return None
        return fn(self, trainer, *args, **kwargs)

    setup._memcallbacks_guarded = True  # type: ignore[attr-defined]
    return setup


class MemorisationCallback(Callback):
    """Base class: run-directory handling, once-per-epoch scheduling, logging and tracker records.

    Subclasses implement :meth:`on_memorisation_epoch_end` and set ``subdir``.
    """

    subdir: str = "monitor"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "setup" in vars(cls):  # fast_dev_run: see _guard_setup
            cls.setup = _guard_setup(vars(cls)["setup"])  # type: ignore[method-assign]

    def __init__(
        self,
        *,
        every_n_epochs: int = 1,
        run_dir: str | os.PathLike[str] | None = None,
        log_per_sample: bool = False,
        log_secrets: bool = False,
    ) -> None:
        super().__init__()
        self.every_n_epochs = check_every_n_epochs(every_n_epochs)
        self._run_dir_arg = check_path("run_dir", run_dir)
        self.log_per_sample = check_bool("log_per_sample", log_per_sample)
        self.log_secrets = check_bool("log_secrets", log_secrets)
        self._run_dir: Path | None = self._run_dir_arg
        self._last_epoch_done = -1
        self._writer: fileio.BackgroundWriter | None = None

    # -- run directory -------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        """This callback's folder in the run directory (``<trainer.log_dir>/memcallbacks/<subdir>``)."""
        if self._run_dir is None:
            raise RuntimeError(
                f"{type(self).__name__}.run_dir is known once the Trainer has called setup(); "
                "pass `run_dir=` to fix it in advance"
            )
        return self._run_dir / self.subdir

    def _resolve_run_dir(self, trainer: pl.Trainer) -> None:
        self._run_dir = resolve_run_root(trainer, self._run_dir_arg, type(self).__name__, self.subdir)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._resolve_run_dir(trainer)

    # -- scheduling ----------------------------------------------------------------------
    @property
    def last_epoch_done(self) -> int:
        """The latest epoch whose epoch-end work has run (-1 before the first)."""
        return self._last_epoch_done

    def is_due(self, trainer: pl.Trainer) -> bool:
        """Whether this epoch is one of the every-``every_n_epochs`` evaluations."""
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":  # validation inside fit only
            return
        if compat.is_training_done(trainer):
            self._run_epoch_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_epoch_end(trainer, pl_module)
        self.flush()  # a failed background write raises in the epoch that submitted it

    def _run_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._last_epoch_done == trainer.current_epoch:
            return
        self._last_epoch_done = trainer.current_epoch
        self.on_memorisation_epoch_end(trainer, pl_module)
        # let callbacks that decide after every monitor (LeakageEarlyStopping) know, whatever the order
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            after = getattr(callback, "after_monitor_epoch_end", None)
            if after is not None:
                after(trainer, pl_module)

    def on_memorisation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Once per training epoch, after its last batch: collect, compute, log, save."""
        raise NotImplementedError

    # -- output --------------------------------------------------------------------------
    # A monitor given ``name=`` logs ``<key>/<name>`` (and sends records as ``<key>/<name>``), so
    # two monitors of one class never log under one key: Lightning would average the two values.
    # A subclass that spells the suffix into its own keys sets this to False.
    suffix_keys_with_name: bool = True

    def _name_suffix(self) -> str:
        name = getattr(self, "name", None)
        return f"/{name}" if name and self.suffix_keys_with_name else ""

    def log_metrics(self, pl_module: pl.LightningModule, metrics: dict[str, float]) -> None:
        """Log scalars (identical on every rank) so every logger and ``callback_metrics`` get them."""
        suffix = self._name_suffix()
        if suffix:
            metrics = {f"{k}{suffix}": v for k, v in metrics.items()}
        if metrics:
            pl_module.log_dict(
                {k: float(v) for k, v in metrics.items()},
                on_step=False,
                on_epoch=True,
                sync_dist=False,
                add_dataloader_idx=False,
            )
            trainer = compat.trainer_of(pl_module)
            if trainer is not None:
                try:
                    epochs = _LOGGED_EPOCHS.setdefault(trainer, {})
                    epochs.update(dict.fromkeys(metrics, int(trainer.current_epoch)))
                except TypeError:  # not weak-referenceable: freshness falls back to Lightning's results
                    pass

    def emit(self, trainer: pl.Trainer, record: loggers.Record) -> None:
        """Send a rich record to the trackers, honouring this callback's privacy opt-ins."""
        suffix = self._name_suffix()
        key = getattr(record, "key", None)
        if suffix and isinstance(key, str):  # an Alert has no key: its title says which callback
            record = dataclasses.replace(record, key=f"{key}{suffix}")  # type: ignore[arg-type]
        loggers.emit(trainer, record, allow_per_sample=self.log_per_sample, allow_secrets=self.log_secrets)

    # -- background writes ---------------------------------------------------------------
    def write_in_background(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        """Run ``fn(*args, **kwargs)`` (a run-directory write of snapshotted data) off the training loop.

        Writes run in order on one thread; :meth:`flush` waits for them. The base flushes at
        the end of every training epoch (so a failed write raises in the epoch that made it),
        at fit end, teardown and on exceptions.
        """
        if self._writer is None:
            self._writer = fileio.BackgroundWriter(f"memcallbacks-{self.subdir}")
        self._writer.submit_as(f"{type(self).__name__}, epoch {self._last_epoch_done}", fn, *args, **kwargs)

    def flush(self) -> None:
        """Wait until the run directory holds every write submitted so far.

        Raises:
            OSError: a write failed (e.g. disk full); the message names the callback, the epoch
                and the file.
        """
        if self._writer is not None:
            self._writer.flush()

    def _close_writer(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close_writer()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._close_writer()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        try:
            self._close_writer()
        except Exception as e:  # noqa: BLE001 - the original exception matters more
            rank_zero_warn(f"{type(self).__name__}: writing the run directory failed: {e!r}")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_writer"] = None  # threads do not pickle (ddp_spawn sends the callbacks to workers)
        return state

    # -- identity and state ----------------------------------------------------------------
    # Resume contract: arguments that define *what is measured* (canaries, seeds, probe sets and
    # sizes, inclusion) are returned by ``_measured_args`` and must match the checkpoint, else
    # ``load_state_dict`` raises naming the argument and both values. Arguments that change only
    # *when or where* (thresholds, ``every_n_epochs``, ``run_dir``) appear in neither method, so a
    # changed value carries the state over. ``state_key`` holds only what tells two instances of
    # one callback class apart in a Trainer (``_state_key_args``), and is computed once; Lightning
    # itself refuses two stateful callbacks with one state key when the Trainer is built.
    def _state_key_args(self) -> dict[str, Any]:
        """What tells two instances of this class apart in one Trainer (never a when/where argument)."""
        return {}

    def _measured_args(self) -> dict[str, Any]:
        """Arguments (plain JSON values) that define what this callback measures; checked on resume."""
        return {}

    @property
    def state_key(self) -> str:
        key = self.__dict__.get("_state_key_cache")
        if key is None:  # Lightning reads it in every hook: compute it once
            key = self._generate_state_key(**self._state_key_args())
            self.__dict__["_state_key_cache"] = key
        return key

    def base_state(self) -> dict[str, Any]:
        return {"last_epoch_done": self._last_epoch_done, "measured": self._measured_args()}

    def load_base_state(self, state: dict[str, Any]) -> None:
        saved = state.get("measured")
        if isinstance(saved, dict):
            check_same_measured_args(type(self).__name__, saved, self._measured_args())
        self._last_epoch_done = int(state.get("last_epoch_done", -1))


def check_same_measured_args(owner: str, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise if an argument that defines what ``owner`` measures differs from the checkpoint's.

    Example:
        >>> check_same_measured_args("Monitor", {"seed": 0}, {"seed": 0})
        >>> check_same_measured_args("Monitor", {"seed": 0}, {"seed": 1})
        Traceback (most recent call last):
        ...
        ValueError: Monitor: the checkpoint was recorded with `seed`=0, this callback has `seed`=1; ...
    """
    for name in sorted(set(saved) & set(current)):
        if _normalise(saved[name]) != _normalise(current[name]):
            raise ValueError(
                f"{owner}: the checkpoint was recorded with `{name}`={saved[name]!r}, this callback has "
                f"`{name}`={current[name]!r}; resuming would mix two different measurements. Pass "
                f"`{name}`={saved[name]!r} to resume this run, or start a new run (no `ckpt_path`)"
            )


def _normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _normalise(v) for k, v in value.items()}
    if hasattr(value, "tolist"):
        return _normalise(value.tolist())
    return value


MemorisationCallback.setup = _guard_setup(MemorisationCallback.setup)  # type: ignore[method-assign]
