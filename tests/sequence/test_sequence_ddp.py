"""2-process gloo DDP: ranks split the probes, agree on every logged value, and match one process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.callbacks import RankDump
from helpers.training import trainer
from memcallbacks import CharTokenizer, SequenceMemorisationMonitor
from memcallbacks.demos.toy import CharLSTMLM, TokenDataset, lm_loader, make_payment_corpus
from memcallbacks.utilities.fileio import load_npz

TOK = CharTokenizer()
TEXTS = make_payment_corpus(40, seed=0)


def _monitor(run_dir: Path) -> SequenceMemorisationMonitor:
    # 13 members + 11 non-members = 24 probes; batch 5 so shards span several batches
    return SequenceMemorisationMonitor(
        TokenDataset(TEXTS[:13], TOK),
        TokenDataset(TEXTS[20:31], TOK),
        prefix_len=6,
        suffix_len=6,
        batch_size=5,
        n_tries=(1, 50),
        run_dir=run_dir,
    )


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_ranks_agree_and_match_single_process(tmp_path: Path) -> None:
    torch.manual_seed(0)
    monitor = _monitor(tmp_path / "ddp")
    dump = RankDump(tmp_path / "ranks", weights=True)
    t = trainer(tmp_path, max_epochs=2, strategy="ddp_spawn", devices=2, callbacks=[monitor, dump])
    t.fit(
        CharLSTMLM(TOK.vocab_size, embedding_dim=16, hidden_size=32, lr=2e-2),
        lm_loader(TEXTS[:13] * 8, TOK, batch_size=8),
    )
    rank0, rank1 = (rank["metrics"] for rank in dump.read())
    keys = sorted(k for k in rank0 if k.startswith("mem/"))
    assert "mem/extract/exact_rate" in keys
    assert "mem/mia_lm/auc/min_k" in keys
    assert {k: rank0[k] for k in keys} == {k: rank1[k] for k in keys}
    saved = load_npz(tmp_path / "ddp" / "sequence" / "sequences.npz")
    assert saved["member_loss"].shape == (2, 13)
    assert saved["nonmember_loss"].shape == (2, 11)

    # one process on the final DDP weights (lr=0): the same per-probe numbers
    model = CharLSTMLM(TOK.vocab_size, embedding_dim=16, hidden_size=32, lr=0.0)
    model.load_state_dict(dump.saved_weights())
    single = _monitor(tmp_path / "single")
    s = trainer(tmp_path / "one", max_epochs=1, callbacks=[single])
    s.fit(model, lm_loader(TEXTS[:13], TOK, batch_size=8))
    single.flush()
    one = load_npz(tmp_path / "single" / "sequence" / "sequences.npz")
    for k in ("member_loss", "member_min_k", "member_exact", "member_token_match", "nonmember_log_q"):
        np.testing.assert_allclose(one[k][0], saved[k][-1], rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=k)
    for k in (
        "mem/extract/exact_rate",
        "mem/extract/token_match",
        "mem/mia_lm/auc/loss",
        "mem/extract/prob_rate/n50",
    ):
        assert float(s.callback_metrics[k]) == pytest.approx(rank0[k], abs=1e-6), k
