"""LossTrajectoryTracker: every sample's loss at every epoch, and the statistics built on them.

Records per-sample loss trajectories during training (docs/architecture.md, "Data flow") into a
:class:`~memcallbacks.data.store.TrajectoryStore` and logs the training-dynamics statistics of
:mod:`memcallbacks.metrics.dynamics`: Dataset Cartography's confidence and variability
(Swayamdipta et al., EMNLP 2020), forgetting events (Toneva et al., ICLR 2019), and the
memorisation scores of :func:`memcallbacks.metrics.memorisation_score`: by default the mean
loss over training (the area under the loss curve; cf. Pleiss et al., NeurIPS 2020), which
ranks mislabelled and atypical samples -- the ones a classifier has to memorise -- first; for
language models, where a memorised sequence has a *low* loss, the lowest loss a sample reached
calibrated by a per-sample reference loss (``reference=``: the probes' losses under the weights at
fit start, the peft base model or a given model, evaluated once before the first step; or given
losses, e.g. the zlib entropy of the text; Watson et al., ICLR 2022; Carlini et al., USENIX
Security 2021), or uncalibrated.

Two sources of per-sample losses:

* ``source="step"`` (default, no extra forward pass): the losses *at visit time*, read from
  the dict that ``training_step`` returns (``sample_loss``, ``sample_index`` and optionally
  ``sample_correct``). The outputs of the first steps of an epoch are checked in full; after
  that a step costs one append of the detached tensors, on their device. Once per epoch the
  callback checks their shapes, concatenates them, gathers them across ranks (one collective),
  drops the duplicates of ``DistributedSampler`` padding, and records the epoch. A mid-epoch
  checkpoint holds the partial epoch; resuming from it restores those losses and records the
  rest of the epoch on top.
* ``source="probe"``: a fixed probe set (given, or a seeded random subset of the training
  data) evaluated in eval mode every ``every_n_epochs`` with ``sample_loss_fn``; in DDP each
  rank evaluates a shard and the shards are gathered (:func:`memcallbacks.callbacks.probes.evaluate_sharded`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import Dataset, IterableDataset

from memcallbacks import loggers, rundir
from memcallbacks.callbacks._base import MemorisationCallback, state_array, state_tensor
from memcallbacks.callbacks._step_buffer import Step, StepBuffer, hashed_rows, rows_on_host
from memcallbacks.callbacks._trajectory_checks import (
    check_collate_keeps_index,
    is_model_reference,
    validate_init,
)
from memcallbacks.callbacks._trajectory_reference import (
    ProbeEvaluation,
    evaluate_reference,
    reference_label,
    reference_name,
    reference_of,
)
from memcallbacks.callbacks._trajectory_sampling import SAMPLINGS, VISITED_FRAC_MEANING, sampling_of
from memcallbacks.callbacks.membership import peft_model_of, reference_kind
from memcallbacks.callbacks.probes import (
    dataset_of,
    default_sample_loss_and_correct_fn,
    evaluate_sharded,
    probe_collate,
    random_subset,
    unwrap_loaders,
)
from memcallbacks.data.indexed import IndexedDataset
from memcallbacks.data.store import DEFAULT_MEMORY_BUDGET_BYTES, TrajectoryStore
from memcallbacks.data.streams import IndexedStream
from memcallbacks.lm.collate import check_pad_id
from memcallbacks.metrics.dynamics import (
    TrajectoryStatistics,
    check_reference,
    memorisation_score,
    top_k,
    unlearned_fraction,
)
from memcallbacks.utilities.distributed import world_size
from memcallbacks.utilities.validation import check_float_array

__all__ = ["SAMPLINGS", "LossTrajectoryTracker", "sampling_of"]


@dataclass
class _Epoch:
    """One recorded epoch: the store column, its correctness, the finite visited rows, counts, statistics."""

    column: np.ndarray
    correct: np.ndarray | None
    visited: np.ndarray
    nonfinite: int
    duplicates: int = 0
    stats: TrajectoryStatistics | None = None


def _write_in_order(
    epoch_writes: list[tuple[Any, ...]],
    folder: Path,
    arrays: dict[str, Any],
    meta: dict[str, Any],
    durable: bool,
) -> None:
    """The store's epoch files (``(save_npy, path, array)`` jobs, fsynced), then the summary derived from them."""
    for save, *args in epoch_writes:
        save(*args)
    rundir.write_trajectory_summary(folder, arrays, meta, durable=durable)


class LossTrajectoryTracker(MemorisationCallback):
    """Record every sample's loss at every epoch; log training-dynamics and memorisation statistics.

    The user-side change for ``source="step"`` (wrap the training set in
    :class:`~memcallbacks.IndexedDataset`, return three more things from ``training_step``)::

        index, (x, y) = split_index(batch)
        per_sample = F.cross_entropy(self(x), y, reduction="none")
        return {"loss": per_sample.mean(), "sample_loss": per_sample.detach(), "sample_index": index}

    Logged once per recorded epoch (identical on every rank; a tracker with ``name`` appends
    ``/<name>`` to each key). A sample is *visited* in an epoch when a finite loss arrived for it:

    ============================  =====================================================================
    key                           meaning
    ============================  =====================================================================
    ``mem/traj/loss_mean``        mean of this epoch's finite per-sample losses
    ``mem/traj/loss_std_mean``    mean over samples of each sample's loss std (ddof=0) over the epochs
    ``mem/traj/forgetting_mean``  mean forgetting events per sample (Toneva et al.); with correctness
    ``mem/traj/correct_frac``     fraction of this epoch's visited samples classified correctly
    ``mem/traj/unlearned_frac``   fraction of seen samples not learned: ``learned_epoch == -1`` with
                                  correctness, else gold-label probability ``exp(-last loss) < 0.5``
                                  (:func:`~memcallbacks.metrics.unlearned_fraction`); NaN if none seen
    ``mem/traj/visited_frac``     fraction of the ``N`` samples visited this epoch (finite loss); below 1
                                  by design when the loader samples with replacement (Opacus' Poisson
                                  sampling: about 0.63, ``meta.json["expected_visited_frac"]``)
    ``mem/traj/nonfinite``        number of samples whose loss was NaN/inf this epoch (stored as NaN,
                                  not visited)
    ``mem/traj/duplicates``       records dropped this epoch because their sample was already recorded
                                  in it (the first is kept; a warning the first time, none when the
                                  loader samples with replacement), beyond the at most
                                  ``world_size - 1`` repeats ``DistributedSampler`` pads with
    ``mem/traj/clipped``          finite losses beyond the storage dtype's range this epoch (float16:
                                  above 65504), stored clipped (a warning the first time; use
                                  ``dtype="float32"``)
    ``mem/traj/score_max``        largest memorisation score by ``score=`` (the most memorised sample's;
                                  higher = more memorised for every score): ``mean_loss`` the highest
                                  mean loss (a sample fitted late), ``min_loss``/``low_loss`` minus
                                  the lowest/last loss (<= 0; near 0 = reproduced almost exactly),
                                  ``calibrated_loss`` reference minus lowest loss (> 0: below the
                                  reference), ``loss_drop`` first minus last loss; NaN if none finite
    ``mem/traj/epochs``           number of epochs recorded so far
    ============================  =====================================================================

    Also emits a :class:`~memcallbacks.loggers.Histogram` ``mem/traj/loss_histogram`` of this
    epoch's losses, and at fit end a :class:`~memcallbacks.loggers.Table`
    ``mem/traj/most_memorised`` ranked by ``score`` (per-sample: sent only with
    ``log_per_sample=True``). The run directory (``<log_dir>/memcallbacks/trajectory``) gets
    ``epoch_XXXX.npy`` (column ``j`` of the store; ``meta.json["epochs"][j]`` is its trainer
    epoch), ``correct_XXXX.npy``, ``statistics.npz`` (per-sample statistics; ``score`` is the
    mean loss, ``first`` the first-visit loss; ``min_loss = -min``, ``low_loss = -last``,
    ``loss_drop = first - last``; with ``reference``, ``reference`` per row and ``calibrated_loss =
    reference - min``; step source: ``visits``, how many times each sample was drawn in the recorded
    columns, repeats included) and ``meta.json`` (``score_by`` names the tracker's ranking,
    ``reference`` where the reference came from, ``sampling`` how the loader draws samples,
    ``expected_visited_frac`` and ``visited_frac`` what that fraction means) at the end of every
    recorded epoch.

    Sampling with replacement: Opacus' ``DPDataLoader`` (Poisson sampling, each sample in each
    of an epoch's ``1/q`` batches with probability ``q``) and ``RandomSampler`` /
    ``WeightedRandomSampler`` with ``replacement=True`` draw some samples several times in an
    epoch and others not at all. The tracker recognises them at fit start (``meta.json
    ["sampling"]``: ``"poisson"``, ``"with_replacement"``, else ``"without_replacement"``), keeps
    the first loss of each sample per column, counts the repeats in ``mem/traj/duplicates``
    without a warning, and records every draw in ``statistics.npz["visits"]``.

    Windows (``every_n_steps=N``): instead of one column per epoch, one column per window of ``N``
    global (optimizer) steps, recorded in ``on_train_batch_end`` at each multiple of ``N`` (the
    base class's step rule), so a one-epoch run has a trajectory. Everything said above of an
    epoch holds for a window: a sample is visited in a window when a finite loss arrived for it
    during the window's steps; a window may cross an epoch end and may visit a sample more than
    once (a window longer than an epoch), then its first loss is kept and the repeats are counted
    in ``mem/traj/duplicates`` without a warning. The statistics are per column, so per window:
    ``learned_epoch`` is the window index (``steps[learned_epoch]`` its global step), forgetting
    events count correct-to-incorrect transitions between windows, confidence and variability
    are the mean and std over windows, ``mem/traj/epochs`` counts windows. The steps after the
    last multiple of ``N`` are not recorded (``floor(S / N)`` columns for ``S`` steps). The
    per-step cost is the same as under epochs (one append, no sync); a checkpoint saved inside a
    window keeps its steps and a resume records the rest of the window on top. ``statistics.npz``
    and ``meta.json`` carry ``steps`` (the global step of each column) beside ``epochs``.

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
            default: a seeded random subset of the training dataset of ``num_probes`` items.
        num_probes: size of the random probe subset.
        seed: seed of the random probe subset.
        sample_loss_fn: probe mode: ``(module, batch) -> Tensor[B]`` or ``(Tensor[B], BoolTensor[B])``;
            default per-sample cross-entropy with correctness.
        batch_size: batch size of the probe evaluation.
        collate_fn: collate function of the probe loader (default: PyTorch's; token-id rows of any
            length, e.g. tokenized ``datasets`` rows, are padded, see ``pad_id``).
        pad_id: probe mode: the pad id for token-id rows of different lengths (default: the model
            config's ``pad_token_id``; needed when it has none). Padding is never scored.
        every_n_epochs: record every n-th epoch.
        every_n_steps: record a column every this many optimizer steps instead (``trainer.global_step``;
            windows of ``every_n_steps`` global steps, so a one-epoch run has a trajectory; see
            "Windows" above). Not together with a non-default ``every_n_epochs``.
        evaluate_on_validation: refused (``True`` raises): a trajectory column is a fixed span of
            training (an epoch, or a window of ``every_n_steps`` steps) over which the step source
            buffers losses; validation runs come at uneven intervals. To follow
            ``val_check_interval=k``, pass ``every_n_steps`` equal to the optimizer steps between
            validation runs.
        dtype: ``"float16"`` (default) or ``"float32"`` storage.
        memory_budget_bytes: beyond this the store keeps epochs on disk, memory-mapped.
        num_top: rows of the most-memorised table emitted at fit end (to a W&B, TensorBoard or
            MLflow logger; not built when none is attached).
        score: default ranking of :meth:`most_memorised` and of the fit-end table:
            ``"mean_loss"`` (default; classifiers), ``"calibrated_loss"`` (language models, with
            ``reference``), ``"min_loss"`` (language models), ``"low_loss"`` or ``"loss_drop"``
            (language models, probe source); see :func:`memcallbacks.metrics.memorisation_score`.
        reference: the reference losses of ``"calibrated_loss"`` (``reference - min``; Watson et
            al., ICLR 2022, difficulty calibration). With ``source="probe"``, a model evaluated
            ONCE on the probe set in ``on_train_start``, before the first step, kept in the
            checkpoint and never recomputed on resume: ``"fit_start"`` (the weights at the start
            of ``fit``: in fine-tuning, the pre-trained model), ``"peft_base"`` (the peft model
            with its adapters disabled) or a ``torch.nn.Module`` that ``sample_loss_fn`` can run
            with the same vocabulary or classes. Or, with either source, one loss per sample in
            the units of the tracked loss, indexed like :attr:`sample_ids` (the training set's
            dataset index; the probe dataset's with ``probe_dataset=``): e.g.
            :func:`memcallbacks.metrics.zlib_entropy` of the training texts, or a reference
            model's per-sample losses computed beforehand. NaN: no reference (the sample ranks
            last). Given losses are not saved in checkpoints: pass them again when resuming.
            A model reference with ``source="step"`` is refused (it would be one extra pass over
            the whole training set).
        name: distinguishes two trackers in one Trainer: sub-folder ``trajectory_<name>`` and keys
            ``mem/traj/<metric>/<name>`` (e.g. ``mem/traj/loss_mean/probe``); ``history`` keeps the plain keys.
        run_dir: root folder instead of ``<trainer.log_dir>/memcallbacks``.
        log_per_sample: allow sending the per-sample table to third-party loggers.
        id_space: ``"dense"`` (default): the sample ids are store rows ``0..N-1`` (IndexedDataset,
            or :class:`~memcallbacks.data.streams.IndexedStream`'s running index with
            ``num_samples=``). ``"hashed"``: any ids in ``[0, 2**63)`` (``IndexedStream(...,
            id_fn=text_id...)``), given rows in order of first arrival, at most ``num_samples``
            of them (required); the id of each row is :attr:`sample_ids` (``-1``: no row yet) and
            the table is kept in the checkpoint. Step source only, no ``reference``.

    Raises:
        ValueError: unknown ``source`` or ``score``, ``loss_key="loss"``, bad sizes or dtype,
            ``score="calibrated_loss"`` without ``reference``, a ``reference`` that does not cover
            every sample (at ``fit``) or holds an infinity, a model ``reference`` with
            ``source="step"``, with another vocabulary, that cannot score the probes, or
            ``"peft_base"`` without peft adapters (before the first step); a training
            DataLoader whose ``collate_fn`` drops :class:`IndexedDataset`'s index (before the
            first step).
        TypeError: a string, float or bool where an integer is expected, and the like.

    Example:
        >>> from memcallbacks import LossTrajectoryTracker
        >>> tracker = LossTrajectoryTracker()                       # step mode
        >>> trainer = pl.Trainer(callbacks=[tracker], max_epochs=3)  # doctest: +SKIP
        >>> trainer.fit(model, DataLoader(IndexedDataset(train), batch_size=64))  # doctest: +SKIP
        >>> tracker.most_memorised(10)  # sample indices, most memorised first  # doctest: +SKIP
    """

    subdir = "trajectory"

    def __init__(
        self,
        *,
        source: str = "step",
        num_samples: int | None = None,
        loss_key: str = "sample_loss",
        index_key: str = "sample_index",
        correct_key: str | None = "sample_correct",
        probe_dataset: Dataset[Any] | None = None,
        num_probes: int = 1024,
        seed: int = 0,
        sample_loss_fn: Callable[[Any, Any], Any] | None = None,
        batch_size: int = 256,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        pad_id: int | None = None,
        every_n_epochs: int = 1,
        every_n_steps: int | None = None,
        evaluate_on_validation: bool = False,
        dtype: Any = "float16",
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
        num_top: int = 20,
        score: str = "mean_loss",
        reference: Any = None,
        name: str | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        log_per_sample: bool = False,
        id_space: str = "dense",
    ) -> None:
        if evaluate_on_validation is not False:
            raise ValueError(
                f"LossTrajectoryTracker does not take evaluate_on_validation (got {evaluate_on_validation!r}): its "
                "columns are fixed spans of training (epochs, or windows of every_n_steps steps); pass "
                "every_n_steps equal to the optimizer steps between your validation runs instead"
            )
        super().__init__(
            every_n_epochs=every_n_epochs,
            every_n_steps=every_n_steps,
            run_dir=run_dir,
            log_per_sample=log_per_sample,
            name=name,
        )
        validate_init(
            source=source, num_samples=num_samples, loss_key=loss_key, index_key=index_key,
            correct_key=correct_key, probe_dataset=probe_dataset, num_probes=num_probes,
            seed=seed, sample_loss_fn=sample_loss_fn, batch_size=batch_size,
            collate_fn=collate_fn, memory_budget_bytes=memory_budget_bytes, num_top=num_top,
            score=score, reference=reference, id_space=id_space,
        )  # fmt: skip
        self.id_space, self.source, self.num_samples, self.score = id_space, source, num_samples, score
        # given losses (checked here), or a model to evaluate once at fit start
        self.reference: np.ndarray | str | torch.nn.Module | None = reference
        if reference is not None and not is_model_reference(reference):
            self.reference = check_float_array(reference, "reference", allow_nan=True)
        self.loss_key, self.index_key, self.correct_key = loss_key, index_key, correct_key
        self.probe_dataset, self.num_probes, self.seed = probe_dataset, int(num_probes), int(seed)
        self.sample_loss_fn = sample_loss_fn or default_sample_loss_and_correct_fn
        self.batch_size, self.collate_fn, self.pad_id = int(batch_size), collate_fn, check_pad_id(pad_id)
        self.dtype = TrajectoryStore(0, dtype=dtype).dtype.name
        self.memory_budget_bytes, self.num_top = int(memory_budget_bytes), int(num_top)
        self._init_state()

    def _init_state(self) -> None:
        """What the tracker records: the store, the epoch and step of each column, the step buffers."""
        self.store: TrajectoryStore | None = None
        self.recorded_epochs: list[int] = []
        """The trainer epoch of each store column."""
        self.recorded_steps: list[int] = []
        """The global step at which each store column was recorded (-1: from a checkpoint without steps)."""
        self._sample_ids: np.ndarray | None = None
        self._probe: Dataset[Any] | None = None
        self._pending_state: dict[str, Any] | None = None
        self._partial: dict[str, Any] | None = None  # a mid-epoch checkpoint's buffered steps
        self._collecting = False
        self._collecting_epoch = -1
        self._buffer = StepBuffer(
            self.loss_key, self.index_key, self.correct_key
        )  # step source: this column's steps
        self._row_of: dict[int, int] = {}  # id_space="hashed": sample id -> store row, in order of arrival
        # the reference loss of each store row, set with the samples
        self._row_reference: np.ndarray | None = None
        # reference="fit_start"/"peft_base"/module: the probes' losses evaluated once at fit start (kept in checkpoints)
        self._fit_reference: np.ndarray | None = None
        # step source: how many times each row's loss arrived (every draw, repeats included)
        self._visits: np.ndarray | None = None
        self._sampling: str | None = None  # step source: one of SAMPLINGS
        self._expected_visited_frac: float | None = None
        # the store's epoch-file writes of this evaluation, run with its summary on the writer thread
        self._epoch_writes: list[tuple[Any, ...]] = []

    @property
    def _steps(self) -> list[Step]:
        """The buffered steps of the column being collected (the step buffer's list)."""
        return self._buffer.steps

    # -- identity (resume contract) ---------------------------------------------------------------
    def _state_key_args(self) -> dict[str, Any]:
        return {"name": self.name}

    def _measured_args(self) -> dict[str, Any]:
        measured: dict[str, Any] = {
            "source": self.source,
            "num_samples": self.num_samples,
            "dtype": self.dtype,
        }
        if self.id_space != "dense":
            measured["id_space"] = self.id_space
        if self.source == "probe" and self.probe_dataset is None:
            measured.update(seed=self.seed, num_probes=self.num_probes)
        if is_model_reference(self.reference):  # what the fit-start reference losses in the checkpoint are
            measured["reference"] = reference_kind(self.reference)  # type: ignore[arg-type]
        return measured

    # -- set-up ---------------------------------------------------------------------------------
    def _collects(self, trainer: pl.Trainer) -> bool:
        """Whether the steps of this epoch are buffered: step source, and a window or a due epoch."""
        return self.source == "step" and (self.every_n_steps is not None or self.is_due(trainer))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)  # warns once when every_n_steps exceeds the run
        # on a mid-epoch restart Lightning does not call on_train_epoch_start: decide here too
        self._collecting = self._collects(trainer)
        self._collecting_epoch = trainer.current_epoch
        self._buffer.checked = 0
        if self.source == "step":
            self._check_training_loader(trainer)
        if self.store is not None and self._pending_state is None:
            return  # a second fit() on the same tracker continues its trajectories
        n, ids = self._resolve_samples(trainer)
        if self._pending_state is not None and self._pending_state.get("num_samples") not in (None, n):
            raise ValueError(
                f"the checkpoint's LossTrajectoryTracker recorded {self._pending_state['num_samples']} samples, "
                f"this run has {n}; resume with the same dataset (or num_samples)"
            )
        self._sample_ids = ids
        self._row_of = {}
        self._row_reference = self._resolve_reference(
            trainer, pl_module, ids, n, resuming=self._pending_state is not None
        )
        zero = trainer.is_global_zero
        self.store = TrajectoryStore(
            n,
            directory=self.run_dir if zero else None,
            dtype=self.dtype,
            memory_budget_bytes=self.memory_budget_bytes,
            keep_epochs=zero,
        )
        self._visits = np.zeros(n, dtype=np.int64) if self.source == "step" else None
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self.store.load_state_dict(state.get("store", {}))
            self._load_visits(state.get("visits"), n)
            self.recorded_epochs = [int(e) for e in state.get("recorded_epochs", [])][: self.store.num_epochs]
            steps = state.get("recorded_steps", [-1] * len(self.recorded_epochs))
            self.recorded_steps = [int(s) for s in steps][: self.store.num_epochs]
            self._load_id_table(state.get("id_table"))
            self._restore_partial_epoch(trainer)
            if zero:
                self._write_summary()
        elif zero:
            removed = self.store.discard_files_from(0)
            if removed:
                rank_zero_warn(
                    f"LossTrajectoryTracker: removed {removed} epoch file(s) of an earlier run from {self.run_dir}; "
                    "resume with `ckpt_path=` to continue a run instead"
                )

    def _load_visits(self, visits: Any, n: int) -> None:
        """Restore the per-sample draw counts; a checkpoint without them leaves them unknown (not written)."""
        if self._visits is None:
            return
        restored = None if visits is None else torch.as_tensor(visits).reshape(-1).numpy().astype(np.int64)
        self._visits = restored if restored is not None and restored.shape == (n,) else None

    def _check_training_loader(self, trainer: pl.Trainer) -> None:
        """How the training DataLoader samples (Poisson, with replacement), said once per fit; what it implies."""
        found = list(unwrap_loaders(trainer.train_dataloader))
        self._buffer.train_indexed = bool(found) and isinstance(found[0].dataset, IndexedDataset)
        if len(found) == 1 and self._buffer.train_indexed:
            check_collate_keeps_index(found[0])
        self._sampling, self._expected_visited_frac = sampling_of(trainer.train_dataloader)
        if self._sampling == "without_replacement":
            return
        expected = self._expected_visited_frac
        share = "" if expected is None else f" (here about {expected:.0%})"
        rank_zero_info(
            f"LossTrajectoryTracker: the training DataLoader samples {self._sampling.replace('_', ' ')}"
            f"{' (Opacus)' if self._sampling == 'poisson' else ''}: an epoch visits each sample 0, 1 or more "
            f"times, so mem/traj/visited_frac is below 1{share} and mem/traj/duplicates counts the repeated "
            "draws (the first loss of the epoch is kept, no warning); statistics.npz['visits'] counts every "
            "draw of each sample"
        )

    def _load_id_table(self, table: Any) -> None:
        """Restore the rows of ``id_space='hashed'`` from a checkpoint's ``id_table``."""
        if table is None or self.id_space != "hashed":
            return
        assert self._sample_ids is not None
        ids = [int(i) for i in torch.as_tensor(table).reshape(-1).tolist()]
        if len(ids) > self._sample_ids.shape[0]:
            raise ValueError(
                f"the checkpoint's LossTrajectoryTracker kept {len(ids)} sample ids, more than num_samples="
                f"{self._sample_ids.shape[0]}; resume with the same `num_samples=`"
            )
        self._row_of = {sample_id: row for row, sample_id in enumerate(ids)}
        self._sample_ids[: len(ids)] = ids

    def _restore_partial_epoch(self, trainer: pl.Trainer) -> None:
        """Put the steps a mid-epoch checkpoint held back in the buffer; the rest of the epoch adds to them.

        Under ``every_n_steps`` the buffer is the open window (it started after global step
        ``last_step_done``), restored whatever the epoch. Lightning writes rank 0's callback state, so
        under DDP the restored steps are rank 0's share.
        """
        partial, self._partial = self._partial, None
        if partial is None or not self._collecting:
            return
        if self.every_n_steps is not None:
            if int(partial.get("window", -2)) != self.last_step_done:
                return
        elif (
            int(partial.get("epoch", -1)) != trainer.current_epoch
            or self.last_epoch_done >= trainer.current_epoch
        ):
            return
        if (
            not trainer.is_global_zero
        ):  # the checkpoint holds rank 0's steps only; each rank would restore them
            return
        loss, index = partial["loss"], partial["index"]
        self._buffer.steps = [(loss, index, partial.get("correct"))]
        if partial.get("correct") is not None or self._buffer.has_correct is None:
            self._buffer.has_correct = partial.get("correct") is not None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and isinstance(self.reference, str) and self.reference == "peft_base":
            peft_model_of(pl_module, type(self).__name__)  # no adapters: a clear error before training

    def _resolve_reference(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, ids: np.ndarray, n: int, *, resuming: bool
    ) -> np.ndarray | None:
        """The reference loss of each store row: given, or (a model reference) evaluated once at fit start.

        The fit-start losses are kept in the checkpoint and never recomputed: a resumed run whose
        checkpoint lacks them raises rather than take the resumed weights as the reference.
        """
        if not is_model_reference(self.reference):
            if self.source == "probe":
                assert self._probe is not None
                self._probe_evaluation().check_scores(trainer, pl_module, self._probe)
            return reference_of(self.reference, ids, n, source=self.source)
        if self._fit_reference is None:
            if resuming:
                raise ValueError(
                    f"LossTrajectoryTracker(reference={reference_name(self.reference)}): the checkpoint holds no "
                    "reference losses evaluated at fit start (it was written without a model reference), and "
                    "evaluating them now would take the resumed weights as the reference; resume without "
                    "this `reference=`, or start a new run (no `ckpt_path`)"
                )
            assert self._probe is not None
            assert isinstance(self.reference, (str, torch.nn.Module))
            self._fit_reference = evaluate_reference(
                trainer,
                pl_module,
                self.reference,
                self._probe,
                self._probe_evaluation(),
                owner=type(self).__name__,
            )
        if self._fit_reference.shape != (n,):
            raise ValueError(
                f"the checkpoint's LossTrajectoryTracker reference holds {self._fit_reference.shape[0]} losses, "
                f"this run tracks {n} probes; resume with the same probe set"
            )
        return check_reference(self._fit_reference.astype(np.float64), n)

    def _probe_evaluation(self) -> ProbeEvaluation:
        return ProbeEvaluation(self.sample_loss_fn, self.batch_size, self.collate_fn, self.pad_id)

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
                probe, ids = random_subset(train, self.num_probes, seed=self.seed)
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
            # token-id rows: a missing pad id fails here, before the first step
            probe_collate(probe, self.collate_fn, pad_id=self.pad_id, module=trainer.lightning_module,
                          owner="LossTrajectoryTracker(source='probe')")  # fmt: skip
            return n, ids.astype(np.int64)
        train = dataset_of(trainer.train_dataloader)
        self._check_stream(train)
        if self.num_samples is not None:
            if self.id_space == "hashed":
                return self.num_samples, np.full(self.num_samples, -1, dtype=np.int64)
            return self.num_samples, np.arange(self.num_samples, dtype=np.int64)
        try:
            n = len(train)  # type: ignore[arg-type]
        except TypeError:
            n = -1
        if train is None or isinstance(train, IterableDataset) or n < 0:
            raise ValueError(
                f"LossTrajectoryTracker cannot tell the number of samples: the training dataset "
                f"({type(train).__name__}) has no length. Pass `num_samples=` (one more than the largest "
                "sample index your training_step returns); for a stream, give its items ids with "
                "`IndexedStream(stream)` (running index: num_samples = the items the run visits) or "
                "`IndexedStream(stream, id_fn=...)` with `id_space='hashed'`."
            )
        if n == 0:
            raise ValueError("the training dataset has 0 samples; pass `num_samples=` or a non-empty dataset")
        return n, np.arange(n, dtype=np.int64)

    def _check_stream(self, train: Any) -> None:
        """A stream's ids must suit ``id_space``: refuse before training, naming the fix."""
        if isinstance(train, IndexedStream) and train.id_fn is not None and self.id_space == "dense":
            raise ValueError(
                "LossTrajectoryTracker: the training stream is an IndexedStream with `id_fn`, whose ids are "
                "hashes, not row numbers; pass `LossTrajectoryTracker(id_space='hashed', num_samples=...)` "
                "(num_samples: how many distinct items to keep rows for), or drop `id_fn` for the running index"
            )

    # -- hot path -------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_steps is None:  # a window of steps goes on across the epoch end
            self._buffer.steps = []
        self._buffer.checked, self._partial = 0, None
        self._collecting = self._collects(trainer)
        self._collecting_epoch = trainer.current_epoch

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._collecting:
            self._buffer.collect(outputs, batch)
        if self.every_n_steps is not None:  # the base: one integer comparison unless a window closes
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    # -- the evaluation cycle (see MemorisationCallback) -------------------------------------------
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> _Epoch | None:
        """Record this epoch's column (gathered across ranks) in the store; ``None`` before set-up."""
        if self.store is None:
            return None
        recorded = self.store.has_correct
        if self.source == "step":
            index, loss, correct = self._buffer.take(pl_module.device)
            rows = rows_on_host(
                trainer, pl_module.device, index, loss, correct, gathered=False, correct_recorded=recorded
            )
        else:
            index, loss, correct = self._evaluate_probe(trainer, pl_module)
            rows = rows_on_host(
                trainer, pl_module.device, index, loss, correct, gathered=True, correct_recorded=recorded
            )
        idx, losses, corr = rows
        # id_space="hashed": sample ids -> store rows, new ids taking the next free rows
        if self.id_space == "hashed" and idx.size:
            assert self._sample_ids is not None
            idx = hashed_rows(idx, self._row_of, self._sample_ids, index_key=self.index_key)
        self._check_indices(idx)
        idx, losses, corr, unexpected = self._first_visits(trainer, idx, losses, corr)
        epoch = self._column(idx, losses, corr)
        epoch.duplicates = unexpected
        self.store.append(epoch.column, epoch.correct, write=lambda *job: self._epoch_writes.append(job))
        self.recorded_epochs.append(int(trainer.current_epoch))
        self.recorded_steps.append(int(trainer.global_step))
        if epoch.nonfinite:
            rank_zero_warn(
                f"LossTrajectoryTracker: {epoch.nonfinite} sample loss(es) were NaN/inf at epoch "
                f"{trainer.current_epoch}; stored as NaN (not visited) and counted in mem/traj/nonfinite"
            )
        epoch.stats = self.store.statistics()
        return epoch

    def metrics(self, result: _Epoch) -> dict[str, float]:
        """This epoch's scalars, every key spelled out (a named tracker logs them with ``/<name>``)."""
        assert self.store is not None
        assert result.stats is not None
        column, correct, visited, stats = result.column, result.correct, result.visited, result.stats
        n = column.shape[0]
        seen = stats.count > 0
        nan = float("nan")
        out: dict[str, float] = {
            "mem/traj/loss_mean": float(column[visited].mean()) if visited.size else nan,
            "mem/traj/loss_std_mean": float(stats.std[seen].mean()) if seen.any() else nan,
            "mem/traj/unlearned_frac": unlearned_fraction(stats),
            "mem/traj/visited_frac": float(visited.size / n) if n else nan,
            "mem/traj/nonfinite": float(result.nonfinite),
            "mem/traj/duplicates": float(result.duplicates),
            "mem/traj/clipped": float(self.store.clipped_last_epoch),
            "mem/traj/score_max": self._score_max(stats),
            "mem/traj/epochs": float(self.store.num_epochs),
        }
        if stats.forgetting_events is not None:
            out["mem/traj/forgetting_mean"] = (
                float(stats.forgetting_events[seen].mean()) if seen.any() else nan
            )
            if correct is not None and visited.size:
                out["mem/traj/correct_frac"] = float(correct[visited].mean())
        return out

    def _score_max(self, stats: TrajectoryStatistics) -> float:
        """The largest memorisation score by ``score=`` (higher = more memorised); NaN when none is finite."""
        score = memorisation_score(stats, by=self.score, reference=self._row_reference)
        finite = score[np.isfinite(score)]
        return float(finite.max()) if finite.size else float("nan")

    def write_files(self, result: _Epoch) -> None:
        """``statistics.npz`` and ``trajectory.json`` (the epoch files are written by the store)."""
        self._write_summary(result.stats, durable=False)  # derived from the epoch files; synced at fit end

    def records(self, result: _Epoch) -> list[loggers.Record]:
        """A histogram of this epoch's finite losses."""
        values = result.column[result.visited].astype(np.float32)
        return [loggers.Histogram(key="mem/traj/loss_histogram", values=values, epoch=self.last_epoch_done)]

    def _evaluate_probe(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        assert self._probe is not None
        loss, correct = evaluate_sharded(
            trainer,
            pl_module,
            self._probe,
            self.sample_loss_fn,
            batch_size=self.batch_size,
            collate_fn=self.collate_fn,
            pad_id=self.pad_id,
        )
        return torch.arange(loss.shape[0]), loss, correct

    def _check_indices(self, idx: np.ndarray) -> None:
        assert self.store is not None
        if not idx.size:
            return
        low, high = int(idx.min()), int(idx.max())
        if low < 0:
            raise ValueError(
                f"sample indices must be >= 0, got {low} in `{self.index_key}`; return the indices of "
                "IndexedDataset (split_index(batch)) unchanged"
            )
        if high >= self.store.num_samples:
            raise ValueError(
                f"sample index {high} in `{self.index_key}` is >= num_samples={self.store.num_samples}; pass "
                f"`num_samples=` larger than the largest index, or make sure IndexedDataset wraps the "
                "training dataset the tracker sizes itself from"
            )

    def _first_visits(
        self, trainer: pl.Trainer, idx: np.ndarray, losses: np.ndarray, corr: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
        """Each index keeps its first record of the epoch; returns the rows and the unexpected repeats."""
        assert self.store is not None
        n = self.store.num_samples
        # an O(N) bincount tells whether any index repeats, and counts every draw of each sample
        counts = np.bincount(idx, minlength=n) if idx.size else None
        duplicates = int(idx.size - np.count_nonzero(counts)) if counts is not None else 0
        if self._visits is not None and counts is not None:
            self._visits += counts
        if duplicates:
            _, first = np.unique(idx, return_index=True)
            first.sort()
            idx, losses = idx[first], losses[first]
            corr = None if corr is None else corr[first]
        unexpected = max(duplicates - (world_size(trainer) - 1), 0)  # DistributedSampler pads <= ws - 1
        # no warning where repeats are expected: a window may span more than one pass; a sampler with replacement
        if unexpected and self.every_n_steps is None and self._sampling in (None, "without_replacement"):
            self.warn_once(
                "duplicates",
                f"LossTrajectoryTracker: {unexpected} sample index(es) arrived more than once in epoch "
                f"{trainer.current_epoch}; the first loss of each is kept (counted in mem/traj/duplicates). "
                "A sampler that repeats samples, or a mid-epoch resume that restarts the DataLoader, does this",
            )
        return idx, losses, corr, unexpected

    def _column(self, idx: np.ndarray, losses: np.ndarray, corr: np.ndarray | None) -> _Epoch:
        """This epoch's store column (NaN = not visited or non-finite) and correctness column."""
        assert self.store is not None
        n = self.store.num_samples
        finite = np.isfinite(losses)
        column = np.full(n, np.nan, dtype=np.float64)
        column[idx] = np.where(finite, losses, np.nan)
        correct_known = corr is not None if idx.size else bool(self.store.has_correct)
        correct_column = None
        if correct_known:
            correct_column = np.zeros(n, dtype=bool)
            if corr is not None:
                correct_column[idx] = corr
        if self.store.has_correct is not None and self.store.has_correct != correct_known:
            raise ValueError(
                f"per-sample correctness was {'recorded' if self.store.has_correct else 'absent'} at earlier "
                f"epochs but is {'present' if correct_known else 'absent'} now; return `{self.correct_key}` "
                "every epoch or never"
            )
        nonfinite = int(idx.size - np.count_nonzero(finite))
        return _Epoch(column=column, correct=correct_column, visited=idx[finite], nonfinite=nonfinite)

    def _write_summary(self, stats: TrajectoryStatistics | None = None, *, durable: bool = True) -> None:
        assert self.store is not None
        assert self._sample_ids is not None
        if stats is None:
            stats = self.store.statistics()
        arrays: dict[str, Any] = {
            "sample_ids": self._sample_ids,
            "epochs": np.asarray(self.recorded_epochs, dtype=np.int64),
            "steps": np.asarray(self.recorded_steps, dtype=np.int64),
            "count": stats.count,
            "mean": stats.mean,
            "std": stats.std,
            "last": stats.last,
            "min": stats.min,
            "confidence": stats.confidence,
            "variability": stats.variability,
            "score": memorisation_score(stats),
        }
        if stats.first is not None:  # loss_drop = first - last, low_loss = -last
            arrays["first"] = stats.first
        if self._row_reference is not None:  # calibrated_loss = reference - min
            arrays["reference"] = self._row_reference
        if self._visits is not None:  # every draw of each sample over the recorded columns, repeats included
            arrays["visits"] = self._visits.copy()
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
            "steps": list(self.recorded_steps),
            "schedule": self.schedule,
            "dtype": self.store.dtype.name,
            "has_correct": bool(self.store.has_correct),
            "on_disk": self.store.on_disk,
            "memory_budget_bytes": self.memory_budget_bytes,
            "score_by": self.score,
            "reference": reference_label(self.reference),
            "sampling": self._sampling,
            "expected_visited_frac": self._expected_visited_frac,
            "visited_frac": VISITED_FRAC_MEANING.get(self._sampling or ""),
            "clipped_total": self.store.clipped_total,
            "keys": {"loss": self.loss_key, "index": self.index_key, "correct": self.correct_key},
            "files": "epoch_XXXX.npy: column j of the [N, E] float matrix (NaN = not visited), "
            "trainer epoch = epochs[j]; correct_XXXX.npy: bool; statistics.npz: per-sample statistics "
            "(score = mean loss; first = first-visit loss; min_loss = -min, low_loss = -last, "
            "loss_drop = first - last, calibrated_loss = reference - min; reference: the reference loss per row, "
            "see `reference`; visits: how many times each sample was drawn in the recorded columns)",
        }
        # the epoch files, then the summary derived from them, in that order, off the training loop
        jobs, self._epoch_writes = self._epoch_writes, []
        self.write_in_background(_write_in_order, jobs, self.run_dir, arrays, meta, durable)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.store is None or self.store.num_epochs == 0 or not trainer.is_global_zero:
            return
        # the epoch-end summaries were replaced without waiting for the disk: make the last one durable
        self.write_in_background(rundir.sync_trajectory_summary, self.run_dir)
        if self.num_top == 0 or not loggers.takes_records(trainer):  # the table goes to loggers only
            return
        stats = self.store.statistics()
        score = memorisation_score(stats, by=self.score, reference=self._row_reference)
        rows_idx = top_k(score, self.num_top, tiebreak=stats.variability)
        rows_idx = rows_idx[stats.count[rows_idx] > 0]
        traj = self.store.trajectories(rows_idx)
        assert self._sample_ids is not None
        rows = [
            [
                int(self._sample_ids[r]),
                float(score[r]),
                float(stats.variability[r]),
                int(stats.forgetting_events[r]) if stats.forgetting_events is not None else -1,
                [None if not np.isfinite(v) else float(v) for v in traj[i]],
            ]
            for i, r in enumerate(rows_idx)
        ]
        self.emit(
            trainer,
            loggers.Table(
                key="mem/traj/most_memorised",
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
        """Sample id of each store row.

        Identity in step mode (``id_space="hashed"``: the hashed id, ``-1`` for a row not yet
        given); the probe subset's dataset indices in probe mode.
        """
        if self._sample_ids is None:
            raise RuntimeError("LossTrajectoryTracker has recorded nothing yet; call trainer.fit first")
        return self._sample_ids

    def most_memorised(self, k: int = 10, *, by: str | None = None) -> np.ndarray:
        """The ``k`` most memorised samples, most memorised first, as dataset indices.

        Ranked by :func:`memcallbacks.metrics.memorisation_score` with ``by`` (default: the
        tracker's ``score``), ties broken by higher variability (Swayamdipta et al. 2020);
        unvisited samples come last.

        * ``"mean_loss"`` (the default ``score``; classifiers): mean loss over the recorded epochs,
          samples fitted late or never, typically mislabelled or atypical ones (Pleiss et al. 2020).
        * ``"calibrated_loss"`` (language models; needs the tracker's ``reference``): the reference
          loss minus the lowest loss reached, the difficulty-calibrated loss of Watson et al. 2022
          (with the zlib reference, Carlini et al. 2021): memorised text, not merely easy text.
        * ``"min_loss"`` (language models): minus the lowest loss reached. A memorised sequence has
          a *low* loss: canaries and other text copied many times end far below ordinary text.
        * ``"low_loss"``: minus the last loss (the model as it is now).
        * ``"loss_drop"``: first-visit loss minus last loss, a calibrated loss (Watson et al.
          2022); meant for ``source="probe"``, whose first visit is one evaluation of every sample.

        Args:
            k: how many (>= 0).
            by: ``"mean_loss"``, ``"calibrated_loss"``, ``"min_loss"``, ``"low_loss"`` or
                ``"loss_drop"``; ``None`` uses ``score``.

        Returns:
            int64 array of at most ``k`` sample indices.

        Raises:
            ValueError: ``by="calibrated_loss"`` on a tracker made without ``reference``.
        """
        stats = self.statistics()
        rows = top_k(
            memorisation_score(stats, by=self.score if by is None else by, reference=self._row_reference),
            k,
            tiebreak=stats.variability,
        )
        return self.sample_ids[rows]

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.store is None:
            return dict(self._pending_state or {"base": self.base_state()})
        state: dict[str, Any] = {
            "base": self.base_state(),
            "num_samples": self.store.num_samples,
            "recorded_epochs": list(self.recorded_epochs),
            "recorded_steps": list(self.recorded_steps),
            "store": self.store.state_dict(),
        }
        if self.id_space == "hashed":  # the dense id table: sample id of each assigned row
            state["id_table"] = torch.tensor(list(self._row_of), dtype=torch.int64)
        if self._fit_reference is not None:  # evaluated once at fit start: never recomputed on resume
            state["fit_reference"] = state_tensor(self._fit_reference)
        if self._visits is not None:
            state["visits"] = state_tensor(self._visits.copy())  # a copy: the counts grow in place
        if (
            self._collecting and self._buffer.steps
        ):  # a mid-epoch checkpoint keeps the partial epoch (or window)
            index, loss, correct = self._buffer.copy_to_cpu()
            state["partial"] = {"epoch": int(self._collecting_epoch), "index": index, "loss": loss}
            if self.every_n_steps is not None:  # the window opened after this evaluated step
                state["partial"]["window"] = self.last_step_done
            if correct is not None:
                state["partial"]["correct"] = correct
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.load_base_state(state_dict.get("base", {}))
        if "store" not in state_dict:
            return
        self._fit_reference = state_array(state_dict, "fit_reference", np.float32)
        self._pending_state = dict(state_dict)
        partial = state_dict.get("partial")
        self._partial = dict(partial) if isinstance(partial, Mapping) else None
        if self.store is not None:  # loaded after set-up: apply now
            self.store = None
