"""SequenceMemorisationMonitor(reference=...): loss now minus the pre-fine-tuning loss (mem/mia_lm/auc/ref)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from helpers.training import trainer
from memcallbacks import CharTokenizer, SequenceMemorisationMonitor
from memcallbacks.demos.toy import make_payment_corpus
from memcallbacks.metrics import membership_inference

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore:.*non-member\\(s\\), fewer than 1/FPR:UserWarning")
TOK = CharTokenizer()
TEXTS = make_payment_corpus(32, seed=0)
SEQS = [torch.tensor(TOK.encode(t)[:16]) for t in TEXTS]
MEMBERS, NONMEMBERS = SEQS[:8], SEQS[8:16]


def _gpt2(vocab: int = TOK.vocab_size) -> torch.nn.Module:
    cfg = transformers.GPT2Config(
        vocab_size=vocab, n_positions=32, n_embd=32, n_layer=1, n_head=2, bos_token_id=1, eos_token_id=1
    )
    return transformers.GPT2LMHeadModel(cfg)


class LM(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = _gpt2()

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.model(input_ids=batch, labels=batch).loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def _loss(model: torch.nn.Module, ids: torch.Tensor) -> float:
    """Mean next-token NLL of one sequence, computed here."""
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0, :-1]
    return float(F.cross_entropy(logits.double(), ids[1:]))


def _fit(tmp_path: Path, monitor: SequenceMemorisationMonitor, model: LM) -> None:
    loader = torch.utils.data.DataLoader(torch.stack(MEMBERS * 8), batch_size=8, shuffle=True)
    trainer(tmp_path, max_epochs=2, callbacks=[monitor]).fit(model, loader)


def _monitor(reference: object) -> SequenceMemorisationMonitor:
    return SequenceMemorisationMonitor(
        MEMBERS, NONMEMBERS, prefix_len=8, suffix_len=8, num_probes=8, batch_size=3, reference=reference
    )


def test_fit_start_reference_matches_an_independent_computation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = LM()
    at_start = copy.deepcopy(model.model)
    monitor = _monitor("fit_start")
    _fit(tmp_path, monitor, model)
    assert monitor.member_indices is not None
    assert monitor.nonmember_indices is not None
    ref_m = np.array([_loss(at_start, MEMBERS[i]) for i in monitor.member_indices])
    ref_n = np.array([_loss(at_start, NONMEMBERS[i]) for i in monitor.nonmember_indices])
    assert monitor._reference_loss is not None
    np.testing.assert_allclose(monitor._reference_loss, np.concatenate([ref_m, ref_n]), rtol=1e-5)
    now_m = np.array([_loss(model.model, MEMBERS[i]) for i in monitor.member_indices])
    now_n = np.array([_loss(model.model, NONMEMBERS[i]) for i in monitor.nonmember_indices])
    last = monitor.history[-1]
    assert last["mem/mia_lm/auc/ref"] == pytest.approx(
        membership_inference(now_m - ref_m, now_n - ref_n, fprs=()).auc
    )
    assert "mem/mia_lm/tpr@1%fpr/ref" in last
    # kept in the checkpoint: a resumed monitor uses the stored losses
    other = _monitor("fit_start")
    other.load_state_dict(monitor.state_dict())
    assert other._reference_loss is not None
    np.testing.assert_array_equal(other._reference_loss, monitor._reference_loss)


def test_module_reference_with_another_vocabulary_is_refused(tmp_path: Path) -> None:
    monitor = _monitor(_gpt2(TOK.vocab_size + 3))
    with pytest.raises(
        ValueError, match=rf"vocabulary has {TOK.vocab_size + 3} tokens, the trained model's "
    ):
        _fit(tmp_path, monitor, LM())


def test_module_reference_is_evaluated_once(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = _gpt2()
    monitor = _monitor(base)
    _fit(tmp_path, monitor, LM())
    assert monitor.member_indices is not None
    expected = [_loss(base, MEMBERS[i]) for i in monitor.member_indices]
    assert monitor._reference_loss is not None
    np.testing.assert_allclose(monitor._reference_loss[: len(expected)], expected, rtol=1e-5)


def test_peft_base_without_adapters_is_refused(tmp_path: Path) -> None:
    model = LM()
    with pytest.raises(ValueError, match="without peft adapters"):
        _fit(tmp_path, _monitor("peft_base"), model)
    assert model.global_step == 0
