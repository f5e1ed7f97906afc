"""CanaryExposureMonitor: canary exposure during training (The Secret Sharer).

Carlini, Liu, Erlingsson, Kos and Song, "The Secret Sharer: Evaluating and Testing
Unintended Memorization in Neural Networks", USENIX Security 2019. Canaries with random
secrets (:class:`~memcallbacks.CanarySet`) are inserted into the training data a few times
each; every ``every_n_epochs`` this callback scores each canary's secret against other
candidates of the randomness space ``R`` and logs its exposure in bits
(``log2|R| - log2 rank``, docs/canaries.md), exact or extrapolated.

Logged keys (every rank logs the same value; NaN when a score was not finite, never a
value that reads as safe):

=======================================  ==========================================================
``mem/canary/exposure_max``              largest exposure over the canaries (bits, 0..log2|R|)
``mem/canary/exposure_mean``             mean exposure over the canaries
``mem/canary/exposure_mean/r{count}``    mean exposure of the canaries inserted ``count`` times
``mem/canary/rank_min``                  best canary rank in R, exact (1 = the model's favourite
                                         candidate); exact methods and ``hybrid`` only (NaN there
                                         when the search did not find the best canary's rank);
                                         never logged by ``extrapolated``, which ranks in R nothing
``mem/canary/rank_lower_bound``          ``hybrid`` only: proven lower bound on the best canary
                                         rank in R (equal to ``rank_min`` when that is known)
``mem/canary/rank_exact``                canaries whose rank in R is exact
``mem/canary/reference_rank_min``        best rank among the sampled references (1..references+1;
                                         methods with references only): not a rank in R
``mem/canary/saturated``                 canaries at the cap ``log2|R|``
``mem/canary/nonfinite``                 NaN/inf scores met in this evaluation (a diverged model)
``mem/canary/extracted``                 canaries whose secret greedy/beam decoding emits
                                         (``extraction=True`` only)
=======================================  ==========================================================

Files (``<run_dir>/canary/``, rank 0): ``exposure.npz`` with ``epochs [E]`` and ``steps [E]``
(the epoch and global step of each evaluation),
``canary_ids [C]``, ``repetitions [C]``, ``exposure``/``log_perplexity`` ``[E, C]``,
``rank [E, C]`` (float64: rank in R, exact where ``rank_exact [E, C]``, else a lower bound;
NaN for a non-finite score), ``reference_rank [E, C]`` (NaN without references),
``nonfinite [E]`` (``extracted [E, C]`` with extraction), ``space_size``, ``method``
(``"exact"``, ``"extrapolated"`` or ``"hybrid"``), ``strategy`` (the strategy's registry name,
e.g. ``"exact_trie"``), ``strategy_reason`` (why that strategy is not exact; empty when it is) and the
last evaluation's ``reference_scores``. Secrets are not written
there: they are regenerated from the CanarySet's seed; ``secrets.json`` (id -> secret) is written only with
``log_secrets=True``. The checkpoint (``state_dict``) does hold the secrets and references,
so a resumed run scores the same candidates.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import default_collate

from memcallbacks import loggers, rundir
from memcallbacks.callbacks import probes
from memcallbacks.callbacks._base import MemorisationCallback
from memcallbacks.data.canaries import CanarySet
from memcallbacks.data.canary_check import SCAN_LIMIT, CanaryPresence, locate_canaries
from memcallbacks.data.indexed import IndexedDataset
from memcallbacks.lightning import sharded_run
from memcallbacks.lm.canary_rank import (
    EXPOSURE_STRATEGIES,
    ExposureConfig,
    exact_unavailable_reason,
    resolve_exposure_method,
    score_candidates,
)
from memcallbacks.lm.decoding import beam_search
from memcallbacks.lm.scoring import ScoreFn, is_incremental
from memcallbacks.metrics.exposure import ExposureResult, mean_by_repetition
from memcallbacks.utilities.distributed import broadcast_object
from memcallbacks.utilities.validation import (
    check_bool,
    check_choice,
    check_int,
    check_optional_bool,
    check_seed,
)

__all__ = ["CanaryExposureMonitor", "best_exact_rank", "training_data_of"]

_HISTORY_KEYS = ("exposure", "rank", "log_perplexity", "reference_rank")


# strategies that give canaries ranks in R (exact, or with best-first search): they log mem/canary/rank_min
_RANKS_IN_SPACE = frozenset({"exact_list", "exact_trie", "exact", "hybrid"})


def best_exact_rank(rank: np.ndarray, rank_exact: np.ndarray) -> float:
    """The best canary rank in R when it is known exactly, else NaN.

    Known exactly when the smallest exact rank is no larger than every other canary's proven lower
    bound (then no canary can rank better). NaN when a rank is NaN (a non-finite score) or when no
    canary's rank is exact or a canary without an exact rank may rank better.

    Example:
        >>> best_exact_rank(np.array([3.0, 40.0]), np.array([True, False]))
        3.0
        >>> best_exact_rank(np.array([30.0, 4.0]), np.array([True, False]))
        nan
    """
    rank = np.asarray(rank, dtype=np.float64)
    exact = np.asarray(rank_exact, dtype=bool)
    if rank.size == 0 or np.isnan(rank).any() or not exact.any():
        return math.nan
    best = float(np.min(rank[exact]))
    if (~exact).any() and float(np.min(rank[~exact])) < best:
        return math.nan
    return best


# strategy name -> the ``method`` value written to exposure.npz (the file's earlier vocabulary)
_METHOD_FAMILY = {"exact_list": "exact", "exact_trie": "exact", "exact": "exact"}


def training_data_of(trainer: Any) -> tuple[Any, Callable[[int], Any] | None]:
    """The map-style dataset behind the first training DataLoader, and ``index -> collated item``.

    The dataset is unwrapped from :class:`~memcallbacks.IndexedDataset`; the second element applies
    the DataLoader's own ``collate_fn`` to one item (``None`` with PyTorch's default collate), so a
    collate function that tokenises shows the ids the model trains on. ``(None, None)`` without a loader.
    """
    loaders = list(probes.unwrap_loaders(getattr(trainer, "train_dataloader", None)))
    if not loaders:
        return None, None
    loader = loaders[0]
    data = loader.dataset
    base = data.dataset if isinstance(data, IndexedDataset) else data
    collate_fn = getattr(loader, "collate_fn", None)
    if collate_fn is None or collate_fn is default_collate or not hasattr(data, "__getitem__"):
        return base, None
    return base, lambda i: collate_fn([data[i]])


def _methods() -> tuple[str, ...]:
    return ("auto", "exact", *EXPOSURE_STRATEGIES)


def _validate_init(
    canaries: Any,
    method: Any,
    num_references: Any,
    max_exact: Any,
    max_expansions: Any,
    seed: Any,
    score_fn: Any,
    batch_size: Any,
    extraction: Any,
    beam_width: Any,
    progress: Any,
) -> None:
    if not isinstance(canaries, CanarySet):
        raise TypeError(f"`canaries` must be a memcallbacks.CanarySet, got {type(canaries).__name__}")
    check_choice("method", method, _methods())
    for arg, value in (
        ("num_references", num_references),
        ("max_exact", max_exact),
        ("max_expansions", max_expansions),
        ("batch_size", batch_size),
        ("beam_width", beam_width),
    ):
        check_int(arg, value, minimum=1)
    if seed is not None:
        check_seed("seed", seed)
    if score_fn is not None and not callable(score_fn):
        raise TypeError(
            f"`score_fn` must be callable (module, token_ids, target_mask) -> Tensor[B], got {score_fn!r}"
        )
    check_bool("extraction", extraction)
    check_optional_bool("progress", progress)
    if method in ("exact", "exact_list", "exact_trie") and canaries.space_size > max_exact:
        raise ValueError(
            f"method={method!r} scores all {canaries.space_size} candidates, more than `max_exact`={max_exact}; "
            "use method='extrapolated' (or raise `max_exact`)"
        )


def _ids(names: Any, limit: int = 6) -> str:
    names = list(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(str(n) for n in names[:limit]) + more


def _mismatch_message(found: CanaryPresence, n_canaries: int) -> str:
    cid, index = found.mismatched[0]
    if found.compared == "token_ids":
        cause = (
            "the item's token ids do not contain the canary's text as the CanarySet's tokenizer encodes it. "
            "Either the training data is tokenised by another tokenizer than the CanarySet's (the monitor "
            "would score ids the model never saw, and read near 0 bits): build the CanarySet with the "
            "tokenizer that makes the training ids; or the rows are truncated before the canary ends (raise "
            "`max_len`, shorten the format); or the dataset was rebuilt or reordered after `inject`"
        )
    else:
        cause = "the item's text does not contain the canary's text: the dataset was rebuilt or reordered after inject"
    return (
        f"CanaryExposureMonitor: {len(found.mismatched)} training item(s) at the positions `canaries.inject` "
        f"recorded do not hold their canary (first: canary {cid} at index {index}; {len(found.missing)} of "
        f"{n_canaries} canaries affected): {cause}. Build the DataLoader on the dataset `inject` returned. "
        "Pass check_training_data=False to measure anyway"
    )


def _absent_message(found: CanaryPresence, n_canaries: int, data: Any) -> str:
    if found.status == "unchecked":
        why = (
            "no map-style training dataset"
            if data is None or not hasattr(data, "__getitem__")
            else (
                "its items hold neither text nor token ids" + (f"; {found.notes[0]}" if found.notes else "")
            )
        )
        return (
            f"CanaryExposureMonitor could not check that the {n_canaries} canaries are in the training data ({why}); "
            "make sure the training set is `canaries.inject(texts)` tokenised with the CanarySet's tokenizer, or "
            "pass check_training_data=False (warned once; exposure.npz records data_check='unchecked')"
        )
    where = (
        f"in any of the {found.scanned} training items"
        if found.complete
        else f"in the {found.scanned} items read"
    )
    if not found.complete and found.scanned >= SCAN_LIMIT:
        where += (
            f" (the last {SCAN_LIMIT} of the dataset; `inject` records positions, then no scan is needed)"
        )
    return (
        f"CanaryExposureMonitor: {len(found.missing)} of {n_canaries} canaries ({_ids(found.missing)}) were not "
        f"found {where}, compared by {found.compared.replace('_', ' ')}. A canary the model never saw reads "
        "about 1-2 bits: insert them with `train_texts = canaries.inject(train_texts)` before building the "
        "DataLoader, with the CanarySet's tokenizer; check_training_data=False for canaries kept out on purpose "
        "(warned once; exposure.npz records data_check='missing')"
    )


class CanaryExposureMonitor(MemorisationCallback):
    """Logs the exposure of inserted canaries every ``every_n_epochs`` (Carlini et al. 2019).

    The user-side change: build a :class:`~memcallbacks.CanarySet`, insert it into the
    training texts with ``canaries.inject(texts)``, and pass it here. The module must map
    token ids ``[B, T]`` to logits ``[B, T, V]`` (or return ``.logits``), or you pass
    ``score_fn``. A module implementing :class:`memcallbacks.lm.scoring.IncrementalLM` gets the
    shared-prefix fast paths (a trie over the whole space for exact exposure, and exact
    ranks of exposed canaries by best-first search beyond ``max_exact``).

    Every candidate is scored as it is tokenised inside the canary text, so a subword
    tokenizer (byte-level BPE) is handled (see :meth:`CanarySet.candidate_sequences`). The
    methods are the strategies of :mod:`memcallbacks.lm.canary_rank`.

    A diverged model (NaN/inf scores) logs NaN exposure and rank, counts the scores in
    ``mem/canary/nonfinite`` and warns once; training is not stopped here (use
    ``LeakageEarlyStopping``'s finiteness check for that).

    Args:
        canaries: the inserted :class:`~memcallbacks.CanarySet`.
        method: ``"exact"`` ranks each canary among every candidate of the space (allowed
            when ``|R| <= max_exact``; the trie when the module is incremental and characters
            are single tokens, else the list); ``"extrapolated"`` fits a skew-normal to the
            scores of ``num_references`` candidates sampled once at setup (Sec. 4.3), capped
            at ``log2|R|`` and at what the references prove; ``"hybrid"`` adds a budgeted
            best-first search that gives the exposed canaries their exact rank (Sec. 8);
            ``"auto"`` is exact when the space is no larger than the references would be or
            the trie applies with ``|R| <= max_exact``, else hybrid when the module is
            incremental with single-token characters, else extrapolated. Any name registered
            in ``EXPOSURE_STRATEGIES`` (``"exact_list"``, ``"exact_trie"``) is accepted too.
        num_references: sampled candidates for the extrapolation (default 10,000).
        max_exact: the largest space scored exactly (default 10**6).
        max_expansions: best-first node-expansion budget per evaluation, shared by the canaries
            (default 100,000; see :func:`memcallbacks.lm.best_first.ranks_best_first`).
        seed: seed of the reference draw (default ``canaries.seed + 1``).
        score_fn: ``score_fn(module, token_ids [B, T], target_mask [B, T]) -> Tensor[B]``,
            the log-perplexity of the masked (secret) tokens; disables the fast paths.
        batch_size: candidates per forward pass.
        extraction: also decode from the prefix and count canaries whose secret comes out.
        beam_width: beam width of that decoding (1 = greedy); a canary counts as extracted
            when its secret is any of the ``beam_width`` beams.
        every_n_epochs: evaluate every this many epochs.
        every_n_steps: evaluate every this many optimizer steps instead (``trainer.global_step``;
            not at epoch ends); see :class:`~memcallbacks.callbacks._base.MemorisationCallback`.
        evaluate_on_validation: evaluate at the end of every validation run inside ``fit`` instead
            (with ``val_check_interval``, also mid-epoch).
        run_dir: root of the run directory (default ``<trainer.log_dir>/memcallbacks``).
        log_per_sample: send the per-canary table (ids, no secrets) to loggers.
        log_secrets: include the secrets in the table sent to trackers and write
            ``secrets.json`` to the run directory.
        progress: progress bar while scoring (None: when slow and stdout is a terminal).
        check_training_data: at the start of training, look for the canaries in the training data
            (:func:`memcallbacks.data.canary_check.locate_canaries`): at the positions
            ``canaries.inject`` recorded (those items only), else in the last
            :data:`~memcallbacks.data.canary_check.SCAN_LIMIT` items. Items that are token ids must
            hold each canary's text as the CanarySet's tokenizer encodes it; text items its text
            (the DataLoader's ``collate_fn`` is applied when it tokenises). A recorded position whose
            item does not hold its canary (another tokenizer, or a dataset rebuilt after ``inject``)
            raises a ``ValueError``; canaries not found, or data that cannot be read, give a
            warning (once, counted in the checkpoint) and ``data_check`` in ``exposure.npz``.
            ``False`` skips the look (canaries kept out of training on purpose).
        name: tells two monitors in one Trainer apart (e.g. two formats): their checkpoint
            states, the run-directory folder (``canary_<name>``) and the logged keys, which end in
            ``/<name>`` (``mem/canary/exposure_max/<name>``); ``history`` keeps the plain keys.

    Resume: the canaries (format, seed, secrets), ``method``, ``num_references`` and
    ``seed`` define what is measured and must match the checkpoint (else a
    ValueError names the argument and both values); ``every_n_epochs`` and ``run_dir`` may
    change and the history carries over.

    Raises:
        ValueError: bad ``method``, ``num_references``, ``max_exact``, ``max_expansions``,
            ``batch_size``, ``beam_width`` or ``seed``; ``method="exact"`` on a space
            above ``max_exact``; at fit start, a canary longer than the module's ``max_len`` or
            a format whose prefix encodes to no token; at train start (before the first step), a
            training item at a position ``inject`` recorded that does not hold its canary in the
            CanarySet's token ids (``check_training_data``).
        TypeError: ``canaries`` is not a CanarySet, a flag is not a bool; at fit start, the
            module's output is not ``[B, T, V]`` logits and no ``score_fn`` was given.

    Example:
        >>> from memcallbacks import CanarySet, CharTokenizer
        >>> cs = CanarySet("my pin is {secret}.", CharTokenizer(), seed=0)
        >>> monitor = CanaryExposureMonitor(cs, method="extrapolated", num_references=5000)
        >>> # texts = cs.inject(texts); pl.Trainer(callbacks=[monitor]).fit(model, loader)
    """

    subdir = "canary"

    def __init__(
        self,
        canaries: CanarySet,
        *,
        method: str = "auto",
        num_references: int = 10_000,
        max_exact: int = 1_000_000,
        max_expansions: int = 100_000,
        seed: int | None = None,
        score_fn: ScoreFn | None = None,
        batch_size: int = 1024,
        extraction: bool = False,
        beam_width: int = 1,
        every_n_epochs: int = 1,
        every_n_steps: int | None = None,
        evaluate_on_validation: bool = False,
        run_dir: str | os.PathLike[str] | None = None,
        log_per_sample: bool = False,
        log_secrets: bool = False,
        progress: bool | None = None,
        check_training_data: bool = True,
        name: str | None = None,
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
        _validate_init(
            canaries, method, num_references, max_exact, max_expansions, seed, score_fn,
            batch_size, extraction, beam_width, progress,
        )  # fmt: skip
        self.canaries = canaries
        self.method = method
        self.num_references = int(num_references)
        self.seed = canaries.seed + 1 if seed is None else int(seed)
        self.extraction = bool(extraction)
        self.beam_width = int(beam_width)
        self.check_training_data = check_bool("check_training_data", check_training_data)
        self.data_check: CanaryPresence | None = None  # what the fit-start look at the training data found
        self.config = ExposureConfig(score_fn, int(batch_size), int(max_exact), int(max_expansions), progress)
        self.resolved_method: str | None = None
        self.strategy_reason: str | None = None  # why the resolved strategy is not exact (None when it is)
        self._references: list[str] | None = None
        self._epochs: list[int] = []
        self._steps: list[int] = []  # global step of each evaluation (-1: from a checkpoint without steps)
        self._per_canary: dict[str, list[list[float]]] = {k: [] for k in _HISTORY_KEYS}
        self._rank_exact: list[list[bool]] = []
        self._nonfinite: list[int] = []
        self._extracted: list[list[bool]] = []
        self._last_reference_scores: np.ndarray | None = None

    # the scoring settings, read from ``config``
    @property
    def score_fn(self) -> ScoreFn | None:
        return self.config.score_fn

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    @property
    def max_exact(self) -> int:
        return self.config.max_exact

    @property
    def progress(self) -> bool | None:
        return self.config.progress

    # -- identity (resume contract) --------------------------------------------------------
    def _measured_args(self) -> dict[str, Any]:
        cs = self.canaries
        digest = hashlib.sha256(json.dumps(cs.secrets).encode()).hexdigest()[:16]
        return {
            "canary_format": cs.format,
            "canary_seed": cs.seed,
            "space_size": int(cs.space_size),
            "method": self.method,
            "num_references": self.num_references,
            "seed": self.seed,
            "secrets_digest": digest,  # the secrets themselves never go into a message
        }

    # -- setup ---------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)  # the run id and run directory (MemorisationCallback)
        cs = self.canaries
        if len(cs.prefix_ids) == 0:
            raise ValueError(
                f"`format`={cs.format!r}: the text before {{secret}} encodes to no token, so the secret's first "
                "token has nothing to be conditioned on; add a prefix or use a tokenizer with a BOS token"
            )
        max_len = getattr(pl_module, "max_len", None)
        if isinstance(max_len, numbers.Integral) and not isinstance(max_len, bool):
            longest = max(len(c.token_ids) for c in cs)
            if longest > max_len:
                raise ValueError(
                    f"`canaries`: a canary is {longest} tokens long, more than the model's context "
                    f"(`max_len`={int(max_len)}); shorten the format or the secret"
                )
        # sharded strategies run every forward as a collective of the whole module: no adapter there
        self._use_adapter = not sharded_run(trainer, pl_module)
        module = self._scoring_module(pl_module)
        # fails early, with a hint to pass score_fn, when the module's output is not [B, T, V]
        score_candidates(module, cs, cs.secrets, dataclasses.replace(self.config, progress=False))
        if self.extraction and not is_incremental(module):
            try:  # decoding needs [B, T, V] logits: check now rather than after an epoch
                beam_search(module, cs.prefix_ids, 1, width=1)
            except TypeError as e:
                raise TypeError(f"`extraction=True` decodes from the module's logits: {e}") from None
        self.resolved_method = self._resolve_method(module)
        if EXPOSURE_STRATEGIES[self.resolved_method].needs_references and self._references is None:
            self._references = cs.sample_references(self.num_references, seed=self.seed)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.check_training_data:  # the training DataLoader exists from here on (not at fit start)
            self.data_check = self._check_training_data(trainer)

    def _check_training_data(self, trainer: pl.Trainer) -> CanaryPresence:
        """Look for the canaries in the training data; raise on a wrong position, warn when not found.

        Raises:
            ValueError: an item at a position ``canaries.inject`` recorded does not hold its canary.
        """
        cs = self.canaries
        data, collate = training_data_of(trainer)
        found = locate_canaries(cs, data, injected=cs.injected_indices or None, collate=collate)
        if found.status == "mismatch":
            raise ValueError(_mismatch_message(found, len(cs)))
        if found.status != "ok":
            self.warn_once("canaries_not_in_training_data", _absent_message(found, len(cs), data))
        return found

    def _scoring_module(self, pl_module: Any) -> Any:
        """The module scored: a Hugging Face causal LM (or a LightningModule holding one as an
        attribute) is wrapped in :class:`memcallbacks.lm.hf.HFIncrementalLM`, so the trie and the
        best-first search reuse its KV cache; anything else (or a custom ``score_fn``) as is."""
        if (
            self.score_fn is not None
            or is_incremental(pl_module)
            or not self.__dict__.get("_use_adapter", True)
        ):
            return pl_module
        from memcallbacks.lm.hf import as_incremental

        return as_incremental(pl_module) or pl_module

    def _resolve_method(self, pl_module: Any) -> str:
        method = resolve_exposure_method(
            self.method, pl_module, self.canaries, self.config, num_references=self.num_references
        )
        exact = method in ("exact_trie", "exact_list")
        self.strategy_reason = (
            None if exact else exact_unavailable_reason(pl_module, self.canaries, self.config)
        )
        return method

    # -- scoring -------------------------------------------------------------------------
    def compute(self, pl_module: Any) -> ExposureResult:
        """Scores the canaries now and returns an :class:`~memcallbacks.metrics.ExposureResult`.

        Usable outside a Trainer (after ``on_fit_start`` or with ``method`` not ``"auto"``).
        """
        pl_module = self._scoring_module(pl_module)
        method = self.resolved_method or self._resolve_method(pl_module)
        strategy = EXPOSURE_STRATEGIES[method]
        if strategy.needs_references and self._references is None:
            self._references = self.canaries.sample_references(self.num_references, seed=self.seed)
        return strategy.compute(pl_module, self.canaries, self.config, self._references)

    def _extract(self, module: Any) -> np.ndarray:
        module = self._scoring_module(module)
        cs = self.canaries
        found = np.zeros(len(cs), dtype=bool)
        # decode from the tokens before each secret's span, as the training text has them (subword
        # tokenizers may merge the prefix's end into the secret), for as many tokens as the span holds
        groups: dict[tuple[tuple[int, ...], int], list[int]] = {}
        for i, c in enumerate(cs):
            groups.setdefault(
                (tuple(c.token_ids[: c.secret_start]), c.secret_end - c.secret_start), []
            ).append(i)
        for (context, steps), members in groups.items():
            beams = set(beam_search(module, list(context), steps, width=self.beam_width))
            for i in members:
                c = cs[i]
                found[i] = tuple(c.token_ids[c.secret_start : c.secret_end]) in beams
        return found

    # -- the evaluation cycle (see MemorisationCallback) ------------------------------------
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[ExposureResult, Any]:
        """Score the canaries (rank 0, or every rank when the parameters are sharded) and keep the result."""
        # FSDP/DeepSpeed shard the parameters: every forward is a collective, so every rank scores
        # (rank 0's result is still the one broadcast); under DDP rank 0 alone scores
        sharded = sharded_run(trainer, pl_module)
        payload = None
        if trainer.is_global_zero or sharded:
            payload = (self.compute(pl_module), self._extract(pl_module) if self.extraction else None)
        payload = broadcast_object(trainer, payload)
        assert payload is not None
        result, extracted = payload
        epoch = int(trainer.current_epoch)
        self._steps.append(int(trainer.global_step))
        self._record(epoch, result, extracted)
        if result.nonfinite:
            self.warn_once(
                "nonfinite",
                f"CanaryExposureMonitor: {result.nonfinite} canary/candidate scores are NaN or infinite at epoch "
                f"{epoch} (a diverged model?); exposure and rank are logged as NaN and counted in "
                "mem/canary/nonfinite (warned once)",
            )
        return result, extracted

    def metrics(self, result: tuple[ExposureResult, Any]) -> dict[str, float]:
        return self._metrics(*result)

    def write_files(self, result: tuple[ExposureResult, Any]) -> None:
        """``exposure.npz`` (and the secrets, with ``log_secrets=True``), in the background."""
        secrets = {c.id: c.secret for c in self.canaries} if self.log_secrets else None
        self.write_in_background(rundir.write_exposure, self.run_dir, self._arrays(), secrets)

    def _record(self, epoch: int, result: ExposureResult, extracted: np.ndarray | None) -> None:
        n = len(self.canaries)
        self._epochs.append(epoch)
        ref_rank = result.reference_rank if result.reference_rank is not None else np.full(n, np.nan)
        for key, values in (
            ("exposure", result.exposure),
            ("rank", result.rank),
            ("log_perplexity", result.log_perplexity),
            ("reference_rank", ref_rank),
        ):
            self._per_canary[key].append([float(v) for v in values])
        self._rank_exact.append([bool(v) for v in result.rank_exact])
        self._nonfinite.append(int(result.nonfinite))
        if extracted is not None:
            self._extracted.append([bool(v) for v in extracted])
        if result.reference_scores is not None:
            self._last_reference_scores = np.asarray(result.reference_scores, dtype=np.float32)

    def _metrics(self, result: ExposureResult, extracted: np.ndarray | None = None) -> dict[str, float]:
        exposure = result.exposure
        reps = np.array([c.repetitions for c in self.canaries])
        metrics = {
            "mem/canary/exposure_max": float(np.max(exposure)),  # NaN when any canary is NaN
            "mem/canary/exposure_mean": float(np.mean(exposure)),
            "mem/canary/rank_exact": float(np.count_nonzero(result.rank_exact)),
            "mem/canary/saturated": float(result.saturated),
            "mem/canary/nonfinite": float(result.nonfinite),
        }
        # one meaning per key: ranks in R (strategies that rank in R) apart from ranks among the references
        strategy = result.method if result.method in EXPOSURE_STRATEGIES else self.resolved_method
        if strategy in _RANKS_IN_SPACE or (result.rank_exact.size and result.rank_exact.all()):
            metrics["mem/canary/rank_min"] = best_exact_rank(result.rank, result.rank_exact)
        if strategy == "hybrid":
            metrics["mem/canary/rank_lower_bound"] = (
                float(np.min(result.rank)) if result.rank.size else math.nan
            )
        if result.reference_rank is not None:
            metrics["mem/canary/reference_rank_min"] = float(np.min(result.reference_rank))
        for r, mean in mean_by_repetition(exposure, reps).items():
            metrics[f"mem/canary/exposure_mean/r{r}"] = mean
        if extracted is not None:
            metrics["mem/canary/extracted"] = float(np.count_nonzero(extracted))
        return metrics

    def _arrays(self) -> dict[str, Any]:
        cs = self.canaries
        n = len(cs)
        used = self.resolved_method or self.method

        def matrix(key: str) -> np.ndarray:
            return np.array(self._per_canary[key], dtype=np.float64).reshape(-1, n)

        arrays: dict[str, Any] = {
            "epochs": np.array(self._epochs, dtype=np.int64),
            "steps": np.array(self._steps, dtype=np.int64),
            "canary_ids": np.array(cs.ids, dtype=str),
            "repetitions": np.array([c.repetitions for c in cs], dtype=np.int64),
            "exposure": matrix("exposure"),
            "rank": matrix("rank"),
            "rank_exact": np.array(self._rank_exact, dtype=bool).reshape(-1, n),
            "reference_rank": matrix("reference_rank"),
            "log_perplexity": matrix("log_perplexity"),
            "nonfinite": np.array(self._nonfinite, dtype=np.int64),
            "space_size": np.array(float(cs.space_size)),
            "log2_space_size": np.array(cs.log2_space_size),
            # ``method`` keeps its earlier values ("exact" / "extrapolated"; "hybrid" is new);
            # ``strategy`` names the strategy that computed the values
            # the method actually used: "auto" resolved (to "extrapolated" when it fell back)
            "method": np.array(_METHOD_FAMILY.get(used, used)),
            "strategy": np.array(used),
            "strategy_reason": np.array(self.__dict__.get("strategy_reason") or ""),  # "" when exact
            # the fit-start look for the canaries in the training data: ok, missing, unchecked or off
            "data_check": np.array(self._data_check_status()),
        }
        if cs.injected_indices:  # where the canaries sit in the training set (for the report's data map)
            arrays["injected_index"] = np.array(
                [i for c in cs for i in cs.injected_indices.get(c.id, [])], dtype=np.int64
            )
            arrays["injected_canary"] = np.array(
                [c.id for c in cs for _ in cs.injected_indices.get(c.id, [])], dtype=str
            )
        if self.extraction:
            arrays["extracted"] = np.array(self._extracted, dtype=bool).reshape(-1, n)
        if self._last_reference_scores is not None:
            arrays["reference_scores"] = np.asarray(self._last_reference_scores, dtype=np.float32)
        return arrays

    def _data_check_status(self) -> str:
        check = self.__dict__.get("data_check")
        if check is not None:
            return check.status
        return "off" if not self.__dict__.get("check_training_data", True) else "not_run"

    def records(self, result: tuple[ExposureResult, Any]) -> list[loggers.Record]:
        """Exposure against repetitions per evaluation, and the per-canary table of this evaluation.

        One line per evaluation: ``"epoch <e>"`` under the epoch schedule, ``"step <s>"`` under a step
        or validation schedule (several evaluations share an epoch there).
        """
        epoch = self.last_epoch_done
        cs = self.canaries
        reps = np.array([c.repetitions for c in cs])
        counts = sorted(set(reps.tolist()))
        by_step = self.schedule != "epochs"
        labels = [f"step {s}" for s in self._steps] if by_step else [f"epoch {e}" for e in self._epochs]
        series = {
            label: list(mean_by_repetition(exposures, reps).values())
            for label, exposures in zip(labels, self._per_canary["exposure"])
        }
        series_record = loggers.LineSeries(
            key="mem/canary/exposure_vs_repetitions",
            xs=[float(r) for r in counts],
            ys=series,
            epoch=epoch,
            title="Canary exposure vs insertions",
            xname="repetitions",
            yname="exposure (bits)",
        )
        columns = ["canary", "repetitions", "exposure", "rank", "rank_exact", "log_perplexity"]
        if self.extraction:
            columns.append("extracted")
        if self.log_secrets:
            columns.append("secret")
        rows = []
        for i, c in enumerate(cs):
            row: list[Any] = [
                c.id,
                c.repetitions,
                self._per_canary["exposure"][-1][i],
                self._per_canary["rank"][-1][i],
                self._rank_exact[-1][i],
                self._per_canary["log_perplexity"][-1][i],
            ]
            if self.extraction:
                row.append(self._extracted[-1][i])
            if self.log_secrets:
                row.append(c.secret)
            rows.append(row)
        table = loggers.Table(
            key="mem/canary/canaries",
            columns=columns,
            rows=rows,
            epoch=epoch,
            per_sample=not self.log_secrets,
            secret=self.log_secrets,
        )
        return [series_record, table]

    # -- results & state -----------------------------------------------------------------
    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """Recorded arrays as in ``exposure.npz``: ``epochs [E]``, ``exposure``/``rank`` ``[E, C]``, ..."""
        return self._arrays()

    @property
    def references(self) -> list[str] | None:
        """The sampled reference candidates (methods with references), fixed at setup."""
        return None if self._references is None else list(self._references)

    def state_dict(self) -> dict[str, Any]:
        ref_scores = self._last_reference_scores
        return {
            **self.base_state(),
            "canaries": self.canaries.state_dict(),
            "references": None if self._references is None else list(self._references),
            "resolved_method": self.resolved_method,
            "epochs": list(self._epochs),
            "steps": list(self._steps),
            **{key: [list(r) for r in self._per_canary[key]] for key in _HISTORY_KEYS},
            "rank_exact": [list(r) for r in self._rank_exact],
            "nonfinite": list(self._nonfinite),
            "extracted": [list(r) for r in self._extracted],
            "reference_scores": None
            if ref_scores is None or ref_scores.size > 100_000
            else [float(v) for v in ref_scores.tolist()],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.load_base_state(state_dict)  # raises when a measured argument differs
        saved = state_dict.get("canaries")
        if saved is not None:
            if list(saved.get("secrets", [])) != self.canaries.secrets:  # a checkpoint without "measured"
                raise ValueError(
                    "CanaryExposureMonitor: the checkpoint's canaries differ from the CanarySet passed in "
                    f"(checkpoint seed {saved.get('seed')!r}, this one {self.canaries.seed!r}; format "
                    f"{saved.get('format')!r} vs {self.canaries.format!r}); pass the CanarySet the run was "
                    "started with, or start a new run (no `ckpt_path`)"
                )
            self.canaries.load_state_dict(saved)
        refs = state_dict.get("references")
        self._references = None if refs is None else [str(r) for r in refs]
        saved_method = state_dict.get("resolved_method")
        if saved_method in EXPOSURE_STRATEGIES:  # older checkpoints said "exact": resolved again at fit start
            self.resolved_method = saved_method
        self._epochs = [int(e) for e in state_dict.get("epochs", [])]
        n_epochs = len(self._epochs)
        self._steps = [int(s) for s in state_dict.get("steps", [-1] * n_epochs)]
        n = len(self.canaries)
        for key in _HISTORY_KEYS:
            rows = state_dict.get(key) or [[float("nan")] * n for _ in range(n_epochs)]
            self._per_canary[key] = [[float(v) for v in row] for row in rows]
        default_exact = [[self.resolved_method in ("exact_list", "exact_trie", "exact")] * n] * n_epochs
        self._rank_exact = [[bool(v) for v in row] for row in state_dict.get("rank_exact", default_exact)]
        self._nonfinite = [int(v) for v in state_dict.get("nonfinite", [0] * n_epochs)]
        self._extracted = [[bool(v) for v in row] for row in state_dict.get("extracted", [])]
        ref_scores = state_dict.get("reference_scores")
        self._last_reference_scores = None if ref_scores is None else np.asarray(ref_scores, dtype=np.float32)
