"""PrivacyAuditMonitor: token-id rows with ``pad_id=`` (issue 24), checks before the first step and the
look for its canaries in the training data (issue 26, items 2 and 5).

The reference for row scores is plain torch: each row run alone, unpadded, the shifted cross-entropy
averaged over its tokens.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import transformers as tf
from torch.utils.data import DataLoader, TensorDataset

from helpers.training import trainer as make_trainer
from memcallbacks import CanarySet, CharTokenizer, IndexedDataset, PrivacyAuditMonitor
from memcallbacks.demos.toy import lm_loader, make_payment_corpus
from memcallbacks.lm.collate import TokenRowCollator

V = 61


def _gpt2() -> Any:
    torch.manual_seed(0)
    return tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=32, vocab_size=V))


def _rows(n: int, seed: int) -> list[dict[str, list[int]]]:
    g = np.random.default_rng(seed)
    return [{"input_ids": g.integers(3, V, size=4 + i % 7).tolist()} for i in range(n)]


def _alone(model: Any, ids: list[int]) -> float:
    x = torch.tensor([ids])
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=x).logits[0]
    return float(F.cross_entropy(logits[:-1], x[0, 1:]))


class _LM(pl.LightningModule):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: Any = None, position_ids: Any = None) -> Any:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.model(**batch).loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


# ------------------------------------------------------------------------------------ pad_id (issue 24)
def test_row_canaries_are_scored_as_each_row_alone_with_pad_id() -> None:
    model = _gpt2()  # its config has no pad_token_id
    rows = _rows(10, seed=1)
    audit = PrivacyAuditMonitor(rows, k_pos=2, k_neg=2, pad_id=0, batch_size=4)
    scores = audit.compute_scores(model)
    expected = -np.array([_alone(model, r["input_ids"]) for r in rows])
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="pad_id"):
        PrivacyAuditMonitor(rows, pad_id="0")


def test_row_canaries_without_a_pad_id_fail_before_the_first_step(tmp_path: Any) -> None:
    rows = _rows(10, seed=1)
    audit = PrivacyAuditMonitor(rows, k_pos=2, k_neg=2, batch_size=4, run_dir=tmp_path / "run")
    train = list(audit.inject(_rows(12, seed=2)))
    trainer = make_trainer(tmp_path, max_epochs=1, callbacks=[audit], logger=False)
    with pytest.raises(ValueError, match=r"PrivacyAuditMonitor.*pad_id="):
        trainer.fit(_LM(_gpt2()), DataLoader(train, batch_size=4, collate_fn=TokenRowCollator(0)))
    assert trainer.global_step == 0  # before: it failed at the first epoch end, after a full epoch


# ------------------------------------------------------------------------------------ canaries in the data
class _Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        _, (x, y) = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _points(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g))


def _fit_points(tmp_path: Any, audit: PrivacyAuditMonitor, train: Any) -> pl.Trainer:
    trainer = make_trainer(tmp_path, max_epochs=1, callbacks=[audit])
    trainer.fit(_Classifier(), DataLoader(IndexedDataset(train), batch_size=16))
    return trainer


def test_data_point_canaries_injected_pass_and_are_recorded(tmp_path: Any, recwarn: Any) -> None:
    audit = PrivacyAuditMonitor(_points(20, seed=1), k_pos=3, k_neg=3, run_dir=tmp_path / "run")
    _fit_points(tmp_path, audit, audit.inject(_points(40, seed=2)))
    assert audit.data_check == "ok"
    assert not [w for w in recwarn if "training data" in str(w.message)]
    assert json.loads((audit.run_dir / "audit.json").read_text())["data_check"] == "ok"


def test_data_point_canaries_never_injected_warn_once(tmp_path: Any) -> None:
    audit = PrivacyAuditMonitor(_points(20, seed=1), k_pos=3, k_neg=3, run_dir=tmp_path / "run")
    n_in = int(audit.included.sum())
    with pytest.warns(
        UserWarning, match=rf"{n_in} of the {n_in} canaries drawn 'in' were not found in any of the 40"
    ):
        _fit_points(tmp_path, audit, _points(40, seed=2))
    assert audit.data_check == "missing"
    assert audit.warned("canaries_not_in_training_data") == 1


def test_a_canary_drawn_out_in_the_training_data_is_refused(tmp_path: Any) -> None:
    canaries = _points(20, seed=1)
    audit = PrivacyAuditMonitor(canaries, k_pos=3, k_neg=3, run_dir=tmp_path / "run")
    trainer = make_trainer(tmp_path, max_epochs=1, callbacks=[audit])
    # every canary added (both halves): the audit's excluded half was trained on
    train = torch.utils.data.ConcatDataset([_points(40, seed=2), canaries])
    with pytest.raises(ValueError, match=r"drawn 'out' are in the training data.*audit.inject"):
        trainer.fit(_Classifier(), DataLoader(IndexedDataset(train), batch_size=16))
    assert trainer.global_step == 0


def test_token_canaries_are_looked_for_by_their_token_ids(tmp_path: Any) -> None:
    tok = CharTokenizer()
    cs = CanarySet("my code is {secret}.", tok, length=4, repetitions=(1,), per_count=12, seed=3)
    audit = PrivacyAuditMonitor(cs, k_pos=2, k_neg=2, run_dir=tmp_path / "run")
    texts = audit.inject(make_payment_corpus(30, seed=1))
    from helpers.language_models import tiny_window_lm

    trainer = make_trainer(tmp_path, max_epochs=1, callbacks=[audit])
    trainer.fit(tiny_window_lm(tok.vocab_size), lm_loader(texts, tok, batch_size=16))
    assert audit.data_check == "ok"
    # the same texts tokenised by another character vocabulary: the canaries drawn "in" are not found
    other = CharTokenizer("".join(sorted(set("".join(texts)))))
    audit2 = PrivacyAuditMonitor(cs, k_pos=2, k_neg=2, run_dir=tmp_path / "run2")
    trainer = make_trainer(tmp_path, max_epochs=1, callbacks=[audit2])
    with pytest.warns(UserWarning, match="drawn 'in' were not found"):
        trainer.fit(
            tiny_window_lm(max(tok.vocab_size, other.vocab_size)), lm_loader(texts, other, batch_size=16)
        )
    assert audit2.data_check == "missing"
