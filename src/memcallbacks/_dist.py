"""Distributed helpers: one variable-length gather per epoch, and de-duplication.

Each rank keeps its own per-sample tensors; at epoch end they are gathered once (ranks may
hold different counts, so tensors are padded to the longest, gathered, and trimmed).
``DistributedSampler`` pads its last batch with repeated indices: :func:`first_occurrence`
keeps one record per sample index so that AUCs and statistics are not biased by padding.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["gather_concat", "first_occurrence", "broadcast_object", "world_size"]


def world_size(trainer: Any) -> int:
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


def broadcast_object(trainer: Any, obj: Any, src: int = 0) -> Any:
    """Send a picklable object from rank ``src`` to every rank (no-op on one process)."""
    if world_size(trainer) == 1:
        return obj
    return trainer.strategy.broadcast(obj, src=src)
