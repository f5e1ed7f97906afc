"""Token-id rows of varying length (as a tokenized ``datasets.Dataset`` yields them) are accepted as probes.

The reference is computed here with plain torch: each row run alone, unpadded, and the shifted
cross-entropy averaged over its tokens.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import transformers as tf
from torch.utils.data import DataLoader

from memcallbacks import MembershipInferenceMonitor
from memcallbacks.callbacks.probes import evaluate_sample_losses, item_structure, probe_collate
from memcallbacks.lm.collate import TokenRowCollator, check_pad_id, is_token_row
from memcallbacks.metrics.membership import loss_gap

V = 61


def _gpt2(pad_token_id: int | None = None) -> Any:
    torch.manual_seed(0)
    config = tf.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, n_positions=32, vocab_size=V, pad_token_id=pad_token_id
    )
    return tf.GPT2LMHeadModel(config)


def _rows(n: int, seed: int) -> list[dict[str, list[int]]]:
    """``datasets``-style rows: lists of ints of lengths 5..12, with their attention masks."""
    g = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        ids = g.integers(3, V, size=5 + i % 8).tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    return rows


def _alone(model: Any, ids: list[int]) -> float:
    """The mean shifted cross-entropy of one row run alone, unpadded (plain torch)."""
    x = torch.tensor([ids])
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=x).logits[0]
    return float(F.cross_entropy(logits[:-1], x[0, 1:]))


def test_collator_pads_right_with_ignored_labels() -> None:
    batch = TokenRowCollator(pad_id=7)([{"input_ids": [5, 6, 8]}, [9, 10], torch.tensor([11])])
    assert batch["input_ids"].tolist() == [[5, 6, 8], [9, 10, 7], [11, 7, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 8], [9, 10, -100], [11, -100, -100]]
    assert is_token_row([1, 2])
    assert not is_token_row((1, 2))  # an (x, y) pair
    assert not is_token_row(torch.zeros(3))


def test_row_labels_and_scalar_labels_are_kept() -> None:
    rows = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4, 5], "labels": [4, 5]}]
    assert TokenRowCollator(0)(rows)["labels"].tolist() == [[-100, 2, 3], [4, 5, -100]]
    cls = TokenRowCollator(0)(
        [{"input_ids": [1, 2, 3], "label": 1, "text": "a"}, {"input_ids": [4], "label": 0}]
    )
    assert cls["label"].tolist() == [1, 0]
    assert "text" not in cls


@pytest.mark.parametrize("form", ["dicts", "lists", "tensors"])
def test_rows_of_varying_length_score_as_each_row_alone(form: str) -> None:
    model = _gpt2()
    rows = _rows(16, seed=1)
    items: list[Any] = {
        "dicts": rows,
        "lists": [r["input_ids"] for r in rows],
        "tensors": [torch.tensor(r["input_ids"]) for r in rows],
    }[form]
    losses, _ = evaluate_sample_losses(model, items, batch_size=5, pad_id=0)
    expected = [_alone(model, r["input_ids"]) for r in rows]
    np.testing.assert_allclose(losses.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_the_models_pad_id_is_used_and_a_missing_one_is_named() -> None:
    rows = _rows(4, seed=2)
    chosen = probe_collate(rows, module=_gpt2(pad_token_id=3))
    assert isinstance(chosen, TokenRowCollator)
    assert chosen.pad_id == 3
    with pytest.raises(ValueError, match=r"pad_id="):
        probe_collate(rows, module=_gpt2())
    same = [{"input_ids": torch.arange(4)}, {"input_ids": torch.arange(4)}]
    assert probe_collate(same, module=_gpt2()) is None  # equal-length tensors: the default collate, as before
    with pytest.raises(TypeError, match="pad_id"):
        check_pad_id("0")


def test_rows_of_different_lengths_have_one_structure() -> None:
    assert item_structure({"input_ids": [1, 2]}) == item_structure({"input_ids": [1, 2, 3, 4]})
    assert item_structure([1, 2]) == item_structure([3, 4, 5])


class _LM(pl.LightningModule):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: Any = None, position_ids: Any = None) -> Any:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.model(**batch).loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(monitor: pl.Callback, train: list[Any], val: list[Any], tmp_path: Any) -> pl.Trainer:
    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=[monitor],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    collate = TokenRowCollator(pad_id=0)
    trainer.fit(
        _LM(_gpt2()),
        DataLoader(train, batch_size=4, collate_fn=collate),
        DataLoader(val, batch_size=4, collate_fn=collate),
    )
    return trainer


@pytest.mark.parametrize("form", ["dicts", "lists"])
def test_membership_monitor_on_rows_logs_the_unpadded_gap(form: str, tmp_path: Any) -> None:
    train, val = _rows(12, seed=3), _rows(10, seed=4)
    if form == "lists":
        train, val = [r["input_ids"] for r in train], [r["input_ids"] for r in val]
    monitor = MembershipInferenceMonitor(
        pad_id=0, batch_size=5, trajectory_attack=False, run_dir=tmp_path / "run"
    )
    trainer = _fit(monitor, train, val, tmp_path)
    model = trainer.lightning_module.model.eval()
    ids = lambda r: r["input_ids"] if isinstance(r, dict) else r  # noqa: E731
    members = np.array([_alone(model, ids(r)) for r in train], dtype=np.float32)
    nonmembers = np.array([_alone(model, ids(r)) for r in val], dtype=np.float32)
    np.testing.assert_allclose(monitor.member_losses[-1], members, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(monitor.nonmember_losses[-1], nonmembers, rtol=1e-5, atol=1e-5)
    metrics = trainer.callback_metrics
    assert float(metrics["mem/gap/member_loss"]) == pytest.approx(float(members.mean()), abs=1e-5)
    assert float(metrics["mem/gap/nonmember_loss"]) == pytest.approx(float(nonmembers.mean()), abs=1e-5)
    assert float(metrics["mem/gap/loss"]) == pytest.approx(loss_gap(members, nonmembers), abs=1e-5)


def test_rows_without_a_pad_id_fail_before_training(tmp_path: Any) -> None:
    monitor = MembershipInferenceMonitor(batch_size=5, run_dir=tmp_path / "run")
    with pytest.raises(ValueError, match=r"MembershipInferenceMonitor.*pad_id="):
        _fit(monitor, _rows(8, seed=5), _rows(8, seed=6), tmp_path)
    assert monitor.member_losses.shape[0] == 0  # nothing was evaluated


def test_given_rows_of_different_lengths_are_accepted_at_construction() -> None:
    monitor = MembershipInferenceMonitor(_rows(6, seed=7), _rows(5, seed=8), pad_id=0)
    assert monitor.pad_id == 0
    with pytest.raises(ValueError, match="token-id rows"):
        MembershipInferenceMonitor(_rows(6, seed=7), [(torch.zeros(2), 1)])


def test_probe_trajectory_on_rows_records_the_unpadded_losses(tmp_path: Any) -> None:
    from memcallbacks import LossTrajectoryTracker

    rows = _rows(9, seed=10)
    tracker = LossTrajectoryTracker(
        source="probe", probe_dataset=rows, pad_id=0, batch_size=4, dtype="float32"
    )
    trainer = _fit(tracker, _rows(8, seed=11), _rows(4, seed=12), tmp_path)
    assert tracker.store is not None
    expected = [_alone(trainer.lightning_module.model, r["input_ids"]) for r in rows]
    np.testing.assert_allclose(tracker.store.matrix()[:, -1], expected, rtol=1e-5, atol=1e-5)


def test_shadow_recorder_scores_rows_and_names_a_missing_pad_id(tmp_path: Any) -> None:
    from memcallbacks import ShadowScoreRecorder

    pool = _rows(10, seed=13)
    recorder = ShadowScoreRecorder(pool, run_index=0, seed=0, pad_id=0, batch_size=4, run_dir=tmp_path / "a")
    trainer = _fit(recorder, list(recorder.train_dataset), _rows(4, seed=14), tmp_path)
    assert recorder.scores is not None
    expected = [-_alone(trainer.lightning_module.model, r["input_ids"]) for r in pool]
    np.testing.assert_allclose(recorder.scores, expected, rtol=1e-5, atol=1e-5)
    missing = ShadowScoreRecorder(pool, run_index=0, seed=0, run_dir=tmp_path / "b")
    with pytest.raises(ValueError, match=r"ShadowScoreRecorder.*pad_id="):
        _fit(missing, list(missing.train_dataset), _rows(4, seed=14), tmp_path)
