"""PEFT models: LoRA GPT-2 and LoRA Llama get the exact KV-cache trie, with ranks equal to full passes."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from memcallbacks import CanarySet, CharTokenizer
from memcallbacks.lm import canary_rank
from memcallbacks.lm.canary_rank import (
    EXPOSURE_STRATEGIES,
    ExposureConfig,
    exact_unavailable_reason,
    resolve_exposure_method,
)
from memcallbacks.lm.hf import HFIncrementalLM, as_incremental, why_not_incremental
from memcallbacks.lm.losses import default_sample_loss_fn
from memcallbacks.lm.scoring import score_sequences

peft = pytest.importorskip("peft")

TOK = CharTokenizer()
V = TOK.vocab_size


def _gpt2() -> GPT2LMHeadModel:
    config = GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=V, n_positions=64, bos_token_id=1, eos_token_id=1
    )
    return GPT2LMHeadModel(config)


def _llama() -> LlamaForCausalLM:
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=V, max_position_embeddings=64, bos_token_id=1, eos_token_id=1, pad_token_id=0,
    )  # fmt: skip
    return LlamaForCausalLM(config)


LORA = {
    "gpt2": (_gpt2, {"target_modules": ["c_attn"], "fan_in_fan_out": True}),
    "llama": (_llama, {"target_modules": ["q_proj", "v_proj"]}),
}


def _peft_model(base: torch.nn.Module, config: Any) -> Any:
    with warnings.catch_warnings():  # peft 0.21 asks transformers 5.25 a deprecated question while wrapping
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return peft.get_peft_model(base, config)


def _lora(arch: str) -> Any:
    make, extra = LORA[arch]
    torch.manual_seed(0)
    # init_lora_weights=False: random adapters that change the logits (the default starts at zero)
    config = peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, init_lora_weights=False, **extra)
    return _peft_model(make(), config).eval()


class _Held(pl.LightningModule):
    """A LightningModule holding the peft model, as users write it."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits


def _canaries(length: int) -> CanarySet:
    return CanarySet("my pin is {secret}.", TOK, length=length, repetitions=(1, 4), per_count=2, seed=3)


@pytest.mark.parametrize("arch", list(LORA))
def test_lora_model_gets_the_kv_cache_adapter_over_its_base(arch: str) -> None:
    model = _lora(arch)
    assert type(model).__name__ == "PeftModelForCausalLM"
    lm = as_incremental(_Held(model))
    assert isinstance(lm, HFIncrementalLM)
    assert lm.model is model.get_base_model()  # the base, whose layers carry the LoRA adapters
    assert why_not_incremental(_Held(model)) is None
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("error")  # no deprecated argument (`past_key_values`) reaches transformers
        full = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)
        state, logp = lm.init_state(ids[:, :3])
        torch.testing.assert_close(logp, full[:, 2], rtol=1e-5, atol=1e-5)
        state, logp = lm.step(state, ids[0, 3:4])
        torch.testing.assert_close(logp, full[:, 3], rtol=1e-5, atol=1e-5)
        with model.disable_adapter():  # the adapters are what the cached path scores
            base = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)
        assert not torch.allclose(base[:, 3], full[:, 3], atol=1e-3)


@pytest.mark.parametrize("arch", list(LORA))
def test_exposure_ranks_of_a_lora_model_equal_full_forward_passes(arch: str) -> None:
    from memcallbacks import CanaryExposureMonitor

    module = _Held(_lora(arch)).eval()
    cs = _canaries(length=3)
    monitor = CanaryExposureMonitor(cs, method="auto", num_references=100)
    scoring = monitor._scoring_module(module)
    assert isinstance(scoring, HFIncrementalLM)
    assert monitor._resolve_method(scoring) == "exact_trie"
    assert monitor.strategy_reason is None
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("error", FutureWarning)
        result = EXPOSURE_STRATEGIES["exact_trie"].compute(scoring, cs, ExposureConfig(progress=False))
        # every candidate through the peft model's own forward, one full pass per candidate sequence
        candidates = cs.enumerate_candidates(10**3)
        seqs = [cs.prefix_ids + cs.encode_secret(s) for s in candidates]
        scores = score_sequences(module, seqs, len(cs.prefix_ids), progress=False)
    by_secret = dict(zip(candidates, scores))
    expected = [int(np.sum(scores <= by_secret[c.secret])) for c in cs]  # ties count against, itself included
    assert result.rank.tolist() == expected
    assert result.rank_exact.all()
    np.testing.assert_allclose(result.log_perplexity, [by_secret[c.secret] for c in cs], rtol=1e-5, atol=1e-5)


def test_lora_default_loss_with_left_padding_equals_the_unpadded_loss() -> None:
    model = _lora("llama")
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    labels = ids.masked_fill(mask == 0, -100)
    with torch.inference_mode():
        got = default_sample_loss_fn(model, {"input_ids": ids, "attention_mask": mask, "labels": labels})
        alone = model(input_ids=ids[:1, 2:]).logits[0].double().log_softmax(-1)
    expected = -alone[torch.arange(3), ids[0, 3:]].mean()
    assert float(got[0]) == pytest.approx(float(expected), abs=1e-5)


def test_prompt_learning_is_not_stepped_and_auto_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2)
    module = _Held(_peft_model(_gpt2(), config)).eval()
    assert as_incremental(module) is None
    reason = why_not_incremental(module)
    assert reason is not None
    assert "prompt-learning" in reason
    cs = _canaries(length=4)  # 10^4 candidates: more than the references, so auto does not list them
    assert "prompt-learning" in (exact_unavailable_reason(module, cs, ExposureConfig()) or "")
    monkeypatch.setattr(canary_rank, "_WARNED", set())
    with pytest.warns(
        UserWarning, match=r"falls back to 'extrapolated'.*_Held is not an IncrementalLM.*prompt"
    ):
        assert (
            resolve_exposure_method("auto", module, cs, ExposureConfig(), num_references=100)
            == "extrapolated"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        resolve_exposure_method("auto", module, cs, ExposureConfig(), num_references=100)
    with pytest.raises(TypeError, match="prompt-learning"):
        HFIncrementalLM(module.model)
    from memcallbacks import CanaryExposureMonitor

    monitor = CanaryExposureMonitor(cs, method="auto", num_references=100)
    assert monitor._resolve_method(monitor._scoring_module(module)) == "extrapolated"
    assert "prompt-learning" in (monitor.strategy_reason or "")  # written to exposure.npz as strategy_reason


@pytest.mark.parametrize("arch", list(LORA))
def test_sequence_scoring_of_a_lora_model_decodes_from_its_cache(arch: str) -> None:
    from memcallbacks.lm.windows import LanguageModel, score_windows

    model = _lora(arch)
    lm = LanguageModel(_Held(model), None, "auto")
    windows = torch.randint(3, V, (3, 8), generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("error", FutureWarning)
        scores = score_windows(
            lm, windows, torch.full((3,), 8), prefix_len=4, suffix_len=4, min_k=0.2, sampling=((1.0, None),),
            batch_size=3, device=torch.device("cpu"),
        )  # fmt: skip
        seq = windows[:, :4]
        for _ in range(4):  # greedy by full passes through the peft model
            nxt = model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert lm.mode == "kv_cache"
    assert scores.generated.tolist() == seq[:, 4:].tolist()
