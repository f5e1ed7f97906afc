"""Shadow runs from a shared pool: train on a seeded half, record every pool sample's score at fit end.

The strong membership-inference attacks (LiRA: Carlini et al., "Membership Inference Attacks From
First Principles", IEEE S&P 2022; RMIA: Zarifzadeh, Liu and Shokri, ICML 2024) compare a target
model with reference models trained with and without each sample. With Lightning this is the same
training script run N times (``--run-index i``), each run on a random half of one shared candidate
*pool*:

.. code-block:: python

    recorder = ShadowScoreRecorder(pool, run_index=i, num_runs=8, seed=0)
    loader = DataLoader(recorder.train_dataset, batch_size=64, shuffle=True)
    pl.Trainer(callbacks=[recorder]).fit(model, loader)

and ``memcallbacks attack RUN_DIR...`` (or :func:`memcallbacks.offline.attack.run_attack`) uses each run in
turn as the target and the others as references.

What the recorder writes (``<trainer.log_dir>/memcallbacks/shadow/``, rank 0, atomic, no pickle):

* ``inclusion.npz`` at set-up: ``inclusion`` (bool ``[N]``, True = this run trains on the sample),
  ``fingerprint`` (see :func:`pool_fingerprint`), ``pool_size``, ``run_index``, ``num_runs``
  (-1 when not given), ``seed``, ``keep_fraction``, and ``label_fingerprint`` (a hash of every
  pool item's label, :func:`label_fingerprint`) when the items carry labels;
* ``scores.npz`` at the end of fit, after one evaluation pass over the whole pool in eval mode,
  float32, autocast off: ``scores`` (float32 ``[N]``), ``correct`` (bool ``[N]``, when known),
  ``score_kind`` (``"logit_confidence"`` for classifiers: ``log(p_y / (1 - p_y))`` of the true
  label, computed as ``z_y - logsumexp(other logits)``; ``"neg_loss"`` for language models and any
  other batch: minus the default per-sample loss), ``fingerprint``, ``epochs_completed``, ``global_step``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import Dataset, Subset

from memcallbacks import rundir
from memcallbacks.callbacks import probes
from memcallbacks.callbacks._base import MemorisationCallback
from memcallbacks.lm import losses
from memcallbacks.lm.collate import check_pad_id
from memcallbacks.utilities.validation import check_choice, check_int, check_probability, check_seed

__all__ = [
    "SCORE_KINDS",
    "ShadowScoreRecorder",
    "ShadowSplit",
    "label_fingerprint",
    "pool_fingerprint",
    "shadow_split",
]

#: what a recorded score is: the RMIA attack needs it to turn a score back into a probability
SCORE_KINDS = ("logit_confidence", "neg_loss")
SampleScoreFn = Callable[[Any, Any], Any]
"""``score(module, batch) -> Tensor[B]`` (or ``(Tensor[B], BoolTensor[B])``): one score per sample, higher = "in"."""


def _item_bytes(item: Any, digest: Any) -> None:
    """Feed a canonical byte form of one dataset item into ``digest`` (tensors, arrays, numbers, text)."""
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu()
        if item.dtype == torch.bfloat16:
            item = item.float()
        item = item.numpy()
    if isinstance(item, np.ndarray):
        digest.update(f"a{item.dtype.str}{item.shape}".encode())
        digest.update(np.ascontiguousarray(item).tobytes())
    elif isinstance(item, Mapping):
        digest.update(b"d")
        for key in sorted(item, key=str):
            digest.update(str(key).encode())
            _item_bytes(item[key], digest)
    elif isinstance(item, (list, tuple)):
        digest.update(f"s{len(item)}".encode())
        for value in item:
            _item_bytes(value, digest)
    elif isinstance(item, bytes):
        digest.update(b"b" + item)
    else:  # numbers, strings, None
        digest.update(f"{type(item).__name__}:{item!r}".encode())


def pool_fingerprint(pool: Any, *, num_items: int = 32) -> str:
    """A short hash of a candidate pool: its size and ``num_items`` items spread evenly over it.

    Two shadow runs can only be compared when they indexed the same pool in the same order; the
    attack refuses runs whose fingerprints differ. Items are hashed by value (tensor bytes, dtype
    and shape; numbers; strings), so the fingerprint is the same in every process.

    Args:
        pool: a map-style dataset (``__len__``, ``__getitem__``).
        num_items: how many items to hash (evenly spaced, first and last included).

    Returns:
        16 hexadecimal characters.

    Raises:
        TypeError: ``pool`` is not a map-style dataset.

    Example:
        >>> pool_fingerprint([(0, 1), (2, 3)]) == pool_fingerprint([(0, 1), (2, 3)])
        True
        >>> pool_fingerprint([(0, 1), (2, 3)]) == pool_fingerprint([(2, 3), (0, 1)])
        False
    """
    num_items = check_int("num_items", num_items, minimum=1, hint="e.g. num_items=32")
    n = _pool_size(pool)
    digest = hashlib.sha256(f"pool:{n}".encode())
    for i in np.unique(np.linspace(0, n - 1, num=min(num_items, n)).round().astype(np.int64)):
        digest.update(f"#{int(i)}".encode())
        _item_bytes(pool[int(i)], digest)
    return digest.hexdigest()[:16]


def label_fingerprint(pool: Any) -> str | None:
    """A short hash of the label of *every* pool item, in order (``None`` when items carry no label).

    :func:`pool_fingerprint` hashes 32 items, so two pools that differ only in some labels (another
    label-noise seed, a relabelled class) can share it; runs trained on them measure different
    things. The attack and ``memcallbacks memorisation`` refuse runs whose label fingerprints
    differ. The label is an item's second element (``(x, y)`` items) or its ``labels`` / ``label``
    / ``y`` / ``target`` / ``targets`` entry (dict items); a language model's ``(x, y)`` item hashes
    its target tokens. It reads every item once (rank 0, at set-up).

    Args:
        pool: a map-style dataset (``__len__``, ``__getitem__``).

    Returns:
        16 hexadecimal characters, or ``None`` when an item has no label.

    Example:
        >>> label_fingerprint([(0, 1), (2, 3)]) == label_fingerprint([(5, 1), (6, 3)])  # inputs not hashed
        True
        >>> label_fingerprint([(0, 1), (2, 3)]) == label_fingerprint([(0, 1), (2, 4)])
        False
        >>> label_fingerprint([0, 1]) is None
        True
    """
    n = _pool_size(pool)
    digest = hashlib.sha256(f"labels:{n}".encode())
    for i in range(n):
        label = _item_label(pool[i])
        if label is None:
            return None
        digest.update(f"#{i}".encode())
        _item_bytes(label, digest)
    return digest.hexdigest()[:16]


def _item_label(item: Any) -> Any:
    if isinstance(item, Mapping):
        key = next((k for k in losses.LABEL_KEYS if k in item), None)
        return None if key is None else item[key]
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[1]
    return None


def _pool_size(pool: Any) -> int:
    if not hasattr(pool, "__len__") or not hasattr(pool, "__getitem__"):
        raise TypeError(
            f"`pool` must be a map-style dataset (with __len__ and __getitem__), got {type(pool).__name__}"
        )
    n = len(pool)
    if n < 2:
        raise ValueError(f"`pool` must hold at least 2 samples, got {n}")
    return n


@dataclass(frozen=True)
class ShadowSplit:
    """Which pool samples one shadow run trains on.

    Attributes:
        inclusion: bool ``[N]``, True where the run trains on the pool sample.
        indices: the included positions, ascending (int64).
        run_index: this run's index.
        num_runs: the planned number of runs (``None``: each run drew its half on its own).
        seed: the seed shared by every run of the pool.
        keep_fraction: the share of the pool each run trains on.
    """

    inclusion: np.ndarray
    indices: np.ndarray
    run_index: int
    num_runs: int | None
    seed: int
    keep_fraction: float


def shadow_split(
    pool_size: int,
    *,
    run_index: int,
    num_runs: int | None = None,
    seed: int = 0,
    keep_fraction: float = 0.5,
) -> ShadowSplit:
    """The seeded random part of a pool that shadow run ``run_index`` trains on.

    With ``num_runs`` (the scheme of Carlini et al.'s LiRA code): one ``[num_runs, N]`` uniform draw
    from ``seed``; each sample goes to the ``round(keep_fraction * num_runs)`` runs where its draw
    is smallest, so every sample is in exactly that many runs (balanced in/out references for
    every sample; Python's rounding, so with the default ``keep_fraction=0.5`` an odd ``num_runs``
    is not split in half: 5 runs put each sample in 2, and a run's share of the pool varies).
    Without ``num_runs``: run ``i`` draws ``round(keep_fraction * N)`` samples from the seed
    ``(seed, i)``, so runs can be added later, and a sample's in-count is binomial.

    Args:
        pool_size: ``N``, the number of pool samples (at least 2).
        run_index: this run, ``0 <= run_index`` (``< num_runs`` when given).
        num_runs: the number of runs planned, or ``None``.
        seed: shared by every run of the pool.
        keep_fraction: share of the pool each run trains on, in ``(0, 1)``.

    Returns:
        A :class:`ShadowSplit`.

    Raises:
        ValueError, TypeError: an argument out of range or of the wrong type.

    Example:
        >>> masks = [shadow_split(6, run_index=i, num_runs=4, seed=0).inclusion for i in range(4)]
        >>> np.stack(masks).sum(axis=0).tolist()   # every sample is in exactly 2 of the 4 runs
        [2, 2, 2, 2, 2, 2]
    """
    n = check_int("pool_size", pool_size, minimum=2, hint="the pool needs at least 2 samples")
    run_index = check_int("run_index", run_index, minimum=0, hint="e.g. run_index=0 for the first run")
    if num_runs is not None:
        num_runs = check_int("num_runs", num_runs, minimum=2, hint="e.g. num_runs=8 (or None)")
        if run_index >= num_runs:
            raise ValueError(
                f"`run_index` must be below `num_runs`={num_runs}, got {run_index}; pass run_index in "
                f"[0, {num_runs - 1}] or a larger num_runs"
            )
    seed = check_seed("seed", seed)
    keep_fraction = check_probability("keep_fraction", keep_fraction, open_low=True, open_high=True)
    if num_runs is not None:
        k = round(keep_fraction * num_runs)
        if not 0 < k < num_runs:
            raise ValueError(
                f"`keep_fraction`={keep_fraction} of `num_runs`={num_runs} runs rounds to {k}: every sample would be "
                "in no run or in all; use keep_fraction=0.5 or more runs"
            )
        draws = np.random.default_rng(seed).random((num_runs, n))
        # the rank of this run's draw among the runs, per sample: in when among the k smallest
        rank = (draws < draws[run_index]).sum(axis=0)
        inclusion = rank < k
    else:
        size = round(keep_fraction * n)
        if not 0 < size < n:
            raise ValueError(
                f"`keep_fraction`={keep_fraction} of {n} samples keeps {size}; use keep_fraction=0.5"
            )
        chosen = np.random.default_rng([seed, run_index]).choice(n, size=size, replace=False)
        inclusion = np.zeros(n, dtype=bool)
        inclusion[chosen] = True
    return ShadowSplit(
        inclusion=inclusion,
        indices=np.flatnonzero(inclusion).astype(np.int64),
        run_index=run_index,
        num_runs=num_runs,
        seed=seed,
        keep_fraction=keep_fraction,
    )


def _logit_confidence_torch(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - logsumexp(z_j, j != y)`` per row, float32 (see ``memcallbacks.metrics.logit_confidence``)."""
    z = logits.float()
    index = y.long().unsqueeze(1)
    true = z.gather(1, index).squeeze(1)
    rest = torch.logsumexp(z.scatter(1, index, float("-inf")), dim=1)
    return true - rest


def _auto_score(module: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Logit confidence for ``[B, C]`` logits with ``[B]`` labels, else minus the default loss."""
    if isinstance(batch, Mapping) and "input_ids" in batch:
        labels = next((batch[k] for k in losses.LABEL_KEYS if k in batch), None)
        if isinstance(labels, torch.Tensor) and labels.dim() == 1:
            logits = losses.output_logits(losses.hf_forward(module, batch))
            if logits.dim() == 2:
                return (
                    _logit_confidence_torch(logits, labels),
                    logits.argmax(-1) == labels,
                    "logit_confidence",
                )
        loss, correct = probes.default_sample_loss_and_correct_fn(module, batch)
        return -loss, correct, "neg_loss"
    x, y = losses.split_xy(batch)
    logits = losses.output_logits(module(x))
    if logits.dim() == 2 and y.dim() == 1:
        return _logit_confidence_torch(logits, y), logits.argmax(-1) == y, "logit_confidence"
    loss, correct = losses.per_sample_cross_entropy(logits, y)
    return -loss, correct, "neg_loss"


def _validate_init(
    *,
    pool: Any,
    run_index: Any,
    num_runs: Any,
    seed: Any,
    keep_fraction: Any,
    score: Any,
    score_kind: Any,
    batch_size: Any,
    collate_fn: Any,
) -> dict[str, Any]:
    """Every argument check of :class:`ShadowScoreRecorder`; returns the normalised values."""
    size = _pool_size(pool)
    split = shadow_split(size, run_index=run_index, num_runs=num_runs, seed=seed, keep_fraction=keep_fraction)
    if not callable(score):
        check_choice("score", score, ("auto", *SCORE_KINDS))
        if score_kind is not None:
            raise ValueError(
                f"`score_kind` is only for a callable `score`, got score={score!r}, score_kind={score_kind!r}"
            )
    elif score_kind is None:  # RMIA turns scores back into probabilities by their kind
        name = getattr(score, "__name__", type(score).__name__)
        raise ValueError(
            f"a callable `score` ({name}) needs `score_kind`, got score_kind=None; pass "
            "score_kind='logit_confidence' if it returns log(p_y / (1 - p_y)) or score_kind='neg_loss' if it "
            "returns minus a loss (the attacks turn scores back into probabilities with sigmoid or exp)"
        )
    else:
        check_choice("score_kind", score_kind, SCORE_KINDS)
    if collate_fn is not None and not callable(collate_fn):
        raise TypeError(
            f"`collate_fn` must be None or a function list[item] -> batch, got {type(collate_fn).__name__}"
        )
    return {
        "split": split,
        "batch_size": check_int("batch_size", batch_size, minimum=1, hint="e.g. batch_size=256"),
    }


class ShadowScoreRecorder(MemorisationCallback):
    """Train one shadow run on its seeded share of a pool; record every pool sample's score at fit end.

    Run the same script ``N`` times with ``run_index = 0 .. N-1`` (same ``pool``, ``num_runs`` and
    ``seed``) and train each on :attr:`train_dataset`. At the end of fit the recorder evaluates the
    whole pool once (eval mode, no grad, autocast off, sharded across DDP ranks) and writes
    the scores; ``memcallbacks attack`` then runs LiRA / RMIA / the loss attack over the runs.

    Scores (``score=``): ``"auto"`` (default) gives the logit-scaled confidence of the true label
    (LiRA's statistic, Carlini et al., IEEE S&P 2022) for ``(x, y)`` batches with ``[B, C]``
    logits and ``[B]`` labels (and Hugging Face classification batches), and minus the default
    per-sample loss (mean token NLL) for anything else, such as language models;
    ``"logit_confidence"``/``"neg_loss"`` force one; a callable ``(module, batch) -> Tensor[B]`` (or
    ``(Tensor[B], BoolTensor[B])`` with correctness) must say with ``score_kind`` which of the two it
    returns (RMIA turns scores back into probabilities: ``sigmoid`` or ``exp``). Larger = more
    confident, always.

    Nothing is logged to trackers (the scores are per-sample values); everything goes to the run
    directory (see the module docstring for the files).

    Resuming from a checkpoint: ``run_index``, ``num_runs``, ``seed``, ``keep_fraction``, the pool's
    size and fingerprint define the run and must match (a ``ValueError`` names the argument).

    Args:
        pool: the shared candidate pool, a map-style dataset, identical (same order) in every run.
        run_index: this run's index.
        num_runs: the planned number of runs (balanced: each sample in exactly
            ``round(keep_fraction * num_runs)`` of them: half for an even ``num_runs``, 2 of 5 for 5), or
            ``None`` (each run draws its own half; runs can be added later).
        seed: the split seed, the same in every run.
        keep_fraction: the share of the pool each run trains on (default 0.5).
        score: ``"auto"``, ``"logit_confidence"``, ``"neg_loss"`` or a callable.
        score_kind: required with a callable ``score`` (a ``ValueError`` otherwise): ``"logit_confidence"``
            or ``"neg_loss"``, what it returns.
        batch_size: batch size of the pool evaluation.
        collate_fn: collate function of the pool evaluation (default: PyTorch's; token-id rows of any
            length, e.g. tokenized ``datasets`` rows, are padded, see ``pad_id``).
        pad_id: the pad id for token-id rows of different lengths (default: the model config's
            ``pad_token_id``; needed when it has none). Padding is never scored.
        run_dir: override the run directory root (default ``<trainer.log_dir>/memcallbacks``).
        every_n_steps: refused (``ValueError``): the recorder scores the pool once, at the end of fit.

    Raises:
        ValueError, TypeError: an argument out of range or of the wrong type.

    Example:
        >>> pool = [(torch.zeros(3), 0), (torch.ones(3), 1)] * 10
        >>> recorder = ShadowScoreRecorder(pool, run_index=0, seed=0)
        >>> len(recorder.train_dataset), int(recorder.inclusion.sum())
        (10, 10)
    """

    subdir = "shadow"

    def __init__(
        self,
        pool: Dataset[Any] | Any,
        *,
        run_index: int,
        num_runs: int | None = None,
        seed: int = 0,
        keep_fraction: float = 0.5,
        score: str | SampleScoreFn = "auto",
        score_kind: str | None = None,
        batch_size: int = 256,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        pad_id: int | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        every_n_steps: None = None,
    ) -> None:
        if every_n_steps is not None:
            raise ValueError(
                f"ShadowScoreRecorder(every_n_steps={every_n_steps!r}): the recorder scores the pool once, at "
                "the end of fit, and has no schedule; remove `every_n_steps` (the attack compares the runs' "
                "final models)"
            )
        super().__init__(run_dir=run_dir)
        args = _validate_init(
            pool=pool,
            run_index=run_index,
            num_runs=num_runs,
            seed=seed,
            keep_fraction=keep_fraction,
            score=score,
            score_kind=score_kind,
            batch_size=batch_size,
            collate_fn=collate_fn,
        )
        self.pool = pool
        self.split: ShadowSplit = args["split"]
        self.score = score
        self.score_kind = score_kind
        self.batch_size: int = args["batch_size"]
        self.collate_fn = collate_fn
        self.pad_id = check_pad_id(pad_id)
        self.fingerprint = pool_fingerprint(pool)
        self._scores: np.ndarray | None = None
        self._correct: np.ndarray | None = None
        self._recorded_kind: str | None = None

    # -- the split -------------------------------------------------------------------------
    @property
    def inclusion(self) -> np.ndarray:
        """bool ``[N]``: True where this run trains on the pool sample."""
        return self.split.inclusion

    @property
    def train_dataset(self) -> Subset[Any]:
        """The pool samples this run trains on (a ``Subset`` of ``pool``, ascending positions)."""
        return Subset(self.pool, self.split.indices.tolist())

    @property
    def scores(self) -> np.ndarray | None:
        """float32 ``[N]`` scores recorded at the end of fit (``None`` before)."""
        return self._scores

    # -- identity and state ----------------------------------------------------------------
    def _measured_args(self) -> dict[str, Any]:
        return {
            "run_index": self.split.run_index,
            "num_runs": self.split.num_runs,
            "seed": self.split.seed,
            "keep_fraction": self.split.keep_fraction,
            "pool_size": int(self.inclusion.size),
            "pool_fingerprint": self.fingerprint,
        }

    def state_dict(self) -> dict[str, Any]:
        return self.base_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.load_base_state(state_dict)

    # -- hooks -----------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and trainer.is_global_zero:
            rundir.write_shadow_inclusion(
                self.run_dir, self.split, self.fingerprint, label_fingerprint=label_fingerprint(self.pool)
            )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # token-id rows: a missing pad id fails here, before the first step, not after training
        probes.probe_collate(
            self.pool, self.collate_fn, pad_id=self.pad_id, module=pl_module, owner="ShadowScoreRecorder"
        )
        train = probes.dataset_of(getattr(trainer, "train_dataloader", None))
        expected = int(self.split.indices.size)
        if train is not None and hasattr(train, "__len__") and len(train) != expected:
            rank_zero_warn(
                f"ShadowScoreRecorder: the training data holds {len(train)} samples but run {self.split.run_index} "
                f"should train on its {expected} pool samples; the attack assumes it did. Train on "
                "`recorder.train_dataset`:\n    DataLoader(recorder.train_dataset, batch_size=..., shuffle=True)"
            )

    def on_memorisation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Nothing per epoch: the scores are recorded once, at the end of fit."""

    def _score_fn(self) -> tuple[SampleScoreFn, list[str]]:
        kinds: list[str] = []
        if callable(self.score):
            user = self.score
            kinds.append(self.score_kind or "custom")
            return user, kinds
        forced = None if self.score == "auto" else self.score

        def fn(module: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
            if forced == "neg_loss":
                loss, correct = probes.default_sample_loss_and_correct_fn(module, batch)
                score, kind = -loss, "neg_loss"
            else:
                score, correct, kind = _auto_score(module, batch)
                if forced == "logit_confidence" and kind != forced:
                    raise ValueError(
                        "ShadowScoreRecorder(score='logit_confidence') needs (x, y) batches with [B, C] logits and "
                        "[B] labels; pass score='neg_loss' (or 'auto') for language models"
                    )
            if not kinds:
                kinds.append(kind)
            return score, correct

        return fn, kinds

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        try:
            fn, kinds = self._score_fn()
            scores, correct = probes.evaluate_sharded(
                trainer,
                pl_module,
                self.pool,
                fn,
                batch_size=self.batch_size,
                collate_fn=self.collate_fn,
                pad_id=self.pad_id,
            )
            self._scores = scores.numpy().astype(np.float32)
            self._correct = None if correct is None else correct.numpy().astype(bool)
            self._recorded_kind = kinds[0] if kinds else "custom"
            bad = int((~np.isfinite(self._scores)).sum())
            if bad:
                rank_zero_warn(
                    f"ShadowScoreRecorder: {bad} of {self._scores.size} pool scores are NaN/inf (a diverged model?); "
                    "they are saved as they are and the attack will refuse this run"
                )
            if trainer.is_global_zero:
                rundir.write_shadow_scores(
                    self.run_dir,
                    self._scores,
                    score_kind=self._recorded_kind,
                    fingerprint=self.fingerprint,
                    correct=self._correct,
                    epochs_completed=trainer.current_epoch,
                    global_step=trainer.global_step,
                )
        finally:
            super().on_train_end(trainer, pl_module)
