"""Stop training when a memorisation metric crosses a threshold, optionally restoring the last safe weights.

The monitors of memcallbacks log ``mem/<area>/<metric>`` scalars (canary exposure, Carlini et
al. 2019; membership-inference AUC and TPR at low FPR, Yeom et al. 2018 and Carlini et al.
2022; the train/held-out loss gap; the one-run audit's epsilon lower bound, Steinke et al.
2023). :class:`LeakageEarlyStopping` watches one or several of them and stops the run when
one crosses its threshold for ``patience`` consecutive *fresh* evaluations.

How it differs from Lightning's ``EarlyStopping(monitor="mem/...", divergence_threshold=x,
mode="min")`` (which also stops when a ``mem/*`` value rises above ``x``):

- *Freshness*: monitors that evaluate every n epochs leave their last value in
  ``trainer.callback_metrics``; ``EarlyStopping`` re-reads that stale value every epoch, so
  ``patience`` counts epochs, not evaluations. Here only values logged this epoch count.
- *Ordering*: the decision is taken after every memcallbacks monitor of the epoch, whatever
  the order of ``callbacks=[...]``.
- Several conditions (any of them stops), ``restore="best_safe"`` (the returned model is
  the last one measured below every threshold), a reason in ``stopping.json`` and an alert
  on the loggers.

Resuming a run this callback stopped stops again at once (the stop is part of the checkpoint
state, like Lightning's ``EarlyStopping``); pass ``continue_after_stop=True`` to train on.
Thresholds, patience, ``min_epochs`` and ``run_dir`` may change between the run and its
resume (the counters carry over); the monitored keys (and ``name``) identify the callback's
checkpoint state.

Freshness, precisely: a key is fresh at epoch ``e`` when, during epoch ``e``, it was logged
through :meth:`MemorisationCallback.log_metrics` (every memcallbacks monitor does; recorded
per Trainer by :func:`memcallbacks.callbacks._base.logged_at`) or, for keys logged
another way (``self.log("mem/...")`` in your module), when it is among the values logged
since the running loop's last reset (Lightning's result collection for the current epoch).

Mid-epoch decisions: a monitor scheduled by steps (``every_n_steps``) or by validation runs
(``evaluate_on_validation``) notifies the stopper after each evaluation; once every monitor due at
that global step has evaluated, the stopper decides on the keys logged at that step (a key is
fresh at one step only). A stop sets ``trainer.should_stop`` there, and Lightning ends the epoch
after the current batch (after the validation run, if it was running one), as it does for
``EarlyStopping(check_on_train_epoch_end=False)``. ``restore="best_safe"`` keeps the weights of the
last *evaluation* at which every monitored key was fresh and below its threshold, whether it
happened at an epoch end or at a step. ``stopped_step`` and ``best_safe_step`` (and
``stopped_step``/``restored_step`` in ``stopping.json``) name the global steps.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from memcallbacks import loggers, rundir
from memcallbacks.callbacks._base import (
    MemorisationCallback,
    SkipsFastDevRun,
    WarnsOnce,
    logged_at,
    resolve_run_root,
)
from memcallbacks.utilities import compat
from memcallbacks.utilities.validation import check_bool, check_choice, check_int, check_path, check_real

__all__ = ["LeakageCondition", "LeakageEarlyStopping"]

_log = logging.getLogger(__name__)
_MODES = ("max", "min")
_RESTORE = (None, "best_safe")
# the memcallbacks monitor that logs each mem/<area>/... key area
_MONITOR_OF_AREA = {
    "audit": "PrivacyAuditMonitor",
    "canary": "CanaryExposureMonitor",
    "dp": "DPEpsilonMonitor",
    "extract": "SequenceMemorisationMonitor",
    "gap": "MembershipInferenceMonitor",
    "mia": "MembershipInferenceMonitor",
    "mia_cal": "MembershipInferenceMonitor",
    "mia_lm": "SequenceMemorisationMonitor",
    "mia_ref": "MembershipInferenceMonitor",
    "mia_traj": "MembershipInferenceMonitor",
    "traj": "LossTrajectoryTracker",
}
BEST_SAFE_FILE = rundir.BEST_SAFE_FILE


def _check_patience(value: Any, name: str = "patience") -> int:
    return check_int(name, value, minimum=1, hint="the number of fresh evaluations past the threshold")


@dataclass(frozen=True)
class LeakageCondition:
    """One stopping condition: ``monitor`` past ``threshold`` for ``patience`` fresh evaluations.

    Args:
        monitor: a logged key, e.g. ``"mem/canary/exposure_max"``.
        threshold: the value that must not be crossed (finite or infinite, not NaN).
        mode: ``"max"`` stops when the value rises above ``threshold`` (``value > threshold``),
            ``"min"`` when it falls below (``value < threshold``).
        patience: consecutive fresh evaluations past the threshold before stopping; ``None``
            takes the callback's ``patience``.

    Raises:
        ValueError: empty monitor, NaN threshold, unknown mode or patience < 1.

    Example:
        >>> LeakageCondition("mem/mia/auc", 0.6).crossed(0.65)
        True
    """

    monitor: str
    threshold: float
    mode: str = "max"
    patience: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.monitor, str) or not self.monitor:
            raise ValueError(
                f"`monitor` must be a non-empty logged key such as 'mem/mia/auc', got {self.monitor!r}"
            )
        threshold = check_real(
            "threshold",
            self.threshold,
            allow_nan=True,
            allow_inf=True,
            hint=f"the limit for {self.monitor!r}",
        )
        if math.isnan(threshold):
            raise ValueError(
                f"`threshold` for {self.monitor!r} must not be NaN; give the value that must not be crossed"
            )
        object.__setattr__(self, "threshold", threshold)
        check_choice("mode", self.mode, _MODES)
        if self.patience is not None:
            object.__setattr__(self, "patience", _check_patience(self.patience))

    def crossed(self, value: float) -> bool:
        """Whether ``value`` is past the threshold (NaN is never past it)."""
        return value > self.threshold if self.mode == "max" else value < self.threshold

    def describe(self, value: float) -> str:
        unit = " bits" if "exposure" in self.monitor else ""
        sign = ">" if self.mode == "max" else "<"
        return f"{self.monitor} = {_fmt(value)}{unit} {sign} {_fmt(self.threshold)}"


def _fmt(x: float) -> str:
    text = f"{x:.4g}"
    return text if any(c in text for c in ".en") else text + ".0"


def _as_condition(item: Any, patience: int) -> LeakageCondition:
    if isinstance(item, LeakageCondition):
        cond = item
    elif isinstance(item, Mapping):
        try:
            cond = LeakageCondition(**item)
        except TypeError as e:
            if "unexpected keyword" not in str(e) and "missing" not in str(e):
                raise
            raise TypeError(
                f"a condition dict takes the keys monitor, threshold, mode, patience; got {sorted(item)} ({e})"
            ) from e
    else:
        raise TypeError(
            f"`conditions` items must be LeakageCondition or dicts, got {type(item).__name__}: {item!r}"
        )
    if cond.patience is None:
        cond = LeakageCondition(cond.monitor, cond.threshold, cond.mode, patience)
    return cond


def _validate_init(
    monitor: Any,
    threshold: Any,
    mode: Any,
    patience: Any,
    conditions: Any,
    min_epochs: Any,
    restore: Any,
    name: Any,
) -> tuple[tuple[LeakageCondition, ...], int, int]:
    """Check the arguments of :class:`LeakageEarlyStopping`; return (conditions, patience, min_epochs)."""
    patience = _check_patience(patience)
    conds: list[LeakageCondition] = []
    if monitor is not None or threshold is not None:
        if monitor is None or threshold is None:
            raise ValueError(
                f"give both `monitor` and `threshold` (got monitor={monitor!r}, threshold={threshold!r}), "
                "or use `conditions=[...]`"
            )
        conds.append(LeakageCondition(monitor, threshold, mode, patience))
    else:
        check_choice("mode", mode, _MODES)
    if conditions is not None:
        if isinstance(conditions, (str, Mapping, LeakageCondition)):
            conditions = [conditions]
        conds.extend(_as_condition(c, patience) for c in conditions)
    if not conds:
        raise ValueError(
            "LeakageEarlyStopping needs a condition: `LeakageEarlyStopping('mem/canary/exposure_max', 15.0)` "
            "or `conditions=[LeakageCondition(...), ...]`, or a preset such as `LeakageEarlyStopping.exposure(bits=15)`"
        )
    if len({c.monitor for c in conds}) != len(conds):
        raise ValueError(f"each key may appear in one condition only, got {[c.monitor for c in conds]}")
    min_epochs = check_int("min_epochs", min_epochs, minimum=0, hint="0 allows a stop after the first epoch")
    check_choice("restore", restore, _RESTORE)
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"`name` must be a non-empty string or None, got {name!r}")
    return tuple(conds), patience, min_epochs


class LeakageEarlyStopping(SkipsFastDevRun, WarnsOnce, Callback):
    """Stop training when a memorisation metric crosses a threshold.

    Decides once per epoch, after every memcallbacks monitor has done the epoch's work (each
    monitor notifies it; the order of ``callbacks=[...]`` does not matter), using only values
    logged this epoch; and, for monitors scheduled by steps or validation runs, after each of
    their evaluations, in the middle of the epoch (see the module docstring). The decision is
    reduced across ranks (any rank past the threshold stops every rank). On stopping it sets
    ``trainer.should_stop``, logs a warning line, sends a :class:`~memcallbacks.loggers.Alert`
    to the trackers, stores :attr:`stopped_epoch`, :attr:`stopped_step` and :attr:`reason`, and writes
    ``<run directory>/stopping.json`` (:func:`memcallbacks.rundir.resolve_run`).

    Args:
        monitor: key of the one-condition shorthand (e.g. ``"mem/canary/exposure_max"``).
        threshold: threshold of the shorthand condition.
        mode: ``"max"`` (stop when the value rises above ``threshold``) or ``"min"``.
        patience: consecutive fresh evaluations past the threshold before stopping (default 1);
            also the default of ``conditions`` that give none.
        conditions: several conditions, any of which stops: :class:`LeakageCondition` objects
            or dicts with the same keys. Combined with the shorthand when both are given.
        min_epochs: no stop before this many epochs have completed (values still count for
            ``restore="best_safe"``; evaluations before then do not count toward ``patience``).
        check_finite: stop when a fresh monitored value is NaN or infinite (a broken monitor);
            with ``False`` NaN values are ignored.
        restore: ``"best_safe"`` loads, when stopping, the weights of the last evaluation at which
            every monitored key was fresh and below its threshold (a CPU copy kept in memory).
        save_best_safe: also write those weights to ``<run_dir>/stopping_best_safe.safetensors``
            (safetensors format: tensors only, no pickle) so they survive a resume.
        strict: raise when a monitored key is still missing once every memcallbacks monitor has
            had its first evaluation; with ``False``, warn once.
        run_dir: folder for ``stopping.json`` (default: the run's own folder, :func:`memcallbacks.rundir.resolve_run`).
        continue_after_stop: when resuming from a checkpoint of a run this callback stopped,
            train on (the counters restart at 0) instead of stopping again at once.
        name: tells two stoppers on the same keys apart in one Trainer (their checkpoint states).

    Under ``Trainer(fast_dev_run=...)`` it does nothing (as Lightning's ``EarlyStopping``).

    Raises:
        ValueError: no condition, NaN threshold, unknown ``mode`` or ``restore``, ``patience`` < 1,
            negative ``min_epochs``.
        TypeError: a bool argument that is not a bool, a threshold that is not a number.
        RuntimeError: (during training, ``strict=True``) a monitored key is never logged.
        MisconfigurationException: (at ``setup``, ``strict=True``) a condition watches a key of a
            memcallbacks monitor (``mem/canary/...``, ``mem/mia/...``, ...) and no memcallbacks monitor
            is in the Trainer.
        ValueError: (in ``Trainer(...)``) two stoppers on the same keys with the same ``name``.

    After a rollback (``restore="best_safe"``), every checkpoint saved says which evaluation's weights
    it holds: ``checkpoint["memcallbacks_weights"]["epoch"]`` (and ``"step"``), with
    :attr:`restored_epoch`/:attr:`restored_step`; a warning says so once. An epoch left without a
    decision by a resume restarts the patience counters and is listed in :attr:`gaps`.

    Example:
        >>> from memcallbacks import CanaryExposureMonitor, LeakageEarlyStopping
        >>> stopper = LeakageEarlyStopping("mem/canary/exposure_max", threshold=15.0, restore="best_safe")
        >>> trainer = pl.Trainer(callbacks=[stopper, CanaryExposureMonitor(canaries)])  # doctest: +SKIP
        >>> trainer.fit(model)  # doctest: +SKIP
        >>> stopper.reason  # doctest: +SKIP
        'Leakage: mem/canary/exposure_max = 18.2 bits > 15.0 at epoch 7'
    """

    def __init__(
        self,
        monitor: str | None = None,
        threshold: float | None = None,
        mode: str = "max",
        *,
        patience: int = 1,
        conditions: Sequence[LeakageCondition | Mapping[str, Any]] | None = None,
        min_epochs: int = 0,
        check_finite: bool = True,
        restore: str | None = None,
        save_best_safe: bool = False,
        strict: bool = True,
        run_dir: str | os.PathLike[str] | None = None,
        continue_after_stop: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.conditions, self.patience, self.min_epochs = _validate_init(
            monitor, threshold, mode, patience, conditions, min_epochs, restore, name
        )
        self.check_finite = check_bool("check_finite", check_finite)
        self.restore = restore
        self.save_best_safe = check_bool("save_best_safe", save_best_safe)
        self.strict = check_bool("strict", strict)
        self.continue_after_stop = check_bool("continue_after_stop", continue_after_stop)
        self.name = name
        self._run_dir_arg = check_path("run_dir", run_dir)
        self._root: Path | None = self._run_dir_arg

        # state (see state_dict)
        self.counters: dict[str, int] = {c.monitor: 0 for c in self.conditions}
        self.last_values: dict[str, float] = {}
        self.seen: set[str] = set()
        self.gaps: list[list[int]] = []
        """``[first, last]`` epochs without a decision (a resume that lost them): patience restarted after each."""
        self.stopped_epoch: int | None = None
        self.stopped_step: int | None = None
        """Global step of the stop (``trainer.global_step`` when it was decided)."""
        self.reason: str | None = None
        self.best_safe_epoch: int | None = None
        self.best_safe_step: int | None = None
        """Global step of the evaluation whose weights ``restore="best_safe"`` keeps."""
        self.restored_epoch: int | None = None
        """Epoch of the weights ``restore="best_safe"`` loaded at the stop (``None``: no rollback)."""
        self.restored_step: int | None = None
        """Global step of those weights (``None``: no rollback)."""
        self._last_epoch_decided = -1
        # (global step, point) of the last mid-epoch decision
        self._last_step_decided: tuple[int, str] = (-1, "")
        self._best_safe_weights: dict[str, torch.Tensor] | None = None
        self._best_safe_file: str | None = None  # where save_best_safe wrote them (kept across resume)
        self._first_fit_epoch = 0
        self._warned: dict[str, int] = {}
        self._restored_stop = False  # the checkpoint loaded holds a stop
        self._skip_run = False  # fast_dev_run

    # -- presets -------------------------------------------------------------------------------
    @classmethod
    def exposure(cls, bits: float, *, statistic: str = "max", **kwargs: Any) -> LeakageEarlyStopping:
        """Stop when canary exposure (Carlini et al. 2019) exceeds ``bits`` (``mem/canary/exposure_<statistic>``).

        Example:
            >>> LeakageEarlyStopping.exposure(bits=15).conditions[0].monitor
            'mem/canary/exposure_max'
        """
        if statistic not in ("max", "mean"):
            raise ValueError(
                f"`statistic` can be max or mean (mem/canary/exposure_max, mem/canary/exposure_mean), got {statistic!r}"
            )
        return cls(f"mem/canary/exposure_{statistic}", bits, "max", **kwargs)

    @classmethod
    def mia_auc(cls, auc: float = 0.6, *, prefix: str = "mem/mia", **kwargs: Any) -> LeakageEarlyStopping:
        """Stop when the loss-threshold membership-inference AUC exceeds ``auc`` (``mem/mia/auc``)."""
        return cls(f"{prefix}/auc", auc, "max", **kwargs)

    @classmethod
    def tpr_at_fpr(
        cls, tpr: float, *, fpr: float = 0.01, prefix: str = "mem/mia", **kwargs: Any
    ) -> LeakageEarlyStopping:
        """Stop when the attack's TPR at ``fpr`` exceeds ``tpr`` (``mem/mia/tpr@1%fpr`` for ``fpr=0.01``).

        Example:
            >>> LeakageEarlyStopping.tpr_at_fpr(0.05, fpr=0.001).conditions[0].monitor
            'mem/mia/tpr@0.1%fpr'
        """
        from memcallbacks.metrics.membership import format_fpr

        return cls(f"{prefix}/tpr@{format_fpr(fpr)}fpr", tpr, "max", **kwargs)

    @classmethod
    def loss_gap(cls, gap: float, *, key: str = "mem/gap/loss", **kwargs: Any) -> LeakageEarlyStopping:
        """Stop when mean held-out loss minus mean member loss exceeds ``gap`` (``mem/gap/loss``)."""
        return cls(key, gap, "max", **kwargs)

    @classmethod
    def audit_epsilon(
        cls, epsilon: float, *, key: str = "mem/audit/epsilon_lb", **kwargs: Any
    ) -> LeakageEarlyStopping:
        """Stop when the one-run audit's empirical epsilon lower bound (Steinke et al. 2023) exceeds ``epsilon``."""
        return cls(key, epsilon, "max", **kwargs)

    # -- Lightning plumbing ----------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        """Built from the monitored keys (and ``name``): thresholds and patience may change on resume."""
        key = self.__dict__.get("_state_key_cache")
        if key is None:
            args: dict[str, Any] = {"monitors": sorted(c.monitor for c in self.conditions)}
            if self.name is not None:
                args["name"] = self.name
            key = self._generate_state_key(**args)
            self.__dict__["_state_key_cache"] = key
        self._refuse_twin(compat.callbacks_being_validated())  # Trainer(...) is checking the keys
        return key

    def _refuse_twin(self, callbacks: list[Any] | None) -> None:
        """Refuse, naming ``name=``, a second stopper on the same keys with the same ``name`` in one Trainer."""
        if not callbacks:
            return
        keys = sorted(c.monitor for c in self.conditions)
        for cb in callbacks:
            if (
                cb is not self
                and isinstance(cb, LeakageEarlyStopping)
                and cb.name == self.name
                and sorted(c.monitor for c in cb.conditions) == keys
            ):
                raise ValueError(
                    f"two LeakageEarlyStopping callbacks on {keys} with name={self.name!r} in one Trainer: "
                    "their checkpoint states would collide. Merge them into one (`conditions=[...]`), or "
                    "give each a distinct `name=`, e.g. LeakageEarlyStopping(..., name='strict')"
                )

    @property
    def stopping_path(self) -> Path:
        """``<run_dir>/stopping.json`` (known after setup)."""
        if self._root is None:
            raise RuntimeError(
                "LeakageEarlyStopping.stopping_path is known once the Trainer has called setup()"
            )
        return self._root / rundir.STOPPING_FILE

    @property
    def best_safe_path(self) -> Path:
        """``<run_dir>/stopping_best_safe.safetensors`` (known after setup)."""
        if self._root is None:
            raise RuntimeError(
                "LeakageEarlyStopping.best_safe_path is known once the Trainer has called setup()"
            )
        return self._root / BEST_SAFE_FILE

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # under fast_dev_run this is not reached: SkipsFastDevRun turns every hook into a no-op
        if stage != "fit":
            return
        self._check_monitors_attached(trainer)
        self._root = resolve_run_root(trainer, self._run_dir_arg, type(self).__name__)

    def _check_monitors_attached(self, trainer: pl.Trainer) -> None:
        """Refuse (warn with ``strict=False``), before the first step, keys of a memcallbacks monitor none logs.

        A condition on a key of a memcallbacks area (``mem/canary/...``, ``mem/mia/...``, ...) needs
        a memcallbacks monitor in the Trainer; keys of other areas may be logged by the module
        itself and are checked once the monitors have had their first evaluation.
        """
        if any(isinstance(cb, MemorisationCallback) for cb in trainer.callbacks):  # type: ignore[attr-defined]
            return
        needed: dict[str, str] = {}
        for cond in self.conditions:
            parts = cond.monitor.split("/")
            if len(parts) >= 3 and parts[0] == "mem" and parts[1] in _MONITOR_OF_AREA:
                needed[cond.monitor] = _MONITOR_OF_AREA[parts[1]]
        if not needed:
            return
        classes = sorted(set(needed.values()))
        message = (
            f"LeakageEarlyStopping monitors {sorted(needed)}, but no memcallbacks monitor is in the Trainer's "
            f"`callbacks=[...]`, so nothing will log {'it' if len(needed) == 1 else 'them'}. Add "
            f"{' and '.join(classes)} to `callbacks=[...]` beside the stopper, e.g. "
            f"Trainer(callbacks=[{classes[0]}(...), stopper])"
        )
        if self.strict:
            raise MisconfigurationException(message)
        self.warn_once("no_monitor", message)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._skip_run:
            return
        self._first_fit_epoch = trainer.current_epoch
        if not self._restored_stop:
            return
        self._restored_stop = False
        if self.continue_after_stop:
            rank_zero_info(
                f"LeakageEarlyStopping: the checkpoint's run was stopped at epoch {self.stopped_epoch} "
                f"({self.reason}); continue_after_stop=True: training continues with the counters at 0"
            )
            self.stopped_epoch = None
            self.reason = None
            self.counters = dict.fromkeys(self.counters, 0)
            self.restored_epoch = self.restored_step = None  # training goes on: later weights are its own
            return
        trainer.should_stop = True
        rank_zero_warn(
            f"LeakageEarlyStopping: this run was stopped at epoch {self.stopped_epoch} ({self.reason}); "
            "resuming it stops again at once, before any training step. Pass "
            "`LeakageEarlyStopping(..., continue_after_stop=True)` to train on (or start a new run)"
        )

    def _monitors_done(self, trainer: pl.Trainer) -> bool:
        """Whether every memcallbacks monitor of the Trainer has done this epoch's work."""
        epoch = trainer.current_epoch
        return all(
            cb.last_epoch_done == epoch
            for cb in trainer.callbacks  # type: ignore[attr-defined]
            if isinstance(cb, MemorisationCallback) and not cb.__dict__.get("_skip_run")
        )

    def _in_fit(self, trainer: pl.Trainer) -> bool:
        return not (self._skip_run or trainer.sanity_checking or trainer.state.fn != "fit")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Decide at the validation that closes a training epoch, once every monitor has done the epoch
        if self._in_fit(trainer) and compat.is_training_done(trainer) and self._monitors_done(trainer):
            self._decide_once(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._in_fit(trainer) and self._monitors_done(trainer):
            self._decide_once(trainer, pl_module)

    def after_monitor_cycle(self, trainer: pl.Trainer, pl_module: pl.LightningModule, point: str) -> None:
        """Called by each memcallbacks monitor after its work: decide once the last one due is done.

        Args:
            trainer: the Trainer.
            pl_module: the module.
            point: ``"epoch"`` (an epoch's work, evaluated or not), ``"step"`` or ``"validation"``
                (an evaluation in the middle of an epoch, scheduled by steps or validation runs).
        """
        if not self._in_fit(trainer):
            return
        if point == "epoch":
            if self._monitors_done(trainer):
                self._decide_once(trainer, pl_module)
        elif self._point_done(trainer, point):
            self._decide_at_step(trainer, pl_module, point)

    def _point_done(self, trainer: pl.Trainer, point: str) -> bool:
        """Whether every monitor that evaluates at this global step and ``point`` has done so."""
        step = trainer.global_step
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            if not isinstance(cb, MemorisationCallback) or cb.__dict__.get("_skip_run"):
                continue
            due = (
                cb.every_n_steps is not None and step > 0 and step % cb.every_n_steps == 0
                if point == "step"
                else cb.evaluate_on_validation
            )
            if due and cb.last_step_done != step:
                return False
        return True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (
            self._skip_run
            or self.stopped_epoch is not None
            or not trainer.is_global_zero
            or self._root is None
        ):
            return
        # a run that was not stopped says so (stopping.json exists either way)
        rundir.write_stopping(
            self._root,
            {
                "stopped": False,
                "stopped_epoch": None,
                "stopped_step": None,
                "reason": None,
                "values": dict(self.last_values),
                "conditions": [asdict(c) for c in self.conditions],
                "restore": self.restore,
                "restored_epoch": None,
                "restored_step": None,
                "min_epochs": self.min_epochs,
                "gaps": [list(g) for g in self.gaps],
                "last_epoch": int(trainer.current_epoch) - 1,
                "last_step": int(trainer.global_step),
            },
        )

    # -- decision ----------------------------------------------------------------------------------
    def _decide_once(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The decision at the end of an epoch, once per epoch."""
        epoch = trainer.current_epoch
        if self._last_epoch_decided == epoch:
            return
        skipped = self._last_epoch_decided >= 0 and epoch > self._last_epoch_decided + 1
        if skipped and self.stopped_epoch is None:
            self._restart_patience(self._last_epoch_decided + 1, epoch - 1)
        self._last_epoch_decided = epoch
        if self.stopped_epoch is not None:
            trainer.should_stop = True
            return
        self._decide(trainer, pl_module, _fresh_keys(trainer), completed=epoch + 1, mid_epoch=False)

    def _restart_patience(self, first: int, last: int) -> None:
        """No decision was taken for epochs ``first..last``: patience never counts across such a gap."""
        gap = f"epoch {first}" if first == last else f"epochs {first}-{last}"
        self.counters = dict.fromkeys(self.counters, 0)
        self.gaps.append([first, last])
        self.warn_once(
            "gap",
            f"LeakageEarlyStopping: no decision was taken for {gap} (its evaluation is missing from the "
            "checkpoint this run resumed from); patience restarts from 0 after it and `gaps` in "
            "stopping.json records it",
        )

    def _decide_at_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, point: str) -> None:
        """The decision after the evaluations due at this global step (step or validation schedule)."""
        where = (int(trainer.global_step), point)
        if self._last_step_decided == where:
            return
        self._last_step_decided = where
        if self.stopped_epoch is not None:
            trainer.should_stop = True
            return
        fresh = _fresh_keys_at_step(trainer)
        if not any(c.monitor in fresh for c in self.conditions):
            return  # nothing monitored was evaluated here: no decision (and no collective)
        self._decide(trainer, pl_module, fresh, completed=trainer.current_epoch, mid_epoch=True)

    def _decide(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        fresh: set[str],
        *,
        completed: int,
        mid_epoch: bool,
    ) -> None:
        """Count the fresh values, snapshot a safe evaluation, stop; ``completed``: epochs completed."""
        metrics = trainer.callback_metrics
        values: dict[str, float] = {}
        for cond in self.conditions:
            if cond.monitor in fresh and cond.monitor in metrics:
                values[cond.monitor] = float(metrics[cond.monitor])
        self.seen.update(values)
        self.last_values.update(values)
        self._check_missing(trainer, metrics)
        reasons = self._count(values, allowed=completed >= self.min_epochs)

        local_stop = bool(reasons)
        should_stop = bool(trainer.strategy.reduce_boolean_decision(local_stop, all=False))
        if self.restore == "best_safe":
            safe = len(values) == len(self.conditions) and all(
                math.isfinite(v) and not c.crossed(v)
                for c, v in ((c, values[c.monitor]) for c in self.conditions)
            )
            if bool(trainer.strategy.reduce_boolean_decision(safe, all=True)) and not should_stop:
                self._snapshot(trainer, pl_module)
        if should_stop:
            self._stop(trainer, pl_module, reasons, local_stop, mid_epoch=mid_epoch)

    def _count(self, values: dict[str, float], *, allowed: bool) -> list[str]:
        """Update the counters with this epoch's fresh ``values``; the reasons to stop (if ``allowed``)."""
        reasons: list[str] = []
        for cond in self.conditions:
            if cond.monitor not in values:
                continue  # not evaluated this epoch: counters unchanged
            value = values[cond.monitor]
            if not math.isfinite(value) and self.check_finite:
                if allowed:
                    reasons.append(f"{cond.monitor} = {value} is not finite")
                continue
            if math.isnan(value):
                continue
            if cond.crossed(value) and allowed:
                self.counters[cond.monitor] += 1
                if self.counters[cond.monitor] >= (cond.patience or self.patience):
                    reasons.append(cond.describe(value))
            elif not cond.crossed(value):
                self.counters[cond.monitor] = 0
        return reasons

    def _check_missing(self, trainer: pl.Trainer, metrics: Mapping[str, Any]) -> None:
        missing = [
            c.monitor for c in self.conditions if c.monitor not in self.seen and c.monitor not in metrics
        ]
        if not missing or not self._first_evaluations_done(trainer):
            return
        available = sorted(k for k in metrics if k.startswith("mem/")) or ["(none)"]
        message = (
            f"LeakageEarlyStopping monitors {missing}, which no callback has logged by epoch "
            f"{trainer.current_epoch}. Logged mem/* keys: {', '.join(available)}. HINT: add the monitor that "
            "logs it to `callbacks=[...]` (e.g. CanaryExposureMonitor for mem/canary/*, "
            "MembershipInferenceMonitor for mem/mia/* and mem/gap/*) or fix the key."
        )
        if self.strict:
            raise RuntimeError(message)
        self.warn_once("missing", message)

    def _first_evaluations_done(self, trainer: pl.Trainer) -> bool:
        """Whether every memcallbacks monitor has had its first evaluation in this fit."""
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            if not isinstance(cb, MemorisationCallback):
                continue
            if cb.every_n_steps is not None:
                waiting = trainer.global_step < cb.every_n_steps
            elif cb.evaluate_on_validation:
                waiting = cb.last_step_done < 0
            else:
                waiting = trainer.current_epoch < self._first_fit_epoch + cb.every_n_epochs - 1
            if waiting:
                return False
        return True

    def _snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._best_safe_weights = {
            k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()
        }
        self.best_safe_epoch = int(trainer.current_epoch)
        self.best_safe_step = int(trainer.global_step)
        if self.save_best_safe and trainer.is_global_zero:
            rundir.write_best_safe(self.best_safe_path, self._best_safe_weights)
        if self.save_best_safe:
            self._best_safe_file = str(self.best_safe_path)

    def _stop(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        reasons: list[str],
        local: bool,
        *,
        mid_epoch: bool,
    ) -> None:
        epoch, step = int(trainer.current_epoch), int(trainer.global_step)
        world = trainer.world_size
        if world > 1:  # rank 0 reports the reasons of the first rank that crossed
            flags = trainer.strategy.all_gather(torch.tensor([int(local)], device=pl_module.device)).reshape(
                -1
            )
            src = int(torch.nonzero(flags).reshape(-1)[0].item())
            reasons = trainer.strategy.broadcast(reasons, src=src)
            if src != 0:
                reasons = [f"{r} (rank {src})" for r in reasons]
        when = f"step {step} (epoch {epoch})" if mid_epoch else f"epoch {epoch}"
        self.reason = f"Leakage: {'; '.join(reasons)} at {when}"
        self.stopped_epoch, self.stopped_step = epoch, step
        trainer.should_stop = True  # mid-epoch: Lightning ends the epoch after this batch
        restored = (
            self._restore_best_safe(pl_module, mid_epoch=mid_epoch) if self.restore == "best_safe" else None
        )
        if restored is not None:  # checkpoints saved from now on hold these weights (on_save_checkpoint)
            self.restored_epoch, self.restored_step = restored, self.best_safe_step
        if trainer.is_global_zero:
            self._report_stop(trainer, restored)

    def _restore_best_safe(self, pl_module: pl.LightningModule, *, mid_epoch: bool) -> int | None:
        """Load the last safe evaluation's weights; return its epoch (``None``: none kept, warned)."""
        weights = self._best_safe_weights
        if weights is None and self.best_safe_epoch is not None and self._best_safe_file is not None:
            weights = _load_best_safe(Path(self._best_safe_file))
        if weights is None:
            where = (
                "in this process (pass save_best_safe=True to keep it across a resume)"
                if self.best_safe_epoch is not None
                else "yet"
            )
            rank_zero_warn(
                f"LeakageEarlyStopping(restore='best_safe'): no evaluation below every threshold was seen "
                f"{where}; keeping the current weights"
            )
            return None
        pl_module.load_state_dict(weights)
        restored = self.best_safe_epoch
        which = (
            f"step {self.best_safe_step} (epoch {restored})"
            if mid_epoch and self.best_safe_step is not None
            else f"epoch {restored}"
        )
        self.reason = f"{self.reason}; restored the weights of {which}"
        return restored

    def _report_stop(self, trainer: pl.Trainer, restored: int | None) -> None:
        """Log the stop, alert the trackers and write ``stopping.json`` (global rank 0)."""
        assert self.reason is not None
        restored_step = None if restored is None else self.best_safe_step
        _log.warning(self.reason)
        loggers.emit(
            trainer,
            loggers.Alert(
                title="memcallbacks: leakage early stopping",
                text=self.reason,
                epoch=int(self.stopped_epoch or 0),
                extra={
                    "values": dict(self.last_values),
                    "restored_epoch": restored,
                    "restored_step": restored_step,
                },
            ),
        )
        if self._root is not None:
            rundir.write_stopping(
                self._root,
                {
                    "stopped": True,
                    "stopped_epoch": self.stopped_epoch,
                    "stopped_step": self.stopped_step,
                    "reason": self.reason,
                    "values": dict(self.last_values),
                    "conditions": [asdict(c) for c in self.conditions],
                    "restore": self.restore,
                    "restored_epoch": restored,
                    "restored_step": restored_step,
                    "min_epochs": self.min_epochs,
                    "gaps": [list(g) for g in self.gaps],
                },
            )

    # -- checkpoints after a rollback --------------------------------------------------------------
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """After a rollback, write into the checkpoint which evaluation's weights it holds (and warn once).

        The entry is ``checkpoint["memcallbacks_weights"] = {"epoch": E, "step": S, ...}``: a
        checkpoint named ``epoch=2-step=...`` written after ``restore="best_safe"`` loaded the
        weights of epoch 1 says ``"epoch": 1`` there.
        """
        if self.restored_epoch is None:
            return
        saved_at = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        checkpoint["memcallbacks_weights"] = {
            "epoch": int(self.restored_epoch),
            "step": None if self.restored_step is None else int(self.restored_step),
            "saved_at_epoch": int(trainer.current_epoch),
            "saved_at_step": int(trainer.global_step),
            "restored_by": "LeakageEarlyStopping(restore='best_safe')",
            "reason": self.reason,
        }
        self.warn_once(
            "rolled_back_checkpoint",
            f"LeakageEarlyStopping: a checkpoint saved at {saved_at} holds the weights of epoch "
            f"{self.restored_epoch} (step {self.restored_step}) that restore='best_safe' loaded, not those of its "
            "own epoch; its name may say otherwise. `checkpoint['memcallbacks_weights']` records which, and its "
            "optimizer state is the later one: deploy or evaluate from it, and to train on from the safe point "
            f"resume from the checkpoint of epoch {self.restored_epoch} itself",
        )

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "counters": dict(self.counters),
            "last_values": dict(self.last_values),
            "seen": sorted(self.seen),
            "gaps": [list(g) for g in self.gaps],
            "stopped_epoch": self.stopped_epoch,
            "stopped_step": self.stopped_step,
            "reason": self.reason,
            "best_safe_epoch": self.best_safe_epoch,
            "best_safe_step": self.best_safe_step,
            "restored_epoch": self.restored_epoch,
            "restored_step": self.restored_step,
            "last_epoch_decided": self._last_epoch_decided,
            "last_step_decided": list(self._last_step_decided),
            "best_safe_file": self._best_safe_file,
            "warned": dict(self._warned),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        counters = state_dict.get("counters", {})
        self.counters = {c.monitor: int(counters.get(c.monitor, 0)) for c in self.conditions}
        self.last_values = {str(k): float(v) for k, v in state_dict.get("last_values", {}).items()}
        self.seen = set(state_dict.get("seen", []))
        self.gaps = [[int(a), int(b)] for a, b in state_dict.get("gaps") or []]
        self.stopped_epoch = state_dict.get("stopped_epoch")
        self._restored_stop = self.stopped_epoch is not None
        self.reason = state_dict.get("reason")
        self.stopped_step = state_dict.get("stopped_step")
        self.best_safe_epoch = state_dict.get("best_safe_epoch")
        self.best_safe_step = state_dict.get("best_safe_step")
        self.restored_epoch = state_dict.get("restored_epoch")
        self.restored_step = state_dict.get("restored_step")
        self._last_epoch_decided = int(state_dict.get("last_epoch_decided", -1))
        step, point = state_dict.get("last_step_decided") or (-1, "")
        self._last_step_decided = (int(step), str(point))
        self._best_safe_file = state_dict.get("best_safe_file")
        self._warned = {str(k): int(v) for k, v in (state_dict.get("warned") or {}).items()}
        self._best_safe_weights = None  # on disk (save_best_safe=True) or lost with the old process


def _load_best_safe(path: Path) -> dict[str, torch.Tensor] | None:
    """The safe weights written by ``save_best_safe=True`` (``None`` if the file is gone).

    A ``.pt`` file from an older memcallbacks is read with ``torch.load(weights_only=True)``.
    """
    return rundir.read_best_safe(path)


def _fresh_keys(trainer: pl.Trainer) -> set[str]:
    """Keys fresh at the end of the current epoch (see the module docstring).

    Keys that step- or validation-scheduled monitors log are left out: they were decided on
    at their step.
    """
    epoch = trainer.current_epoch
    logged = logged_at(trainer)
    fresh = {k for k, at in logged.items() if at.epoch == epoch and not at.mid_epoch}
    # keys logged another way (self.log): a key the monitors log is judged by when they logged it only
    fresh.update(compat.keys_logged_this_epoch(trainer) - set(logged))
    return fresh


def _fresh_keys_at_step(trainer: pl.Trainer) -> set[str]:
    """Keys that step- or validation-scheduled monitors logged at the current global step."""
    epoch, step = trainer.current_epoch, trainer.global_step
    return {
        k for k, at in logged_at(trainer).items() if at.mid_epoch and at.epoch == epoch and at.step == step
    }
