"""Probe evaluation: per-sample losses of a fixed dataset, in eval mode, batched.

DESIGN.md section 2: the "probe" source of per-sample losses. Members and non-members are
measured the same way: eval mode, ``torch.inference_mode()``, the module's device, batches
collated by the default collate (or the user's). Train mode is restored afterwards.

The default per-sample loss is ``F.cross_entropy(logits, y, reduction="none")`` (DESIGN.md
section 8: never the true-class logit), averaged over sequence positions for ``[B, T, V]``
logits (positions whose target is ``ignore_index`` = -100 are left out).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from memcallbacks.data.indexed import IndexedDataset, split_index

__all__ = [
    "SampleLossFn",
    "default_sample_loss_fn",
    "default_sample_loss_and_correct_fn",
    "evaluate_sample_losses",
    "random_subset",
    "dataset_of",
    "check_sample_losses",
]

SampleLossFn = Callable[[Any, Any], Any]
"""``sample_loss_fn(module, batch) -> Tensor[B]`` (or ``(Tensor[B], BoolTensor[B])`` with correctness)."""


def _split_xy(batch: Any) -> tuple[Any, torch.Tensor]:
    if isinstance(batch, Mapping):
        for xk in ("x", "input", "inputs", "input_ids"):
            if xk in batch:
                for yk in ("y", "target", "targets", "label", "labels"):
                    if yk in batch:
                        return batch[xk], batch[yk]
        raise TypeError(
            f"the default sample_loss_fn cannot find inputs and targets in a dict batch with keys "
            f"{sorted(batch)}; expected keys like 'x'/'y' or 'input_ids'/'labels'. "
            "Pass `sample_loss_fn=lambda module, batch: F.cross_entropy(module(...), ..., reduction='none')`."
        )
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(
        f"the default sample_loss_fn expects `(x, y)` batches, got {type(batch).__name__}"
        f"{' of length ' + str(len(batch)) if isinstance(batch, (list, tuple)) else ''}. "
        "Pass `sample_loss_fn(module, batch) -> Tensor[B]` (use reduction='none')."
    )


def _logits(out: Any) -> torch.Tensor:
    logits = getattr(out, "logits", out)
    if isinstance(logits, (list, tuple)):
        logits = logits[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"the default sample_loss_fn needs `module(x)` to return logits (a Tensor or an object with "
            f"`.logits`), got {type(out).__name__}; pass `sample_loss_fn`"
        )
    return logits


def _per_sample_ce(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.dim() == 2 and y.dim() == 1:
        loss = F.cross_entropy(logits.float(), y, reduction="none")
        correct = logits.argmax(dim=-1) == y
        return loss, correct
    if logits.dim() == 3 and y.dim() == 2:
        tok = F.cross_entropy(
            logits.float().transpose(1, 2), y, reduction="none", ignore_index=-100
        )  # [B, T]
        valid = y != -100
        n = valid.sum(dim=1).clamp_min(1)
        loss = (tok * valid).sum(dim=1) / n
        correct = ((logits.argmax(dim=-1) == y) | ~valid).all(dim=1)
        return loss, correct
    raise ValueError(
        f"the default sample_loss_fn handles logits [B, C] with targets [B], or logits [B, T, V] with "
        f"targets [B, T]; got logits {tuple(logits.shape)} and targets {tuple(y.shape)}. "
        "Pass `sample_loss_fn(module, batch) -> Tensor[B]`."
    )


def default_sample_loss_fn(module: Any, batch: Any) -> torch.Tensor:
    """Per-sample cross-entropy of ``module(x)`` against ``y``; mean over positions for sequences.

    Example:
        >>> net = torch.nn.Linear(3, 2)
        >>> default_sample_loss_fn(net, (torch.zeros(4, 3), torch.tensor([0, 1, 0, 1]))).shape
        torch.Size([4])
    """
    x, y = _split_xy(batch)
    return _per_sample_ce(_logits(module(x)), y)[0]


def default_sample_loss_and_correct_fn(module: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`default_sample_loss_fn`, also returning whether the argmax prediction is right."""
    x, y = _split_xy(batch)
    return _per_sample_ce(_logits(module(x)), y)


def check_sample_losses(value: Any, batch_size: int | None, *, name: str = "sample_loss_fn") -> torch.Tensor:
    """Validate that a per-sample loss is a 1-D floating tensor of the batch's length."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{name}` must return a Tensor of shape [B], got {type(value).__name__}")
    if value.dim() == 0:
        raise ValueError(
            f"`{name}` returned a scalar, but per-sample losses of shape [B] are needed; "
            "compute the loss with reduction='none' (e.g. F.cross_entropy(logits, y, reduction='none'))"
        )
    if value.dim() != 1 or (batch_size is not None and value.shape[0] != batch_size):
        raise ValueError(
            f"`{name}` must return shape [B] = [{batch_size}], got {tuple(value.shape)}; "
            "reduce any extra dimensions per sample (e.g. .mean(dim=1))"
        )
    if not value.is_floating_point():
        raise TypeError(f"`{name}` must return a floating tensor, got dtype {value.dtype}")
    return value


def _batch_size(batch: Any) -> int | None:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        for v in batch.values():
            n = _batch_size(v)
            if n is not None:
                return n
    if isinstance(batch, (list, tuple)):
        for v in batch:
            n = _batch_size(v)
            if n is not None:
                return n
    return None


def _forward_context(trainer: Any) -> contextlib.AbstractContextManager[Any]:
    plugin = getattr(trainer, "precision_plugin", None)
    if plugin is not None and hasattr(plugin, "forward_context"):
        return plugin.forward_context()  # type: ignore[no-any-return]
    return contextlib.nullcontext()


def _move(batch: Any, device: torch.device) -> Any:
    from lightning_fabric.utilities.apply_func import move_data_to_device

    return move_data_to_device(batch, device)


def evaluate_sample_losses(
    module: torch.nn.Module,
    dataset: Dataset[Any] | DataLoader[Any],
    sample_loss_fn: SampleLossFn = default_sample_loss_fn,
    *,
    batch_size: int = 256,
    device: torch.device | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    trainer: Any = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Evaluate per-sample losses of every item of ``dataset`` in order, in eval mode.

    Args:
        module: the model (a LightningModule or any ``nn.Module``).
        dataset: a map-style dataset (or a ready ``DataLoader`` that does not shuffle).
            Items of an :class:`IndexedDataset` have their index removed before the loss function.
        sample_loss_fn: ``(module, batch) -> Tensor[B]``, or ``(Tensor[B], BoolTensor[B])``
            to also report correctness.
        batch_size: batch size of the evaluation loader.
        device: where to run; defaults to the module's parameters' device.
        collate_fn: collate function for the loader (default: PyTorch's default collate).
        trainer: when given, the Trainer's precision context (AMP) is used for the forward.

    Returns:
        ``(losses, correct)``: float32 CPU tensor ``[N]`` and a bool CPU tensor ``[N]`` or
        ``None`` when the loss function reports no correctness. One host transfer at the end.
    """
    if device is None:
        p = next(module.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    loader = (
        dataset
        if isinstance(dataset, DataLoader)
        else DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    )
    indexed = isinstance(getattr(loader, "dataset", None), IndexedDataset)
    was_training = module.training
    losses: list[torch.Tensor] = []
    corrects: list[torch.Tensor] = []
    module.eval()
    try:
        with torch.inference_mode(), _forward_context(trainer):
            for batch in loader:
                if indexed:
                    _, batch = split_index(batch)
                batch = _move(batch, device)
                out = sample_loss_fn(module, batch)
                correct = None
                if isinstance(out, tuple):
                    out, correct = out
                loss = check_sample_losses(out, _batch_size(batch))
                losses.append(loss.detach().float())
                if correct is not None:
                    corrects.append(correct.detach().bool())
    finally:
        module.train(was_training)
    if not losses:
        return torch.zeros(0), None
    all_losses = torch.cat(losses).cpu()
    all_correct = torch.cat(corrects).cpu() if len(corrects) == len(losses) else None
    return all_losses, all_correct


def random_subset(dataset: Dataset[Any], size: int, *, seed: int) -> tuple[Subset[Any], np.ndarray]:
    """A fixed random subset of ``size`` items (all when smaller), drawn with a seeded generator.

    Returns the subset and the sorted indices into ``dataset``.
    """
    n = len(dataset)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(size, n), replace=False)) if size < n else np.arange(n)
    return Subset(dataset, idx.tolist()), idx


def _unwrap_loader(loader: Any) -> Iterator[Any]:
    if loader is None:
        return
    if isinstance(loader, DataLoader):
        yield loader
    elif isinstance(loader, Mapping):
        for v in loader.values():
            yield from _unwrap_loader(v)
    elif isinstance(loader, Sequence):
        for v in loader:
            yield from _unwrap_loader(v)
    elif hasattr(loader, "flattened"):  # Lightning's CombinedLoader
        for v in loader.flattened:
            yield from _unwrap_loader(v)


def dataset_of(loader: Any) -> Dataset[Any] | None:
    """The dataset behind the first DataLoader in ``loader`` (a DataLoader, list, dict or CombinedLoader)."""
    for dl in _unwrap_loader(loader):
        ds = dl.dataset
        if isinstance(ds, IndexedDataset):
            return ds.dataset
        return ds
    return None
