"""Packed sequences whose sample identity stays the *text*: a packing collator and per-text losses.

Language-model fine-tuning usually packs several texts into one row. The memorisation metrics
are about texts (a canary is a text; a member is a text), so a packed batch must say which text
each token belongs to. :class:`PackingCollator` packs the texts of an
:class:`~memcallbacks.data.indexed.IndexedDataset` batch and carries, per token, the index of its
text in that dataset (``text_ids``, -1 at padding), and the indices of the batch's texts
(``index``). :func:`packed_text_losses` turns the training step's own logits into one loss per
text (no second forward pass), so ``LossTrajectoryTracker(source="step")`` records trajectories
per text and ``CanarySet.injected_indices`` (indices into the text dataset) keep their meaning.

Two packings:

* ``mode="flatten"`` (what ``transformers``' ``DataCollatorWithFlattening`` does): whole texts are
  laid end to end in a row, ``position_ids`` restart at 0 at each text, the first label of each
  text is -100, and the batch has no ``attention_mask``. ``transformers`` (5.x, eager and sdpa
  attention; flash attention reads the position ids for its variable-length kernels) then derives
  a block-diagonal causal mask from the restarting ``position_ids``, so each text attends only to
  itself and a text's loss equals its loss computed alone. That
  holds only when the model runs **without a KV cache** (``use_cache=False``; with a cache,
  ``transformers`` skips the packed-sequence mask and later texts attend to earlier ones) and
  without an ``attention_mask``.
* ``mode="blocks"`` (``group_texts`` of the ``transformers`` examples): the texts, each followed
  by ``eos_id`` when given, are concatenated and cut into rows of ``block_size`` tokens; the last
  row is padded on the right. Tokens attend across texts inside a row (that is what this
  packing trains), a text cut at a row boundary continues in the next row without seeing its
  beginning, and the first token of each row is predicted from nothing.

Per-text loss (both modes): the mean next-token NLL over the text's scored targets, a target
``t + 1`` counting only when the tokens at ``t`` and ``t + 1`` belong to the same text and its label
is not -100 (never the first token of text ``k + 1`` scored from the last token of text ``k``); a
text that appears in several rows of the step (cut at a row boundary) is one loss over all its
scored targets in those rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, overload

import numpy as np
import torch

from memcallbacks.lm.collate import check_pad_id
from memcallbacks.lm.losses import check_reduction
from memcallbacks.lm.model import output_logits

__all__ = ["PACKING_MODES", "TEXT_IDS_KEY", "PackingCollator", "packed_model_inputs", "packed_text_losses"]

PACKING_MODES = ("flatten", "blocks")
TEXT_IDS_KEY = "text_ids"
INDEX_KEY = "index"  # the same key as IndexedDataset's
IGNORE_INDEX = -100
_FIX = (
    "pack with `memcallbacks.lm.packing.PackingCollator` over `IndexedDataset(texts)`: "
    "`DataLoader(IndexedDataset(texts), batch_size=..., collate_fn=PackingCollator(block_size, pad_id=...))`"
)


def _ids_tensor(ids: Any) -> torch.Tensor | None:
    """``ids`` as a 1-D int64 tensor, or None when it is not a sequence of token ids."""
    if isinstance(ids, torch.Tensor):
        ok = (
            ids.dim() == 1
            and not ids.is_floating_point()
            and not ids.is_complex()
            and ids.dtype != torch.bool
        )
        return ids.long() if ok else None
    if isinstance(ids, np.ndarray):
        return (
            torch.as_tensor(ids, dtype=torch.long)
            if ids.ndim == 1 and np.issubdtype(ids.dtype, np.integer)
            else None
        )
    if isinstance(ids, list) and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in ids
    ):
        return torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    return None


def _text_of(item: Any) -> tuple[int, torch.Tensor]:
    """``(dataset index, token ids)`` of one :class:`IndexedDataset` item."""
    index: Any = None
    ids: Any = None
    if isinstance(item, Mapping):
        index, ids = item.get(INDEX_KEY), item.get("input_ids")
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        index, ids = item
        ids = ids.get("input_ids") if isinstance(ids, Mapping) else ids
    tensor = _ids_tensor(ids)
    if isinstance(index, torch.Tensor) and index.dim() == 0:
        index = int(index)
    if tensor is None or not isinstance(index, (int, np.integer)) or isinstance(index, bool):
        raise TypeError(
            "PackingCollator packs IndexedDataset items of token ids ({'index': i, 'input_ids': [...]} or "
            f"(i, ids)), got {type(item).__name__}{_describe(item)}; wrap the tokenized texts: "
            "`DataLoader(IndexedDataset(texts), collate_fn=PackingCollator(...))` (the index of each text is "
            "what the per-text losses and canary indices refer to)"
        )
    return int(index), tensor


def _describe(item: Any) -> str:
    if isinstance(item, Mapping):
        return f" with keys {sorted(map(str, item))}"
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return f" of ({type(item[0]).__name__}, {type(item[1]).__name__})"
    return ""


class PackingCollator:
    """Pack token-id texts into rows that carry each token's text (the step-capture identity of a text).

    Use it as the ``collate_fn`` of a ``DataLoader`` over ``IndexedDataset(texts)``, where each text
    is a list / 1-D tensor of token ids or a dict with ``input_ids`` (a tokenized ``datasets`` row).
    The batch:

    * ``input_ids`` ``[R, T]`` (``pad_id`` at padding) and ``labels`` ``[R, T]`` (-100 at padding;
      in ``"flatten"`` mode also at the first token of each text, as ``DataCollatorWithFlattening``);
    * ``"flatten"``: ``position_ids`` ``[R, T]`` restarting at 0 at each text (and at the padding),
      no ``attention_mask``; ``"blocks"``: ``attention_mask`` ``[R, T]`` (0 at padding), default
      positions;
    * ``text_ids`` ``[R, T]``: the dataset index of each token's text, -1 at padding;
    * ``index`` ``[N]``: the dataset indices of the batch's texts, in order of first appearance,
      each once (``split_index`` and the trajectory tracker read it as the sample index).

    ``"flatten"`` never cuts a text: with ``block_size``, texts go into rows of ``block_size``
    tokens in order (a new row when the next text does not fit) and a text longer than
    ``block_size`` is an error; with ``block_size=None``, all texts form one row, as
    ``DataCollatorWithFlattening`` does. ``"blocks"`` concatenates the texts (each followed by
    ``eos_id`` when given) and cuts the stream into rows of ``block_size``; the last row is padded,
    not dropped, so every token of every text is trained on and scored. See the module docstring
    for what each mode means for attention and for the per-text losses.

    Args:
        block_size: tokens per row (required for ``"blocks"``; optional for ``"flatten"``).
        pad_id: the id written at padding positions (never scored).
        mode: ``"flatten"`` (one text per attention block, position ids restart) or ``"blocks"``
            (``group_texts``: fixed blocks, attention across texts).
        eos_id: appended to each text when given (e.g. ``tokenizer.eos_token_id``), as ``group_texts``
            pipelines do.

    Raises:
        ValueError: an unknown ``mode``; ``block_size`` missing for ``"blocks"`` or not >= 2.
        TypeError: ``pad_id``/``eos_id`` not ints; (when called) items that are not IndexedDataset
            items of token ids.

    Example:
        >>> collate = PackingCollator(6, pad_id=0)
        >>> batch = collate([{"index": 4, "input_ids": [5, 6, 7]}, (9, [8, 9])])
        >>> batch["input_ids"].tolist(), batch["position_ids"].tolist()
        ([[5, 6, 7, 8, 9, 0]], [[0, 1, 2, 0, 1, 0]])
        >>> batch["text_ids"].tolist(), batch["index"].tolist()
        ([[4, 4, 4, 9, 9, -1]], [4, 9])
    """

    def __init__(
        self, block_size: int | None = None, *, pad_id: int, mode: str = "flatten", eos_id: int | None = None
    ) -> None:
        if mode not in PACKING_MODES:
            raise ValueError(
                f"`mode` must be 'flatten' (whole texts per row, position ids restart per text) or 'blocks' "
                f"(group_texts: fixed blocks, attention across texts), got {mode!r}"
            )
        if block_size is None and mode == "blocks":
            raise ValueError("`block_size` is required with mode='blocks' (tokens per block), got None")
        if block_size is not None and (
            isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 2
        ):
            raise ValueError(f"`block_size` must be an int >= 2 (tokens per row) or None, got {block_size!r}")
        pad = check_pad_id(pad_id)
        if pad is None:
            raise TypeError("`pad_id` must be an int token id, got None; e.g. pad_id=tokenizer.pad_token_id")
        self.block_size = None if block_size is None else int(block_size)
        self.pad_id = pad
        self.mode = mode
        self.eos_id = check_pad_id(eos_id)

    def __repr__(self) -> str:
        return (
            f"PackingCollator(block_size={self.block_size}, pad_id={self.pad_id}, mode={self.mode!r}, "
            f"eos_id={self.eos_id})"
        )

    def __call__(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        texts = [_text_of(item) for item in items]
        if self.eos_id is not None:
            eos = torch.tensor([self.eos_id])
            texts = [(i, torch.cat([ids, eos])) for i, ids in texts]
        index = torch.tensor(list(dict.fromkeys(i for i, _ in texts)), dtype=torch.long)
        batch = self._blocks(texts) if self.mode == "blocks" else self._flatten(texts)
        batch[INDEX_KEY] = index
        return batch

    def _blocks(self, texts: list[tuple[int, torch.Tensor]]) -> dict[str, torch.Tensor]:
        assert self.block_size is not None
        stream = torch.cat([ids for _, ids in texts]) if texts else torch.zeros(0, dtype=torch.long)
        owner = (
            torch.cat([torch.full((len(ids),), i, dtype=torch.long) for i, ids in texts]) if texts else stream
        )
        rows = max(1, -(-stream.numel() // self.block_size))
        size = rows * self.block_size
        ids = torch.full((size,), self.pad_id, dtype=torch.long)
        text_ids = torch.full((size,), -1, dtype=torch.long)
        ids[: stream.numel()], text_ids[: stream.numel()] = stream, owner
        ids, text_ids = ids.view(rows, -1), text_ids.view(rows, -1)
        real = text_ids >= 0
        return {
            "input_ids": ids,
            "attention_mask": real.long(),
            "labels": ids.masked_fill(~real, IGNORE_INDEX),
            TEXT_IDS_KEY: text_ids,
        }

    def _rows(self, texts: list[tuple[int, torch.Tensor]]) -> list[list[tuple[int, torch.Tensor]]]:
        """Whole texts into rows of at most ``block_size`` tokens, in order (one row without a size)."""
        if self.block_size is None:
            return [texts]
        rows: list[list[tuple[int, torch.Tensor]]] = [[]]
        used = 0
        for i, ids in texts:
            if len(ids) > self.block_size:
                raise ValueError(
                    f"PackingCollator(mode='flatten', block_size={self.block_size}): text {i} has {len(ids)} "
                    "tokens and flatten mode never cuts a text; truncate when tokenizing "
                    f"(tokenizer(..., truncation=True, max_length={self.block_size})), raise `block_size`, or "
                    "use mode='blocks'"
                )
            if used + len(ids) > self.block_size and rows[-1]:
                rows.append([])
                used = 0
            rows[-1].append((i, ids))
            used += len(ids)
        return rows

    def _flatten(self, texts: list[tuple[int, torch.Tensor]]) -> dict[str, torch.Tensor]:
        rows = self._rows(texts)
        width = self.block_size or max(1, sum(len(ids) for _, ids in texts))
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        text_ids = torch.full((len(rows), width), -1, dtype=torch.long)
        for r, row in enumerate(rows):
            col = 0
            for i, text in row:
                n = len(text)
                if n == 0:  # an empty text: in `index`, nothing to score (NaN)
                    continue
                ids[r, col : col + n], labels[r, col : col + n] = text, text
                labels[r, col] = IGNORE_INDEX  # never scored from the text before it
                positions[r, col : col + n] = torch.arange(n)
                text_ids[r, col : col + n] = i
                col += n
            positions[r, col:] = torch.arange(width - col)  # padding: a sequence of its own
        return {"input_ids": ids, "labels": labels, "position_ids": positions, TEXT_IDS_KEY: text_ids}


def packed_model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The packed batch without its per-text bookkeeping (``text_ids``, ``index``): what the model takes.

    Example:
        >>> sorted(packed_model_inputs(PackingCollator(4, pad_id=0)([(0, [1, 2])])))
        ['input_ids', 'labels', 'position_ids']
    """
    return {k: v for k, v in batch.items() if k not in (TEXT_IDS_KEY, INDEX_KEY)}


def _packed_parts(batch: Any, labels_key: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(labels, text_ids, index)`` of a packed batch, checked (metadata only)."""
    if not isinstance(batch, Mapping) or not isinstance(batch.get(TEXT_IDS_KEY), torch.Tensor):
        got = f"keys {sorted(map(str, batch))}" if isinstance(batch, Mapping) else type(batch).__name__
        raise TypeError(
            f"per-text losses of packed rows need each token's text: a batch with `{TEXT_IDS_KEY}` [R, T] and "
            f"`{INDEX_KEY}` [N], got {got}. Without them a row's loss mixes several texts and the sample "
            f"indices point at rows, not texts; {_FIX}"
        )
    text_ids = batch[TEXT_IDS_KEY]
    index = batch.get(INDEX_KEY)
    if not isinstance(index, torch.Tensor) or index.dim() != 1:
        raise TypeError(
            f"the packed batch needs `{INDEX_KEY}` [N] (the dataset indices of its texts), got "
            f"{type(index).__name__}; keep the batch of PackingCollator whole (do not `split_index` it before "
            "packed_text_losses)"
        )
    labels = batch.get(labels_key)
    labels = batch.get("input_ids") if labels is None else labels
    if not isinstance(labels, torch.Tensor) or labels.dim() != 2 or labels.shape != text_ids.shape:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(
            f"`{labels_key}` (or `input_ids`) must be [R, T] like `{TEXT_IDS_KEY}` {tuple(text_ids.shape)}, got {shape}"
        )
    return labels, text_ids.to(labels.device), index.to(labels.device)


def _check_no_cache(output: Any, batch: Mapping[str, Any]) -> None:
    """Flatten-mode rows (own ``position_ids``) run with a KV cache attended across texts: refuse."""
    cache = (
        output.get("past_key_values")
        if isinstance(output, Mapping)
        else getattr(output, "past_key_values", None)
    )
    if cache is not None and "position_ids" in batch:
        raise ValueError(
            "the model ran this packed batch with a KV cache (its output has `past_key_values`): "
            "`transformers` then ignores the restarting `position_ids` when it builds the attention mask, so "
            "each text attended to the texts before it in its row. Call the model with `use_cache=False`: "
            "`self.model(**packed_model_inputs(batch), use_cache=False)`"
        )


@overload
def packed_text_losses(
    logits: Any,
    batch: Mapping[str, Any],
    *,
    labels_key: str = ...,
    reduction: str = ...,
    with_correct: Literal[False] = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def packed_text_losses(
    logits: Any,
    batch: Mapping[str, Any],
    *,
    labels_key: str = ...,
    reduction: str = ...,
    with_correct: Literal[True],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


def packed_text_losses(
    logits: Any,
    batch: Mapping[str, Any],
    *,
    labels_key: str = "labels",
    reduction: str = "mean",
    with_correct: bool = False,
) -> tuple[torch.Tensor, ...]:
    """One next-token loss per text of a packed batch, from the step's own logits (no second forward).

    The logits at ``t`` score ``batch[labels_key][:, t + 1]`` (``input_ids`` when there are no
    labels), counting a target only when its label is not -100, both tokens belong to the same
    text (``text_ids`` equal and >= 0; so never the first token of a text from the last token of
    the text before it) and, when the batch has an ``attention_mask``, both are real tokens. A
    text's loss is the mean (``reduction="sum"``: the total) of its scored targets' NLL (natural
    log) over every row of the batch it appears in. A text with no scored target gets NaN. No
    host synchronisation (safe at every training step).

    Args:
        logits: ``[R, T, V]`` logits, or the model's output (an object or dict with ``logits``).
            An output that holds a KV cache for a batch with ``position_ids`` is refused (see
            :class:`PackingCollator`: flatten mode needs ``use_cache=False``).
        batch: the batch of :class:`PackingCollator`, whole (``text_ids`` and ``index`` included).
        labels_key: the batch key of the labels.
        reduction: ``"mean"`` or ``"sum"`` over each text's scored targets.
        with_correct: also return whether every scored target of the text is the argmax of its
            logits (False for a text with nothing scored), for the tracker's ``sample_correct``.

    Returns:
        ``(loss [N] float32, index [N] int64)``: ``index`` is ``batch["index"]``, the dataset
        indices of the texts, ready for ``LossTrajectoryTracker(source="step")``'s ``sample_index``.
        With ``with_correct=True``, ``(loss, index, correct [N] bool)``.

    Raises:
        TypeError: a batch without ``text_ids``/``index`` (packed some other way).
        ValueError: shapes that do not line up; a KV cache in flatten mode; an unknown ``reduction``.

    Example:
        >>> batch = PackingCollator(6, pad_id=0)([(0, [1, 2, 3]), (1, [1, 2])])
        >>> loss, index = packed_text_losses(torch.zeros(1, 6, 4), batch)  # uniform over 4 tokens
        >>> [round(v, 4) for v in loss.tolist()], index.tolist()
        ([1.3863, 1.3863], [0, 1])
    """
    check_reduction(reduction)
    labels, text_ids, index = _packed_parts(batch, labels_key)
    _check_no_cache(logits, batch)
    tensor = output_logits(logits, source="`logits`", fix="pass the step's `[R, T, V]` logits (`out.logits`)")
    if tensor.dim() != 3 or tuple(tensor.shape[:2]) != tuple(labels.shape):
        raise ValueError(
            f"packed_text_losses needs logits [R, T, V] matching `{TEXT_IDS_KEY}` {tuple(text_ids.shape)}, got "
            f"{tuple(tensor.shape)}"
        )
    valid, target = _scored_pairs(labels, text_ids, batch.get("attention_mask"))
    if index.numel() == 0:
        empty = torch.zeros(0, dtype=torch.float32, device=labels.device)
        return (empty, index, empty.bool()) if with_correct else (empty, index)
    scores = tensor[:, :-1].float()
    nll = torch.logsumexp(scores, dim=-1) - scores.gather(-1, target[..., None])[..., 0]
    order, perm = index.sort()
    owner = text_ids[:, :-1]
    pos = torch.searchsorted(order, owner.contiguous()).clamp_max(index.numel() - 1)
    valid = valid & (order[pos] == owner)  # a text not in `index` (a hand-made batch) is left out
    slot = torch.where(valid, perm[pos], torch.zeros_like(pos)).reshape(-1)

    def per_text(values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(index.numel(), dtype=torch.float32, device=labels.device)
        return out.scatter_add_(
            0, slot, torch.where(valid, values.float(), torch.zeros_like(nll)).reshape(-1)
        )

    total, count = per_text(nll), per_text(valid)
    out = total / count.clamp_min(1) if reduction == "mean" else total
    loss = torch.where(count > 0, out, torch.full_like(out, float("nan")))
    if not with_correct:
        return loss, index
    wrong = per_text(tensor[:, :-1].argmax(dim=-1) != target)
    return loss, index, (wrong == 0) & (count > 0)


def _scored_pairs(
    labels: torch.Tensor, text_ids: torch.Tensor, mask: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which targets ``t + 1`` are scored from ``t`` (same text, label not -100, both real), and the targets."""
    owner, target = text_ids[:, :-1], labels[:, 1:]
    valid = (target != IGNORE_INDEX) & (owner >= 0) & (text_ids[:, 1:] == owner)
    if isinstance(mask, torch.Tensor):
        real = mask.to(labels.device) != 0
        valid = valid & real[:, 1:] & real[:, :-1]
    return valid, target.masked_fill(~valid, 0).long()
