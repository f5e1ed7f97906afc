"""Arguments that used to be accepted and give a silently wrong result are refused (issue 27, item 8).

* a tokenizer whose ``decode`` returns something other than a str: every probe's "text" became
  ``str(list)`` or ``"None"``, so the zlib ratio equalled the loss and its AUC the loss AUC;
* ``ShadowScoreRecorder(score=callable)`` without ``score_kind``: the attacks could not tell how to
  turn its scores back into probabilities.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from helpers.training import trainer
from memcallbacks import CharTokenizer, SequenceMemorisationMonitor, ShadowScoreRecorder
from memcallbacks.demos.toy import CharLSTMLM, lm_loader, make_payment_corpus

TOK = CharTokenizer()


class _ListDecoder:
    """Decodes to a list of characters (not a str)."""

    def decode(self, ids: list[int]) -> Any:
        return list(TOK.decode(ids))


def test_a_tokenizer_decoding_to_a_list_is_refused_before_the_first_step(tmp_path: Path) -> None:
    texts = make_payment_corpus(24, seed=0)
    monitor = SequenceMemorisationMonitor(
        prefix_len=8, suffix_len=8, batch_size=8, num_probes=4, tokenizer=_ListDecoder()
    )
    t = trainer(tmp_path, max_epochs=1, limit_train_batches=2, callbacks=[monitor])
    torch.manual_seed(0)
    with pytest.raises(TypeError, match=r"must decode ids to a str, got list for 8 of 8 .*tokenizer=None"):
        t.fit(
            CharLSTMLM(TOK.vocab_size, hidden_size=8),
            lm_loader(texts[:16], TOK, batch_size=4),
            lm_loader(texts[16:], TOK, batch_size=4, shuffle=False),
        )
    assert t.global_step == 0


def test_a_function_decoding_to_a_str_is_accepted(tmp_path: Path) -> None:
    texts = make_payment_corpus(24, seed=0)
    monitor = SequenceMemorisationMonitor(
        prefix_len=8, suffix_len=8, batch_size=8, num_probes=4, tokenizer=lambda ids: TOK.decode(ids)
    )
    t = trainer(tmp_path, max_epochs=1, limit_train_batches=2, callbacks=[monitor])
    torch.manual_seed(0)
    t.fit(
        CharLSTMLM(TOK.vocab_size, hidden_size=8),
        lm_loader(texts[:16], TOK, batch_size=4),
        lm_loader(texts[16:], TOK, batch_size=4, shuffle=False),
    )
    assert "mem/mia_lm/auc/zlib" in monitor.history[0]


def _score(module: Any, batch: Any) -> torch.Tensor:
    return -torch.nn.functional.cross_entropy(module(batch[0]), batch[1], reduction="none")


def test_a_callable_score_needs_its_kind() -> None:
    pool = [(torch.zeros(3), 0), (torch.ones(3), 1)] * 10
    with pytest.raises(
        ValueError, match=r"a callable `score` \(_score\) needs `score_kind`.*score_kind='neg_loss'"
    ):
        ShadowScoreRecorder(pool, run_index=0, score=_score)
    recorder = ShadowScoreRecorder(pool, run_index=0, score=_score, score_kind="neg_loss")
    assert recorder.score_kind == "neg_loss"
