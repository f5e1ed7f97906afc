"""Stable integer sample ids for any map-style dataset.

Per-sample callbacks need to know *which* sample each loss belongs to, whatever the
sampler, shuffling or number of processes. :class:`IndexedDataset` attaches the item's
position in the wrapped dataset:

- an item that is a ``dict`` gets an ``"index"`` key (``{"index": i, **item}``);
- any other item ``item`` becomes the pair ``(i, item)``.

PyTorch's default collate turns a batch of pairs into ``[index_tensor, collated_items]``
and a batch of dicts into a dict with an ``"index"`` tensor; :func:`split_index` takes the
index back out so that ``training_step`` stays short.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, TypeVar

import torch
from torch.utils.data import Dataset, IterableDataset, TensorDataset

from memcallbacks.utilities.validation import check_bool

__all__ = ["IndexedDataset", "split_index", "INDEX_KEY"]

T = TypeVar("T")
INDEX_KEY = "index"


class IndexedDataset(Dataset[Any], Generic[T]):
    """Wrap a map-style dataset so each item also carries its stable integer index.

    Args:
        dataset: any map-style dataset (has ``__len__`` and ``__getitem__``).

    Raises:
        TypeError: ``dataset`` is an ``IterableDataset`` or has no length.

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> ds = IndexedDataset(TensorDataset(torch.arange(6.0).view(3, 2), torch.tensor([0, 1, 0])))
        >>> ds[1]
        (1, (tensor([2., 3.]), tensor(1)))
        >>> index, (x, y) = split_index(next(iter(DataLoader(ds, batch_size=3))))
        >>> index
        tensor([0, 1, 2])
    """

    def __init__(self, dataset: Dataset[T]) -> None:
        if isinstance(dataset, IndexedDataset):
            raise TypeError("`dataset` is already an IndexedDataset; wrap the original dataset once")
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__"):
            raise TypeError(
                f"`dataset` must be a map-style dataset (with __len__ and __getitem__), got "
                f"{type(dataset).__name__}. Per-sample tracking needs stable indices: yield "
                "{'index': i, ...} items from your iterable dataset yourself, or use a map-style dataset."
            )
        try:
            len(dataset)  # type: ignore[arg-type]
        except TypeError as e:
            raise TypeError(
                f"`dataset` ({type(dataset).__name__}) has no __len__; IndexedDataset needs one"
            ) from e
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return self._with_index(int(index), self.dataset[index])

    def __getitems__(self, indices: list[int]) -> list[Any]:
        """A batch of items at once (what the DataLoader fetches when a dataset has this method).

        The same items as ``[self[i] for i in indices]``, built per batch rather than per item:
        the wrapped dataset's own ``__getitems__`` is used when it has one, a ``TensorDataset`` is
        indexed once per tensor (each item is a view of that batch), and the kind of item (dict
        or not) is decided once per batch. The default collate and any collate function
        written for ``(index, item)`` pairs or ``{"index": ...}`` dicts see the same input.
        """
        if not indices:
            return []
        dataset = self.dataset
        fetch = getattr(dataset, "__getitems__", None)
        if fetch:
            items = fetch(indices)
            if not isinstance(items, list) or len(items) != len(
                indices
            ):  # not a list of items: fetch one by one
                items = [dataset[i] for i in indices]
        elif type(dataset) is TensorDataset:  # one gather per tensor, then per-item views
            rows = torch.as_tensor(indices, dtype=torch.long)
            items = list(zip(*(t[rows].unbind(0) for t in dataset.tensors)))
        else:
            items = [dataset[i] for i in indices]
        if isinstance(items[0], Mapping):
            return [self._with_index(int(i), item) for i, item in zip(indices, items)]
        if type(indices[0]) is int:  # the ints of PyTorch's samplers
            return list(zip(indices, items))
        return [(int(i), item) for i, item in zip(indices, items)]

    @staticmethod
    def _with_index(index: int, item: Any) -> Any:
        if not isinstance(item, Mapping):
            return (index, item)
        if INDEX_KEY in item:
            raise KeyError(
                f"the wrapped dataset's items already have an {INDEX_KEY!r} key; rename it, "
                "IndexedDataset adds its own"
            )
        return {INDEX_KEY: index, **item}


def split_index(batch: Any, *, missing_ok: bool = False) -> tuple[torch.Tensor | None, Any]:
    """Split a collated batch of :class:`IndexedDataset` items into ``(index, original_batch)``.

    Args:
        batch: a batch collated from IndexedDataset items: ``[index, items]`` or a dict with
            an ``"index"`` key.
        missing_ok: return ``(None, batch)`` instead of raising when ``batch`` carries no index.
            The test is structural: an un-indexed pair ``(int tensor [B], items of length B)``
            looks exactly like an indexed batch, so only use ``missing_ok`` where batches of
            that shape cannot occur (or keep indexed and plain loaders apart).

    Returns:
        The ``int64`` index tensor ``[B]`` and the batch as the wrapped dataset would give it.

    Example:
        >>> split_index({"index": torch.tensor([3, 5]), "x": torch.zeros(2, 4)})[0]
        tensor([3, 5])
    """
    if isinstance(batch, Mapping) and INDEX_KEY in batch:
        rest = {k: v for k, v in batch.items() if k != INDEX_KEY}
        return torch.as_tensor(batch[INDEX_KEY]), rest
    if (
        isinstance(batch, (list, tuple))
        and len(batch) == 2
        and isinstance(batch[0], torch.Tensor)
        and batch[0].dim() == 1
        and not batch[0].is_floating_point()
        and not batch[0].is_complex()
        and batch[0].dtype != torch.bool
        and _looks_like_items(batch[1], batch[0].shape[0])
    ):
        return batch[0], batch[1]
    if check_bool("missing_ok", missing_ok):
        return None, batch
    raise ValueError(
        f"`batch` carries no sample index (got {type(batch).__name__}); wrap the training dataset: "
        "`DataLoader(IndexedDataset(dataset), ...)`, then `index, batch = split_index(batch)` in training_step"
    )


def _looks_like_items(items: Any, n: int) -> bool:
    """The second half of an indexed pair is a collated batch of ``n`` items (or a nested structure)."""
    if isinstance(items, torch.Tensor):
        return items.dim() >= 1 and items.shape[0] == n
    return isinstance(items, (list, tuple, Mapping))
