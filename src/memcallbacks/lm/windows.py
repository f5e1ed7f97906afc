"""Probe windows of a language model: teacher-forced sequence scores and greedy extraction.

What :class:`memcallbacks.SequenceMemorisationMonitor` measures on each probe sequence, cut to its
first ``prefix_len + suffix_len`` tokens (the *window*), as a function of a model and token ids:

* one teacher-forced pass per batch gives the mean token loss, Min-K% Prob, Min-K%++ and every sampling
  scheme's ``log q`` (:func:`memcallbacks.metrics.sequence.teacher_forced_scores`);
* greedy decoding of ``suffix_len`` tokens from the first ``prefix_len`` gives k-extractable
  memorisation (Carlini et al., "Quantifying Memorization Across Neural Language Models", ICLR
  2023), reusing the model's state where it offers one: an
  :class:`~memcallbacks.lm.scoring.IncrementalLM` (``init_state``/``step``), a Hugging Face KV
  cache (the scoring pass's own cache cut back to the prefix, so the prefix never runs twice;
  :class:`memcallbacks.lm.hf.HFIncrementalLM`), or full forward passes over the growing sequence.

:class:`LanguageModel` picks the path; :func:`score_windows` returns a :class:`WindowScores`.
Pure torch, no Lightning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from memcallbacks.lm.decoding import greedy_decode
from memcallbacks.lm.hf import HFIncrementalLM
from memcallbacks.lm.model import find_hf_model, forward_params, output_logits
from memcallbacks.metrics.sequence import extraction_match, teacher_forced_scores
from memcallbacks.utilities.validation import check_int, check_real

__all__ = [
    "DECODING_MODES",
    "ForwardFn",
    "LanguageModel",
    "WindowScores",
    "check_sampling",
    "pad_windows",
    "score_windows",
    "token_ids_of",
    "token_sequences",
]

ForwardFn = Callable[[Any, torch.Tensor], Any]
"""``forward_fn(module, token_ids [B, T]) -> logits [B, T, V]`` (or an object with ``.logits``)."""

#: what ``LanguageModel(decoding=...)`` accepts: try the cache paths first, insist on one, or never use one
DECODING_MODES = ("auto", "cache", "full")

_FORWARD_FN_FIX = (
    "pass `forward_fn=lambda module, ids: module(ids).logits` (any function returning causal-LM logits, "
    "position t predicting token t + 1)"
)


def check_sampling(sampling: Any) -> tuple[tuple[float, int | None], ...]:
    """Sampling schemes as ``((temperature, top_k), ...)``, from a dict or a list of dicts.

    Raises:
        TypeError: not a dict or an iterable of dicts.
        ValueError: unknown keys, ``temperature <= 0``, ``top_k < 1``, or no scheme.

    Example:
        >>> check_sampling([{"temperature": 1.0}, {"temperature": 0.7, "top_k": 40}])
        ((1.0, None), (0.7, 40))
    """
    schemes = [sampling] if isinstance(sampling, Mapping) else sampling
    if isinstance(schemes, (str, bytes)) or not isinstance(schemes, Iterable):
        raise TypeError(
            f"`sampling` must be a dict or a list of dicts like {{'temperature': 1.0, 'top_k': None}}, "
            f"got {sampling!r}"
        )
    out = []
    for i, scheme in enumerate(schemes):
        if not isinstance(scheme, Mapping) or set(scheme) - {"temperature", "top_k"}:
            raise ValueError(
                f"`sampling[{i}]` must be a dict with keys 'temperature' and/or 'top_k', got {scheme!r}; "
                "e.g. sampling=[{'temperature': 1.0, 'top_k': None}, {'temperature': 0.7, 'top_k': 40}]"
            )
        t = check_real(
            "temperature",
            scheme.get("temperature", 1.0),
            minimum=0.0,
            min_inclusive=False,
            hint=f"in `sampling[{i}]`; use a temperature > 0 such as 1.0 (greedy decoding is logged anyway)",
        )
        k = scheme.get("top_k")
        if k is not None:
            k = check_int("top_k", k, minimum=1, hint=f"in `sampling[{i}]`; use None for the full softmax")
        out.append((t, k))
    if not out:
        raise ValueError("`sampling` is empty; pass at least one scheme, e.g. [{'temperature': 1.0}]")
    return tuple(out)


def token_ids_of(item: Any, name: str, index: int) -> tuple[torch.Tensor, set[int]]:
    """1-D token ids of one dataset item (padding removed) and the pad ids it used.

    An item is 1-D integer token ids (a tensor, array or list; ``[1, T]`` is squeezed) or a dict
    with ``input_ids`` and optionally ``attention_mask`` (masked positions are dropped).

    Args:
        item: the dataset item.
        name: the dataset's argument name, for messages (``"members"``).
        index: the item's index, for messages.

    Returns:
        ``(ids [T] int64, pad ids)``.

    Raises:
        TypeError: an item that is not token ids.
        ValueError: a mask of another shape, a negative id.

    Example:
        >>> token_ids_of({"input_ids": [5, 6, 0], "attention_mask": [1, 1, 0]}, "members", 0)
        (tensor([5, 6]), {0})
    """
    pads: set[int] = set()
    mask = None
    raw = item
    if isinstance(item, Mapping):
        if "input_ids" not in item:
            raise TypeError(
                f"`{name}` item {index} is a dict without 'input_ids' (keys {sorted(map(str, item))}); "
                "items must be token-id sequences or dicts with 'input_ids' (and optionally 'attention_mask')"
            )
        raw, mask = item["input_ids"], item.get("attention_mask")
    if isinstance(raw, (str, bytes)) or (isinstance(raw, (list, tuple)) and raw and isinstance(raw[0], str)):
        raise TypeError(
            f"`{name}` item {index} is text ({type(raw).__name__}), not token ids: tokenize the sequences first "
            "with the model's tokenizer, e.g. `[tokenizer(t)['input_ids'] for t in texts]` (Hugging Face) or "
            "`memcallbacks.demos.toy.TokenDataset(texts, tokenizer)`"
        )
    try:
        ids = torch.as_tensor(np.asarray(raw.cpu() if isinstance(raw, torch.Tensor) else raw))
    except (TypeError, ValueError):
        ids = torch.zeros(0)
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1 or ids.is_floating_point() or ids.dtype == torch.bool or ids.is_complex():
        raise TypeError(
            f"`{name}` item {index} is not a sequence of token ids: got {type(raw).__name__}"
            f"{' of shape ' + str(tuple(ids.shape)) if ids.dim() != 1 else ' of dtype ' + str(ids.dtype)}; "
            "items must be 1-D integer token ids (a LongTensor, a list of ints) or dicts with 'input_ids'"
        )
    ids = ids.long()
    if mask is not None:
        m = torch.as_tensor(np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask))
        if m.dim() == 2 and m.shape[0] == 1:
            m = m[0]
        if m.shape != ids.shape:
            raise ValueError(
                f"`{name}` item {index}: 'attention_mask' has shape {tuple(m.shape)}, 'input_ids' {tuple(ids.shape)}"
            )
        keep = m.bool()
        pads = set(ids[~keep].tolist())
        ids = ids[keep]
    if ids.numel() and int(ids.min()) < 0:
        raise ValueError(f"`{name}` item {index} holds a negative token id ({int(ids.min())})")
    return ids, pads


def token_sequences(name: str, dataset: Any, indices: Iterable[int]) -> tuple[list[torch.Tensor], set[int]]:
    """The token ids of ``dataset[i]`` for each ``i`` in ``indices`` (see :func:`token_ids_of`), and every pad id."""
    seqs, pads = [], set()
    for i in indices:
        ids, p = token_ids_of(dataset[int(i)], name, int(i))
        seqs.append(ids)
        pads |= p
    return seqs, pads


def pad_windows(seqs: Sequence[torch.Tensor], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``width`` tokens of each 1-D sequence, right-padded with 0: ``(windows [N, width], lengths [N])``.

    Example:
        >>> pad_windows([torch.tensor([5, 6, 7]), torch.tensor([8])], 2)
        (tensor([[5, 6],
                [8, 0]]), tensor([2, 1]))
    """
    out = torch.zeros((len(seqs), width), dtype=torch.long)
    lengths = torch.zeros(len(seqs), dtype=torch.long)
    for i, s in enumerate(seqs):
        s = s[:width]
        out[i, : s.numel()] = s
        lengths[i] = s.numel()
    return out, lengths


def _generative_model(module: Any) -> Any:
    """The Hugging Face model found by :func:`~memcallbacks.lm.model.find_hf_model` when it can generate."""
    found = find_hf_model(module)
    return found if callable(getattr(found, "prepare_inputs_for_generation", None)) else None


def _cached_lm(hf: Any) -> HFIncrementalLM | None:
    """The KV-cache conventions (call, crop, step) for ``hf``: one implementation, in :mod:`memcallbacks.lm.hf`."""
    if hf is None:
        return None
    try:
        return HFIncrementalLM(hf)
    except (ImportError, TypeError):
        return None


class LanguageModel:
    """Teacher-forced logits and batched greedy decoding for one module (cache reuse where offered).

    The logits come from ``forward_fn(module, ids)`` when given, else from the module's Hugging Face
    generative model (:func:`~memcallbacks.lm.model.find_hf_model`), else from ``module(ids)``.
    Greedy decoding tries, in order, the module's own :class:`~memcallbacks.lm.scoring.IncrementalLM`
    interface, the Hugging Face KV cache and full passes (``decoding="auto"``); the first that works
    is kept (:attr:`mode`). ``decoding="cache"`` refuses full passes, ``"full"`` uses nothing else.

    Args:
        module: the language model.
        forward_fn: ``(module, token_ids [B, T]) -> logits [B, T, V]``, or None.
        decoding: ``"auto"``, ``"cache"`` or ``"full"``.

    Example:
        >>> from memcallbacks.demos.toy import CharLSTMLM
        >>> lm = LanguageModel(CharLSTMLM(vocab_size=12), None, "auto")
        >>> lm.greedy(torch.tensor([[1, 2, 3]]), 4).shape, lm.mode
        (torch.Size([1, 4]), 'incremental')
    """

    def __init__(self, module: Any, forward_fn: ForwardFn | None, decoding: str) -> None:
        self.module = module
        self.forward_fn = forward_fn
        self.hf: Any = _generative_model(module) if forward_fn is None else None
        self.cached = _cached_lm(self.hf) if decoding != "full" else None
        self._no_cache_kwargs = (
            {"use_cache": False} if self.hf is not None and "use_cache" in forward_params(self.hf) else {}
        )
        self._prefill_unusable = False  # the scoring pass returned no cache this model can crop
        self.requested = decoding
        self.mode: str | None = None  # resolved on the first decode: incremental | kv_cache | full
        self.fallback_reason: str | None = None

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``[B, T, V]`` of ``ids [B, T]``, float32 (float64 kept)."""
        if self.forward_fn is not None:
            return _float_logits(self.forward_fn(self.module, ids), ids, "`forward_fn`")
        if self.hf is not None:  # no KV cache: nothing decodes from this pass
            return _float_logits(self.hf(input_ids=ids, **self._no_cache_kwargs), ids, type(self.hf).__name__)
        return _float_logits(self.module(ids), ids, f"`{type(self.module).__name__}(token_ids)`")

    def decodes_from_scoring_pass(self) -> bool:
        """Whether greedy decoding starts from the scoring pass's KV cache (the cache path, chosen or untried)."""
        return (
            self.cached is not None
            and not self._prefill_unusable
            and self.mode in (None, "kv_cache")
            and self._candidates()[0] == "kv_cache"
        )

    def logits_and_state(self, ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Teacher-forced logits and the model's KV cache after every token (None when unusable)."""
        assert self.cached is not None
        logits, state = self.cached.prefill(ids)
        if state is None:
            self._prefill_unusable = True
        return _float_logits(logits, ids, type(self.hf).__name__), state

    def _candidates(self) -> list[str]:
        if self.requested == "full":
            return ["full"]
        cands = []
        if callable(getattr(self.module, "init_state", None)) and callable(
            getattr(self.module, "step", None)
        ):
            cands.append("incremental")
        if self.cached is not None:
            cands.append("kv_cache")
        return [*cands, "full"]

    def greedy(
        self, prefix: torch.Tensor, steps: int, start: tuple[Any, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Greedy ids ``[B, steps]``; ``start``: the KV cache after the prefix and the next logits (cache path).

        Raises:
            TypeError: ``decoding="cache"`` and the model offers no usable cache.
        """
        if self.mode is not None:
            return self._greedy(self.mode, prefix, steps, start)
        errors: list[str] = []
        for mode in self._candidates():
            if mode == "full" and self.requested == "cache":
                raise TypeError(
                    "`decoding='cache'`: the model offers no usable cache (IncrementalLM `init_state`/`step` "
                    f"or a Hugging Face `past_key_values`){': ' + '; '.join(errors) if errors else ''}; "
                    "use decoding='auto'"
                )
            try:
                out = self._greedy(mode, prefix, steps, start)
            except Exception as e:
                if mode == "full":
                    raise
                errors.append(f"{mode}: {type(e).__name__}: {e}")
                continue
            self.mode = mode
            if mode == "full" and self.requested == "auto":
                self.fallback_reason = "; ".join(errors) or "no IncrementalLM or KV cache"
            return out
        raise AssertionError("unreachable")

    def _greedy(
        self, mode: str, prefix: torch.Tensor, steps: int, start: tuple[Any, torch.Tensor] | None
    ) -> torch.Tensor:
        if mode == "kv_cache":
            assert self.cached is not None
            if start is not None:
                return self.cached.greedy(prefix, steps, state=start[0], next_logits=start[1])
            return self.cached.greedy(prefix, steps)
        if mode == "incremental":
            state, logp = self.module.init_state(prefix)

            def step(tok: torch.Tensor) -> torch.Tensor:
                nonlocal state
                state, next_logp = self.module.step(state, tok)
                return next_logp

            return greedy_decode(logp, steps, step, source="init_state/step", batch=prefix.shape[0])
        seq = prefix

        def extend(tok: torch.Tensor) -> torch.Tensor:
            nonlocal seq
            seq = torch.cat([seq, tok.unsqueeze(1)], dim=1)
            return self.logits(seq)[:, -1]

        return greedy_decode(self.logits(seq)[:, -1], steps, extend, source="the model")


def _float_logits(out: Any, ids: torch.Tensor, who: str) -> torch.Tensor:
    logits = output_logits(out, ids, source=f"{who} (SequenceMemorisationMonitor)", fix=_FORWARD_FN_FIX)
    if not logits.is_floating_point():
        raise TypeError(
            f"the model's logits must be floating point, got dtype {logits.dtype}; pass `forward_fn`"
        )
    return logits.float() if logits.dtype != torch.float64 else logits


@dataclass(frozen=True)
class WindowScores:
    """Per-probe results of :func:`score_windows`, one row per window.

    Attributes:
        loss: ``[N]`` float64 mean token NLL of the window's real tokens (NaN below two tokens).
        min_k: ``[N]`` float64 Min-K% Prob (higher = member).
        min_k_pp: ``[N]`` float64 Min-K%++ (higher = member; NaN when no token has a defined score).
        exact: ``[N]`` float64, 1.0 when greedy decoding reproduces the suffix exactly, else 0.0;
            NaN for a window shorter than ``prefix_len + suffix_len`` (not decoded).
        token_match: ``[N]`` float64 fraction of suffix tokens decoded right (NaN when not decoded).
        log_q: ``[N, K]`` float64 ``log q`` per sampling scheme (NaN when not decoded).
        generated: ``[N, suffix_len]`` int64 greedy continuation (-1 when not decoded).
    """

    loss: torch.Tensor
    min_k: torch.Tensor
    min_k_pp: torch.Tensor
    exact: torch.Tensor
    token_match: torch.Tensor
    log_q: torch.Tensor
    generated: torch.Tensor

    def rows(self, index: Any) -> WindowScores:
        """The results of the rows ``index`` (a slice, a tensor or an array of row numbers)."""
        return WindowScores(**{name: value[index] for name, value in self.fields().items()})

    def fields(self) -> dict[str, torch.Tensor]:
        """The results by name (``loss``, ``min_k``, ``min_k_pp``, ``exact``, ``token_match``, ``log_q``, ...)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def to(self, device: torch.device | str) -> WindowScores:
        """The same results on ``device``."""
        return WindowScores(**{name: value.to(device) for name, value in self.fields().items()})


class _Results:
    """The tensors :func:`score_windows` fills, batch by batch (on the evaluation device)."""

    def __init__(self, n: int, k_schemes: int, steps: int, device: torch.device) -> None:
        def nan(*shape: int) -> torch.Tensor:
            return torch.full(shape, float("nan"), dtype=torch.float64, device=device)

        self.loss, self.min_k, self.min_k_pp = nan(n), nan(n), nan(n)
        self.exact, self.token_match = nan(n), nan(n)
        self.log_q = nan(n, k_schemes)
        self.generated = torch.full((n, steps), -1, dtype=torch.long, device=device)

    def decoded(
        self, lm: LanguageModel, at: torch.Tensor, ids: torch.Tensor, prefix_len: int, begin: Any
    ) -> None:
        """Greedy decoding of the windows ``ids`` (rows ``at``) from their prefix."""
        generated = lm.greedy(ids[:, :prefix_len], self.generated.shape[1], begin)
        match = extraction_match(generated, ids[:, prefix_len:])
        at = at.to(self.exact.device)
        self.exact[at], self.token_match[at], self.generated[at] = match.exact, match.token_match, generated

    def result(self) -> WindowScores:
        return WindowScores(
            self.loss, self.min_k, self.min_k_pp, self.exact, self.token_match, self.log_q, self.generated
        )


def _vocabulary(lm: LanguageModel, device: torch.device, max_id: int | None, sampling: Sequence[Any]) -> int:
    """The vocabulary size from a one-token pass (token 0), before any probe id reaches an embedding."""
    vocab = int(lm.logits(torch.zeros((1, 1), dtype=torch.long, device=device)).shape[-1])
    if max_id is not None and max_id >= vocab:
        raise ValueError(
            f"a probe holds token id {max_id}, outside the model's vocabulary of {vocab} tokens: "
            "`members`/`nonmembers` were tokenised with another tokenizer; tokenise them as the training data"
        )
    for s, (_, top_k) in enumerate(sampling):
        if top_k is not None and top_k > vocab:
            raise ValueError(
                f"`sampling[{s}]['top_k']`={top_k} is larger than the model's vocabulary ({vocab} tokens); "
                "pass a top_k in [1, vocabulary size] or None"
            )
    return vocab


def score_windows(
    lm: LanguageModel,
    windows: torch.Tensor,
    lengths: torch.Tensor,
    *,
    prefix_len: int,
    suffix_len: int,
    min_k: float,
    sampling: Sequence[tuple[float, int | None]],
    batch_size: int,
    device: torch.device,
    decode: bool = True,
    max_id: int | None = None,
    decode_every_row: bool = False,
) -> WindowScores:
    """Per-probe loss, Min-K% Prob, Min-K%++, ``log q`` per scheme, and greedy extraction of each window.

    ``windows [N, W]`` (right-padded token ids, ``W = prefix_len + suffix_len``, e.g. from
    :func:`pad_windows`) and ``lengths [N]`` on the CPU. Rows shorter than ``W`` get NaN for the
    extraction results and -1 for generated ids. Runs under whatever mode/grad context the caller
    set; no host sync inside the loop.

    With a KV cache (a Hugging Face model), the scoring pass keeps the model's cache; cut back to
    the prefix, it is where greedy decoding of that batch's long rows starts (the prefix is not
    run twice: ``suffix_len - 1`` one-token steps follow one pass over the window). A causal model's
    cache at a position depends on the tokens up to it only, so the right padding of short rows
    changes nothing, and the decoded ids equal decoding from a pass over the prefix alone.

    Args:
        lm: the model, as a :class:`LanguageModel`.
        windows: ``[N, W]`` token ids.
        lengths: ``[N]`` real tokens per window.
        prefix_len: the prompt length in tokens.
        suffix_len: tokens to decode.
        min_k: the Min-K% (and Min-K%++) fraction.
        sampling: ``(temperature, top_k)`` per scheme (see :func:`check_sampling`).
        batch_size: windows per forward pass.
        device: where the model runs.
        decode: run greedy decoding (False: the extraction results stay NaN).
        max_id: the largest probe token id, checked against the logits' vocabulary.
        decode_every_row: decode short rows too (their results are discarded), so that the number
            of forward calls depends on ``N`` and ``batch_size`` only, never on the data: what a
            sharded model needs, where every forward pass is a collective of all ranks.

    Returns:
        A :class:`WindowScores` on ``device``.

    Raises:
        ValueError: a token id or ``top_k`` beyond the model's vocabulary.
        TypeError: a model without next-token logits.
    """
    n, width = windows.shape
    res = _Results(n, len(sampling), suffix_len, device)
    if n == 0:
        return res.result()
    _vocabulary(lm, device, max_id, sampling)
    decoded = torch.zeros(n, dtype=torch.bool)  # on the CPU: rows decoded from their scoring pass
    for start in range(0, n, batch_size):
        rows = torch.arange(start, min(n, start + batch_size))
        use_cache = decode and lm.decodes_from_scoring_pass()
        decoded |= _score_batch(
            lm, res, windows, lengths, rows, prefix_len, min_k, sampling, use_cache, decode_every_row
        )
    short = lengths < width
    long_rows = (~short | decode_every_row).nonzero().flatten()
    rest = long_rows[~decoded[long_rows]] if decode else long_rows[:0]
    for start in range(0, rest.numel(), batch_size):  # without a scoring-pass cache: batches of long rows
        sel = rest[start : start + batch_size]
        res.decoded(lm, sel, windows[sel].to(device), prefix_len, None)
    if decode_every_row and bool(short.any()):  # short rows were decoded for the lockstep only
        at = short.nonzero().flatten().to(res.exact.device)
        res.exact[at], res.token_match[at], res.generated[at] = float("nan"), float("nan"), -1
    return res.result()


def _score_batch(
    lm: LanguageModel,
    res: _Results,
    windows: torch.Tensor,
    lengths: torch.Tensor,
    rows: torch.Tensor,
    prefix_len: int,
    min_k: float,
    sampling: Sequence[tuple[float, int | None]],
    use_cache: bool,
    decode_every_row: bool = False,
) -> torch.Tensor:
    """Scores the windows ``rows`` (contiguous) and, from the pass's cache, decodes the long ones (or all).

    Returns the CPU mask ``[N]`` of the rows decoded here.
    """
    device = res.loss.device
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    ids, length = windows[lo:hi].to(device), lengths[lo:hi].to(device)
    state = None
    if use_cache:
        logits, state = lm.logits_and_state(ids)
    else:
        logits = lm.logits(ids)
    tf = teacher_forced_scores(logits, ids, length, prefix_len=prefix_len, min_k=min_k, sampling=sampling)
    res.loss[lo:hi], res.min_k[lo:hi], res.min_k_pp[lo:hi] = tf.loss, tf.min_k, tf.min_k_pp
    res.log_q[lo:hi] = tf.log_q
    decoded = torch.zeros(windows.shape[0], dtype=torch.bool)
    if state is None:  # no cache: the long rows are decoded later, in batches of their own
        return decoded
    local = ((lengths[lo:hi] >= windows.shape[1]) | decode_every_row).nonzero().flatten()  # on the CPU
    every = local.numel() == ids.shape[0]
    at = local.to(device)
    nxt = (logits[:, prefix_len - 1] if every else logits[at, prefix_len - 1]).clone()
    del logits  # [B, W, V] is not held while decoding
    if local.numel():
        assert lm.cached is not None
        prefix_state = lm.cached.crop_state(state, prefix_len, None if every else at)
        state = None  # only the cut-back copy lives on
        begin = None if prefix_state is None else (prefix_state, nxt)
        res.decoded(lm, local + lo, ids if every else ids[at], prefix_len, begin)
        decoded[local + lo] = True
    return decoded
