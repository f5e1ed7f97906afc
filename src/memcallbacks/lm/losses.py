"""Per-sample losses of one batch: classification cross-entropy and the causal-LM next-token loss.

Pure torch, no Lightning. The default per-sample loss is ``F.cross_entropy(logits, y,
reduction="none")`` (never the true-class logit), averaged over sequence positions for
``[B, T, V]`` logits (positions whose target is ``ignore_index`` = -100 are left out). A Hugging
Face batch (a mapping with ``input_ids`` and ``labels``) gets the causal-LM loss with the one-token
shift (see :func:`default_sample_loss_fn`).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from memcallbacks.lm.model import find_hf_model, is_causal_lm, is_pretrained, output_logits, unwrap_peft

__all__ = [
    "LABEL_KEYS",
    "causal_lm_sample_loss",
    "check_reduction",
    "default_sample_loss_and_correct_fn",
    "default_sample_loss_fn",
    "hf_forward",
    "per_sample_cross_entropy",
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
    model = find_hf_model(module)
    base = unwrap_peft(model) if model is not None else None
    if base is None or not is_pretrained(base) or is_causal_lm(base):
        return None
    return type(base).__name__


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
