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

Tokenisation: the prefix (text before ``{secret}``) is encoded with the tokenizer's special
tokens (a BOS token, if the tokenizer adds one), the secret and the suffix without them,
and the three are concatenated. The secret's tokens are therefore well defined even for
subword tokenizers, and the inserted training text must be tokenised the same way (use
:attr:`Canary.token_ids`, or the text when the tokenizer splits the secret from the
prefix on its own, as a character tokenizer does).
"""

from __future__ import annotations

import inspect
import math
import numbers
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import ConcatDataset, Dataset

__all__ = ["Canary", "CanarySet", "CharTokenizer", "DIGITS", "encoder_of"]

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

    Accepts an object with ``encode`` (a Hugging Face tokenizer, :class:`CharTokenizer`), an
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
        if not isinstance(format, str) or format.count(SECRET_SLOT) != 1:
            found = format.count(SECRET_SLOT) if isinstance(format, str) else "no string"
            raise ValueError(
                f"`format` must contain the slot {SECRET_SLOT} exactly once, got {format!r} ({found} slots); "
                'e.g. format="my pin is {secret}."'
            )
        self.format = format
        self.prefix, self.suffix = format.split(SECRET_SLOT)
        self._encode = encoder_of(tokenizer)
        self.tokenizer = tokenizer
        if isinstance(repetitions, (str, bytes)) or not isinstance(repetitions, Iterable):
            raise ValueError(f"`repetitions` must be a sequence of integers >= 1, got {repetitions!r}")
        reps = list(repetitions)
        if not reps:
            raise ValueError("`repetitions` must hold at least one count, got an empty sequence")
        for r in reps:
            if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 1:
                raise ValueError(
                    f"`repetitions` must hold integers >= 1 (times each canary is inserted), got {r!r} in {reps!r}"
                )
        self.repetitions = tuple(int(r) for r in reps)
        if isinstance(per_count, bool) or not isinstance(per_count, numbers.Integral) or per_count < 1:
            raise ValueError(f"`per_count` must be an integer >= 1, got {per_count!r}")
        self.per_count: int = int(per_count)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ValueError(f"`seed` must be an integer, got {seed!r}")
        self.seed: int = int(seed)

        if candidates is not None:
            if isinstance(candidates, str) or not isinstance(candidates, Sequence):
                raise ValueError(
                    f"`candidates` must be a sequence of strings, got {type(candidates).__name__}"
                )
            cands = [str(c) for c in candidates]
            if len(set(cands)) != len(cands):
                raise ValueError("`candidates` must be distinct strings; remove the duplicates")
            self.candidates: list[str] | None = cands
            self.alphabet: str | None = None
            self.length: int | None = None
            self.space_size: int = len(cands)
        else:
            if not isinstance(alphabet, str) or not alphabet or len(set(alphabet)) != len(alphabet):
                raise ValueError(
                    f"`alphabet` must be a non-empty string of distinct characters, got {alphabet!r}"
                )
            if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 1:
                raise ValueError(f"`length` must be an integer >= 1, got {length!r}")
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
        canaries = []
        k = 0
        for r in self.repetitions:
            for _ in range(self.per_count):
                secret = secrets[k]
                secret_ids = self.encode_secret(secret)
                ids = (*self._prefix_ids, *secret_ids, *self._suffix_ids)
                start = len(self._prefix_ids)
                canaries.append(
                    Canary(
                        id=f"c{k:02d}_r{r}",
                        secret=secret,
                        repetitions=r,
                        token_ids=tuple(ids),
                        secret_start=start,
                        secret_end=start + len(secret_ids),
                        text=self.prefix + secret + self.suffix,
                    )
                )
                k += 1
        return canaries

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

    def char_token_ids(self) -> list[int] | None:
        """One token id per alphabet character when secrets tokenise character by character, else None.

        This is what the shared-prefix (trie) scoring of the whole space needs.
        """
        if self.alphabet is None:
            return None
        ids = []
        for c in self.alphabet:
            t = self._encode(c, False)
            if len(t) != 1:
                return None
            ids.append(t[0])
        for canary in self.canaries:
            if self.encode_secret(canary.secret) != [ids[self.alphabet.index(c)] for c in canary.secret]:
                return None
        return ids

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
        if isinstance(num, bool) or not isinstance(num, numbers.Integral) or num < 1:
            raise ValueError(f"`num_references` must be an integer >= 1, got {num!r}")
        if self.space_size < num + len(self.canaries):
            raise ValueError(
                f"the randomness space has {self.space_size} candidates, fewer than `num_references`={num} "
                f"plus the {len(self.canaries)} canaries; lower `num_references` or use method='exact'"
            )
        rng = np.random.default_rng(self.seed + 1 if seed is None else seed)
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
        return ConcatDataset([dataset, _ListDataset(items)])  # type: ignore[list-item]

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
        canaries = []
        for cid, secret, r in zip(ids, secrets, reps):
            secret_ids = self.encode_secret(secret)
            start = len(self._prefix_ids)
            canaries.append(
                Canary(
                    id=str(cid),
                    secret=str(secret),
                    repetitions=int(r),
                    token_ids=(*self._prefix_ids, *secret_ids, *self._suffix_ids),
                    secret_start=start,
                    secret_end=start + len(secret_ids),
                    text=self.prefix + secret + self.suffix,
                )
            )
        self.canaries = canaries
        self.injected_indices = {
            str(k): [int(i) for i in v] for k, v in state.get("injected_indices", {}).items()
        }


class _ListDataset(Dataset[Any]):
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
