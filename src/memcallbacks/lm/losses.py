"""Per-sample losses of one batch: classification cross-entropy and the causal-LM next-token loss.

Pure torch, no Lightning. The default per-sample loss is ``F.cross_entropy(logits, y,
reduction="none")`` (never the true-class logit), averaged over sequence positions for
``[B, T, V]`` logits (positions whose target is ``ignore_index`` = -100 are left out). A Hugging
Face batch (a mapping with ``input_ids`` and ``labels``) gets the causal-LM loss with the one-token
shift (see :func:`default_sample_loss_fn`).

Padding: a target token counts only when both its input position and its target position are real
tokens (``attention_mask`` 1, label not -100; across a hole of padding, the input position is the last
real token before the target), and the model gets ``position_ids`` counted from each row's first real
token (:func:`position_ids_from_mask`, as ``transformers``' ``generate`` does), so a sample's loss is the
same with left, right or holey padding as without padding (except that a sliding attention window
spans columns, so a hole inside it hides real tokens). A model whose
``forward`` cannot take ``position_ids`` is warned about once: with left padding its positions then
start at the first (padding) column, and a sample's loss depends on how much padding its batch gave it.
:func:`causal_lm_step_losses` applies the same rule to the logits a ``training_step`` already has.
One text per row: a batch whose rows pack several texts (``text_ids``, or its own ``position_ids``
restarting inside a row) is refused here, since a row's loss would mix texts; packed training
steps get per-text losses from :func:`memcallbacks.lm.packing.packed_text_losses`.
"""

from __future__ import annotations

import inspect
import sys
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from memcallbacks.lm.model import find_hf_model, is_causal_lm, is_pretrained, output_logits, unwrap_peft

__all__ = [
    "LABEL_KEYS",
    "causal_lm_sample_loss",
    "causal_lm_step_losses",
    "check_reduction",
    "default_sample_loss_and_correct_fn",
    "default_sample_loss_fn",
    "hf_forward",
    "per_sample_cross_entropy",
    "position_ids_from_mask",
    "split_xy",
]

LABEL_KEYS = ("labels", "label", "y", "target", "targets")
_REDUCTIONS = ("mean", "sum")
_LOGITS_FIX = "the default sample_loss_fn needs them; pass `sample_loss_fn`"
_HF_FIX = (
    "Pass `sample_loss_fn=memcallbacks.lm.hf.causal_lm_sample_loss_fn()` (next-token loss, labels shifted by one), "
    "`memcallbacks.lm.hf.token_sample_loss_fn()` (labels aligned with the logits, no shift), or your own "
    "`sample_loss_fn(module, batch) -> Tensor[B]` (reduction='none')"
)


def check_reduction(reduction: Any) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"`reduction` must be 'mean' (average NLL over each sample's scored tokens) or 'sum' "
            f"(their total), got {reduction!r}"
        )
    return str(reduction)


def split_xy(batch: Any) -> tuple[Any, torch.Tensor]:
    if isinstance(batch, Mapping):
        for xk in ("x", "input", "inputs"):
            if xk in batch:
                for yk in LABEL_KEYS:
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


_WARNED_NO_POSITIONS: set[str] = set()  # model classes already warned about (once per process)


def _keyword_support(module: Any, name: str) -> str:
    """``"named"`` (``forward`` names ``name``), ``"kwargs"`` (only through ``**kwargs``) or ``"no"``."""
    forward = getattr(module, "forward", module)
    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return "kwargs"
    if name in params:
        return "named"
    return "kwargs" if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) else "no"


def _accepts_keyword(module: Any, name: str) -> bool:
    return _keyword_support(module, name) != "no"


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted from each row's first real token: ``cumsum(mask) - 1``, clamped at 0.

    What ``transformers``' ``generate`` passes for a padded batch: a real token's position is the
    number of real tokens before it, whatever padding lies around it (padding positions get the
    position of the real token before them, or 0; they are masked out of attention anyway). Pass the
    result as ``position_ids=`` wherever a batch may be left-padded, in training as in evaluation.

    Args:
        attention_mask: ``[B, T]`` (1 or True = real token).

    Returns:
        ``[B, T]`` int64.

    Example:
        >>> position_ids_from_mask(torch.tensor([[0, 0, 1, 1, 1], [1, 1, 0, 1, 0]]))
        tensor([[0, 0, 0, 1, 2],
                [0, 1, 1, 2, 2]])
    """
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp_min(0)


def _pads_before_real_tokens(mask: torch.Tensor) -> bool:
    """Whether a row has padding before one of its real tokens (left or holey padding). Syncs the host."""
    m = mask != 0
    return bool((m[:, 1:] & ~m[:, :-1]).any()) if m.dim() == 2 and m.shape[1] > 1 else False


def _position_ids_for(module: Any, mask: torch.Tensor) -> torch.Tensor | None:
    """The ``position_ids`` to pass ``module`` for ``mask``, or None (not needed, or not accepted).

    A ``forward`` that names ``position_ids`` always gets them; one that takes only ``**kwargs``
    gets them when the mask has padding before a real token (right padding and no padding give
    the default positions); one that cannot take them is warned about once, in that case.
    """
    support = _keyword_support(module, "position_ids")
    if support == "named":
        return position_ids_from_mask(mask)
    if not _pads_before_real_tokens(mask):
        return None
    if support == "kwargs":
        return position_ids_from_mask(mask)
    _warn_no_positions(module, "this batch has padding before real tokens (left or holey padding)", 5)
    return None


def _restarts_inside_rows(position_ids: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether a row's positions restart at a real token (several packed texts per row). Syncs the host."""
    if position_ids.dim() != 2 or position_ids.shape[1] < 2:
        return False
    real = mask != 0 if isinstance(mask, torch.Tensor) and mask.shape == position_ids.shape else None
    real = torch.ones_like(position_ids, dtype=torch.bool) if real is None else real
    before = _last_real_before(real)
    previous = position_ids.gather(1, before.clamp_min(0))
    return bool((real & (before >= 0) & (position_ids <= previous)).any())


def _warn_no_positions(module: Any, why: str, stacklevel: int) -> None:
    name = type(module).__name__
    if name not in _WARNED_NO_POSITIONS:
        _WARNED_NO_POSITIONS.add(name)
        warnings.warn(
            f"{name}.forward takes no `position_ids`, and {why}: the model counts positions from the first "
            "column, padding included, so a sample's loss depends on how much padding its batch gave it and "
            "differs from its unpadded loss. Give `forward` a `position_ids` argument and pass it on to the "
            "model, or pad on the right (tokenizer.padding_side = 'right') for evaluation batches.",
            UserWarning,
            stacklevel=stacklevel,
        )


def _own_position_ids(module: Any, own: torch.Tensor, mask: Any) -> torch.Tensor | None:
    """The batch's own ``position_ids`` for ``module``: passed on, or refused / warned about when it cannot take them.

    Packed rows (positions restarting inside a row) cannot be run as one text: refused. Other
    positions that differ from the default ones are warned about once (like left padding).
    """
    if _accepts_keyword(module, "position_ids"):
        return own
    mask_t = mask if isinstance(mask, torch.Tensor) and mask.shape == own.shape else None
    if _restarts_inside_rows(own, mask_t):
        raise ValueError(
            f"the batch's own `position_ids` restart inside a row (packed texts), but "
            f"{type(module).__name__}.forward takes no `position_ids`: the model would run each row as one "
            "text, every text after the first at shifted positions and attending to the texts before it. Give "
            "`forward` a `position_ids` argument and pass it on to the model (see 'Packed sequences' in "
            "docs/hf.md), or give this module unpacked texts"
        )
    if mask_t is not None:
        default, real = position_ids_from_mask(mask_t), mask_t != 0
    else:
        default = torch.arange(own.shape[-1], device=own.device).expand_as(own)
        real = torch.ones_like(own, dtype=torch.bool)
    if bool(((own != default) & real).any()):
        _warn_no_positions(
            module, "the batch brings its own `position_ids`, which differ from the default ones", 5
        )
    return None


def _refuse_packed_rows(batch: Mapping[str, Any], own: Any, mask: Any) -> None:
    """A per-row loss of packed rows would mix texts: refuse them (a sync only when the batch has position ids)."""
    why = ""
    if "text_ids" in batch:
        why = "it has `text_ids` (PackingCollator)"
    elif isinstance(own, torch.Tensor) and _restarts_inside_rows(
        own, mask if isinstance(mask, torch.Tensor) else None
    ):
        why = "its own `position_ids` restart inside a row"
    if why:
        raise ValueError(
            f"this batch packs several texts per row ({why}), but a per-sample loss scores one text per row, so "
            "a row's loss would mix its texts. Probe sets (members, non-members, shadow pools, audit canaries) "
            "are texts: give the monitors the unpacked texts even when training packs (token-id rows are padded "
            "by TokenRowCollator). For per-text losses of a packed training step use "
            "`memcallbacks.lm.packing.packed_text_losses(out, batch)`; `hf_forward(module, batch, packed=True)` "
            "runs packed rows as they are."
        )


def hf_forward(module: Any, batch: Mapping[str, Any], *, packed: bool = False) -> Any:
    """Calls ``module`` the Hugging Face way, without labels (the model must not compute its own loss).

    ``module(input_ids=..., attention_mask=..., position_ids=...)``: the mask when the batch has one
    and ``forward`` takes it; the batch's own ``position_ids`` when it has them (e.g. packed texts,
    whose positions restart per text), else position ids from the mask
    (:func:`position_ids_from_mask`) when ``forward`` takes them (named, or through ``**kwargs``
    when the batch has padding before real tokens). A ``forward`` without ``position_ids`` given a
    batch whose own position ids restart inside a row (packed texts) is refused with a
    ``ValueError``; given other non-default ones, or a left-padded batch, it is warned about once.
    A ``forward`` without an ``input_ids`` keyword gets ``module(input_ids)``.

    Args:
        module: the model (or a module whose ``forward`` passes these arguments on to it).
        batch: a dict batch with ``input_ids``, optionally ``attention_mask`` and ``position_ids``.
        packed: run rows that hold several texts (``text_ids``, or position ids restarting inside a
            row) as they are. False (every monitor: one text per row) refuses them with a
            ``ValueError``, since a per-row loss would mix texts.

    Returns:
        The module's output.

    Raises:
        ValueError: packed rows with ``packed=False``; packed position ids for a ``forward`` that
            cannot take ``position_ids``.

    Example:
        >>> class Echo(torch.nn.Module):
        ...     def forward(self, input_ids, attention_mask=None, position_ids=None):
        ...         return position_ids
        >>> hf_forward(Echo(), {"input_ids": torch.ones(1, 3), "attention_mask": torch.tensor([[0, 1, 1]])})
        tensor([[0, 0, 1]])
    """
    input_ids = batch["input_ids"]
    if not _accepts_keyword(module, "input_ids"):
        return module(input_ids)
    kwargs: dict[str, Any] = {"input_ids": input_ids}
    mask = batch.get("attention_mask")
    takes_mask = mask is not None and _accepts_keyword(module, "attention_mask")
    if takes_mask:
        kwargs["attention_mask"] = mask
    own = batch.get("position_ids")
    if not packed:
        _refuse_packed_rows(batch, own, mask)
    positions: torch.Tensor | None = None
    if isinstance(own, torch.Tensor):
        positions = _own_position_ids(module, own, mask)
    elif takes_mask and isinstance(mask, torch.Tensor):
        positions = _position_ids_for(module, mask)
    if positions is not None:
        kwargs["position_ids"] = positions
    return module(**kwargs)


def _is_hf_non_causal(module: Any) -> str | None:
    """The class name of the Hugging Face model in ``module`` when it is known not to be a causal LM."""
    if "transformers" not in sys.modules:  # nothing can be a PreTrainedModel without transformers imported
        return None
    model = find_hf_model(module)
    base = unwrap_peft(model) if model is not None else None
    if base is None or not is_pretrained(base) or is_causal_lm(base):
        return None
    return type(base).__name__


def _scoring_positions(
    labels: torch.Tensor, attention_mask: torch.Tensor | None, shift: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each position ``j``: the position whose logits score ``labels[:, j]``, and whether it is scored.

    Without shift, ``j`` itself. With shift, the last real position before ``j`` (``j - 1`` in a
    row without holes): a label counts when it is not -100, its position is real and a real token
    precedes it, so the pairs scored are those of the unpadded sample whatever the padding.
    """
    real = attention_mask != 0 if attention_mask is not None else torch.ones_like(labels, dtype=torch.bool)
    valid = (labels != -100) & real
    if not shift:
        return torch.arange(labels.shape[1], device=labels.device).expand_as(labels), valid
    before = _last_real_before(real)
    return before.clamp_min(0), valid & (before >= 0)


def _last_real_before(real: torch.Tensor) -> torch.Tensor:
    """For each column ``j`` of ``real`` ``[B, T]``: the last real column ``< j`` of its row, or -1."""
    cols = torch.arange(real.shape[1], device=real.device).expand_as(real)
    last = torch.where(real, cols, torch.full_like(cols, -1)).cummax(dim=1).values  # last real column <= j
    return torch.cat([torch.full_like(last[:, :1], -1), last[:, :-1]], dim=1)


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
    ``transformers`` causal LMs do inside their own loss). A target counts only when both its
    input position and its target position are real tokens (``attention_mask`` 1) and its label
    is not ``-100``; inside a row with a hole of padding, a target's input position is the last
    real token before it. So left, right and holey padding score exactly the token pairs of the
    unpadded sample (the logits must then come from a pass with position ids counted from the
    first real token: :func:`position_ids_from_mask`). With ``shift=False`` the mask and label at
    the scored position decide. ``reduction="mean"``
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
    index, valid = _scoring_positions(labels, attention_mask, shift)
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1)
    targets = labels.masked_fill(~valid, 0).long()
    full = logits.float()
    # NLL (natural log) of each label under the logits at its scoring position; no [B, T, V] copy
    tok = torch.logsumexp(full, dim=-1).gather(1, index) - full[rows, index, targets]
    tok = torch.where(valid, tok, torch.zeros_like(tok))
    n = valid.sum(dim=1)
    total = tok.sum(dim=1)
    nan = torch.full_like(total, float("nan"))
    loss = torch.where(n > 0, total / n.clamp_min(1) if reduction == "mean" else total, nan)
    correct = ((logits.argmax(dim=-1).gather(1, index) == labels) | ~valid).all(dim=1) & (n > 0)
    return loss, correct


def causal_lm_step_losses(
    logits: Any, batch: Mapping[str, Any], *, labels_key: str = "labels", reduction: str = "mean"
) -> torch.Tensor:
    """Per-sample next-token losses from a training step's own logits: step capture, no second forward.

    The same rule as the probe losses (:func:`causal_lm_sample_loss` with ``shift=True``): logits
    at ``t`` score ``batch[labels_key][:, t + 1]`` (``input_ids`` when the batch has no labels),
    counting a target only when its input and target positions are real tokens
    (``attention_mask``) and its label is not -100, averaged over each sample's scored tokens.
    For left-padded batches, run the model with ``position_ids=position_ids_from_mask(mask)`` so
    that the logits are those of the unpadded sample. No host synchronisation.

    Args:
        logits: ``[B, T, V]`` logits, or the model's output (an object or dict with ``logits``).
        batch: the dict batch of the step (``input_ids``, optionally ``attention_mask`` and labels).
        labels_key: the batch key of the labels.
        reduction: ``"mean"`` over each sample's scored tokens, or ``"sum"``.

    Returns:
        float32 Tensor ``[B]``, attached to the graph (``.detach()`` it for ``sample_loss``); NaN
        for a sample with no scored token.

    Raises:
        TypeError: a batch without ``input_ids``, an output without logits.
        ValueError: logits and labels whose shapes do not line up.

    Example:
        In a ``LightningModule`` (batches of ``IndexedDataset`` items, a Hugging Face collator)::

            def training_step(self, batch, batch_idx):
                index, batch = split_index(batch)  # memcallbacks.split_index
                out = self.model(**batch, position_ids=position_ids_from_mask(batch["attention_mask"]))
                per_sample = causal_lm_step_losses(out.logits, batch)
                return {"loss": out.loss, "sample_loss": per_sample.detach(), "sample_index": index}

        >>> batch = {"input_ids": torch.tensor([[0, 5, 6]]), "attention_mask": torch.tensor([[0, 1, 1]])}
        >>> round(float(causal_lm_step_losses(torch.zeros(1, 3, 8), batch)[0]), 4)  # one target, log 8
        2.0794
    """
    if not isinstance(batch, Mapping) or not isinstance(batch.get("input_ids"), torch.Tensor):
        got = sorted(map(str, batch)) if isinstance(batch, Mapping) else type(batch).__name__
        raise TypeError(
            f"`batch` must be the step's dict batch with an `input_ids` tensor, got {got}; for `(x, y)` "
            "batches use `F.cross_entropy(logits, y, reduction='none')`"
        )
    if "text_ids" in batch:
        raise ValueError(
            "causal_lm_step_losses gives one loss per row, but this batch packs several texts per row (it has "
            "`text_ids`, from PackingCollator): use `memcallbacks.lm.packing.packed_text_losses(out, batch)`, "
            "which gives one loss per text and the texts' indices"
        )
    labels = batch.get(labels_key)
    labels = batch["input_ids"] if labels is None else labels
    tensor = output_logits(logits, source="`logits`", fix="pass the step's `[B, T, V]` logits (`out.logits`)")
    return causal_lm_sample_loss(tensor, labels, batch.get("attention_mask"), reduction=reduction)[0]


def per_sample_cross_entropy(
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
    label_key = next((k for k in LABEL_KEYS if k in batch), None)
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
    logits = output_logits(hf_forward(module, batch), fix=_LOGITS_FIX)
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
    return per_sample_cross_entropy(logits, labels)


def _loss_and_correct(module: Any, batch: Any, reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    check_reduction(reduction)
    if isinstance(batch, Mapping) and "input_ids" in batch:
        return _hf_loss_and_correct(module, batch, reduction)
    x, y = split_xy(batch)
    return per_sample_cross_entropy(output_logits(module(x), fix=_LOGITS_FIX), y, reduction)


def default_sample_loss_fn(module: Any, batch: Any, *, reduction: str = "mean") -> torch.Tensor:
    """Per-sample cross-entropy (natural log) of the module's logits, ``reduction="none"`` style.

    Batch conventions:

    * ``(x, y)`` (or a dict with ``x``/``y``): logits from ``module(x)``; ``[B, C]`` logits
      with ``y`` ``[B]`` give ``F.cross_entropy(logits, y, reduction="none")``; ``[B, T, V]``
      logits with ``y`` ``[B, T]`` (targets already aligned with the positions) give the
      mean over positions whose target is not -100.
    * a dict with ``input_ids`` and ``labels`` (Hugging Face): the module is called as
      ``module(input_ids=..., attention_mask=..., position_ids=...)`` (:func:`hf_forward`; never
      with ``labels``, so a ``transformers`` model does not compute its own loss; a module whose
      ``forward`` takes no ``input_ids`` keyword gets ``module(input_ids)``). ``labels`` of the
      shape of ``input_ids`` is a causal-LM batch: the next-token NLL, logits at ``t`` scoring
      ``labels[t + 1]``, counting a target when its input and target positions are real tokens
      and its label is not -100, averaged over each sample's scored tokens (see
      :func:`causal_lm_sample_loss`): left, right and holey padding give the unpadded loss. ``labels`` ``[B]``
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
