"""The KV-cache adapter: HFIncrementalLM scores equal the batched path on real transformers models."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from transformers import (
    BertConfig,
    BertForTokenClassification,
    DynamicCache,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from memcallbacks import CanarySet, CharTokenizer
from memcallbacks.lm.best_first import rank_best_first
from memcallbacks.lm.decoding import beam_search
from memcallbacks.lm.hf import HFIncrementalLM, as_incremental
from memcallbacks.lm.model import find_hf_model
from memcallbacks.lm.scoring import (
    IncrementalLM,
    score_sequences,
    score_shared_prefix,
    score_space_trie,
)
from memcallbacks.lm.windows import LanguageModel
from memcallbacks.metrics.exposure import exposure_rank

TOK = CharTokenizer()
V = TOK.vocab_size


def _gpt2(n_positions: int = 64) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_embd=64, n_head=2, vocab_size=V, n_positions=n_positions, bos_token_id=1, eos_token_id=1
    )
    return GPT2LMHeadModel(config).eval()


def _llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=V, max_position_embeddings=64, bos_token_id=1, eos_token_id=1, pad_token_id=0,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def _canaries(length: int = 4) -> CanarySet:
    return CanarySet("my pin is {secret}.", TOK, length=length, repetitions=(1, 4), per_count=2, seed=3)


def _digit_ids() -> list[int]:
    return [TOK.encode(c, add_special_tokens=False)[0] for c in "0123456789"]


@pytest.mark.parametrize("make", [_gpt2, _llama], ids=["gpt2", "llama"])
def test_trie_over_the_adapter_equals_the_batched_path(make: Any) -> None:
    model = make()
    lm = HFIncrementalLM(model)
    assert isinstance(lm, IncrementalLM)
    cs = _canaries(length=4)
    chars = _digit_ids()
    trie = score_space_trie(lm, cs.prefix_ids, chars, 4)
    assert trie.shape == (10**4,)
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(10**4, 600, replace=False))
    seqs = [cs.prefix_ids + cs.encode_secret(cs.candidate(int(i))) for i in sample]
    batched = score_sequences(model, seqs, len(cs.prefix_ids), batch_size=256)
    assert np.abs(trie[sample] - batched).max() < 1e-4  # nats
    secrets = np.array([cs.encode_secret(cs.candidate(int(i))) for i in sample[:50]])
    shared = score_shared_prefix(lm, cs.prefix_ids, secrets, batch_size=16)
    assert np.abs(shared - batched[:50]).max() < 1e-4


def test_best_first_rank_through_the_adapter_is_the_exact_rank() -> None:
    model = _gpt2()
    lm = HFIncrementalLM(model)
    cs = _canaries(length=3)
    scores = score_space_trie(lm, cs.prefix_ids, _digit_ids(), 3)
    for canary in cs:
        i = cs.candidate_index(canary.secret)
        expected = int(exposure_rank(np.array([scores[i]]), np.delete(scores, i))[0])
        result = rank_best_first(lm, cs, canary.secret, batch_size=64)
        assert result.exact
        assert result.rank == expected


def test_state_is_never_mutated_and_selection_works() -> None:
    lm = HFIncrementalLM(_gpt2())
    state, logp0 = lm.init_state(torch.tensor([[3, 4, 5]]))
    wide = lm.expand_state(state, 3)
    s1, a = lm.step(wide, torch.tensor([6, 7, 8]))
    _, b = lm.step(wide, torch.tensor([6, 7, 8]))  # the same state again: same answer
    assert torch.equal(a, b)
    picked = lm.expand_state(s1, torch.tensor([0, 2, 1]))  # drop row 0, row 1 twice, row 2 once
    _, c = lm.step(picked, torch.tensor([9, 9, 9]))
    _, d = lm.step(lm.expand_state(s1, torch.tensor([0, 1, 0])), torch.tensor([9]))
    _, e = lm.step(lm.expand_state(s1, torch.tensor([0, 0, 1])), torch.tensor([9]))
    assert torch.allclose(c, torch.cat([d, d, e]), atol=1e-5)
    assert torch.allclose(logp0.exp().sum(-1), torch.ones(1), atol=1e-5)


def test_beam_search_same_with_and_without_the_cache() -> None:
    model = _gpt2()
    prefix = TOK.encode("my pin is ")
    assert beam_search(HFIncrementalLM(model), prefix, 4, width=3) == beam_search(model, prefix, 4, width=3)


class _LegacyTupleGPT2(torch.nn.Module):
    """A model speaking the legacy cache format: tuples of per-layer (key, value) tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _gpt2()

    def forward(self, input_ids: torch.Tensor, past_key_values: Any = None, use_cache: bool = True) -> Any:
        cache = DynamicCache(ddp_cache_data=past_key_values) if past_key_values is not None else None
        out = self.inner(input_ids=input_ids, past_key_values=cache, use_cache=True)
        legacy = tuple((layer.keys, layer.values) for layer in out.past_key_values.layers)
        return out.logits, legacy


@pytest.mark.filterwarnings("ignore:.*past_key_values.*deprecated:FutureWarning")
def test_legacy_tuple_cache() -> None:
    wrapped = _LegacyTupleGPT2().eval()
    cs = _canaries(length=3)
    got = score_space_trie(HFIncrementalLM(wrapped), cs.prefix_ids, _digit_ids(), 3)
    expected = score_space_trie(HFIncrementalLM(wrapped.inner), cs.prefix_ids, _digit_ids(), 3)
    assert np.abs(got - expected).max() < 1e-5


class _OddCache(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(V, V)

    def forward(self, input_ids: torch.Tensor, past_key_values: Any = None, use_cache: bool = True) -> Any:
        return {"logits": self.emb(input_ids), "past_key_values": {"state": torch.zeros(1)}}


def test_unknown_cache_format_names_the_model_and_the_fallback() -> None:
    with pytest.raises(
        TypeError, match=r"_OddCache returned `past_key_values` of a format.*score_fn.*score_sequences"
    ):
        HFIncrementalLM(_OddCache()).init_state(torch.tensor([[1, 2]]))


def test_canary_longer_than_the_positions_is_explained() -> None:
    lm = HFIncrementalLM(_gpt2(n_positions=12))
    cs = _canaries(length=4)  # prefix "<bos>my pin is " = 11 tokens, then 4 digits
    with pytest.raises(
        ValueError, match=r"needs 12 positions but GPT2LMHeadModel has only 12|needs 13 positions"
    ):
        score_space_trie(lm, cs.prefix_ids, _digit_ids(), 4)


class _Wrapper(pl.LightningModule):
    def __init__(self, **models: torch.nn.Module) -> None:
        super().__init__()
        for name, model in models.items():
            setattr(self, name, model)


def test_as_incremental_rule() -> None:
    gpt2 = _gpt2()
    assert isinstance(as_incremental(gpt2), HFIncrementalLM)
    lm = as_incremental(_Wrapper(net=gpt2, head=torch.nn.Linear(2, 2)))
    assert lm is not None
    assert lm.model is gpt2
    two = _Wrapper(model=gpt2, teacher=_llama())
    assert find_hf_model(two) is gpt2  # several: the one named `model`
    assert find_hf_model(_Wrapper(a=gpt2, b=_llama())) is None
    bert = BertForTokenClassification(
        BertConfig(
            num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64, vocab_size=V
        )
    )
    assert as_incremental(bert) is None  # not a causal LM
    assert as_incremental(torch.nn.Linear(2, 2)) is None
    assert as_incremental(_Wrapper(inner=_Wrapper(model=gpt2))) is None  # direct attributes only


class _PeftLike(torch.nn.Module):
    """What peft's PeftModel offers the rule: the model under it through ``get_base_model()``."""

    def __init__(self, base: torch.nn.Module) -> None:
        super().__init__()
        self.base_model = base

    def get_base_model(self) -> torch.nn.Module:
        return self.base_model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model(*args, **kwargs)


class _Generative(torch.nn.Module):
    """A model that is not a transformers class but follows the ``generate`` conventions."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(2, 2)

    def prepare_inputs_for_generation(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


def test_one_rule_finds_transformers_models_generative_modules_and_peft_wrappers() -> None:
    gpt2 = _gpt2()
    # a transformers model, itself or as a direct LightningModule attribute
    assert find_hf_model(gpt2) is gpt2
    assert find_hf_model(_Wrapper(net=gpt2, head=torch.nn.Linear(2, 2))) is gpt2
    # a module with prepare_inputs_for_generation (what the sequence monitor decodes with)
    generative = _Generative()
    assert find_hf_model(_Wrapper(lm=generative)) is generative
    # not a transformers causal LM: no KV-cache adapter, but the sequence scorer decodes with it
    assert as_incremental(_Wrapper(lm=generative)) is None
    assert LanguageModel(_Wrapper(lm=generative), None, "auto").hf is generative
    assert LanguageModel(_Wrapper(net=gpt2), None, "auto").hf is gpt2
    # a peft-style wrapper is found, and judged by the model under it
    peft = _PeftLike(gpt2)
    assert find_hf_model(_Wrapper(model=peft, teacher=_llama())) is peft
    lm = as_incremental(_Wrapper(model=peft))
    assert lm is not None
    # a wrapper that is not peft's is scored as it is (its forward may add to the base model's)
    assert lm.model is peft
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        np.testing.assert_allclose(
            lm.init_state(ids)[1].numpy(), HFIncrementalLM(gpt2).init_state(ids)[1].numpy()
        )
    assert find_hf_model(_Wrapper(model=_PeftLike(torch.nn.Linear(2, 2)))) is None


def test_as_incremental_does_not_import_transformers() -> None:
    code = (
        "import sys, torch; from memcallbacks.lm.hf import as_incremental; "
        "assert as_incremental(torch.nn.Linear(2, 2)) is None; "
        "import memcallbacks.lm.losses as p; p.default_sample_loss_fn(torch.nn.Linear(2, 2), "
        "{'input_ids': torch.zeros(3, 2), 'labels': torch.tensor([0, 1, 0])}); "
        "assert 'transformers' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


class _GPT2Module(pl.LightningModule):
    """A LightningModule holding a transformers GPT-2 as an attribute, as users write it."""

    def __init__(self) -> None:
        super().__init__()
        self.model = _gpt2()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits


def test_exposure_monitor_wraps_a_held_gpt2_by_itself() -> None:
    from memcallbacks import CanaryExposureMonitor

    module = _GPT2Module().eval()
    cs = _canaries(length=3)
    monitor = CanaryExposureMonitor(cs, method="auto", num_references=100)
    assert isinstance(monitor._scoring_module(module), HFIncrementalLM)
    assert monitor._resolve_method(monitor._scoring_module(module)) == "exact_trie"  # not extrapolated
    result = monitor.compute(module)
    # the exact rank over all 1,000 candidates, scored one by one through the module's own forward
    candidates = cs.enumerate_candidates(10**3)
    seqs = [cs.prefix_ids + cs.encode_secret(s) for s in candidates]
    scores = score_sequences(module, seqs, len(cs.prefix_ids))
    by_secret = dict(zip(candidates, scores))
    expected = [int(np.sum(scores <= by_secret[c.secret])) for c in cs]  # ties count against, itself included
    assert result.rank.tolist() == expected
    assert result.rank_exact.all()


# -- one scoring pass, then greedy decoding from its cache cut back to the prefix ------------------
def _mistral(sliding_window: int) -> Any:
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        vocab_size=V, max_position_embeddings=64, sliding_window=sliding_window, bos_token_id=1, eos_token_id=1,
        pad_token_id=0,
    )  # fmt: skip
    return MistralForCausalLM(config).eval()


def _peaky(model: torch.nn.Module) -> torch.nn.Module:
    """Sharper next-token distributions (scaled output layer), so greedy ids vary along a sequence."""
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(30.0)
    return model


@pytest.mark.filterwarnings("ignore:.*past_key_values.*deprecated:FutureWarning")
@pytest.mark.parametrize("make", [_gpt2, _llama, _LegacyTupleGPT2], ids=["gpt2", "llama", "legacy"])
def test_cropped_scoring_cache_decodes_as_a_pass_over_the_prefix(make: Any) -> None:
    model = make().eval()
    _peaky(model.inner if isinstance(model, _LegacyTupleGPT2) else model)
    lm = HFIncrementalLM(model)
    torch.manual_seed(1)
    ids = torch.randint(2, V, (4, 14))
    ids[1, 9:] = 0  # right padding after the prefix: changes nothing before it
    with torch.inference_mode():
        logits, state = lm.prefill(ids)
        assert state is not None
        assert state.length == 14
        rows = torch.tensor([0, 1, 3])
        cropped = lm.crop_state(state, 6, rows)
        assert cropped is not None
        assert cropped.batch == 3
        assert cropped.length == 6
        got = lm.greedy(ids[rows, :6], 10, state=cropped, next_logits=logits[rows, 5])
        again = lm.greedy(ids[rows, :6], 10, state=cropped, next_logits=logits[rows, 5])
        rerun = lm.greedy(ids[rows, :6], 10)  # the prefix run on its own first
        # the cut-back cache holds what a pass over the prefix alone computes
        prefix_state, _ = lm.init_state(ids[rows, :6])
        for (k1, v1), (k2, v2) in zip(_kv(cropped), _kv(prefix_state)):
            assert k1.shape == k2.shape
            assert torch.allclose(k1, k2, atol=1e-5)
            assert torch.allclose(v1, v2, atol=1e-5)
        # the next position after the cut: logits of a full pass over prefix + one token (positions right)
        _, logp = lm.step(cropped, ids[rows, 6])
        assert torch.allclose(logp, torch.log_softmax(lm(ids[rows, :7])[:, -1], -1), atol=1e-4)
        # full passes over the growing sequence: the reference greedy continuation
        seq = ids[rows, :6]
        for _ in range(10):
            seq = torch.cat([seq, lm(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(got, rerun)
    assert torch.equal(got, again)
    assert torch.equal(got, seq[:, 6:])
    assert len({tuple(r) for r in got.tolist()}) > 1  # the continuation depends on the prefix


def _kv(state: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from memcallbacks.lm.hf import _kv_tensors

    layers = _kv_tensors(state.data)
    assert layers is not None
    return layers


def test_a_sliding_window_that_has_slid_is_not_cropped() -> None:
    lm = HFIncrementalLM(_peaky(_mistral(sliding_window=4)))
    ids = torch.randint(2, V, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        _, slid = lm.prefill(ids)
        assert slid is not None
        assert lm.crop_state(slid, 5) is None
        logits, short = lm.prefill(ids[:, :3])  # within the window: nothing dropped yet
        assert short is not None
        cropped = lm.crop_state(short, 2)
        assert cropped is not None
        got = lm.greedy(ids[:, :2], 6, state=cropped, next_logits=logits[:, 1])
        assert torch.equal(got, lm.greedy(ids[:, :2], 6))


def test_prefill_without_a_known_cache_and_greedy_arguments() -> None:
    lm = HFIncrementalLM(_OddCache())
    logits, state = lm.prefill(torch.tensor([[1, 2, 3]]))
    assert state is None
    assert tuple(logits.shape) == (1, 3, V)
    gpt2 = HFIncrementalLM(_gpt2())
    with pytest.raises(ValueError, match="pass both `state` and `next_logits`"):
        gpt2.greedy(torch.tensor([[1, 2]]), 3, next_logits=torch.zeros(1, V))
    _, state = gpt2.prefill(torch.tensor([[1, 2, 3]]))
    assert state is not None
    with pytest.raises(ValueError, match=r"`length` must be in \[1, 3\], got 4"):
        gpt2.crop_state(state, 4)
