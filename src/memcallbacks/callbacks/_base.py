"""Shared Lightning glue for every memcallbacks monitor.

When the epoch-end work runs: at the end of the training epoch, or, when a validation run
closes the epoch (every batch of the training epoch done), at that validation's epoch end.
The earlier of the two matters: ``ModelCheckpoint`` saves at ``on_validation_end`` when it
does not save at train-epoch end, and a checkpoint must hold this epoch's numbers so that
resuming loses nothing. The work runs once per epoch whichever hook comes first.

Scalars are logged with ``pl_module.log_dict`` (they reach every logger and
``trainer.callback_metrics``, so ``EarlyStopping`` and :class:`LeakageEarlyStopping` see
them); every rank logs the same values. Rich records go through :mod:`memcallbacks.trackers`.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_warn

from memcallbacks import _io, trackers

__all__ = ["MemorisationCallback", "check_every_n_epochs", "logged_epochs"]

# Trainer -> {key: epoch of its latest log_metrics call}; read by LeakageEarlyStopping to act on
# fresh values only (monitors that evaluate every n epochs leave stale values in callback_metrics).
_LOGGED_EPOCHS: weakref.WeakKeyDictionary[Any, dict[str, int]] = weakref.WeakKeyDictionary()


def logged_epochs(trainer: Any) -> dict[str, int]:
    """For each key logged through :meth:`MemorisationCallback.log_metrics` on ``trainer``, its latest epoch."""
    try:
        return dict(_LOGGED_EPOCHS.get(trainer, {}))
    except TypeError:
        return {}


def check_every_n_epochs(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"`every_n_epochs` must be an integer >= 1, got {value!r}; use 1 to evaluate every epoch"
        )
    return value


class MemorisationCallback(Callback):
    """Base class: run-directory handling, once-per-epoch scheduling, logging and tracker records.

    Subclasses implement :meth:`on_memorisation_epoch_end` and set ``subdir``.
    """

    subdir: str = "monitor"

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
        self._run_dir_arg = None if run_dir is None else Path(run_dir)
        self.log_per_sample = bool(log_per_sample)
        self.log_secrets = bool(log_secrets)
        self._run_dir: Path | None = self._run_dir_arg
        self._last_epoch_done = -1
        self._writer: _io.BackgroundWriter | None = None

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
        if self._run_dir_arg is not None:
            root = self._run_dir_arg
        else:
            log_dir = trainer.log_dir  # broadcast from rank 0 by Lightning: call on every rank
            root = Path(log_dir if log_dir is not None else trainer.default_root_dir) / "memcallbacks"
        self._run_dir = root
        if trainer.is_global_zero:
            try:
                (root / self.subdir).mkdir(parents=True, exist_ok=True)
                probe = root / self.subdir / ".write-test"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as e:
                raise PermissionError(
                    f"{type(self).__name__}: cannot write the run directory {str(root)!r} ({e.strerror}); "
                    "pass `run_dir=` a writable folder"
                ) from e

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._resolve_run_dir(trainer)

    # -- scheduling ----------------------------------------------------------------------
    def is_due(self, trainer: pl.Trainer) -> bool:
        """Whether this epoch is one of the every-``every_n_epochs`` evaluations."""
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":  # validation inside fit only
            return
        if trainer.fit_loop.epoch_loop._is_training_done:
            self._run_epoch_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_epoch_end(trainer, pl_module)

    def _run_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._last_epoch_done == trainer.current_epoch:
            return
        self._last_epoch_done = trainer.current_epoch
        self.on_memorisation_epoch_end(trainer, pl_module)

    def on_memorisation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Once per training epoch, after its last batch: collect, compute, log, save."""
        raise NotImplementedError

    # -- output --------------------------------------------------------------------------
    @staticmethod
    def log_metrics(pl_module: pl.LightningModule, metrics: dict[str, float]) -> None:
        """Log scalars (identical on every rank) so every logger and ``callback_metrics`` get them."""
        if metrics:
            pl_module.log_dict(
                {k: float(v) for k, v in metrics.items()},
                on_step=False,
                on_epoch=True,
                sync_dist=False,
                add_dataloader_idx=False,
            )
            trainer = getattr(pl_module, "_trainer", None)
            if trainer is not None:
                try:
                    epochs = _LOGGED_EPOCHS.setdefault(trainer, {})
                    epochs.update(dict.fromkeys(metrics, int(trainer.current_epoch)))
                except TypeError:  # not weak-referenceable: freshness falls back to Lightning's results
                    pass

    def emit(self, trainer: pl.Trainer, record: trackers.Record) -> None:
        """Send a rich record to the trackers, honouring this callback's privacy opt-ins."""
        trackers.emit(trainer, record, allow_per_sample=self.log_per_sample, allow_secrets=self.log_secrets)

    # -- background writes ---------------------------------------------------------------
    def write_in_background(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        """Run ``fn(*args, **kwargs)`` (a run-directory write of snapshotted data) off the training loop.

        Writes run in order on one thread; :meth:`flush` waits for them, and fit end, teardown
        and exceptions flush automatically.
        """
        if self._writer is None:
            self._writer = _io.BackgroundWriter(f"memcallbacks-{self.subdir}")
        self._writer.submit(fn, *args, **kwargs)

    def flush(self) -> None:
        """Wait until the run directory holds every write submitted so far (re-raises a failed write)."""
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

    # -- state ---------------------------------------------------------------------------
    def base_state(self) -> dict[str, Any]:
        return {"last_epoch_done": self._last_epoch_done}

    def load_base_state(self, state: dict[str, Any]) -> None:
        self._last_epoch_done = int(state.get("last_epoch_done", -1))
