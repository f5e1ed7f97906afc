"""Canaries: secret-bearing sequences inserted into training data to measure memorisation.

Implements the canary construction of Carlini, Liu, Erlingsson, Kos and Song, "The Secret
Sharer: Evaluating and Testing Unintended Memorization in Neural Networks", USENIX
Security 2019 (Sec. 3-4). A canary is a format with a secret slot, e.g.
``"my pin is {secret}."``, whose secret is drawn uniformly from a randomness space ``R``
(every string of ``length`` characters over ``alphabet``, or an explicit list of
candidates). Canaries are inserted ``r`` times each for several repetition counts ``r``;
exposure (:mod:`memcallbacks.metrics.exposure`) then measures how much more likely the
trained model finds each canary's secret than the other candidates of ``R``.

Secrets are drawn with a seeded numpy generator, so ``(format, alphabet, length,
repetitions, per_count, seed)`` regenerate them exactly. They never appear in ``repr`` or
in logs: canaries are named by ids such as ``c03_r16`` (canary 3, inserted 16 times).

Tokenisation: a candidate is scored as it is tokenised *inside the training text*: the whole
text ``prefix + secret + suffix`` is encoded (with the tokenizer's special tokens, e.g. a BOS),
so :attr:`Canary.token_ids` are the ids of the canary text as your pipeline tokenises it. With
a subword tokenizer (byte-level BPE) digits merge into multi-digit tokens, candidates have
token spans of different lengths, and the last tokens of the prefix can merge with the
secret (GPT-2's ``" 123"``). The scored span of a candidate is therefore every token from the
first one that some scored candidate's secret touches (:meth:`CanarySet.candidate_sequences`
computes the shared context length) to the last token touching the secret; the tokens before
it are the same for every candidate, so scores stay comparable. When the prefix's own
tokenisation differs from the training text's, a warning says which prefix tokens are scored
with the secret; a format whose first token already merges with the secret is refused.
"""

from __future__ import annotations

import inspect
import math
import string
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import ConcatDataset, Dataset

from memcallbacks.utilities.validation import check_int, check_seed, is_int

__all__ = ["Canary", "CanarySet", "CharTokenizer", "DIGITS", "ListDataset", "encoder_of"]

DIGITS = "0123456789"
SECRET_SLOT = "{secret}"

_DEFAULT_CHARS = string.ascii_letters + string.digits + string.punctuation + " \n"


# --------------------------------------------------------------------------------------
# Tokenisers
# --------------------------------------------------------------------------------------
class CharTokenizer:
    """A character-level tokenizer with the interface of a Hugging Face tokenizer.

    Id 0 is padding, id 1 is the beginning-of-sequence token (added by ``encode`` when
    ``add_special_tokens=True``, the default), and each character of ``alphabet`` gets one id.

    Args:
        alphabet: the characters it can encode; defaults to ASCII letters, digits,
            punctuation, space and newline.

    Raises:
        ValueError: if ``alphabet`` is empty or repeats a character.

    Example:
        >>> tok = CharTokenizer("ab ")
        >>> tok.encode("ab a"), tok.encode("ba", add_special_tokens=False)
        ([1, 2, 3, 4, 2], [3, 2])
        >>> tok.decode([1, 2, 3, 4, 2])
        'ab a'
        >>> tok("ab")["input_ids"], tok.vocab_size
        ([1, 2, 3], 5)
    """

    pad_token_id = 0
    bos_token_id = 1

    def __init__(self, alphabet: str = _DEFAULT_CHARS) -> None:
        if not isinstance(alphabet, str) or not alphabet:
            raise ValueError(f"`alphabet` must be a non-empty string, got {alphabet!r}")
        if len(set(alphabet)) != len(alphabet):
            dup = sorted({c for c in alphabet if alphabet.count(c) > 1})
            raise ValueError(f"`alphabet` repeats the characters {dup!r}; list each character once")
        self.alphabet = alphabet
        self._ids = {c: i + 2 for i, c in enumerate(alphabet)}

    @property
    def vocab_size(self) -> int:
        """Number of ids: padding, BOS and one per character."""
        return len(self.alphabet) + 2

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` (with a leading BOS id when ``add_special_tokens``).

        Raises:
            ValueError: if ``text`` has a character outside the alphabet.
        """
        try:
            ids = [self._ids[c] for c in text]
        except KeyError as e:
            raise ValueError(
                f"CharTokenizer cannot encode the character {e.args[0]!r} in {_shorten(text)!r}; "
                "add it to the tokenizer's `alphabet`"
            ) from None
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text, add_special_tokens=add_special_tokens)}

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, dropping padding and BOS."""
        chars = self.alphabet
        return "".join(chars[int(i) - 2] for i in ids if int(i) >= 2)


def _shorten(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def encoder_of(tokenizer: Any) -> Callable[[str, bool], list[int]]:
    """Turns a tokenizer into ``encode(text, add_special_tokens) -> list[int]``.

    Accepts an object with ``encode`` (a Hugging Face tokenizer, :class:`CharTokenizer`, or a raw
    ``tokenizers.Tokenizer``, whose ``encode`` returns an ``Encoding``: its ``.ids`` are used), an
    object whose ``__call__`` returns a mapping with ``"input_ids"``, or a plain function
    ``text -> ids`` (special tokens are then never added).

    Raises:
        TypeError: if ``tokenizer`` is none of these.
    """
    if tokenizer is None:
        raise TypeError(
            "`tokenizer` must be given: a CharTokenizer(), a Hugging Face tokenizer or encode(text)"
        )
    encode = getattr(tokenizer, "encode", None)
    if callable(encode):
        return _Encoder(tokenizer, "encode", _accepts(encode, "add_special_tokens"))
    if callable(tokenizer):
        return _Encoder(tokenizer, "call", _accepts(tokenizer, "add_special_tokens"))
    raise TypeError(
        f"`tokenizer` must have `encode(text)`, return `input_ids` when called, or be a function "
        f"text -> token ids; got {type(tokenizer).__name__}"
    )


class _Encoder:
    """``encode(text, add_special_tokens) -> list[int]`` over a tokenizer (picklable for ddp_spawn)."""

    def __init__(self, tokenizer: Any, how: str, takes_flag: bool) -> None:
        self.tokenizer, self.how, self.takes_flag = tokenizer, how, takes_flag

    def __call__(self, text: str, special: bool) -> list[int]:
        fn = self.tokenizer.encode if self.how == "encode" else self.tokenizer
        out = fn(text, add_special_tokens=special) if self.takes_flag else fn(text)
        if isinstance(out, Mapping):
            out = out["input_ids"]
        elif hasattr(out, "input_ids"):
            out = out.input_ids
        elif hasattr(out, "ids") and not hasattr(out, "tolist"):  # a raw `tokenizers.Encoding`
            out = out.ids
        return _as_id_list(out)


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _as_id_list(ids: Any) -> list[int]:
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if not isinstance(ids, Sequence) or isinstance(ids, (str, bytes)):
        raise TypeError(
            f"the tokenizer returned {type(ids).__name__}, not token ids; pass a tokenizer whose `encode(text)` "
            "returns a list of ids (or an object with `.ids` / `input_ids`), or a function text -> list of ids"
        )
    if ids and isinstance(ids[0], (list, tuple)):  # a batch of one
        if len(ids) != 1:
            raise TypeError("the tokenizer returned a batch of sequences for one text")
        ids = ids[0]
    return [int(i) for i in ids]


# --------------------------------------------------------------------------------------
# Canaries
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Canary:
    """One canary. ``secret``, ``text`` and ``token_ids`` are kept out of ``repr``.

    Attributes:
        id: public name, ``c{k:02d}_r{repetitions}``; safe to log.
        secret: the secret string (sensitive).
        repetitions: how many times it is inserted into the training data.
        token_ids: prefix + secret + suffix token ids.
        secret_start: position of the first secret token in ``token_ids``.
        secret_end: one past the last secret token.
        text: the full canary text (sensitive).

    Example:
        >>> canary = CanarySet("pin {secret}", CharTokenizer(), repetitions=(4,), per_count=1, seed=0)[0]
        >>> canary
        Canary(id='c00_r4', repetitions=4, secret_start=5, secret_end=11)
    """

    id: str
    secret: str = field(repr=False)
    repetitions: int
    token_ids: tuple[int, ...] = field(repr=False)
    secret_start: int
    secret_end: int
    text: str = field(repr=False, default="")

    @property
    def scored_ids(self) -> tuple[int, ...]:
        """Prefix and secret tokens: what the log-perplexity is computed on."""
        return self.token_ids[: self.secret_end]


class CanarySet:
    """A seeded set of canaries over one randomness space, with references and insertion.

    Args:
        format: text with exactly one ``{secret}`` slot, e.g. ``"my pin is {secret}."``.
        tokenizer: :class:`CharTokenizer`, a Hugging Face tokenizer (``encode`` / ``__call__``
            returning ``input_ids``), or a function ``text -> ids``.
        alphabet: characters of a secret (default digits). Ignored when ``candidates`` is given.
        length: characters per secret (default 6, so ``|R| = 10**6`` with digits).
        candidates: an explicit randomness space (distinct strings) instead of
            ``alphabet``/``length``.
        repetitions: insertion counts, each >= 1.
        per_count: canaries per repetition count.
        seed: seed of the numpy generator that draws the secrets.

    Raises:
        ValueError: the format lacks ``{secret}`` or has it twice; a repetition count is < 1;
            the space is smaller than the number of canaries; a character cannot be encoded.
        TypeError: the tokenizer is unusable.

    Example:
        >>> cs = CanarySet("my pin is {secret}.", CharTokenizer(), repetitions=(1, 4), per_count=2, seed=0)
        >>> [c.id for c in cs], cs.space_size
        (['c00_r1', 'c01_r1', 'c02_r4', 'c03_r4'], 1000000)
        >>> ds = cs.inject(["a", "b", "c"], make_item=lambda c: c.text)
        >>> len(ds), cs.injected_indices["c02_r4"]
        (13, [5, 6, 7, 8])
    """

    def __init__(
        self,
        format: str,
        tokenizer: Any,
        *,
        alphabet: str = DIGITS,
        length: int = 6,
        candidates: Sequence[str] | None = None,
        repetitions: Sequence[int] = (1, 2, 4, 8, 16, 32),
        per_count: int = 2,
        seed: int = 0,
    ) -> None:
        _validate_init(format, repetitions, per_count, seed, alphabet, length, candidates)
        self.format = format
        self.prefix, self.suffix = format.split(SECRET_SLOT)
        self._encode = encoder_of(tokenizer)
        self.tokenizer = tokenizer
        self.repetitions = tuple(int(r) for r in repetitions)
        self.per_count: int = int(per_count)
        self.seed: int = int(seed)
        self._char_ids_cache: tuple[list[int] | None] | None = None
        if candidates is not None:
            self.candidates: list[str] | None = [str(c) for c in candidates]
            self.alphabet: str | None = None
            self.length: int | None = None
            self.space_size: int = len(self.candidates)
        else:
            self.candidates = None
            self.alphabet = alphabet
            self.length = int(length)
            self.space_size = len(alphabet) ** self.length

        n = len(self.repetitions) * self.per_count
        if self.space_size < n:
            raise ValueError(
                f"the randomness space has {self.space_size} candidates, fewer than the {n} canaries "
                f"(len(repetitions)={len(self.repetitions)} x per_count={self.per_count}); "
                "use a longer `length`, a larger `alphabet` or more `candidates`"
            )
        self._prefix_ids: list[int] = self._encode(self.prefix, True)
        self._suffix_ids: list[int] = self._encode(self.suffix, False) if self.suffix else []
        self._check_alphabet_encodes()
        secrets = self._draw_secrets(n)
        self.canaries: list[Canary] = self._build(secrets)
        self.injected_indices: dict[str, list[int]] = {}

    # -- construction --------------------------------------------------------------------
    def _check_alphabet_encodes(self) -> None:
        chars = (
            self.alphabet
            if self.alphabet is not None
            else "".join(sorted(set("".join(self.candidates or []))))
        )
        for c in chars:
            try:
                ids = self._encode(c, False)
            except Exception as e:  # the tokenizer's own error
                raise ValueError(
                    f"the tokenizer cannot encode the secret character {c!r} (of `alphabet`/`candidates`): {e}"
                ) from e
            if not ids:
                raise ValueError(
                    f"the tokenizer encodes the secret character {c!r} (of `alphabet`) to no token"
                )

    def _draw_secrets(self, n: int) -> list[str]:
        rng = np.random.default_rng(self.seed)
        if self.candidates is not None:
            picks = rng.choice(len(self.candidates), size=n, replace=False)
            return [self.candidates[int(i)] for i in picks]
        if self.space_size <= 2**62:
            return [self.candidate(int(i)) for i in rng.choice(self.space_size, size=n, replace=False)]
        return _draw_strings(rng, self.alphabet or "", self.length or 0, n, exclude=set())

    def _build(self, secrets: Sequence[str]) -> list[Canary]:
        ids = [
            f"c{k:02d}_r{r}" for k, r in enumerate(r for r in self.repetitions for _ in range(self.per_count))
        ]
        reps = [r for r in self.repetitions for _ in range(self.per_count)]
        return [self._canary(cid, secret, r) for cid, secret, r in zip(ids, secrets, reps)]

    def _canary(self, cid: str, secret: str, repetitions: int) -> Canary:
        full, start, end = self._in_context(secret)
        return Canary(
            id=cid,
            secret=secret,
            repetitions=repetitions,
            token_ids=tuple(full),
            secret_start=start,
            secret_end=end,
            text=self.prefix + secret + self.suffix,
        )

    def _in_context(self, secret: str) -> tuple[list[int], int, int]:
        """Ids of the training text ``prefix + secret + suffix`` and the span of tokens the secret touches.

        The span starts after the longest run of leading tokens equal to the prefix's own
        tokens and ends before the longest run of trailing tokens equal to the suffix's.
        """
        try:
            full = self._encode(self.prefix + secret + self.suffix, True)
        except Exception as e:
            raise ValueError(
                f"the tokenizer cannot encode a canary text of `format`={self.format!r}: {e}"
            ) from e
        pre, suf = self._prefix_ids, self._suffix_ids
        start = 0
        while start < min(len(pre), len(full)) and full[start] == pre[start]:
            start += 1
        end = len(full)
        k = 0
        while k < len(suf) and end - 1 > start and full[end - 1] == suf[len(suf) - 1 - k]:
            end, k = end - 1, k + 1
        return full, start, end

    # -- access --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.canaries)

    def __iter__(self) -> Any:
        return iter(self.canaries)

    def __getitem__(self, i: int) -> Canary:
        return self.canaries[i]

    def __repr__(self) -> str:
        return (
            f"CanarySet(format={self.format!r}, space_size={self.space_size}, "
            f"repetitions={self.repetitions}, per_count={self.per_count}, seed={self.seed})"
        )

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.canaries]

    @property
    def secrets(self) -> list[str]:
        """The secrets, in canary order (sensitive: do not log)."""
        return [c.secret for c in self.canaries]

    @property
    def prefix_ids(self) -> list[int]:
        """Token ids of the text before the secret (with the tokenizer's special tokens)."""
        return list(self._prefix_ids)

    @property
    def log2_space_size(self) -> float:
        """``log2 |R|``, the most exposure a canary can have."""
        return math.log2(self.space_size)

    def encode_secret(self, secret: str) -> list[int]:
        """Token ids of a secret, encoded on its own (no special tokens).

        Raises:
            ValueError: if the tokenizer cannot encode it.
        """
        try:
            return self._encode(secret, False)
        except Exception as e:
            raise ValueError(f"the tokenizer cannot encode a secret of `alphabet`/`candidates`: {e}") from e

    def plain_token_ids(self, canary: Canary) -> list[int]:
        """Token ids of ``canary``'s text without special tokens (no BOS/EOS).

        What a training row that holds the canary contains as a contiguous run, wherever the row
        puts its own special tokens.

        Example:
            >>> cs = CanarySet("pin {secret}", CharTokenizer("pin 0123456789"), length=2, seed=0)
            >>> cs[0].token_ids[0] == CharTokenizer.bos_token_id, len(cs.plain_token_ids(cs[0]))
            (True, 6)
        """
        return self._encode(canary.text, False)

    def char_token_ids(self) -> list[int] | None:
        """One token id per alphabet character when every candidate tokenises character by character, else None.

        This is what the shared-prefix trie and the best-first search need: every candidate's
        training-text tokens are ``prefix_ids + [one id per character] + suffix_ids``. Checked on
        each character in context (after the prefix, before the suffix), on every pair of
        characters (a subword merge of two characters shows there; BPE merges longer runs only
        from merged pairs) and on the canaries' texts. The answer is cached.
        """
        if self._char_ids_cache is None:
            self._char_ids_cache = (self._char_token_ids(),)
        return self._char_ids_cache[0]

    def _char_token_ids(self) -> list[int] | None:
        if self.alphabet is None:
            return None
        pre, suf = self._prefix_ids, self._suffix_ids
        ids = []
        for c in self.alphabet:
            t = self._encode(c, False)
            if len(t) != 1 or self._encode(self.prefix + c + self.suffix, True) != [*pre, *t, *suf]:
                return None
            ids.append(t[0])
        a = len(self.alphabet)
        pairs: Iterable[tuple[int, int]] = ((i, j) for i in range(a) for j in range(a))
        if a * a > 65_536:  # a seeded sample of the pairs keeps huge alphabets fast
            rng = np.random.default_rng(0)
            pairs = zip(rng.integers(0, a, 65_536).tolist(), rng.integers(0, a, 65_536).tolist())
        for i, j in pairs:
            if self._encode(self.alphabet[i] + self.alphabet[j], False) != [ids[i], ids[j]]:
                return None
        for canary in self.canaries:
            if list(canary.token_ids) != [*pre, *(ids[self.alphabet.index(c)] for c in canary.secret), *suf]:
                return None
        return ids

    def candidate_sequences(self, secrets: Sequence[str]) -> tuple[list[list[int]], int]:
        """Token ids of each candidate's training text, cut after its secret, and the shared context length.

        Every candidate is tokenised inside the canary text (``prefix + secret + suffix`` with
        special tokens). The context is the leading tokens that no candidate's secret touches
        (the same for every candidate in ``secrets`` and every canary); the scored tokens of
        a candidate are the rest of its sequence, which may differ in length between candidates
        (subword tokenizers) and may include prefix characters merged with the secret. When
        every candidate tokenises character by character this is ``prefix_ids + secret ids``
        with the context ``len(prefix_ids)``, computed without calling the tokenizer.

        Returns:
            ``(sequences, context_len)``.

        Raises:
            ValueError: a candidate's text shares no leading token with the prefix (its first
                token already merges with the secret: nothing to condition on); give the
                tokenizer a BOS token or end the prefix with a separator it never merges.
        """
        chars = self.char_token_ids()
        if chars is not None:
            lookup = dict(zip(self.alphabet or "", chars))
            pre = self._prefix_ids
            return [[*pre, *(lookup[c] for c in s)] for s in secrets], len(pre)
        spans = [self._in_context(s) for s in secrets]
        starts = [start for _, start, _ in spans] + [c.secret_start for c in self.canaries]
        context = min(starts)
        if context == 0:
            raise ValueError(
                f"`format`={self.format!r}: for some candidates the first token of the canary text already "
                "holds secret characters, so the secret has nothing to be conditioned on; give the tokenizer "
                "a BOS token or start the format with text the tokenizer keeps apart from the secret"
            )
        if context < len(self._prefix_ids):
            _warn_boundary_once(self, context)
        return [full[:end] for full, _, end in spans], context

    # -- the randomness space ------------------------------------------------------------
    def candidate(self, index: int) -> str:
        """The ``index``-th candidate of the space (lexicographic over the alphabet)."""
        if not 0 <= index < self.space_size:
            raise IndexError(f"candidate index {index} out of range for a space of {self.space_size}")
        if self.candidates is not None:
            return self.candidates[index]
        a = self.alphabet or ""
        chars = []
        for _ in range(self.length or 0):
            index, d = divmod(index, len(a))
            chars.append(a[d])
        return "".join(reversed(chars))

    def candidate_index(self, secret: str) -> int:
        """Inverse of :meth:`candidate`."""
        if self.candidates is not None:
            return self.candidates.index(secret)
        a = self.alphabet or ""
        index = 0
        for c in secret:
            index = index * len(a) + a.index(c)
        return index

    def enumerate_candidates(self, limit: int = 10**6) -> list[str]:
        """Every candidate of the space, in :meth:`candidate` order.

        Raises:
            ValueError: if the space has more than ``limit`` candidates.
        """
        if self.space_size > limit:
            raise ValueError(
                f"the randomness space has {self.space_size} candidates, more than `limit`={limit}; "
                "sample references with sample_references() (extrapolated exposure) instead"
            )
        if self.candidates is not None:
            return list(self.candidates)
        return [self.candidate(i) for i in range(self.space_size)]

    def candidate_index_array(self) -> np.ndarray:
        """Indices (into :meth:`candidate` order) of the canaries' secrets, int64 ``[C]``."""
        return np.array([self.candidate_index(c.secret) for c in self.canaries], dtype=np.int64)

    def sample_references(self, num: int, *, seed: int | None = None) -> list[str]:
        """``num`` candidates drawn uniformly without replacement, excluding the canaries' secrets.

        Args:
            num: how many references.
            seed: seed of the draw (default ``self.seed + 1``), so references are fixed.

        Raises:
            ValueError: if ``num < 1`` or the space has fewer than ``num`` + canaries candidates.
        """
        num = check_int("num_references", num, minimum=1)
        if self.space_size < num + len(self.canaries):
            raise ValueError(
                f"the randomness space has {self.space_size} candidates, fewer than `num_references`={num} "
                f"plus the {len(self.canaries)} canaries; lower `num_references` or use method='exact'"
            )
        rng = np.random.default_rng(self.seed + 1 if seed is None else check_seed("reference_seed", seed))
        exclude = set(self.secrets)
        if self.space_size <= 2**62:
            # a uniformly random ordering of the space, canaries filtered out, first `num` kept
            picks = rng.choice(self.space_size, size=num + len(self.canaries), replace=False)
            out = [s for s in (self.candidate(int(i)) for i in picks) if s not in exclude]
            return out[:num]
        return _draw_strings(rng, self.alphabet or "", self.length or 0, num, exclude=exclude)

    # -- insertion -----------------------------------------------------------------------
    def inject(
        self, dataset: Dataset[Any] | Sequence[Any], make_item: Callable[[Canary], Any] | None = None
    ) -> ConcatDataset[Any]:
        """The dataset followed by each canary's item repeated ``repetitions`` times.

        Records the positions in :attr:`injected_indices` (canary id -> dataset indices), so a
        loss trajectory can pick out the canaries.

        Args:
            dataset: a map-style dataset (or a list) of training items.
            make_item: ``canary -> item`` in the dataset's item format; default the canary's text.

        Returns:
            A ``ConcatDataset`` of ``len(dataset) + sum(repetitions)`` items.
        """
        make = make_item if make_item is not None else (lambda c: c.text)
        base = len(dataset)  # type: ignore[arg-type]
        items: list[Any] = []
        self.injected_indices = {}
        for canary in self.canaries:
            item = make(canary)
            start = base + len(items)
            items.extend([item] * canary.repetitions)
            self.injected_indices[canary.id] = list(range(start, start + canary.repetitions))
        return ConcatDataset([dataset, ListDataset(items)])  # type: ignore[list-item]

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain lists and primitives (loads with ``torch.load(weights_only=True)``). Holds the secrets."""
        return {
            "format": self.format,
            "space_size": int(self.space_size),
            "seed": self.seed,
            "repetitions": [c.repetitions for c in self.canaries],
            "ids": self.ids,
            "secrets": self.secrets,
            "injected_indices": {k: list(v) for k, v in self.injected_indices.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores canaries saved by :meth:`state_dict` (re-encoded with this set's tokenizer).

        Raises:
            ValueError: if the saved format differs from this set's.
        """
        fmt = state.get("format", self.format)
        if fmt != self.format:
            raise ValueError(f"the saved canaries use format {fmt!r}, this CanarySet {self.format!r}")
        secrets = list(state.get("secrets", self.secrets))
        reps = list(state.get("repetitions", [c.repetitions for c in self.canaries]))
        ids = list(state.get("ids", self.ids))
        self.canaries = [
            self._canary(str(cid), str(secret), int(r)) for cid, secret, r in zip(ids, secrets, reps)
        ]
        self._char_ids_cache = None
        self.injected_indices = {
            str(k): [int(i) for i in v] for k, v in state.get("injected_indices", {}).items()
        }


def _warn_boundary_once(cs: CanarySet, context: int) -> None:
    key = ("boundary", context)
    seen = cs.__dict__.setdefault("_warned", set())
    if key in seen:
        return
    seen.add(key)
    tail = cs._prefix_ids[context:]
    warnings.warn(
        f"CanarySet: inside the canary text the last {len(tail)} token(s) of the prefix {cs.prefix!r} merge with "
        "the secret for some candidates (a subword tokenizer, e.g. byte-level BPE's leading space); every "
        f"candidate is scored from token {context} on, as the training text tokenises it, so those prefix "
        "characters are scored with the secret (the same text for every candidate)",
        stacklevel=3,
    )


def _validate_init(
    format: Any, repetitions: Any, per_count: Any, seed: Any, alphabet: Any, length: Any, candidates: Any
) -> None:
    if not isinstance(format, str) or format.count(SECRET_SLOT) != 1:
        found = format.count(SECRET_SLOT) if isinstance(format, str) else "no string"
        raise ValueError(
            f"`format` must contain the slot {SECRET_SLOT} exactly once, got {format!r} ({found} slots); "
            'e.g. format="my pin is {secret}."'
        )
    if isinstance(repetitions, (str, bytes)) or not isinstance(repetitions, Iterable):
        raise ValueError(f"`repetitions` must be a sequence of integers >= 1, got {repetitions!r}")
    reps = list(repetitions)
    if not reps:
        raise ValueError("`repetitions` must hold at least one count, got an empty sequence")
    for r in reps:
        if not is_int(r) or r < 1:
            raise ValueError(
                f"`repetitions` must hold integers >= 1 (times each canary is inserted), got {r!r} in {reps!r}"
            )
    check_int("per_count", per_count, minimum=1)
    check_seed("seed", seed)
    if candidates is not None:
        if isinstance(candidates, str) or not isinstance(candidates, Sequence):
            raise ValueError(f"`candidates` must be a sequence of strings, got {type(candidates).__name__}")
        if len({str(c) for c in candidates}) != len(candidates):
            raise ValueError("`candidates` must be distinct strings; remove the duplicates")
    else:
        if not isinstance(alphabet, str) or not alphabet or len(set(alphabet)) != len(alphabet):
            raise ValueError(
                f"`alphabet` must be a non-empty string of distinct characters, got {alphabet!r}"
            )
        check_int("length", length, minimum=1)


class ListDataset(Dataset[Any]):
    """A map-style dataset over a list of items (the canary copies appended to a training set).

    Args:
        items: the items, returned as they are by ``dataset[i]``.

    Example:
        >>> ds = ListDataset(["a", "b"])
        >>> len(ds), ds[1]
        (2, 'b')
    """

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


def _draw_strings(
    rng: np.random.Generator, alphabet: str, length: int, n: int, *, exclude: set[str]
) -> list[str]:
    """``n`` distinct uniform strings not in ``exclude`` (rejection; for spaces much larger than n)."""
    out: list[str] = []
    seen = set(exclude)
    chars = np.array(list(alphabet))
    while len(out) < n:
        need = n - len(out)
        draws = rng.integers(0, len(alphabet), size=(need, length))
        for row in draws:
            s = "".join(chars[row])
            if s not in seen:
                seen.add(s)
                out.append(s)
                if len(out) == n:
                    break
    return out
