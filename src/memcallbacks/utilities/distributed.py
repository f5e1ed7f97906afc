"""Distributed helpers: one variable-length gather per epoch, and de-duplication.

Each rank keeps its own per-sample tensors; at epoch end they are gathered once (ranks may
hold different counts, so tensors are padded to the longest, gathered, and trimmed).
``DistributedSampler`` pads its last batch with repeated indices: :func:`first_occurrence`
keeps one record per sample index so that AUCs and statistics are not biased by padding.

:func:`parameters_sharded` is the one rule, decided from the model itself, for "every forward
pass of this model is a collective" (FSDP2, FSDP, DeepSpeed ZeRO-3, tensor parallelism): then every
rank must run the same number of forward calls in every evaluation, or the run hangs.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "broadcast_object",
    "columns_by_index",
    "first_occurrence",
    "gather_concat",
    "parameters_sharded",
    "sharding_kind",
    "world_size",
]


def world_size(trainer: Any) -> int:
    """The Trainer's number of processes (1 without a Trainer or outside distributed runs)."""
    return int(getattr(trainer, "world_size", 1) or 1)


def gather_concat(trainer: Any, tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (shape ``[n_rank, ...]``) from every rank along dim 0, in rank order.

    A single collective per call pair (sizes, then data); a no-op on one process.
    """
    if world_size(trainer) == 1:
        return tensor
    strategy = trainer.strategy
    n = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    sizes = strategy.all_gather(n).reshape(-1).tolist()
    longest = max(sizes)
    if tensor.shape[0] < longest:
        pad = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        tensor = torch.cat([tensor, pad])
    gathered = strategy.all_gather(tensor.contiguous())  # [world, longest, ...]
    return torch.cat([gathered[r, : sizes[r]] for r in range(len(sizes))])


def first_occurrence(index: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of each distinct value of a 1-D ``index`` tensor.

    Example:
        >>> first_occurrence(torch.tensor([4, 2, 4, 7, 2]))
        tensor([0, 1, 3])
    """
    if index.numel() == 0:
        return index.new_zeros(0, dtype=torch.long)
    uniq, inverse = torch.unique(index, return_inverse=True)
    positions = torch.arange(index.numel(), device=index.device)
    first = torch.full((uniq.numel(),), index.numel(), device=index.device, dtype=torch.long)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    return torch.sort(first).values


def columns_by_index(
    index: torch.Tensor, values: torch.Tensor, *, size: int, fill: float = float("nan")
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense per-sample columns from gathered ``(index, values)`` rows, one record per index.

    The pure half of a distributed per-sample collection: rows gathered from every rank (in rank
    order) may repeat an index (``DistributedSampler`` and sharded probes pad with repeated
    samples); each index keeps its first record (:func:`first_occurrence`), placed at row
    ``index`` of a ``[size, C]`` tensor; indices never seen hold ``fill``.

    Args:
        index: ``[K]`` integer sample indices in ``[0, size)``.
        values: ``[K]`` or ``[K, C]`` values of each record.
        size: the number of samples (rows of the result).
        fill: the value of rows whose index never appears.

    Returns:
        ``(columns, present)``: ``[size, C]`` (or ``[size]`` for 1-D ``values``) in ``values``' dtype,
        and a bool ``[size]`` mask of the indices that appeared.

    Raises:
        ValueError: an index outside ``[0, size)``, or ``index`` and ``values`` of different lengths.

    Example:
        >>> cols, present = columns_by_index(torch.tensor([2, 0, 2]), torch.tensor([5.0, 7.0, 9.0]), size=4)
        >>> cols, present
        (tensor([7., nan, 5., nan]), tensor([ True, False,  True, False]))
    """
    index = index.reshape(-1).long()
    if values.shape[0] != index.numel():
        raise ValueError(f"`index` has {index.numel()} entries but `values` has {values.shape[0]} rows")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= size):
        raise ValueError(
            f"sample indices must lie in [0, {size}), got values from {int(index.min())} to {int(index.max())}"
        )
    keep = first_occurrence(index)
    columns = torch.full((size, *values.shape[1:]), fill, dtype=values.dtype, device=values.device)
    columns[index[keep]] = values[keep]
    present = torch.zeros(size, dtype=torch.bool, device=index.device)
    present[index[keep]] = True
    return columns, present


def broadcast_object(trainer: Any, obj: Any, src: int = 0) -> Any:
    """Send a picklable object from rank ``src`` to every rank (no-op on one process)."""
    if world_size(trainer) == 1:
        return obj
    return trainer.strategy.broadcast(obj, src=src)


def _sharded_module_types() -> tuple[type, ...]:
    """FSDP's wrapper classes (FSDP2's ``FSDPModule`` mixin and FSDP1's ``FullyShardedDataParallel``)."""
    if not torch.distributed.is_available():
        return ()
    types: list[type] = []
    try:
        from torch.distributed.fsdp import FSDPModule

        types.append(FSDPModule)
    except ImportError:  # pragma: no cover - torch < 2.6
        pass
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel

        types.append(FullyShardedDataParallel)
    except ImportError:  # pragma: no cover - torch built without FSDP
        pass
    return tuple(types)


def _dtensor_type() -> type | None:
    if not torch.distributed.is_available():
        return None
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch < 2.4
        return None
    return DTensor


def sharding_kind(module: Any) -> str | None:
    """How ``module``'s parameters are split across ranks, or ``None`` when every rank holds them whole.

    Decided from the model itself, never from a class name: ``"fsdp"`` when the module or a
    submodule is FSDP-wrapped (FSDP2's ``fully_shard`` makes it an ``FSDPModule``; FSDP1's
    ``FullyShardedDataParallel``), ``"dtensor"`` when a parameter is a ``DTensor`` (FSDP2 or tensor
    parallelism applied by other means), ``"deepspeed"`` when a parameter carries DeepSpeed ZeRO-3's
    partitioning attributes (``ds_id`` and ``ds_status``). Anything that is not a
    ``torch.nn.Module`` gives ``None``.

    Example:
        >>> sharding_kind(torch.nn.Linear(2, 2)) is None
        True
    """
    if not isinstance(module, torch.nn.Module):
        return None
    wrappers = _sharded_module_types()
    if wrappers and any(isinstance(m, wrappers) for m in module.modules()):
        return "fsdp"
    dtensor = _dtensor_type()
    for p in module.parameters():
        if dtensor is not None and isinstance(p, dtensor):
            return "dtensor"
        if hasattr(p, "ds_id") and hasattr(p, "ds_status"):
            return "deepspeed"
    return None


def parameters_sharded(module: Any) -> bool:
    """Whether ``module``'s forward pass is a collective over the ranks (see :func:`sharding_kind`).

    Then every rank must run the same number of forward calls in every evaluation (equal probe
    shards, fixed decoding lengths), or the ranks wait on each other forever.

    Example:
        >>> parameters_sharded(torch.nn.Linear(2, 2))
        False
    """
    return sharding_kind(module) is not None
