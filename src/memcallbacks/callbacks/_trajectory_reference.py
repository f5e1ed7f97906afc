"""The fit-start reference of :class:`~memcallbacks.callbacks.trajectory.LossTrajectoryTracker`.

``reference="fit_start"`` (the weights before the first step), ``"peft_base"`` (the peft model with
its adapters disabled) or a module: the probe set's losses evaluated once, before the first step;
or given per-sample losses, indexed by dataset position. Difficulty calibration: Watson et al.,
ICLR 2022.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset, Subset

from memcallbacks.callbacks.membership import check_reference_vocabulary, peft_model_of, reference_kind
from memcallbacks.callbacks.probes import evaluate_sample_losses, evaluate_sharded
from memcallbacks.metrics.dynamics import check_reference

__all__ = ["ProbeEvaluation", "evaluate_reference", "reference_label", "reference_name", "reference_of"]


@dataclass(frozen=True)
class ProbeEvaluation:
    """How the probe set is evaluated: the per-sample loss function and the loader settings.

    Args:
        sample_loss_fn: ``(module, batch) -> Tensor[B]`` or ``(Tensor[B], BoolTensor[B])``.
        batch_size: batch size of the evaluation.
        collate_fn: collate function of the probe loader (``None``: PyTorch's, token rows padded).
        pad_id: pad id of token-id rows (``None``: the model config's).
    """

    sample_loss_fn: Callable[[Any, Any], Any]
    batch_size: int
    collate_fn: Callable[[list[Any]], Any] | None
    pad_id: int | None

    def check_scores(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: Dataset[Any]) -> None:
        """Before the first step: the model scores the first probes (else the first evaluation would fail).

        Raises:
            ValueError: the model cannot score them, with the fix.
        """
        head = Subset(probe, list(range(min(2, len(probe)))))  # type: ignore[arg-type]
        try:
            evaluate_sample_losses(
                pl_module, head, self.sample_loss_fn, batch_size=self.batch_size, device=pl_module.device,
                collate_fn=self.collate_fn, trainer=trainer, pad_id=self.pad_id,
            )  # fmt: skip
        except Exception as e:
            raise ValueError(
                f"LossTrajectoryTracker(source='probe'): the model cannot score the probe set: {type(e).__name__}: "
                f"{e}. HINT: the default `sample_loss_fn` takes (x, y) classification items and Hugging Face "
                "batches with labels; pass `sample_loss_fn=(module, batch) -> per-sample losses [B]` for "
                "anything else, or a `probe_dataset=` whose items the model takes"
            ) from e

    def losses(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, module: torch.nn.Module, probe: Dataset[Any]
    ) -> np.ndarray:
        """The probe set's losses under ``module`` (float32, every rank's shard gathered)."""
        loss, _ = evaluate_sharded(
            trainer, module, probe, self.sample_loss_fn, batch_size=self.batch_size,
            collate_fn=self.collate_fn, device=pl_module.device, pad_id=self.pad_id,
        )  # fmt: skip
        return loss.numpy().astype(np.float32, copy=True)


def reference_label(reference: Any) -> str | None:
    """``meta.json["reference"]``: where ``statistics.npz["reference"]`` came from (None: no reference).

    ``"losses"`` (given per sample), ``"fit_start"`` (the weights before the first step),
    ``"peft_base"`` (the base model with the adapters disabled) or ``"module"`` (a given model).
    """
    if reference is None:
        return None
    if isinstance(reference, np.ndarray):
        return "losses"
    return reference_kind(reference)


def reference_name(reference: Any) -> str:
    """How ``reference=`` reads in a message: the string, or the module's class name."""
    return repr(reference) if isinstance(reference, str) else type(reference).__name__


def evaluate_reference(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    reference: str | torch.nn.Module,
    probe: Dataset[Any],
    evaluation: ProbeEvaluation,
    *,
    owner: str,
) -> np.ndarray:
    """The probe set's losses under ``reference`` (the weights at fit start, the peft base, a module).

    Raises:
        ValueError: a reference module with another vocabulary, or one that cannot score the probes.
    """
    ref = reference
    if isinstance(ref, torch.nn.Module):
        ref.to(pl_module.device)
        check_reference_vocabulary(
            pl_module, ref, probe, owner=owner, batch_size=evaluation.batch_size,
            collate_fn=evaluation.collate_fn, pad_id=evaluation.pad_id,
        )  # fmt: skip
        try:
            return evaluation.losses(trainer, pl_module, ref, probe)
        except Exception as e:
            raise ValueError(
                f"{owner}(reference={type(ref).__name__}): the reference model cannot score the probes: "
                f"{type(e).__name__}: {e}. Pass a reference that `sample_loss_fn(module, batch)` can run "
                "(the same inputs and outputs as the trained model)"
            ) from e
    if ref == "peft_base":
        with peft_model_of(pl_module, owner).disable_adapter():
            return evaluation.losses(trainer, pl_module, pl_module, probe)
    # "fit_start": the weights before the first step
    return evaluation.losses(trainer, pl_module, pl_module, probe)


def reference_of(reference: Any, ids: np.ndarray, n: int, *, source: str) -> np.ndarray | None:
    """The reference loss of each store row, or ``None``; raises when ``reference`` does not cover them.

    Args:
        reference: the tracker's ``reference`` (given losses are an array; anything else: ``None``).
        ids: the dataset index of each store row.
        n: the number of store rows.
        source: the tracker's ``source``.

    Raises:
        ValueError: the given losses do not cover every row, or hold an infinity.
    """
    if not isinstance(reference, np.ndarray):
        return None
    size = reference.shape[0]
    if (source == "step" and size != n) or (ids.size and int(ids.max()) >= size):
        upto = f" with dataset indices up to {int(ids.max())}" if source == "probe" and ids.size else ""
        raise ValueError(
            f"`reference` holds {size} losses but the tracker records {n} samples{upto}; pass one "
            "reference loss per training sample, in dataset index order"
        )
    return check_reference(reference[ids], ids.shape[0])
