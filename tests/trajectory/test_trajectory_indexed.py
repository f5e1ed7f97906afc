"""IndexedDataset and split_index: stable sample ids through the default collate."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset
from torch.utils.data._utils.collate import default_collate

from memcallbacks import IndexedDataset, split_index


class DictDataset(Dataset):
    def __init__(self, n: int, with_index: bool = False) -> None:
        self.n, self.with_index = n, with_index

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        item = {"x": torch.full((3,), float(i)), "y": torch.tensor(i % 2)}
        if self.with_index:
            item["index"] = i
        return item


class Stream(IterableDataset):
    def __iter__(self):
        yield from range(3)


class NoLength(Dataset):
    def __getitem__(self, i: int) -> int:
        return i


def test_tuple_items_collate_and_split_back_in_shuffled_order() -> None:
    x = torch.arange(20.0).view(10, 2)
    y = torch.arange(10) % 3
    ds = IndexedDataset(TensorDataset(x, y))
    assert len(ds) == 10
    assert ds[4][0] == 4
    torch.manual_seed(1)
    seen = []
    for batch in DataLoader(ds, batch_size=4, shuffle=True):
        index, (bx, by) = split_index(batch)
        assert index.dtype == torch.int64
        torch.testing.assert_close(bx, x[index])  # the index points at the item it came with
        torch.testing.assert_close(by, y[index])
        seen += index.tolist()
    assert sorted(seen) == list(range(10))
    assert seen != list(range(10))


def test_dict_items_get_an_index_key() -> None:
    ds = IndexedDataset(DictDataset(5))
    assert ds[2]["index"] == 2
    batch = next(iter(DataLoader(ds, batch_size=5)))
    index, rest = split_index(batch)
    assert index.tolist() == [0, 1, 2, 3, 4]
    assert set(rest) == {"x", "y"}
    torch.testing.assert_close(rest["x"][:, 0], torch.arange(5.0))


def test_single_tensor_items() -> None:
    ds = IndexedDataset(TensorDataset(torch.arange(6.0)))
    index, (x,) = split_index(next(iter(DataLoader(ds, batch_size=6))))
    torch.testing.assert_close(x, index.float())


def test_dict_item_with_its_own_index_key_is_refused() -> None:
    ds = IndexedDataset(DictDataset(3, with_index=True))
    with pytest.raises(KeyError, match="already have an 'index' key"):
        ds[0]


@pytest.mark.parametrize(
    ("dataset", "match"),
    [(Stream(), "map-style dataset.*Stream"), (NoLength(), "no __len__")],
)
def test_iterable_or_lengthless_dataset_rejected(dataset: Dataset, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        IndexedDataset(dataset)


def test_wrapping_twice_is_refused() -> None:
    with pytest.raises(TypeError, match="already an IndexedDataset"):
        IndexedDataset(IndexedDataset(TensorDataset(torch.zeros(2))))


def test_split_index_without_index() -> None:
    batch = [torch.zeros(4, 2), torch.ones(4)]  # plain (x, y), float x: not an index
    with pytest.raises(ValueError, match=r"IndexedDataset\(dataset\)"):
        split_index(batch)
    index, same = split_index(batch, missing_ok=True)
    assert index is None
    assert same is batch
    index, same = split_index({"x": torch.zeros(2)}, missing_ok=True)
    assert index is None


class _DictItems(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": torch.full((2,), float(i)), "y": torch.tensor(i % 3)}


@pytest.mark.parametrize("kind", ["tensor", "dict", "subset", "list"])
def test_getitems_batches_equal_per_item_batches(kind: str) -> None:
    """Batch-level fetching gives the DataLoader exactly what per-item fetching gives (default collate)."""
    base: Any = {
        "tensor": TensorDataset(torch.arange(20.0).view(10, 2), torch.arange(10) % 3),
        "dict": _DictItems(),
        "subset": torch.utils.data.Subset(
            TensorDataset(torch.arange(20.0).view(10, 2)), [9, 3, 5, 0, 1, 2, 4, 6, 7, 8]
        ),
        "list": [(float(i), i) for i in range(10)],
    }[kind]
    ds = IndexedDataset(base)
    order = [7, 2, 9, 0, 5]
    if kind == "list":
        assert ds.__getitems__(order) == [ds[i] for i in order]
    batched = next(iter(DataLoader(ds, batch_size=5, sampler=order)))
    per_item = default_collate([ds[i] for i in order])
    assert split_index(batched)[0].tolist() == order
    torch.testing.assert_close(batched, per_item)
    if kind == "dict":
        assert set(batched) == {"index", "x", "y"}


def test_getitems_keeps_custom_collate_working() -> None:
    from memcallbacks.demos.toy import collate_tokens

    items = [torch.tensor([1, 2, 3]), torch.tensor([4, 5])]
    ds = IndexedDataset(items)
    index, ids = split_index(next(iter(DataLoader(ds, batch_size=2, collate_fn=collate_tokens))))
    assert index.tolist() == [0, 1]
    assert ids.tolist() == [[1, 2, 3], [4, 5, 0]]
    with pytest.raises(KeyError, match="already have an 'index' key"):
        IndexedDataset([{"index": 1}]).__getitems__([0])
