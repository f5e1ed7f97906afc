"""Are the canaries in the training data, in the token ids the monitor scores? (pure: no Lightning)

A canary measures memorisation only if the model was trained on it, tokenised as the monitor
scores it (Carlini et al., "The Secret Sharer", USENIX Security 2019, Sec. 4: the canary is
*inserted into the training data*). Two mistakes read as "safe" without this check: forgetting
``canaries.inject(...)`` (the model never saw a canary: about 1-2 bits of exposure), and a
training set tokenised with another tokenizer than the :class:`~memcallbacks.CanarySet`'s (the
monitor scores ids the model never saw: 1.2 bits instead of 20).

:func:`locate_canaries` reads training items and looks for each canary:

* in a row of token ids (a list of ints, a 1-D integer tensor or array, a dict's ``input_ids``,
  an ``(x, y)`` pair of them, a 2-D integer tensor): the canary text's ids without special tokens
  (:meth:`~memcallbacks.CanarySet.plain_token_ids`) must appear as a contiguous run, so a row
  tokenised by another tokenizer does not match;
* else in a text (a string item, a dict's string values): the canary's text must appear in it
  (this proves the insertion, not the tokenizer: when the DataLoader's collate function
  tokenises, pass ``collate`` so the ids are compared instead).

With the positions ``CanarySet.inject`` recorded, only those items are read (``sum(repetitions)``
items). Without them the dataset is scanned from its end (``inject`` appends there) for at most
``max_scan`` items (:data:`SCAN_LIMIT` by default), so the cost is bounded on any dataset size.

Example:
    >>> from memcallbacks import CanarySet, CharTokenizer
    >>> cs = CanarySet("pin {secret}", CharTokenizer(), repetitions=(2,), per_count=1, seed=0)
    >>> texts = cs.inject(["a", "b"])
    >>> tok = CharTokenizer()
    >>> rows = [tok.encode(t) for t in texts]
    >>> locate_canaries(cs, rows, injected=cs.injected_indices).status
    'ok'
    >>> locate_canaries(cs, [tok.encode("a")] * 5).status  # never injected
    'missing'
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from memcallbacks.data.canaries import Canary, CanarySet

__all__ = [
    "SCAN_LIMIT",
    "CanaryPresence",
    "item_fingerprint",
    "item_views",
    "locate_canaries",
    "locate_items",
]

SCAN_LIMIT = 10_000
"""The most training items :func:`locate_canaries` reads when no insertion positions are known."""

_UNREADABLE_AFTER = 32  # a scan gives up when this many items in a row hold neither text nor token ids


@dataclass(frozen=True)
class CanaryPresence:
    """What :func:`locate_canaries` found.

    Attributes:
        status: ``"ok"`` (every canary found, and at every recorded position), ``"mismatch"`` (a
            recorded position holds an item without its canary: another tokenizer, or a dataset
            rebuilt after ``inject``), ``"missing"`` (some canaries not found in the items read) or
            ``"unchecked"`` (the items hold neither token ids nor text, or there is no dataset).
        compared: ``"token_ids"``, ``"text"`` or ``"none"``: what the canaries were compared with.
        found: ids of the canaries found.
        missing: ids of the canaries not found.
        mismatched: ``(canary id, dataset index)`` of recorded positions whose item does not hold the canary.
        scanned: how many items were read.
        complete: whether every item of the dataset was read (then "missing" means "not there").
    """

    status: str
    compared: str
    found: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    mismatched: tuple[tuple[str, int], ...] = ()
    scanned: int = 0
    complete: bool = False
    notes: tuple[str, ...] = field(default=(), repr=False)


def _id_bytes(ids: Any) -> bytes | None:
    """A row of token ids as little-endian int64 bytes (None when ``ids`` is no 1-D integer row)."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1 or ids.is_floating_point() or ids.is_complex():
            return None
        return ids.detach().cpu().numpy().astype("<i8").tobytes()
    if isinstance(ids, np.ndarray):
        return ids.astype("<i8").tobytes() if ids.ndim == 1 and np.issubdtype(ids.dtype, np.integer) else None
    if (
        isinstance(ids, list)
        and ids
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in ids)
    ):
        return np.asarray(ids, dtype="<i8").tobytes()
    return None


def item_views(item: Any, depth: int = 0) -> tuple[list[str], list[bytes]]:
    """The texts and token-id rows (as int64 bytes) that a training item holds.

    Example:
        >>> texts, rows = item_views({"text": "hi", "input_ids": [5, 6]})
        >>> texts, [np.frombuffer(r, dtype="<i8").tolist() for r in rows]
        (['hi'], [[5, 6]])
    """
    if isinstance(item, str):
        return [item], []
    row = _id_bytes(item)
    if row is not None:
        return [], [row]
    texts: list[str] = []
    rows: list[bytes] = []
    if isinstance(item, torch.Tensor) and item.dim() == 2 and not item.is_floating_point():
        rows = [r for r in (_id_bytes(x) for x in item) if r is not None]
    elif depth < 2 and isinstance(item, Mapping):
        for value in item.values():
            t, r = item_views(value, depth + 1)
            texts += t
            rows += r
    elif depth < 2 and isinstance(item, (tuple, list)):
        for value in item:
            t, r = item_views(value, depth + 1)
            texts += t
            rows += r
    return texts, rows


def _ids_in(row: bytes, finder: re.Pattern[bytes], owners: Mapping[bytes, str]) -> set[str]:
    """The canaries whose id pattern occurs in ``row`` at a whole-id position (one regex pass, overlaps seen)."""
    return {owners[m.group(1)] for m in finder.finditer(row) if m.start() % 8 == 0}


class _Matcher:
    """Reads items and answers "does this item hold canary c?" by token ids, else by text."""

    def __init__(self, canaries: CanarySet, dataset: Any, collate: Callable[[int], Any] | None) -> None:
        self.dataset, self.collate = dataset, collate
        patterns = {np.asarray(canaries.plain_token_ids(c), dtype="<i8").tobytes(): c.id for c in canaries}
        texts = {c.text: c.id for c in canaries}
        # one pass per row finds every canary: a lookahead over the alternatives sees overlapping matches
        self.id_finder = re.compile(b"(?=(" + b"|".join(re.escape(p) for p in patterns) + b"))", re.DOTALL)
        self.text_finder = re.compile("(?=(" + "|".join(re.escape(t) for t in texts) + "))", re.DOTALL)
        self.id_owner, self.text_owner = patterns, texts
        self.compared: set[str] = set()
        self.notes: list[str] = []

    def views(self, index: int) -> tuple[list[str], list[bytes]]:
        try:
            texts, rows = item_views(self.dataset[index])
        except Exception as e:  # e.g. an IterableDataset with a length: no item by index
            self._note(f"reading item {index} failed ({type(e).__name__}: {e})")
            return [], []
        if not rows and self.collate is not None:
            try:  # the DataLoader's collate function may tokenise (text items)
                rows = item_views(self.collate(index))[1]
            except Exception as e:  # the user's collate: any failure means "cannot compare ids"
                self._note(f"the DataLoader's collate_fn failed on one item ({type(e).__name__}: {e})")
        return texts, rows

    def _note(self, note: str) -> None:
        if note not in self.notes and len(self.notes) < 3:
            self.notes.append(note)

    def canaries_in(self, views: tuple[list[str], list[bytes]]) -> set[str] | None:
        """Ids of the canaries an item holds (by token ids when it has any, else by text); None: unreadable."""
        texts, rows = views
        if rows:
            self.compared.add("token_ids")
            return set().union(*(_ids_in(r, self.id_finder, self.id_owner) for r in rows))
        if texts:
            self.compared.add("text")
            return {self.text_owner[m.group(1)] for t in texts for m in self.text_finder.finditer(t)}
        return None

    def compared_with(self) -> str:
        return "token_ids" if "token_ids" in self.compared else ("text" if self.compared else "none")


def locate_canaries(
    canaries: CanarySet | Sequence[Canary],
    dataset: Any,
    *,
    injected: Mapping[str, Sequence[int]] | None = None,
    collate: Callable[[int], Any] | None = None,
    max_scan: int = SCAN_LIMIT,
) -> CanaryPresence:
    """Look for the canaries in a map-style training dataset (see the module docstring).

    Args:
        canaries: a :class:`~memcallbacks.CanarySet`, or ``(canary_set, [canary, ...])`` to look for
            some of its canaries only (e.g. an audit's included ones).
        dataset: the map-style training dataset (``len`` and ``[i]``), unwrapped from ``IndexedDataset``.
        injected: canary id -> dataset indices (``CanarySet.injected_indices``); only those items are read.
        collate: ``index -> batch``: the DataLoader's collate function applied to item ``index`` (used
            when an item holds text only, so the ids the model trains on are compared).
        max_scan: the most items read when ``injected`` is not given (from the end of the dataset).

    Returns:
        A :class:`CanaryPresence`.
    """
    cs, selected = _split(canaries)
    if dataset is None or not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        return CanaryPresence("unchecked", "none", missing=tuple(c.id for c in selected))
    matcher = _Matcher(cs, dataset, collate)
    if injected:
        return _at_positions(matcher, selected, injected, len(dataset))
    return _scan(matcher, selected, len(dataset), max_scan)


def _split(canaries: Any) -> tuple[CanarySet, list[Canary]]:
    if isinstance(canaries, CanarySet):
        return canaries, list(canaries)
    cs, selected = canaries
    return cs, list(selected)


def _at_positions(
    matcher: _Matcher, canaries: list[Canary], injected: Mapping[str, Sequence[int]], n: int
) -> CanaryPresence:
    found: list[str] = []
    missing: list[str] = []
    mismatched: list[tuple[str, int]] = []
    unreadable = 0
    for c in canaries:
        positions = [int(i) for i in injected.get(c.id, [])]
        hits = []
        for i in positions:
            ids = matcher.canaries_in(matcher.views(i)) if 0 <= i < n else set()
            if ids is None:
                unreadable += 1
                continue
            held = c.id in ids
            hits.append(held)
            if not held:
                mismatched.append((c.id, i))
        (found if hits and all(hits) else missing).append(c.id)
    read = sum(len(injected.get(c.id, [])) for c in canaries)
    if unreadable == read and read:
        status = "unchecked"
    elif mismatched:
        status = "mismatch"
    else:
        status = "ok" if not missing else "missing"
    return CanaryPresence(
        status,
        matcher.compared_with(),
        found=tuple(found),
        missing=tuple(missing),
        mismatched=tuple(mismatched),
        scanned=read,
        complete=False,
        notes=tuple(matcher.notes),
    )


def _scan(matcher: _Matcher, canaries: list[Canary], n: int, max_scan: int) -> CanaryPresence:
    todo = {c.id: c for c in canaries}
    scanned = 0
    readable = False
    for i in range(n - 1, max(-1, n - 1 - max_scan), -1):
        if not todo:
            break
        views = matcher.views(i)
        scanned += 1
        for cid in matcher.canaries_in(views) or ():
            todo.pop(cid, None)
        readable = readable or bool(views[0] or views[1])
        if not readable and scanned >= _UNREADABLE_AFTER:
            break
    if not readable:
        return CanaryPresence(
            "unchecked", "none", missing=tuple(todo), scanned=scanned, notes=tuple(matcher.notes)
        )
    complete = scanned == n
    return CanaryPresence(
        "missing" if todo else "ok",
        matcher.compared_with(),
        found=tuple(c.id for c in canaries if c.id not in todo),
        missing=tuple(todo),
        scanned=scanned,
        complete=complete,
        notes=tuple(matcher.notes),
    )


def item_fingerprint(item: Any) -> bytes | None:
    """A content digest of a data item (tensors, arrays, numbers, strings, and tuples/lists/dicts of them).

    Equal items (same values, dtypes and shapes) get equal digests; ``None`` for an item holding
    anything else (then it cannot be compared).

    Example:
        >>> a = (torch.ones(2), 1)
        >>> item_fingerprint(a) == item_fingerprint((torch.ones(2), 1)) != item_fingerprint((torch.zeros(2), 1))
        True
    """
    digest = hashlib.blake2b(digest_size=16)
    return digest.digest() if _feed(digest, item, 0) else None


def _feed(digest: Any, item: Any, depth: int) -> bool:
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().numpy()
    if isinstance(item, np.ndarray):
        digest.update(f"a{item.dtype.str}{item.shape}".encode())
        digest.update(np.ascontiguousarray(item).tobytes())
        return True
    if isinstance(item, (bool, int, float, str, np.generic)):
        digest.update(f"s{type(item).__name__}:{item!r}".encode())
        return True
    if depth < 3 and isinstance(item, (tuple, list)):
        digest.update(f"l{len(item)}".encode())
        return all(_feed(digest, v, depth + 1) for v in item)
    if depth < 3 and isinstance(item, Mapping):
        digest.update(f"d{len(item)}".encode())
        return all(
            _feed(digest, str(k), depth + 1) and _feed(digest, item[k], depth + 1)
            for k in sorted(item, key=str)
        )
    return False


def locate_items(
    items: Sequence[Any], dataset: Any, *, max_scan: int = SCAN_LIMIT
) -> tuple[set[int], int, bool]:
    """Which of ``items`` (data points, e.g. an audit's canaries) occur in ``dataset``, by content.

    Reads at most ``max_scan`` items of ``dataset`` from its end (where ``PrivacyAuditMonitor.inject``
    appends the canaries).

    Returns:
        ``(positions in items found, items of dataset read, whether every item of dataset was read)``;
        ``(set(), 0, False)`` when the items cannot be fingerprinted or ``dataset`` is not map-style.

    Example:
        >>> items = [torch.tensor([1.0]), torch.tensor([2.0])]
        >>> locate_items(items, [torch.tensor([0.0]), torch.tensor([2.0])])
        ({1}, 2, True)
    """
    prints: dict[bytes, list[int]] = {}
    for k, item in enumerate(items):
        fp = item_fingerprint(item)
        if fp is None:
            return set(), 0, False
        prints.setdefault(fp, []).append(k)
    if dataset is None or not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        return set(), 0, False
    n = len(dataset)
    found: set[int] = set()
    scanned = 0
    for i in range(n - 1, max(-1, n - 1 - max_scan), -1):
        scanned += 1
        try:
            item = dataset[i]
        except Exception:  # e.g. an IterableDataset with a length: nothing to compare by index
            return set(), 0, False
        found.update(prints.get(item_fingerprint(item) or b"", ()))
    return found, scanned, scanned == n
