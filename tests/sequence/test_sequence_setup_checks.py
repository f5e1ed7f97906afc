"""SequenceMemorisationMonitor checks its probes and the model before the first training step, and
decodes in lockstep (the same forward calls whatever the data) when the parameters are sharded."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from helpers.training import trainer
from memcallbacks import CharTokenizer, SequenceMemorisationMonitor
from memcallbacks.demos.toy import CharLSTMLM, TokenDataset, lm_loader, make_payment_corpus
from memcallbacks.lm.windows import LanguageModel, pad_windows, score_windows

TOK = CharTokenizer()
TEXTS = make_payment_corpus(12, seed=0)


class CountSteps(pl.Callback):
    def __init__(self) -> None:
        self.steps = 0

    def on_train_batch_start(self, *args: Any) -> None:
        self.steps += 1


class NoLogits(CharLSTMLM):
    """Returns a pooled vector, not next-token logits."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(ids).mean(1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self(batch[1]).sum()


def _fit_counting(
    tmp: Path, monitor: SequenceMemorisationMonitor, model: pl.LightningModule | None
) -> tuple[int, BaseException]:
    """The training steps run before the fit failed, and the error."""
    counter = CountSteps()
    t = trainer(tmp, max_epochs=1, callbacks=[monitor, counter])
    with pytest.raises((TypeError, ValueError)) as raised:
        t.fit(model or CharLSTMLM(TOK.vocab_size, hidden_size=16), lm_loader(TEXTS, TOK, batch_size=4))
    return counter.steps, raised.value


@pytest.mark.parametrize(
    ("members", "kwargs", "model", "match"),
    [
        # issue 26: a list of strings said "got str of dtype torch.float32", after a whole epoch
        (TEXTS, {}, None, r"`members` item 0 is text \(str\), not token ids: tokenize the sequences first"),
        ([{"input_ids": "abc"}], {}, None, r"is text \(str\), not token ids"),
        (TokenDataset(TEXTS, TOK), {"prefix_len": 100}, None, "no `members` probe sequence is long enough"),
        (
            [torch.tensor([1, 2, 3, 400, 5, 6, 7, 8, 9, 10])] * 3,
            {},
            None,
            "token id 400, outside the model's",
        ),
        (TokenDataset(TEXTS, TOK), {"sampling": {"top_k": 500}}, None, r"`sampling\[0\]\['top_k'\]`=500"),
        (TokenDataset(TEXTS, TOK), {}, "no_logits", "next-token logits"),
    ],
    ids=["strings", "dict_of_text", "too_short", "outside_vocabulary", "top_k", "no_logits"],
)
def test_bad_probes_and_models_fail_before_the_first_training_step(
    tmp_path: Path, members: Any, kwargs: dict[str, Any], model: str | None, match: str
) -> None:
    monitor = SequenceMemorisationMonitor(members, **{"prefix_len": 4, "suffix_len": 4, **kwargs})
    module = NoLogits(TOK.vocab_size, hidden_size=16) if model == "no_logits" else None
    steps, error = _fit_counting(tmp_path, monitor, module)
    assert steps == 0
    assert re.search(match, str(error)), str(error)


class CountingLM(torch.nn.Module):
    """A causal model (logits of a token from the tokens up to it) that counts its forward calls."""

    def __init__(self, vocab: int = 20) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 8)
        self.head = torch.nn.Linear(8, vocab)
        self.calls = 0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.head(torch.cumsum(self.emb(ids), dim=1))


def _score(lm: LanguageModel, seqs: list[torch.Tensor], lockstep: bool) -> Any:
    windows, lengths = pad_windows(seqs, 8)
    with torch.no_grad():
        return score_windows(
            lm, windows, lengths, prefix_len=4, suffix_len=4, min_k=0.5, sampling=((1.0, None),),
            batch_size=2, device=torch.device("cpu"), decode_every_row=lockstep,
        )  # fmt: skip


def test_lockstep_decoding_runs_the_same_calls_whatever_the_lengths_and_gives_the_same_results() -> None:
    torch.manual_seed(0)
    model = CountingLM()
    long = [torch.randint(2, 20, (10,)) for _ in range(4)]
    short = [torch.randint(2, 20, (3,)) for _ in range(4)]
    calls = {}
    for name, seqs in {"all_long": long, "all_short": short, "mixed": [*long[:2], *short[:2]]}.items():
        for lockstep in (False, True):
            model.calls = 0
            result = _score(LanguageModel(model, None, "full"), seqs, lockstep)
            calls[name, lockstep] = model.calls
            if lockstep:  # the short rows' decoding is discarded: the same numbers as without lockstep
                plain = _score(LanguageModel(model, None, "full"), seqs, False)
                for field, value in result.fields().items():
                    np.testing.assert_array_equal(value.numpy(), getattr(plain, field).numpy(), err_msg=field)
    assert calls["all_short", False] < calls["all_long", False]  # without lockstep the data decide
    assert (
        calls["all_long", True]
        == calls["all_short", True]
        == calls["mixed", True]
        == calls["all_long", False]
    )
