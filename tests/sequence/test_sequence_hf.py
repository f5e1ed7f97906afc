"""SequenceMemorisationMonitor on a tiny Hugging Face GPT-2 (built from a config) with dict items."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from helpers.training import trainer
from memcallbacks import CharTokenizer, SequenceMemorisationMonitor
from memcallbacks.demos.toy import make_payment_corpus
from memcallbacks.lm.windows import LanguageModel, WindowScores, pad_windows, score_windows

TOK = CharTokenizer()
TEXTS = make_payment_corpus(48, seed=0)
TRAIN, HELD = TEXTS[:16], TEXTS[16:32]

# -- Hugging Face: dict items, a KV cache -------------------------------------------------------
transformers = pytest.importorskip("transformers")


class HFLM(pl.LightningModule):
    """A LightningModule holding a tiny GPT-2 built from a config (no download)."""

    def __init__(self, vocab: int = TOK.vocab_size, lr: float = 3e-3) -> None:
        super().__init__()
        cfg = transformers.GPT2Config(
            vocab_size=vocab,
            n_positions=64,
            n_embd=64,
            n_layer=2,
            n_head=2,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=1,
            eos_token_id=1,
            pad_token_id=0,
        )
        self.model = transformers.GPT2LMHeadModel(cfg)
        self.lr = lr

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels
        ).loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class HFDataset(torch.utils.data.Dataset):
    """HF-style items: padded ``input_ids`` with an ``attention_mask``."""

    def __init__(self, texts: list[str], length: int = 64, pad: int = 0) -> None:
        self.items = []
        for t in texts:
            ids = TOK.encode(t)[:length]
            self.items.append(
                {
                    "input_ids": torch.tensor(ids + [pad] * (length - len(ids))),
                    "attention_mask": torch.tensor([1] * len(ids) + [0] * (length - len(ids))),
                }
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


@pytest.mark.slow
def test_gpt2_kv_cache_and_dict_items(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train, held = HFDataset(TRAIN[:8]), HFDataset(HELD[:8])
    monitor = SequenceMemorisationMonitor(train, held, prefix_len=8, suffix_len=8, tokenizer=TOK)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.ConcatDataset([train] * 25), batch_size=16, shuffle=True
    )
    t = trainer(tmp_path, max_epochs=4, callbacks=[monitor])
    model = HFLM()
    t.fit(model, loader)
    assert monitor.decoding == "kv_cache"
    assert monitor.history[0]["mem/extract/exact_rate"] <= 0.125
    assert monitor.history[-1]["mem/extract/exact_rate"] >= 0.5
    # the cached decoding equals full forward passes on the trained weights
    windows, lengths = pad_windows(
        [train[i]["input_ids"][: int(train[i]["attention_mask"].sum())] for i in range(8)], 16
    )
    kw = dict(
        prefix_len=8,
        suffix_len=8,
        min_k=0.2,
        sampling=[(1.0, None)],
        batch_size=8,
        device=torch.device("cpu"),
    )
    model.eval()
    with torch.inference_mode():
        a = score_windows(LanguageModel(model, None, "auto"), windows, lengths, **kw)  # type: ignore[arg-type]
        b = score_windows(LanguageModel(model, None, "full"), windows, lengths, **kw)  # type: ignore[arg-type]
    np.testing.assert_array_equal(a.generated.numpy(), b.generated.numpy())


def _assert_same(a: WindowScores, b: WindowScores, **tol: Any) -> None:
    for name, value in a.fields().items():
        np.testing.assert_allclose(
            value.numpy(), b.fields()[name].numpy(), equal_nan=True, err_msg=name, **tol
        )


def _peaky_gpt2() -> HFLM:
    torch.manual_seed(3)
    model = HFLM().eval()
    with torch.no_grad():
        model.model.lm_head.weight.mul_(30.0)  # sharper next-token distributions: varied greedy ids
    return model


def _variable_windows(width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Probes of 10..40 tokens: short rows (right-padded, not decoded) mixed with long ones in a batch."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(10, 40, (20,), generator=g).tolist()
    return pad_windows([torch.randint(2, TOK.vocab_size, (n,), generator=g) for n in lengths], width)


def test_decoding_starts_from_the_scoring_pass_cache() -> None:
    """One pass over each window; greedy decoding steps from its cache cut to the prefix (no prefix pass)."""
    model = _peaky_gpt2()
    windows, lengths = _variable_windows(24)
    n_long = int((lengths >= 24).sum())
    assert 0 < n_long < 20
    seen: list[tuple[int, int]] = []
    hook = model.model.register_forward_pre_hook(
        lambda _, args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    kw: dict[str, Any] = dict(
        prefix_len=10,
        suffix_len=14,
        min_k=0.2,
        sampling=[(1.0, None), (0.7, 5)],
        batch_size=8,
        device=torch.device("cpu"),
    )
    with torch.inference_mode():
        cached = LanguageModel(model, None, "auto")
        a = score_windows(cached, windows, lengths, **kw)
        hook.remove()
        full = LanguageModel(model, None, "full")
        b = score_windows(full, windows, lengths, **kw)
    assert cached.mode == "kv_cache"
    assert full.mode == "full"
    expected: list[tuple[int, int]] = [(1, 1)]  # the vocabulary probe
    for i in range(0, 20, 8):
        batch, n_dec = min(8, 20 - i), int((lengths[i : i + 8] >= 24).sum())
        expected += [(batch, 24)] + [(n_dec, 1)] * (13 if n_dec else 0)  # suffix_len - 1 one-token steps
    assert seen == expected
    assert not any(shape[1] == 10 for shape in seen)  # the prefix never ran on its own
    # the same numbers as full forward passes over the growing sequences
    np.testing.assert_array_equal(a.generated.numpy(), b.generated.numpy())
    _assert_same(a, b, rtol=1e-6)
    long = (lengths >= 24).numpy()
    assert np.isfinite(a.exact[long].numpy()).all()
    assert np.isnan(a.exact[~long].numpy()).all()
    assert len({tuple(r) for r in a.generated[long].numpy().tolist()}) > 1


class _NoCacheGPT2(torch.nn.Module):
    """A Hugging Face style model that never returns a KV cache."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def prepare_inputs_for_generation(self, *args: Any, **kwargs: Any) -> Any:  # what marks an HF model
        raise NotImplementedError

    def forward(
        self, input_ids: torch.Tensor, use_cache: bool = True, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        return {"logits": self.inner(input_ids=input_ids, use_cache=False).logits}


def test_a_model_without_a_cache_falls_back_to_full_passes() -> None:
    model = _peaky_gpt2()
    windows, lengths = _variable_windows(24)
    kw: dict[str, Any] = dict(
        prefix_len=10,
        suffix_len=14,
        min_k=0.2,
        sampling=[(1.0, None)],
        batch_size=8,
        device=torch.device("cpu"),
    )
    with torch.inference_mode():
        lm = LanguageModel(_NoCacheGPT2(model.model), None, "auto")
        a = score_windows(lm, windows, lengths, **kw)
        b = score_windows(LanguageModel(model, None, "full"), windows, lengths, **kw)
    assert lm.mode == "full"
    assert lm.fallback_reason is not None
    assert "no `past_key_values`" in lm.fallback_reason
    np.testing.assert_array_equal(a.generated.numpy(), b.generated.numpy())


def test_mismatched_pad_ids_are_refused(tmp_path: Path) -> None:
    monitor = SequenceMemorisationMonitor(
        HFDataset(TRAIN, pad=0), HFDataset(HELD, pad=3), prefix_len=8, suffix_len=8
    )
    t = trainer(tmp_path, max_epochs=1, limit_train_batches=1, callbacks=[monitor])
    with pytest.raises(ValueError, match="pad with different token ids"):
        t.fit(HFLM(), torch.utils.data.DataLoader(HFDataset(TRAIN), batch_size=8))
