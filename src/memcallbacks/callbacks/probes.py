"""Probe evaluation: per-sample losses of a fixed dataset, in eval mode, batched.

The "probe" source of per-sample losses (docs/architecture.md, "Data flow"). Members and non-members are
measured the same way: eval mode, ``torch.inference_mode()``, the module's device, batches
collated by the default collate (or the user's). Train mode is restored afterwards.

The default per-sample loss is ``F.cross_entropy(logits, y, reduction="none")`` (never the
true-class logit; docs/architecture.md, "Known pitfalls"), averaged over sequence positions for ``[B, T, V]``
logits (positions whose target is ``ignore_index`` = -100 are left out).
A Hugging Face batch (a dict with ``input_ids`` and ``labels``) gets the causal-LM loss with
the one-token shift (see :func:`default_sample_loss_fn`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from memcallbacks.data.indexed import IndexedDataset, split_index
from memcallbacks.lm.losses import (
    default_sample_loss_and_correct_fn,
    default_sample_loss_fn,
)

__all__ = [
    "SampleLossFn",
    "default_sample_loss_fn",
    "default_sample_loss_and_correct_fn",
    "as_probe_dataset",
    "evaluate_sample_losses",
    "evaluate_sharded",
    "full_precision",
    "item_shapes",
    "item_structure",
    "random_subset",
    "seeded_indices",
    "shard_positions",
    "dataset_of",
    "check_sample_losses",
]

SampleLossFn = Callable[[Any, Any], Any]
"""``sample_loss_fn(module, batch) -> Tensor[B]`` (or ``(Tensor[B], BoolTensor[B])`` with correctness)."""


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


@contextlib.contextmanager
def full_precision(trainer: Any, device: torch.device) -> Iterator[None]:
    """The probe's numeric context: the Trainer's precision context with autocast switched off.

    Every probe is measured in the dtype of the weights (float32 for ``"32-true"`` and every
    ``"*-mixed"`` precision), never under autocast: a ``"bf16-mixed"`` run measures its probes
    exactly like a float32 evaluation of the same weights, and membership, trajectory and exposure
    numbers share one precision. ``"*-true"`` precisions keep the plugin's context (its default
    dtype), since the weights themselves are half precision there.
    """
    with _forward_context(trainer), torch.autocast(device_type=device.type, enabled=False):
        yield


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
        trainer: when given, the Trainer's precision plugin context is entered, but autocast is
            always switched off (see :func:`full_precision`): probes are measured in float32
            under ``"16-mixed"``/``"bf16-mixed"``.

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
        with torch.inference_mode(), full_precision(trainer, device):
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


def shard_positions(n: int, world_size: int, rank: int) -> np.ndarray:
    """This rank's contiguous share of the positions ``0 .. n-1`` for a sharded probe evaluation.

    Every rank gets ``ceil(n / world_size)`` positions (so every rank runs the same number of
    batches and no collective waits on a rank that has finished); the last shards are padded by
    repeating position ``n - 1``, which the gather de-duplicates.

    Example:
        >>> [shard_positions(5, 2, r).tolist() for r in range(2)]
        [[0, 1, 2], [3, 4, 4]]
    """
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    per_rank = -(-n // world_size)
    return np.minimum(np.arange(rank * per_rank, (rank + 1) * per_rank, dtype=np.int64), n - 1)


def evaluate_sharded(
    trainer: Any,
    module: torch.nn.Module,
    dataset: Dataset[Any],
    sample_loss_fn: SampleLossFn = default_sample_loss_fn,
    *,
    batch_size: int = 256,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sample losses of every item of ``dataset``, split across the ranks, the same on every rank.

    The one probe evaluation of memcallbacks under DDP: each rank evaluates its contiguous shard
    (:func:`shard_positions`) with :func:`evaluate_sample_losses` (eval mode, inference mode,
    autocast off), then one all-gather of ``(position, loss, correct)`` rows and
    :func:`memcallbacks.utilities.distributed.columns_by_index` rebuild the full vectors in dataset order, padding
    removed. On one process it is :func:`evaluate_sample_losses`. Every rank must call it (it
    holds a collective).

    Args:
        trainer: the running Trainer (its world size, rank and strategy; ``None`` = one process).
        module: the model.
        dataset: a map-style dataset of ``N`` items.
        sample_loss_fn: ``(module, batch) -> Tensor[B]`` or ``(Tensor[B], BoolTensor[B])``.
        batch_size: batch size of each rank's evaluation loader.
        collate_fn: collate function (default: PyTorch's default collate).
        device: where to run (default: the module's device).

    Returns:
        ``(losses, correct)``: float32 CPU tensor ``[N]`` in dataset order, and a bool CPU tensor
        ``[N]`` or ``None`` when the loss function reports no correctness. Identical on every rank.
    """
    from memcallbacks.utilities import distributed

    if device is None:
        p = next(module.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    world = distributed.world_size(trainer) if trainer is not None else 1
    if world == 1:
        return evaluate_sample_losses(
            module,
            dataset,
            sample_loss_fn,
            batch_size=batch_size,
            device=device,
            collate_fn=collate_fn,
            trainer=trainer,
        )
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        return torch.zeros(0), None
    positions = shard_positions(n, world, int(trainer.global_rank))
    loss, correct = evaluate_sample_losses(
        module,
        Subset(dataset, positions.tolist()),
        sample_loss_fn,
        batch_size=batch_size,
        device=device,
        collate_fn=collate_fn,
        trainer=trainer,
    )
    has_correct = correct is not None
    known = correct.double() if correct is not None else torch.full_like(loss, -1.0, dtype=torch.float64)
    rows = torch.stack([torch.as_tensor(positions, dtype=torch.float64), loss.double(), known], dim=1)
    gathered = distributed.gather_concat(trainer, rows.to(device)).cpu()
    columns, _ = distributed.columns_by_index(gathered[:, 0].long(), gathered[:, 1:], size=n)
    losses = columns[:, 0].float()
    return losses, (columns[:, 1] > 0.5) if has_correct else None


def as_probe_dataset(name: str, value: Any, *, item: str = "sample") -> Dataset[Any] | None:
    """A probe argument as a map-style dataset (``None`` stays ``None``).

    A DataLoader and an :class:`IndexedDataset` are unwrapped; anything without ``__len__`` and
    ``__getitem__``, or empty, is refused with a message naming the argument ``name`` and what one
    ``item`` of the dataset is (``"sample"``, ``"token sequence"``).
    """
    if value is None:
        return None
    if isinstance(value, DataLoader):
        value = value.dataset
    if isinstance(value, IndexedDataset):
        value = value.dataset
    if not hasattr(value, "__getitem__") or not hasattr(value, "__len__"):
        raise TypeError(
            f"`{name}` must be a map-style dataset of {item}s (with __len__ and __getitem__) "
            f"or a DataLoader over one, got {type(value).__name__}"
        )
    if len(value) == 0:
        raise ValueError(f"`{name}` is empty (0 {item}s); pass a dataset with at least one {item}")
    return value  # type: ignore[no-any-return]


def item_structure(item: Any) -> Any:
    """A comparable description of an item's container structure (not its sizes).

    Two probe sets batched or scored together must agree on it.
    """
    if isinstance(item, torch.Tensor):
        return ("tensor", str(item.dtype), item.dim())
    if isinstance(item, np.ndarray):
        return ("ndarray", str(item.dtype), item.ndim)
    if isinstance(item, Mapping):
        return ("dict", tuple((str(k), item_structure(item[k])) for k in sorted(item, key=str)))
    if isinstance(item, (list, tuple)):
        return ("seq", tuple(item_structure(v) for v in item))
    if isinstance(item, (bool, np.bool_)):
        return "bool"
    if isinstance(item, (int, np.integer)):
        return "int"
    if isinstance(item, (float, np.floating)):
        return "float"
    return type(item).__name__


def item_shapes(item: Any) -> list[tuple[int, ...]]:
    """The shapes of the tensors/arrays in an item, in a fixed order (for the feature-shape check)."""
    if isinstance(item, (torch.Tensor, np.ndarray)):
        return [tuple(item.shape)]
    if isinstance(item, Mapping):
        return [s for k in sorted(item, key=str) for s in item_shapes(item[k])]
    if isinstance(item, (list, tuple)):
        return [s for v in item for s in item_shapes(v)]
    return []


def random_subset(dataset: Dataset[Any], size: int, *, seed: int) -> tuple[Subset[Any], np.ndarray]:
    """A fixed random subset of ``size`` items (all when smaller), drawn with a seeded generator.

    Returns the subset and the sorted indices into ``dataset``.
    """
    idx = seeded_indices(len(dataset), size, seed)  # type: ignore[arg-type]
    return Subset(dataset, idx.tolist()), idx


def seeded_indices(n: int, size: int, seed: int | Sequence[int]) -> np.ndarray:
    """Sorted int64 indices of a fixed random subset of ``size`` of ``range(n)`` (all when ``size >= n``).

    ``seed`` seeds :func:`numpy.random.default_rng` (an int, or a list such as ``[seed, salt]``), so
    the same arguments always pick the same indices.
    """
    if size >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=size, replace=False)).astype(np.int64)


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
