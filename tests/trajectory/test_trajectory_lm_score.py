"""The language-model memorisation score ranks memorised canaries first (the mean loss does not)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl

from helpers.training import trainer
from memcallbacks import CanarySet, CharTokenizer, LossTrajectoryTracker
from memcallbacks.toy import WindowLM, lm_loader, make_payment_corpus


@pytest.mark.slow
def test_min_loss_puts_canaries_inserted_16_and_32_times_in_the_top_percent(tmp_path: Path) -> None:
    """Toy payment corpus + canaries inserted 1, 4, 16, 32 times; a small window LM, 8 epochs.

    Measured when written: 98% of the 48 copies of the 16- and 32-times canaries in the top 1%
    (60 of 6,053 sequences) by ``min_loss``; 0% by the classification default ``mean_loss``.
    """
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    pl.seed_everything(0, verbose=False)
    tok = CharTokenizer()
    canaries = CanarySet("my pin is {secret}.", tok, repetitions=(1, 4, 16, 32), per_count=1, seed=0)
    data = canaries.inject(make_payment_corpus(6000, seed=0))
    tracker = LossTrajectoryTracker(correct_key=None, top_k=0, run_dir=tmp_path / "run")
    trainer(tmp_path, max_epochs=8, callbacks=[tracker], logger=False).fit(
        WindowLM(tok.vocab_size, hidden_size=128, lr=0.01), lm_loader(data, tok, batch_size=128)
    )
    copies = [i for c in canaries.canaries if c.repetitions >= 16 for i in canaries.injected_indices[c.id]]
    k = len(data) // 100

    def share_in_top(by: str) -> float:
        return float(np.isin(copies, tracker.most_memorised(k, by=by)).mean())

    assert len(copies) == 48 and k == 60
    assert share_in_top("min_loss") >= 0.8
    assert share_in_top("low_loss") >= 0.6
    assert share_in_top("mean_loss") <= 0.1  # the classification score points at hard text instead
