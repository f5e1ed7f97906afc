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
import inspect
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from memcallbacks.data.indexed import IndexedDataset, split_index

__all__ = [
    "SampleLossFn",
    "causal_lm_sample_loss",
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


_LABEL_KEYS = ("labels", "label", "y", "target", "targets")
_REDUCTIONS = ("mean", "sum")
_HF_FIX = (
    "Pass `sample_loss_fn=memcallbacks.hf.causal_lm_sample_loss_fn()` (next-token loss, labels shifted by one), "
    "`memcallbacks.hf.token_sample_loss_fn()` (labels aligned with the logits, no shift), or your own "
    "`sample_loss_fn(module, batch) -> Tensor[B]` (reduction='none')"
)


def check_reduction(reduction: Any) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"`reduction` must be 'mean' (average NLL over each sample's scored tokens) or 'sum' "
            f"(their total), got {reduction!r}"
        )
    return str(reduction)


def _split_xy(batch: Any) -> tuple[Any, torch.Tensor]:
    if isinstance(batch, Mapping):
        for xk in ("x", "input", "inputs"):
            if xk in batch:
                for yk in _LABEL_KEYS:
                    if yk in batch:
                        return batch[xk], batch[yk]
        raise TypeError(
            f"the default sample_loss_fn cannot find inputs and targets in a dict batch with keys "
            f"{sorted(batch)}; expected 'x'/'y' (or 'input'/'target'), or Hugging Face style 'input_ids' "
            "with 'labels'. Pass `sample_loss_fn=lambda module, batch: F.cross_entropy(module(...), ..., "
            "reduction='none')`."
        )
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(
        f"the default sample_loss_fn expects `(x, y)` batches, got {type(batch).__name__}"
        f"{' of length ' + str(len(batch)) if isinstance(batch, (list, tuple)) else ''}. "
        "Pass `sample_loss_fn(module, batch) -> Tensor[B]` (use reduction='none')."
    )


def output_logits(out: Any) -> torch.Tensor:
    logits = out.get("logits", out) if isinstance(out, Mapping) else getattr(out, "logits", out)
    if isinstance(logits, (list, tuple)) and logits:
        logits = logits[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"the default sample_loss_fn needs the module to return logits (a Tensor, a tuple whose first "
            f"item is the logits, or an object/dict with `logits`), got {type(out).__name__}; pass `sample_loss_fn`"
        )
    return logits


def _accepts_keyword(module: Any, name: str) -> bool:
    forward = getattr(module, "forward", module)
    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def hf_forward(module: Any, batch: Mapping[str, Any]) -> Any:
    """Calls ``module`` the Hugging Face way, without labels (the model must not compute its own loss)."""
    input_ids = batch["input_ids"]
    if not _accepts_keyword(module, "input_ids"):
        return module(input_ids)
    kwargs: dict[str, Any] = {"input_ids": input_ids}
    mask = batch.get("attention_mask")
    if mask is not None and _accepts_keyword(module, "attention_mask"):
        kwargs["attention_mask"] = mask
    return module(**kwargs)


def _is_hf_non_causal(module: Any) -> str | None:
    """The class name of the Hugging Face model in ``module`` when it is known not to be a causal LM."""
    if "transformers" not in sys.modules:  # nothing can be a PreTrainedModel without transformers imported
        return None
    from memcallbacks.hf import find_hf_model, is_causal_lm

    model = find_hf_model(module)
    if model is None or is_causal_lm(model):
        return None
    return type(model).__name__


def causal_lm_sample_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    shift: bool = True,
    reduction: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample next-token NLL of a causal LM, Hugging Face conventions, and per-sample correctness.

    With ``shift=True`` the logits at position ``t`` score ``labels[:, t + 1]`` (what
    ``transformers`` causal LMs do inside their own loss). A label of ``-100`` or an
    ``attention_mask`` of 0 at the scored position leaves the token out. ``reduction="mean"``
    averages the NLL (natural log) over each sample's scored tokens, ``"sum"`` adds them up
    (the sequence's log-perplexity). A sample with no scored token gets NaN, never a
    loss that would read as "memorised".

    Args:
        logits: ``[B, T, V]``.
        labels: ``[B, T]`` integer targets.
        attention_mask: ``[B, T]`` (1 = real token), optional.
        shift: score ``labels[t + 1]`` with the logits at ``t`` (False: labels already aligned).
        reduction: ``"mean"`` or ``"sum"`` over each sample's scored tokens.

    Returns:
        ``(loss [B] float32, correct [B] bool)``: ``correct`` is true when the argmax of every
        scored position is its label (false for a sample with nothing scored).

    Raises:
        ValueError: shapes that do not line up; an unknown ``reduction``.

    Example:
        >>> logits = torch.zeros(1, 3, 4)  # uniform over 4 tokens
        >>> loss, _ = causal_lm_sample_loss(logits, torch.tensor([[1, 2, -100]]))
        >>> round(float(loss[0]), 4)  # one scored token (2), log 4
        1.3863
    """
    check_reduction(reduction)
    if logits.dim() != 3 or labels.dim() != 2 or tuple(logits.shape[:2]) != tuple(labels.shape):
        raise ValueError(
            f"a causal-LM loss needs logits [B, T, V] and labels [B, T] of the same B and T, got logits "
            f"{tuple(logits.shape)} and labels {tuple(labels.shape)}. {_HF_FIX}."
        )
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(labels.shape):
        raise ValueError(
            f"`attention_mask` has shape {tuple(attention_mask.shape)}, labels {tuple(labels.shape)}; "
            "they must match"
        )
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
        attention_mask = attention_mask[:, 1:] if attention_mask is not None else None
    valid = labels != -100
    if attention_mask is not None:
        valid = valid & (attention_mask != 0)
    targets = labels.masked_fill(~valid, 0).long()
    tok = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")  # [B, T']
    tok = torch.where(valid, tok, torch.zeros_like(tok))
    n = valid.sum(dim=1)
    total = tok.sum(dim=1)
    nan = torch.full_like(total, float("nan"))
    loss = torch.where(n > 0, total / n.clamp_min(1) if reduction == "mean" else total, nan)
    correct = ((logits.argmax(dim=-1) == labels) | ~valid).all(dim=1) & (n > 0)
    return loss, correct


def _per_sample_ce(
    logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.dim() == 2 and y.dim() == 1:
        loss = F.cross_entropy(logits.float(), y, reduction="none")
        correct = logits.argmax(dim=-1) == y
        return loss, correct
    if logits.dim() == 3 and y.dim() == 2:  # (x, y) batches: y holds each position's target already
        return causal_lm_sample_loss(logits, y, shift=False, reduction=reduction)
    raise ValueError(
        f"the default sample_loss_fn handles logits [B, C] with targets [B], or logits [B, T, V] with "
        f"targets [B, T]; got logits {tuple(logits.shape)} and targets {tuple(y.shape)}. "
        "Pass `sample_loss_fn(module, batch) -> Tensor[B]`."
    )


def _hf_loss_and_correct(
    module: Any, batch: Mapping[str, Any], reduction: str
) -> tuple[torch.Tensor, torch.Tensor]:
    input_ids = batch["input_ids"]
    label_key = next((k for k in _LABEL_KEYS if k in batch), None)
    if label_key is None:
        raise TypeError(
            f"the default sample_loss_fn found `input_ids` but no `labels` in the batch (keys {sorted(batch)}), "
            f"so it cannot tell a language-modelling batch from another task. {_HF_FIX}."
        )
    labels = batch[label_key]
    in_shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else None
    lab_shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else None
    if in_shape is None or lab_shape is None:
        raise TypeError(
            f"the default sample_loss_fn needs `input_ids` and `{label_key}` tensors, got "
            f"{type(input_ids).__name__} and {type(labels).__name__} (collate the batch into tensors)"
        )
    causal = len(lab_shape) == 2 and lab_shape == in_shape
    if not causal and len(lab_shape) != 1:
        raise ValueError(
            f"the default sample_loss_fn reads `{label_key}` of shape {lab_shape} with `input_ids` of shape "
            f"{in_shape} as neither convention it knows: `{label_key}` of the same shape as `input_ids` "
            f"(causal LM) or of shape [B] (classification). {_HF_FIX}."
        )
    if causal:
        other = _is_hf_non_causal(module)
        if other is not None:
            raise ValueError(
                f"the batch looks like causal language modelling (`{label_key}` has the shape of `input_ids`, "
                f"{in_shape}), but the model is a {other}, not a causal LM, so shifting the labels by one "
                f"token would be wrong. {_HF_FIX}."
            )
    logits = output_logits(hf_forward(module, batch))
    if causal:
        if logits.dim() != 3 or tuple(logits.shape[:2]) != in_shape:
            raise ValueError(
                f"`{label_key}` has the shape of `input_ids` {in_shape} (a causal-LM batch), so logits "
                f"[B, T, V] were expected, got {tuple(logits.shape)}. {_HF_FIX}."
            )
        return causal_lm_sample_loss(logits, labels, batch.get("attention_mask"), reduction=reduction)
    if logits.dim() != 2 or logits.shape[0] != lab_shape[0]:
        raise ValueError(
            f"`{label_key}` has shape {lab_shape} (classification), so logits [B, C] were expected, got "
            f"{tuple(logits.shape)}. {_HF_FIX}."
        )
    return _per_sample_ce(logits, labels)


def _loss_and_correct(module: Any, batch: Any, reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    check_reduction(reduction)
    if isinstance(batch, Mapping) and "input_ids" in batch:
        return _hf_loss_and_correct(module, batch, reduction)
    x, y = _split_xy(batch)
    return _per_sample_ce(output_logits(module(x)), y, reduction)


def default_sample_loss_fn(module: Any, batch: Any, *, reduction: str = "mean") -> torch.Tensor:
    """Per-sample cross-entropy (natural log) of the module's logits, ``reduction="none"`` style.

    Batch conventions:

    * ``(x, y)`` (or a dict with ``x``/``y``): logits from ``module(x)``; ``[B, C]`` logits
      with ``y`` ``[B]`` give ``F.cross_entropy(logits, y, reduction="none")``; ``[B, T, V]``
      logits with ``y`` ``[B, T]`` (targets already aligned with the positions) give the
      mean over positions whose target is not -100.
    * a dict with ``input_ids`` and ``labels`` (Hugging Face): the module is called as
      ``module(input_ids=..., attention_mask=...)`` (never with ``labels``, so a
      ``transformers`` model does not compute its own loss; a module whose ``forward`` takes
      no ``input_ids`` keyword gets ``module(input_ids)``). ``labels`` of the shape of
      ``input_ids`` is a causal-LM batch: the next-token NLL, logits at ``t`` scoring
      ``labels[t + 1]``, leaving out -100 labels and ``attention_mask == 0``, averaged over
      each sample's scored tokens (see :func:`causal_lm_sample_loss`). ``labels`` ``[B]``
      with ``[B, C]`` logits is classification. Anything else raises an error that names
      the ``sample_loss_fn`` to pass.

    The module may return a tensor, a tuple (logits first) or an object/dict with ``logits``.

    Args:
        module: the model.
        batch: one batch, on the module's device.
        reduction: ``"mean"`` (default) or ``"sum"`` over a sequence's scored tokens; pass it
            with ``functools.partial(default_sample_loss_fn, reduction="sum")``.

    Returns:
        float32 Tensor ``[B]`` (NaN for a sequence with no scored token).

    Raises:
        TypeError, ValueError: a batch or output that matches no convention.

    Example:
        >>> net = torch.nn.Linear(3, 2)
        >>> default_sample_loss_fn(net, (torch.zeros(4, 3), torch.tensor([0, 1, 0, 1]))).shape
        torch.Size([4])
    """
    return _loss_and_correct(module, batch, reduction)[0]


def default_sample_loss_and_correct_fn(
    module: Any, batch: Any, *, reduction: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`default_sample_loss_fn`, also returning whether the argmax prediction is right.

    For sequences, a sample is correct when every scored position's argmax is its target.
    """
    return _loss_and_correct(module, batch, reduction)


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
    :func:`memcallbacks._dist.columns_by_index` rebuild the full vectors in dataset order, padding
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
    from memcallbacks import _dist

    if device is None:
        p = next(module.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    world = _dist.world_size(trainer) if trainer is not None else 1
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
    gathered = _dist.gather_concat(trainer, rows.to(device)).cpu()
    columns, _ = _dist.columns_by_index(gathered[:, 0].long(), gathered[:, 1:], size=n)
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
