"""Sequence memorisation of language models: extraction and LM membership scores.

Pure functions (torch or numpy in, the same kind out; no Lightning import):

* :func:`exact_match_rate`, :func:`token_match_rate`: k-extractable memorisation of Carlini,
  Ippolito, Jagielski, Lee, Tramer and Zhang, "Quantifying Memorization Across Neural
  Language Models", ICLR 2023: prompted with the first ``prefix_len`` tokens of a training
  sequence, greedy decoding reproduces the true next ``suffix_len`` tokens exactly.
* :func:`min_k_prob`: Min-K% Prob of Shi, Ajith, Xia, Huang, Liu, Blevins, Chen and
  Zettlemoyer, "Detecting Pretraining Data from Large Language Models", ICLR 2024: the mean
  log-probability of the ``int(k * n)`` least likely of a sequence's ``n`` tokens (higher =
  member).
* :func:`min_k_plus_plus`: Min-K%++ of Zhang, He, Yan, Shen, Zhao, Gu and Shi, "Min-K%++:
  Improved Baseline for Detecting Pre-Training Data from Large Language Models", ICLR 2025:
  each token's log-probability standardised by the mean and standard deviation of the
  log-probabilities under the model's own next-token distribution, then Min-K% of those
  (higher = member).
* :func:`zlib_ratio`: the zlib membership score of Carlini, Tramer, Wallace, Jagielski,
  Herbert-Voss, Lee, Roberts, Brown, Song, Erlingsson, Oprea and Raffel, "Extracting Training
  Data from Large Language Models", USENIX Security 2021: log-perplexity divided by the
  zlib-compressed length of the text in bytes (lower = member).
* :func:`suffix_sample_logprob`, :func:`extraction_probability`: (n, p)-discoverable
  extraction of Hayes, Swanberg, Chaudhari, Yona, Shumailov, Nasr, Choquette-Choo, Lee and
  Cooper, "Measuring memorization through probabilistic discoverable extraction", 2024: the
  probability ``q`` that one sample from the prefix reproduces the suffix, computed exactly
  from teacher-forced token probabilities, and the probability ``1 - (1 - q)^n`` that at
  least one of ``n`` samples does.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from memcallbacks.utilities.validation import check_int, check_real, is_int

__all__ = [
    "DiscoverableRates",
    "ExtractionMatch",
    "TeacherForcedScores",
    "discoverable_rates",
    "exact_match_rate",
    "extraction_match",
    "extraction_probability",
    "min_k_plus_plus",
    "min_k_prob",
    "suffix_sample_logprob",
    "teacher_forced_scores",
    "token_match_rate",
    "zlib_length",
    "zlib_ratio",
]


def _as_tensor(name: str, value: Any, *, integer: bool = False) -> tuple[torch.Tensor, bool]:
    """``value`` as a tensor, and whether it came in as one (so the result can match its kind)."""
    if isinstance(value, torch.Tensor):
        tensor, was_tensor = value, True
    else:
        try:
            tensor, was_tensor = torch.as_tensor(np.asarray(value)), False
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"`{name}` must be a tensor or an array of numbers, got {type(value).__name__}"
            ) from e
    if tensor.dtype == torch.bool or (integer and tensor.is_floating_point()) or tensor.is_complex():
        kind = "integer token ids" if integer else "real numbers"
        raise TypeError(f"`{name}` must hold {kind}, got dtype {tensor.dtype}")
    return tensor, was_tensor


def _out(value: torch.Tensor, as_tensor: bool) -> Any:
    return value if as_tensor else value.detach().cpu().numpy()


# --------------------------------------------------------------------------------------
# k-extractable memorisation (Carlini et al., ICLR 2023)
# --------------------------------------------------------------------------------------
def _check_pair(generated: Any, reference: Any) -> tuple[torch.Tensor, torch.Tensor]:
    gen, _ = _as_tensor("generated", generated, integer=True)
    ref, _ = _as_tensor("reference", reference, integer=True)
    if gen.dim() == 1:
        gen = gen.unsqueeze(0)
    if ref.dim() == 1:
        ref = ref.unsqueeze(0)
    if gen.dim() != 2 or gen.shape != ref.shape:
        raise ValueError(
            f"`generated` and `reference` must be token ids of the same shape [B, S], got "
            f"{tuple(gen.shape)} and {tuple(ref.shape)}; pass one row per sequence, suffixes of equal length"
        )
    if gen.shape[0] == 0 or gen.shape[1] == 0:
        raise ValueError(f"`generated` is empty (shape {tuple(gen.shape)}); pass at least one suffix token")
    return gen, ref.to(gen.device)


def exact_match_rate(generated: Any, reference: Any) -> float:
    """Fraction of sequences whose generated suffix equals the reference suffix exactly.

    The k-extractable memorisation rate of Carlini et al., "Quantifying Memorization Across
    Neural Language Models", ICLR 2023: a training sequence counts as extracted when greedy
    decoding from its prefix reproduces all of its next ``S`` tokens.

    Args:
        generated: token ids ``[B, S]`` (or ``[S]`` for one sequence) the model produced.
        reference: the true suffixes, same shape.

    Returns:
        The fraction in ``[0, 1]`` of rows equal at every position.

    Raises:
        ValueError: shapes differ or are empty.
        TypeError: non-integer inputs.

    Example:
        >>> exact_match_rate([[1, 2, 3], [4, 5, 6]], [[1, 2, 3], [4, 0, 6]])
        0.5
    """
    gen, ref = _check_pair(generated, reference)
    return float((gen == ref).all(dim=1).double().mean().item())


def token_match_rate(generated: Any, reference: Any) -> float:
    """Mean over sequences of the fraction of suffix positions where the generated token is right.

    A graded companion of :func:`exact_match_rate` (Carlini et al., ICLR 2023): a sequence
    reproduced but for one token scores ``(S - 1) / S`` here and 0 there.

    Args:
        generated: token ids ``[B, S]`` (or ``[S]``).
        reference: the true suffixes, same shape.

    Returns:
        The mean per-sequence fraction of matching positions, in ``[0, 1]``.

    Raises:
        ValueError: shapes differ or are empty.

    Example:
        >>> token_match_rate([[1, 2, 3, 4], [4, 5, 6, 7]], [[1, 2, 3, 4], [4, 0, 0, 7]])
        0.75
    """
    gen, ref = _check_pair(generated, reference)
    return float((gen == ref).double().mean(dim=1).mean().item())


# --------------------------------------------------------------------------------------
# Min-K% Prob (Shi et al., ICLR 2024)
# --------------------------------------------------------------------------------------
def min_k_prob(token_logprobs: Any, mask: Any = None, *, k: float = 0.2, validate_args: bool = True) -> Any:
    """Min-K% Prob: mean log-probability of the ``k`` fraction least likely tokens of each sequence.

    Shi et al., "Detecting Pretraining Data from Large Language Models", ICLR 2024. Of a
    sequence's ``n`` scored tokens, the ``m = max(1, int(k * n))`` with the lowest
    log-probability are averaged (``int`` rounds down; a product such as ``0.29 * 100 =
    28.999...`` counts as 29). Higher means more likely a member; ``k = 1`` gives the mean
    token log-probability, minus the usual loss. A sequence with no scored token gives NaN.

    Args:
        token_logprobs: ``log p(x_t | x_<t)`` per token, ``[B, T]`` (or ``[T]``), natural log.
        mask: bool ``[B, T]``, true at scored tokens (padding false); ``None``: all scored.
        k: the fraction in ``(0, 1]`` (the paper's best is 0.2).
        validate_args: check ``k`` and refuse NaN at scored tokens (a host synchronisation);
            False for hot paths whose inputs are known to be valid.

    Returns:
        ``[B]`` (a 0-d value for 1-D input): a float tensor on the input's device when
        ``token_logprobs`` is a tensor, else a numpy array.

    Raises:
        ValueError: ``k`` outside ``(0, 1]``, a shape mismatch, or a NaN among scored tokens.

    Example:
        >>> import numpy as np
        >>> lp = np.log([[0.5, 0.1, 0.9, 0.2, 0.8], [0.5, 0.5, 0.25, 1.0, 1.0]])
        >>> mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=bool)
        >>> np.round(np.exp(min_k_prob(lp, mask, k=0.4)), 6)  # geometric mean of the 2 and the 1 lowest
        array([0.141421, 0.25    ])
    """
    if validate_args:
        k = check_real(
            "k", k, minimum=0.0, maximum=1.0, min_inclusive=False, hint="e.g. k=0.2 (Min-20% Prob)"
        )
    logp, as_tensor = _as_tensor("token_logprobs", token_logprobs)
    one = logp.dim() == 1
    if one:
        logp = logp.unsqueeze(0)
    if logp.dim() != 2:
        raise ValueError(f"`token_logprobs` must be [B, T] (or [T]), got shape {tuple(logp.shape)}")
    if mask is None:
        valid = torch.ones_like(logp, dtype=torch.bool)
    else:
        m, _ = (mask, True) if isinstance(mask, torch.Tensor) else (torch.as_tensor(np.asarray(mask)), False)
        valid = (m.unsqueeze(0) if one and m.dim() == 1 else m).to(device=logp.device).bool()
        if valid.shape != logp.shape:
            raise ValueError(
                f"`mask` must have the shape of `token_logprobs` {tuple(logp.shape)}, got {tuple(valid.shape)}"
            )
    result = _min_k(logp.double() if logp.dtype == torch.float64 else logp.float(), valid, k)
    if validate_args and bool(torch.isnan(logp[valid]).any()):
        raise ValueError("`token_logprobs` holds NaN at a scored token; the score would be meaningless")
    return _out(result[0] if one else result, as_tensor)


def _min_k(logp: torch.Tensor, valid: torch.Tensor, k: float) -> torch.Tensor:
    """Vectorised Min-K% Prob (no checks, no host sync): one sort per row."""
    filled = torch.where(valid, logp, torch.full_like(logp, math.inf))
    ordered, _ = torch.sort(filled, dim=1)  # least likely first, padding (+inf) last
    n = valid.sum(dim=1)
    m = torch.floor(n.to(logp.dtype) * k + 1e-9).clamp_min(1).to(torch.long)
    ordered = torch.where(torch.isinf(ordered) & (ordered > 0), torch.zeros_like(ordered), ordered)
    csum = torch.cumsum(ordered, dim=1)
    idx = (m - 1).clamp(max=max(logp.shape[1] - 1, 0)).unsqueeze(1)
    total = csum.gather(1, idx).squeeze(1) if logp.shape[1] else torch.zeros_like(n, dtype=logp.dtype)
    out = total / m.to(logp.dtype)
    return torch.where(n > 0, out, torch.full_like(out, math.nan))


# --------------------------------------------------------------------------------------
# Min-K%++ (Zhang et al., ICLR 2025)
# --------------------------------------------------------------------------------------
def min_k_plus_plus(
    logits: Any, targets: Any, mask: Any = None, *, k: float = 0.2, validate_args: bool = True
) -> Any:
    """Min-K%++: Min-K% of each token's log-probability standardised under the model's own distribution.

    Zhang, He, Yan, Shen, Zhao, Gu and Shi, "Min-K%++: Improved Baseline for Detecting
    Pre-Training Data from Large Language Models", ICLR 2025. At each scored position t with
    next-token distribution ``p = softmax(logits[t])`` over the whole vocabulary and target
    ``x_t``, the token score is ``(log p(x_t) - mu_t) / sigma_t`` with ``mu_t = sum_z p(z) log p(z)``
    and ``sigma_t = sqrt(sum_z p(z) (log p(z) - mu_t)^2)`` (exact, no sampling); the sequence's
    score is the mean of the ``max(1, int(k * n))`` lowest of its ``n`` token scores, as in
    :func:`min_k_prob`. Higher means more likely a member.

    A position whose distribution has ``sigma_t = 0`` (one-hot, e.g. all other logits ``-inf``, or
    uniform over its support; in practice ``sigma_t`` below the float rounding of the
    log-probabilities, ``8 eps (|mu_t| + sqrt(sum_z p(z) log^2 p(z)))``) has no defined token score:
    it is left out (it counts neither in ``n`` nor in the mean), never an ``inf`` or noise from a
    division by zero. A sequence with no scored token left gives NaN.
    Computed in float32 (float64 kept), vectorised over the batch.

    Args:
        logits: ``[B, T, V]`` (or ``[T, V]``) next-token logits, ``logits[:, t]`` predicting
            ``targets[:, t]`` (already shifted).
        targets: ``[B, T]`` (or ``[T]``) token ids.
        mask: bool ``[B, T]``, true at scored tokens; ``None``: all scored.
        k: the fraction in ``(0, 1]``.
        validate_args: check ``k``, the shapes and the ids (host synchronisations); False on hot paths.

    Returns:
        ``[B]`` (a 0-d value for 2-D input): a float tensor on the logits' device when ``logits``
        is a tensor, else a numpy array.

    Raises:
        ValueError: ``k`` outside ``(0, 1]``, mismatched shapes, or a target id outside the vocabulary.

    Example:
        >>> import numpy as np
        >>> # p = (1/2, 1/4, 1/4): mu = -1.5 log 2, sigma = 0.5 log 2, so target 0 scores +1, target 1
        >>> # scores -1; the uniform third position has sigma = 0 and is left out (n = 2)
        >>> logits = np.log([[[0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]])
        >>> np.round(min_k_plus_plus(logits, [[0, 0, 2]], k=1.0), 6)  # mean of (+1, +1)
        array([1.])
        >>> np.round(min_k_plus_plus(logits, [[0, 1, 2]], k=0.5), 6)  # the lowest int(0.5 * 2) = 1 of (+1, -1)
        array([-1.])
    """
    if validate_args:
        k = check_real("k", k, minimum=0.0, maximum=1.0, min_inclusive=False, hint="e.g. k=0.2 (Min-20%++)")
    lg, as_tensor = _as_tensor("logits", logits)
    tg, _ = _as_tensor("targets", targets, integer=True)
    one = lg.dim() == 2
    if one:
        lg, tg = lg.unsqueeze(0), tg.unsqueeze(0)
    tg = tg.to(device=lg.device, dtype=torch.long)
    if lg.dim() != 3 or tg.shape != lg.shape[:2]:
        raise ValueError(
            f"`logits` must be [B, T, V] and `targets` [B, T] (or [T, V] and [T]), got {tuple(lg.shape)} and "
            f"{tuple(tg.shape)}"
        )
    valid = torch.ones_like(tg, dtype=torch.bool)
    if mask is not None:
        m = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
        valid = (m.unsqueeze(0) if one and m.dim() == 1 else m).to(device=lg.device).bool()
        if valid.shape != tg.shape:
            raise ValueError(
                f"`mask` must have the shape of `targets` {tuple(tg.shape)}, got {tuple(valid.shape)}"
            )
    if validate_args and tg.numel() and (int(tg.min()) < 0 or int(tg.max()) >= lg.shape[-1]):
        raise ValueError(
            f"`targets` holds ids in [{int(tg.min())}, {int(tg.max())}], outside the vocabulary of {lg.shape[-1]}"
        )
    z = min_k_pp_token_scores(lg if lg.dtype == torch.float64 else lg.float(), tg)
    result = _min_k(z, valid & ~torch.isnan(z), k)
    return _out(result[0] if one else result, as_tensor)


def min_k_pp_token_scores(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token Min-K%++ scores ``(log p(x_t) - mu_t) / sigma_t`` (:func:`min_k_plus_plus`); NaN where ``sigma_t = 0``.

    No checks and no host synchronisation (the hot path): ``logits [..., V]`` float, ``targets [...]``
    int64 ids within the vocabulary. Tokens outside the support (``p(z) = 0``) add nothing to
    ``mu_t`` and ``sigma_t``; a target with ``p(x_t) = 0`` scores ``-inf`` (as its log-probability
    does in :func:`min_k_prob`).
    """
    shape, vocab = logits.shape[:-1], logits.shape[-1]
    logp = torch.log_softmax(logits.reshape(-1, vocab), dim=-1)  # [N, V]
    tok = logp.gather(-1, targets.reshape(-1, 1)).squeeze(-1)
    # outside the support (p = 0, log p = -inf) a finite floor: p * log p = 0 there, never 0 * inf
    logp.clamp_(min=torch.finfo(logp.dtype).min)
    p = logp.exp()
    mu = torch.bmm(p.unsqueeze(1), logp.unsqueeze(2)).flatten()  # sum_z p log p, no [N, V] product held
    dev = logp.sub_(mu.unsqueeze(1))  # in place: log p is not needed any more
    var = torch.bmm(p.mul_(dev).unsqueeze(1), dev.unsqueeze(2)).flatten().clamp_min(0.0)
    del p, dev, logp
    sigma = var.sqrt()
    # sigma below the rounding of the log-probabilities is 0 (one-hot or uniform): no defined score;
    # sqrt(sum_z p log^2 p) = sqrt(sigma^2 + mu^2)
    defined = sigma > 8.0 * torch.finfo(sigma.dtype).eps * (mu.abs() + (var + mu.square()).sqrt())
    z = (tok - mu) / torch.where(defined, sigma, 1.0)
    return torch.where(defined, z, math.nan).reshape(shape)


# --------------------------------------------------------------------------------------
# zlib ratio (Carlini et al., USENIX Security 2021)
# --------------------------------------------------------------------------------------
def _token_ids(item: Any) -> np.ndarray | None:
    """``item`` as 1-D non-negative integer token ids, or ``None`` for text and bytes."""
    if isinstance(item, (str, bytes, bytearray, memoryview)):
        return None
    arr = np.asarray(item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else item)
    if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(
            f"`texts_or_bytes` items must be str, bytes or 1-D integer token ids, got {type(item).__name__}"
            f"{' of shape ' + str(arr.shape) if arr.ndim != 1 else ' of dtype ' + str(arr.dtype)}"
        )
    if arr.size and int(arr.min()) < 0:
        raise ValueError("`texts_or_bytes` token ids must be non-negative")
    return arr


def _as_bytes(item: Any, max_id: int | None = None) -> bytes:
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    arr = _token_ids(item)
    assert arr is not None
    top = int(arr.max()) if arr.size else 0
    if max_id is not None:
        if top > max_id:
            raise ValueError(
                f"`max_id`={max_id} but a token id is {top}; pass the largest id of all the sequences compared "
                "(or the vocabulary size - 1)"
            )
        top = int(max_id)
    width = np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.uint32
    return arr.astype(width).astype(np.dtype(width).newbyteorder("<")).tobytes()


def zlib_length(text_or_bytes: Any, *, max_id: int | None = None) -> int:
    """zlib-compressed length in bytes (level 9) of a text (UTF-8), bytes, or token ids.

    Token ids are written as little-endian unsigned integers before compression, 1 byte each when
    the largest id is below 256, 2 below 65,536, else 4, so a character-level id sequence compresses
    like its text. Pass ``max_id`` (the largest id of every sequence compared, or the vocabulary size
    - 1) so that all of them get the same width: without it the width follows this sequence's own
    largest id, and one id changing from 255 to 256 would change the length of the whole sequence.

    Args:
        text_or_bytes: a ``str`` (UTF-8), ``bytes``, or 1-D non-negative integer token ids.
        max_id: token ids only: the id that fixes the width (at least this sequence's largest id).

    Returns:
        The compressed length in bytes.

    Raises:
        TypeError: neither text, bytes nor 1-D integer ids.
        ValueError: a negative id, or an id above ``max_id``.

    Example:
        >>> zlib_length([1, 2, 3], max_id=300) > zlib_length([1, 2, 3])
        True
    """
    return len(zlib.compress(_as_bytes(text_or_bytes, max_id), 9))


def zlib_ratio(log_perplexity: Any, texts_or_bytes: Sequence[Any], *, max_id: int | None = None) -> Any:
    """Log-perplexity divided by the zlib-compressed length (bytes) of each text.

    The zlib membership score of Carlini et al., "Extracting Training Data from Large
    Language Models", USENIX Security 2021 (their code divides ``log(perplexity)``, the
    mean token negative log-likelihood, by ``len(zlib.compress(text))``): text the model
    finds unusually likely for how little it compresses is flagged. Lower = more likely a
    member. zlib level 9; token ids are byte-encoded as in :func:`zlib_length`, all with the width of
    the largest id of the call (or of ``max_id``), so one sequence's ids do not change another's length.

    Args:
        log_perplexity: ``[B]`` log-perplexities (natural log; the mean token NLL, as in the paper).
        texts_or_bytes: ``B`` items, each a ``str`` (UTF-8), ``bytes``, or 1-D token ids.
        max_id: the id that fixes the byte width of token ids (default: the largest id of the call).

    Returns:
        ``[B]`` ratios: a float tensor when ``log_perplexity`` is a tensor, else a numpy array.

    Raises:
        ValueError: lengths differ.
        TypeError: an item is neither text, bytes nor token ids.

    Example:
        >>> import zlib
        >>> zlib_ratio([2.0], ["hello"]), len(zlib.compress(b"hello", 9))
        (array([0.15384615]), 13)
    """
    lp, as_tensor = _as_tensor("log_perplexity", log_perplexity)
    lp = lp.reshape(-1)
    items = list(texts_or_bytes) if not isinstance(texts_or_bytes, (str, bytes)) else [texts_or_bytes]
    if len(items) != lp.numel():
        raise ValueError(
            f"`texts_or_bytes` must hold one text per log-perplexity ({lp.numel()}), got {len(items)}"
        )
    if max_id is None:
        ids = [a for a in map(_token_ids, items) if a is not None and a.size]
        max_id = max((int(a.max()) for a in ids), default=None)
    lengths = torch.tensor(
        [zlib_length(t, max_id=max_id) for t in items], dtype=torch.float64, device=lp.device
    )
    out = lp.double() / lengths
    return _out(out if lp.dtype == torch.float64 or not as_tensor else out.to(lp.dtype), as_tensor)


# --------------------------------------------------------------------------------------
# (n, p)-discoverable extraction (Hayes et al. 2024)
# --------------------------------------------------------------------------------------
def suffix_sample_logprob(
    logits: Any,
    suffix_ids: Any,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    mask: Any = None,
    validate_args: bool = True,
) -> Any:
    """Log-probability ``log q`` that one sample from the model reproduces each suffix exactly.

    Hayes et al., "Measuring memorization through probabilistic discoverable extraction",
    2024: with the prefix fixed and the suffix known, one teacher-forced pass gives the
    sampler's probability of the true token at every suffix position; ``q`` is their product.
    The sampler is softmax at ``temperature``, optionally restricted to the ``top_k`` most
    likely tokens and renormalised (every token whose logit ties the ``k``-th largest is kept,
    as Hugging Face's top-k warper does); a true token outside the top k gives ``q = 0``,
    ``log q = -inf``. Summed in log space, so a 64-token suffix does not underflow.

    Args:
        logits: ``[B, S, V]``: ``logits[:, j]`` is the model's output for suffix token ``j``
            (the position before it, teacher-forced on the true prefix and suffix).
        suffix_ids: ``[B, S]`` the true suffix tokens.
        temperature: sampling temperature, ``> 0``.
        top_k: ``None`` (full softmax) or an integer in ``[1, V]``.
        mask: optional bool ``[B, S]``; positions where it is false are not counted.
        validate_args: check ``temperature``, ``top_k`` and the ids' range (a host
            synchronisation); False for hot paths whose inputs are known to be valid.

    Returns:
        ``[B]`` natural-log probabilities (``<= 0``, ``-inf`` allowed), float32 or float64 as
        the logits (float16/bfloat16 logits are scored in float32); a tensor for tensor input,
        else a numpy array.

    Raises:
        ValueError: ``temperature <= 0``, ``top_k`` outside ``[1, V]``, mismatched shapes, ids
            outside the vocabulary.

    Example:
        >>> import numpy as np
        >>> logits = np.log([[[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]]])  # one sequence, 2 tokens, V=3
        >>> float(np.exp(suffix_sample_logprob(logits, [[0, 2]])[0]))  # 0.5 * 0.3
        0.15
        >>> round(float(np.exp(suffix_sample_logprob(logits, [[0, 2]], top_k=2)[0])), 6)  # 0.5/0.8 * 0.3/0.9
        0.208333
        >>> float(np.exp(suffix_sample_logprob(logits, [[1, 2]], top_k=1)[0]))  # token 1 is not the top-1
        0.0
    """
    if validate_args:
        temperature = check_real(
            "temperature", temperature, minimum=0.0, min_inclusive=False, hint="e.g. temperature=1.0"
        )
    lg, as_tensor = _as_tensor("logits", logits)
    ids, _ = _as_tensor("suffix_ids", suffix_ids, integer=True)
    if lg.dim() != 3 or ids.shape != lg.shape[:2]:
        raise ValueError(
            f"`logits` must be [B, S, V] and `suffix_ids` [B, S], got {tuple(lg.shape)} and {tuple(ids.shape)}"
        )
    vocab = int(lg.shape[2])
    if top_k is not None and validate_args:
        top_k = check_int("top_k", top_k, minimum=1, maximum=vocab, hint=f"the vocabulary has {vocab} tokens")
    ids = ids.to(lg.device, torch.long)
    if validate_args and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"`suffix_ids` must lie in [0, {vocab}) (the vocabulary of `logits`)")
    valid = None
    if mask is not None:
        valid = (mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))).to(lg.device)
        if valid.shape != ids.shape:
            raise ValueError(
                f"`mask` must have the shape of `suffix_ids` {tuple(ids.shape)}, got {tuple(valid.shape)}"
            )
        valid = valid.bool()
    out = _suffix_logq(lg, ids, temperature, top_k, valid)
    return _out(out, as_tensor)


def _suffix_logq(
    logits: torch.Tensor,
    ids: torch.Tensor,
    temperature: float,
    top_k: int | None,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`suffix_sample_logprob` without checks (no host sync)."""
    lg = logits if logits.dtype == torch.float64 else logits.float()
    if temperature != 1.0:
        lg = lg / temperature
    if top_k is not None and top_k < lg.shape[-1]:
        kth = torch.topk(lg, top_k, dim=-1).values[..., -1:]
        lg = lg.masked_fill(lg < kth, -math.inf)
    token = torch.log_softmax(lg, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)  # [B, S]
    if valid is not None:
        token = torch.where(valid, token, torch.zeros_like(token))
    return token.sum(dim=-1)


# --------------------------------------------------------------------------------------
# Per-sequence scores of a batch of probe windows
# --------------------------------------------------------------------------------------
class TeacherForcedScores(NamedTuple):
    """Per-sequence scores of one teacher-forced pass (:func:`teacher_forced_scores`), float64.

    Attributes:
        loss: ``[B]`` mean token NLL (natural log) of each sequence's real tokens; NaN for a
            sequence of fewer than two tokens.
        min_k: ``[B]`` Min-K% Prob (higher = member) of the same tokens.
        min_k_pp: ``[B]`` Min-K%++ (higher = member) of the same tokens (:func:`min_k_plus_plus`; NaN
            when no token has a defined score).
        log_q: ``[B, K]`` per sampling scheme, ``log q`` of the suffix (Hayes et al. 2024); NaN for
            a sequence shorter than the window.
    """

    loss: torch.Tensor
    min_k: torch.Tensor
    min_k_pp: torch.Tensor
    log_q: torch.Tensor


def teacher_forced_scores(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    lengths: torch.Tensor,
    *,
    prefix_len: int,
    min_k: float,
    sampling: Sequence[tuple[float, int | None]],
) -> TeacherForcedScores:
    """Loss, Min-K% Prob, Min-K%++ and every sampling scheme's ``log q`` from one teacher-forced pass.

    The sequence scores of a batch of right-padded probe windows: the mean token loss (Yeom et
    al. 2018), Min-K% Prob (Shi et al., ICLR 2024) and Min-K%++ (Zhang et al., ICLR 2025, from the
    same logits' full next-token distributions) over each row's first ``lengths`` tokens, and,
    for rows that fill the window, the log-probability that one sample from the prefix (the first
    ``prefix_len`` tokens) reproduces the rest (Hayes et al. 2024; :func:`suffix_sample_logprob`
    per ``(temperature, top_k)`` scheme). No checks and no host synchronisation: the hot path.

    Args:
        logits: ``[B, W, V]`` float32 or float64 next-token logits of ``token_ids``.
        token_ids: ``[B, W]`` right-padded token ids (``W`` = the window).
        lengths: ``[B]`` real tokens per row (on the logits' device).
        prefix_len: the prompt length, ``1 <= prefix_len < W``.
        min_k: the Min-K% fraction in ``(0, 1]``.
        sampling: ``(temperature, top_k)`` per scheme (``top_k`` None: the full softmax).

    Returns:
        A :class:`TeacherForcedScores` of float64 tensors on the logits' device.

    Example:
        >>> logits = torch.zeros(1, 4, 2)  # a uniform model over two tokens
        >>> s = teacher_forced_scores(logits, torch.tensor([[0, 1, 1, 0]]), torch.tensor([4]),
        ...                           prefix_len=2, min_k=0.5, sampling=[(1.0, None)])
        >>> round(float(s.loss[0]), 4), round(float(s.log_q[0, 0]), 4)  # log 2, 2 * log(1/2)
        (0.6931, -1.3863)
    """
    width, vocab = int(token_ids.shape[1]), int(logits.shape[-1])
    positions = torch.arange(width - 1, device=logits.device)
    tok_lp = logits[:, :-1].gather(-1, token_ids[:, 1:].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(
        logits[:, :-1], dim=-1
    )  # [B, W-1]
    valid = positions.unsqueeze(0) < (lengths - 1).unsqueeze(1)
    count = valid.sum(dim=1)
    loss = -torch.where(valid, tok_lp, torch.zeros_like(tok_lp)).sum(dim=1) / count.clamp_min(1)
    loss = torch.where(count > 0, loss, torch.full_like(loss, math.nan))
    is_long = lengths >= width
    suffix_lp = tok_lp[:, prefix_len - 1 :]
    log_q = []
    for temperature, top_k in sampling:
        if temperature == 1.0 and (top_k is None or top_k == vocab):
            logq = suffix_lp.sum(dim=1)  # the full softmax: the teacher-forced log-probabilities already
        else:
            logq = _suffix_logq(
                logits[:, prefix_len - 1 : width - 1], token_ids[:, prefix_len:], temperature, top_k
            )
        log_q.append(torch.where(is_long, logq.double(), math.nan))
    empty = torch.empty((loss.shape[0], 0), dtype=torch.float64, device=logits.device)
    z = min_k_pp_token_scores(logits[:, :-1], token_ids[:, 1:])
    return TeacherForcedScores(
        loss=loss.double(),
        min_k=_min_k(tok_lp, valid, min_k).double(),
        min_k_pp=_min_k(z, valid & ~torch.isnan(z), min_k).double(),
        log_q=torch.stack(log_q, dim=1) if log_q else empty,
    )


class ExtractionMatch(NamedTuple):
    """Per-sequence agreement of a generated suffix with the true one (:func:`extraction_match`), float64.

    Attributes:
        exact: ``[B]`` 1.0 when every position matches (k-extractable), else 0.0.
        token_match: ``[B]`` the fraction of matching positions.
    """

    exact: torch.Tensor
    token_match: torch.Tensor


def extraction_match(generated: torch.Tensor, reference: torch.Tensor) -> ExtractionMatch:
    """Per-row :func:`exact_match_rate` and :func:`token_match_rate` of token ids ``[B, S]`` (no checks).

    Example:
        >>> m = extraction_match(torch.tensor([[1, 2], [3, 4]]), torch.tensor([[1, 2], [3, 0]]))
        >>> m.exact.tolist(), m.token_match.tolist()
        ([1.0, 0.0], [1.0, 0.5])
    """
    match = (generated == reference).double()
    return ExtractionMatch(exact=match.min(dim=1).values, token_match=match.mean(dim=1))


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate at both ends (Maechler 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def extraction_probability(log_q: Any, n: Any) -> Any:
    """Probability that at least one of ``n`` independent samples reproduces the suffix.

    ``1 - (1 - q)^n`` with ``q = exp(log_q)`` (Hayes et al. 2024, (n, p)-discoverable
    extraction), computed as ``-expm1(n * log(1 - q))`` with ``log(1 - q)`` from
    ``log1p``/``expm1``, so tiny ``q`` (``1e-30``) and ``q`` near 1 both keep their precision.
    A sequence counts as (n, p)-extractable when this is ``>= p``.

    Args:
        log_q: ``[B]`` (or a scalar) natural-log single-sample probabilities, ``<= 0``;
            ``-inf`` means ``q = 0``.
        n: number of samples, a positive integer (or an integer array broadcasting with ``log_q``).

    Returns:
        Probabilities in ``[0, 1]``, float64: a tensor for tensor ``log_q``, else a numpy array.

    Raises:
        ValueError: ``n < 1`` or ``log_q`` positive or NaN.
        TypeError: ``n`` not an integer.

    Example:
        >>> import numpy as np
        >>> extraction_probability(np.array([np.log(0.5), np.log(0.01), -np.inf]), 2)  # 1-0.5**2, 1-0.99**2, 0
        array([0.75  , 0.0199, 0.    ])
        >>> round(float(extraction_probability(np.array(-80.0), 10) / np.exp(-80.0)), 9)  # ~ n q when q is tiny
        10.0
    """

    lq, as_tensor = _as_tensor("log_q", log_q)
    lq = lq.double()
    if isinstance(n, (torch.Tensor, np.ndarray, list, tuple)):
        n_arr = torch.as_tensor(np.asarray(n.cpu() if isinstance(n, torch.Tensor) else n))
        if n_arr.is_floating_point() or n_arr.dtype == torch.bool:
            raise TypeError(f"`n` must hold integers >= 1, got dtype {n_arr.dtype}")
        if n_arr.numel() and int(n_arr.min()) < 1:
            raise ValueError(f"`n` must hold integers >= 1, got minimum {int(n_arr.min())}")
        nn = n_arr.to(device=lq.device, dtype=torch.float64)
    else:
        if not is_int(n):
            raise TypeError(
                f"`n` must be an integer >= 1 (number of samples), got {n!r} ({type(n).__name__})"
            )
        nn = torch.tensor(float(check_int("n", n, minimum=1)), dtype=torch.float64, device=lq.device)
    if bool(torch.isnan(lq).any()) or bool((lq > 0).any()):
        raise ValueError("`log_q` must hold log-probabilities <= 0 (no NaN)")
    out = -torch.expm1(nn * _log1mexp(lq))
    return _out(out, as_tensor)


class DiscoverableRates(NamedTuple):
    """(n, p)-discoverable extraction of a probe set (:func:`discoverable_rates`).

    Attributes:
        rates: for each number of samples ``n``, the fraction of sequences with
            ``1 - (1 - q)^n >= p`` (NaN for no sequence).
        mean_q: the mean single-sample probability ``q`` (NaN for no sequence).
    """

    rates: dict[int, float]
    mean_q: float


def discoverable_rates(log_q: Any, n_tries: Sequence[int], p_threshold: float) -> DiscoverableRates:
    """The (n, p)-discoverable extraction rates of sequences with single-sample log-probabilities ``log_q``.

    Hayes et al. 2024: a sequence is (n, p)-discoverable when at least one of ``n`` samples from
    its prefix reproduces its suffix with probability ``>= p`` (:func:`extraction_probability`).
    ``log_q`` above 0 (rounding) counts as 0; NaN entries (sequences not scored) are left out, so
    an all-NaN input gives NaN, never a safe-looking 0.

    Args:
        log_q: ``[B]`` natural-log single-sample probabilities of the suffixes.
        n_tries: the numbers of samples ``n``.
        p_threshold: ``p`` in ``(0, 1)``.

    Returns:
        A :class:`DiscoverableRates`.

    Example:
        >>> import numpy as np
        >>> r = discoverable_rates(np.log([0.9, 0.2, np.nan]), (1, 3), 0.45)  # 0.2 -> 0.488 with 3 tries
        >>> r.rates, round(r.mean_q, 2)
        ({1: 0.5, 3: 1.0}, 0.55)
    """
    lq = np.minimum(np.asarray(log_q, dtype=np.float64), 0.0)
    lq = lq[~np.isnan(lq)]
    rates = {n: _mean((extraction_probability(lq, n) >= p_threshold).astype(np.float64)) for n in n_tries}
    return DiscoverableRates(rates=rates, mean_q=_mean(np.exp(lq)))


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else math.nan
