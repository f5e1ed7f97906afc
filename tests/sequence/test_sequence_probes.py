"""The sequence monitor's probes come from the shared resolver (the membership monitor's rules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from helpers.training import trainer
from memcallbacks import CharTokenizer, MembershipInferenceMonitor, SequenceMemorisationMonitor
from memcallbacks.demos.toy import CharLSTMLM, collate_tokens, lm_loader, make_payment_corpus
from memcallbacks.lm.losses import causal_lm_sample_loss

TOK = CharTokenizer()
TEXTS = make_payment_corpus(48, seed=0)
TRAIN, HELD = TEXTS[:32], TEXTS[32:]


class _ValidatedLSTM(CharLSTMLM):
    """The toy LM with a validation step, so a validation loader can be passed to ``fit``."""

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.training_step(batch, batch_idx)["loss"]


def _lm_loss(module: Any, ids: torch.Tensor) -> torch.Tensor:
    """Per-sample next-token loss of a padded token batch (what the membership monitor scores)."""
    return causal_lm_sample_loss(module(ids), ids, (ids != 0).long())[0]


def _sequence_monitor(**kwargs: Any) -> SequenceMemorisationMonitor:
    return SequenceMemorisationMonitor(prefix_len=8, suffix_len=8, batch_size=16, tokenizer=TOK, **kwargs)


def test_validation_loaders_given_to_fit_are_found_before_the_first_validation(tmp_path: Path) -> None:
    """check_val_every_n_epoch=2: no validation ran at the evaluation, the non-member probes still exist."""
    torch.manual_seed(0)
    monitor = _sequence_monitor(num_probes=8)
    t = trainer(tmp_path, max_epochs=1, limit_train_batches=2, check_val_every_n_epoch=2, callbacks=[monitor])
    t.fit(
        _ValidatedLSTM(TOK.vocab_size, hidden_size=16),
        lm_loader(TRAIN, TOK, batch_size=4),
        lm_loader(HELD, TOK, batch_size=4, shuffle=False),
    )
    assert monitor.nonmember_indices is not None
    assert monitor.nonmember_indices.size == 8
    row = monitor.history[0]
    assert row["mem/mia_lm/n_nonmembers"] == 8
    assert "mem/mia_lm/auc/loss" in row
    assert "mem/extract/exact_rate_nonmember" in row


def test_membership_and_sequence_monitors_with_one_seed_probe_the_same_members(tmp_path: Path) -> None:
    torch.manual_seed(0)
    sequence = _sequence_monitor(num_probes=6, seed=3)
    membership = MembershipInferenceMonitor(
        num_probes=6, seed=3, sample_loss_fn=_lm_loss, collate_fn=collate_tokens, batch_size=16
    )
    other_seed = _sequence_monitor(num_probes=6, seed=4, name="other")
    t = trainer(tmp_path, max_epochs=1, limit_train_batches=2, callbacks=[sequence, membership, other_seed])
    t.fit(
        _ValidatedLSTM(TOK.vocab_size, hidden_size=16),
        lm_loader(TRAIN, TOK, batch_size=4),
        lm_loader(HELD, TOK, batch_size=4, shuffle=False),
    )
    assert sequence.member_indices is not None
    assert membership.member_indices is not None
    assert other_seed.member_indices is not None
    assert sequence.member_indices.tolist() == membership.member_indices.tolist()
    assert sorted(other_seed.member_indices.tolist()) != sorted(sequence.member_indices.tolist())
