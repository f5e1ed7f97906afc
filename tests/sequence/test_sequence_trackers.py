"""What reaches a real tracker (W&B offline, read back): aggregate records always, the table only on opt-in."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from helpers.training import trainer
from helpers.wandb_reader import history_rows, wait_for_run_file
from memcallbacks import CharTokenizer, SequenceMemorisationMonitor
from memcallbacks.demos.toy import CharLSTMLM, TokenDataset, lm_loader, make_payment_corpus

TOK = CharTokenizer()
TEXTS = make_payment_corpus(24, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("per_sample", "secrets", "ncols"), [(False, False, None), (True, False, 4), (True, True, 7)]
)
def test_table_only_with_opt_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, per_sample: bool, secrets: bool, ncols: int | None
) -> None:
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    torch.manual_seed(0)
    monitor = SequenceMemorisationMonitor(
        TokenDataset(TEXTS[:12], TOK),
        TokenDataset(TEXTS[12:], TOK),
        prefix_len=6,
        suffix_len=6,
        tokenizer=TOK,
        num_top=5,
        log_per_sample=per_sample,
        log_secrets=secrets,
    )
    logger = pl.loggers.WandbLogger(save_dir=str(tmp_path), project="memcallbacks-test")
    t = trainer(tmp_path, max_epochs=1, logger=logger, callbacks=[monitor])
    t.fit(CharLSTMLM(TOK.vocab_size, hidden_size=16), lm_loader(TEXTS[:12], TOK, batch_size=6))
    wandb.finish()
    rows = history_rows(wait_for_run_file(tmp_path))
    keys = set().union(*rows)
    assert {"mem/extract/exact_rate", "mem/mia_lm/auc/min_k", "mem/extract/prob_rate/n100"} <= keys
    assert any(k.startswith("mem/extract/prob_rate_vs_n") for k in keys)
    assert any(k.startswith("mem/mia_lm/roc/zlib") for k in keys)
    if ncols is None:
        assert not any(k.startswith("mem/extract/top_sequences") for k in keys)
    else:
        row = [r for r in rows if "mem/extract/top_sequences/_type" in r][-1]
        assert row["mem/extract/top_sequences/nrows"] == 5
        assert row["mem/extract/top_sequences/ncols"] == ncols
