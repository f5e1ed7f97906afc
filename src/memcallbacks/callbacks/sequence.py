"""Sequence memorisation of a language model, per epoch: extraction rates and LM membership scores.

At the end of every ``every_n_epochs``-th training epoch the monitor takes fixed, seeded probes
of member sequences (training data) and, when available, non-member sequences (held out), and
measures on the first ``prefix_len + suffix_len`` tokens of each (the *probe window*):

* greedy k-extractable memorisation (Carlini, Ippolito, Jagielski, Lee, Tramer and Zhang,
  "Quantifying Memorization Across Neural Language Models", ICLR 2023): prompted with the first
  ``prefix_len`` tokens, does greedy decoding of ``suffix_len`` tokens reproduce the true
  continuation exactly?
* (n, p)-discoverable extraction (Hayes et al., "Measuring memorization through probabilistic
  discoverable extraction", 2024): the probability ``q`` that one *sampled* continuation equals
  the true one, exact from one teacher-forced pass, and whether ``1 - (1 - q)^n >= p``;
* LM membership scores (members positive, exact ROC): the mean token loss (Yeom et al. 2018),
  Min-K% Prob (Shi et al., ICLR 2024) and the zlib ratio (Carlini et al., USENIX Security 2021).

One teacher-forced forward pass per probe batch gives the loss, Min-K% Prob, the zlib ratio's
numerator and every sampling scheme's ``q``; greedy decoding then runs once over the member
(and non-member) prefixes, reusing the model's state: an
:class:`~memcallbacks.lm.scoring.IncrementalLM` (``init_state``/``step``), a Hugging Face KV cache
(the scoring pass's own cache cut back to the prefix, so the prefix never runs twice; the
conventions live in :class:`memcallbacks.lm.hf.HFIncrementalLM`), or, when neither is offered, full
forward passes over the growing sequence (about ``suffix_len`` times the cost; warned once).

Distributed runs: the probes are split across ranks (contiguous shards of equal length, the last
padded by repeating the final probe), each rank evaluates its shard, one all-gather reassembles
the per-probe results in probe order, and every rank computes the metrics from the same numbers
(every rank logs identical values). Rank 0 writes the run directory and the tracker records.
Under sharded parameters (FSDP2's ``fully_shard`` with ``ModelParallelStrategy``, ``FSDPStrategy``,
DeepSpeed ZeRO-3; one rule, :func:`memcallbacks.lightning.sharded_run`) every forward pass is a
collective of all ranks, so every rank runs the same forward calls: equal shards, every row of a
shard decoded (a short row's result discarded), ``suffix_len`` decoding steps, no sampling (the
(n, p) probabilities are exact). A custom ``forward_fn`` must then call the model exactly once.

This module is the Lightning glue over the base's evaluation cycle (``measure`` -> ``metrics`` ->
``write_files`` -> ``records``): the model runs in :mod:`memcallbacks.lm.windows`, the per-sequence
scores are :mod:`memcallbacks.metrics.sequence`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from memcallbacks import loggers, rundir
from memcallbacks.callbacks import probes
from memcallbacks.callbacks._base import MemorisationCallback, state_array, state_tensor
from memcallbacks.callbacks.membership import check_reference, peft_model_of, reference_kind
from memcallbacks.lightning import sharded_run
from memcallbacks.lm.model import evaluating
from memcallbacks.lm.windows import (
    DECODING_MODES,
    ForwardFn,
    LanguageModel,
    WindowScores,
    check_sampling,
    pad_windows,
    score_windows,
    token_sequences,
)
from memcallbacks.metrics.membership import membership_inference
from memcallbacks.metrics.sequence import discoverable_rates, zlib_length
from memcallbacks.utilities import distributed
from memcallbacks.utilities.validation import (
    check_choice,
    check_int,
    check_probability,
    check_real,
    check_seed,
    is_int,
)

__all__ = ["SequenceMemorisationMonitor"]

#: the per-probe results kept for every evaluation (the generated ids only for the latest)
_STORED_FIELDS = ("loss", "min_k", "min_k_pp", "exact", "token_match", "log_q")
#: stored fields a checkpoint from before they existed lacks (loaded as NaN)
_OPTIONAL_FIELDS = frozenset({"min_k_pp"})


# --------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------
def _check_n_tries(n_tries: Any) -> tuple[int, ...]:
    values = [n_tries] if is_int(n_tries) else n_tries
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"`n_tries` must be positive integers such as (1, 10, 100), got {n_tries!r}")
    out: list[int] = []
    for v in values:
        n = check_int(
            "n_tries",
            v,
            minimum=1,
            hint="each number of sampling tries is an integer >= 1, e.g. (1, 10, 100)",
        )
        if n not in out:
            out.append(n)
    if not out:
        raise ValueError("`n_tries` is empty; pass e.g. n_tries=(1, 10, 100)")
    return tuple(out)


def _validate_init(
    *,
    prefix_len: Any,
    suffix_len: Any,
    num_probes: Any,
    min_k: Any,
    batch_size: Any,
    seed: Any,
    sampling: Any,
    n_tries: Any,
    p_threshold: Any,
    num_top: Any,
    decoding: Any,
    forward_fn: Any,
    tokenizer: Any,
) -> dict[str, Any]:
    if forward_fn is not None and not callable(forward_fn):
        raise TypeError(
            f"`forward_fn` must be callable (module, token_ids [B, T]) -> logits [B, T, V], got {forward_fn!r}"
        )
    if tokenizer is not None and not callable(getattr(tokenizer, "decode", None)) and not callable(tokenizer):
        raise TypeError(
            f"`tokenizer` must have `decode(ids) -> str` or be a function ids -> str, got {type(tokenizer).__name__}"
        )
    return {
        "prefix_len": check_int(
            "prefix_len", prefix_len, minimum=1, hint="the prompt length in tokens, e.g. 32"
        ),
        "suffix_len": check_int("suffix_len", suffix_len, minimum=1, hint="the continuation length, e.g. 32"),
        "num_probes": check_int("num_probes", num_probes, minimum=1, hint="e.g. num_probes=1000"),
        "min_k": check_real(
            "min_k",
            min_k,
            minimum=0.0,
            maximum=1.0,
            min_inclusive=False,
            hint="e.g. min_k=0.2 (Min-20% Prob)",
        ),
        "batch_size": check_int("batch_size", batch_size, minimum=1, hint="e.g. batch_size=32"),
        "seed": check_seed("seed", seed),
        "sampling": check_sampling(sampling),
        "n_tries": _check_n_tries(n_tries),
        "p_threshold": check_probability("p_threshold", p_threshold, open_low=True, open_high=True),
        "num_top": check_int(
            "num_top", num_top, minimum=0, hint="rows of the most extractable sequences table"
        ),
        "decoding_requested": check_choice("decoding", decoding, DECODING_MODES),
        "forward_fn": forward_fn,
        "tokenizer": tokenizer,
    }


# --------------------------------------------------------------------------------------
# The callback
# --------------------------------------------------------------------------------------
class SequenceMemorisationMonitor(MemorisationCallback):
    """Log how much of its training text a language model reproduces, and how well LM scores flag it.

    At the end of each ``every_n_epochs``-th training epoch, in eval mode under
    ``torch.no_grad()`` (float32 scores; train mode restored afterwards), on fixed seeded
    probes of ``num_probes`` member sequences and ``num_probes`` non-member sequences, each cut to
    its first ``prefix_len + suffix_len`` tokens (the probe window):

    =============================================  ==================================================
    ``mem/extract/exact_rate``                     fraction of member probes whose greedy
                                                   continuation of the prefix equals the true
                                                   ``suffix_len``-token suffix (Carlini et al. 2023)
    ``mem/extract/token_match``                    mean fraction of suffix positions predicted right
    ``mem/extract/skipped``                        member probes shorter than the window (not decoded)
    ``mem/extract/exact_rate_nonmember``,          the same on the non-member probes: what the model
    ``.../token_match_nonmember``,                 reproduces without having seen it (templates,
    ``.../skipped_nonmember``                      boilerplate)
    ``mem/extract/prob_rate/n<n>``                 fraction of member probes that ``n`` samples
                                                   (first ``sampling`` scheme) reproduce with
                                                   probability ``>= p_threshold`` (Hayes et al. 2024)
    ``mem/extract/prob_mean``                      mean single-sample probability ``q`` (first scheme)
    ``mem/extract/prob_rate/n<n>/s<i>``,           the same for the ``i``-th further scheme (i >= 1)
    ``mem/extract/prob_mean/s<i>``
    ``.../prob_rate_nonmember/n<n>[/s<i>]``,       the same on the non-member probes: the (n, p)
    ``.../prob_mean_nonmember[/s<i>]``             baseline of text the model never trained on
    ``mem/mia_lm/auc/loss``, ``.../auc/min_k``,    ROC AUC (members positive, exact ROC) of the mean
    ``.../auc/min_k_pp``, ``.../auc/zlib``         token loss, Min-K% Prob, Min-K%++ and zlib ratio
                                                   scores
    ``mem/mia_lm/tpr@1%fpr/loss``, ``/min_k``,     TPR at FPR <= 1% for each score
    ``/min_k_pp``, ``/zlib``
    ``mem/mia_lm/auc/ref``,                        with ``reference=``: the same for the loss now minus
    ``mem/mia_lm/tpr@1%fpr/ref``                   the loss under the reference (lower = member)
    ``mem/mia_lm/n_members``, ``n_nonmembers``     probes with a finite score
    ``mem/mia_lm/nonfinite``                       probes with a NaN/inf loss (excluded; warned once)
    =============================================  ==================================================

    The membership and non-member keys need non-members: ``nonmembers=`` or, by default, the
    validation data (found before the first validation run too, e.g. loaders passed to ``fit``
    with ``check_val_every_n_epoch > 1``); without either only the member extraction keys are
    logged (warned once). The probes are drawn by the rule of
    :class:`~memcallbacks.MembershipInferenceMonitor` (one resolver): members are a ``seed``-ed
    random subset, so both monitors given one ``seed`` and ``num_probes`` probe the same training
    samples; non-members are the first ``num_probes`` sequences.

    ``history``: one row per evaluation, ``{"epoch": int, "step": int, "mem/...": value, ...}``.

    What (n, p) means: ``prob_rate/n100 = 0.05`` with ``p_threshold=0.1`` says that for 5% of the
    probed training sequences, a user who regenerates 100 times from the sequence's first
    ``prefix_len`` tokens gets the rest of it back, word for word, with probability at least 10%.

    Min-K%++ (Zhang et al., ICLR 2025) standardises each token's log-probability by the mean and
    standard deviation of ``log p(z)`` under the model's own next-token distribution (exact over the
    vocabulary, from the same teacher-forced pass: no extra forward), then averages the lowest
    ``min_k`` fraction like Min-K% Prob. A position whose distribution is one-hot or uniform
    (standard deviation 0) has no defined token score and is left out; a probe with none left gets
    NaN and drops out of that score's AUC only.

    Run directory (``<log_dir>/memcallbacks/sequence/``, rank 0, rewritten each evaluation):
    ``sequences.npz`` (``epochs [E]`` and ``steps [E]``, each evaluation's epoch and global step;
    ``member_indices [n]``, ``nonmember_indices [m]`` into the
    datasets; ``member_lengths``, ``nonmember_lengths`` (window tokens); per epoch and probe,
    float64 with NaN where undefined: ``member_loss``, ``member_min_k``, ``member_min_k_pp``, ``member_zlib``,
    ``member_exact``, ``member_token_match`` ``[E, n]``, ``member_log_q [E, n, K]`` and the same
    ``nonmember_*``; with ``log_secrets=True`` also ``member_generated [n, suffix_len]``, the
    latest greedy continuations, -1 for skipped probes) and ``metrics.json``
    (``{"history": [...], "decoding": ..., ...}``).

    Tracker records (rank 0): ``mem/extract/prob_rate_vs_n`` (a line per epoch: rate against n,
    with the greedy rate), ``RocCurve`` ``mem/mia_lm/roc/<score>``; with ``log_per_sample=True``
    the table ``mem/extract/top_sequences`` of the ``num_top`` most extractable member probes
    (dataset index, ``log10 q``, exact, token match), with their text (prefix, true suffix, greedy
    suffix; needs ``tokenizer``, else token ids) only with ``log_secrets=True``.

    Args:
        members: member (training) sequences: a map-style dataset (or a DataLoader over one; an
            :class:`~memcallbacks.IndexedDataset` is unwrapped) whose items are 1-D token ids or
            dicts with ``input_ids`` (and optionally ``attention_mask``; masked positions are
            dropped). Default: the dataset behind ``trainer.train_dataloader``. A seeded random
            subset of ``num_probes`` is probed.
        nonmembers: held-out sequences, same item forms. Default: the validation dataset. Its
            first ``num_probes`` are probed.
        prefix_len: prompt length in tokens (``>= 1``).
        suffix_len: continuation length in tokens (``>= 1``).
        num_probes: sequences probed from each of members and non-members.
        min_k: the fraction of least likely tokens Min-K% Prob and Min-K%++ average, in ``(0, 1]``.
        batch_size: probes per forward pass (logits ``[batch, window, vocab]`` float32 are held).
        every_n_epochs: evaluate after every this many training epochs.
        every_n_steps: evaluate every this many optimizer steps instead (``trainer.global_step``;
            not at epoch ends); see :class:`~memcallbacks.callbacks._base.MemorisationCallback`.
        evaluate_on_validation: evaluate at the end of every validation run inside ``fit`` instead
            (with ``val_check_interval``, also mid-epoch).
        seed: seed of the member probe subset (the membership monitor's rule).
        sampling: the sampling schemes of the (n, p) keys: a dict or list of dicts with
            ``temperature`` (> 0) and ``top_k`` (None, or ``[1, vocabulary]``).
        n_tries: the numbers of samples ``n`` of ``mem/extract/prob_rate/n<n>``.
        p_threshold: ``p`` in ``(0, 1)``.
        forward_fn: ``(module, token_ids [B, T]) -> logits [B, T, V]``; default ``module(ids)`` (its
            ``.logits`` if it has one), or the module's Hugging Face model when it holds one.
        decoding: ``"auto"`` (IncrementalLM, else KV cache, else full passes), ``"cache"`` (refuse
            full passes) or ``"full"``.
        reference: also score ``loss - reference loss`` (``mem/mia_lm/*/ref``; Carlini et al. 2021,
            Mireshghallah et al. 2022): the reference per-probe losses come from one teacher-forced
            pass over the probes in ``on_train_start``, before the first step, of ``"fit_start"``
            (the weights then), ``"peft_base"`` (the peft model with adapters disabled; none: a
            ``ValueError`` at setup) or a ``torch.nn.Module`` (moved to the training device; another
            vocabulary size: a ``ValueError`` naming both). Stored in the checkpoint, never
            recomputed on resume, and written to ``sequences.npz`` (``member_reference_loss``,
            ``nonmember_reference_loss``). None: not scored.
        tokenizer: optional, ``decode(ids) -> str`` (or a function): the zlib ratio then compresses
            the decoded text (else the token ids as bytes), and tables can show text.
        num_top: rows of the per-sample table.
        name: tells two monitors in one Trainer apart (letters, digits, ``-``, ``_``, ``.``): state
            key, run-directory folder (``sequence_<name>``) and logged keys, which end in ``/<name>``
            (``mem/extract/exact_rate/<name>``); ``history`` keeps the plain keys.
        run_dir: the run directory root instead of ``<trainer.log_dir>/memcallbacks``.
        log_per_sample: send the per-sample table to loggers.
        log_secrets: include the sequences' text in that table and save greedy continuations.

    Raises:
        ValueError: out-of-range arguments (``prefix_len``/``suffix_len`` < 1, a ``name`` with other
            characters, ``min_k`` outside
            (0, 1], ``p_threshold`` outside (0, 1), ``temperature`` <= 0, ``top_k`` < 1 or larger than
            the vocabulary, ``n_tries`` < 1), no probe sequence long enough, different pad ids in
            members and non-members, token ids outside the model's vocabulary.
        TypeError: wrong argument types, items that are not token sequences, a model without
            next-token logits.
        RuntimeError: no training dataset to probe.

    Every probe and the model are checked in ``on_train_start``, before the first training step
    (a list of strings is refused there with the fix: tokenize them first).

    Example:
        >>> import pytorch_lightning as pl
        >>> from memcallbacks import SequenceMemorisationMonitor
        >>> monitor = SequenceMemorisationMonitor(prefix_len=32, suffix_len=32, n_tries=(1, 10, 100))
        >>> trainer = pl.Trainer(callbacks=[monitor], max_epochs=3)  # doctest: +SKIP
        >>> trainer.fit(model, train_loader, val_loader)  # doctest: +SKIP
        >>> trainer.callback_metrics["mem/extract/exact_rate"]  # doctest: +SKIP
        tensor(0.0420)
    """

    subdir = rundir.SEQUENCE
    prefix_len: int
    suffix_len: int
    num_probes: int
    min_k: float
    batch_size: int
    seed: int
    sampling: tuple[tuple[float, int | None], ...]
    n_tries: tuple[int, ...]
    p_threshold: float
    num_top: int
    decoding_requested: str
    forward_fn: ForwardFn | None
    tokenizer: Any

    def __init__(
        self,
        members: Any = None,
        nonmembers: Any = None,
        *,
        prefix_len: int = 32,
        suffix_len: int = 32,
        num_probes: int = 1000,
        min_k: float = 0.2,
        batch_size: int = 32,
        every_n_epochs: int = 1,
        every_n_steps: int | None = None,
        evaluate_on_validation: bool = False,
        seed: int = 0,
        sampling: Any = ({"temperature": 1.0, "top_k": None},),
        n_tries: Any = (1, 10, 100),
        p_threshold: float = 0.1,
        forward_fn: ForwardFn | None = None,
        decoding: str = "auto",
        reference: str | torch.nn.Module | None = None,
        tokenizer: Any = None,
        num_top: int = 10,
        name: str | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        log_per_sample: bool = False,
        log_secrets: bool = False,
    ) -> None:
        super().__init__(
            every_n_epochs=every_n_epochs,
            every_n_steps=every_n_steps,
            evaluate_on_validation=evaluate_on_validation,
            run_dir=run_dir,
            log_per_sample=log_per_sample,
            log_secrets=log_secrets,
            name=name,
        )
        args = _validate_init(
            prefix_len=prefix_len,
            suffix_len=suffix_len,
            num_probes=num_probes,
            min_k=min_k,
            batch_size=batch_size,
            seed=seed,
            sampling=sampling,
            n_tries=n_tries,
            p_threshold=p_threshold,
            num_top=num_top,
            decoding=decoding,
            forward_fn=forward_fn,
            tokenizer=tokenizer,
        )
        for key, value in args.items():  # the attributes annotated on the class
            setattr(self, key, value)
        self.reference: str | torch.nn.Module | None = check_reference(reference)
        self._init_state(members, nonmembers)

    def _init_state(self, members: Any, nonmembers: Any) -> None:
        """The probe resolver, the probe windows (resolved at the first evaluation) and the per-epoch results."""
        # the membership monitor's rule: the same seed draws the same members
        self._probes = probes.ProbeResolver(
            type(self).__name__,
            members=members,
            nonmembers=nonmembers,
            num_probes=self.num_probes,
            seed=self.seed,
            item="token sequence",
            require_nonmembers=False,
            draw_given=True,
        )
        # the probe windows (resolved at the first evaluation against the resolver's indices)
        self._windows: torch.Tensor | None = None
        self._lengths: torch.Tensor | None = None
        self._zlib: np.ndarray | None = None
        self._max_id = 0
        self._epochs: list[int] = []
        self._steps: list[int] = []  # global step of each evaluation (-1: from a checkpoint without steps)
        self._results: list[WindowScores] = []  # per evaluation, on the CPU (generated ids left out)
        self._generated: np.ndarray | None = None  # the latest greedy continuations, -1 where not decoded
        self._reference_loss: np.ndarray | None = (
            None  # [N] under `reference=`, at fit start (kept on resume)
        )
        self._lm: LanguageModel | None = None
        self.decoding: str | None = None
        """The decoding path used: ``"incremental"``, ``"kv_cache"`` or ``"full"`` (after an evaluation)."""

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_lm"] = None  # holds the module: never pickled with the callback (ddp_spawn)
        return state

    @property
    def width(self) -> int:
        """The probe window, ``prefix_len + suffix_len`` tokens."""
        return self.prefix_len + self.suffix_len

    @property
    def member_indices(self) -> np.ndarray | None:
        """Indices of the member probes into the training dataset or ``members``."""
        return self._probes.member_indices

    @property
    def nonmember_indices(self) -> np.ndarray | None:
        """Indices of the non-member probes into the validation dataset or ``nonmembers`` (empty: none)."""
        return self._probes.nonmember_indices

    # -- identity and state --------------------------------------------------------------
    def _measured_args(self) -> dict[str, Any]:
        return {
            "prefix_len": self.prefix_len,
            "suffix_len": self.suffix_len,
            "min_k": self.min_k,
            "sampling": [[t, k] for t, k in self.sampling],
            "zlib_input": "token_ids" if self.tokenizer is None else "text",
            "reference": reference_kind(self.reference),
            **self._probes.measured_args(),
        }

    def state_dict(self) -> dict[str, Any]:
        results = {
            f"results_{field}": state_tensor(self._stacked(field)) if self._results else None
            for field in _STORED_FIELDS
        }
        return {
            **self.base_state(),
            **self._probes.state_dict(),
            "epochs": list(self._epochs),
            "steps": list(self._steps),
            **results,
            "generated": state_tensor(self._generated),
            "reference_loss": state_tensor(self._reference_loss),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.load_base_state(state_dict)
        self._probes.load_state_dict(state_dict)
        self._epochs = [int(e) for e in state_dict.get("epochs", [])]
        self._steps = [int(s) for s in state_dict.get("steps", [-1] * len(self._epochs))]
        stored = {field: state_array(state_dict, f"results_{field}", np.float64) for field in _STORED_FIELDS}
        self._results = []
        if all(value is not None for field, value in stored.items() if field not in _OPTIONAL_FIELDS):
            for e in range(len(self._epochs)):
                fields = {k: torch.from_numpy(v[e].copy()) for k, v in stored.items() if v is not None}
                for missing in _OPTIONAL_FIELDS - set(fields):  # a checkpoint from before the field
                    fields[missing] = torch.full_like(fields["loss"], math.nan)
                empty = torch.empty((len(fields["loss"]), 0), dtype=torch.long)
                self._results.append(WindowScores(**fields, generated=empty))
        self._generated = state_array(state_dict, "generated", np.int64)
        self._reference_loss = state_array(state_dict, "reference_loss", np.float64)
        self._windows = None  # re-resolved against the stored indices

    # -- probes ----------------------------------------------------------------------------
    def _resolve(self, trainer: pl.Trainer) -> None:
        if self._windows is not None:
            return
        members, nonmembers = self._probes.resolve(trainer)
        m_seqs, m_pads = token_sequences("members", members.dataset, members.indices)
        n_seqs: list[torch.Tensor] = []
        n_pads: set[int] = set()
        if nonmembers is None:
            self.warn_once(
                "no_nonmembers",
                "SequenceMemorisationMonitor: no non-member sequences (`nonmembers=` not given and no validation "
                "data): only the member extraction keys are logged; pass `nonmembers=held_out_dataset` for "
                "mem/mia_lm/* and the baselines",
            )
        else:
            n_seqs, n_pads = token_sequences("nonmembers", nonmembers.dataset, nonmembers.indices)
        self._check_probes(m_seqs, m_pads, n_seqs, n_pads)
        seqs = m_seqs + n_seqs
        self._windows, self._lengths = pad_windows(seqs, self.width)
        self._max_id = int(self._windows.max()) if self._windows.numel() else 0
        if self.tokenizer is not None:
            decode = getattr(self.tokenizer, "decode", self.tokenizer)
            texts: list[Any] = [decode(s[: self.width].tolist()) for s in seqs]
            wrong = [type(t).__name__ for t in texts if not isinstance(t, str)]
            if wrong:  # str(...) of a list or None would compress alike: the zlib score would be the loss
                raise TypeError(
                    f"SequenceMemorisationMonitor: `tokenizer` must decode ids to a str, got {wrong[0]} for "
                    f"{len(wrong)} of {len(texts)} probe sequences; the zlib ratio compresses the decoded text. "
                    "Pass a tokenizer whose decode(ids) returns text, or tokenizer=None to compress the token ids"
                )
        else:
            texts = [s[: self.width].numpy() for s in seqs]
        # token ids: one byte width for the whole probe set (its largest id), not per sequence
        max_id = max((int(t.max()) for t in texts if not isinstance(t, str) and t.size), default=None)
        self._zlib = np.array([zlib_length(t, max_id=max_id) for t in texts], np.float64)

    def _check_probes(
        self, m_seqs: list[torch.Tensor], m_pads: set[int], n_seqs: list[torch.Tensor], n_pads: set[int]
    ) -> None:
        if m_pads and n_pads and m_pads != n_pads:
            raise ValueError(
                f"`members` and `nonmembers` pad with different token ids ({sorted(m_pads)} vs {sorted(n_pads)}): "
                "they were tokenised differently, so their scores cannot be compared; tokenise both with the "
                "same tokenizer and padding settings"
            )
        for what, seqs in (("members", m_seqs), ("nonmembers", n_seqs)):
            if seqs and max(s.numel() for s in seqs) < self.width:
                raise ValueError(
                    f"no `{what}` probe sequence is long enough: greedy extraction needs prefix_len + suffix_len = "
                    f"{self.prefix_len} + {self.suffix_len} = {self.width} tokens, the longest has "
                    f"{max(s.numel() for s in seqs)}; lower `prefix_len`/`suffix_len` or probe longer sequences"
                )

    # -- the reference of `reference=` (once, before the first training step) --------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and self.reference == "peft_base":
            peft_model_of(pl_module, type(self).__name__)  # no adapters: a clear error before training

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Checks the probes and the model before the first step; scores the probes under ``reference`` once.

        The probes are resolved and tokenised here (every check of :meth:`_resolve`), and one probe
        window runs through the model (its logits, vocabulary and ``top_k``), so a bad probe or model
        fails before any training step. The reference pass is teacher-forced only and never runs again
        on resume.
        """
        super().on_train_start(trainer, pl_module)
        self._resolve(trainer)
        self._check_model(pl_module)
        if self.reference is None or self._reference_loss is not None:
            return
        if self.reference == "peft_base":
            with peft_model_of(pl_module, type(self).__name__).disable_adapter():
                loss = self._reference_pass(trainer, pl_module, pl_module)
        elif isinstance(self.reference, torch.nn.Module):
            self.reference.to(pl_module.device)
            loss = self._reference_pass(trainer, pl_module, self.reference)
        else:  # "fit_start": the weights before the first step
            loss = self._reference_pass(trainer, pl_module, pl_module)
        self._reference_loss = loss

    def _reference_pass(self, trainer: pl.Trainer, pl_module: pl.LightningModule, module: Any) -> np.ndarray:
        """Per-probe loss of ``module`` through the teacher-forced path (no decoding), every rank's shard gathered."""
        assert self._windows is not None
        assert self._lengths is not None
        lm = LanguageModel(module, self.forward_fn, "full")
        if module is not pl_module:
            self._check_vocabulary(LanguageModel(pl_module, self.forward_fn, "full"), lm, pl_module, module)
        windows, lengths = _shard(trainer, self._windows, self._lengths)
        with evaluating(pl_module), evaluating(module):
            out = score_windows(
                lm,
                windows,
                lengths,
                prefix_len=self.prefix_len,
                suffix_len=self.suffix_len,
                min_k=self.min_k,
                sampling=(),
                batch_size=self.batch_size,
                device=pl_module.device,
                decode=False,
                max_id=self._max_id,
            )
        if distributed.world_size(trainer) > 1:
            out = _gather(trainer, out, self._windows.shape[0])
        return out.loss.cpu().numpy().astype(np.float64)

    def _check_model(self, pl_module: pl.LightningModule) -> None:
        """The first probe window through the model, on every rank (one forward pass: sharded models too).

        Raises what the first evaluation would: a model without next-token logits, a probe token id
        or a ``top_k`` beyond its vocabulary.
        """
        assert self._windows is not None
        assert self._lengths is not None
        if self._windows.shape[0] == 0:
            return
        with evaluating(pl_module):
            score_windows(
                LanguageModel(pl_module, self.forward_fn, "full"),
                self._windows[:1],
                self._lengths[:1],
                prefix_len=self.prefix_len,
                suffix_len=self.suffix_len,
                min_k=self.min_k,
                sampling=self.sampling,
                batch_size=1,
                device=pl_module.device,
                decode=False,
                max_id=self._max_id,
            )

    def _check_vocabulary(
        self, ours: LanguageModel, theirs: LanguageModel, pl_module: Any, reference: Any
    ) -> None:
        """Both models' logits on the first probe window have the same vocabulary, else a clear error."""
        assert self._windows is not None
        first = self._windows[:1].to(pl_module.device)
        with evaluating(pl_module), evaluating(reference):
            v_ours, v_ref = int(ours.logits(first).shape[-1]), int(theirs.logits(first).shape[-1])
        if v_ours != v_ref:
            raise ValueError(
                f"SequenceMemorisationMonitor(reference={type(reference).__name__}): the reference model's "
                f"vocabulary has {v_ref} tokens, the trained model's {v_ours}: it uses another tokenizer, so its "
                "losses are not comparable; pass the model the run fine-tunes from, or reference='fit_start'"
            )

    # -- evaluation --------------------------------------------------------------------------
    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> WindowScores:
        assert self._windows is not None
        assert self._lengths is not None
        if self._lm is None or self._lm.module is not pl_module:
            self._lm = LanguageModel(pl_module, self.forward_fn, self.decoding_requested)
        total = self._windows.shape[0]
        windows, lengths = _shard(trainer, self._windows, self._lengths)
        with evaluating(pl_module):
            out = score_windows(
                self._lm,
                windows,
                lengths,
                prefix_len=self.prefix_len,
                suffix_len=self.suffix_len,
                min_k=self.min_k,
                sampling=self.sampling,
                batch_size=self.batch_size,
                device=pl_module.device,
                max_id=self._max_id,
                # sharded parameters: every forward is a collective, so every rank decodes every row of
                # its (equal) shard, short rows too (their results discarded): the same calls on all ranks
                decode_every_row=sharded_run(trainer, pl_module),
            )
        self.decoding = self._lm.mode
        if self._lm.mode == "full" and self._lm.fallback_reason is not None:
            self.warn_once(
                "full_decoding",
                "SequenceMemorisationMonitor: greedy decoding runs full forward passes (about `suffix_len` times "
                "the cost of one pass): the model offers no usable IncrementalLM or KV cache "
                f"({self._lm.fallback_reason})",
            )
        if distributed.world_size(trainer) > 1:
            out = _gather(trainer, out, total)
        return out.to("cpu")

    # -- metrics -------------------------------------------------------------------------------
    def _split(self, scores: WindowScores) -> tuple[WindowScores, WindowScores]:
        n = 0 if self.member_indices is None else len(self.member_indices)
        return scores.rows(slice(0, n)), scores.rows(slice(n, None))

    def _reference_split(self) -> tuple[np.ndarray, np.ndarray]:
        assert self._reference_loss is not None
        n = 0 if self.member_indices is None else len(self.member_indices)
        return self._reference_loss[:n], self._reference_loss[n:]

    def _zlib_split(self) -> tuple[np.ndarray, np.ndarray]:
        assert self._zlib is not None
        n = 0 if self.member_indices is None else len(self.member_indices)
        return self._zlib[:n], self._zlib[n:]

    def metrics(self, result: WindowScores) -> dict[str, float]:
        """The ``mem/extract/*`` and (with non-members) ``mem/mia_lm/*`` keys of one evaluation."""
        members, nonmembers = self._split(result)
        metrics = self._extraction_metrics(members, "")
        if nonmembers.loss.shape[0] == 0:
            return metrics
        metrics.update(self._extraction_metrics(nonmembers, "_nonmember"))  # the baseline of unseen text
        metrics.update(self._mia_metrics(members, nonmembers, self.last_epoch_done))
        return metrics

    def _extraction_metrics(self, part: WindowScores, who: str) -> dict[str, float]:
        """The ``mem/extract/*`` keys of members (``who=""``) or non-members (``who="_nonmember"``)."""
        exact, log_q = part.exact.numpy(), part.log_q.numpy()
        decoded = np.isfinite(exact)
        metrics: dict[str, float] = {
            f"mem/extract/exact_rate{who}": _mean(exact[decoded]),
            f"mem/extract/token_match{who}": _mean(part.token_match.numpy()[decoded]),
            f"mem/extract/skipped{who}": float((~decoded).sum()),
        }
        for s in range(len(self.sampling)):
            q_rates, q_mean = discoverable_rates(log_q[decoded, s], self.n_tries, self.p_threshold)
            scheme = "" if s == 0 else f"/s{s}"
            for n, rate in q_rates.items():
                metrics[f"mem/extract/prob_rate{who}/n{n}{scheme}"] = rate
            metrics[f"mem/extract/prob_mean{who}{scheme}"] = q_mean
        return metrics

    def _mia_metrics(self, members: WindowScores, nonmembers: WindowScores, epoch: int) -> dict[str, float]:
        """The ``mem/mia_lm/*`` keys: every score as a "loss", lower = more likely a member."""
        zlib_m, zlib_n = self._zlib_split()
        loss_m, loss_n = members.loss.numpy(), nonmembers.loss.numpy()
        fin_m, fin_n = np.isfinite(loss_m), np.isfinite(loss_n)
        nonfinite = int((~fin_m).sum() + (~fin_n).sum())
        metrics = {
            "mem/mia_lm/nonfinite": float(nonfinite),
            "mem/mia_lm/n_members": float(fin_m.sum()),
            "mem/mia_lm/n_nonmembers": float(fin_n.sum()),
        }
        if nonfinite:
            self.warn_once(
                "nonfinite",
                f"SequenceMemorisationMonitor: {nonfinite} probe losses are NaN/inf at epoch {epoch} (or "
                "sequences of one token); they are excluded from mem/mia_lm/* and counted in "
                "`mem/mia_lm/nonfinite` (warned once)",
            )
        if not fin_m.any() or not fin_n.any():
            return metrics
        min_k_m, min_k_n = members.min_k.numpy(), nonmembers.min_k.numpy()
        attacks = {  # members positive, exact ROC
            "loss": self._attack(loss_m[fin_m], loss_n[fin_n]),
            "min_k": self._attack(-min_k_m[fin_m], -min_k_n[fin_n]),
            "min_k_pp": self._attack(-members.min_k_pp.numpy()[fin_m], -nonmembers.min_k_pp.numpy()[fin_n]),
            "zlib": self._attack(loss_m[fin_m] / zlib_m[fin_m], loss_n[fin_n] / zlib_n[fin_n]),
        }
        if self._reference_loss is not None:  # loss now - loss under the reference (lower = member)
            ref_m, ref_n = self._reference_split()
            attacks["ref"] = self._attack(loss_m[fin_m] - ref_m[fin_m], loss_n[fin_n] - ref_n[fin_n])
        metrics.update({f"mem/mia_lm/auc/{score}": auc for score, (auc, _) in attacks.items()})
        metrics.update({f"mem/mia_lm/tpr@1%fpr/{score}": tpr for score, (_, tpr) in attacks.items()})
        return metrics

    def _attack(self, member_losses: np.ndarray, nonmember_losses: np.ndarray) -> tuple[float, float]:
        ok_m, ok_n = np.isfinite(member_losses), np.isfinite(nonmember_losses)
        if not ok_m.any() or not ok_n.any():
            return math.nan, math.nan
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = membership_inference(member_losses[ok_m], nonmember_losses[ok_n], fprs=(0.01,))
        if caught:
            self.warn_once("few_nonmembers", f"SequenceMemorisationMonitor: {caught[0].message}")
        return float(report.auc), float(report.tpr_at_fpr[0.01])

    # -- the evaluation cycle's hooks ------------------------------------------------------------
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> WindowScores:
        """Scores every probe window (each rank its shard, gathered): the scores kept for this epoch."""
        self._resolve(trainer)
        scores = self._evaluate(trainer, pl_module)
        self._generated = scores.generated.numpy().astype(np.int64)
        scores = _without_generated(scores)
        self._epochs.append(int(trainer.current_epoch))
        self._steps.append(int(trainer.global_step))
        self._results.append(scores)
        return scores

    def write_files(self, result: WindowScores) -> None:
        """``sequences.npz`` and ``metrics.json``, rewritten each evaluation (in the background)."""
        self._save()

    def records(self, result: WindowScores) -> list[loggers.Record]:
        """The (n, p) rates against ``n``, the ROC curves and, when opted in, the top-sequences table."""
        epoch, metrics = self.last_epoch_done, self._history[-1]
        out: list[loggers.Record] = [self._rates_record(epoch, metrics)]
        members, nonmembers = self._split(result)
        if nonmembers.loss.shape[0] and self._zlib is not None:
            out += self._roc_records(epoch, members, nonmembers)
        if self.log_per_sample and self.num_top > 0 and self.member_indices is not None:
            out.append(self._top_sequences(epoch, members))
        return out

    # -- output ----------------------------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        assert self.member_indices is not None
        assert self.nonmember_indices is not None
        assert self._lengths is not None
        assert self._zlib is not None
        n = len(self.member_indices)
        lengths = self._lengths.numpy()
        arrays: dict[str, np.ndarray] = {
            "epochs": np.asarray(self._epochs, dtype=np.int64),
            "steps": np.asarray(self._steps, dtype=np.int64),
            "member_indices": self.member_indices.copy(),
            "nonmember_indices": self.nonmember_indices.copy(),
            "member_lengths": lengths[:n].copy(),
            "nonmember_lengths": lengths[n:].copy(),
        }
        zlib_m, zlib_n = self._zlib_split()
        every = {field: self._stacked(field) for field in _STORED_FIELDS}
        for who, zl, part in (("member", zlib_m, slice(0, n)), ("nonmember", zlib_n, slice(n, None))):
            stacked = {field: values[:, part] for field, values in every.items()}
            arrays[f"{who}_loss"] = stacked["loss"]
            arrays[f"{who}_min_k"] = stacked["min_k"]
            arrays[f"{who}_min_k_pp"] = stacked["min_k_pp"]
            arrays[f"{who}_zlib"] = stacked["loss"] / zl
            arrays[f"{who}_exact"] = stacked["exact"]
            arrays[f"{who}_token_match"] = stacked["token_match"]
            arrays[f"{who}_log_q"] = stacked["log_q"]
        if self._reference_loss is not None:
            arrays["member_reference_loss"], arrays["nonmember_reference_loss"] = self._reference_split()
        if self.log_secrets and self._generated is not None:
            arrays["member_generated"] = self._generated[:n].copy()
        return arrays

    def _stacked(self, field: str) -> np.ndarray:
        """``field`` of every evaluation, ``[E, N, ...]``."""
        if self._results:
            return np.stack([getattr(r, field).numpy() for r in self._results])
        return np.zeros((0, 0, len(self.sampling)) if field == "log_q" else (0, 0))

    def _save(self) -> None:
        summary = {
            "history": self.history,
            "prefix_len": self.prefix_len,
            "suffix_len": self.suffix_len,
            "min_k": self.min_k,
            "sampling": [{"temperature": t, "top_k": k} for t, k in self.sampling],
            "n_tries": list(self.n_tries),
            "p_threshold": self.p_threshold,
            "decoding": self.decoding,
            "zlib_input": "token_ids" if self.tokenizer is None else "text",
            "reference": reference_kind(self.reference),
            "n_members": 0 if self.member_indices is None else len(self.member_indices),
            "n_nonmembers": 0 if self.nonmember_indices is None else len(self.nonmember_indices),
        }
        self.write_in_background(rundir.write_sequence, self.run_dir, self._arrays(), summary)

    def _text(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids if int(i) >= 0]
        if self.tokenizer is None:
            return " ".join(map(str, ids))
        return str(getattr(self.tokenizer, "decode", self.tokenizer)(ids))

    def _rates_record(self, epoch: int, metrics: dict[str, Any]) -> loggers.Record:
        rates = [metrics[f"mem/extract/prob_rate/n{n}"] for n in self.n_tries]
        baseline = (  # the same rates on non-members, when there are some
            [metrics[f"mem/extract/prob_rate_nonmember/n{n}"] for n in self.n_tries]
            if "mem/extract/exact_rate_nonmember" in metrics
            else []
        )
        return loggers.LineSeries(
            key="mem/extract/prob_rate_vs_n",
            xs=[float(n) for n in self.n_tries],
            ys={
                f"(n, p={self.p_threshold:g}) rate": rates,
                "greedy exact rate": [metrics["mem/extract/exact_rate"]] * len(rates),
                **({"non-member (n, p) rate": baseline} if baseline else {}),
            },
            epoch=epoch,
            title=f"Extraction rate vs tries, epoch {epoch}",
            xname="n (samples)",
            yname="fraction of member probes",
        )

    def _roc_records(
        self, epoch: int, members: WindowScores, nonmembers: WindowScores
    ) -> list[loggers.Record]:
        from memcallbacks.metrics.membership import roc_curve

        zlib_m, zlib_n = self._zlib_split()
        loss_m, loss_n = members.loss.numpy(), nonmembers.loss.numpy()
        out: list[loggers.Record] = []
        scores = {
            "loss": (loss_m, loss_n),
            "min_k": (-members.min_k.numpy(), -nonmembers.min_k.numpy()),
            "min_k_pp": (-members.min_k_pp.numpy(), -nonmembers.min_k_pp.numpy()),
            "zlib": (loss_m / zlib_m, loss_n / zlib_n),
        }
        if self._reference_loss is not None:
            ref_m, ref_n = self._reference_split()
            scores["ref"] = (loss_m - ref_m, loss_n - ref_n)
        for score, (a, b) in scores.items():
            a, b = a[np.isfinite(a)], b[np.isfinite(b)]
            if a.size and b.size:
                fpr, tpr, _ = roc_curve(a, b)
                out.append(loggers.RocCurve(f"mem/mia_lm/roc/{score}", fpr, tpr, epoch, title=score))
        return out

    def _top_sequences(self, epoch: int, members: WindowScores) -> loggers.Record:
        """The table of the ``num_top`` most extractable member probes (text only with ``log_secrets``)."""
        assert self.member_indices is not None
        exact, token_match, log_q = members.exact.numpy(), members.token_match.numpy(), members.log_q.numpy()
        long_rows = np.flatnonzero(np.isfinite(exact))
        order = long_rows[np.lexsort((-token_match[long_rows], -log_q[long_rows, 0]))][: self.num_top]
        columns = ["index", "log10_q", "exact", "token_match"]
        if self.log_secrets:
            columns += ["prefix", "true_suffix", "greedy_suffix"]
        rows = []
        for i in order.tolist():
            row: list[Any] = [
                int(self.member_indices[i]),
                float(log_q[i, 0] / math.log(10.0)),
                bool(exact[i] == 1.0),
                float(token_match[i]),
            ]
            if self.log_secrets and self._windows is not None and self._generated is not None:
                window = self._windows[i].tolist()
                row += [
                    self._text(window[: self.prefix_len]),
                    self._text(window[self.prefix_len :]),
                    self._text(self._generated[i].tolist()),
                ]
            rows.append(row)
        return loggers.Table(
            key="mem/extract/top_sequences",
            columns=columns,
            rows=rows,
            epoch=epoch,
            per_sample=True,
            secret=self.log_secrets,
        )


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else math.nan


def _without_generated(scores: WindowScores) -> WindowScores:
    """The scores kept in the history: the generated ids are kept only for the latest evaluation."""
    return dataclasses.replace(scores, generated=scores.generated[:, :0])


def _shard(
    trainer: pl.Trainer, windows: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's contiguous shard of the probes (equal lengths: the last padded by repeating the final probe)."""
    world = distributed.world_size(trainer)
    if world == 1:
        return windows, lengths
    positions = torch.from_numpy(probes.shard_positions(windows.shape[0], world, int(trainer.global_rank)))
    return windows[positions], lengths[positions]


def _gather(trainer: pl.Trainer, scores: WindowScores, total: int) -> WindowScores:
    """Every rank's shard of ``scores``, in probe order: one all-gather of the fields side by side (float64)."""
    fields = scores.fields()
    flat = [value.reshape(value.shape[0], -1) for value in fields.values()]
    gathered = distributed.gather_concat(trainer, torch.cat([f.double() for f in flat], dim=1))[:total]
    out, col = {}, 0
    for (name, value), f in zip(fields.items(), flat):
        rows = gathered[:, col : col + f.shape[1]]  # [total, k]; k may be 0 (no sampling scheme)
        out[name] = rows.reshape(rows.shape[0], *value.shape[1:]).to(value.dtype)
        col += f.shape[1]
    return WindowScores(**out)
