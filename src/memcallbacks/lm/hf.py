"""Hugging Face ``transformers`` adapters: KV-cache canary scoring and per-sample LM losses.

Two things make a ``transformers`` causal LM (GPT-2, Llama, ...) a first-class citizen of
memcallbacks:

* :class:`HFIncrementalLM` wraps the model as a :class:`memcallbacks.lm.scoring.IncrementalLM`
  that reuses its key/value cache (``past_key_values``): the canary prefix runs once and
  each candidate secret only steps through its own tokens, so the shared-prefix trie
  (:func:`memcallbacks.lm.scoring.score_space_trie`, exact exposure over the whole randomness
  space; Carlini et al., "The Secret Sharer", USENIX Security 2019, Sec. 4) and the
  best-first exact rank (:func:`memcallbacks.lm.best_first.rank_best_first`, Sec. 8 of the same
  paper) run on the model without user code. :func:`as_incremental` is the rule the
  exposure monitor applies to find such a model in a LightningModule.
* :func:`causal_lm_sample_loss_fn` and :func:`token_sample_loss_fn` are per-sample loss
  functions for Hugging Face style dict batches, for when the default (which picks the
  convention from the shapes, see :func:`memcallbacks.lm.losses.default_sample_loss_fn`)
  cannot tell.

``transformers`` is an optional dependency (``pip install memcallbacks[hf]``), imported
only when a function here needs it; nothing here downloads anything.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from memcallbacks.lm.decoding import greedy_decode
from memcallbacks.lm.losses import causal_lm_sample_loss, check_reduction, hf_forward
from memcallbacks.lm.model import find_hf_model, forward_params, is_causal_lm, output_logits, unwrap_peft
from memcallbacks.utilities.validation import check_bool

__all__ = [
    "HFIncrementalLM",
    "as_incremental",
    "causal_lm_sample_loss_fn",
    "token_sample_loss_fn",
    "why_not_incremental",
]

_INSTALL_HINT = "install the Hugging Face extra: `pip install memcallbacks[hf]` (transformers, tokenizers)"
_FALLBACK = (
    "score without the adapter: give the exposure monitor a `score_fn`, or use the batched path "
    "(memcallbacks.lm.scoring.score_sequences), which only needs `model(input_ids).logits`"
)
_KNOWN_LAYERS = ("DynamicLayer", "DynamicSlidingWindowLayer")


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError(f"memcallbacks.lm.hf needs `transformers`; {_INSTALL_HINT}") from e
    return transformers


def as_incremental(module: Any) -> HFIncrementalLM | None:
    """An :class:`HFIncrementalLM` over the causal LM that ``module`` is or wraps, else None.

    The exposure monitor applies this to the LightningModule it is given, so a
    ``transformers`` causal LM (or a LightningModule holding one, or a peft wrapper of one, as a
    direct attribute: see :func:`memcallbacks.lm.model.find_hf_model` for the rule) gets the
    KV-cache trie and best-first paths without
    user code. A module that implements :class:`memcallbacks.lm.scoring.IncrementalLM` itself
    should be used as it is (this function returns None for anything not found by
    :func:`~memcallbacks.lm.model.find_hf_model` or not a causal LM, e.g. an encoder, and for a
    peft prompt-learning model; :func:`why_not_incremental` says which).

    The adapter scores with the wrapped ``transformers`` model, not with the LightningModule's
    own ``forward``: the rule assumes that ``forward(input_ids)`` is the wrapped model's logits.
    A peft model with weight adapters (LoRA, IA3, ...) is scored through its base model, whose
    layers carry the active adapters (see :class:`HFIncrementalLM`).

    Example:
        >>> as_incremental(torch.nn.Linear(2, 2)) is None
        True
    """
    model = find_hf_model(module)
    if model is None or not is_causal_lm(model) or _is_prompt_learning(model):
        return None
    return HFIncrementalLM(model)


def why_not_incremental(module: Any) -> str | None:
    """Why :func:`as_incremental` gives no KV-cache adapter for ``module`` (None when it gives one).

    Example:
        >>> why_not_incremental(torch.nn.Linear(2, 2))
        'Linear is not a Hugging Face model and holds none as a direct attribute'
    """
    model = find_hf_model(module)
    name = type(module).__name__
    if model is None:
        return f"{name} is not a Hugging Face model and holds none as a direct attribute"
    base = unwrap_peft(model)
    where = type(base).__name__ if model is module else f"{type(base).__name__} (in {name})"
    if not is_causal_lm(model):
        return f"the Hugging Face model {where} is not a transformers causal LM"
    if _is_prompt_learning(model):
        return (
            f"{type(model).__name__} over {type(base).__name__} is a peft prompt-learning model (virtual "
            "tokens the base model's cache does not hold)"
        )
    return None


def _peft_config(model: Any) -> Any:
    """The active adapter config of a ``peft`` wrapper (``active_peft_config``), else None."""
    if unwrap_peft(model) is model:
        return None
    return getattr(model, "active_peft_config", None)


def _is_prompt_learning(model: Any) -> bool:
    """Whether ``model`` is a peft wrapper whose active adapter is prompt learning (prefix/prompt tuning)."""
    return bool(getattr(_peft_config(model), "is_prompt_learning", False))


def _cached_model(model: Any) -> Any:
    """The module :class:`HFIncrementalLM` calls: the base model of a peft weight-adapter wrapper.

    LoRA-style adapters live inside the base model's layers, so its own ``forward`` (which names
    ``cache`` or ``past_key_values``) gives the adapted logits without the wrapper's generic
    ``**kwargs`` (through which a cache argument would be passed under a deprecated name). Other
    wrappers with ``get_base_model()`` are called as they are.
    """
    if _is_prompt_learning(model):
        raise TypeError(
            f"{type(model).__name__} is a peft prompt-learning model: its virtual tokens are not in the base "
            f"model's KV cache, so memcallbacks.lm.hf.HFIncrementalLM cannot step it; {_FALLBACK}"
        )
    return unwrap_peft(model) if _peft_config(model) is not None else model


# --------------------------------------------------------------------------------------
# The KV-cache state
# --------------------------------------------------------------------------------------
class _KVState:
    """A model's key/value cache, treated as immutable: every operation returns a new state.

    ``kind`` is ``"cache"`` (a ``transformers`` ``DynamicCache``: per-layer objects with
    ``keys``/``values`` in transformers >= 4.56, or ``key_cache``/``value_cache`` lists in
    older releases) or ``"legacy"`` (a tuple of per-layer ``(key, value)`` tensors).
    Tensors are ``[batch, heads, seq, head_dim]``.
    """

    __slots__ = ("kind", "data", "batch", "length")

    def __init__(self, kind: str, data: Any, batch: int, length: int) -> None:
        self.kind, self.data, self.batch, self.length = kind, data, batch, length

    def select(self, idx: torch.Tensor) -> _KVState:
        """The rows ``idx`` (with repeats), as new tensors."""
        if self.kind == "legacy":
            data: Any = tuple(tuple(t.index_select(0, idx) for t in layer) for layer in self.data)
        else:
            data = _clone_cache(self.data)
            if isinstance(getattr(data, "layers", None), list):
                for layer in data.layers:
                    if getattr(layer, "keys", None) is not None and layer.keys.numel():
                        layer.keys = layer.keys.index_select(0, idx)
                        layer.values = layer.values.index_select(0, idx)
            else:
                data.key_cache = [k.index_select(0, idx) if k.numel() else k for k in data.key_cache]
                data.value_cache = [v.index_select(0, idx) if v.numel() else v for v in data.value_cache]
        return _KVState(self.kind, data, int(idx.numel()), self.length)

    def crop(self, length: int) -> _KVState | None:
        """The state after the first ``length`` positions (views, no copy), or None where it cannot be cut.

        A causal model's cache of ``T`` tokens holds, at positions ``< length``, what a pass over
        the first ``length`` tokens alone computes (later tokens never reach earlier positions).
        None for a sliding-window layer that has already dropped its oldest positions.
        """
        if not 1 <= length <= self.length:
            raise ValueError(f"`length` must be in [1, {self.length}], got {length}")
        if self.kind == "legacy":
            data: Any = tuple(
                tuple(t[:, :, :length] if i < 2 else t for i, t in enumerate(layer)) for layer in self.data
            )
            return _KVState(self.kind, data, self.batch, length)
        data = _clone_cache(self.data)
        if isinstance(getattr(data, "layers", None), list):
            for layer in data.layers:
                if getattr(layer, "keys", None) is None or not layer.keys.numel():
                    continue
                if type(layer).__name__ == "DynamicSlidingWindowLayer":
                    if getattr(layer, "cumulative_length", None) != layer.keys.shape[-2]:
                        return None  # the window has slid: the first positions are gone
                    layer.cumulative_length = length
                layer.keys, layer.values = layer.keys[:, :, :length], layer.values[:, :, :length]
        else:
            data.key_cache = [k[:, :, :length] if k.numel() else k for k in data.key_cache]
            data.value_cache = [v[:, :, :length] if v.numel() else v for v in data.value_cache]
            if isinstance(getattr(data, "_seen_tokens", None), int):
                data._seen_tokens = length
        return _KVState(self.kind, data, self.batch, length)

    def model_input(self) -> Any:
        """What to hand the model: a shallow copy of the cache that its in-place update may extend."""
        return self.data if self.kind == "legacy" else _clone_cache(self.data)


def _clone_cache(cache: Any) -> Any:
    # The model's update assigns concatenated new tensors to the copied layer objects (it never
    # writes into the old tensors), so a shallow copy keeps the stored state untouched.
    new = copy.copy(cache)
    if isinstance(getattr(cache, "layers", None), list):
        new.layers = [copy.copy(layer) for layer in cache.layers]
    for name in ("key_cache", "value_cache"):
        if isinstance(getattr(cache, name, None), list):
            setattr(new, name, list(getattr(cache, name)))
    return new


def _kv_tensors(pkv: Any) -> list[tuple[Any, Any]] | None:
    """Per-layer (key, value) of a cache this adapter knows, or None."""
    if isinstance(pkv, (tuple, list)):
        if pkv and all(isinstance(layer, (tuple, list)) and len(layer) >= 2 for layer in pkv):
            return [(layer[0], layer[1]) for layer in pkv]
        return None
    layers = getattr(pkv, "layers", None)
    if isinstance(layers, list) and layers:
        if not all(type(layer).__name__ in _KNOWN_LAYERS for layer in layers):
            return None
        return [(getattr(layer, "keys", None), getattr(layer, "values", None)) for layer in layers]
    keys, values = getattr(pkv, "key_cache", None), getattr(pkv, "value_cache", None)
    if isinstance(keys, list) and isinstance(values, list) and keys and len(keys) == len(values):
        if type(pkv).__name__ != "DynamicCache":
            return None
        return list(zip(keys, values))
    return None


# --------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------
class HFIncrementalLM(torch.nn.Module):
    """A ``transformers`` causal LM as a :class:`memcallbacks.lm.scoring.IncrementalLM`, via its KV cache.

    The state is the model's key/value cache after the tokens seen so far: ``init_state``
    runs the canary prefix once, ``step`` appends one token per row reusing the cache, and
    ``expand_state`` repeats or selects cache rows. That is what the shared-prefix trie
    (exact exposure of the whole space: ``A + A**2 + ... + A**(L-1)`` one-token steps
    instead of ``A**L`` full sequences) and the best-first exact rank need (Carlini et al.,
    "The Secret Sharer", USENIX Security 2019, Sec. 4 and 8). Scores equal the batched path
    (:func:`memcallbacks.lm.scoring.score_sequences`) up to floating-point rounding.

    Known cache formats: ``transformers``' ``DynamicCache`` (both the per-layer layout of
    recent releases and the ``key_cache``/``value_cache`` lists of older ones) and the
    legacy tuple of per-layer ``(key, value)`` tensors. Anything else (static, quantized,
    offloaded, recurrent-state caches) raises a ``TypeError`` naming the model class and
    the fallback. The model is called with ``use_cache=True`` and no attention mask (all
    rows have the same length, no padding), never with labels.

    The wrapper is itself an ``nn.Module`` whose ``forward(input_ids)`` returns the logits
    ``[B, T, V]``, so the batched path runs on it too. It holds no parameters of its own.

    :meth:`prefill`, :meth:`crop_state` and :meth:`greedy` serve
    :class:`memcallbacks.SequenceMemorisationMonitor`: one teacher-forced pass keeps its cache,
    cut back to the prefix it starts greedy decoding, so the prefix never runs twice.

    A peft model with weight adapters (LoRA, ...; ``PeftModelForCausalLM``) is called through
    its base model (``get_base_model()``), whose layers carry the active adapters: the same
    logits as the wrapper, and the base model's own cache argument. A prompt-learning peft model
    raises a ``TypeError`` (its virtual tokens are not in the base model's cache).

    Args:
        model: a ``transformers`` causal LM (``GPT2LMHeadModel``, ``LlamaForCausalLM``, ...),
            a peft wrapper of one, or any module called as ``model(input_ids=..., past_key_values=..., use_cache=True)``
            (or ``cache=...`` where the model's ``forward`` names it so) that returns
            ``logits`` and a cache.

    Raises:
        ImportError: ``transformers`` is not installed (``pip install memcallbacks[hf]``).
        TypeError: ``model`` is not an ``nn.Module``.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> from memcallbacks.lm.scoring import IncrementalLM
        >>> config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=40, n_positions=32,
        ...                     bos_token_id=0, eos_token_id=0)
        >>> lm = HFIncrementalLM(GPT2LMHeadModel(config))
        >>> isinstance(lm, IncrementalLM)
        True
        >>> state, logp = lm.init_state(torch.tensor([[1, 2, 3]]))
        >>> state, logp = lm.step(lm.expand_state(state, 4), torch.tensor([5, 6, 7, 8]))
        >>> tuple(logp.shape)
        (4, 40)
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        _transformers()
        if not isinstance(model, torch.nn.Module):
            raise TypeError(
                f"`model` must be a transformers causal LM (an nn.Module), got {type(model).__name__}"
            )
        self.model = model = _cached_model(model)
        params = forward_params(model)
        if not params & {"cache", "past_key_values", "return_dict"}:  # a wrapper's **kwargs: the base's names
            params = forward_params(unwrap_peft(model))
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._return_dict = "return_dict" in params
        self._max_positions = _max_positions(model)

    # -- helpers ---------------------------------------------------------------------------
    def _name(self) -> str:
        return type(self.model).__name__

    def _call(self, input_ids: torch.Tensor, cache: Any, need_cache: bool = True) -> tuple[torch.Tensor, Any]:
        kwargs: dict[str, Any] = {"input_ids": input_ids, "use_cache": True}
        if cache is not None:
            kwargs[self._cache_kw] = cache
        if self._return_dict:
            kwargs["return_dict"] = True
        out = self.model(**kwargs)
        logits = output_logits(out)
        if isinstance(out, Mapping):
            keys = list(out.keys())
            pkv = out["cache"] if "cache" in keys else out.get("past_key_values")
        elif isinstance(out, tuple) and len(out) >= 2:
            pkv = out[1]
        else:
            pkv = getattr(out, "past_key_values", None)
        if pkv is None and need_cache:
            raise TypeError(
                f"{self._name()} returned no `past_key_values` (KV cache) with use_cache=True, so "
                f"memcallbacks.lm.hf.HFIncrementalLM cannot continue from a prefix; {_FALLBACK}"
            )
        return logits, pkv

    def _state(self, pkv: Any, batch: int, length: int) -> _KVState:
        layers = _kv_tensors(pkv)
        ok = layers is not None and all(
            isinstance(k, torch.Tensor)
            and isinstance(v, torch.Tensor)
            and k.dim() == 4
            and v.dim() == 4
            and k.shape[0] == batch
            and v.shape[0] == batch
            for k, v in layers
        )
        if not ok:
            raise TypeError(
                f"{self._name()} returned `past_key_values` of a format memcallbacks.lm.hf.HFIncrementalLM does "
                f"not know ({type(pkv).__name__}); it knows transformers' DynamicCache (layers "
                f"{'/'.join(_KNOWN_LAYERS)}) and tuples of per-layer (key, value) tensors [batch, heads, "
                f"seq, head_dim]; {_FALLBACK}"
            )
        kind = "legacy" if isinstance(pkv, (tuple, list)) else "cache"
        return _KVState(kind, pkv, batch, length)

    def _check_room(self, length: int) -> None:
        if self._max_positions is not None and length > self._max_positions:
            raise ValueError(
                f"the canary needs {length} positions but {self._name()} has only {self._max_positions} "
                "(config n_positions / max_position_embeddings); use a shorter canary format or secret, "
                "or a model with more positions"
            )

    # -- IncrementalLM ---------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, T, V]`` of the wrapped model (no cache), for the batched path."""
        kwargs: dict[str, Any] = {"input_ids": input_ids}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        return output_logits(self.model(**kwargs))

    def init_state(self, prefix_ids: torch.Tensor) -> tuple[_KVState, torch.Tensor]:
        """Runs the prefix ``[1, T]``; returns the cache and the next token's log-probabilities ``[1, V]``."""
        if prefix_ids.dim() != 2 or prefix_ids.shape[1] < 1:
            raise ValueError(
                f"`prefix_ids` must be a LongTensor [B, T] with T >= 1, got {tuple(prefix_ids.shape)}"
            )
        self._check_room(int(prefix_ids.shape[1]))
        logits, pkv = self._call(prefix_ids, None)
        state = self._state(pkv, int(prefix_ids.shape[0]), int(prefix_ids.shape[1]))
        return state, F.log_softmax(logits[:, -1].float(), dim=-1)

    def step(self, state: _KVState, token_ids: torch.Tensor) -> tuple[_KVState, torch.Tensor]:
        """Appends one token per row (``[B]``); returns the new cache and log-probabilities ``[B, V]``."""
        if not isinstance(state, _KVState):
            raise TypeError(
                f"`state` must come from init_state/step/expand_state, got {type(state).__name__}"
            )
        if token_ids.dim() != 1 or token_ids.shape[0] != state.batch:
            raise ValueError(
                f"`token_ids` must be [B] = [{state.batch}] (one token per state row), got {tuple(token_ids.shape)}"
            )
        # position `length` takes the token and predicts the next one: `length + 2` positions in all
        self._check_room(state.length + 1)
        logits, pkv = self._call(token_ids.unsqueeze(1), state.model_input())
        new = self._state(pkv, state.batch, state.length + 1)
        return new, F.log_softmax(logits[:, -1].float(), dim=-1)

    def expand_state(self, state: _KVState, repeats: int | torch.Tensor) -> _KVState:
        """Repeats each row like ``repeat_interleave``; a tensor of repeats may hold zeros (selection)."""
        if not isinstance(state, _KVState):
            raise TypeError(
                f"`state` must come from init_state/step/expand_state, got {type(state).__name__}"
            )
        device = _state_device(state)
        rows = torch.arange(state.batch, device=device)
        if isinstance(repeats, torch.Tensor):
            idx = torch.repeat_interleave(rows, repeats.to(device=device, dtype=torch.long))
        else:
            idx = torch.repeat_interleave(rows, int(repeats))
        return state.select(idx)

    # -- one scoring pass, then greedy decoding from its cache ------------------------------
    def prefill(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, _KVState | None]:
        """One teacher-forced pass over ``input_ids [B, T]``: the logits ``[B, T, V]`` and the cache.

        The cache is None when the model returns none, or one of a format this adapter does not
        know (greedy decoding then runs the prefix again: :meth:`greedy` without a state). Rows
        may be right-padded: a causal model's cache at a position only depends on the tokens up
        to it, so :meth:`crop_state` gives every row's cache after any prefix of its real tokens.
        """
        if input_ids.dim() != 2 or input_ids.shape[1] < 1:
            raise ValueError(
                f"`input_ids` must be a LongTensor [B, T] with T >= 1, got {tuple(input_ids.shape)}"
            )
        logits, pkv = self._call(input_ids, None, need_cache=False)
        batch, length = int(input_ids.shape[0]), int(input_ids.shape[1])
        if pkv is None or _kv_tensors(pkv) is None:
            return logits, None
        try:
            return logits, self._state(pkv, batch, length)
        except TypeError:
            return logits, None

    def crop_state(self, state: _KVState, length: int, rows: torch.Tensor | None = None) -> _KVState | None:
        """The cache after the first ``length`` tokens, for the batch ``rows`` (all when None).

        None where the cache cannot be cut back (a sliding-window layer that has already dropped
        its first positions). The result shares no tensors that a later step would write into.
        """
        if not isinstance(state, _KVState):
            raise TypeError(f"`state` must come from prefill/init_state/step, got {type(state).__name__}")
        cropped = state.crop(int(length))
        if cropped is None or rows is None:
            return cropped
        return cropped.select(rows.to(device=_state_device(state), dtype=torch.long))

    def greedy(
        self,
        prefix_ids: torch.Tensor,
        steps: int,
        *,
        state: _KVState | None = None,
        next_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Greedy continuation ``[B, steps]`` of ``prefix_ids [B, P]``: the argmax token, ``steps`` times.

        Given ``state`` (the cache after exactly the prefix, e.g. from :meth:`crop_state`) and
        ``next_logits [B, V]`` (the logits at the prefix's last position), the prefix is not run
        again: ``steps - 1`` one-token passes in all. Without them the prefix runs once first.
        The cache is stepped in place (no copy per step) and may be of any format the model
        accepts back; no host synchronisation in the loop.
        """
        if (state is None) != (next_logits is None):
            raise ValueError(
                "pass both `state` and `next_logits` (the cache and logits after the prefix), or neither"
            )
        if state is None or next_logits is None:
            logits, cache = self._call(prefix_ids, None)
            next_logits = logits[:, -1]
        else:
            cache = state.model_input()

        def step(token: torch.Tensor) -> torch.Tensor:
            nonlocal cache
            logits, cache = self._call(token.unsqueeze(1), cache)
            return logits[:, -1]

        return greedy_decode(next_logits, steps, step)


def _state_device(state: _KVState) -> torch.device:
    layers = _kv_tensors(state.data) or []
    for k, _ in layers:
        if isinstance(k, torch.Tensor):
            return k.device
    return torch.device("cpu")


def _max_positions(model: Any) -> int | None:
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


# --------------------------------------------------------------------------------------
# Per-sample losses for Hugging Face batches
# --------------------------------------------------------------------------------------
class _HFSampleLoss:
    """``(module, batch) -> Tensor[B]`` for dict batches (picklable, so it survives ddp_spawn)."""

    def __init__(self, shift: bool, reduction: str, labels_key: str, with_correct: bool) -> None:
        self.shift, self.reduction, self.labels_key, self.with_correct = (
            shift,
            reduction,
            labels_key,
            with_correct,
        )

    def __repr__(self) -> str:
        name = "causal_lm_sample_loss_fn" if self.shift else "token_sample_loss_fn"
        return f"{name}(reduction={self.reduction!r}, labels_key={self.labels_key!r}, with_correct={self.with_correct})"

    def __call__(self, module: Any, batch: Any) -> Any:
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise TypeError(f"{self!r} needs a dict batch with `input_ids`, got {keys}")
        labels = batch.get(self.labels_key)
        mask = batch.get("attention_mask")
        if labels is None:
            if not self.shift:
                raise TypeError(f"{self!r} needs `{self.labels_key}` in the batch, got keys {sorted(batch)}")
            labels = batch["input_ids"]  # language modelling of the input itself
        loss, correct = causal_lm_sample_loss(
            output_logits(hf_forward(module, batch)), labels, mask, shift=self.shift, reduction=self.reduction
        )
        return (loss, correct) if self.with_correct else loss


def causal_lm_sample_loss_fn(
    *, reduction: str = "mean", labels_key: str = "labels", with_correct: bool = False
) -> Any:
    """A ``sample_loss_fn`` for causal-LM dict batches: next-token NLL, labels shifted by one.

    Calls ``module(input_ids=..., attention_mask=..., position_ids=...)`` (never with labels;
    :func:`memcallbacks.lm.losses.hf_forward`, position ids counted from each row's first real
    token) and scores ``batch[labels_key]`` (``input_ids`` when the batch has no labels) with
    :func:`memcallbacks.lm.losses.causal_lm_sample_loss`: logits at ``t`` score the label at
    ``t + 1``; a target counts when its input and target positions are real tokens and its label
    is not -100, so left, right and holey padding give the unpadded loss.

    Args:
        reduction: ``"mean"`` over each sample's scored tokens, or ``"sum"`` (log-perplexity).
        labels_key: the batch key of the labels.
        with_correct: also return per-sample correctness (every scored argmax right), as the
            trajectory tracker's data map uses.

    Returns:
        ``fn(module, batch) -> Tensor[B]`` (or ``(Tensor[B], BoolTensor[B])``).

    Example:
        >>> fn = causal_lm_sample_loss_fn(reduction="sum")
        >>> fn
        causal_lm_sample_loss_fn(reduction='sum', labels_key='labels', with_correct=False)
    """
    check_reduction(reduction)
    return _HFSampleLoss(True, reduction, _check_key(labels_key), check_bool("with_correct", with_correct))


def token_sample_loss_fn(
    *, reduction: str = "mean", labels_key: str = "labels", with_correct: bool = False
) -> Any:
    """A ``sample_loss_fn`` for dict batches whose labels are aligned with the logits (no shift).

    For token classification, or language-model batches whose labels are already the next
    tokens. Same arguments as :func:`causal_lm_sample_loss_fn`.

    Example:
        >>> token_sample_loss_fn()
        token_sample_loss_fn(reduction='mean', labels_key='labels', with_correct=False)
    """
    check_reduction(reduction)
    return _HFSampleLoss(False, reduction, _check_key(labels_key), check_bool("with_correct", with_correct))


def _check_key(labels_key: Any) -> str:
    if not isinstance(labels_key, str) or not labels_key:
        raise ValueError(f"`labels_key` must be a non-empty string (a batch key), got {labels_key!r}")
    return labels_key
