"""Left, right and holey padding give every causal-LM loss path the loss of the unpadded sample.

Each architecture is built from a tiny config (no download); the reference is computed here by
hand: each sample run alone, unpadded, and the shifted cross-entropy written out token by token.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

from helpers.hf_configs import tiny_causal_lm_configs
from memcallbacks.callbacks.probes import evaluate_sample_losses
from memcallbacks.lm import losses as lm_losses
from memcallbacks.lm.hf import causal_lm_sample_loss_fn
from memcallbacks.lm.losses import (
    causal_lm_step_losses,
    default_sample_loss_and_correct_fn,
    default_sample_loss_fn,
    hf_forward,
    position_ids_from_mask,
)
from memcallbacks.lm.windows import LanguageModel, pad_windows, score_windows, token_sequences

V, PAD = 97, 0


CONFIGS = tiny_causal_lm_configs(V, pad=PAD)

_MODELS: dict[str, Any] = {}


def _model(name: str) -> Any:
    if name not in _MODELS:
        cls, config = CONFIGS[name]
        torch.manual_seed(0)
        _MODELS[name] = cls(config()).eval()
    return _MODELS[name]


def _samples() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(ids, labels)`` of unpadded samples of different lengths; one has a prompt left out (-100)."""
    g = torch.Generator().manual_seed(3)
    out = []
    for length in (9, 5, 7, 3):
        ids = torch.randint(3, V, (length,), generator=g)
        out.append((ids, ids.clone()))
    out[2][1][:3] = -100
    return out


def _pad(samples: list[tuple[torch.Tensor, torch.Tensor]], side: str) -> dict[str, torch.Tensor]:
    """A collated batch: right, left, or holey (two pad columns inside each sample, the rest right)."""
    rows = []
    for ids, labels in samples:
        real = torch.ones_like(ids)
        if side == "holey":
            k = max(1, ids.numel() // 2)
            two = torch.full((2,), PAD)
            ids = torch.cat([ids[:k], two, ids[k:]])
            labels = torch.cat([labels[:k], torch.full((2,), -100), labels[k:]])
            real = torch.cat([real[:k], torch.zeros(2, dtype=torch.long), real[k:]])
        rows.append((ids, labels, real))
    width = max(r[0].numel() for r in rows) + 1  # every row gets at least one pad column
    batch: dict[str, list[torch.Tensor]] = {"input_ids": [], "labels": [], "attention_mask": []}
    for ids, labels, real in rows:
        n = width - ids.numel()
        parts = {"input_ids": (ids, PAD), "labels": (labels, -100), "attention_mask": (real, 0)}
        for key, (row, fill) in parts.items():
            pad = torch.full((n,), fill, dtype=torch.long)
            batch[key].append(torch.cat([pad, row]) if side == "left" else torch.cat([row, pad]))
    return {k: torch.stack(v) for k, v in batch.items()}


def _unpadded_reference(model: Any, samples: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    """Each sample alone, no padding, no mask: mean of -log p(label[t + 1] | tokens <= t), by hand."""
    out = []
    with torch.no_grad():
        for ids, labels in samples:
            logp = torch.log_softmax(model(input_ids=ids[None]).logits[0].double(), dim=-1)
            terms = [
                -logp[t, int(labels[t + 1])] for t in range(ids.numel() - 1) if int(labels[t + 1]) != -100
            ]
            out.append(float(sum(terms) / len(terms)))
    return out


# a sliding window counts columns, so a hole inside it hides real tokens: Mistral with holey padding
# differs from the unpadded loss by design (documented in docs/hf.md; checked by its own test below)
_CASES = [
    (a, s) for a in CONFIGS for s in ("right", "left", "holey") if (a, s) != ("mistral_window", "holey")
]


@pytest.mark.parametrize(("arch", "side"), _CASES)
def test_default_loss_equals_the_unpadded_loss(arch: str, side: str) -> None:
    model, samples = _model(arch), _samples()
    batch = _pad(samples, side)
    expected = torch.tensor(_unpadded_reference(model, samples), dtype=torch.float32)
    with torch.inference_mode():
        got = default_sample_loss_fn(model, batch)
        explicit = causal_lm_sample_loss_fn()(model, batch)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(explicit, expected, rtol=1e-5, atol=1e-5)


def test_sliding_window_with_a_hole_is_what_the_docs_say() -> None:
    """Mistral's window spans columns, so a hole of pad columns inside it hides real tokens."""
    model, samples = _model("mistral_window"), _samples()[:1]
    with torch.inference_mode():
        holey = default_sample_loss_fn(model, _pad(samples, "holey"))
        left = default_sample_loss_fn(model, _pad(samples, "left"))
    expected = torch.tensor(_unpadded_reference(model, samples), dtype=torch.float32)
    torch.testing.assert_close(left, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(holey, expected, rtol=1e-5, atol=1e-5)


def test_probe_evaluation_with_left_padding_equals_the_unpadded_loss() -> None:
    model, samples = _model("llama_gqa"), _samples()
    batch = _pad(samples, "left")
    items = [{k: v[i] for k, v in batch.items()} for i in range(len(samples))]
    losses, correct = evaluate_sample_losses(model, items, default_sample_loss_and_correct_fn, batch_size=3)
    torch.testing.assert_close(
        losses, torch.tensor(_unpadded_reference(model, samples)), rtol=1e-5, atol=1e-5
    )
    assert correct is not None


def test_the_model_gets_position_ids_counted_from_the_first_real_token() -> None:
    model = _model("gpt2")
    batch = _pad(_samples(), "left")
    seen: list[dict[str, Any]] = []
    handle = model.register_forward_pre_hook(lambda m, a, kw: seen.append(dict(kw)), with_kwargs=True)
    try:
        with torch.inference_mode():
            default_sample_loss_fn(model, batch)
    finally:
        handle.remove()
    assert set(seen[0]) == {"input_ids", "attention_mask", "position_ids"}
    torch.testing.assert_close(seen[0]["position_ids"], position_ids_from_mask(batch["attention_mask"]))
    assert seen[0]["position_ids"][1].tolist() == [0, 0, 0, 0, 0, 0, 1, 2, 3, 4]


def test_a_batch_with_its_own_position_ids_keeps_them() -> None:
    class Echo(torch.nn.Module):
        def forward(self, input_ids: Any, attention_mask: Any = None, position_ids: Any = None) -> Any:
            return position_ids

    own = torch.tensor([[0, 1, 0, 1]])
    batch = {"input_ids": torch.ones(1, 4), "attention_mask": torch.ones(1, 4), "position_ids": own}
    assert hf_forward(Echo(), batch, packed=True) is own


class _NoPositions(torch.nn.Module):
    """A LightningModule-style wrapper whose forward takes no position ids."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Any:
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


class _KwargsOnly(_NoPositions):
    def forward(self, **kwargs: Any) -> Any:  # type: ignore[override]
        return self.model(**kwargs)


def test_a_forward_without_position_ids_is_warned_about_once_when_it_matters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lm_losses, "_WARNED_NO_POSITIONS", set())
    wrapper, samples = _NoPositions(_model("gpt2")), _samples()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.inference_mode():
            right = default_sample_loss_fn(wrapper, _pad(samples, "right"))  # right padding: nothing to say
    expected = torch.tensor(_unpadded_reference(_model("gpt2"), samples))
    torch.testing.assert_close(right, expected, rtol=1e-5, atol=1e-5)
    match = r"_NoPositions.forward takes no `position_ids`.*padding_side"
    with pytest.warns(UserWarning, match=match), torch.inference_mode():
        left = default_sample_loss_fn(wrapper, _pad(samples, "left"))
    assert not torch.allclose(left, expected, atol=1e-3)  # what the warning is about
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once
        with torch.inference_mode():
            default_sample_loss_fn(wrapper, _pad(samples, "left"))


def test_a_kwargs_forward_gets_position_ids_only_where_padding_precedes_tokens() -> None:
    wrapper, samples = _KwargsOnly(_model("llama_gqa")), _samples()
    expected = torch.tensor(_unpadded_reference(_model("llama_gqa"), samples))
    seen: list[set[str]] = []
    handle = wrapper.register_forward_pre_hook(lambda m, a, kw: seen.append(set(kw)), with_kwargs=True)
    try:
        with torch.inference_mode():
            for side in ("right", "left", "holey"):
                got = default_sample_loss_fn(wrapper, _pad(samples, side))
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    finally:
        handle.remove()
    assert ["position_ids" in s for s in seen] == [False, True, True]


@pytest.mark.parametrize("side", ["right", "left"])
def test_step_capture_from_the_steps_logits_equals_the_probe_loss(side: str) -> None:
    model, samples = _model("gpt2"), _samples()
    batch = _pad(samples, side)
    model.train()  # dropout is 0.1 in GPT-2's config: compare in eval mode below
    model.eval()
    out = model(**batch, position_ids=position_ids_from_mask(batch["attention_mask"]))  # a step, with grad
    per_sample = causal_lm_step_losses(out.logits, batch)
    assert per_sample.requires_grad
    expected = torch.tensor(_unpadded_reference(model, samples))
    torch.testing.assert_close(per_sample.detach(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(causal_lm_step_losses(out, batch).detach(), expected, rtol=1e-5, atol=1e-5)


def test_step_capture_errors_name_the_fix() -> None:
    with pytest.raises(TypeError, match="dict batch with an `input_ids` tensor"):
        causal_lm_step_losses(torch.zeros(2, 3, 5), (torch.zeros(2, 3), torch.zeros(2, 3)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"logits \[B, T, V\] and labels \[B, T\]"):
        causal_lm_step_losses(torch.zeros(2, 4, 5), {"input_ids": torch.zeros(2, 3, dtype=torch.long)})
    ids = torch.tensor([[5, 6, 7]])
    no_labels = causal_lm_step_losses(torch.zeros(1, 3, 8), {"input_ids": ids})  # scores input_ids
    assert float(no_labels[0]) == pytest.approx(float(torch.log(torch.tensor(8.0))))


def test_sequence_monitor_windows_strip_left_padding() -> None:
    model, samples = _model("gpt2"), _samples()
    batch = _pad(samples, "left")
    items = [
        {"input_ids": batch["input_ids"][i], "attention_mask": batch["attention_mask"][i]} for i in range(4)
    ]
    seqs, pads = token_sequences("members", items, range(4))
    assert [s.tolist() for s in seqs] == [ids.tolist() for ids, _ in samples]
    assert pads == {PAD}
    windows, lengths = pad_windows(seqs, 9)
    with torch.inference_mode():
        scores = score_windows(
            LanguageModel(model, None, "auto"),
            windows,
            lengths,
            prefix_len=4,
            suffix_len=5,
            min_k=0.2,
            sampling=((1.0, None),),
            batch_size=4,
            device=torch.device("cpu"),
            decode=False,
        )
    unlabelled = [(ids, ids) for ids, _ in samples]  # the sequence monitor scores every real token
    expected = torch.tensor(_unpadded_reference(model, unlabelled), dtype=torch.float64)
    torch.testing.assert_close(scores.loss, expected, rtol=1e-5, atol=1e-5)
