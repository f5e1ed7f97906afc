"""The language model itself: finding it inside wrappers, reading its logits, evaluating it.

One rule for each thing every language-model path needs, so that the canary scorer
(:mod:`memcallbacks.lm.scoring`), the KV-cache adapter (:mod:`memcallbacks.lm.hf`), the
sequence scorer (:mod:`memcallbacks.lm.windows`) and the per-sample losses
(:mod:`memcallbacks.lm.losses`) agree:

* :func:`find_hf_model`: the Hugging Face model a module is or holds (a ``transformers``
  ``PreTrainedModel``, a module with ``prepare_inputs_for_generation``, or a peft-style wrapper of
  either), searched in the module and its direct attributes.
  :func:`is_causal_lm` says whether such a model is a causal LM.
* :func:`output_logits`: the logits tensor of a model's output (a tensor, a tuple whose first item
  is the logits, or an object/dict with ``logits``), optionally checked to be ``[B, T, V]``.
* :func:`evaluating`: eval mode and ``torch.no_grad()`` (or, on request, ``torch.inference_mode()``)
  for the duration of a block, train mode restored afterwards.

Pure torch, no Lightning; ``transformers`` is never imported here (``is_causal_lm`` reads its
registry of causal-LM classes only once ``transformers`` is loaded).
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import torch

__all__ = [
    "evaluating",
    "find_hf_model",
    "forward_params",
    "is_causal_lm",
    "is_hf_model",
    "is_pretrained",
    "module_device",
    "output_logits",
    "unwrap_peft",
]

_DEFAULT_FIX = "pass your own loss or score function"


def is_pretrained(obj: Any) -> bool:
    """Whether ``obj`` is a ``transformers.PreTrainedModel`` (False while ``transformers`` is not imported).

    Example:
        >>> is_pretrained(torch.nn.Linear(2, 2))
        False
    """
    if "transformers" not in sys.modules:  # nothing is a PreTrainedModel before transformers is imported
        return False
    return isinstance(obj, sys.modules["transformers"].PreTrainedModel)


def unwrap_peft(model: Any) -> Any:
    """The model under a peft-style wrapper (``model.get_base_model()``), else ``model`` itself.

    Example:
        >>> net = torch.nn.Linear(2, 2)
        >>> unwrap_peft(net) is net
        True
    """
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base) and isinstance(model, torch.nn.Module):
        base = get_base()
        if base is not None and base is not model:
            return base
    return model


def is_hf_model(obj: Any) -> bool:
    """Whether ``obj`` is a Hugging Face model in the sense of :func:`find_hf_model`.

    True for a ``transformers.PreTrainedModel``, for any ``nn.Module`` with a callable
    ``prepare_inputs_for_generation`` (a generative model: peft's ``PeftModelForCausalLM``, custom
    models that follow the ``generate`` conventions), and for a peft-style wrapper whose
    ``get_base_model()`` is one of these.

    Example:
        >>> is_hf_model(torch.nn.Linear(2, 2))
        False
    """
    if not isinstance(obj, torch.nn.Module):
        return False
    if is_pretrained(obj) or callable(getattr(obj, "prepare_inputs_for_generation", None)):
        return True
    base = unwrap_peft(obj)
    return base is not obj and is_hf_model(base)


def is_causal_lm(model: Any) -> bool:
    """Whether ``model`` is a ``transformers`` causal language model (GPT-2, Llama, ...).

    True for the classes registered for ``AutoModelForCausalLM`` and for any
    ``PreTrainedModel`` whose class name ends in ``ForCausalLM`` or ``LMHeadModel``; a peft-style
    wrapper is judged by its ``get_base_model()``.

    Example:
        >>> is_causal_lm(torch.nn.Linear(2, 2))
        False
    """
    model = unwrap_peft(model)
    if not is_pretrained(model):
        return False
    name = type(model).__name__
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return True
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:  # pragma: no cover - layout of older transformers
        return False
    return name in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def find_hf_model(module: Any) -> Any:
    """The Hugging Face model that ``module`` is or holds, or None: the one rule of the package.

    A Hugging Face model is what :func:`is_hf_model` accepts (a ``transformers.PreTrainedModel``,
    a module with ``prepare_inputs_for_generation``, or a peft-style wrapper of one). The search:
    ``module`` itself when it is one; otherwise its direct child modules (attributes that are
    ``nn.Module``, e.g. ``self.model = GPT2LMHeadModel(config)`` or ``self.model =
    get_peft_model(...)`` in a LightningModule) that are: the only one, or the one named ``model``
    when there are several. Deeper nesting is not searched. ``transformers`` is never imported.

    Each use then asks what it needs of the model found: the KV-cache adapter
    (:func:`memcallbacks.lm.hf.as_incremental`) a causal LM, the sequence scorer a generative model,
    the default per-sample loss that it is not a known non-causal ``transformers`` model.

    Example:
        >>> find_hf_model(torch.nn.Linear(2, 2)) is None
        True
    """
    if is_hf_model(module):
        return module
    children = getattr(module, "_modules", None)
    if not isinstance(children, Mapping):
        return None
    found = {name: child for name, child in children.items() if is_hf_model(child)}
    if len(found) == 1:
        return next(iter(found.values()))
    return found.get("model")


def output_logits(
    out: Any,
    token_ids: torch.Tensor | None = None,
    *,
    source: str = "the module",
    fix: str = _DEFAULT_FIX,
) -> torch.Tensor:
    """The logits tensor of a model output: the one extractor of the package.

    Accepts a tensor, a tuple/list whose first item is the logits, or an object or dict with a
    ``logits`` entry (Hugging Face outputs). Given ``token_ids [B, T]``, the logits must be
    ``[B, T, V]`` (next-token logits of a causal LM).

    Args:
        out: what the model returned.
        token_ids: the input ids, to check the logits' shape against; None: no shape check.
        source: who produced ``out``, for the error message.
        fix: what the user can do instead, for the error message.

    Returns:
        The logits, as returned (no copy, no dtype change).

    Raises:
        TypeError: no logits tensor (or, with ``token_ids``, logits that are not ``[B, T, V]``).

    Example:
        >>> output_logits({"logits": torch.zeros(1, 3, 5)}, torch.zeros(1, 3, dtype=torch.long)).shape
        torch.Size([1, 3, 5])
    """
    logits = out.get("logits", out) if isinstance(out, Mapping) else getattr(out, "logits", out)
    if isinstance(logits, (list, tuple)) and logits:
        logits = logits[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"{source} must return logits (a Tensor, a tuple whose first item is the logits, or an "
            f"object/dict with `logits`), got {type(out).__name__}; {fix}"
        )
    if token_ids is not None and (logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(token_ids.shape)):
        raise TypeError(
            f"{source} must return next-token logits [B, T, V] for token ids [B, T]={tuple(token_ids.shape)}, "
            f"got {tuple(logits.shape)}; {fix}"
        )
    return logits


def module_device(module: Any) -> torch.device:
    """The device of the module's first parameter (CPU for a module without parameters)."""
    for p in module.parameters() if hasattr(module, "parameters") else ():
        return p.device
    return torch.device("cpu")


def forward_params(model: Any) -> set[str]:
    """The parameter names of ``model.forward`` (empty when they cannot be read)."""
    forward = getattr(model, "forward", model)
    try:
        return set(inspect.signature(forward).parameters)
    except (TypeError, ValueError):
        return set()


@contextlib.contextmanager
def evaluating(module: Any, *, inference: bool = False) -> Iterator[None]:
    """Eval mode and no autograd for the block; the module's train mode is restored afterwards.

    ``torch.no_grad()`` by default, never ``torch.inference_mode()`` unless asked: a sharded model
    (FSDP2 ``fully_shard``) allocates its all-gather buffers in its first forward pass, and buffers
    made under inference mode break every later training step ("Inplace update to inference tensor
    outside InferenceMode"); every monitor's evaluation may be such a first pass.

    Args:
        module: the model (anything with ``eval``/``train``; other objects pass through).
        inference: False (default): ``torch.no_grad()``; True: ``torch.inference_mode()``, only for a
            module that is never trained afterwards and holds no buffers a training step reuses.

    Example:
        >>> net = torch.nn.Linear(2, 2)
        >>> with evaluating(net):
        ...     net.training
        False
        >>> net.training
        True
    """
    was_training = bool(getattr(module, "training", False))
    if hasattr(module, "eval"):
        module.eval()
    try:
        with torch.inference_mode() if inference else torch.no_grad():
            yield
    finally:
        if was_training and hasattr(module, "train"):
            module.train()
