"""Packed sequences: per-text identity through PackingCollator and packed_text_losses.

Every expected loss is computed here with plain torch: each text run alone (flatten mode), or the
token pairs of each text read off the same block's logits (blocks mode).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from memcallbacks.lm.losses import causal_lm_step_losses, default_sample_loss_fn, hf_forward
from memcallbacks.lm.packing import PackingCollator, packed_model_inputs, packed_text_losses

V, PAD, EOS = 61, 0, 1


def _model(arch: str, attn: str = "sdpa") -> Any:
    torch.manual_seed(0)
    if arch == "gpt2":
        config: Any = GPT2Config(
            n_layer=2, n_embd=32, n_head=2, vocab_size=V, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, bos_token_id=EOS, eos_token_id=EOS, attn_implementation=attn,
        )  # fmt: skip
        return GPT2LMHeadModel(config).eval()
    config = LlamaConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        vocab_size=V, max_position_embeddings=64, bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD,
        attn_implementation=attn,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def _texts(lengths: tuple[int, ...] = (7, 4, 9, 5, 6, 3, 2, 8)) -> list[list[int]]:
    g = torch.Generator().manual_seed(3)
    return [torch.randint(2, V, (n,), generator=g).tolist() for n in lengths]


def _alone(model: Any, ids: list[int]) -> float:
    """A text's mean next-token NLL run alone, written out with log_softmax."""
    t = torch.tensor(ids)
    with torch.no_grad():
        logp = model(input_ids=t[None], use_cache=False).logits[0].double().log_softmax(-1)
    return float(-logp[torch.arange(len(ids) - 1), t[1:]].mean())


def _items(texts: list[list[int]], first: int = 0) -> list[dict[str, Any]]:
    return [{"index": first + i, "input_ids": ids} for i, ids in enumerate(texts)]


# -- the collator ---------------------------------------------------------------------------------
def test_flatten_rows_restart_positions_per_text_and_never_cut_a_text() -> None:
    batch = PackingCollator(6, pad_id=PAD)(
        [(4, [5, 6, 7]), {"index": 9, "input_ids": [8, 9]}, (2, [3, 4, 5, 6])]
    )
    assert set(batch) == {"input_ids", "labels", "position_ids", "text_ids", "index"}  # no attention_mask
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, PAD], [3, 4, 5, 6, PAD, PAD]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9, -100], [-100, 4, 5, 6, -100, -100]]
    assert batch["text_ids"].tolist() == [[4, 4, 4, 9, 9, -1], [2, 2, 2, 2, -1, -1]]
    assert batch["index"].tolist() == [4, 9, 2]


def test_flatten_without_block_size_is_one_row_like_data_collator_with_flattening() -> None:
    batch = PackingCollator(pad_id=PAD)([(0, [5, 6]), (1, torch.tensor([7, 8, 9]))])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2]]


def test_blocks_concatenate_texts_with_eos_and_pad_the_last_block() -> None:
    collate = PackingCollator(4, pad_id=PAD, mode="blocks", eos_id=EOS)
    batch = collate([(3, [5, 6, 7]), (0, [8, 9]), (3, [5, 6, 7])])  # a text drawn twice: one index entry
    assert batch["input_ids"].tolist() == [[5, 6, 7, EOS], [8, 9, EOS, 5], [6, 7, EOS, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7, EOS], [8, 9, EOS, 5], [6, 7, EOS, -100]]
    assert batch["text_ids"].tolist() == [[3, 3, 3, 3], [0, 0, 0, 3], [3, 3, 3, -1]]
    assert batch["index"].tolist() == [3, 0]
    assert "position_ids" not in batch


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "group"}, ValueError, r"`mode` must be 'flatten'.*got 'group'"),
        ({"mode": "blocks"}, ValueError, r"`block_size` is required with mode='blocks'"),
        ({"block_size": 1}, ValueError, r"`block_size` must be an int >= 2.*got 1"),
        ({"pad_id": None}, TypeError, r"`pad_id` must be an int token id, got None"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        PackingCollator(**{"pad_id": PAD, **kwargs})


def test_items_without_a_dataset_index_are_refused_naming_indexed_dataset() -> None:
    with pytest.raises(TypeError, match=r"IndexedDataset\(texts\)"):
        PackingCollator(8, pad_id=PAD)([{"input_ids": [1, 2, 3]}])
    with pytest.raises(TypeError, match=r"IndexedDataset"):
        PackingCollator(8, pad_id=PAD)([(0, "a text, not token ids")])


def test_flatten_refuses_a_text_longer_than_the_block() -> None:
    with pytest.raises(ValueError, match=r"text 7 has 5 tokens.*truncation=True, max_length=4"):
        PackingCollator(4, pad_id=PAD)([(7, [1, 2, 3, 4, 5])])


def test_collator_pickles_for_dataloader_workers() -> None:
    import pickle

    collate = pickle.loads(pickle.dumps(PackingCollator(8, pad_id=PAD, mode="blocks", eos_id=EOS)))
    assert repr(collate) == "PackingCollator(block_size=8, pad_id=0, mode='blocks', eos_id=1)"


# -- per-text losses ------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_flatten_per_text_losses_equal_each_text_alone(arch: str, attn: str) -> None:
    model, texts = _model(arch, attn), _texts()
    batch = PackingCollator(16, pad_id=PAD)(_items(texts, first=10))
    assert batch["input_ids"].shape[0] > 1  # several rows, several texts per row
    with torch.no_grad():
        out = model(**packed_model_inputs(batch), use_cache=False)
    loss, index = packed_text_losses(out, batch)
    assert index.tolist() == list(range(10, 10 + len(texts)))
    expected = torch.tensor([_alone(model, ids) for ids in texts], dtype=torch.float64)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)
    total, _ = packed_text_losses(out.logits, batch, reduction="sum")
    torch.testing.assert_close(
        total.double(),
        expected * torch.tensor([len(t) - 1 for t in texts], dtype=torch.float64),
        rtol=1e-5,
        atol=1e-4,
    )


def test_a_kv_cache_mixes_packed_texts_and_is_refused() -> None:
    model, texts = _model("llama"), _texts()
    batch = PackingCollator(16, pad_id=PAD)(_items(texts))
    with torch.no_grad():
        out = model(**packed_model_inputs(batch))  # use_cache defaults to True: no packed-sequence mask
    with pytest.raises(ValueError, match=r"KV cache.*use_cache=False"):
        packed_text_losses(out, batch)
    mixed, _ = packed_text_losses(out.logits, batch)  # what the refusal is about: later texts differ
    expected = torch.tensor([_alone(model, ids) for ids in texts], dtype=torch.float32)
    assert not torch.allclose(mixed, expected, atol=1e-3)


def _pairs_by_hand(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[int, list[float]]:
    """Each text's scored NLLs, read pair by pair off the block logits (both tokens of the same text)."""
    logp = logits.double().log_softmax(-1)
    out: dict[int, list[float]] = {}
    ids, tid = batch["input_ids"], batch["text_ids"]
    for r in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            a, b = int(tid[r, t]), int(tid[r, t + 1])
            if a >= 0 and a == b:
                out.setdefault(a, []).append(float(-logp[r, t, ids[r, t + 1]]))
    return out


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_blocks_per_text_losses_are_the_mean_over_the_texts_pairs_in_every_block(arch: str) -> None:
    model, texts = _model(arch), _texts()
    batch = PackingCollator(8, pad_id=PAD, mode="blocks", eos_id=EOS)(_items(texts))
    with torch.no_grad():
        logits = model(**packed_model_inputs(batch), use_cache=False).logits
    loss, index = packed_text_losses(logits, batch)
    by_hand = _pairs_by_hand(logits, batch)
    cut = {int(t) for t in batch["text_ids"][:, 0].tolist()} & {
        int(t) for t in batch["text_ids"][:, -1].tolist()
    }
    assert cut - {-1}  # some text is cut at a block boundary and counted in both blocks
    expected = torch.tensor([sum(by_hand[i]) / len(by_hand[i]) for i in index.tolist()], dtype=torch.float64)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)


def test_a_text_with_nothing_scored_is_nan() -> None:
    batch = PackingCollator(6, pad_id=PAD)([(0, [5]), (1, [6, 7, 8])])
    loss, index = packed_text_losses(torch.zeros(1, 6, 10), batch)
    assert torch.isnan(loss[0])
    assert index.tolist() == [0, 1]
    assert loss[1].item() == pytest.approx(float(torch.log(torch.tensor(10.0))), abs=1e-6)


# -- bad input: packed rows where a per-text metric is asked for ----------------------------------
def test_per_text_losses_of_a_batch_without_text_ids_name_the_collator() -> None:
    batch = {
        "input_ids": torch.ones(2, 4, dtype=torch.long),
        "position_ids": torch.tensor([[0, 1, 0, 1]] * 2),
    }
    with pytest.raises(TypeError, match=r"`text_ids`.*PackingCollator"):
        packed_text_losses(torch.zeros(2, 4, 5), batch)


def test_per_row_step_losses_of_a_packed_batch_point_to_packed_text_losses() -> None:
    batch = PackingCollator(8, pad_id=PAD)(_items(_texts((3, 4))))
    with pytest.raises(ValueError, match=r"packed_text_losses"):
        causal_lm_step_losses(torch.zeros(1, 8, V), batch)


def test_packed_probe_rows_are_refused_by_the_default_loss() -> None:
    model = _model("gpt2")
    batch = packed_model_inputs(PackingCollator(8, pad_id=PAD)(_items(_texts((3, 4)))))  # text_ids gone
    with pytest.raises(ValueError, match=r"restart inside a row.*unpacked texts"), torch.no_grad():
        default_sample_loss_fn(model, batch)


class _NoPositions(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: Any = None) -> Any:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)


def test_a_forward_without_position_ids_is_refused_packed_position_ids() -> None:
    batch = packed_model_inputs(PackingCollator(8, pad_id=PAD)(_items(_texts((3, 4)))))
    with pytest.raises(ValueError, match=r"_NoPositions.forward takes no `position_ids`.*docs/hf.md"):
        hf_forward(_NoPositions(_model("gpt2")), batch, packed=True)


def test_packed_position_ids_are_passed_through() -> None:
    model = _model("llama")
    texts = _texts((3, 4))
    batch = PackingCollator(8, pad_id=PAD)(_items(texts))
    with torch.no_grad():
        out = hf_forward(model, packed_model_inputs(batch), packed=True)  # a KV cache: so, via the logits
        isolated = model(**packed_model_inputs(batch), use_cache=False)
    seen: list[dict[str, Any]] = []
    handle = model.register_forward_pre_hook(lambda m, a, kw: seen.append(dict(kw)), with_kwargs=True)
    try:
        with torch.no_grad():
            hf_forward(model, packed_model_inputs(batch), packed=True)
    finally:
        handle.remove()
    assert seen[0]["position_ids"] is batch["position_ids"]
    assert out.logits.shape == isolated.logits.shape


def test_flatten_without_block_size_is_the_batch_of_data_collator_with_flattening() -> None:
    from transformers import DataCollatorWithFlattening

    texts = _texts((4, 2, 5))
    ours = PackingCollator(pad_id=PAD)(_items(texts))
    theirs = DataCollatorWithFlattening()([{"input_ids": t} for t in texts])
    assert set(theirs) == set(packed_model_inputs(ours))
    for key, value in theirs.items():
        assert ours[key].tolist() == value.tolist(), key


def test_with_correct_is_every_scored_argmax_right_per_text() -> None:
    batch = PackingCollator(8, pad_id=PAD)([(0, [1, 2, 3]), (1, [4, 5]), (2, [6])])
    logits = torch.zeros(1, 8, 10)
    logits[0, 0, 2] = logits[0, 1, 3] = 5.0  # text 0: both targets are the argmax
    logits[0, 2, 4] = 5.0  # the last token of text 0 "predicts" text 1's first: not scored either way
    logits[0, 3, 9] = 5.0  # text 1: its target 5 is not the argmax
    loss, index, correct = packed_text_losses(logits, batch, with_correct=True)
    assert correct.tolist() == [True, False, False]  # text 2 has nothing scored: never "correct"
    assert index.tolist() == [0, 1, 2]
    assert torch.isnan(loss[2])
    logp = logits[0].double().log_softmax(-1)
    assert loss[0].item() == pytest.approx(-(logp[0, 2] + logp[1, 3]).item() / 2, abs=1e-6)
    assert loss[1].item() == pytest.approx(-logp[3, 5].item(), abs=1e-6)


def test_an_empty_text_in_a_full_row_is_kept_as_nan() -> None:
    batch = PackingCollator(4, pad_id=PAD)([(0, [1, 2, 3, 4]), (5, [])])
    assert batch["index"].tolist() == [0, 5]
    loss, _ = packed_text_losses(torch.zeros(batch["input_ids"].shape[0], 4, 6), batch)
    assert torch.isnan(loss[1])
