"""A real Trainer run with packed texts: the step-capture tracker keeps one trajectory per text.

Canaries are injected into the text dataset; their ``injected_indices`` must pick out their own
texts' losses in the tracker's store, although training sees packed rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader
from transformers import GPT2Config, GPT2LMHeadModel

from memcallbacks import (
    CanarySet,
    CharTokenizer,
    IndexedDataset,
    LossTrajectoryTracker,
    MembershipInferenceMonitor,
)
from memcallbacks.lm.packing import PackingCollator, packed_model_inputs, packed_text_losses

TOK = CharTokenizer("abcdefghij0123456789 ")


def _data_texts(lengths: tuple[int, ...], seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    chars = TOK.alphabet
    return [
        TOK.encode("".join(chars[int(i)] for i in torch.randint(0, len(chars), (n,), generator=g)))
        for n in lengths
    ]


def _data() -> tuple[CanarySet, Any]:
    texts = _data_texts((5, 9, 12, 7, 4, 10, 6, 8), seed=2)
    canaries = CanarySet("id {secret}", TOK, length=3, repetitions=(1, 3), per_count=1, seed=0)
    return canaries, canaries.inject(texts, make_item=lambda c: list(c.token_ids))


class _Packed(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        config = GPT2Config(
            n_layer=2, n_embd=32, n_head=2, vocab_size=TOK.vocab_size, n_positions=32, resid_pdrop=0.0,
            embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=1,
        )  # fmt: skip
        self.model = GPT2LMHeadModel(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: Any = None, position_ids: Any = None) -> Any:
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        return out.logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> Any:
        out = self.model(**packed_model_inputs(batch), use_cache=False)
        loss, index = packed_text_losses(out, batch)
        return {"loss": out.loss, "sample_loss": loss.detach(), "sample_index": index}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)  # weights stay put: losses comparable after the fit


def _alone(model: Any, ids: list[int]) -> float:
    t = torch.tensor(ids)
    with torch.no_grad():
        logp = model(input_ids=t[None], use_cache=False).logits[0].double().log_softmax(-1)
    return float(-logp[torch.arange(len(ids) - 1), t[1:]].mean())


def _by_hand(model: Any, loader: DataLoader[Any], n: int) -> torch.Tensor:
    """Blocks mode: each text's mean NLL over its same-text pairs in the blocks, written out."""
    sums, counts = torch.zeros(n, dtype=torch.float64), torch.zeros(n)
    for batch in loader:
        with torch.no_grad():
            logp = model(**packed_model_inputs(batch), use_cache=False).logits.double().log_softmax(-1)
        ids, tid = batch["input_ids"], batch["text_ids"]
        for r in range(ids.shape[0]):
            for t in range(ids.shape[1] - 1):
                if tid[r, t] >= 0 and tid[r, t] == tid[r, t + 1]:
                    sums[tid[r, t]] -= logp[r, t, ids[r, t + 1]]
                    counts[tid[r, t]] += 1
    return sums / counts


@pytest.mark.filterwarnings("ignore:.*fewer than 1/FPR:UserWarning")
@pytest.mark.parametrize("mode", ["flatten", "blocks"])
def test_step_capture_of_packed_texts_keeps_one_trajectory_per_text(tmp_path: Path, mode: str) -> None:
    canaries, data = _data()
    module = _Packed()
    collate = PackingCollator(24 if mode == "flatten" else 16, pad_id=TOK.pad_token_id, mode=mode)
    loader = DataLoader(IndexedDataset(data), batch_size=3, shuffle=(mode == "flatten"), collate_fn=collate)
    tracker = LossTrajectoryTracker(dtype="float32", run_dir=tmp_path / "run")
    members, nonmembers = [list(data[i]) for i in range(4)], _data_texts((6, 9, 5, 11), seed=7)
    monitor = MembershipInferenceMonitor(
        members, nonmembers, pad_id=TOK.pad_token_id, run_dir=tmp_path / "mia"
    )
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, logger=CSVLogger(str(tmp_path)), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path), log_every_n_steps=1,
        callbacks=[tracker, monitor],
    )  # fmt: skip
    trainer.fit(module, loader)
    assert tracker.store is not None
    assert tracker.store.num_samples == len(data)  # texts, not rows
    recorded = torch.as_tensor(tracker.store.epoch(0)).double()
    module.model.eval()
    if mode == "flatten":  # each text attends only to itself: its loss alone
        expected = torch.tensor(
            [_alone(module.model, list(data[i])) for i in range(len(data))], dtype=torch.float64
        )
    else:  # attention across texts inside a block: the same pairs, read off the same blocks
        expected = _by_hand(module.model, loader, len(data))
    torch.testing.assert_close(recorded, expected, rtol=1e-5, atol=1e-5)
    # probes stay unpacked texts (padded by TokenRowCollator), however training packs
    member_loss = monitor.history[-1]["mem/gap/member_loss"]
    nonmember_loss = monitor.history[-1]["mem/gap/nonmember_loss"]
    assert member_loss == pytest.approx(sum(_alone(module.model, t) for t in members) / 4, abs=1e-5)
    assert nonmember_loss == pytest.approx(sum(_alone(module.model, t) for t in nonmembers) / 4, abs=1e-5)
    for canary in canaries:  # canary indices are text indices: their rows hold the canary's own text
        for i in canaries.injected_indices[canary.id]:
            assert list(data[i]) == list(canary.token_ids)
            if mode == "flatten":
                assert recorded[i].item() == pytest.approx(
                    _alone(module.model, list(canary.token_ids)), abs=1e-5
                )


class _PackedWithValidation(_Packed):
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        return None


@pytest.mark.filterwarnings("ignore:.*fewer than 1/FPR:UserWarning")
def test_default_probes_found_in_packed_loaders_are_the_unpacked_texts(tmp_path: Path) -> None:
    _, data = _data()
    held_out = _data_texts((6, 9, 5, 11), seed=7)
    module = _PackedWithValidation()
    monitor = MembershipInferenceMonitor(
        pad_id=TOK.pad_token_id, run_dir=tmp_path / "mia"
    )  # probes: the loaders'
    collate = PackingCollator(24, pad_id=TOK.pad_token_id)
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=[monitor],
    )  # fmt: skip
    trainer.fit(
        module,
        DataLoader(IndexedDataset(data), batch_size=3, collate_fn=collate),
        DataLoader(IndexedDataset(held_out), batch_size=2, collate_fn=collate),
    )
    module.model.eval()
    members = [list(data[i]) for i in range(len(data))]
    row = monitor.history[-1]
    assert row["mem/gap/member_loss"] == pytest.approx(
        sum(_alone(module.model, t) for t in members) / len(data), abs=1e-5
    )
    assert row["mem/gap/nonmember_loss"] == pytest.approx(
        sum(_alone(module.model, t) for t in held_out) / 4, abs=1e-5
    )


class _PackedWithoutCapture(_Packed):
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> Any:
        return self.model(**packed_model_inputs(batch), use_cache=False).loss


def test_missing_sample_loss_of_a_packed_batch_shows_the_packed_form(tmp_path: Path) -> None:
    _, data = _data()
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
        callbacks=[LossTrajectoryTracker(run_dir=tmp_path / "run")],
    )  # fmt: skip
    loader = DataLoader(
        IndexedDataset(data), batch_size=3, collate_fn=PackingCollator(24, pad_id=TOK.pad_token_id)
    )
    with pytest.raises(
        RuntimeError, match=r"(?s)use_cache=False.*packed_text_losses\(out, batch\).*sample_index"
    ):
        trainer.fit(_PackedWithoutCapture(), loader)
