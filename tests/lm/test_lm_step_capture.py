"""Step capture for a language model: the tracker records the step's own left-padded logits' losses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader
from transformers import GPT2Config, GPT2LMHeadModel

from memcallbacks import IndexedDataset, LossTrajectoryTracker, split_index
from memcallbacks.lm.losses import causal_lm_step_losses, position_ids_from_mask

V, PAD = 61, 0


def _texts() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return [torch.randint(1, V, (n,), generator=g) for n in (7, 4, 9, 5, 6, 3)]


def _left_pad(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """A left-padding collator that keeps IndexedDataset's ``index`` key."""
    width = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), width), PAD)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, it in enumerate(items):
        n = len(it["input_ids"])
        ids[row, width - n :], mask[row, width - n :] = it["input_ids"], 1
    labels = ids.masked_fill(mask == 0, -100)
    index = torch.tensor([it["index"] for it in items])
    return {"index": index, "input_ids": ids, "attention_mask": mask, "labels": labels}


class _LM(pl.LightningModule):
    def __init__(self, capture: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        config = GPT2Config(
            n_layer=2, n_embd=32, n_head=2, vocab_size=V, n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, bos_token_id=1, eos_token_id=1,
        )  # fmt: skip
        self.model = GPT2LMHeadModel(config)
        self.capture = capture

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> Any:
        index, batch = split_index(batch)
        out = self.model(**batch, position_ids=position_ids_from_mask(batch["attention_mask"]))
        if not self.capture:
            return out.loss
        per_sample = causal_lm_step_losses(out.logits, batch)
        return {"loss": out.loss, "sample_loss": per_sample.detach(), "sample_index": index}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)  # weights stay put: losses comparable after the fit


def _fit(module: _LM, tracker: LossTrajectoryTracker, tmp_path: Path) -> None:
    data = IndexedDataset([{"input_ids": t} for t in _texts()])
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, logger=CSVLogger(str(tmp_path)), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path), log_every_n_steps=1,
        callbacks=[tracker],
    )  # fmt: skip
    trainer.fit(module, DataLoader(data, batch_size=4, shuffle=True, collate_fn=_left_pad))


def test_tracker_records_the_unpadded_losses_from_the_steps_logits(tmp_path: Path) -> None:
    module = _LM(capture=True)
    tracker = LossTrajectoryTracker(dtype="float32", run_dir=tmp_path / "run")
    _fit(module, tracker, tmp_path)
    assert tracker.store is not None
    recorded = torch.as_tensor(tracker.store.epoch(0))
    expected = []
    with torch.no_grad():  # each text alone, no padding, shifted cross-entropy written out
        for ids in _texts():
            logp = module.model(input_ids=ids[None]).logits[0].double().log_softmax(-1)
            expected.append(float(-logp[torch.arange(len(ids) - 1), ids[1:]].mean()))
    torch.testing.assert_close(recorded, torch.tensor(expected, dtype=recorded.dtype), rtol=1e-5, atol=1e-5)


def test_missing_sample_loss_shows_the_language_model_form(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"(?s)causal_lm_step_losses\(out.logits, batch\).*sample_index"):
        _fit(_LM(capture=False), LossTrajectoryTracker(run_dir=tmp_path / "run"), tmp_path)
