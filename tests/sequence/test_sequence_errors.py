"""Bad input to SequenceMemorisationMonitor: clear errors naming the argument."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from helpers.training import trainer
from memcallbacks import CharTokenizer, SequenceMemorisationMonitor
from memcallbacks.demos.toy import CharLSTMLM, TokenDataset, lm_loader, make_payment_corpus

TOK = CharTokenizer()
TEXTS = make_payment_corpus(12, seed=0)


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"prefix_len": 0}, ValueError, "`prefix_len`"),
        ({"suffix_len": 0}, ValueError, "`suffix_len`"),
        ({"suffix_len": 2.0}, TypeError, "`suffix_len`"),
        ({"min_k": 0.0}, ValueError, "`min_k`"),
        ({"min_k": 1.01}, ValueError, "`min_k`"),
        ({"n_tries": (1, 0)}, ValueError, "`n_tries`"),
        ({"n_tries": (1, 2.5)}, TypeError, "`n_tries`"),
        ({"n_tries": True}, TypeError, "`n_tries`"),
        ({"n_tries": ()}, ValueError, "`n_tries`"),
        ({"p_threshold": 0.0}, ValueError, "`p_threshold`"),
        ({"p_threshold": 1.0}, ValueError, "`p_threshold`"),
        ({"sampling": {"temperature": 0.0}}, ValueError, "`temperature`"),
        (
            {"sampling": [{"temperature": 1.0}, {"temperature": -2}]},
            ValueError,
            "`temperature`.*sampling\\[1\\]",
        ),
        ({"sampling": {"top_k": 0}}, ValueError, "`top_k`"),
        ({"sampling": {"topk": 5}}, ValueError, "`sampling\\[0\\]`"),
        ({"sampling": []}, ValueError, "`sampling`"),
        ({"num_probes": 0}, ValueError, "`num_probes`"),
        ({"batch_size": 0}, ValueError, "`batch_size`"),
        ({"seed": -1}, ValueError, "`seed`"),
        ({"decoding": "beam"}, ValueError, "`decoding`"),
        ({"log_secrets": "false"}, TypeError, "`log_secrets`"),
        ({"forward_fn": 3}, TypeError, "`forward_fn`"),
        ({"tokenizer": 3}, TypeError, "`tokenizer`"),
        ({"name": ""}, ValueError, "`name`"),  # the base's one `name=` rule
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], err: type, match: str) -> None:
    with pytest.raises(err, match=match):
        SequenceMemorisationMonitor(**kwargs)


def _fit(tmp: Path, monitor: SequenceMemorisationMonitor, model: pl.LightningModule | None = None) -> None:
    t = trainer(tmp, max_epochs=1, limit_train_batches=1, callbacks=[monitor])
    t.fit(model or CharLSTMLM(TOK.vocab_size, hidden_size=16), lm_loader(TEXTS, TOK, batch_size=4))


def test_no_sequence_long_enough(tmp_path: Path) -> None:
    monitor = SequenceMemorisationMonitor(TokenDataset(TEXTS, TOK), TokenDataset(TEXTS, TOK), prefix_len=100)
    with pytest.raises(ValueError, match="no `members` probe sequence is long enough.*100 \\+ 32 = 132"):
        _fit(tmp_path, monitor)


def test_items_that_are_not_token_sequences(tmp_path: Path) -> None:
    members = [(torch.zeros(3), 1)] * 4
    with pytest.raises(TypeError, match="`members` item 0 is not a sequence of token ids"):
        _fit(tmp_path, SequenceMemorisationMonitor(members, prefix_len=2, suffix_len=2))
    with pytest.raises(TypeError, match="without 'input_ids'"):
        _fit(tmp_path, SequenceMemorisationMonitor([{"ids": [1, 2, 3]}], prefix_len=1, suffix_len=1))


class NoLogits(pl.LightningModule):
    """Returns a pooled vector, not next-token logits."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(TOK.vocab_size, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.emb(ids).mean(1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self(batch[1]).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_model_without_next_token_logits(tmp_path: Path) -> None:
    monitor = SequenceMemorisationMonitor(TokenDataset(TEXTS, TOK), prefix_len=4, suffix_len=4)
    with pytest.raises(TypeError, match="next-token logits.*got \\(1, 4\\); pass `forward_fn="):
        _fit(tmp_path, monitor, NoLogits())


def test_top_k_larger_than_the_vocabulary(tmp_path: Path) -> None:
    monitor = SequenceMemorisationMonitor(
        TokenDataset(TEXTS, TOK), prefix_len=4, suffix_len=4, sampling={"temperature": 1.0, "top_k": 500}
    )
    with pytest.raises(
        ValueError, match="`sampling\\[0\\]\\['top_k'\\]`=500 is larger than the model's vocabulary \\(98"
    ):
        _fit(tmp_path, monitor)


def test_token_ids_outside_the_vocabulary(tmp_path: Path) -> None:
    members = [torch.tensor([1, 2, 3, 400, 5, 6, 7, 8, 9, 10])] * 3
    monitor = SequenceMemorisationMonitor(members, prefix_len=4, suffix_len=4)
    with pytest.raises(ValueError, match="token id 400, outside the model's vocabulary of 98"):
        _fit(tmp_path, monitor)


class PlainLM(CharLSTMLM):
    """Logits only: no IncrementalLM state, no KV cache."""

    init_state = None  # type: ignore[assignment]


def test_cache_decoding_refused_without_a_cache(tmp_path: Path) -> None:
    monitor = SequenceMemorisationMonitor(
        TokenDataset(TEXTS, TOK), prefix_len=4, suffix_len=4, decoding="cache"
    )
    with pytest.raises(TypeError, match="`decoding='cache'`"):
        _fit(tmp_path, monitor, PlainLM(TOK.vocab_size, hidden_size=16))


def test_full_pass_fallback_is_warned(tmp_path: Path) -> None:
    monitor = SequenceMemorisationMonitor(TokenDataset(TEXTS, TOK), prefix_len=4, suffix_len=4)
    with pytest.warns(UserWarning, match="greedy decoding runs full forward passes"):
        _fit(tmp_path, monitor, PlainLM(TOK.vocab_size, hidden_size=16))
    assert monitor.decoding == "full"
    assert monitor.history[0]["mem/extract/skipped"] == 0
