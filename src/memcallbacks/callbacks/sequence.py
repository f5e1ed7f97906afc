"""Sequence memorisation of a language model, per epoch: extraction rates and LM membership scores.

At the end of every ``every_n_epochs``-th training epoch the monitor takes fixed, seeded probes
of member sequences (training data) and, when available, non-member sequences (held out), and
measures on the first ``prefix_len + suffix_len`` tokens of each (the *probe window*):

* greedy k-extractable memorisation (Carlini, Ippolito, Jagielski, Lee, Tramer and Zhang,
  "Quantifying Memorization Across Neural Language Models", ICLR 2023): prompted with the first
  ``prefix_len`` tokens, does greedy decoding of ``suffix_len`` tokens reproduce the true
  continuation exactly?
* (n, p)-discoverable extraction (Hayes et al., "Measuring memorization through probabilistic
  discoverable extraction", 2024): the probability ``q`` that one *sampled* continuation equals
  the true one, exact from one teacher-forced pass, and whether ``1 - (1 - q)^n >= p``;
* LM membership scores (members positive, exact ROC): the mean token loss (Yeom et al. 2018),
  Min-K% Prob (Shi et al., ICLR 2024) and the zlib ratio (Carlini et al., USENIX Security 2021).

One teacher-forced forward pass per probe batch gives the loss, Min-K% Prob, the zlib ratio's
numerator and every sampling scheme's ``q``; greedy decoding then runs once over the member
(and non-member) prefixes, reusing the model's state: an
:class:`~memcallbacks.lm.scoring.IncrementalLM` (``init_state``/``step``), a Hugging Face KV cache
(the scoring pass's own cache cut back to the prefix, so the prefix never runs twice; the
conventions live in :class:`memcallbacks.lm.hf.HFIncrementalLM`), or, when neither is offered, full
forward passes over the growing sequence (about ``suffix_len`` times the cost; warned once).

Distributed runs: the probes are split across ranks (contiguous shards of equal length, the last
padded by repeating the final probe), each rank evaluates its shard, one all-gather reassembles
the per-probe results in probe order, and every rank computes the metrics from the same numbers
(every rank logs identical values). Rank 0 writes the run directory and the tracker records.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from memcallbacks import loggers, rundir
from memcallbacks.callbacks._base import MemorisationCallback, state_array, state_tensor
from memcallbacks.callbacks.probes import as_probe_dataset, seeded_indices
from memcallbacks.data.indexed import IndexedDataset
from memcallbacks.lm.hf import HFIncrementalLM, forward_params
from memcallbacks.metrics.membership import membership_inference
from memcallbacks.metrics.sequence import _min_k, _suffix_logq, extraction_probability, zlib_length
from memcallbacks.utilities import distributed
from memcallbacks.utilities.validation import (
    check_choice,
    check_int,
    check_probability,
    check_real,
    check_seed,
    is_int,
)

__all__ = ["SequenceMemorisationMonitor"]

ForwardFn = Callable[[Any, torch.Tensor], Any]
"""``forward_fn(module, token_ids [B, T]) -> logits [B, T, V]`` (or an object with ``.logits``)."""

#: strategies whose forward passes are collectives (ranks cannot evaluate different shards)
_SHARDED_STRATEGIES = frozenset({"FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy"})

#: per-probe result columns (before the ``K`` log q columns and the ``S`` generated ids)
_COLUMNS = ("loss", "min_k", "exact", "token_match")


# --------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------
def _check_sampling(sampling: Any) -> tuple[tuple[float, int | None], ...]:
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


def _check_n_tries(n_tries: Any) -> tuple[int, ...]:
    values = [n_tries] if is_int(n_tries) else n_tries
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"`n_tries` must be positive integers such as (1, 10, 100), got {n_tries!r}")
    out: list[int] = []
    for v in values:
        n = check_int(
            "n_tries",
            v,
            minimum=1,
            hint="each number of sampling tries is an integer >= 1, e.g. (1, 10, 100)",
        )
        if n not in out:
            out.append(n)
    if not out:
        raise ValueError("`n_tries` is empty; pass e.g. n_tries=(1, 10, 100)")
    return tuple(out)


def _validate_init(
    *,
    prefix_len: Any,
    suffix_len: Any,
    num_probe: Any,
    min_k: Any,
    batch_size: Any,
    seed: Any,
    sampling: Any,
    n_tries: Any,
    p_threshold: Any,
    num_top: Any,
    decoding: Any,
    forward_fn: Any,
    tokenizer: Any,
    name: Any,
) -> dict[str, Any]:
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"`name` must be None or a non-empty string, got {name!r}")
    if forward_fn is not None and not callable(forward_fn):
        raise TypeError(
            f"`forward_fn` must be callable (module, token_ids [B, T]) -> logits [B, T, V], got {forward_fn!r}"
        )
    if tokenizer is not None and not callable(getattr(tokenizer, "decode", None)) and not callable(tokenizer):
        raise TypeError(
            f"`tokenizer` must have `decode(ids) -> str` or be a function ids -> str, got {type(tokenizer).__name__}"
        )
    return {
        "prefix_len": check_int(
            "prefix_len", prefix_len, minimum=1, hint="the prompt length in tokens, e.g. 32"
        ),
        "suffix_len": check_int("suffix_len", suffix_len, minimum=1, hint="the continuation length, e.g. 32"),
        "num_probe": check_int("num_probe", num_probe, minimum=1, hint="e.g. num_probe=1000"),
        "min_k": check_real(
            "min_k",
            min_k,
            minimum=0.0,
            maximum=1.0,
            min_inclusive=False,
            hint="e.g. min_k=0.2 (Min-20% Prob)",
        ),
        "batch_size": check_int("batch_size", batch_size, minimum=1, hint="e.g. batch_size=32"),
        "seed": check_seed("seed", seed),
        "sampling": _check_sampling(sampling),
        "n_tries": _check_n_tries(n_tries),
        "p_threshold": check_probability("p_threshold", p_threshold, open_low=True, open_high=True),
        "num_top": check_int(
            "num_top", num_top, minimum=0, hint="rows of the most extractable sequences table"
        ),
        "decoding": check_choice("decoding", decoding, ("auto", "cache", "full")),
    }


# --------------------------------------------------------------------------------------
# Probe items -> token ids
# --------------------------------------------------------------------------------------
def _ids_of(item: Any, name: str, index: int) -> tuple[torch.Tensor, set[int]]:
    """1-D token ids of one dataset item (padding removed) and the pad ids it used."""
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


def _window_tensor(seqs: list[torch.Tensor], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.zeros((len(seqs), width), dtype=torch.long)
    lengths = torch.zeros(len(seqs), dtype=torch.long)
    for i, s in enumerate(seqs):
        s = s[:width]
        out[i, : s.numel()] = s
        lengths[i] = s.numel()
    return out, lengths


# --------------------------------------------------------------------------------------
# The model: logits, greedy decoding
# --------------------------------------------------------------------------------------
def _hf_model(module: Any) -> Any:
    """``module`` or its one direct child that is a Hugging Face generative model, else ``None``."""
    if callable(getattr(module, "prepare_inputs_for_generation", None)):
        return module
    found = (
        [c for c in module.children() if callable(getattr(c, "prepare_inputs_for_generation", None))]
        if isinstance(module, torch.nn.Module)
        else []
    )
    return found[0] if len(found) == 1 else None


def _logits_of(out: Any, ids: torch.Tensor, who: str) -> torch.Tensor:
    logits = out.get("logits", out) if isinstance(out, Mapping) else getattr(out, "logits", out)
    if isinstance(logits, (list, tuple)) and logits:
        logits = logits[0]
    if (
        not isinstance(logits, torch.Tensor)
        or logits.dim() != 3
        or tuple(logits.shape[:2]) != tuple(ids.shape)
    ):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(out).__name__
        raise TypeError(
            f"SequenceMemorisationMonitor needs next-token logits [B, T, V] from {who} for token ids "
            f"[B, T]={tuple(ids.shape)}, got {got}; pass `forward_fn=lambda module, ids: module(ids).logits` "
            "(any function returning causal-LM logits, position t predicting token t + 1)"
        )
    if not logits.is_floating_point():
        raise TypeError(
            f"the model's logits must be floating point, got dtype {logits.dtype}; pass `forward_fn`"
        )
    return logits.float() if logits.dtype != torch.float64 else logits


def _cached_lm(hf: Any) -> HFIncrementalLM | None:
    """The KV-cache conventions (call, crop, step) for ``hf``: one implementation, in :mod:`memcallbacks.lm.hf`."""
    if hf is None:
        return None
    try:
        return HFIncrementalLM(hf)
    except (ImportError, TypeError):
        return None


class _LanguageModel:
    """Teacher-forced logits and batched greedy decoding for one module (cache reuse where offered)."""

    def __init__(self, module: Any, forward_fn: ForwardFn | None, decoding: str) -> None:
        self.module = module
        self.forward_fn = forward_fn
        self.hf: Any = _hf_model(module) if forward_fn is None else None
        self.cached = _cached_lm(self.hf) if decoding != "full" else None
        self._no_cache_kwargs = (
            {"use_cache": False} if self.hf is not None and "use_cache" in forward_params(self.hf) else {}
        )
        self._prefill_unusable = False  # the scoring pass returned no cache this model can crop
        self.requested = decoding
        self.mode: str | None = None  # resolved on the first decode: incremental | kv_cache | full
        self.fallback_reason: str | None = None

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        if self.forward_fn is not None:
            return _logits_of(self.forward_fn(self.module, ids), ids, "`forward_fn`")
        if self.hf is not None:  # no KV cache: nothing decodes from this pass
            return _logits_of(self.hf(input_ids=ids, **self._no_cache_kwargs), ids, type(self.hf).__name__)
        return _logits_of(self.module(ids), ids, f"`{type(self.module).__name__}(token_ids)`")

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
        return _logits_of(logits, ids, type(self.hf).__name__), state

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
        """Greedy ids ``[B, steps]``; ``start``: the KV cache after the prefix and the next logits (cache path)."""
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
            except Exception as e:  # noqa: BLE001 - try the next path; the last one re-raises
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
        b = prefix.shape[0]
        if mode == "kv_cache":
            assert self.cached is not None
            if start is not None:
                return self.cached.greedy(prefix, steps, state=start[0], next_logits=start[1])
            return self.cached.greedy(prefix, steps)
        out = torch.empty((b, steps), dtype=torch.long, device=prefix.device)
        if mode == "incremental":
            state, logp = self.module.init_state(prefix)
            for j in range(steps):
                if not isinstance(logp, torch.Tensor) or logp.dim() != 2 or logp.shape[0] != b:
                    raise ValueError(
                        f"init_state/step returned next-token scores of shape "
                        f"{getattr(logp, 'shape', None)} for a batch of {b}"
                    )
                tok = logp.argmax(dim=-1)
                out[:, j] = tok
                if j + 1 < steps:
                    state, logp = self.module.step(state, tok)
            return out
        seq = prefix
        for j in range(steps):
            tok = self.logits(seq)[:, -1].argmax(dim=-1)
            out[:, j] = tok
            seq = torch.cat([seq, tok.unsqueeze(1)], dim=1)
        return out


def evaluate_windows(
    lm: _LanguageModel,
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
) -> torch.Tensor:
    """Per-probe results ``[N, 4 + K + S]`` float64 on ``device``: loss, Min-K%, exact, token match, log q, ids.

    ``windows [N, W]`` (right-padded token ids, ``W = prefix_len + suffix_len``) and ``lengths [N]`` on
    the CPU. Rows shorter than ``W`` get NaN for the extraction columns and for generated ids. Runs
    under whatever mode/grad context the caller set; no host sync inside the loop. ``max_id``: the
    largest probe token id, checked against the logits' vocabulary.

    With a KV cache (a Hugging Face model), the scoring pass keeps the model's cache; cut back to
    the prefix, it is where greedy decoding of that batch's long rows starts (the prefix is not
    run twice: ``suffix_len - 1`` one-token steps follow one pass over the window). A causal model's
    cache at a position depends on the tokens up to it only, so the right padding of short rows
    changes nothing, and the decoded ids equal decoding from a pass over the prefix alone.
    """
    n, width = windows.shape
    k_schemes, steps = len(sampling), suffix_len
    out = torch.full((n, len(_COLUMNS) + k_schemes + steps), math.nan, dtype=torch.float64, device=device)
    if n == 0:
        return out
    long_rows = (lengths >= width).nonzero().flatten()
    # the vocabulary from a one-token pass (token 0), before any probe id reaches an embedding
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
    positions = torch.arange(width - 1, device=device)
    gen_cols = slice(len(_COLUMNS) + k_schemes, None)
    decoded = torch.zeros(n, dtype=torch.bool)  # on the CPU: rows decoded from their scoring pass

    def decode_rows(sel: torch.Tensor, ids: torch.Tensor, begin: tuple[Any, torch.Tensor] | None) -> None:
        generated = lm.greedy(ids[:, :prefix_len], steps, begin)
        match = (generated == ids[:, prefix_len:]).double()
        at = sel.to(device)
        out[at, 2] = match.min(dim=1).values
        out[at, 3] = match.mean(dim=1)
        out[at, gen_cols] = generated.double()

    for start in range(0, n, batch_size):
        ids = windows[start : start + batch_size].to(device)
        length = lengths[start : start + batch_size].to(device)
        state = None
        if decode and lm.decodes_from_scoring_pass():
            logits, state = lm.logits_and_state(ids)
        else:
            logits = lm.logits(ids)
        targets = ids[:, 1:]
        tok_lp = logits[:, :-1].gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(
            logits[:, :-1], dim=-1
        )  # [B, W-1]
        valid = positions.unsqueeze(0) < (length - 1).unsqueeze(1)
        count = valid.sum(dim=1)
        loss = -torch.where(valid, tok_lp, torch.zeros_like(tok_lp)).sum(dim=1) / count.clamp_min(1)
        loss = torch.where(count > 0, loss, torch.full_like(loss, math.nan))
        rows = slice(start, start + ids.shape[0])
        out[rows, 0] = loss.double()
        out[rows, 1] = _min_k(tok_lp, valid, min_k).double()
        is_long = (length >= width).unsqueeze(1)
        suffix_lp = tok_lp[:, prefix_len - 1 :]
        for s, (temperature, top_k) in enumerate(sampling):
            if temperature == 1.0 and (top_k is None or top_k == vocab):
                logq = suffix_lp.sum(dim=1)  # the full softmax: the teacher-forced log-probabilities already
            else:
                logq = _suffix_logq(
                    logits[:, prefix_len - 1 : width - 1], ids[:, prefix_len:], temperature, top_k
                )
            out[rows, len(_COLUMNS) + s] = torch.where(is_long[:, 0], logq.double(), math.nan)
        if state is not None:  # decode this batch's long rows from the scoring pass's cache
            local = (lengths[start : start + ids.shape[0]] >= width).nonzero().flatten()  # on the CPU
            every = local.numel() == ids.shape[0]
            at = local.to(device)
            nxt = (logits[:, prefix_len - 1] if every else logits[at, prefix_len - 1]).clone()
            del logits  # [B, W, V] is not held while decoding
            if local.numel():
                assert lm.cached is not None
                prefix_state = lm.cached.crop_state(state, prefix_len, None if every else at)
                state = None  # only the cut-back copy lives on
                begin = None if prefix_state is None else (prefix_state, nxt)
                decode_rows(local + start, ids if every else ids[at], begin)
                decoded[local + start] = True
        else:
            del logits
    rest = long_rows[~decoded[long_rows]] if decode else long_rows[:0]
    for start in range(0, rest.numel(), batch_size):  # without a scoring-pass cache: batches of long rows
        sel = rest[start : start + batch_size]
        decode_rows(sel, windows[sel].to(device), None)
    return out


# --------------------------------------------------------------------------------------
# The callback
# --------------------------------------------------------------------------------------
class SequenceMemorisationMonitor(MemorisationCallback):
    """Log how much of its training text a language model reproduces, and how well LM scores flag it.

    At the end of each ``every_n_epochs``-th training epoch, in eval mode under
    ``torch.inference_mode()`` (float32 scores; train mode restored afterwards), on fixed seeded
    probes of ``num_probe`` member sequences and ``num_probe`` non-member sequences, each cut to
    its first ``prefix_len + suffix_len`` tokens (the probe window):

    =============================================  ==================================================
    ``mem/extract/exact_rate``                     fraction of member probes whose greedy
                                                   continuation of the prefix equals the true
                                                   ``suffix_len``-token suffix (Carlini et al. 2023)
    ``mem/extract/token_match``                    mean fraction of suffix positions predicted right
    ``mem/extract/skipped``                        member probes shorter than the window (not decoded)
    ``mem/extract/exact_rate_nonmember``,          the same on the non-member probes: what the model
    ``.../token_match_nonmember``,                 reproduces without having seen it (templates,
    ``.../skipped_nonmember``                      boilerplate)
    ``mem/extract/prob_rate/n<n>``                 fraction of member probes that ``n`` samples
                                                   (first ``sampling`` scheme) reproduce with
                                                   probability ``>= p_threshold`` (Hayes et al. 2024)
    ``mem/extract/prob_mean``                      mean single-sample probability ``q`` (first scheme)
    ``mem/extract/prob_rate/n<n>/s<i>``,           the same for the ``i``-th further scheme (i >= 1)
    ``mem/extract/prob_mean/s<i>``
    ``.../prob_rate_nonmember/n<n>[/s<i>]``,       the same on the non-member probes: the (n, p)
    ``.../prob_mean_nonmember[/s<i>]``             baseline of text the model never trained on
    ``mem/mia_lm/auc/loss``, ``.../auc/min_k``,    ROC AUC (members positive, exact ROC) of the mean
    ``.../auc/zlib``                               token loss, Min-K% Prob and zlib ratio scores
    ``mem/mia_lm/tpr@1%fpr/loss``, ``/min_k``,     TPR at FPR <= 1% for each score
    ``/zlib``
    ``mem/mia_lm/n_members``, ``n_nonmembers``     probes with a finite score
    ``mem/mia_lm/nonfinite``                       probes with a NaN/inf loss (excluded; warned once)
    =============================================  ==================================================

    The membership and non-member keys need non-members: ``nonmembers=`` or, by default, the
    validation data; without either only the member extraction keys are logged (warned once).

    What (n, p) means: ``prob_rate/n100 = 0.05`` with ``p_threshold=0.1`` says that for 5% of the
    probed training sequences, a user who regenerates 100 times from the sequence's first
    ``prefix_len`` tokens gets the rest of it back, word for word, with probability at least 10%.

    Run directory (``<log_dir>/memcallbacks/sequence/``, rank 0, rewritten each evaluation):
    ``sequences.npz`` (``epochs [E]``; ``member_indices [n]``, ``nonmember_indices [m]`` into the
    datasets; ``member_lengths``, ``nonmember_lengths`` (window tokens); per epoch and probe,
    float64 with NaN where undefined: ``member_loss``, ``member_min_k``, ``member_zlib``,
    ``member_exact``, ``member_token_match`` ``[E, n]``, ``member_log_q [E, n, K]`` and the same
    ``nonmember_*``; with ``log_secrets=True`` also ``member_generated [n, suffix_len]``, the
    latest greedy continuations, -1 for skipped probes) and ``metrics.json``
    (``{"history": [...], "decoding": ..., ...}``).

    Tracker records (rank 0): ``mem/extract/prob_rate_vs_n`` (a line per epoch: rate against n,
    with the greedy rate), ``RocCurve`` ``mem/mia_lm/roc/<score>``; with ``log_per_sample=True``
    the table ``mem/extract/top_sequences`` of the ``num_top`` most extractable member probes
    (dataset index, ``log10 q``, exact, token match), with their text (prefix, true suffix, greedy
    suffix; needs ``tokenizer``, else token ids) only with ``log_secrets=True``.

    Args:
        members: member (training) sequences: a map-style dataset (or a DataLoader over one; an
            :class:`~memcallbacks.IndexedDataset` is unwrapped) whose items are 1-D token ids or
            dicts with ``input_ids`` (and optionally ``attention_mask``; masked positions are
            dropped). Default: the dataset behind ``trainer.train_dataloader``. A seeded random
            subset of ``num_probe`` is probed.
        nonmembers: held-out sequences, same item forms. Default: the validation dataset.
        prefix_len: prompt length in tokens (``>= 1``).
        suffix_len: continuation length in tokens (``>= 1``).
        num_probe: sequences probed from each of members and non-members.
        min_k: the fraction of least likely tokens Min-K% Prob averages, in ``(0, 1]``.
        batch_size: probes per forward pass (logits ``[batch, window, vocab]`` float32 are held).
        every_n_epochs: evaluate after every this many training epochs.
        seed: seed of the probe subsets.
        sampling: the sampling schemes of the (n, p) keys: a dict or list of dicts with
            ``temperature`` (> 0) and ``top_k`` (None, or ``[1, vocabulary]``).
        n_tries: the numbers of samples ``n`` of ``mem/extract/prob_rate/n<n>``.
        p_threshold: ``p`` in ``(0, 1)``.
        forward_fn: ``(module, token_ids [B, T]) -> logits [B, T, V]``; default ``module(ids)`` (its
            ``.logits`` if it has one), or the module's Hugging Face model when it holds one.
        decoding: ``"auto"`` (IncrementalLM, else KV cache, else full passes), ``"cache"`` (refuse
            full passes) or ``"full"``.
        tokenizer: optional, ``decode(ids) -> str`` (or a function): the zlib ratio then compresses
            the decoded text (else the token ids as bytes), and tables can show text.
        num_top: rows of the per-sample table.
        name: tells two monitors in one Trainer apart: state key, run-directory folder
            (``sequence_<name>``) and logged keys, which end in ``/<name>``
            (``mem/extract/exact_rate/<name>``); ``history`` keeps the plain keys.
        run_dir: override the run directory root.
        log_per_sample: send the per-sample table to loggers.
        log_secrets: include the sequences' text in that table and save greedy continuations.

    Raises:
        ValueError: out-of-range arguments (``prefix_len``/``suffix_len`` < 1, ``min_k`` outside
            (0, 1], ``p_threshold`` outside (0, 1), ``temperature`` <= 0, ``top_k`` < 1 or larger than
            the vocabulary, ``n_tries`` < 1), no probe sequence long enough, different pad ids in
            members and non-members, token ids outside the model's vocabulary.
        TypeError: wrong argument types, items that are not token sequences, a model without
            next-token logits.
        RuntimeError: no training dataset to probe, or a fully sharded strategy (FSDP, DeepSpeed).

    Example:
        >>> import pytorch_lightning as pl
        >>> from memcallbacks import SequenceMemorisationMonitor
        >>> monitor = SequenceMemorisationMonitor(prefix_len=32, suffix_len=32, n_tries=(1, 10, 100))
        >>> trainer = pl.Trainer(callbacks=[monitor], max_epochs=3)  # doctest: +SKIP
        >>> trainer.fit(model, train_loader, val_loader)  # doctest: +SKIP
        >>> trainer.callback_metrics["mem/extract/exact_rate"]  # doctest: +SKIP
        tensor(0.0420)
    """

    subdir = rundir.SEQUENCE

    def __init__(
        self,
        members: Any = None,
        nonmembers: Any = None,
        *,
        prefix_len: int = 32,
        suffix_len: int = 32,
        num_probe: int = 1000,
        min_k: float = 0.2,
        batch_size: int = 32,
        every_n_epochs: int = 1,
        seed: int = 0,
        sampling: Any = ({"temperature": 1.0, "top_k": None},),
        n_tries: Any = (1, 10, 100),
        p_threshold: float = 0.1,
        forward_fn: ForwardFn | None = None,
        decoding: str = "auto",
        tokenizer: Any = None,
        num_top: int = 10,
        name: str | None = None,
        run_dir: Any = None,
        log_per_sample: bool = False,
        log_secrets: bool = False,
    ) -> None:
        super().__init__(
            every_n_epochs=every_n_epochs,
            run_dir=run_dir,
            log_per_sample=log_per_sample,
            log_secrets=log_secrets,
        )
        args = _validate_init(
            prefix_len=prefix_len,
            suffix_len=suffix_len,
            num_probe=num_probe,
            min_k=min_k,
            batch_size=batch_size,
            seed=seed,
            sampling=sampling,
            n_tries=n_tries,
            p_threshold=p_threshold,
            num_top=num_top,
            decoding=decoding,
            forward_fn=forward_fn,
            tokenizer=tokenizer,
            name=name,
        )
        self.prefix_len: int = args["prefix_len"]
        self.suffix_len: int = args["suffix_len"]
        self.num_probe: int = args["num_probe"]
        self.min_k: float = args["min_k"]
        self.batch_size: int = args["batch_size"]
        self.seed: int = args["seed"]
        self.sampling: tuple[tuple[float, int | None], ...] = args["sampling"]
        self.n_tries: tuple[int, ...] = args["n_tries"]
        self.p_threshold: float = args["p_threshold"]
        self.num_top: int = args["num_top"]
        self.decoding_requested: str = args["decoding"]
        self.forward_fn = forward_fn
        self.tokenizer = tokenizer
        self.name = name
        if name is not None:
            self.subdir = (
                f"{rundir.SEQUENCE}_{''.join(c if c.isalnum() or c in '-_.' else '_' for c in name)}"
            )
        self._members_arg = as_probe_dataset("members", members, item="token sequence")
        self._nonmembers_arg = as_probe_dataset("nonmembers", nonmembers, item="token sequence")

        # probes (resolved at the first evaluation; indices kept across resume)
        self._member_indices: np.ndarray | None = None
        self._nonmember_indices: np.ndarray | None = None
        self._windows: torch.Tensor | None = None
        self._lengths: torch.Tensor | None = None
        self._zlib: np.ndarray | None = None
        self._max_id = 0
        # history
        self._epochs: list[int] = []
        self._results: list[np.ndarray] = []  # per evaluation: [N, 4 + K] float64
        self._generated: np.ndarray | None = None
        self._metrics_history: list[dict[str, float]] = []
        self._warned: set[str] = set()
        self._lm: _LanguageModel | None = None
        self.decoding: str | None = None
        """The decoding path used: ``"incremental"``, ``"kv_cache"`` or ``"full"`` (after an evaluation)."""
        self.last_eval_seconds: float = float("nan")
        """Wall time of the last evaluation (forward passes, decoding, metrics, files, records)."""

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_lm"] = None  # holds the module: never pickled with the callback (ddp_spawn)
        return state

    @property
    def width(self) -> int:
        """The probe window, ``prefix_len + suffix_len`` tokens."""
        return self.prefix_len + self.suffix_len

    # -- identity and state --------------------------------------------------------------
    def _state_key_args(self) -> dict[str, Any]:
        return {} if self.name is None else {"name": self.name}

    def _measured_args(self) -> dict[str, Any]:
        return {
            "prefix_len": self.prefix_len,
            "suffix_len": self.suffix_len,
            "num_probe": self.num_probe,
            "min_k": self.min_k,
            "seed": self.seed,
            "sampling": [[t, k] for t, k in self.sampling],
            "zlib_input": "token_ids" if self.tokenizer is None else "text",
        }

    @property
    def history(self) -> list[dict[str, float]]:
        """One dict per evaluation: ``{"epoch": e, key: value, ...}`` (a copy)."""
        return [dict(row) for row in self._metrics_history]

    def state_dict(self) -> dict[str, Any]:
        return {
            **self.base_state(),
            "member_indices": state_tensor(self._member_indices),
            "nonmember_indices": state_tensor(self._nonmember_indices),
            "epochs": list(self._epochs),
            "results": state_tensor(np.stack(self._results)) if self._results else None,
            "generated": state_tensor(self._generated),
            "history": [dict(row) for row in self._metrics_history],
            "warned": sorted(self._warned),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.load_base_state(state_dict)
        self._member_indices = state_array(state_dict, "member_indices", np.int64)
        self._nonmember_indices = state_array(state_dict, "nonmember_indices", np.int64)
        self._epochs = [int(e) for e in state_dict.get("epochs", [])]
        results = state_array(state_dict, "results", np.float64)
        self._results = [] if results is None else [row.copy() for row in results]
        self._generated = state_array(state_dict, "generated", np.int64)
        self._metrics_history = [dict(row) for row in state_dict.get("history", [])]
        self._warned = set(state_dict.get("warned", []))
        self._windows = None  # re-resolved against the stored indices

    # -- probes ----------------------------------------------------------------------------
    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(f"SequenceMemorisationMonitor: {text}", category=UserWarning)

    def _pick(self, base: Any, stored: np.ndarray | None, salt: int) -> np.ndarray:
        if stored is not None:
            if stored.size and int(stored.max()) >= len(base):
                raise ValueError(
                    f"the checkpoint's probe indices go up to {int(stored.max())} but the dataset has {len(base)} "
                    "sequences; resume with the same data as the checkpointed run"
                )
            return stored
        return seeded_indices(len(base), self.num_probe, [self.seed, salt])

    def _validation_dataset(self, trainer: pl.Trainer) -> Any:
        from memcallbacks.callbacks.probes import dataset_of

        ds = dataset_of(getattr(trainer, "val_dataloaders", None))
        if ds is None:
            dm = getattr(trainer, "datamodule", None)
            if dm is not None and callable(getattr(dm, "val_dataloader", None)):
                try:
                    ds = dataset_of(dm.val_dataloader())
                except Exception:  # noqa: BLE001 - no validation data: non-member keys are skipped (warned)
                    ds = None
        if isinstance(ds, IndexedDataset):
            ds = ds.dataset
        return ds if ds is not None and len(ds) > 0 else None  # type: ignore[arg-type]

    def _resolve(self, trainer: pl.Trainer) -> None:
        if self._windows is not None:
            return
        from memcallbacks.callbacks.probes import dataset_of

        members = self._members_arg
        if members is None:
            members = dataset_of(trainer.train_dataloader)
            if isinstance(members, IndexedDataset):
                members = members.dataset
            if members is None or not hasattr(members, "__len__") or len(members) == 0:
                raise RuntimeError(
                    "SequenceMemorisationMonitor could not find the training dataset behind "
                    "`trainer.train_dataloader`; pass the member sequences yourself: "
                    "`SequenceMemorisationMonitor(members=train_token_dataset, nonmembers=held_out_dataset)`"
                )
        nonmembers = self._nonmembers_arg
        if nonmembers is None and (self._nonmember_indices is None or self._nonmember_indices.size):
            nonmembers = self._validation_dataset(trainer)
        if nonmembers is None and self._nonmember_indices is not None and self._nonmember_indices.size:
            raise RuntimeError(
                "the checkpoint has non-member probes but no `nonmembers=` or validation data was found; "
                "resume with the same data as the checkpointed run"
            )
        self._member_indices = self._pick(members, self._member_indices, 0)
        m_seqs, m_pads = self._load("members", members, self._member_indices)
        if nonmembers is None:
            self._nonmember_indices = np.zeros(0, dtype=np.int64)
            n_seqs: list[torch.Tensor] = []
            n_pads: set[int] = set()
            self._warn_once(
                "no_nonmembers",
                "no non-member sequences (`nonmembers=` not given and no validation data): only the member "
                "extraction keys are logged; pass `nonmembers=held_out_dataset` for mem/mia_lm/* and the baselines",
            )
        else:
            self._nonmember_indices = self._pick(nonmembers, self._nonmember_indices, 1)
            n_seqs, n_pads = self._load("nonmembers", nonmembers, self._nonmember_indices)
        if m_pads and n_pads and m_pads != n_pads:
            raise ValueError(
                f"`members` and `nonmembers` pad with different token ids ({sorted(m_pads)} vs {sorted(n_pads)}): "
                "they were tokenised differently, so their scores cannot be compared; tokenise both with the "
                "same tokenizer and padding settings"
            )
        for what, seqs in (("members", m_seqs), ("nonmembers", n_seqs)):
            if seqs and max(s.numel() for s in seqs) < self.width:
                raise ValueError(
                    f"no `{what}` probe sequence is long enough: greedy extraction needs prefix_len + suffix_len = "
                    f"{self.prefix_len} + {self.suffix_len} = {self.width} tokens, the longest has "
                    f"{max(s.numel() for s in seqs)}; lower `prefix_len`/`suffix_len` or probe longer sequences"
                )
        seqs = m_seqs + n_seqs
        self._windows, self._lengths = _window_tensor(seqs, self.width)
        self._max_id = int(self._windows.max()) if self._windows.numel() else 0
        if self.tokenizer is not None:
            decode = getattr(self.tokenizer, "decode", self.tokenizer)
            self._zlib = np.array(
                [zlib_length(str(decode(s[: self.width].tolist()))) for s in seqs], np.float64
            )
        else:
            self._zlib = np.array([zlib_length(s[: self.width].numpy()) for s in seqs], np.float64)

    def _load(self, name: str, base: Any, indices: np.ndarray) -> tuple[list[torch.Tensor], set[int]]:
        seqs, pads = [], set()
        for i in indices.tolist():
            ids, p = _ids_of(base[i], name, i)
            seqs.append(ids)
            pads |= p
        return seqs, pads

    # -- evaluation --------------------------------------------------------------------------
    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> np.ndarray:
        assert self._windows is not None and self._lengths is not None
        if self._lm is None or self._lm.module is not pl_module:
            self._lm = _LanguageModel(pl_module, self.forward_fn, self.decoding_requested)
        total = self._windows.shape[0]
        windows, lengths = self._windows, self._lengths
        world = distributed.world_size(trainer)
        strategy = type(getattr(trainer, "strategy", None)).__name__
        if world > 1 and strategy in _SHARDED_STRATEGIES:
            raise RuntimeError(
                f"SequenceMemorisationMonitor does not support {strategy} yet (every forward pass is a "
                "collective there, and ranks decode different numbers of probes); use strategy='ddp', or "
                "run the monitor in a separate evaluation with the gathered weights"
            )
        if world > 1:
            per_rank = -(-total // world)
            rank = int(trainer.global_rank)
            positions = torch.tensor([min(rank * per_rank + j, total - 1) for j in range(per_rank)])
            windows, lengths = windows[positions], lengths[positions]
        device = pl_module.device
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.inference_mode():
                out = evaluate_windows(
                    self._lm,
                    windows,
                    lengths,
                    prefix_len=self.prefix_len,
                    suffix_len=self.suffix_len,
                    min_k=self.min_k,
                    sampling=self.sampling,
                    batch_size=self.batch_size,
                    device=device,
                    max_id=self._max_id,
                )
        finally:
            pl_module.train(was_training)
        self.decoding = self._lm.mode
        if self._lm.mode == "full" and self._lm.fallback_reason is not None:
            self._warn_once(
                "full_decoding",
                "greedy decoding runs full forward passes (about `suffix_len` times the cost of one pass): "
                f"the model offers no usable IncrementalLM or KV cache ({self._lm.fallback_reason})",
            )
        if world > 1:
            out = distributed.gather_concat(trainer, out)[:total]
        return out.cpu().numpy()

    # -- metrics -------------------------------------------------------------------------------
    def _split(self, results: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = 0 if self._member_indices is None else len(self._member_indices)
        return results[:n], results[n:]

    def _metrics(self, results: np.ndarray, epoch: int) -> dict[str, float]:
        k = len(self.sampling)
        members, nonmembers = self._split(results)
        loss_m, loss_n = members[:, 0], nonmembers[:, 0]
        long_m = np.isfinite(members[:, 2])
        metrics: dict[str, float] = {
            "mem/extract/exact_rate": _mean(members[long_m, 2]),
            "mem/extract/token_match": _mean(members[long_m, 3]),
            "mem/extract/skipped": float((~long_m).sum()),
        }
        for s in range(k):
            q_rates, q_mean = self._np_rates(members[long_m, len(_COLUMNS) + s])
            if s == 0:
                for n, rate in q_rates.items():
                    metrics[f"mem/extract/prob_rate/n{n}"] = rate
                metrics["mem/extract/prob_mean"] = q_mean
            else:
                for n, rate in q_rates.items():
                    metrics[f"mem/extract/prob_rate/n{n}/s{s}"] = rate
                metrics[f"mem/extract/prob_mean/s{s}"] = q_mean
        if nonmembers.shape[0] == 0:
            return metrics
        long_n = np.isfinite(nonmembers[:, 2])
        metrics["mem/extract/exact_rate_nonmember"] = _mean(nonmembers[long_n, 2])
        metrics["mem/extract/token_match_nonmember"] = _mean(nonmembers[long_n, 3])
        metrics["mem/extract/skipped_nonmember"] = float((~long_n).sum())
        for s in range(k):  # the (n, p) baseline: what sampling reproduces of text never trained on
            q_rates, q_mean = self._np_rates(nonmembers[long_n, len(_COLUMNS) + s])
            if s == 0:
                for n, rate in q_rates.items():
                    metrics[f"mem/extract/prob_rate_nonmember/n{n}"] = rate
                metrics["mem/extract/prob_mean_nonmember"] = q_mean
            else:
                for n, rate in q_rates.items():
                    metrics[f"mem/extract/prob_rate_nonmember/n{n}/s{s}"] = rate
                metrics[f"mem/extract/prob_mean_nonmember/s{s}"] = q_mean

        assert self._zlib is not None
        zlib_m, zlib_n = self._split(self._zlib)
        fin_m, fin_n = np.isfinite(loss_m), np.isfinite(loss_n)
        nonfinite = int((~fin_m).sum() + (~fin_n).sum())
        metrics["mem/mia_lm/nonfinite"] = float(nonfinite)
        metrics["mem/mia_lm/n_members"] = float(fin_m.sum())
        metrics["mem/mia_lm/n_nonmembers"] = float(fin_n.sum())
        if nonfinite:
            self._warn_once(
                "nonfinite",
                f"{nonfinite} probe losses are NaN/inf at epoch {epoch} (or sequences of one token); they are "
                "excluded from mem/mia_lm/* and counted in `mem/mia_lm/nonfinite` (warned once)",
            )
        if not fin_m.any() or not fin_n.any():
            return metrics
        # every score as a "loss": lower = more likely a member (members positive, exact ROC)
        loss = self._attack(loss_m[fin_m], loss_n[fin_n])
        min_k = self._attack(-members[fin_m, 1], -nonmembers[fin_n, 1])
        zlib = self._attack(loss_m[fin_m] / zlib_m[fin_m], loss_n[fin_n] / zlib_n[fin_n])
        metrics["mem/mia_lm/auc/loss"] = loss[0]
        metrics["mem/mia_lm/auc/min_k"] = min_k[0]
        metrics["mem/mia_lm/auc/zlib"] = zlib[0]
        metrics["mem/mia_lm/tpr@1%fpr/loss"] = loss[1]
        metrics["mem/mia_lm/tpr@1%fpr/min_k"] = min_k[1]
        metrics["mem/mia_lm/tpr@1%fpr/zlib"] = zlib[1]
        return metrics

    def _np_rates(self, log_q: np.ndarray) -> tuple[dict[int, float], float]:
        """(n, p) rates per ``n`` and the mean ``q`` of the probes' ``log q`` (one sampling scheme)."""
        lq = np.minimum(log_q, 0.0)
        lq = lq[~np.isnan(lq)]  # NaN logits: excluded (all NaN gives NaN, never a safe 0)
        rates = {
            n: _mean((extraction_probability(lq, n) >= self.p_threshold).astype(np.float64))
            for n in self.n_tries
        }
        return rates, _mean(np.exp(lq))

    def _attack(self, member_losses: np.ndarray, nonmember_losses: np.ndarray) -> tuple[float, float]:
        ok_m, ok_n = np.isfinite(member_losses), np.isfinite(nonmember_losses)
        if not ok_m.any() or not ok_n.any():
            return math.nan, math.nan
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = membership_inference(member_losses[ok_m], nonmember_losses[ok_n], fprs=(0.01,))
        if caught:
            self._warn_once("few_nonmembers", f"{caught[0].message}")
        return float(report.auc), float(report.tpr_at_fpr[0.01])

    # -- epoch end -------------------------------------------------------------------------------
    def on_memorisation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.is_due(trainer):
            return
        start = time.perf_counter()
        epoch = int(trainer.current_epoch)
        self._resolve(trainer)
        results = self._evaluate(trainer, pl_module)
        k = len(self.sampling)
        scores = results[:, : len(_COLUMNS) + k].copy()
        generated = results[:, len(_COLUMNS) + k :]
        self._generated = np.where(np.isfinite(generated), generated, -1).astype(np.int64)
        metrics = self._metrics(scores, epoch)
        self._epochs.append(epoch)
        self._results.append(scores)
        self._metrics_history.append({"epoch": float(epoch), **metrics})
        self.log_metrics(pl_module, metrics)
        if trainer.is_global_zero:
            self._save()
            self._emit_records(trainer, epoch, scores, metrics)
        self.last_eval_seconds = time.perf_counter() - start

    # -- output ----------------------------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        assert self._member_indices is not None and self._nonmember_indices is not None
        assert self._lengths is not None and self._zlib is not None
        k, n = len(self.sampling), len(self._member_indices)
        stack = np.stack(self._results) if self._results else np.zeros((0, 0, len(_COLUMNS) + k))
        lengths = self._lengths.numpy()
        arrays: dict[str, np.ndarray] = {
            "epochs": np.asarray(self._epochs, dtype=np.int64),
            "member_indices": self._member_indices.copy(),
            "nonmember_indices": self._nonmember_indices.copy(),
            "member_lengths": lengths[:n].copy(),
            "nonmember_lengths": lengths[n:].copy(),
        }
        for who, part in (("member", stack[:, :n]), ("nonmember", stack[:, n:])):
            zl = self._zlib[:n] if who == "member" else self._zlib[n:]
            arrays[f"{who}_loss"] = part[..., 0].copy()
            arrays[f"{who}_min_k"] = part[..., 1].copy()
            arrays[f"{who}_zlib"] = part[..., 0] / zl
            arrays[f"{who}_exact"] = part[..., 2].copy()
            arrays[f"{who}_token_match"] = part[..., 3].copy()
            arrays[f"{who}_log_q"] = part[..., len(_COLUMNS) :].copy()
        if self.log_secrets and self._generated is not None:
            arrays["member_generated"] = self._generated[:n].copy()
        return arrays

    def _save(self) -> None:
        summary = {
            "history": [dict(row) for row in self._metrics_history],
            "prefix_len": self.prefix_len,
            "suffix_len": self.suffix_len,
            "min_k": self.min_k,
            "sampling": [{"temperature": t, "top_k": k} for t, k in self.sampling],
            "n_tries": list(self.n_tries),
            "p_threshold": self.p_threshold,
            "decoding": self.decoding,
            "zlib_input": "token_ids" if self.tokenizer is None else "text",
            "n_members": 0 if self._member_indices is None else len(self._member_indices),
            "n_nonmembers": 0 if self._nonmember_indices is None else len(self._nonmember_indices),
        }
        self.write_in_background(rundir.write_sequence, self.run_dir, self._arrays(), summary)

    def _text(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids if int(i) >= 0]
        if self.tokenizer is None:
            return " ".join(map(str, ids))
        return str(getattr(self.tokenizer, "decode", self.tokenizer)(ids))

    def _emit_records(
        self, trainer: pl.Trainer, epoch: int, scores: np.ndarray, metrics: dict[str, float]
    ) -> None:
        rates = [metrics[f"mem/extract/prob_rate/n{n}"] for n in self.n_tries]
        baseline = (  # the same rates on non-members, when there are some
            [metrics[f"mem/extract/prob_rate_nonmember/n{n}"] for n in self.n_tries]
            if "mem/extract/exact_rate_nonmember" in metrics
            else []
        )
        self.emit(
            trainer,
            loggers.LineSeries(
                key="mem/extract/prob_rate_vs_n",
                xs=[float(n) for n in self.n_tries],
                ys={
                    f"(n, p={self.p_threshold:g}) rate": rates,
                    "greedy exact rate": [metrics["mem/extract/exact_rate"]] * len(rates),
                    **({"non-member (n, p) rate": baseline} if baseline else {}),
                },
                epoch=epoch,
                title=f"Extraction rate vs tries, epoch {epoch}",
                xname="n (samples)",
                yname="fraction of member probes",
            ),
        )
        members, nonmembers = self._split(scores)
        if nonmembers.shape[0] and self._zlib is not None:
            from memcallbacks.metrics.membership import roc_curve

            zlib_m, zlib_n = self._split(self._zlib)
            for score, (a, b) in {
                "loss": (members[:, 0], nonmembers[:, 0]),
                "min_k": (-members[:, 1], -nonmembers[:, 1]),
                "zlib": (members[:, 0] / zlib_m, nonmembers[:, 0] / zlib_n),
            }.items():
                a, b = a[np.isfinite(a)], b[np.isfinite(b)]
                if a.size and b.size:
                    fpr, tpr, _ = roc_curve(a, b)
                    self.emit(
                        trainer, loggers.RocCurve(f"mem/mia_lm/roc/{score}", fpr, tpr, epoch, title=score)
                    )
        if not self.log_per_sample or self.num_top == 0 or self._member_indices is None:
            return
        k0 = len(_COLUMNS)
        long_rows = np.flatnonzero(np.isfinite(members[:, 2]))
        order = long_rows[np.lexsort((-members[long_rows, 3], -members[long_rows, k0]))][: self.num_top]
        columns = ["index", "log10_q", "exact", "token_match"]
        if self.log_secrets:
            columns += ["prefix", "true_suffix", "greedy_suffix"]
        rows = []
        for i in order.tolist():
            row: list[Any] = [
                int(self._member_indices[i]),
                float(members[i, k0] / math.log(10.0)),
                bool(members[i, 2] == 1.0),
                float(members[i, 3]),
            ]
            if self.log_secrets and self._windows is not None and self._generated is not None:
                window = self._windows[i].tolist()
                row += [
                    self._text(window[: self.prefix_len]),
                    self._text(window[self.prefix_len :]),
                    self._text(self._generated[i].tolist()),
                ]
            rows.append(row)
        self.emit(
            trainer,
            loggers.Table(
                key="mem/extract/top_sequences",
                columns=columns,
                rows=rows,
                epoch=epoch,
                per_sample=True,
                secret=self.log_secrets,
            ),
        )


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else math.nan
