"""Argument validation and error messages of :class:`~memcallbacks.callbacks.trajectory.LossTrajectoryTracker`.

Every check of the tracker's arguments (:func:`validate_init`), the check that the training
DataLoader's ``collate_fn`` keeps :class:`~memcallbacks.data.indexed.IndexedDataset`'s index, and
the message of a ``training_step`` that returns no per-sample losses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from memcallbacks.callbacks.membership import check_reference as check_reference_model
from memcallbacks.data.store import check_memory_budget
from memcallbacks.metrics.dynamics import MEMORISATION_SCORES
from memcallbacks.utilities.validation import check_choice, check_float_array, check_int, check_seed

__all__ = [
    "ID_SPACES",
    "SOURCES",
    "check_collate_keeps_index",
    "is_model_reference",
    "missing_outputs_message",
    "validate_init",
]

SOURCES = ("step", "probe")
ID_SPACES = ("dense", "hashed")


def _is_integer_tensor(tensor: torch.Tensor) -> bool:
    return not (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool)


def _holds_values(batch: Any, values: list[int], depth: int = 3) -> bool:
    """Whether ``batch`` (nested dicts/lists/tuples) holds an integer vector equal to ``values``."""
    if isinstance(batch, (torch.Tensor, np.ndarray)):
        integer = batch.dtype.kind in "iu" if isinstance(batch, np.ndarray) else _is_integer_tensor(batch)
        return integer and tuple(batch.shape) == (len(values),) and batch.tolist() == values
    if depth == 0:
        return False
    if isinstance(batch, Mapping):
        return any(_holds_values(v, values, depth - 1) for v in batch.values())
    if isinstance(batch, (list, tuple)):
        if len(batch) == len(values) and all(type(v) is int for v in batch) and list(batch) == values:
            return True
        return any(_holds_values(v, values, depth - 1) for v in batch)
    return False


def check_collate_keeps_index(loader: Any) -> None:
    """Before the first step: the loader's collate function keeps the index IndexedDataset adds to each item.

    Collates the last two items as the DataLoader would and looks for their positions anywhere in
    the batch (under any key). A collate function that fails on them is left for training to report.

    Raises:
        ValueError: the positions are nowhere in the collated batch.
    """
    dataset = loader.dataset
    n = len(dataset)
    positions = [n - 1, n - 2] if n >= 2 else [0]
    try:
        batch = loader.collate_fn(dataset.__getitems__(positions))
    except Exception:
        return
    if _holds_values(batch, positions):
        return
    name = getattr(loader.collate_fn, "__name__", type(loader.collate_fn).__name__)
    raise ValueError(
        f"LossTrajectoryTracker: the training DataLoader's collate_fn ({name}) dropped the sample index: the "
        "dataset is wrapped in IndexedDataset, which adds an 'index' key to dict items (or makes (index, "
        "item) pairs), but the collated batch holds no index. Keep it in your collate function, e.g.\n\n"
        "    def collate(items):\n"
        '        batch = my_collate([{k: v for k, v in it.items() if k != "index"} for it in items])\n'
        '        batch["index"] = torch.tensor([it["index"] for it in items])\n'
        "        return batch\n\n"
        "then `index, batch = split_index(batch)` in training_step"
    )


def _check_key(name: str, value: Any, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise TypeError(
            f"`{name}` must be a non-empty string (a key of the dict training_step returns), got {value!r}"
            + ("; or None" if optional else "")
        )
    return value


def _check_keys(loss_key: Any, index_key: Any, correct_key: Any) -> None:
    _check_key("loss_key", loss_key)
    _check_key("index_key", index_key)
    _check_key("correct_key", correct_key, optional=True)
    if loss_key == "loss":
        raise ValueError(
            "`loss_key` must not be 'loss': Lightning rescales `loss` under gradient accumulation and it "
            "is a batch mean; return per-sample losses under their own key, e.g. "
            "'sample_loss': per_sample.detach()"
        )
    if len({loss_key, index_key, correct_key} - {None}) < 2 + (correct_key is not None):
        raise ValueError(
            f"`loss_key`, `index_key` and `correct_key` must differ, got {loss_key!r}, {index_key!r}, "
            f"{correct_key!r}"
        )


def _check_probe_args(source: Any, probe_dataset: Any, sample_loss_fn: Any, collate_fn: Any) -> None:
    for arg, fn in (("sample_loss_fn", sample_loss_fn), ("collate_fn", collate_fn)):
        if fn is not None and not callable(fn):
            raise TypeError(f"`{arg}` must be a callable or None, got {fn!r}")
    if source == "step" and (probe_dataset is not None or sample_loss_fn is not None):
        raise ValueError(
            "`probe_dataset`/`sample_loss_fn` are used with source='probe' only; got source='step'. "
            "Pass source='probe' to evaluate a probe set."
        )
    if probe_dataset is not None:
        if isinstance(probe_dataset, IterableDataset) or not hasattr(probe_dataset, "__len__"):
            raise TypeError(
                f"`probe_dataset` must be a map-style dataset with a length, got {type(probe_dataset).__name__}"
            )
        if len(probe_dataset) == 0:
            raise ValueError("`probe_dataset` has 0 samples; pass a non-empty dataset to evaluate")


def _check_id_space(id_space: Any, *, source: Any, num_samples: Any, reference: Any) -> None:
    check_choice("id_space", id_space, ID_SPACES)
    if id_space == "dense":
        return
    if source != "step":
        raise ValueError(
            f"`id_space='hashed'` maps the sample ids training_step returns to rows; it needs source='step', "
            f"got source={source!r}. Use id_space='dense' with a probe set"
        )
    if num_samples is None:
        raise ValueError(
            "`id_space='hashed'` needs `num_samples=`: the number of distinct sample ids the tracker keeps "
            "rows for (e.g. the number of items a max_steps run visits)"
        )
    if reference is not None:
        raise ValueError(
            "`reference=` is indexed by dataset position and cannot follow hashed ids; pass id_space='dense' "
            "(IndexedStream without id_fn) to use a reference"
        )


def is_model_reference(reference: Any) -> bool:
    """``reference`` names a model to evaluate once at fit start (a string or a module), not given losses."""
    return isinstance(reference, (str, torch.nn.Module))


def _check_reference_arg(reference: Any, *, source: Any, score: Any) -> None:
    """``reference=``: per-sample losses, or (probe source) ``"fit_start"``, ``"peft_base"`` or a module."""
    if score == "calibrated_loss" and reference is None:
        raise ValueError(
            "`score='calibrated_loss'` needs `reference=`: with source='probe', reference='fit_start' (the "
            "weights before the first step, evaluated once), 'peft_base' or a reference model; or one "
            "reference loss per training sample (dataset index order), e.g. "
            "memcallbacks.metrics.zlib_entropy(texts) or a reference model's losses"
        )
    if reference is None:
        return
    if not is_model_reference(reference):
        check_float_array(
            reference, "reference", allow_nan=True, hint="; pass one reference loss per sample (NaN: none)"
        )
        return
    check_reference_model(reference)
    if source != "probe":
        what = repr(reference) if isinstance(reference, str) else type(reference).__name__
        raise ValueError(
            f"`reference={what}` evaluates the tracked samples once before the first step, which with "
            "source='step' would be one extra pass over the whole training set; pass source='probe' (the "
            "probe set is evaluated once at fit start as the reference), or compute the reference losses "
            "once yourself (e.g. memcallbacks.callbacks.probes.evaluate_sample_losses(base_model, "
            "train_dataset)) and pass them as an array, one per training sample in dataset index order"
        )


def validate_init(
    *,
    source: Any,
    num_samples: Any,
    loss_key: Any,
    index_key: Any,
    correct_key: Any,
    probe_dataset: Any,
    num_probes: Any,
    seed: Any,
    sample_loss_fn: Any,
    batch_size: Any,
    collate_fn: Any,
    memory_budget_bytes: Any,
    num_top: Any,
    score: Any,
    reference: Any,
    id_space: Any = "dense",
) -> None:
    """Every argument check of :class:`LossTrajectoryTracker` (the dtype is checked by the store)."""
    check_choice("source", source, SOURCES)
    _check_id_space(id_space, source=source, num_samples=num_samples, reference=reference)
    if num_samples is not None:
        check_int("num_samples", num_samples, minimum=1, hint="or None to use the training dataset's length")
    _check_keys(loss_key, index_key, correct_key)
    check_int("num_probes", num_probes, minimum=1, hint="the size of the random probe subset")
    check_seed("seed", seed)
    check_int("batch_size", batch_size, minimum=1)
    check_memory_budget(memory_budget_bytes)
    check_int("num_top", num_top, minimum=0, hint="use 0 to emit no table at fit end")
    check_choice("score", score, MEMORISATION_SCORES)
    _check_reference_arg(reference, source=source, score=score)
    _check_probe_args(source, probe_dataset, sample_loss_fn, collate_fn)


def missing_outputs_message(
    outputs: Any, batch: Any = None, *, loss_key: str, index_key: str, train_indexed: bool = False
) -> str:
    """The error of a step whose ``training_step`` returned no per-sample losses and indices: the fix, in the
    form of the batch (packed texts, a language-model batch, ``(x, y)`` pairs)."""
    got = (
        f"a dict with keys {sorted(map(str, outputs))}"
        if isinstance(outputs, Mapping)
        else type(outputs).__name__
    )
    if isinstance(batch, Mapping) and "text_ids" in batch:  # packed texts (PackingCollator): per text
        lines = (
            "    # from memcallbacks import packed_model_inputs, packed_text_losses\n"
            "    out = self.model(**packed_model_inputs(batch), use_cache=False)\n"
            "    losses, index = packed_text_losses(out, batch)  # one loss per text, no second forward\n"
            f'    return {{"loss": out.loss, "{loss_key}": losses.detach(), "{index_key}": index}}'
        )
    elif isinstance(batch, Mapping) and "input_ids" in batch:  # a language-model batch: its own form
        lines = (
            "    # from memcallbacks.lm.losses import causal_lm_step_losses, position_ids_from_mask\n"
            "    index, batch = split_index(batch)\n"
            '    out = self.model(**batch, position_ids=position_ids_from_mask(batch["attention_mask"]))\n'
            "    per_sample = causal_lm_step_losses(out.logits, batch)  # no second forward\n"
            f'    return {{"loss": out.loss, "{loss_key}": per_sample.detach(), "{index_key}": index}}'
        )
    else:
        lines = (
            "    index, (x, y) = split_index(batch)\n"
            '    per_sample = F.cross_entropy(self(x), y, reduction="none")\n'
            f'    return {{"loss": per_sample.mean(), "{loss_key}": per_sample.detach(), '
            f'"{index_key}": index}}'
        )
    wrap = (
        "The training set is wrapped in IndexedDataset already (`DataLoader(IndexedDataset(dataset), ...)`): "
        "return its index"
        if train_indexed
        else "Wrap the training set, `DataLoader(IndexedDataset(dataset), ...)`, and return them"
    )
    return (
        f"LossTrajectoryTracker(source='step') reads per-sample losses and sample indices from the dict "
        f"that training_step returns, but got {got}. {wrap} from training_step:\n\n"
        f"{lines}\n\n"
        "HINT: or use LossTrajectoryTracker(source='probe') to evaluate a probe set instead."
    )
