"""Stable sample ids for streamed data (``IterableDataset``), and canaries interleaved into a stream.

:class:`~memcallbacks.data.indexed.IndexedDataset` gives a map-style dataset's items their
position as id. A stream has no positions to look up, so :class:`IndexedStream` attaches an
id to each item as it is read, in the same shapes (a dict item gets an ``"index"`` key, any
other item becomes the pair ``(id, item)``), so that
:func:`~memcallbacks.data.indexed.split_index` and ``LossTrajectoryTracker`` take them unchanged.
Two kinds of id:

- ``id_fn(item) -> int`` (e.g. :func:`text_id` of the item's text): the same item gets the
  same id in every epoch, every restart and on every worker or rank, whatever the order of
  the stream. Two equal items share an id.
- the running index (no ``id_fn``): the item's position in the stream. Stable only for a
  deterministic stream (the same items in the same order on every pass). Survives
  DataLoader workers and DDP ranks (see ``shard``).

Canaries (:func:`interleave` / :func:`canary_stream`) are inserted at seeded positions of a
stream; probe sets (members, non-members, the canaries' candidates) stay map-style.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from memcallbacks.data.indexed import INDEX_KEY
from memcallbacks.utilities.validation import check_bool, check_int, check_seed

__all__ = ["IndexedStream", "InterleavedStream", "canary_stream", "interleave", "text_id"]

_ID_MASK = (1 << 63) - 1


def text_id(text: str | bytes) -> int:
    """A stable 63-bit id of a text: the first 8 bytes of its BLAKE2b digest, top bit cleared.

    The same text gets the same id in every process, run and Python version (unlike ``hash()``,
    which is salted per process). Ids are non-negative and fit an ``int64``.

    Args:
        text: a string (hashed as UTF-8) or bytes.

    Returns:
        An integer in ``[0, 2**63)``.

    Raises:
        TypeError: ``text`` is neither ``str`` nor ``bytes``.

    Example:
        >>> text_id("hello") == text_id(b"hello")
        True
    """
    if isinstance(text, str):
        data = text.encode("utf-8")
    elif isinstance(text, (bytes, bytearray)):
        data = bytes(text)
    else:
        raise TypeError(f"`text` must be str or bytes, got {type(text).__name__}; pass the item's text")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") & _ID_MASK


def _shard() -> tuple[int, int]:
    """``(shard id, number of shards)`` of this process: DataLoader worker x DDP rank."""
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    rank, ranks = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, ranks = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return rank * workers + worker, ranks * workers


def with_id(sample_id: int, item: Any) -> Any:
    """``{"index": id, **item}`` for a dict item, ``(id, item)`` otherwise (IndexedDataset's shapes)."""
    if not isinstance(item, Mapping):
        return (sample_id, item)
    if INDEX_KEY in item:
        raise KeyError(
            f"the stream's items already have an {INDEX_KEY!r} key; rename it, IndexedStream adds its own"
        )
    return {INDEX_KEY: sample_id, **item}


class IndexedStream(IterableDataset[Any]):
    """Wrap an iterable so each item carries a stable integer sample id.

    Args:
        iterable: the stream, re-iterable once per epoch (a list, an ``IterableDataset``, a
            Hugging Face streaming dataset; a generator yields one pass only).
        id_fn: ``item -> int`` (>= 0, fits int64), e.g. ``lambda item: text_id(item["text"])``.
            Default: the running index (the item's position in the stream).
        shard: ``True`` (default): the whole stream is read by every DataLoader worker of
            every DDP rank and each keeps every ``S``-th item (``S`` = workers x ranks, the
            position decides), so each item is trained on once per pass and the running id is
            its position in the stream. ``False``: the iterable shards itself (it yields each
            worker/rank its own items); the running id is then ``local counter * S + shard``,
            unique across shards and stable when each shard's items are.

    Raises:
        TypeError: ``iterable`` is not iterable, ``id_fn`` not callable, ``shard`` not a bool.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> stream = IndexedStream([{"text": "a"}, {"text": "b"}], id_fn=lambda item: len(item["text"]))
        >>> list(stream)
        [{'index': 1, 'text': 'a'}, {'index': 1, 'text': 'b'}]
        >>> next(iter(DataLoader(IndexedStream(["x", "y", "z"]), batch_size=3)))
        [tensor([0, 1, 2]), ('x', 'y', 'z')]
    """

    def __init__(
        self, iterable: Iterable[Any], id_fn: Callable[[Any], int] | None = None, *, shard: bool = True
    ) -> None:
        if not isinstance(iterable, Iterable):
            raise TypeError(
                f"`iterable` must be iterable (a list, an IterableDataset), got {type(iterable).__name__}"
            )
        if id_fn is not None and not callable(id_fn):
            raise TypeError(f"`id_fn` must be a callable item -> int or None (running index), got {id_fn!r}")
        self.iterable, self.id_fn, self.shard = iterable, id_fn, check_bool("shard", shard)

    def _id(self, item: Any) -> int:
        assert self.id_fn is not None
        value = self.id_fn(item)
        if isinstance(value, torch.Tensor):
            value = value.item()
        if (
            isinstance(value, (bool, np.bool_))
            or not isinstance(value, (int, np.integer))
            or not 0 <= value <= _ID_MASK
        ):
            raise ValueError(
                f"`id_fn` must return an int in [0, 2**63), got {value!r}; hash text with memcallbacks text_id"
            )
        return int(value)

    def __iter__(self) -> Iterator[Any]:
        shard, shards = _shard()
        if self.shard:
            for position, item in enumerate(self.iterable):
                if position % shards == shard:
                    yield with_id(position if self.id_fn is None else self._id(item), item)
            return
        for count, item in enumerate(self.iterable):
            yield with_id(count * shards + shard if self.id_fn is None else self._id(item), item)


class InterleavedStream(IterableDataset[Any]):
    """A stream with extra items inserted at fixed, seeded positions (see :func:`interleave`).

    Attributes:
        positions: the output position of each inserted item, in the order of ``items``.
    """

    def __init__(self, stream: Iterable[Any], items: Sequence[Any], positions: np.ndarray) -> None:
        self.stream, self.items = stream, list(items)
        self.positions = [int(p) for p in positions]

    def __iter__(self) -> Iterator[Any]:
        at = {p: i for i, p in enumerate(self.positions)}
        source = iter(self.stream)
        position = 0
        while True:
            if position in at:
                yield self.items[at.pop(position)]
            else:
                try:
                    yield next(source)
                except StopIteration:
                    break
            position += 1
        for i in sorted(at.values()):  # a stream shorter than `within`: the rest at its end
            yield self.items[i]


def interleave(
    stream: Iterable[Any], items: Sequence[Any], *, within: int, seed: int = 0
) -> InterleavedStream:
    """Insert ``items`` into ``stream`` at seeded random positions among its first outputs.

    The inserted items land at distinct positions drawn uniformly (seeded numpy generator)
    among the first ``within + len(items)`` outputs, the same positions on every pass and
    every run with the same ``seed``; the stream's own items keep their order. Wrap the result
    in :class:`IndexedStream` (running index) to give every copy its position as sample id.

    Args:
        stream: the training stream (re-iterable once per epoch).
        items: the items to insert, e.g. copies of canary texts.
        within: how many stream items the inserted ones are spread over (>= 1).
        seed: seed of the positions.

    Returns:
        An :class:`InterleavedStream`; ``.positions[i]`` is the output position of ``items[i]``.

    Example:
        >>> mixed = interleave(["a", "b", "c"], ["X"], within=3, seed=0)
        >>> list(mixed)[mixed.positions[0]]
        'X'
    """
    if not isinstance(stream, Iterable):
        raise TypeError(f"`stream` must be iterable, got {type(stream).__name__}")
    check_int("within", within, minimum=1, hint="the number of stream items to spread the inserted ones over")
    check_seed("seed", seed)
    items = list(items)
    rng = np.random.default_rng(seed)
    positions = (
        rng.choice(within + len(items), size=len(items), replace=False) if items else np.zeros(0, np.int64)
    )
    return InterleavedStream(stream, items, positions)


def canary_stream(
    canaries: Any,
    stream: Iterable[Any],
    *,
    within: int,
    seed: int = 0,
    make_item: Callable[[Any], Any] | None = None,
) -> InterleavedStream:
    """Interleave each canary of a ``CanarySet`` ``repetitions`` times into a stream.

    The streamed counterpart of ``CanarySet.inject``: records the output positions of each
    canary's copies in ``canaries.injected_indices`` (canary id -> positions), which are the
    sample ids of the copies once the result is wrapped in ``IndexedStream`` (running index).
    With ``IndexedStream(..., id_fn=...)`` the copies of one canary share one id instead.

    Args:
        canaries: a :class:`~memcallbacks.data.canaries.CanarySet`.
        stream: the training stream.
        within: how many stream items the copies are spread over.
        seed: seed of the positions.
        make_item: ``canary -> item`` in the stream's item format; default the canary's text.

    Returns:
        The :class:`InterleavedStream`.
    """
    make = make_item if make_item is not None else (lambda c: c.text)
    items: list[Any] = []
    owners: list[str] = []
    for canary in canaries.canaries:
        item = make(canary)
        items.extend([item] * canary.repetitions)
        owners.extend([canary.id] * canary.repetitions)
    mixed = interleave(stream, items, within=within, seed=seed)
    injected: dict[str, list[int]] = {c.id: [] for c in canaries.canaries}
    for owner, position in zip(owners, mixed.positions):
        injected[owner].append(position)
    canaries.injected_indices = {k: sorted(v) for k, v in injected.items()}
    return mixed
