"""Hugging Face batch conventions of the default per-sample loss, on real ``transformers`` models."""

from __future__ import annotations

import functools
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    BertConfig,
    BertForTokenClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
)

from memcallbacks.callbacks.probes import evaluate_sample_losses
from memcallbacks.lm.hf import causal_lm_sample_loss_fn, token_sample_loss_fn
from memcallbacks.lm.losses import (
    causal_lm_sample_loss,
    default_sample_loss_and_correct_fn,
    default_sample_loss_fn,
)

V = 50


def _gpt2(vocab: int = V) -> GPT2LMHeadModel:
    config = GPT2Config(
        n_layer=2, n_embd=64, n_head=2, vocab_size=vocab, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(config).eval()


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, V, (4, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding
    labels = ids.clone()
    labels[2, :5] = -100  # a prompt left out of the loss
    labels[3, 3] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _hand_shifted(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], reduction: str = "mean"
) -> list[float]:
    """Next-token NLL written out token by token: logits at t score labels at t + 1."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    out = []
    for i in range(logits.shape[0]):
        total, n = 0.0, 0
        for t in range(logits.shape[1] - 1):
            target = int(batch["labels"][i, t + 1])
            if target == -100 or int(batch["attention_mask"][i, t + 1]) == 0:
                continue
            total -= float(F.log_softmax(logits[i, t], -1)[target])
            n += 1
        out.append(total / n if reduction == "mean" else total)
    return out


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_causal_lm_batch_matches_hand_written_shifted_loss(reduction: str) -> None:
    model, batch = _gpt2(), _batch()
    fn = functools.partial(default_sample_loss_fn, reduction=reduction)
    with torch.inference_mode():
        got = fn(model, batch)
    assert got.shape == (4,)
    assert got.dtype == torch.float32
    assert got.tolist() == pytest.approx(_hand_shifted(model, batch, reduction), abs=1e-5)


def test_not_the_unshifted_loss_and_not_the_models_own() -> None:
    model, batch = _gpt2(), _batch()
    with torch.inference_mode():
        got = default_sample_loss_fn(model, batch)
        logits = model(input_ids=batch["input_ids"]).logits
        unshifted = causal_lm_sample_loss(logits, batch["labels"], batch["attention_mask"], shift=False)[0]
        own = model(
            input_ids=batch["input_ids"], labels=batch["labels"]
        ).loss  # transformers' own, batch mean
    assert (got - unshifted).abs().min() > 0.1  # the bug this guards against: no shift
    flat = _hand_shifted(model, {**batch, "attention_mask": torch.ones_like(batch["input_ids"])})
    n = [(batch["labels"][i, 1:] != -100).sum().item() for i in range(4)]
    assert float(own) == pytest.approx(sum(f * k for f, k in zip(flat, n)) / sum(n), abs=1e-5)


def test_model_is_called_without_labels() -> None:
    model, batch = _gpt2(), _batch()
    seen: list[set[str]] = []
    handle = model.register_forward_pre_hook(lambda m, a, kw: seen.append(set(kw)), with_kwargs=True)
    try:
        with torch.inference_mode():
            default_sample_loss_fn(model, batch)
    finally:
        handle.remove()
    assert seen == [{"input_ids", "attention_mask", "position_ids"}]  # positions counted from the mask


def test_correctness_flag_is_every_scored_argmax() -> None:
    model, batch = _gpt2(), _batch()
    with torch.inference_mode():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        pred = logits.argmax(-1)
        batch["labels"][0, 1:] = pred[0, :-1]  # sample 0: every next token is the argmax
        batch["labels"][1, 1:6] = pred[1, :5]  # sample 1: right where scored, padding differs
        batch["labels"][1, 6:] = (pred[1, 5:8] + 1) % V
        loss, correct = default_sample_loss_and_correct_fn(model, batch)
    assert correct.tolist()[:2] == [True, True]
    assert correct.tolist()[2:] == [False, False]  # random labels on an untrained model
    assert loss[0] < loss[2]


def test_sample_with_nothing_scored_is_nan_not_zero() -> None:
    model, batch = _gpt2(), _batch()
    batch["labels"][3, 1:] = -100
    with torch.inference_mode():
        loss, correct = default_sample_loss_and_correct_fn(model, batch)
    assert math.isnan(float(loss[3]))
    assert not bool(correct[3])
    assert torch.isfinite(loss[:3]).all()


def test_classification_batch_and_dict_outputs() -> None:
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=V, num_labels=3, pad_token_id=0)
    model = GPT2ForSequenceClassification(config).eval()
    batch = {"input_ids": torch.randint(1, V, (3, 7)), "labels": torch.tensor([0, 2, 1])}
    with torch.inference_mode():
        got = default_sample_loss_fn(model, batch)
        expected = F.cross_entropy(
            model(input_ids=batch["input_ids"]).logits, batch["labels"], reduction="none"
        )
    assert torch.allclose(got, expected, atol=1e-6)

    class DictOut(torch.nn.Module):  # a plain module returning a dict with "logits", called positionally
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(V, V)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.emb(x)}

    plain = DictOut()
    ids = torch.randint(0, V, (2, 5))
    with torch.inference_mode():
        got = default_sample_loss_fn(plain, {"input_ids": ids, "labels": ids})
        logits = plain(ids)["logits"]
        expected = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none").mean(1)
    assert torch.allclose(got, expected, atol=1e-6)


def test_probe_evaluation_uses_the_shifted_loss() -> None:
    model = _gpt2()
    batch = _batch()
    items = [{k: v[i] for k, v in batch.items()} for i in range(4)]
    losses, correct = evaluate_sample_losses(model, items, default_sample_loss_and_correct_fn, batch_size=3)
    assert losses.tolist() == pytest.approx(_hand_shifted(model, batch), abs=1e-5)
    assert correct is not None
    assert correct.shape == (4,)


@pytest.mark.parametrize(
    ("labels_shape", "match"),
    [((4, 8), "neither convention"), ((4, 9, 2), "neither convention")],
)
def test_ambiguous_labels_name_the_sample_loss_fn(labels_shape: tuple[int, ...], match: str) -> None:
    batch = {"input_ids": torch.randint(1, V, (4, 9)), "labels": torch.zeros(labels_shape, dtype=torch.long)}
    with pytest.raises(ValueError, match=match) as info:
        default_sample_loss_fn(_gpt2(), batch)
    assert "causal_lm_sample_loss_fn" in str(info.value)
    assert "token_sample_loss_fn" in str(info.value)


def test_missing_labels_and_wrong_logits_are_explained() -> None:
    with pytest.raises(TypeError, match="no `labels`.*causal_lm_sample_loss_fn"):
        default_sample_loss_fn(_gpt2(), {"input_ids": torch.ones(2, 4, dtype=torch.long)})
    batch = {
        "input_ids": torch.randint(1, V, (2, 6)),
        "labels": torch.tensor([0, 1]),
    }  # [B] labels, LM logits
    with pytest.raises(ValueError, match=r"classification.*logits \[B, C\].*\(2, 6, 50\)"):
        default_sample_loss_fn(_gpt2(), batch)
    with pytest.raises(ValueError, match="`reduction` must be 'mean'.*'max'"):
        default_sample_loss_fn(_gpt2(), _batch(), reduction="max")


def test_token_classification_model_is_not_shifted_silently() -> None:
    config = BertConfig(
        num_hidden_layers=1,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=V,
        num_labels=5,
    )
    model = BertForTokenClassification(config).eval()
    ids = torch.randint(1, V, (2, 6))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids % 5}
    with pytest.raises(ValueError, match="BertForTokenClassification, not a causal LM.*token_sample_loss_fn"):
        default_sample_loss_fn(model, batch)
    with torch.inference_mode():
        got = token_sample_loss_fn()(model, batch)
        logits = model(input_ids=ids).logits
    expected = F.cross_entropy(logits.transpose(1, 2), ids % 5, reduction="none").mean(1)
    assert torch.allclose(got, expected, atol=1e-6)


def test_explicit_causal_lm_fn_without_labels_and_pickles() -> None:
    model, batch = _gpt2(), _batch()
    fn = causal_lm_sample_loss_fn(reduction="sum", with_correct=True)
    fn = pickle.loads(pickle.dumps(fn))  # survives ddp_spawn
    no_labels = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.inference_mode():
        loss, correct = fn(model, no_labels)
    expected = _hand_shifted(model, {**no_labels, "labels": batch["input_ids"]}, "sum")
    assert loss.tolist() == pytest.approx(expected, abs=1e-4)
    assert correct.dtype == torch.bool
    with pytest.raises(TypeError, match="with_correct"):
        causal_lm_sample_loss_fn(with_correct="false")  # type: ignore[arg-type]
