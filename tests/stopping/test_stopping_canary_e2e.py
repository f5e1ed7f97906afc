"""End to end: canaries inserted many times, stop on exposure, the restored model exposes less."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.training import trainer
from memcallbacks import CanaryExposureMonitor, CanarySet, CharTokenizer, LeakageEarlyStopping
from memcallbacks.demos.toy import WindowLM, lm_loader, make_payment_corpus
from memcallbacks.lm.scoring import score_sequences
from memcallbacks.metrics.exposure import exposure_rank


def _exposure_max(model: WindowLM, cs: CanarySet) -> float:
    """Exact exposure recomputed here: rank of each secret among all |R| candidates (ties against it)."""
    prefix = list(cs.prefix_ids)
    candidates = cs.enumerate_candidates()
    seqs = [prefix + list(cs.encode_secret(c)) for c in candidates]
    scores = score_sequences(model, seqs, len(prefix), progress=False)
    index = {c: i for i, c in enumerate(candidates)}
    out = []
    for canary in cs:
        i = index[canary.secret]
        others = np.delete(scores, i)
        rank = int(exposure_rank(scores[i : i + 1], others)[0])
        out.append(np.log2(len(candidates)) - np.log2(rank))
    return float(max(out))


@pytest.mark.slow
def test_stop_on_exposure_restores_a_model_below_the_threshold(tmp_path: Path) -> None:
    tok = CharTokenizer()
    cs = CanarySet("my pin is {secret}.", tok, length=3, repetitions=(10,), per_count=2, seed=0)  # |R| = 1000
    texts = cs.inject(make_payment_corpus(200, seed=0))
    loader = lm_loader(texts, tok, batch_size=32)
    threshold = 9.5  # log2(1000) = 9.97: crossing means a secret is the top candidate
    monitor = CanaryExposureMonitor(cs, method="exact")
    stopper = LeakageEarlyStopping.exposure(bits=threshold, restore="best_safe")
    model = WindowLM(tok.vocab_size, context=6, embedding_dim=8, hidden_size=64, lr=3e-3)
    t = trainer(tmp_path, max_epochs=15, callbacks=[stopper, monitor])
    t.fit(model, loader)

    assert stopper.stopped_epoch is not None, stopper.last_values
    assert stopper.stopped_epoch < 14, stopper.last_values
    assert stopper.last_values["mem/canary/exposure_max"] > threshold
    assert stopper.best_safe_epoch is not None
    assert stopper.best_safe_epoch < stopper.stopped_epoch
    saved = json.loads(stopper.stopping_path.read_text())
    assert saved["restored_epoch"] == stopper.best_safe_epoch
    assert saved["reason"].startswith("Leakage: mem/canary/exposure_max = ")
    with torch.no_grad():
        restored = _exposure_max(model, cs)
    assert restored <= threshold, (restored, stopper.reason)
