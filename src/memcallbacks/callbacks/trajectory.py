"""LossTrajectoryTracker: every sample's loss at every epoch, and the statistics built on them.

Records per-sample loss trajectories during training (DESIGN.md section 2) into a
:class:`~memcallbacks.store.TrajectoryStore` and logs the training-dynamics statistics of
:mod:`memcallbacks.metrics.dynamics`: Dataset Cartography's confidence and variability
(Swayamdipta et al., EMNLP 2020), forgetting events (Toneva et al., ICLR 2019), and the
memorisation score :func:`memcallbacks.metrics.memorisation_score` (mean loss over training,
the area under the loss curve; cf. Pleiss et al., NeurIPS 2020), which ranks mislabelled and
atypical samples -- the ones a model has to memorise -- first.

Two sources of per-sample losses:

* ``source="step"`` (default, no extra forward pass): the losses *at visit time*, read from
  the dict that ``training_step`` returns (``sample_loss``, ``sample_index`` and optionally
  ``sample_correct``). Per step the callback only appends detached tensors on their device;
  once per epoch it concatenates them, gathers them across ranks (one collective), drops the
  duplicates of ``DistributedSampler`` padding, validates them, and records the epoch.
* ``source="probe"``: a fixed probe set (given, or a seeded random subset of the training
  data) evaluated in eval mode every ``every_n_epochs`` with ``sample_loss_fn``; in DDP each
  rank evaluates a shard and the shards are gathered.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import Dataset, IterableDataset, Subset

from memcallbacks import trackers
from memcallbacks._dist import first_occurrence, gather_concat, world_size
from memcallbacks._io import save_json, save_npz
from memcallbacks._probe import (
    dataset_of,
    default_sample_loss_and_correct_fn,
    evaluate_sample_losses,
    random_subset,
)
from memcallbacks.callbacks._base import MemorisationCallback
from memcallbacks.data.indexed import IndexedDataset
from memcallbacks.metrics.dynamics import TrajectoryStatistics, memorisation_score, top_k
from memcallbacks.store import DEFAULT_MEMORY_BUDGET_BYTES, TrajectoryStore

__all__ = ["LossTrajectoryTracker"]

_SOURCES = ("step", "probe")
_LN2 = math.log(2.0)


def _write_summary_files(folder: Any, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
    # uncompressed: zlib on random float64 costs ~6 ms per 1,000 samples, every epoch
    save_npz(folder / "statistics.npz", compress=False, **arrays)
    save_json(folder / "meta.json", meta)


class LossTrajectoryTracker(MemorisationCallback):
    """Record every sample's loss at every epoch; log training-dynamics and memorisation statistics.

    The user-side change for ``source="step"`` (wrap the training set in
    :class:`~memcallbacks.IndexedDataset`, return three more things from ``training_step``)::

        index, (x, y) = split_index(batch)
        per_sample = F.cross_entropy(self(x), y, reduction="none")
        return {"loss": per_sample.mean(), "sample_loss": per_sample.detach(), "sample_index": index}

    Logged once per recorded epoch (identical on every rank):

    ============================  =====================================================================
    key                           meaning
    ============================  =====================================================================
    ``mem/traj/loss_mean``        mean of this epoch's finite per-sample losses
    ``mem/traj/loss_std_mean``    mean over samples of each sample's loss std (ddof=0) over the epochs
    ``mem/traj/forgetting_mean``  mean forgetting events per sample (Toneva et al.); with correctness
    ``mem/traj/correct_frac``     fraction of this epoch's visited samples classified correctly
    ``mem/traj/unlearned_frac``   fraction of seen samples not learned: ``learned_epoch == -1`` with
                                  correctness, else gold-label probability ``exp(-last loss) < 0.5``
    ``mem/traj/visited_frac``     fraction of the ``N`` samples recorded this epoch
    ``mem/traj/nonfinite``        number of samples whose loss was NaN/inf this epoch (stored as NaN)
    ``mem/traj/score_max``        largest memorisation score (mean loss over the recorded epochs)
    ``mem/traj/epochs``           number of epochs recorded so far
    ============================  =====================================================================

    Also emits a :class:`~memcallbacks.trackers.Histogram` ``mem/traj/loss_histogram`` of this
    epoch's losses, and at fit end a :class:`~memcallbacks.trackers.Table`
    ``mem/traj/most_memorised`` (per-sample: sent only with ``log_per_sample=True``). The run
    directory (``<log_dir>/memcallbacks/trajectory``) gets ``epoch_XXXX.npy`` (column ``j`` of
    the store; ``meta.json["epochs"][j]`` is its trainer epoch), ``correct_XXXX.npy``,
    ``statistics.npz`` and ``meta.json`` at the end of every recorded epoch.

    Args:
        source: ``"step"`` (losses returned by ``training_step``) or ``"probe"`` (a fixed probe
            set evaluated in eval mode).
        num_samples: number of samples ``N``; default: the length of the training dataset (step)
            or of the probe set (probe).
        loss_key: key of the per-sample losses ``[B]`` in ``training_step``'s dict; never the
            scaled ``loss`` (Lightning divides it under gradient accumulation).
        index_key: key of the integer sample indices ``[B]`` (from :class:`IndexedDataset`).
        correct_key: key of the optional per-sample correctness ``[B]`` (bool); enables forgetting
            events and learned epochs.
        probe_dataset: probe mode: the dataset to evaluate (``(x, y)`` items for the default loss);
            default: a seeded random subset of the training dataset of ``probe_size`` items.
        probe_size: size of the random probe subset.
        probe_seed: seed of the random probe subset.
        sample_loss_fn: probe mode: ``(module, batch) -> Tensor[B]`` or ``(Tensor[B], BoolTensor[B])``;
            default per-sample cross-entropy with correctness.
        probe_batch_size: batch size of the probe evaluation.
        probe_collate_fn: collate function of the probe loader.
        every_n_epochs: record every n-th epoch.
        dtype: ``"float16"`` (default) or ``"float32"`` storage.
        memory_budget_bytes: beyond this the store keeps epochs on disk, memory-mapped.
        top_k: rows of the most-memorised table emitted at fit end.
        name: distinguishes two trackers in one Trainer: sub-folder ``trajectory_<name>`` and keys
            ``mem/traj/<metric>/<name>`` (e.g. ``mem/traj/loss_mean/probe``).
        run_dir: root folder instead of ``<trainer.log_dir>/memcallbacks``.
        log_per_sample: allow sending the per-sample table to third-party trackers.

    Raises:
        ValueError: unknown ``source``, ``loss_key="loss"``, bad sizes or dtype.

    Example:
        >>> from memcallbacks import LossTrajectoryTracker
        >>> tracker = LossTrajectoryTracker()                       # step mode
        >>> trainer = pl.Trainer(callbacks=[tracker], max_epochs=3)  # doctest: +SKIP
        >>> trainer.fit(model, DataLoader(IndexedDataset(train), batch_size=64))  # doctest: +SKIP
        >>> tracker.most_memorised(10)  # sample indices, most memorised first  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        source: str = "step",
        num_samples: int | None = None,
        loss_key: str = "sample_loss",
        index_key: str = "sample_index",
        correct_key: str | None = "sample_correct",
        probe_dataset: Dataset[Any] | None = None,
        probe_size: int = 1024,
        probe_seed: int = 0,
        sample_loss_fn: Callable[[Any, Any], Any] | None = None,
        probe_batch_size: int = 256,
        probe_collate_fn: Callable[[list[Any]], Any] | None = None,
        every_n_epochs: int = 1,
        dtype: Any = "float16",
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
        top_k: int = 20,
        name: str | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        log_per_sample: bool = False,
    ) -> None:
        super().__init__(every_n_epochs=every_n_epochs, run_dir=run_dir, log_per_sample=log_per_sample)
        if source not in _SOURCES:
            raise ValueError(f"`source` must be 'step' or 'probe', got {source!r}")
        if loss_key == "loss":
            raise ValueError(
                "`loss_key` must not be 'loss': Lightning rescales `loss` under gradient accumulation and it "
                "is a batch mean; return per-sample losses under their own key, e.g. "
                "'sample_loss': per_sample.detach()"
            )
        for arg, value in (
            ("probe_size", probe_size),
            ("probe_batch_size", probe_batch_size),
            ("top_k", top_k),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if arg == "top_k" else 1):
                raise ValueError(f"`{arg}` must be a positive integer, got {value!r}")
        if num_samples is not None and (
            isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1
        ):
            raise ValueError(f"`num_samples` must be a positive integer or None, got {num_samples!r}")
        if source == "step" and (probe_dataset is not None or sample_loss_fn is not None):
            raise ValueError(
                "`probe_dataset`/`sample_loss_fn` are used with source='probe' only; got source='step'. "
                "Pass source='probe' to evaluate a probe set."
            )
        if probe_dataset is not None and (
            isinstance(probe_dataset, IterableDataset) or not hasattr(probe_dataset, "__len__")
        ):
            raise TypeError(
                f"`probe_dataset` must be a map-style dataset with a length, got {type(probe_dataset).__name__}"
            )
        if probe_dataset is not None and len(probe_dataset) == 0:  # type: ignore[arg-type]
            raise ValueError("`probe_dataset` has 0 samples; pass a non-empty dataset to evaluate")
        self.source = source
        self.num_samples = num_samples
        self.loss_key = loss_key
        self.index_key = index_key
        self.correct_key = correct_key
        self.probe_dataset = probe_dataset
        self.probe_size = probe_size
        self.probe_seed = int(probe_seed)
        self.sample_loss_fn = sample_loss_fn or default_sample_loss_and_correct_fn
        self.probe_batch_size = probe_batch_size
        self.probe_collate_fn = probe_collate_fn
        self.dtype = TrajectoryStore(0, dtype=dtype).dtype.name
        self.memory_budget_bytes = int(memory_budget_bytes)
        self.top_k = top_k
        self.name = name
        if name is not None and (
            not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum()
        ):
            raise ValueError(f"`name` must be letters, digits, '-' or '_', got {name!r}")
        self.subdir = "trajectory" if name is None else f"trajectory_{name}"
        self._key_suffix = "" if name is None else f"/{name}"
        self.store: TrajectoryStore | None = None
        self.recorded_epochs: list[int] = []
        self._sample_ids: np.ndarray | None = None
        self._probe: Dataset[Any] | None = None
        self._pending_state: dict[str, Any] | None = None
        self._collecting = False
        self._has_correct: bool | None = None
        self._loss_buf: list[torch.Tensor] = []
        self._index_buf: list[torch.Tensor] = []
        self._correct_buf: list[torch.Tensor] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            source=self.source, name=self.name, loss_key=self.loss_key, index_key=self.index_key
        )

    # -- set-up ---------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        callbacks: list[Any] = list(getattr(trainer, "callbacks", []))
        others = [
            cb
            for cb in callbacks
            if isinstance(cb, LossTrajectoryTracker) and cb is not self and cb.name == self.name
        ]
        if others:
            raise ValueError(
                f"two LossTrajectoryTracker callbacks share name={self.name!r}: their keys and run-directory folders "
                "would collide; give each a distinct `name=` (e.g. name='probe')"
            )
        super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.store is not None and self._pending_state is None:
            return  # a second fit() on the same tracker continues its trajectories
        n, ids = self._resolve_samples(trainer)
        if self._pending_state is not None and self._pending_state.get("num_samples") not in (None, n):
            raise ValueError(
                f"the checkpoint's LossTrajectoryTracker recorded {self._pending_state['num_samples']} samples, "
                f"this run has {n}; resume with the same dataset (or num_samples)"
            )
        self._sample_ids = ids
        zero = trainer.is_global_zero
        self.store = TrajectoryStore(
            n,
            directory=self.run_dir if zero else None,
            dtype=self.dtype,
            memory_budget_bytes=self.memory_budget_bytes,
            keep_epochs=zero,
        )
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self.store.load_state_dict(state.get("store", {}))
            self.recorded_epochs = [int(e) for e in state.get("recorded_epochs", [])][: self.store.num_epochs]
            if zero:
                self._write_summary()
        elif zero:
            removed = self.store.discard_files_from(0)
            if removed:
                rank_zero_warn(
                    f"LossTrajectoryTracker: removed {removed} epoch file(s) of an earlier run from {self.run_dir}; "
                    "resume with `ckpt_path=` to continue a run instead"
                )

    def _resolve_samples(self, trainer: pl.Trainer) -> tuple[int, np.ndarray]:
        if self.source == "probe":
            probe = self.probe_dataset
            ids: np.ndarray
            if probe is None:
                train = dataset_of(trainer.train_dataloader)
                if train is None or isinstance(train, IterableDataset) or not hasattr(train, "__len__"):
                    raise TypeError(
                        "LossTrajectoryTracker(source='probe') without `probe_dataset` draws a subset of the "
                        f"training dataset, which must be map-style with a length; got {type(train).__name__}. "
                        "Pass `probe_dataset=`."
                    )
                if len(train) == 0:
                    raise ValueError("the training dataset has 0 samples; no probe subset can be drawn")
                probe, ids = random_subset(train, self.probe_size, seed=self.probe_seed)
            else:
                if isinstance(probe, IndexedDataset):
                    probe = probe.dataset
                ids = np.arange(len(probe))  # type: ignore[arg-type]
            n = len(probe)  # type: ignore[arg-type]
            if n == 0:
                raise ValueError("the probe dataset has 0 samples; pass a non-empty `probe_dataset`")
            if self.num_samples is not None and self.num_samples != n:
                raise ValueError(f"`num_samples`={self.num_samples} but the probe dataset has {n} samples")
            self._probe = probe
            return n, ids.astype(np.int64)
        if self.num_samples is not None:
            return self.num_samples, np.arange(self.num_samples, dtype=np.int64)
        train = dataset_of(trainer.train_dataloader)
        try:
            n = len(train)  # type: ignore[arg-type]
        except TypeError:
            n = -1
        if train is None or isinstance(train, IterableDataset) or n < 0:
            raise ValueError(
                f"LossTrajectoryTracker cannot tell the number of samples: the training dataset "
                f"({type(train).__name__}) has no length. Pass `num_samples=` (one more than the largest "
                "sample index your training_step returns)."
            )
        if n == 0:
            raise ValueError("the training dataset has 0 samples; pass `num_samples=` or a non-empty dataset")
        return n, np.arange(n, dtype=np.int64)

    # -- hot path -------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._loss_buf, self._index_buf, self._correct_buf = [], [], []
        self._collecting = self.source == "step" and self.is_due(trainer)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._collecting:
            return
        if not isinstance(outputs, Mapping) or self.loss_key not in outputs or self.index_key not in outputs:
            raise RuntimeError(self._missing_outputs_message(outputs))
        loss, index = outputs[self.loss_key], outputs[self.index_key]
        if not isinstance(index, torch.Tensor):
            index = torch.as_tensor(index)
        if not isinstance(loss, torch.Tensor) or not loss.is_floating_point():
            raise TypeError(
                f"`{self.loss_key}` returned by training_step must be a floating tensor of per-sample losses "
                f"[B], got {type(loss).__name__}{'' if not isinstance(loss, torch.Tensor) else ' of dtype ' + str(loss.dtype)}"
            )
        # shape/dtype checks read tensor metadata only: no device sync
        if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise TypeError(
                f"`{self.index_key}` returned by training_step must be an integer tensor of sample indices, "
                f"got dtype {index.dtype}; return the index from `split_index(batch)` unchanged"
            )
        if loss.dim() != 1 or index.shape != loss.shape:
            raise ValueError(
                f"`{self.loss_key}` and `{self.index_key}` must both have shape [B] (one per sample); got "
                f"{tuple(loss.shape)} and {tuple(index.shape)}. Use reduction='none' and reduce extra "
                "dimensions per sample (e.g. .mean(dim=1))."
            )
        correct = outputs.get(self.correct_key) if self.correct_key is not None else None
        has = correct is not None
        if self._has_correct is None:
            self._has_correct = has
        elif has != self._has_correct:
            raise ValueError(
                f"`{self.correct_key}` was {'returned' if self._has_correct else 'missing'} at earlier steps "
                f"but is {'returned' if has else 'missing'} now; return it at every step or never"
            )
        self._loss_buf.append(loss.detach())
        self._index_buf.append(index.detach())
        if correct is not None:
            correct = torch.as_tensor(correct)
            if correct.shape != loss.shape:
                raise ValueError(
                    f"`{self.correct_key}` must have shape [B] = {tuple(loss.shape)}, got {tuple(correct.shape)}"
                )
            self._correct_buf.append(correct.detach())

    def _missing_outputs_message(self, outputs: Any) -> str:
        got = (
            f"a dict with keys {sorted(map(str, outputs))}"
            if isinstance(outputs, Mapping)
            else type(outputs).__name__
        )
        return (
            f"LossTrajectoryTracker(source='step') reads per-sample losses and sample indices from the dict "
            f"that training_step returns, but got {got}. Wrap the training set, "
            "`DataLoader(IndexedDataset(dataset), ...)`, and return them from training_step:\n\n"
            "    index, (x, y) = split_index(batch)\n"
            '    per_sample = F.cross_entropy(self(x), y, reduction="none")\n'
            f'    return {{"loss": per_sample.mean(), "{self.loss_key}": per_sample.detach(), '
            f'"{self.index_key}": index}}\n\n'
            "HINT: or use LossTrajectoryTracker(source='probe') to evaluate a probe set instead."
        )

    # -- once per epoch ---------------------------------------------------------------------------
    def on_memorisation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.is_due(trainer) or self.store is None:
            return
        if self.source == "step":
            index, loss, correct = self._take_step_buffers(pl_module)
        else:
            index, loss, correct = self._evaluate_probe(trainer, pl_module)
        self._record(trainer, pl_module, index, loss, correct)

    def _take_step_buffers(
        self, pl_module: pl.LightningModule
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        device = pl_module.device
        if self._loss_buf:
            loss = torch.cat([t.float().reshape(-1).to(device) for t in self._loss_buf])
            index = torch.cat([t.long().reshape(-1).to(device) for t in self._index_buf])
            correct = (
                torch.cat([t.reshape(-1).to(device) for t in self._correct_buf])
                if self._correct_buf
                else None
            )
        else:
            loss = torch.zeros(0, device=device)
            index = torch.zeros(0, dtype=torch.long, device=device)
            correct = None
        self._loss_buf, self._index_buf, self._correct_buf = [], [], []
        return index, loss, correct

    def _evaluate_probe(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        assert self._probe is not None
        n = len(self._probe)  # type: ignore[arg-type]
        ws, rank = world_size(trainer), int(getattr(trainer, "global_rank", 0))
        positions = np.arange(n)[rank::ws] if ws > 1 else np.arange(n)
        shard = self._probe if ws == 1 else Subset(self._probe, positions.tolist())
        loss, correct = evaluate_sample_losses(
            pl_module,
            shard,
            self.sample_loss_fn,
            batch_size=self.probe_batch_size,
            collate_fn=self.probe_collate_fn,
            trainer=trainer,
        )
        return torch.as_tensor(positions, dtype=torch.long), loss, correct

    def _record(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        index: torch.Tensor,
        loss: torch.Tensor,
        correct: torch.Tensor | None,
    ) -> None:
        assert self.store is not None
        n = self.store.num_samples
        # one gather of (index, loss, correct) triples; correct = -1 where unknown
        corr = correct.double() if correct is not None else torch.full_like(loss, -1.0, dtype=torch.float64)
        packed = torch.stack([index.double(), loss.double(), corr.to(loss.device)], dim=1).to(
            pl_module.device
        )
        gathered = gather_concat(trainer, packed).cpu()  # the one host transfer of the epoch
        all_index = gathered[:, 0].long()
        if all_index.numel():
            low, high = int(all_index.min()), int(all_index.max())
            if low < 0:
                raise ValueError(
                    f"sample indices must be >= 0, got {low} in `{self.index_key}`; return the indices of "
                    "IndexedDataset (split_index(batch)) unchanged"
                )
            if high >= n:
                raise ValueError(
                    f"sample index {high} in `{self.index_key}` is >= num_samples={n}; pass "
                    f"`num_samples=` larger than the largest index, or make sure IndexedDataset wraps the "
                    "training dataset the tracker sizes itself from"
                )
        # DistributedSampler padding repeats indices: keep each index's first record. An O(N)
        # bincount tells whether there is any duplicate; the sort-based dedup runs only then.
        counts = np.bincount(all_index.numpy(), minlength=n) if all_index.numel() else np.zeros(0)
        rows = (
            gathered[first_occurrence(all_index)] if counts.size and counts.max() > 1 else gathered
        ).numpy()
        idx = rows[:, 0].astype(np.int64)
        losses = rows[:, 1]
        finite = np.isfinite(losses)
        nonfinite = int((~finite).sum())
        column = np.full(n, np.nan, dtype=np.float64)
        column[idx] = np.where(finite, losses, np.nan)
        correct_known = bool(rows.shape[0] and (rows[:, 2] >= 0).all())
        if rows.shape[0] == 0:
            correct_known = bool(self.store.has_correct)
        correct_column = None
        if correct_known:
            correct_column = np.zeros(n, dtype=bool)
            correct_column[idx] = rows[:, 2] > 0.5
        if self.store.has_correct is not None and self.store.has_correct != correct_known:
            raise ValueError(
                f"per-sample correctness was {'recorded' if self.store.has_correct else 'absent'} at earlier epochs "
                f"but is {'present' if correct_known else 'absent'} now; return `{self.correct_key}` every epoch or never"
            )
        self.store.append(column, correct_column)
        self.recorded_epochs.append(int(trainer.current_epoch))

        stats = self.store.statistics()
        metrics = self._epoch_metrics(column, correct_column, idx, nonfinite, stats)
        if nonfinite:
            rank_zero_warn(
                f"LossTrajectoryTracker: {nonfinite} sample loss(es) were NaN/inf at epoch {trainer.current_epoch}; "
                "stored as NaN (not visited) and counted in mem/traj/nonfinite"
            )
        self.log_metrics(pl_module, {k + self._key_suffix: v for k, v in metrics.items()})
        if trainer.is_global_zero:
            self._write_summary(stats)
            self.emit(
                trainer,
                trackers.Histogram(
                    key="mem/traj/loss_histogram" + self._key_suffix,
                    values=column[np.isfinite(column)].astype(np.float32),
                    epoch=int(trainer.current_epoch),
                ),
            )

    def _epoch_metrics(
        self,
        column: np.ndarray,
        correct: np.ndarray | None,
        idx: np.ndarray,
        nonfinite: int,
        stats: TrajectoryStatistics,
    ) -> dict[str, float]:
        n = column.shape[0]
        finite = column[np.isfinite(column)]
        seen = stats.count > 0
        out: dict[str, float] = {
            "mem/traj/loss_mean": float(finite.mean()) if finite.size else float("nan"),
            "mem/traj/loss_std_mean": float(stats.std[seen].mean()) if seen.any() else float("nan"),
            "mem/traj/visited_frac": float(idx.size / n) if n else 0.0,
            "mem/traj/nonfinite": float(nonfinite),
            "mem/traj/epochs": float(self.store.num_epochs if self.store else 0),
        }
        score = memorisation_score(stats)
        out["mem/traj/score_max"] = float(np.nanmax(score)) if seen.any() else float("nan")
        if stats.forgetting_events is not None and stats.learned_epoch is not None:
            out["mem/traj/forgetting_mean"] = (
                float(stats.forgetting_events[seen].mean()) if seen.any() else 0.0
            )
            out["mem/traj/unlearned_frac"] = (
                float((stats.learned_epoch[seen] < 0).mean()) if seen.any() else 0.0
            )
            if correct is not None and idx.size:
                out["mem/traj/correct_frac"] = float(correct[idx].mean())
        else:
            unlearned = (
                stats.last[seen] > _LN2
            )  # exp(-loss) < 1/2; NaN last (non-finite) counts as learned=False
            unlearned |= np.isnan(stats.last[seen])
            out["mem/traj/unlearned_frac"] = float(unlearned.mean()) if seen.any() else 0.0
        return out

    def _write_summary(self, stats: TrajectoryStatistics | None = None) -> None:
        assert self.store is not None and self._sample_ids is not None
        if stats is None:
            stats = self.store.statistics()
        arrays: dict[str, Any] = {
            "sample_ids": self._sample_ids,
            "epochs": np.asarray(self.recorded_epochs, dtype=np.int64),
            "count": stats.count,
            "mean": stats.mean,
            "std": stats.std,
            "last": stats.last,
            "min": stats.min,
            "confidence": stats.confidence,
            "variability": stats.variability,
            "score": memorisation_score(stats),
        }
        if stats.forgetting_events is not None:
            arrays.update(
                correctness=stats.correctness,
                forgetting=stats.forgetting_events,
                learned_epoch=stats.learned_epoch,
            )
        meta = {
            "format": 1,
            "callback": "LossTrajectoryTracker",
            "source": self.source,
            "num_samples": self.store.num_samples,
            "num_epochs": self.store.num_epochs,
            "epochs": list(self.recorded_epochs),
            "dtype": self.store.dtype.name,
            "has_correct": bool(self.store.has_correct),
            "on_disk": self.store.on_disk,
            "memory_budget_bytes": self.memory_budget_bytes,
            "keys": {"loss": self.loss_key, "index": self.index_key, "correct": self.correct_key},
            "files": "epoch_XXXX.npy: column j of the [N, E] float matrix (NaN = not visited), "
            "trainer epoch = epochs[j]; correct_XXXX.npy: bool; statistics.npz: per-sample statistics",
        }
        # derived from the epoch files (written synchronously by the store): off the training loop
        self.write_in_background(_write_summary_files, self.run_dir, arrays, meta)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.store is None or self.store.num_epochs == 0 or not trainer.is_global_zero or self.top_k == 0:
            return
        stats = self.store.statistics()
        rows_idx = top_k(memorisation_score(stats), self.top_k, tiebreak=stats.variability)
        rows_idx = rows_idx[stats.count[rows_idx] > 0]
        traj = self.store.trajectories(rows_idx)
        assert self._sample_ids is not None
        rows = [
            [
                int(self._sample_ids[r]),
                float(stats.mean[r]),
                float(stats.variability[r]),
                int(stats.forgetting_events[r]) if stats.forgetting_events is not None else -1,
                [None if not np.isfinite(v) else float(v) for v in traj[i]],
            ]
            for i, r in enumerate(rows_idx)
        ]
        self.emit(
            trainer,
            trackers.Table(
                key="mem/traj/most_memorised" + self._key_suffix,
                columns=["sample_id", "score", "variability", "forgetting_events", "trajectory"],
                rows=rows,
                epoch=int(trainer.current_epoch),
                per_sample=True,
            ),
        )

    # -- results ----------------------------------------------------------------------------------
    def statistics(self) -> TrajectoryStatistics:
        """Per-sample statistics of the recorded epochs (available on every rank).

        Raises:
            RuntimeError: nothing recorded yet (before ``fit``).
        """
        if self.store is None:
            raise RuntimeError("LossTrajectoryTracker has recorded nothing yet; call trainer.fit first")
        return self.store.statistics()

    @property
    def sample_ids(self) -> np.ndarray:
        """Dataset index of each store row (identity in step mode; the probe subset's indices in probe mode)."""
        if self._sample_ids is None:
            raise RuntimeError("LossTrajectoryTracker has recorded nothing yet; call trainer.fit first")
        return self._sample_ids

    def most_memorised(self, k: int = 10) -> np.ndarray:
        """The ``k`` most memorised samples, most memorised first, as dataset indices.

        Ranked by :func:`memcallbacks.metrics.memorisation_score` (mean loss over the recorded
        epochs: samples fitted late or never, typically mislabelled or atypical ones; Pleiss et
        al. 2020), ties broken by higher variability (Swayamdipta et al. 2020). Unvisited samples
        come last.

        Args:
            k: how many (>= 0).

        Returns:
            int64 array of at most ``k`` sample indices.
        """
        stats = self.statistics()
        rows = top_k(memorisation_score(stats), k, tiebreak=stats.variability)
        return self.sample_ids[rows]

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.store is None:
            return dict(self._pending_state or {"base": self.base_state()})
        return {
            "base": self.base_state(),
            "num_samples": self.store.num_samples,
            "recorded_epochs": list(self.recorded_epochs),
            "store": self.store.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.load_base_state(state_dict.get("base", {}))
        if "store" not in state_dict:
            return
        self._pending_state = dict(state_dict)
        if self.store is not None:  # loaded after set-up: apply now
            self.store = None
