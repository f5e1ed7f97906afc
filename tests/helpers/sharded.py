"""The tiny GPT-2 of the sharded-training tests (built from a config: no download) and its probes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from memcallbacks import CharTokenizer, SequenceMemorisationMonitor
from memcallbacks.data.indexed import split_index
from memcallbacks.demos.toy import TokenDataset, lm_loader, make_payment_corpus

TOK = CharTokenizer()
TEXTS = make_payment_corpus(40, seed=0)
PREFIX, SUFFIX = 8, 8
#: 11 members of the window's length and 4 shorter ones (not decoded), 10 non-members: 25 probes, uneven
#: shards of 13; rank 0's third batch of 4 holds only the short ones (nothing to decode there without lockstep)
MEMBER_TEXTS = [*TEXTS[:8], "ab.", "a paid b.", "x", "b paid a.", *TEXTS[8:11]]
NONMEMBER_TEXTS = TEXTS[20:30]


class GPT2LM(pl.LightningModule):
    """A 2-layer GPT-2 (``self.model``) trained with the next-token loss on padded character batches."""

    def __init__(self, lr: float = 1e-2) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        config = GPT2Config(
            vocab_size=TOK.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2, pad_token_id=0
        )
        self.model = GPT2LMHeadModel(config)
        self.lr = lr

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, T, V]`` of token ids ``[B, T]`` (what canary scoring calls under sharding)."""
        return self.model(input_ids=ids).logits

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        _, ids = split_index(batch)
        ids = ids[:, :32]
        labels = ids.masked_fill(ids == TOK.pad_token_id, -100)
        return self.model(input_ids=ids, labels=labels).loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def gpt2_data() -> tuple[Any, TokenDataset, TokenDataset]:
    """The training loader (members, repeated) and the member and non-member probe datasets."""
    train = lm_loader(TEXTS[:11] * 4, TOK, batch_size=8, shuffle=False)
    return train, TokenDataset(MEMBER_TEXTS, TOK), TokenDataset(NONMEMBER_TEXTS, TOK)


def sequence_monitor(run_dir: str | Path, members: Any, nonmembers: Any) -> SequenceMemorisationMonitor:
    """The monitor of the sharded and the 1-process runs: batch 4 (shards span several batches)."""
    return SequenceMemorisationMonitor(
        members,
        nonmembers,
        prefix_len=PREFIX,
        suffix_len=SUFFIX,
        batch_size=4,
        n_tries=(1, 50),
        reference="fit_start",
        run_dir=run_dir,
    )


def window_losses(model: torch.nn.Module, dataset: TokenDataset) -> torch.Tensor:
    """Plain torch: the mean next-token NLL over each sequence's first ``PREFIX + SUFFIX`` tokens."""
    out = []
    model.eval()
    with torch.no_grad():
        for i in range(len(dataset)):
            ids = dataset[i][: PREFIX + SUFFIX].unsqueeze(0)
            logits = model(input_ids=ids).logits.double()
            out.append(F.cross_entropy(logits[0, :-1], ids[0, 1:]))
    return torch.stack(out)
