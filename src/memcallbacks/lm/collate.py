"""Padding token-id rows of varying length into one causal-LM batch (pure: no Lightning).

A tokenized ``datasets.Dataset`` yields rows such as ``{"input_ids": [...], "attention_mask": [...]}``
with lists of different lengths; a plain list of token-id lists (or of 1-D integer tensors) is the
same thing without the dict. :class:`TokenRowCollator` pads such rows on the right into
``{"input_ids", "attention_mask", "labels"}`` with ``labels = -100`` at padding, the batch the
default causal-LM loss (:func:`memcallbacks.lm.losses.default_sample_loss_fn`) scores exactly like
each row alone, unpadded.

Example:
    >>> collate = TokenRowCollator(pad_id=0)
    >>> batch = collate([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}])
    >>> batch["input_ids"].tolist(), batch["labels"].tolist()
    ([[5, 6, 7], [8, 9, 0]], [[5, 6, 7], [8, 9, -100]])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from memcallbacks.lm.losses import LABEL_KEYS
from memcallbacks.lm.model import find_hf_model

__all__ = ["TokenRowCollator", "check_pad_id", "is_token_row", "model_pad_id", "row_length", "token_ids_of"]

IGNORE_INDEX = -100


def _is_id_sequence(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.dim() == 1 and not value.is_floating_point() and not value.is_complex()
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and np.issubdtype(value.dtype, np.integer)
    if isinstance(value, list):
        return all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    return False


def is_token_row(item: Any) -> bool:
    """Whether ``item`` is a row of token ids: a dict with a 1-D ``input_ids``, a list of ints or a 1-D int tensor.

    Tuples are never rows (they are ``(x, y)`` pairs).

    Example:
        >>> is_token_row({"input_ids": [1, 2]}), is_token_row([3, 4, 5]), is_token_row((3, 4))
        (True, True, False)
    """
    if isinstance(item, Mapping):
        return "input_ids" in item and _is_id_sequence(item["input_ids"])
    return _is_id_sequence(item) and not (isinstance(item, list) and len(item) == 0)


def token_ids_of(item: Any) -> Any:
    """The token ids of a row (its ``input_ids`` for a dict row)."""
    return item["input_ids"] if isinstance(item, Mapping) else item


def row_length(item: Any) -> int:
    """The number of tokens of a row."""
    return len(token_ids_of(item))


def model_pad_id(module: Any, tokenizer: Any = None) -> int | None:
    """The pad id known for a model: the tokenizer's ``pad_token_id``, else the model config's, else None.

    Args:
        module: a Hugging Face model or a module holding one (:func:`memcallbacks.lm.model.find_hf_model`).
        tokenizer: optional tokenizer with ``pad_token_id``.
    """
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    if pad is None and module is not None:
        model = find_hf_model(module)
        pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    return None if pad is None else int(pad)


def check_pad_id(value: Any) -> int | None:
    """A monitor's ``pad_id=`` argument: ``None`` or a non-negative int.

    Raises:
        TypeError: ``value`` is not an int.
        ValueError: ``value`` is negative.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"`pad_id` must be None or an int token id, got {value!r}; e.g. pad_id=tokenizer.pad_token_id"
        )
    if value < 0:
        raise ValueError(f"`pad_id` must be a token id >= 0, got {value}; e.g. pad_id=tokenizer.pad_token_id")
    return int(value)


def _as_long(value: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(value) if isinstance(value, list) else value, dtype=torch.long).reshape(
        -1
    )


def _pad(rows: Sequence[torch.Tensor], width: int, fill: int) -> torch.Tensor:
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : row.numel()] = row
    return out


class TokenRowCollator:
    """Collate token-id rows of varying length into a right-padded causal-LM dict batch.

    The batch: ``input_ids`` padded with ``pad_id``, ``attention_mask`` (the row's own, else 1 on its
    tokens) padded with 0, ``labels`` (the row's own token-level labels, else its ``input_ids``) padded
    with -100, and ``position_ids`` padded with 0 when rows carry them. A scalar label of a dict row
    (``label``/``labels`` of a classification dataset) is stacked into ``[B]``. Other keys (e.g. a
    ``text`` column) are left out: the default loss reads none of them. Picklable (DataLoader workers).

    Args:
        pad_id: the id written at padding positions (never scored: masked out and labelled -100).

    Raises:
        TypeError: ``pad_id`` is not an int, or an item is not a token-id row.
    """

    def __init__(self, pad_id: int) -> None:
        checked = check_pad_id(pad_id)
        if checked is None:
            raise TypeError("`pad_id` must be an int token id, got None; e.g. pad_id=tokenizer.pad_token_id")
        self.pad_id = checked

    def __repr__(self) -> str:
        return f"TokenRowCollator(pad_id={self.pad_id})"

    def __call__(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        for item in items:
            if not is_token_row(item):
                raise TypeError(
                    "TokenRowCollator pads token-id rows (a dict with 1-D `input_ids`, a list of ints or a 1-D "
                    f"integer tensor), got {type(item).__name__}; pass a `collate_fn` for other items"
                )
        ids = [_as_long(token_ids_of(item)) for item in items]
        width = max(row.numel() for row in ids)
        dicts = [item if isinstance(item, Mapping) else {} for item in items]
        masks = [
            _as_long(d["attention_mask"]) if "attention_mask" in d else torch.ones_like(r)
            for d, r in zip(dicts, ids)
        ]
        batch = {"input_ids": _pad(ids, width, self.pad_id), "attention_mask": _pad(masks, width, 0)}
        label_key = next((k for k in LABEL_KEYS if dicts[0].get(k) is not None), None)
        first = None if label_key is None else dicts[0][label_key]
        if first is not None and np.ndim(first) == 0:  # one label per row: classification
            batch[str(label_key)] = torch.as_tensor([d[label_key] for d in dicts])
        else:
            labels = [_as_long(d[label_key]) if label_key in d else r for d, r in zip(dicts, ids)]
            batch["labels"] = _pad(labels, width, IGNORE_INDEX)
        if "position_ids" in dicts[0]:
            batch["position_ids"] = _pad([_as_long(d["position_ids"]) for d in dicts], width, 0)
        return batch
