"""SequenceMemorisationMonitor on a tiny Hugging Face GPT-2 (built from a config) with dict items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from helpers.training import trainer
from memcallbacks import CharTokenizer, SequenceMemorisationMonitor
from memcallbacks.callbacks.sequence import _LanguageModel, _window_tensor, evaluate_windows
from memcallbacks.toy import make_payment_corpus

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
    windows, lengths = _window_tensor(
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
        a = evaluate_windows(_LanguageModel(model, None, "auto"), windows, lengths, **kw)  # type: ignore[arg-type]
        b = evaluate_windows(_LanguageModel(model, None, "full"), windows, lengths, **kw)  # type: ignore[arg-type]
    np.testing.assert_array_equal(a[:, 5:].numpy(), b[:, 5:].numpy())


def test_mismatched_pad_ids_are_refused(tmp_path: Path) -> None:
    monitor = SequenceMemorisationMonitor(
        HFDataset(TRAIN, pad=0), HFDataset(HELD, pad=3), prefix_len=8, suffix_len=8
    )
    t = trainer(tmp_path, max_epochs=1, limit_train_batches=1, callbacks=[monitor])
    with pytest.raises(ValueError, match="pad with different token ids"):
        t.fit(HFLM(), torch.utils.data.DataLoader(HFDataset(TRAIN), batch_size=8))
