"""The step source's buffer of per-step losses, indices and correctness, with their checks.

:class:`StepBuffer` keeps what :class:`~memcallbacks.callbacks.trajectory.LossTrajectoryTracker`
reads from each ``training_step`` output: the outputs of the first steps of an epoch are checked
in full, later ones cost one append of the detached tensors on their device; :meth:`StepBuffer.take`
checks and concatenates them once per column.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from memcallbacks.callbacks._trajectory_checks import missing_outputs_message
from memcallbacks.utilities.distributed import gather_concat, world_size

__all__ = ["CHECKED_STEPS", "Step", "StepBuffer", "hashed_rows", "rows_on_host"]

# the outputs of this many steps per epoch are checked in full; later steps cost one append
CHECKED_STEPS = 2

Step = tuple[Any, Any, Any]  # (sample losses [B], sample indices [B], correctness [B] or None)


class StepBuffer:
    """The buffered outputs of the steps of one column (an epoch, or a window of steps).

    Args:
        loss_key: key of the per-sample losses in ``training_step``'s dict.
        index_key: key of the sample indices.
        correct_key: key of the optional per-sample correctness, or ``None``.
    """

    def __init__(self, loss_key: str, index_key: str, correct_key: str | None) -> None:
        self.loss_key, self.index_key, self.correct_key = loss_key, index_key, correct_key
        self.steps: list[Step] = []
        self.checked = 0  # steps of this epoch checked in full
        self.has_correct: bool | None = None  # whether the steps return correctness (None: not known yet)
        self.train_indexed = False  # the training DataLoader's dataset is an IndexedDataset (for the message)

    def collect(self, outputs: Any, batch: Any) -> None:
        """Buffer one step's per-sample losses and indices (on their device, no sync)."""
        if self.checked < CHECKED_STEPS:  # the first steps of an epoch: every check
            self.checked += 1
            self.steps.append(self.checked_outputs(outputs, batch))
            return
        try:  # later steps: one append (shapes are checked at epoch end, metadata only)
            loss = outputs[self.loss_key]
            self.steps.append(
                (
                    # detach (about 1 us) only what holds a graph: the documented `.detach()`ed losses pass as they are
                    loss.detach() if loss.requires_grad else loss,
                    outputs[self.index_key],
                    outputs.get(self.correct_key) if self.has_correct else None,
                )
            )
        except (TypeError, KeyError, AttributeError, IndexError):
            self.steps.append(self.checked_outputs(outputs, batch))  # raises the clear error

    def checked_outputs(self, outputs: Any, batch: Any = None) -> Step:
        """One step's outputs checked in full: the keys, the correctness rule, the shapes and dtypes."""
        if not isinstance(outputs, Mapping) or self.loss_key not in outputs or self.index_key not in outputs:
            raise RuntimeError(
                missing_outputs_message(
                    outputs,
                    batch,
                    loss_key=self.loss_key,
                    index_key=self.index_key,
                    train_indexed=self.train_indexed,
                )
            )
        loss = outputs[self.loss_key]
        correct = outputs.get(self.correct_key) if self.correct_key is not None else None
        has = correct is not None
        if self.has_correct is None:
            self.has_correct = has
        elif has != self.has_correct:
            self.raise_correct_changed(has)
        step = (loss, self.index_tensor(outputs[self.index_key]), correct)
        self.check_step(step)
        return (loss.detach(), step[1], None if correct is None else torch.as_tensor(correct))

    def index_tensor(self, index: Any) -> torch.Tensor:
        """The sample indices as a tensor; raises naming ``index_key`` when they are not indices."""
        if isinstance(index, torch.Tensor):
            return index
        if index is None:
            raise TypeError(
                f"`{self.index_key}` returned by training_step is None; return the sample indices of "
                "IndexedDataset unchanged: `index, batch = split_index(batch)` and "
                f"`return {{..., '{self.index_key}': index}}`"
            )
        try:
            return torch.as_tensor(index)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(
                f"`{self.index_key}` returned by training_step must be an integer tensor of sample indices [B], "
                f"got {type(index).__name__}; return the index from `split_index(batch)` unchanged"
            ) from e

    def raise_correct_changed(self, has: bool) -> None:
        """Raise: correctness was returned at earlier steps and not now, or the reverse."""
        raise ValueError(
            f"`{self.correct_key}` was {'returned' if self.has_correct else 'missing'} at earlier steps "
            f"but is {'returned' if has else 'missing'} now; return it at every step or never"
        )

    def check_step(self, step: Step) -> None:
        """Metadata-only checks of one step's outputs (no device sync)."""
        loss, index, correct = step
        if not isinstance(loss, torch.Tensor) or not loss.is_floating_point():
            raise TypeError(
                f"`{self.loss_key}` returned by training_step must be a floating tensor of per-sample losses "
                f"[B], got {type(loss).__name__}"
                f"{'' if not isinstance(loss, torch.Tensor) else ' of dtype ' + str(loss.dtype)}"
            )
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
        if correct is not None and tuple(torch.as_tensor(correct).shape) != tuple(loss.shape):
            raise ValueError(
                f"`{self.correct_key}` must have shape [B] = {tuple(loss.shape)}, "
                f"got {tuple(torch.as_tensor(correct).shape)}"
            )

    def take(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Empty the buffer: ``(indices, losses, correct or None)`` of its steps, concatenated on ``device``.

        Checks each step's shapes (metadata only: a step like the one before it is not checked again).
        """
        steps, self.steps = self.steps, []
        if not steps:
            return torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, device=device), None
        checked: list[Step] = []
        last: tuple[Any, ...] | None = None
        for loss, index, correct in steps:
            index = self.index_tensor(index)
            if (correct is not None) != bool(self.has_correct):
                self.raise_correct_changed(correct is not None)
            # check_step reads only these: a step like the one checked before it passes as that one did
            shape = (
                correct.shape if isinstance(correct, torch.Tensor) else None if correct is None else object()
            )
            key: tuple[Any, ...] = (type(loss), getattr(loss, "dtype", None), getattr(loss, "shape", None))
            key += (index.dtype, index.shape, type(correct), shape)
            if key != last:
                self.check_step((loss, index, correct))
                last = key
            checked.append((loss, index, correct))
        loss = self.cat_on(device, [s[0] for s in checked]).float()
        index = self.cat_on(device, [s[1] for s in checked]).long()
        correct = None
        if self.has_correct:
            correct = self.cat_on(device, [torch.as_tensor(s[2]) for s in checked]).bool()
        return index, loss, correct

    @staticmethod
    def cat_on(device: torch.device, tensors: list[torch.Tensor]) -> torch.Tensor:
        """``torch.cat`` of ``tensors`` on ``device``: one move of the result when they share a device
        (a ``.to`` per step costs about 1.4 us each), one move per tensor when they do not (a restored
        partial epoch sits on the CPU)."""
        try:
            return torch.cat(tensors).to(device, non_blocking=True)
        except RuntimeError:  # tensors on different devices
            return torch.cat([t.to(device, non_blocking=True) for t in tensors])

    def copy_to_cpu(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The buffered ``(indices, losses, correct or None)``, concatenated on the CPU; the buffer is kept."""
        steps = self.steps
        index = torch.cat([self.index_tensor(s[1]).reshape(-1).long().cpu() for s in steps])
        loss = torch.cat([s[0].reshape(-1).float().cpu() for s in steps])
        correct = None
        if self.has_correct:
            correct = torch.cat([torch.as_tensor(s[2]).reshape(-1).bool().cpu() for s in steps])
        return index, loss, correct


def rows_on_host(
    trainer: pl.Trainer,
    device: torch.device,
    index: torch.Tensor,
    loss: torch.Tensor,
    correct: torch.Tensor | None,
    *,
    gathered: bool,
    correct_recorded: bool | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(indices, losses, correct or None)`` of every rank, on the host (one gather under DDP).

    Args:
        trainer: the Trainer (its world size; the gather).
        device: the module's device, where the gathered rows are packed.
        index: this rank's sample indices.
        loss: this rank's per-sample losses.
        correct: this rank's correctness, or ``None``.
        gathered: the tensors hold every rank's rows already (the probe source): no gather.
        correct_recorded: whether earlier columns recorded correctness (an empty gather keeps it).

    Returns:
        int64 indices, float64 losses and bool correctness (or ``None``).
    """
    if gathered or world_size(trainer) == 1:
        idx = index.cpu().numpy().astype(np.int64, copy=False)
        losses = loss.detach().cpu().numpy().astype(np.float64)
        corr = None if correct is None else correct.cpu().numpy().astype(bool)
        return idx, losses, corr
    # one gather of int64 (index, loss bits, correct) rows: 63-bit ids stay exact; correct = -1 where unknown
    known = correct.long() if correct is not None else torch.full_like(loss, -1, dtype=torch.long)
    bits = loss.detach().double().to(device).view(torch.int64)
    packed = torch.stack([index.long().to(device), bits, known.to(device)], dim=1)
    rows = gather_concat(trainer, packed).cpu().numpy()  # the one host transfer
    idx, losses = rows[:, 0].copy(), rows[:, 1].copy().view(np.float64)
    corr = rows[:, 2] > 0 if rows.shape[0] and (rows[:, 2] >= 0).all() else None
    if rows.shape[0] == 0 and correct_recorded:
        corr = np.zeros(0, dtype=bool)
    return idx, losses, corr


def hashed_rows(
    ids: np.ndarray, row_of: dict[int, int], sample_ids: np.ndarray, *, index_key: str
) -> np.ndarray:
    """``id_space='hashed'``: the store row of each sample id, new ids taking the next free rows.

    Args:
        ids: the sample ids of a column (any ids in ``[0, 2**63)``).
        row_of: sample id -> store row, in order of first arrival; new ids are added to it.
        sample_ids: the sample id of each store row (``-1``: free); new rows are filled in.
        index_key: the key the ids came under (for the messages).

    Returns:
        The int64 store row of each id.

    Raises:
        ValueError: a negative id, or more distinct ids than rows.
    """
    num_samples = sample_ids.shape[0]
    if int(ids.min()) < 0:
        raise ValueError(
            f"sample ids must be >= 0, got {int(ids.min())} in `{index_key}`; return the ids of "
            "IndexedStream (split_index(batch)) unchanged"
        )
    uniq, first = np.unique(ids, return_index=True)
    for sample_id in uniq[np.argsort(first, kind="stable")].tolist():  # order of arrival
        if sample_id not in row_of:
            row = len(row_of)
            if row >= num_samples:
                raise ValueError(
                    f"more than num_samples={num_samples} distinct sample ids arrived; pass a "
                    "larger `num_samples=` to LossTrajectoryTracker(id_space='hashed')"
                )
            row_of[sample_id] = row
            sample_ids[row] = sample_id
    return np.fromiter((row_of[i] for i in ids.tolist()), dtype=np.int64, count=ids.size)
