"""Small language models and a synthetic corpus for examples, the demo and tests.

Reproduces, at CPU scale, the setting of Carlini et al., "The Secret Sharer: Evaluating and
Testing Unintended Memorization in Neural Networks" (USENIX Security 2019): a character
language model trained on record-like text into which canaries such as
``"my pin is 123456."`` are inserted a few times each. No download: the corpus is
generated (:func:`make_payment_corpus`).

* :class:`CharLSTMLM`: embedding 64, one LSTM layer of 256, linear head.
* :class:`WindowLM`: predicts the next character from the previous 12 through
  ``nn.Embedding`` and ``nn.Linear`` only (one hidden layer), the model Opacus DP-SGD
  trains quickly on CPU (docs/dp.md).

Both map token ids ``[B, T]`` to logits ``[B, T, V]`` and implement
:class:`memcallbacks.lm.scoring.IncrementalLM`, so exact exposure over 10**6 secrets uses the
trie path. Their ``training_step`` takes batches from :func:`lm_loader` (an
:class:`~memcallbacks.data.indexed.IndexedDataset` of token sequences) and returns
``loss``, ``sample_loss`` and ``sample_index``, so loss trajectories work too.

For the classification examples (label noise, counterfactual memorisation, LiRA):
:func:`digits_dataset` (sklearn's bundled digits, optionally with seeded label noise) and
:class:`MLPClassifier`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from memcallbacks.data.canaries import encoder_of
from memcallbacks.data.indexed import IndexedDataset, split_index

__all__ = [
    "CharLSTMLM",
    "DPWindowLM",
    "MLPClassifier",
    "TokenDataset",
    "WindowLM",
    "collate_tokens",
    "digits_dataset",
    "lm_loader",
    "make_payment_corpus",
]

_FIRST = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "yusuf", "zoe",
    "amara", "bruno", "chen", "dmitri", "elena", "farah", "goran", "hana", "ines", "jonas",
]  # fmt: skip
_LAST = [
    "smith", "jones", "garcia", "kim", "novak", "okafor", "rossi", "silva", "tanaka", "weber",
    "ahmed", "brown", "costa", "dubois", "evans", "fischer", "gupta", "hansen", "ivanova", "jensen",
]  # fmt: skip
_SHOPS = ["grocer", "pharmacy", "bakery", "garage", "bookshop", "cafe", "landlord", "utility co", "gym"]
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_TEMPLATES = [
    "{a} paid ${amt} to {b} on {date}.",
    "{a} sent {b} ${amt} on {date}.",
    "on {date} {a} spent ${amt} at the {shop}.",
    "invoice {num} from the {shop}: ${amt}, due {date}.",
    "{a} received ${amt} from {b} on {date}.",
    "transfer of ${amt} from {a} to the {shop} on {date}.",
    "{a} owes {b} ${amt} since {date}.",
    "refund of ${amt} to {a} by the {shop} on {date}.",
]


def make_payment_corpus(n: int, seed: int = 0) -> list[str]:
    """``n`` generated record-like sentences (names, amounts, dates); lowercase ASCII.

    Example:
        >>> make_payment_corpus(2, seed=0)  # doctest: +SKIP
        ['heidi kim paid $71.30 to trent silva on 14 may 2021.', ...]
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"`n` must be an integer >= 0, got {n!r}")
    rng = np.random.default_rng(seed)

    def name() -> str:
        return f"{_FIRST[rng.integers(len(_FIRST))]} {_LAST[rng.integers(len(_LAST))]}"

    out = []
    for _ in range(n):
        template = _TEMPLATES[rng.integers(len(_TEMPLATES))]
        amount = f"{int(rng.lognormal(4.0, 1.2)) + 1}.{rng.integers(100):02d}"
        date = f"{rng.integers(1, 29)} {_MONTHS[rng.integers(12)]} {rng.integers(2015, 2025)}"
        out.append(
            template.format(
                a=name(),
                b=name(),
                amt=amount,
                date=date,
                shop=_SHOPS[rng.integers(len(_SHOPS))],
                num=int(rng.integers(1000, 99999)),
            )
        )
    return out


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------
class TokenDataset(Dataset[torch.Tensor]):
    """Texts (any map-style dataset of strings, e.g. from ``CanarySet.inject``) as token tensors.

    Each item is ``tokenizer`` encoding of the text with its special tokens (a BOS for
    :class:`~memcallbacks.CharTokenizer`), as a LongTensor, truncated to ``max_len``.
    """

    def __init__(self, texts: Any, tokenizer: Any, max_len: int | None = None) -> None:
        self.texts = texts
        self._encode = encoder_of(tokenizer)
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> torch.Tensor:
        ids = self._encode(self.texts[i], True)
        if self.max_len is not None:
            ids = ids[: self.max_len]
        return torch.tensor(ids, dtype=torch.long)


def collate_tokens(batch: Sequence[Any], pad_id: int = 0) -> Any:
    """Pads token tensors; keeps the ``(index, ids)`` pairs of an IndexedDataset as ``[index, ids]``."""
    if batch and isinstance(batch[0], tuple):
        index = torch.tensor([int(i) for i, _ in batch], dtype=torch.long)
        return [index, collate_tokens([x for _, x in batch], pad_id)]
    return nn.utils.rnn.pad_sequence(list(batch), batch_first=True, padding_value=pad_id)


def lm_loader(
    texts: Any,
    tokenizer: Any,
    *,
    batch_size: int = 128,
    shuffle: bool = True,
    max_len: int | None = None,
) -> DataLoader[Any]:
    """A DataLoader of indexed, padded token batches ``[index [B], ids [B, T]]`` for the toy LMs.

    Shuffling draws from torch's global generator (seed it with ``pl.seed_everything``); no
    ``torch.Generator`` is attached, so the loader pickles for ``ddp_spawn``.
    """
    ds = IndexedDataset(TokenDataset(texts, tokenizer, max_len=max_len))
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_tokens)


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------
class _CharLM(pl.LightningModule):
    """Shared training loop: next-token cross-entropy, per-sample mean over real tokens."""

    lr: float

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        index, ids = split_index(batch)
        logits = self(ids[:, :-1])
        target = ids[:, 1:]
        nll = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        mask = (target != 0).float()
        per_sample = (nll * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        self.log("train_loss", per_sample.mean(), prog_bar=True, on_step=False, on_epoch=True)
        return {"loss": per_sample.mean(), "sample_loss": per_sample.detach(), "sample_index": index}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    @staticmethod
    def _repeat(x: torch.Tensor, repeats: int | torch.Tensor, dim: int) -> torch.Tensor:
        if isinstance(repeats, torch.Tensor):
            repeats = repeats.to(x.device)
        return torch.repeat_interleave(x, repeats, dim=dim)


class CharLSTMLM(_CharLM):
    """Character LSTM language model (embedding 64, hidden 256), an :class:`~memcallbacks.lm.scoring.IncrementalLM`.

    Args:
        vocab_size: number of token ids (``CharTokenizer().vocab_size``).
        embedding_dim: embedding width.
        hidden_size: LSTM width.
        lr: Adam learning rate.

    Example:
        >>> from memcallbacks import CharTokenizer
        >>> model = CharLSTMLM(CharTokenizer().vocab_size)
        >>> model(torch.tensor([[1, 2, 3]])).shape
        torch.Size([1, 3, 98])
    """

    def __init__(
        self, vocab_size: int, embedding_dim: int = 64, hidden_size: int = 256, lr: float = 3e-3
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lr = lr
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(token_ids))
        return self.head(out)

    def init_state(self, prefix_ids: torch.Tensor) -> tuple[Any, torch.Tensor]:
        out, state = self.lstm(self.embedding(prefix_ids))
        return state, F.log_softmax(self.head(out[:, -1]), dim=-1)

    def step(self, state: Any, token_ids: torch.Tensor) -> tuple[Any, torch.Tensor]:
        out, state = self.lstm(self.embedding(token_ids).unsqueeze(1), state)
        return state, F.log_softmax(self.head(out[:, -1]), dim=-1)

    def expand_state(self, state: Any, repeats: int | torch.Tensor) -> Any:
        h, c = state
        return self._repeat(h, repeats, 1), self._repeat(c, repeats, 1)


class WindowLM(_CharLM):
    """Next character from the previous ``context`` (12) through Embedding + Linear only.

    Embeddings of the window are concatenated and fed to one hidden layer (ReLU) and a
    linear head; no recurrent or normalisation layers, so Opacus computes per-sample
    gradients for it efficiently. Positions before the start see the padding id 0.

    Args:
        vocab_size: number of token ids.
        context: characters of history.
        embedding_dim: embedding width per character.
        hidden_size: hidden-layer width.
        lr: Adam learning rate.

    Example:
        >>> model = WindowLM(20)
        >>> model(torch.tensor([[1, 2, 3]])).shape
        torch.Size([1, 3, 20])
    """

    def __init__(
        self,
        vocab_size: int,
        context: int = 12,
        embedding_dim: int = 16,
        hidden_size: int = 512,
        lr: float = 3e-3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lr = lr
        self.context = context
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.hidden = nn.Linear(context * embedding_dim, hidden_size)
        self.head = nn.Linear(hidden_size, vocab_size)

    def _logits_of_windows(self, windows: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(windows)  # [..., context, E]
        flat = emb.reshape(*windows.shape[:-1], -1)
        return self.head(F.relu(self.hidden(flat)))

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        padded = F.pad(token_ids, (self.context - 1, 0), value=0)
        windows = padded.unfold(1, self.context, 1)  # [B, T, context]
        return self._logits_of_windows(windows)

    def init_state(self, prefix_ids: torch.Tensor) -> tuple[Any, torch.Tensor]:
        window = F.pad(prefix_ids, (self.context, 0), value=0)[:, -self.context :]
        return window, F.log_softmax(self._logits_of_windows(window), dim=-1)

    def step(self, state: Any, token_ids: torch.Tensor) -> tuple[Any, torch.Tensor]:
        window = torch.cat([state[:, 1:], token_ids.unsqueeze(1)], dim=1)
        return window, F.log_softmax(self._logits_of_windows(window), dim=-1)

    def expand_state(self, state: Any, repeats: int | torch.Tensor) -> Any:
        return self._repeat(state, repeats, 0)


class DPWindowLM(WindowLM):
    """:class:`WindowLM` trained with DP-SGD (Opacus): the only change is ``configure_optimizers``.

    Train it on a Poisson-sampling loader (``opacus.data_loader.DPDataLoader.from_data_loader``);
    :func:`memcallbacks.callbacks.dp.make_private` wraps the module and optimizer and sets
    ``self.privacy_engine`` for :class:`~memcallbacks.DPEpsilonMonitor`.

    Args:
        vocab_size: number of token ids.
        noise_multiplier: DP-SGD noise relative to ``max_grad_norm``.
        max_grad_norm: per-sample gradient clipping norm.
        lr: Adam learning rate.
    """

    def __init__(
        self, vocab_size: int, *, noise_multiplier: float = 1.0, max_grad_norm: float = 1.0, lr: float = 3e-3
    ) -> None:
        super().__init__(vocab_size, lr=lr)
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm

    def configure_optimizers(self) -> torch.optim.Optimizer:
        from memcallbacks.callbacks.dp import make_private

        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        return make_private(
            self, optimizer, noise_multiplier=self.noise_multiplier, max_grad_norm=self.max_grad_norm
        )


def digits_dataset(noise: float = 0.0, seed: int = 0) -> tuple[TensorDataset, np.ndarray]:
    """sklearn's 1,797 bundled 8x8 digits (no download), standardised, with a fraction of labels flipped.

    Each feature is standardised over the whole set. A fraction ``noise`` of the samples, drawn
    with a seeded generator, get a label of another class, so the dataset (and the fingerprint a
    shadow-run pool takes from it) is the same in every run.

    Args:
        noise: fraction of labels flipped to a different class (0 keeps every label).
        seed: seed of the flip.

    Returns:
        The dataset (float32 features ``[64]``, int64 labels) and the boolean mask of the flipped samples.

    Example:
        >>> pool, flipped = digits_dataset(noise=0.1)
        >>> len(pool), int(flipped.sum()), pool[0][0].shape
        (1797, 180, torch.Size([64]))
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("digits_dataset needs scikit-learn: pip install scikit-learn") from e

    x, y = load_digits(return_X_y=True)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    rng = np.random.default_rng(seed)
    flipped = np.zeros(len(y), dtype=bool)
    flipped[rng.choice(len(y), size=int(round(noise * len(y))), replace=False)] = True
    labels = y.copy()
    labels[flipped] = (y[flipped] + rng.integers(1, 10, size=int(flipped.sum()))) % 10  # always another class
    return TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(labels)), flipped


class MLPClassifier(pl.LightningModule):
    """A small MLP classifier (ReLU hidden layers, Adam), the model of the digits examples.

    Batches from an :class:`~memcallbacks.data.indexed.IndexedDataset` over ``(x, y)`` pairs make
    ``training_step`` return ``loss``, ``sample_loss``, ``sample_index`` and ``sample_correct``
    (what :class:`~memcallbacks.LossTrajectoryTracker` reads); plain ``(x, y)`` batches make it
    return the mean cross-entropy.

    Args:
        in_features: input width (64 for the digits).
        num_classes: number of classes.
        hidden: width of each hidden layer.
        hidden_layers: number of hidden layers.
        lr: Adam learning rate.

    Example:
        >>> model = MLPClassifier(hidden=32, hidden_layers=2)
        >>> model(torch.zeros(3, 64)).shape
        torch.Size([3, 10])
    """

    def __init__(
        self,
        in_features: int = 64,
        num_classes: int = 10,
        *,
        hidden: int = 256,
        hidden_layers: int = 1,
        lr: float = 1e-3,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(hidden_layers):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, num_classes))
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        index, (x, y) = split_index(batch, missing_ok=True)  # x is [B, D] float: never taken for an index
        logits = self(x)
        if index is None:
            return F.cross_entropy(logits, y)
        per_sample = F.cross_entropy(logits, y, reduction="none")
        return {
            "loss": per_sample.mean(),
            "sample_loss": per_sample.detach(),
            "sample_index": index,
            "sample_correct": logits.argmax(dim=-1) == y,
        }

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)
