"""Probe evaluation: per-sample losses of a fixed dataset, in eval mode, batched.

The "probe" source of per-sample losses (docs/architecture.md, "Data flow"). Members and non-members are
measured the same way: eval mode, ``torch.no_grad()``, the module's device, batches
collated by the default collate (or the user's). Train mode is restored afterwards.

The default per-sample loss is ``F.cross_entropy(logits, y, reduction="none")`` (never the
true-class logit; docs/architecture.md, "Known pitfalls"), averaged over sequence positions for ``[B, T, V]``
logits (positions whose target is ``ignore_index`` = -100 are left out).
A Hugging Face batch (a dict with ``input_ids`` and ``labels``) gets the causal-LM loss with
the one-token shift (see :func:`default_sample_loss_fn`).

Probe resolution (:class:`ProbeResolver`, shared by every monitor with member and non-member
probes): the members are the ``members=`` dataset, else the training dataset behind
``trainer.train_dataloader``; the non-members are the ``nonmembers=`` dataset, else the validation
dataset (:func:`validation_dataset`: the loaded validation dataloaders, else the validation data
source of the fit loop, which also finds loaders passed to ``fit`` before the first validation
run, e.g. with ``check_val_every_n_epoch > 1`` or ``num_sanity_val_steps=0``, else the
datamodule's ``val_dataloader()``). One draw rule for every monitor, so the same ``seed`` picks the
same samples everywhere: from a discovered training dataset, ``seeded_indices(len, num_probes,
seed)``; from a discovered validation dataset, its first ``num_probes`` samples; a dataset given as
an argument is used whole (or, with ``draw_given=True``, drawn by the same two rules). The indices
are drawn once, kept in the checkpoint (:meth:`ProbeResolver.state_dict`) and checked against the
data on resume, together with a digest of the probe contents (:func:`probe_digest`), so a resume given
other data of the same size raises instead of measuring other samples under the same indices.

Example:
    >>> resolver = ProbeResolver("MyMonitor", num_probes=100, seed=0)
    >>> members, nonmembers = resolver.resolve(trainer)  # doctest: +SKIP
    >>> state = resolver.state_dict()  # into the monitor's state_dict  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Subset

from memcallbacks.data.indexed import IndexedDataset, split_index
from memcallbacks.lm.collate import TokenRowCollator, is_token_row, model_pad_id, row_length, token_ids_of
from memcallbacks.lm.losses import (
    default_sample_loss_and_correct_fn,
    default_sample_loss_fn,
)
from memcallbacks.lm.model import evaluating
from memcallbacks.utilities import compat

__all__ = [
    "SampleLossFn",
    "default_sample_loss_fn",
    "default_sample_loss_and_correct_fn",
    "as_probe_dataset",
    "evaluate_sample_losses",
    "evaluate_sharded",
    "probe_collate",
    "full_precision",
    "item_shapes",
    "item_structure",
    "random_subset",
    "seeded_indices",
    "shard_positions",
    "dataset_of",
    "check_sample_losses",
    "unwrap_loaders",
    "ProbeResolver",
    "probe_digest",
    "training_dataset",
    "validation_dataset",
]

SampleLossFn = Callable[[Any, Any], Any]
"""``sample_loss_fn(module, batch) -> Tensor[B]`` (or ``(Tensor[B], BoolTensor[B])`` with correctness)."""


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
        return plugin.forward_context()
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
    pad_id: int | None = None,
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
        collate_fn: collate function for the loader (default: :func:`probe_collate`'s choice: padding
            for token-id rows, else PyTorch's default collate).
        trainer: when given, the Trainer's precision plugin context is entered, but autocast is
            always switched off (see :func:`full_precision`): probes are measured in float32
            under ``"16-mixed"``/``"bf16-mixed"``.
        pad_id: pad id for token-id rows (default: the model's; see :func:`probe_collate`).

    Returns:
        ``(losses, correct)``: float32 CPU tensor ``[N]`` and a bool CPU tensor ``[N]`` or
        ``None`` when the loss function reports no correctness. One host transfer at the end.
    """
    if device is None:
        p = next(module.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    if not isinstance(dataset, DataLoader):
        collate_fn = probe_collate(dataset, collate_fn, pad_id=pad_id, module=module)
    loader = (
        dataset
        if isinstance(dataset, DataLoader)
        else DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    )
    indexed = isinstance(getattr(loader, "dataset", None), IndexedDataset)
    losses: list[torch.Tensor] = []
    corrects: list[torch.Tensor] = []
    with evaluating(module), full_precision(trainer, device):
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
    if not losses:
        return torch.zeros(0), None
    all_losses = torch.cat(losses).cpu()
    all_correct = torch.cat(corrects).cpu() if len(corrects) == len(losses) else None
    return all_losses, all_correct


def _first_item(dataset: Any) -> Any:
    data: Any = dataset.dataset if isinstance(dataset, DataLoader) else dataset
    try:
        if len(data) == 0:
            return None
        item = data[0]
    except (TypeError, IndexError, KeyError):
        return None
    if isinstance(data, IndexedDataset) or isinstance(getattr(data, "dataset", None), IndexedDataset):
        return None  # (index, item) pairs: the user's own collate convention
    return item


def probe_collate(
    dataset: Any,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    *,
    pad_id: int | None = None,
    module: Any = None,
    tokenizer: Any = None,
    owner: str = "the probe evaluation",
) -> Callable[[list[Any]], Any] | None:
    """The collate function a probe evaluation of ``dataset`` uses (``None``: PyTorch's default collate).

    The user's ``collate_fn`` when given. Otherwise, for token-id rows (:func:`memcallbacks.lm.collate.is_token_row`:
    rows of a tokenized ``datasets.Dataset``, lists of ints, 1-D integer tensors) a
    :class:`~memcallbacks.lm.collate.TokenRowCollator` that right-pads them, with ``pad_id``, else the
    tokenizer's or the model's pad id. Rows of equal-length tensors keep the default collate.

    Args:
        dataset: the probe dataset (its first item decides; rows are scanned for their lengths only
            when no pad id is known or for dict rows of tensors).
        collate_fn: the user's collate function.
        pad_id: the pad id given to the monitor.
        module: the model (its config's ``pad_token_id`` is used when known).
        tokenizer: a tokenizer with ``pad_token_id``.
        owner: the monitor, for the error message.

    Returns:
        The collate function, or ``None`` for PyTorch's default collate.

    Raises:
        ValueError: token-id rows of different lengths and no pad id known.
    """
    if collate_fn is not None:
        return collate_fn
    first = _first_item(dataset)
    if first is None or not is_token_row(first):
        return None
    stackable = not isinstance(token_ids_of(first), list)  # tensors: the default collate stacks equal lengths
    pad = pad_id if pad_id is not None else model_pad_id(module, tokenizer)
    if pad is not None and not stackable:
        return TokenRowCollator(pad)
    data: Any = dataset.dataset if isinstance(dataset, DataLoader) else dataset
    lengths = {row_length(data[i]) for i in range(len(data))}
    if (
        len(lengths) == 1
    ):  # nothing is padded: tensors keep the default collate (and the batches they always had)
        return None if stackable else TokenRowCollator(0 if pad is None else pad)
    if pad is None:
        raise ValueError(
            f"{owner}: the probes are token-id rows of different lengths ({min(lengths)} to {max(lengths)} tokens), "
            "so they are padded into batches, but no pad id is known (the model's config and tokenizer have no "
            "`pad_token_id`); pass `pad_id=` (e.g. pad_id=tokenizer.pad_token_id or tokenizer.eos_token_id; "
            "padding is never scored), or a `collate_fn`"
        )
    return TokenRowCollator(pad)


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
    pad_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sample losses of every item of ``dataset``, split across the ranks, the same on every rank.

    The one probe evaluation of memcallbacks under DDP: each rank evaluates its contiguous shard
    (:func:`shard_positions`) with :func:`evaluate_sample_losses` (eval mode, no grad,
    autocast off), then one all-gather of ``(position, loss, correct)`` rows and
    :func:`memcallbacks.utilities.distributed.columns_by_index` rebuild the full vectors in dataset order, padding
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
        pad_id: pad id for token-id rows (default: the model's; see :func:`probe_collate`).

    Returns:
        ``(losses, correct)``: float32 CPU tensor ``[N]`` in dataset order, and a bool CPU tensor
        ``[N]`` or ``None`` when the loss function reports no correctness. Identical on every rank.
    """
    from memcallbacks.utilities import distributed

    if device is None:
        p = next(module.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    collate_fn = probe_collate(dataset, collate_fn, pad_id=pad_id, module=module)
    world = distributed.world_size(trainer) if trainer is not None else 1
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
    gathered = distributed.gather_concat(trainer, rows.to(device)).cpu()
    columns, _ = distributed.columns_by_index(gathered[:, 0].long(), gathered[:, 1:], size=n)
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
    return value


def item_structure(item: Any) -> Any:
    """A comparable description of an item's container structure (not its sizes).

    Two probe sets batched or scored together must agree on it.
    """
    if is_token_row(item):  # rows of any length batch together (padded)
        return ("token_row", tuple(sorted(map(str, item))) if isinstance(item, Mapping) else ())
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
    """The shapes of the tensors/arrays in an item, in a fixed order (for the feature-shape check).

    A token-id row has none: rows of any length are padded into one batch.
    """
    if is_token_row(item):
        return []
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


def unwrap_loaders(loader: Any) -> Iterator[Any]:
    """Every DataLoader in ``loader`` (a DataLoader, a list or dict of them, or a ``CombinedLoader``), in order."""
    if loader is None:
        return
    if isinstance(loader, DataLoader):
        yield loader
    elif isinstance(loader, Mapping):
        for v in loader.values():
            yield from unwrap_loaders(v)
    elif isinstance(loader, Sequence):
        for v in loader:
            yield from unwrap_loaders(v)
    elif hasattr(loader, "flattened"):  # Lightning's CombinedLoader
        for v in loader.flattened:
            yield from unwrap_loaders(v)


def dataset_of(loader: Any) -> Dataset[Any] | None:
    """The dataset behind the first DataLoader in ``loader`` (a DataLoader, list, dict or CombinedLoader)."""
    for dl in unwrap_loaders(loader):
        ds = dl.dataset
        if isinstance(ds, IndexedDataset):
            return ds.dataset
        return ds
    return None


# -- probe resolution ------------------------------------------------------------------------


def training_dataset(trainer: Any, owner: str) -> Dataset[Any]:
    """The map-style dataset behind ``trainer.train_dataloader`` (an :class:`IndexedDataset` unwrapped).

    Raises:
        RuntimeError: no DataLoader or dataset behind it, naming ``owner`` and the ``members=`` fix.
        ValueError: the dataset is empty or has no length.
    """
    base = dataset_of(getattr(trainer, "train_dataloader", None))
    if base is None:
        raise RuntimeError(
            f"{owner} could not find the training dataset behind `trainer.train_dataloader`; pass the member "
            f"probe yourself: `{owner}(members=train_dataset, nonmembers=held_out_dataset)`"
        )
    if not hasattr(base, "__len__") or len(base) == 0:
        raise ValueError(
            f"{owner}: the training dataset is empty or has no length; pass `members=` a map-style dataset"
        )
    return base


def validation_dataset(trainer: Any, owner: str) -> Dataset[Any] | None:
    """The validation dataset (an :class:`IndexedDataset` unwrapped), or ``None`` when there is none.

    Looks at the loaded validation dataloaders, then asks the fit loop's validation data source
    (loaders passed to ``fit``, the module's or datamodule's ``val_dataloader()``: they are not loaded
    before the first validation run, e.g. with ``check_val_every_n_epoch > 1``), then the datamodule.
    """
    if trainer is None:
        return None
    ds = dataset_of(getattr(trainer, "val_dataloaders", None))
    if ds is None:
        try:
            source = compat.val_data_source(trainer)
            if source is not None and source.instance is not None and source.is_defined():
                ds = dataset_of(source.dataloader())
        except Exception as e:
            rank_zero_warn(f"{owner}: requesting the validation dataloader failed: {e!r}")
    if ds is None:
        dm = getattr(trainer, "datamodule", None)
        if dm is not None and callable(getattr(dm, "val_dataloader", None)):
            try:
                ds = dataset_of(dm.val_dataloader())
            except Exception:
                ds = None
    return ds


class ProbeResolver:
    """Member and non-member probe sets of one monitor: discovered, drawn once, kept across resume.

    Args:
        owner: the monitor's class name, for messages.
        members: the ``members=`` argument (a dataset or DataLoader; ``None``: the training data).
        nonmembers: the ``nonmembers=`` argument (``None``: the validation data).
        num_probes: how many samples a drawn probe set holds (all when the dataset is smaller).
        seed: seeds the member draw.
        item: what one item is, for messages (``"sample"``, ``"token sequence"``).
        require_nonmembers: raise when no non-members are found; else :meth:`resolve` returns ``None``.
        draw_given: draw ``num_probes`` from a given dataset too (else it is used whole).

    Raises:
        TypeError, ValueError: a ``members``/``nonmembers`` that is not a non-empty map-style dataset.
    """

    def __init__(
        self,
        owner: str,
        *,
        members: Any = None,
        nonmembers: Any = None,
        num_probes: int,
        seed: int,
        item: str = "sample",
        require_nonmembers: bool = True,
        draw_given: bool = False,
    ) -> None:
        self.owner = owner
        self.members_arg = as_probe_dataset("members", members, item=item)
        self.nonmembers_arg = as_probe_dataset("nonmembers", nonmembers, item=item)
        self.num_probes = int(num_probes)
        self.seed = int(seed)
        self.require_nonmembers = require_nonmembers
        self.draw_given = draw_given
        self.member_indices: np.ndarray | None = None
        """Indices of the members into their dataset (``None`` before the first :meth:`resolve`)."""
        self.nonmember_indices: np.ndarray | None = None
        """Indices of the non-members (empty when none were found and none are required)."""
        self.digests: dict[str, str] = {}
        """:func:`probe_digest` of each probe set (``"members"``, ``"nonmembers"``); ``""``: not reproducible."""
        self._verified: set[str] = set()

    def measured_args(self) -> dict[str, Any]:
        """What the probe sets are, for the monitor's ``_measured_args`` (checked on resume)."""
        measured: dict[str, Any] = {}
        drawn = False
        for name, given, default in (
            ("members", self.members_arg, "a random subset of the training data"),
            ("nonmembers", self.nonmembers_arg, "the validation data"),
        ):
            if given is None:
                measured[name] = default
                drawn = True
            else:
                measured[name] = f"a dataset of {len(given)} samples"  # type: ignore[arg-type]
                drawn = drawn or self.draw_given
        if self.members_arg is None or self.draw_given:
            measured["seed"] = self.seed
        if drawn:
            measured["num_probes"] = self.num_probes
        return measured

    def resolve(self, trainer: Any) -> tuple[Subset[Any], Subset[Any] | None]:
        """The member and non-member probe sets (``Subset`` views); draws the indices the first time.

        Raises:
            RuntimeError: no training dataset, or no non-members when they are required (or when the
                checkpoint has non-member indices), with the fix.
            ValueError: stored indices beyond the data (resumed with other data).
        """
        members = self.members_arg if self.members_arg is not None else training_dataset(trainer, self.owner)
        if self.member_indices is None:
            self.member_indices = self._draw(members, given=self.members_arg is not None, seeded=True)
        self._check("members", members, self.member_indices)
        self._check_contents("members", members, self.member_indices)
        nonmembers = self.nonmembers_arg
        if nonmembers is None:
            nonmembers = validation_dataset(trainer, self.owner)
            if nonmembers is not None and len(nonmembers) == 0:  # type: ignore[arg-type]
                if self.require_nonmembers:
                    raise ValueError(
                        f"{self.owner}: the validation dataset is empty; pass `nonmembers=` a held-out dataset"
                    )
                nonmembers = None
        if nonmembers is None:
            self._no_nonmembers()
            self.nonmember_indices = np.zeros(0, dtype=np.int64)
            return Subset(members, self.member_indices.tolist()), None
        if self.nonmember_indices is None:
            self.nonmember_indices = self._draw(
                nonmembers, given=self.nonmembers_arg is not None, seeded=False
            )
        self._check("nonmembers", nonmembers, self.nonmember_indices)
        self._check_contents("nonmembers", nonmembers, self.nonmember_indices)
        return Subset(members, self.member_indices.tolist()), Subset(
            nonmembers, self.nonmember_indices.tolist()
        )

    def _draw(self, dataset: Any, *, given: bool, seeded: bool) -> np.ndarray:
        n = len(dataset)
        if given and not self.draw_given:
            return np.arange(n, dtype=np.int64)
        if seeded:
            return seeded_indices(n, self.num_probes, self.seed)
        return np.arange(min(self.num_probes, n), dtype=np.int64)

    def _no_nonmembers(self) -> None:
        stored = self.nonmember_indices
        if self.require_nonmembers or (stored is not None and stored.size):
            resumed = (
                "the checkpoint has non-member probes but "
                if stored is not None and stored.size and not self.require_nonmembers
                else ""
            )
            raise RuntimeError(
                f"{self.owner} needs held-out (non-member) samples: {resumed}no `nonmembers=` was given and the "
                "Trainer has no validation data. Pass them to the callback:\n"
                "    held_out = torch.utils.data.Subset(full_dataset, held_out_indices)\n"
                f"    monitor = {self.owner}(nonmembers=held_out)\n"
                "    trainer = pl.Trainer(callbacks=[monitor])"
            )

    def _check(self, name: str, dataset: Any, idx: np.ndarray) -> None:
        if idx.size and int(idx.max()) >= len(dataset):
            raise ValueError(
                f"{self.owner}: the stored `{name}` probe indices go up to {int(idx.max())} but the dataset has "
                f"{len(dataset)} samples; resume with the same data as the checkpointed run"
            )

    def _check_contents(self, name: str, dataset: Any, idx: np.ndarray) -> None:
        """Digest the probe contents once per process: keep it (first draw) or compare it (resume)."""
        if name in self._verified:
            return
        self._verified.add(name)
        stored = self.digests.get(name)
        if stored == "":  # the items were not reproducible when drawn: nothing to compare
            return
        digest = probe_digest(dataset, idx)
        if stored is None:
            # a second pass finds items drawn from the dataset's own random state: no digest then
            self.digests[name] = digest if probe_digest(dataset, idx) == digest else ""
        elif stored != digest:
            raise ValueError(
                f"{self.owner}: the `{name}` probe data differ from the checkpointed run's: the same "
                f"{idx.size} indices now select other contents (content digest {stored[:16]} in the checkpoint, "
                f"{digest[:16]} now). Resume with the same data as the checkpointed run, or start a new run "
                "(without `ckpt_path`) to measure this data"
            )

    def state_dict(self) -> dict[str, Any]:
        """The drawn indices, as tensors (checkpoints load with ``weights_only=True``), and the content digests."""
        return {
            "member_indices": _state_tensor(self.member_indices),
            "nonmember_indices": _state_tensor(self.nonmember_indices),
            "probe_digests": dict(self.digests),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the indices of :meth:`state_dict` (absent: drawn again at the next :meth:`resolve`).

        The content digests are compared with the data at the next :meth:`resolve` (a checkpoint without
        them, from before they were kept, is not compared).
        """
        self.member_indices = _state_indices(state_dict.get("member_indices"))
        self.nonmember_indices = _state_indices(state_dict.get("nonmember_indices"))
        digests = state_dict.get("probe_digests")
        self.digests = {str(k): str(v) for k, v in digests.items()} if isinstance(digests, Mapping) else {}
        self._verified = set()


PROBE_DIGEST_SAMPLE = 256
"""At most this many items of a probe set are read by :func:`probe_digest` (a fixed seeded sample)."""


def probe_digest(dataset: Any, indices: np.ndarray) -> str:
    """A stable digest (BLAKE2b, hex) of the contents of ``dataset[i]`` for ``i`` in ``indices``.

    Reads every item of a probe set of up to :data:`PROBE_DIGEST_SAMPLE` items, else a fixed seeded sample
    of that many (the length is hashed too). Tensors and arrays are hashed by dtype, shape and bytes; mappings
    by sorted key; sequences in order; strings and numbers by value; other objects through ``np.asarray``
    (e.g. images), else by type name. The global torch (CPU), numpy and ``random`` generators are seeded
    while the items are read and restored afterwards, so random transforms that use them give the same
    digest in every run, and training sees the random state it would have seen without the digest.

    Args:
        dataset: a map-style dataset.
        indices: the probe indices into ``dataset``.

    Returns:
        The hex digest (32 characters).

    Example:
        >>> probe_digest([torch.zeros(3), torch.ones(3)], np.arange(2))  # doctest: +SKIP
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    positions = np.arange(idx.size)
    if idx.size > PROBE_DIGEST_SAMPLE:
        positions = np.sort(np.random.default_rng(0).choice(idx.size, PROBE_DIGEST_SAMPLE, replace=False))
    h = hashlib.blake2b(digest_size=16)
    h.update(f"n={idx.size};".encode())
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(0)
            np.random.seed(0)
            random.seed(0)
            for pos in positions:
                h.update(f"[{int(pos)}]".encode())
                _feed_digest(h, dataset[int(idx[pos])])
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return h.hexdigest()


def _feed_digest(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, Mapping):
        h.update(b"{")
        for key in sorted(obj, key=repr):
            h.update(repr(key).encode())
            _feed_digest(h, obj[key])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(f"({len(obj)}".encode())
        for part in obj:
            _feed_digest(h, part)
        h.update(b")")
    elif obj is None or isinstance(obj, (str, bytes, int, float, bool, np.generic)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    else:
        arr = None
        with contextlib.suppress(Exception):
            arr = np.asarray(obj)
        if arr is not None and arr.dtype != object:
            arr = np.ascontiguousarray(arr)
            h.update(f"A{arr.dtype.str}{arr.shape}".encode())
            h.update(arr.tobytes())
        else:
            h.update(f"<{type(obj).__name__}>".encode())


def _state_tensor(idx: np.ndarray | None) -> torch.Tensor | None:
    return None if idx is None else torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64))


def _state_indices(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    return np.asarray(value.cpu().numpy() if hasattr(value, "cpu") else value, dtype=np.int64)
