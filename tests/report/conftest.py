"""A real small Trainer run with every callback, shared by the report tests."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from memcallbacks import (
    CanaryExposureMonitor,
    CanarySet,
    CharTokenizer,
    DPEpsilonMonitor,
    LeakageEarlyStopping,
    LossTrajectoryTracker,
    MembershipInferenceMonitor,
    PrivacyAuditMonitor,
    SequenceMemorisationMonitor,
)
from memcallbacks.demos.demo import lm_sample_loss
from memcallbacks.demos.toy import DPWindowLM, TokenDataset, collate_tokens, lm_loader, make_payment_corpus
from memcallbacks.rundir import find_run_dir


@pytest.fixture(scope="session")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every callback on a tiny DP-SGD language model, 3 epochs, stopped at the third."""
    from opacus.data_loader import DPDataLoader

    out = tmp_path_factory.mktemp("rundir")
    pl.seed_everything(0, verbose=False)
    tok = CharTokenizer()
    corpus = make_payment_corpus(400, seed=0)
    train, heldout = corpus[:300], corpus[300:]
    canaries = CanarySet("my pin is {secret}.", tok, repetitions=(1, 4), per_count=2, seed=0)
    audit = PrivacyAuditMonitor(
        CanarySet("my code is {secret}.", tok, repetitions=(1,), per_count=16, seed=1), seed=0, delta=1e-5
    )
    texts = audit.inject(canaries.inject(train))
    loader = DPDataLoader.from_data_loader(
        lm_loader(texts, tok, batch_size=64), generator=torch.Generator().manual_seed(0)
    )
    callbacks = {
        # a language model: rank by the LM score (lowest loss reached), as the demo does
        "trajectory": LossTrajectoryTracker(source="step", correct_key=None, score="min_loss"),
        "membership": MembershipInferenceMonitor(
            TokenDataset(train[:100], tok),
            TokenDataset(heldout, tok),
            sample_loss_fn=lm_sample_loss,
            collate_fn=collate_tokens,
        ),
        "sequence": SequenceMemorisationMonitor(
            TokenDataset(train[:60], tok),
            TokenDataset(heldout, tok),
            prefix_len=8,
            suffix_len=8,
            n_tries=(1, 10, 100),
            tokenizer=tok,
        ),
        "exposure": CanaryExposureMonitor(canaries, method="extrapolated", num_references=200),
        "audit": audit,
        "dp": DPEpsilonMonitor(delta=1e-5),
        # any exposure crosses -1 bits: stops once min_epochs allow it, after the third epoch
        "stopping": LeakageEarlyStopping.exposure(bits=-1.0, min_epochs=3),
    }
    trainer = pl.Trainer(
        max_epochs=5,
        accelerator="cpu",
        devices=1,
        logger=pl.loggers.CSVLogger(str(out), name="csv"),
        callbacks=list(callbacks.values()),
        default_root_dir=str(out),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(DPWindowLM(tok.vocab_size), loader)
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:  # type: ignore[union-attr]
        rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
    return {"out": out, "callbacks": callbacks, "csv": rows, "root": find_run_dir(out), "canaries": canaries}
