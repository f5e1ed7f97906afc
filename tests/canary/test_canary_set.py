"""CanarySet and CharTokenizer: secrets, randomness space, references, insertion, state, bad input."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
import torch

from memcallbacks import Canary, CanarySet, CharTokenizer

FMT = "my pin is {secret}."


def make(**kw):
    opts = dict(tokenizer=CharTokenizer(), repetitions=(1, 2, 4), per_count=2, seed=0)
    opts.update(kw)
    return CanarySet(opts.pop("format", FMT), opts.pop("tokenizer"), **opts)


class HFStandIn:
    """Same interface as a Hugging Face tokenizer: __call__ -> {"input_ids"}, encode(add_special_tokens)."""

    bos = 500

    def __init__(self) -> None:
        self.vocab = {c: i + 10 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz0123456789 .")}

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [self.vocab[c] for c in text]
        return {"input_ids": [self.bos, *ids] if add_special_tokens else ids}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self(text, add_special_tokens=add_special_tokens)["input_ids"]


class CallOnly:
    def __call__(self, text: str, add_special_tokens: bool = True):
        return {"input_ids": torch.tensor([[ord(c) for c in text]])}


def test_char_tokenizer_round_trip_and_errors() -> None:
    tok = CharTokenizer()
    ids = tok.encode("my pin is 12.")
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids) == "my pin is 12."
    assert tok("ab")["input_ids"] == tok.encode("ab")
    with pytest.raises(ValueError, match="alphabet"):
        tok.encode("café")
    with pytest.raises(ValueError, match="repeats"):
        CharTokenizer("aab")


def test_canaries_ids_secrets_tokens() -> None:
    cs = make()
    assert cs.ids == ["c00_r1", "c01_r1", "c02_r2", "c03_r2", "c04_r4", "c05_r4"]
    assert [c.repetitions for c in cs] == [1, 1, 2, 2, 4, 4]
    assert cs.space_size == 10**6
    assert cs.log2_space_size == pytest.approx(19.9315685693)
    secrets = cs.secrets
    assert len(set(secrets)) == 6
    assert all(len(s) == 6 and s.isdigit() for s in secrets)
    assert make().secrets == secrets  # seeded
    assert make(seed=1).secrets != secrets
    tok = CharTokenizer()
    for c in cs:
        assert isinstance(c, Canary)
        assert list(c.token_ids) == tok.encode(c.text)  # pieces encoded separately == whole for chars
        assert tok.decode(c.token_ids[c.secret_start : c.secret_end]) == c.secret
        assert c.text == f"my pin is {c.secret}."
    # secrets never in repr
    text = repr(cs) + "".join(repr(c) for c in cs)
    assert not any(s in text for s in secrets)
    assert "c03_r2" in repr(cs[3])


@pytest.mark.parametrize("tokenizer", [HFStandIn(), CallOnly(), lambda text: [ord(c) for c in text]])
def test_hf_style_and_function_tokenizers(tokenizer) -> None:
    cs = make(tokenizer=tokenizer)
    c = cs[0]
    secret_ids = list(c.token_ids[c.secret_start : c.secret_end])
    if isinstance(tokenizer, HFStandIn):
        assert c.token_ids[0] == HFStandIn.bos  # special tokens on the prefix only
        assert secret_ids == tokenizer.encode(c.secret, add_special_tokens=False)
        assert cs.char_token_ids() is not None
    else:
        assert secret_ids == [ord(ch) for ch in c.secret]


def test_space_enumeration_and_indexing() -> None:
    cs = make(alphabet="ab", length=3, repetitions=(1,), per_count=2)
    assert cs.space_size == 8
    assert cs.enumerate_candidates() == ["aaa", "aab", "aba", "abb", "baa", "bab", "bba", "bbb"]
    for i in range(8):
        assert cs.candidate_index(cs.candidate(i)) == i
    with pytest.raises(ValueError, match="limit"):
        make().enumerate_candidates(limit=1000)
    lst = make(candidates=["alice", "bob", "carol", "dave"], repetitions=(1,), per_count=2)
    assert lst.space_size == 4
    assert set(lst.secrets) <= {"alice", "bob", "carol", "dave"}
    assert lst.enumerate_candidates() == ["alice", "bob", "carol", "dave"]


def test_references_exclude_canaries_distinct_seeded() -> None:
    cs = make()
    refs = cs.sample_references(2000)
    assert len(refs) == 2000
    assert len(set(refs)) == 2000
    assert not set(refs) & set(cs.secrets)
    assert all(len(r) == 6 and r.isdigit() for r in refs)
    assert cs.sample_references(2000) == refs
    assert cs.sample_references(2000, seed=5) != refs
    small = make(alphabet="01", length=4, repetitions=(1,), per_count=2)  # 16 candidates
    all_others = small.sample_references(14)
    assert sorted(all_others) == sorted(set(small.enumerate_candidates()) - set(small.secrets))
    # a huge space goes through rejection sampling
    huge = make(alphabet="abcdefghijklmnopqrstuvwxyz", length=20)
    hrefs = huge.sample_references(50)
    assert len(set(hrefs)) == 50
    assert not set(hrefs) & set(huge.secrets)


def test_references_are_uniform() -> None:
    cs = make(alphabet="0123456789", length=2, repetitions=(1,), per_count=1)  # 100 candidates
    counts: Counter[str] = Counter()
    trials = 400
    for seed in range(trials):
        counts.update(cs.sample_references(20, seed=seed))
    freq = np.array([counts[c] for c in cs.enumerate_candidates() if c != cs.secrets[0]])
    expected = trials * 20 / 99
    chi2 = float(((freq - expected) ** 2 / expected).sum())
    assert counts[cs.secrets[0]] == 0
    assert chi2 < 160  # df = 98: the 0.9999 quantile is about 155


def test_inject_records_indices() -> None:
    cs = make()
    base = [f"sentence {i}" for i in range(5)]
    ds = cs.inject(base, make_item=lambda c: ("canary", c.id))
    assert len(ds) == 5 + 2 * (1 + 2 + 4)
    assert cs.injected_indices["c00_r1"] == [5]
    assert cs.injected_indices["c04_r4"] == [11, 12, 13, 14]
    for cid, idx in cs.injected_indices.items():
        assert all(ds[i] == ("canary", cid) for i in idx)
    assert ds[2] == "sentence 2"
    texts = cs.inject(base)
    assert texts[5] == cs[0].text


def test_state_dict_round_trip_weights_only() -> None:
    cs = make()
    cs.inject(["x"])
    buf = io.BytesIO()
    torch.save(cs.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other = make(seed=99)
    other.load_state_dict(state)
    assert other.secrets == cs.secrets
    assert other.ids == cs.ids
    assert [c.token_ids for c in other] == [c.token_ids for c in cs]
    assert other.injected_indices == cs.injected_indices
    with pytest.raises(ValueError, match="format"):
        make(format="pin {secret}").load_state_dict(state)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(format="my pin is 123456."), "`format` must contain the slot"),
        (dict(format="{secret} and {secret}"), "`format` must contain the slot"),
        (dict(alphabet="0123é"), "cannot encode the secret character 'é'"),
        (dict(alphabet="01", length=1), "fewer than the 6 canaries"),
        (dict(repetitions=(1, 0)), "`repetitions` must hold integers >= 1"),
        (dict(repetitions=(-2,)), "`repetitions` must hold integers >= 1"),
        (dict(repetitions=()), "`repetitions`"),
        (dict(per_count=0), "`per_count`"),
        (dict(length=0), "`length`"),
        (dict(candidates=["a", "a", "b"]), "distinct"),
    ],
)
def test_bad_input(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_bad_tokenizer_and_reference_count() -> None:
    with pytest.raises(TypeError, match="tokenizer"):
        make(tokenizer=42)
    cs = make(alphabet="0123456789", length=2)  # 100 candidates, 6 canaries
    with pytest.raises(ValueError, match="`num_references`=95 plus the 6 canaries"):
        cs.sample_references(95)
    with pytest.raises(ValueError, match="`num_references` must be"):
        cs.sample_references(0)
    assert len(cs.sample_references(94)) == 94


def _raw_bpe_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    texts = [f"my pin is {i:06d}." for i in range(0, 10**6, 7919)] + ["hello there"] * 20
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<bos>"]))
    return tok


def test_a_raw_tokenizers_tokenizer_is_accepted() -> None:
    # docs/hf.md builds a raw `tokenizers.Tokenizer`: its encode() returns an Encoding (ids in `.ids`);
    # before, CanarySet failed with "'tokenizers.Encoding' object is not subscriptable"
    tok = _raw_bpe_tokenizer()
    cs = CanarySet("my pin is {secret}.", tok, repetitions=(1, 2), per_count=1, seed=0)
    for c in cs:
        assert list(c.token_ids) == tok.encode(c.text).ids
        assert tok.decode(list(c.token_ids[c.secret_start : c.secret_end])).replace(" ", "") == c.secret
    assert cs.char_token_ids() is not None  # digits split: one token per character


def test_a_tokenizer_returning_no_ids_is_refused_with_the_fix() -> None:
    with pytest.raises(TypeError, match="returned object, not token ids.*function text -> list of ids"):
        CanarySet("pin {secret}", lambda text: object(), seed=0)
