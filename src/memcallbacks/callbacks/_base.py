"""Shared Lightning glue for every memcallbacks monitor: the one evaluation cycle.

A monitor subclasses :class:`MemorisationCallback`, sets ``subdir`` and supplies only what it
measures, through four hooks (the base runs them in this order, see
:meth:`MemorisationCallback.evaluate`):

* ``measure(trainer, pl_module) -> result``: the forward passes and whatever the monitor keeps
  (every rank; return ``None`` to skip this evaluation: nothing is logged or recorded);
* ``metrics(result) -> {"mem/...": float}``: the scalars, every key spelled out (every rank);
* ``write_files(result)``: run-directory files, through :meth:`~MemorisationCallback.write_in_background`
  (global rank 0 only);
* ``records(result) -> [loggers.Record]``: rich tracker records (global rank 0 only, and only when a
  W&B, TensorBoard or MLflow logger is attached; sent through :meth:`~MemorisationCallback.emit`,
  which honours the privacy opt-ins).

The base decides when (:meth:`~MemorisationCallback.is_due`, the one schedule rule), times the
evaluation (``last_eval_seconds``), appends one :attr:`~MemorisationCallback.history` row of one
shape for every monitor, ``{"epoch": int, "step": trainer.global_step, **metrics}`` (the plain keys,
without a ``/<name>`` suffix), logs the metrics and keeps the history, the warn-once keys and the
last evaluated epoch in the checkpoint (:meth:`~MemorisationCallback.base_state`). A monitor warns
once with :meth:`~MemorisationCallback.warn_once` (persisted: a resumed run does not repeat it).

``name=``: a monitor given ``name`` logs ``<key>/<name>`` (records too) and writes its folder as
``<subdir>_<name>/`` (``<subdir>/`` without a name), for every monitor.

When a monitor evaluates (one schedule, chosen in the constructor, the same for every monitor):

* ``every_n_epochs=n`` (the default, ``n=1``): at the end of every n-th training epoch;
* ``every_n_steps=n``: in ``on_train_batch_end``, each time ``trainer.global_step`` (optimizer
  steps, so gradient accumulation counts as Lightning counts) reaches a new multiple of ``n``;
  never at the epoch end (the steps drive it);
* ``evaluate_on_validation=True``: at the end of every validation run inside ``fit``, also the
  ones ``val_check_interval`` runs in the middle of an epoch.

The last two evaluate at most once per global step (a step seen again under gradient
accumulation, or a second validation at the same step, is skipped) and log at ``step=`` the
global step (see :meth:`MemorisationCallback.log_metrics`). On steps where no evaluation is due the
cost is one integer comparison.

When the epoch-end work runs: at the end of the training epoch, or, when a validation run
closes the epoch (every batch of the training epoch done), at that validation's epoch end.
The earlier of the two matters: ``ModelCheckpoint`` saves at ``on_validation_end`` when it
does not save at train-epoch end, and a checkpoint must hold this epoch's numbers so that
resuming loses nothing. The work runs once per epoch whichever hook comes first.

Scalars are logged with ``pl_module.log_dict`` (they reach every logger and
``trainer.callback_metrics``, so ``EarlyStopping`` and :class:`LeakageEarlyStopping` see
them); every rank logs the same values. Rich records go through :mod:`memcallbacks.loggers`.

Run-directory writes submitted with :meth:`MemorisationCallback.write_in_background` run on one
thread while training goes on. They are flushed at the next evaluation, before a checkpoint is
saved, and at the end of training: a failed write (disk full) raises by the next evaluation at the
latest, naming the file and the epoch that made it, and a checkpoint never names a file that is
not written yet.

Resume: a checkpoint saved after an epoch's last batch and before its end-of-epoch work (e.g.
``ModelCheckpoint(every_n_train_steps=n)`` with ``n`` dividing the epoch, the process killed during
the epoch-end evaluation) resumes at the next epoch: Lightning does not run that epoch's
``on_train_epoch_end`` again. A monitor whose checkpoint state has not done that epoch's work
evaluates it in ``on_train_start``, before training goes on, as that epoch at the checkpoint's
global step (``trainer.current_epoch`` reads that epoch meanwhile), logs it at that step and lets
:class:`LeakageEarlyStopping` decide on it; one info line says so. Step-scheduled evaluations are
never lost this way (they run before ``ModelCheckpoint`` saves at the same step).

Ctrl-C: when training is interrupted (``KeyboardInterrupt``, Lightning calls ``on_exception``), one
line per Trainer lists what each monitor kept: its run-directory folder and its last evaluated
epoch and step.

Trainer modes: under ``Trainer(fast_dev_run=...)`` every monitor (and
:class:`LeakageEarlyStopping`) is skipped (no evaluation, no run directory, no logging), as
Lightning skips its loggers, checkpoints and ``EarlyStopping``; a warning says so once per
callback class. The one mechanism is :class:`SkipsFastDevRun`: the (wrapped) ``setup`` of every
subclass replaces the instance's other hooks with no-ops then, so a normal run pays nothing per step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from memcallbacks import loggers, rundir
from memcallbacks.utilities import compat, fileio
from memcallbacks.utilities.validation import check_bool, check_int, check_path

__all__ = [
    "MemorisationCallback",
    "SkipsFastDevRun",
    "WarnsOnce",
    "check_name",
    "check_every_n_epochs",
    "check_schedule",
    "LoggedAt",
    "logged_at",
    "check_same_measured_args",
    "logged_epochs",
    "resolve_run_root",
    "state_array",
    "state_tensor",
]


class LoggedAt(NamedTuple):
    """When a key was last logged through :meth:`MemorisationCallback.log_metrics`."""

    epoch: int
    step: int
    mid_epoch: bool
    """Logged by a step or validation schedule (``every_n_steps``, ``evaluate_on_validation``)."""


# Trainer -> {key: when its latest log_metrics call was}; read by LeakageEarlyStopping to act on
# fresh values only (monitors that evaluate every n epochs leave stale values in callback_metrics).
_LOGGED: weakref.WeakKeyDictionary[Any, dict[str, LoggedAt]] = weakref.WeakKeyDictionary()


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


def logged_at(trainer: Any) -> dict[str, LoggedAt]:
    """For each key logged through :meth:`MemorisationCallback.log_metrics` on ``trainer``, when it was last logged."""
    try:
        return dict(_LOGGED.get(trainer, {}))
    except TypeError:
        return {}


def logged_epochs(trainer: Any) -> dict[str, int]:
    """For each key logged through :meth:`MemorisationCallback.log_metrics` on ``trainer``, its latest epoch."""
    return {key: at.epoch for key, at in logged_at(trainer).items()}


def check_every_n_epochs(value: Any) -> int:
    return check_int("every_n_epochs", value, minimum=1, hint="use 1 to evaluate every epoch")


def check_schedule(
    every_n_epochs: Any, every_n_steps: Any, evaluate_on_validation: Any
) -> tuple[int, int | None, bool]:
    """Check a monitor's schedule; return ``(every_n_epochs, every_n_steps, evaluate_on_validation)``.

    At most one of the three may differ from its default (``1``, ``None``, ``False``).

    Raises:
        TypeError: an interval that is not an integer (a bool or string included), a flag that is not a bool.
        ValueError: an interval below 1, or two schedules at once; the message names the fix.

    Example:
        >>> check_schedule(1, 100, False)
        (1, 100, False)
    """
    epochs = check_every_n_epochs(every_n_epochs)
    steps = None
    if every_n_steps is not None:
        steps = check_int(
            "every_n_steps",
            every_n_steps,
            minimum=1,
            hint="the optimizer steps (trainer.global_step) between evaluations, or None to schedule by epochs",
        )
    on_validation = check_bool("evaluate_on_validation", evaluate_on_validation)
    chosen = [
        f"{name}={value!r}"
        for name, value, default in (
            ("every_n_epochs", epochs, 1),
            ("every_n_steps", steps, None),
            ("evaluate_on_validation", on_validation, False),
        )
        if value != default
    ]
    if len(chosen) > 1:
        raise ValueError(
            f"a monitor follows one schedule, got {' and '.join(chosen)}; keep one of them (e.g. "
            "every_n_steps=100 alone for an evaluation every 100 optimizer steps, or every_n_epochs=2 alone)"
        )
    return epochs, steps, on_validation


def resolve_run_root(trainer: Any, run_dir: Path | None, owner: str, subdir: str = "") -> Path:
    """The run directory root: ``run_dir`` if given, else one folder per run (:func:`rundir.resolve_run`).

    Call it on every rank (rank 0 decides and broadcasts). Global rank 0 creates ``<root>/<subdir>``,
    checks that it can write there. A monitor records the run in ``<root>/run.json`` at fit start.

    Raises:
        PermissionError: the folder cannot be created or written, naming ``owner`` and the folder.
    """
    root = rundir.resolve_run(trainer, run_dir)[0]  # rank 0 decides, one folder per run
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
# Trainers whose interruption (Ctrl-C) has been reported: one report per Trainer, whatever the monitors.
_INTERRUPT_REPORTED: weakref.WeakSet[Any] = weakref.WeakSet()


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
    return


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


class SkipsFastDevRun:
    """Mixin: under ``Trainer(fast_dev_run=...)`` the callback does nothing (warned once per class).

    The ``setup`` of every subclass (and of the class itself) is wrapped so that, under
    ``fast_dev_run``, every other Lightning hook of the instance becomes a no-op and
    ``_skip_run`` is ``True``; a normal run pays nothing per step.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "setup" in vars(cls):  # fast_dev_run: see _guard_setup
            cls.setup = _guard_setup(vars(cls)["setup"])  # type: ignore[attr-defined]


class WarnsOnce:
    """Mixin: :meth:`warn_once`, the one warn-once mechanism of memcallbacks' callbacks.

    The keys live in ``self._warned`` (key -> times raised); a callback keeps them in its checkpoint
    (:meth:`MemorisationCallback.base_state` does), so a resumed run does not repeat a warning.
    """

    _warned: dict[str, int]

    def warn_once(self, key: str, message: str, *, category: type[Warning] = UserWarning) -> bool:
        """Warn (rank 0) the first time ``key`` comes up in this run, count it every time.

        Returns:
            Whether the warning was issued now.
        """
        warned = self.__dict__.setdefault("_warned", {})
        count = warned.get(key, 0)
        warned[key] = count + 1
        if count:
            return False
        rank_zero_warn(message, category=category)
        return True

    def warned(self, key: str) -> int:
        """How many times :meth:`warn_once` was called with ``key`` (0: never warned)."""
        return self.__dict__.get("_warned", {}).get(key, 0)


def _catch_up_on_train_start(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``on_train_start`` that, on a resume that skipped an epoch's end, runs inside that epoch and evaluates it.

    Wraps the outermost ``on_train_start`` of a monitor (an override's ``super()`` call runs plainly):
    when :meth:`MemorisationCallback._lost_epoch` finds an epoch whose end-of-epoch work the
    checkpoint lacks, the whole hook and the epoch's work run with ``trainer.current_epoch`` reading
    that epoch (so a monitor restores what its checkpoint kept of it), then the monitor starts the
    resumed epoch (its ``on_train_epoch_start``, which Lightning does not call on this resume).
    """
    if getattr(fn, "_memcallbacks_catch_up", False):
        return fn

    @functools.wraps(fn)
    def on_train_start(self: Any, trainer: Any, pl_module: Any) -> Any:
        if self.__dict__.get("_in_train_start"):  # super().on_train_start() inside an override
            return fn(self, trainer, pl_module)
        lost = self._lost_epoch(trainer)
        self.__dict__["_in_train_start"] = True
        try:
            if lost is None:
                return fn(self, trainer, pl_module)
            with compat.showing_epoch(trainer, lost):
                fn(self, trainer, pl_module)
                self._catch_up(trainer, pl_module, lost)
        finally:
            self.__dict__["_in_train_start"] = False
        if type(self).on_train_epoch_start is not Callback.on_train_epoch_start:
            self.on_train_epoch_start(trainer, pl_module)  # the resumed epoch starts now
        return None

    on_train_start._memcallbacks_catch_up = True  # type: ignore[attr-defined]
    return on_train_start


def _report_interruption(trainer: Any) -> None:
    """Say once per Trainer what every monitor kept when training was interrupted (Ctrl-C)."""
    try:
        if trainer in _INTERRUPT_REPORTED:
            return
        _INTERRUPT_REPORTED.add(trainer)
    except TypeError:  # not weak-referenceable: report anyway
        pass
    lines = []
    for cb in getattr(trainer, "callbacks", []):
        if not isinstance(cb, MemorisationCallback) or cb.__dict__.get("_skip_run"):
            continue
        label = type(cb).__name__ + (f"(name={cb.name!r})" if cb.name else "")
        where = str(cb.run_dir) if cb._run_dir is not None else "(no run directory yet)"
        last = "none evaluated"
        if cb._history:
            last = f"last evaluated epoch {cb._history[-1]['epoch']}, step {cb._history[-1]['step']}"
        lines.append(f"  {label}: {where} ({last})")
    if not lines:
        return
    rank_zero_info(
        "memcallbacks: training was interrupted; the run directory keeps every finished evaluation:\n"
        + "\n".join(lines)
        + "\nThe monitors' state is in each checkpoint: resume with `trainer.fit(..., ckpt_path=<checkpoint>)`"
    )


class MemorisationCallback(SkipsFastDevRun, WarnsOnce, Callback):
    """Base class of every memcallbacks monitor: the evaluation cycle, run directory, logging and state.

    A subclass sets ``subdir`` and overrides the hooks it needs (see the module docstring):
    :meth:`measure` (required), :meth:`metrics`, :meth:`write_files` and :meth:`records`. The base
    runs them once per due epoch (:meth:`evaluate`), keeps :attr:`history`, logs, warns once
    (:meth:`warn_once`) and checkpoints what it owns (:meth:`base_state` / :meth:`load_base_state`,
    to be merged into the subclass's ``state_dict``).

    Args:
        every_n_epochs: evaluate after every this many training epochs.
        every_n_steps: evaluate instead every this many optimizer steps (``trainer.global_step``), in
            ``on_train_batch_end``, and not at epoch ends; ``None`` schedules by epochs.
        evaluate_on_validation: evaluate instead at the end of every validation run inside ``fit``
            (with ``val_check_interval``, also in the middle of an epoch), and not at epoch ends.
        run_dir: the run directory root instead of the run's own folder (:func:`memcallbacks.rundir.resolve_run`).
        log_per_sample: allow per-sample records to reach third-party loggers.
        log_secrets: allow secret-bearing records (canary secrets) to reach third-party loggers.
        name: tells two monitors of one class apart: keys ``<key>/<name>``, folder ``<subdir>_<name>/``.

    Example:
        >>> class MeanLossMonitor(MemorisationCallback):
        ...     subdir = "mean_loss"
        ...
        ...     def measure(self, trainer, pl_module):
        ...         return 0.5  # e.g. the mean loss of a probe set
        ...
        ...     def metrics(self, result):
        ...         return {"mem/example/loss": result}
        >>> MeanLossMonitor(name="probe").folder
        'mean_loss_probe'
    """

    subdir: str = "monitor"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "on_train_start" in vars(cls):  # a resume that skipped an epoch end: _catch_up_on_train_start
            cls.on_train_start = _catch_up_on_train_start(vars(cls)["on_train_start"])  # type: ignore[method-assign]

    def __init__(
        self,
        *,
        every_n_epochs: int = 1,
        every_n_steps: int | None = None,
        evaluate_on_validation: bool = False,
        run_dir: str | os.PathLike[str] | None = None,
        log_per_sample: bool = False,
        log_secrets: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.every_n_epochs, self.every_n_steps, self.evaluate_on_validation = check_schedule(
            every_n_epochs, every_n_steps, evaluate_on_validation
        )
        self._run_dir_arg = check_path("run_dir", run_dir)
        self.log_per_sample = check_bool("log_per_sample", log_per_sample)
        self.log_secrets = check_bool("log_secrets", log_secrets)
        self.name: str | None = check_name(name)
        self._run_dir: Path | None = self._run_dir_arg
        self._last_epoch_done = -1
        self._last_step_done = -1  # global step of the last step/validation-scheduled evaluation
        self._eval_epoch: int | None = None  # the epoch of the running evaluation
        self._mid_epoch = False  # the running evaluation follows every_n_steps / evaluate_on_validation
        self._writer: fileio.BackgroundWriter | None = None
        self._history: list[dict[str, Any]] = []
        self._warned: dict[str, int] = {}
        self._state_loaded = False  # load_base_state ran: on_train_start looks for a lost epoch end
        self._catching_up = False  # evaluating, in on_train_start, an epoch end a resume skipped
        self.last_eval_seconds: float = float("nan")
        """Wall time of the last evaluation (measure, metrics, logging, files, records)."""

    # -- run directory -------------------------------------------------------------------
    @property
    def folder(self) -> str:
        """This callback's folder name: ``<subdir>``, or ``<subdir>_<name>`` when given ``name``."""
        return rundir.monitor_folder(self.subdir, self.name)

    @property
    def run_dir(self) -> Path:
        """This callback's folder in the run directory (``<run directory>/<folder>``)."""
        if self._run_dir is None:
            raise RuntimeError(
                f"{type(self).__name__}.run_dir is known once the Trainer has called setup(); "
                "pass `run_dir=` to fix it in advance"
            )
        return self._run_dir / self.folder

    def _resolve_run_dir(self, trainer: pl.Trainer) -> None:
        self._run_dir = resolve_run_root(trainer, self._run_dir_arg, type(self).__name__, self.folder)
        self._run_id: str | None = rundir.resolve_run(trainer, self._run_dir_arg)[1]  # into the checkpoint

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._resolve_run_dir(trainer)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after the checkpoint's state is restored: a resumed run keeps its run id and run directory
        if self._run_dir is not None:
            saved = self.__dict__.pop("_saved_run", None)
            explicit = self._run_dir_arg is not None
            self._run_dir, self._run_id = rundir.start_run(
                trainer, self._run_dir, explicit=explicit, saved=saved
            )

    # -- scheduling ----------------------------------------------------------------------
    @property
    def last_epoch_done(self) -> int:
        """The epoch of the running evaluation; outside one, the latest epoch whose epoch-end work has run.

        -1 before the first.
        """
        return self._last_epoch_done if self._eval_epoch is None else self._eval_epoch

    @property
    def last_step_done(self) -> int:
        """The global step of the latest step- or validation-scheduled evaluation (-1 before the first)."""
        return self._last_step_done

    @property
    def schedule(self) -> str:
        """``"epochs"``, ``"steps"`` (``every_n_steps``) or ``"validation"`` (``evaluate_on_validation``)."""
        if self.every_n_steps is not None:
            return "steps"
        return "validation" if self.evaluate_on_validation else "epochs"

    def is_due(self, trainer: pl.Trainer) -> bool:
        """Whether this epoch end is one of the every-``every_n_epochs`` evaluations (the one schedule rule).

        Always ``False`` under a step or validation schedule: those evaluate in the middle of epochs.
        """
        if self.every_n_steps is not None or self.evaluate_on_validation:
            return False
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def is_step_due(self, step: int) -> bool:
        """Whether global step ``step`` is one of the every-``every_n_steps`` evaluations not yet done."""
        n = self.every_n_steps
        return n is not None and step > 0 and step % n == 0 and step != self._last_step_done

    @_catch_up_on_train_start
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        n = self.every_n_steps
        if n is None:
            return
        total = trainer.estimated_stepping_batches  # accounts for max_steps, max_epochs, accumulation
        if math.isfinite(total) and n > total:
            self.warn_once(
                "every_n_steps_too_large",
                f"{type(self).__name__}(every_n_steps={n}) will not evaluate: this run has {int(total)} optimizer "
                f"steps. Pass every_n_steps <= {int(total)} (e.g. {max(1, int(total) // 10)})",
            )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # hot path: an integer comparison when no evaluation is due (no sync, no .item())
        if self.every_n_steps is None or not self.is_step_due(trainer.global_step):
            return
        self._evaluate_mid_epoch(trainer, pl_module, "step")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":  # validation inside fit only
            return
        if self.evaluate_on_validation and trainer.global_step != self._last_step_done:
            self._evaluate_mid_epoch(trainer, pl_module, "validation")
        if compat.is_training_done(trainer):
            self._run_epoch_end(trainer, pl_module)

    def _evaluate_mid_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, point: str) -> None:
        """One step- or validation-scheduled evaluation, then the callbacks that decide after monitors."""
        self.flush()  # the previous evaluation's files are written (a failed write raises here)
        self._last_step_done = int(trainer.global_step)
        self._mid_epoch = True
        try:
            self.evaluate(trainer, pl_module)
        finally:
            self._mid_epoch = False
        _notify_after_monitor(trainer, pl_module, point)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_epoch_end(trainer, pl_module)  # its files are written while the next epoch trains

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.flush()  # the checkpoint's state describes files that are on disk (a failed write raises here)

    def _run_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._last_epoch_done == trainer.current_epoch:
            return
        self._last_epoch_done = trainer.current_epoch
        self.on_memorisation_epoch_end(trainer, pl_module)
        _notify_after_monitor(trainer, pl_module, "epoch")

    def on_memorisation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Once per training epoch, after its last batch: :meth:`evaluate` when :meth:`is_due`.

        Override only for work that runs every epoch whatever the schedule, and call ``super()``.
        """
        if self.is_due(trainer):
            self.evaluate(trainer, pl_module)

    # -- resume: the epoch end a mid-epoch checkpoint skipped ---------------------------------
    def _lost_epoch(self, trainer: pl.Trainer) -> int | None:
        """The epoch whose end-of-epoch work the loaded checkpoint lacks though Lightning counts it done.

        ``None`` unless a checkpoint state was loaded: a fresh run, or a monitor added on resume,
        has nothing to catch up.
        """
        loaded, self._state_loaded = self._state_loaded, False
        if not loaded or trainer.state.fn != "fit":
            return None
        lost = int(trainer.current_epoch) - 1
        return lost if lost > self._last_epoch_done else None

    def _catch_up(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        """Run the end-of-epoch work of ``epoch`` now (``trainer.current_epoch`` reads ``epoch``)."""
        rank_zero_info(
            f"{type(self).__name__}: the checkpoint was saved after the last batch of epoch {epoch} and before "
            f"its end-of-epoch evaluation; evaluating epoch {epoch} now (global step {trainer.global_step}), "
            "before training goes on"
        )
        self._catching_up = True
        try:
            self._run_epoch_end(trainer, pl_module)
        finally:
            self._catching_up = False
        self.flush()

    # -- the evaluation cycle ------------------------------------------------------------------
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """One evaluation: measure, metrics, history row, logging, rank-0 files and records, timing.

        The history keeps one row per epoch (epoch schedule) or per global step (step and
        validation schedules): an evaluation run again for the same one replaces its row.
        """
        start = time.perf_counter()
        epoch, step = int(trainer.current_epoch), int(trainer.global_step)
        self._eval_epoch = epoch
        try:
            result = self.measure(trainer, pl_module)
            if result is None:
                return
            metrics = self.metrics(result)
            row: dict[str, Any] = {"epoch": epoch, "step": step, **metrics}
            by = "epoch" if self.schedule == "epochs" else "step"
            self._history = [h for h in self._history if h[by] != row[by]] + [row]
            self.log_metrics(pl_module, metrics)
            if trainer.is_global_zero:
                self.write_files(result)
                if loggers.takes_records(trainer):  # no W&B, TensorBoard or MLflow logger: nothing to build
                    for record in self.records(result):
                        self.emit(trainer, record)
        finally:
            self._eval_epoch = None
        self.last_eval_seconds = time.perf_counter() - start

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        """Evaluate the model (every rank) and return what the other hooks need; ``None`` skips."""
        raise NotImplementedError(f"{type(self).__name__} must implement measure(trainer, pl_module)")

    def metrics(self, result: Any) -> dict[str, float]:
        """The scalars of one evaluation, literal ``mem/...`` keys (every rank logs the same values)."""
        return {}

    def write_files(self, result: Any) -> None:
        """Write the run directory (global rank 0), through :meth:`write_in_background`."""

    def records(self, result: Any) -> list[loggers.Record]:
        """Rich tracker records of one evaluation (global rank 0); the epoch is :attr:`last_epoch_done`."""
        return []

    @property
    def history(self) -> list[dict[str, Any]]:
        """One row per evaluation, ``{"epoch": int, "step": int, "mem/...": value, ...}`` (a copy).

        The keys are those :meth:`metrics` returned, without the ``/<name>`` suffix of the logged keys.
        """
        return [dict(row) for row in self._history]

    # -- output --------------------------------------------------------------------------
    def _name_suffix(self) -> str:
        # two monitors of one class never log under one key: Lightning would average the two values
        return f"/{self.name}" if self.name else ""

    def log_metrics(self, pl_module: pl.LightningModule, metrics: dict[str, float]) -> None:
        """Log scalars (identical on every rank) so every logger and ``callback_metrics`` get them.

        Epoch schedule: ``pl_module.log_dict(on_epoch=True)``; Lightning sends them to the loggers
        at the epoch end, at ``step=`` the global step. Step and validation schedules: the values
        reach ``callback_metrics`` through ``log_dict(logger=False)`` and every logger of
        ``trainer.loggers`` directly, at ``step=trainer.global_step`` with the ``epoch`` (Lightning's
        own step logging would be thinned by ``log_every_n_steps`` and shifted one step back).
        """
        suffix = self._name_suffix()
        if suffix:
            metrics = {f"{k}{suffix}": v for k, v in metrics.items()}
        if not metrics:
            return
        values = {k: float(v) for k, v in metrics.items()}
        trainer = compat.trainer_of(pl_module)
        mid_epoch = self._mid_epoch and trainer is not None
        direct = (mid_epoch or self._catching_up) and trainer is not None  # loggers at this very step
        on_step = mid_epoch and not trainer.validating
        pl_module.log_dict(
            values,
            on_step=on_step,
            on_epoch=not on_step,
            logger=False if direct else None,  # None: Lightning's default (the loggers)
            sync_dist=False,
            add_dataloader_idx=False,
        )
        if trainer is None:
            return
        if direct:
            step = int(trainer.global_step)
            for logger in trainer.loggers:
                logger.log_metrics({**values, "epoch": int(trainer.current_epoch)}, step=step)
                logger.save()
        try:
            at = LoggedAt(int(trainer.current_epoch), int(trainer.global_step), mid_epoch)
            _LOGGED.setdefault(trainer, {}).update(dict.fromkeys(metrics, at))
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

        Writes run in order on one thread, overlapping training; :meth:`flush` waits for them.
        Submitting waits for the previous write (so a failed write raises by the next one); the
        base also flushes before a checkpoint is saved, at the end of training, at teardown and
        on exceptions.
        """
        if self._writer is None:
            self._writer = fileio.BackgroundWriter(f"memcallbacks-{self.folder}")
        self._writer.submit_as(f"{type(self).__name__}, epoch {self.last_epoch_done}", fn, *args, **kwargs)

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
        if self.evaluate_on_validation and self._last_step_done < 0:
            self.warn_once(
                "no_validation_run",
                f"{type(self).__name__}(evaluate_on_validation=True) did not evaluate: no validation ran "
                "during fit. Pass validation data to fit (with limit_val_batches > 0), or schedule it by "
                "steps (every_n_steps=...) or epochs instead",
            )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._close_writer()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        try:
            self._close_writer()
        except Exception as e:
            rank_zero_warn(f"{type(self).__name__}: writing the run directory failed: {e!r}")
        if isinstance(exception, KeyboardInterrupt):
            _report_interruption(trainer)

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
        """What tells two instances of this class apart in one Trainer: ``name`` (never a when/where argument)."""
        return {} if self.name is None else {"name": self.name}

    def _measured_args(self) -> dict[str, Any]:
        """Arguments (plain JSON values) that define what this callback measures; checked on resume."""
        return {}

    @property
    def state_key(self) -> str:
        key = self.__dict__.get("_state_key_cache")
        if key is None:  # Lightning reads it in every hook: compute it once
            key = self._generate_state_key(**self._state_key_args())
            self.__dict__["_state_key_cache"] = key
        _refuse_twin(self, compat.callbacks_being_validated())  # Trainer(...) is checking the keys
        return key

    def base_state(self) -> dict[str, Any]:
        """What the base keeps in a checkpoint; merge it into the subclass's ``state_dict``."""
        return {
            "last_epoch_done": self._last_epoch_done,
            "last_step_done": self._last_step_done,
            "measured": self._measured_args(),
            "history": self.history,
            "warned": dict(self._warned),
            "run": {  # which run wrote the run directory: a resume keeps both (rundir.resolve_run)
                "run_id": getattr(self, "_run_id", None),
                "root": None if self._run_dir is None else str(self._run_dir),
                "explicit": self._run_dir_arg is not None,
            },
        }

    def load_base_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`base_state` (older checkpoints without a part load with its default).

        Raises:
            ValueError: an argument that defines what is measured differs from the checkpoint's.
        """
        saved = state.get("measured")
        if isinstance(saved, dict):
            check_same_measured_args(type(self).__name__, saved, self._measured_args())
        self._last_epoch_done = int(state.get("last_epoch_done", -1))
        self._last_step_done = int(state.get("last_step_done", -1))
        self._history = [_history_row(row) for row in state.get("history") or []]
        self._warned = {str(k): int(v) for k, v in (state.get("warned") or {}).items()}
        self.__dict__["_saved_run"] = state.get("run")  # adopted at fit start (rundir.start_run)
        self._state_loaded = True


def _refuse_twin(monitor: MemorisationCallback, callbacks: list[Any] | None) -> None:
    """Refuse, naming ``name=``, a second monitor of ``monitor``'s class with the same ``name`` in one Trainer.

    Lightning refuses two stateful callbacks with one state key in ``Trainer(...)``, with a message
    that does not say how to tell them apart; this runs first (see
    :func:`memcallbacks.utilities.compat.callbacks_being_validated`).

    Raises:
        ValueError: another callback of the same class has the same state key (same ``name``, ``None`` included).
    """
    if not callbacks:
        return
    cls, args = type(monitor), monitor._state_key_args()
    if not any(cb is not monitor and type(cb) is cls and cb._state_key_args() == args for cb in callbacks):
        return
    same = "without `name=`" if monitor.name is None else f"with the same name={monitor.name!r}"
    raise ValueError(
        f"two {cls.__name__} callbacks {same} in one Trainer: their checkpoint states, logged keys and "
        f"run-directory folders would collide. Give each a distinct `name=`, e.g. {cls.__name__}(..., "
        f"name='a') and {cls.__name__}(..., name='b'): it suffixes the keys (mem/.../a) and the folder "
        f"({monitor.subdir}_a/)"
    )


def _notify_after_monitor(trainer: pl.Trainer, pl_module: pl.LightningModule, point: str) -> None:
    """Let callbacks that decide after the monitors (``after_monitor_cycle``) know, whatever the order.

    ``point`` is ``"epoch"`` (a monitor has done an epoch's work, evaluated or not), ``"step"`` or
    ``"validation"`` (a monitor has evaluated in the middle of an epoch).
    """
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        after = getattr(callback, "after_monitor_cycle", None)
        if after is not None:
            after(trainer, pl_module, point)


def _history_row(row: dict[str, Any]) -> dict[str, Any]:
    """A checkpointed history row in today's shape (``epoch``/``step`` as int; ``step`` -1 if unknown)."""
    out = dict(row)
    out["epoch"] = int(out["epoch"])
    out["step"] = int(out.get("step", -1))
    return out


def check_name(name: Any) -> str | None:
    """``name`` of a monitor: ``None`` or a non-empty string of letters, digits, ``-``, ``_`` or ``.``.

    Raises:
        ValueError: any other value, naming it.
    """
    if name is not None and (
        not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name)
    ):
        raise ValueError(
            f"`name` must be None or a non-empty string of letters, digits, '-', '_' or '.', got {name!r}; "
            "e.g. name='calibrated' (it names the run-directory folder, the logged keys and the checkpoint state)"
        )
    return name


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
