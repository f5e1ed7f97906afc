"""CanaryExposureMonitor: canary exposure during training (The Secret Sharer).

Carlini, Liu, Erlingsson, Kos and Song, "The Secret Sharer: Evaluating and Testing
Unintended Memorization in Neural Networks", USENIX Security 2019. Canaries with random
secrets (:class:`~memcallbacks.CanarySet`) are inserted into the training data a few times
each; every ``every_n_epochs`` this callback scores each canary's secret against other
candidates of the randomness space ``R`` and logs its exposure in bits
(``log2|R| - log2 rank``, DESIGN.md section 3), exact or extrapolated.

Logged keys (every rank logs the same value):

=====================================  ==========================================================
``mem/canary/exposure_max``            largest exposure over the canaries (bits, 0..log2|R|)
``mem/canary/exposure_mean``           mean exposure over the canaries
``mem/canary/exposure_mean/r{count}``  mean exposure of the canaries inserted ``count`` times
``mem/canary/rank_min``                best rank of a canary (1 = the model's favourite candidate);
                                       among all of R (exact) or among the references (extrapolated)
``mem/canary/saturated``               canaries at the cap ``log2|R|``
``mem/canary/extracted``               canaries whose secret greedy/beam decoding emits
                                       (``extraction=True`` only)
=====================================  ==========================================================

Files (``<run_dir>/canary/``, rank 0): ``exposure.npz`` with ``epochs [E]``,
``canary_ids [C]``, ``repetitions [C]``, ``exposure``/``rank``/``log_perplexity`` ``[E, C]``
(``extracted [E, C]`` with extraction), ``space_size``, ``method`` and the last evaluation's
``reference_scores``. Secrets are not written there: they are regenerated from the
CanarySet's seed; ``secrets.json`` (id -> secret) is written only with ``log_secrets=True``.
The checkpoint (``state_dict``) does hold the secrets and references, so a resumed run
scores the same candidates.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl

from memcallbacks import _io, trackers
from memcallbacks._dist import broadcast_object
from memcallbacks.callbacks._base import MemorisationCallback
from memcallbacks.data.canaries import CanarySet
from memcallbacks.metrics.exposure import (
    exposure_extrapolated,
    exposure_from_rank,
    exposure_rank,
    exposure_saturated,
    fit_skewnorm,
)
from memcallbacks.scoring import (
    ScoreFn,
    beam_search,
    is_incremental,
    score_sequences,
    score_shared_prefix,
    score_space_trie,
)

__all__ = ["CanaryExposureMonitor"]

_METHODS = ("auto", "exact", "extrapolated")
# strategies whose forward pass needs every rank (parameters sharded across ranks)
_SHARDED_STRATEGIES = frozenset({"FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy"})


class CanaryExposureMonitor(MemorisationCallback):
    """Logs the exposure of inserted canaries every ``every_n_epochs`` (Carlini et al. 2019).

    The user-side change: build a :class:`~memcallbacks.CanarySet`, insert it into the
    training texts with ``canaries.inject(texts)``, and pass it here. The module must map
    token ids ``[B, T]`` to logits ``[B, T, V]`` (or return ``.logits``), or you pass
    ``score_fn``. A module implementing :class:`memcallbacks.scoring.IncrementalLM` gets the
    shared-prefix fast paths (a trie over the whole space for exact exposure).

    Args:
        canaries: the inserted :class:`~memcallbacks.CanarySet`.
        method: ``"exact"`` ranks each canary among every candidate of the space (allowed
            when ``|R| <= max_exact``); ``"extrapolated"`` fits a skew-normal to the scores
            of ``num_references`` candidates sampled once at setup (Sec. 4.3) and caps the
            result at ``log2|R|``; ``"auto"`` is exact when the space is no larger than the
            references would be, or when the module is incremental and ``|R| <= max_exact``,
            else extrapolated.
        num_references: sampled candidates for the extrapolation (default 10,000).
        max_exact: the largest space scored exactly (default 10**6).
        reference_seed: seed of the reference draw (default ``canaries.seed + 1``).
        score_fn: ``score_fn(module, token_ids [B, T], target_mask [B, T]) -> Tensor[B]``,
            the log-perplexity of the masked (secret) tokens; disables the fast paths.
        batch_size: candidates per forward pass.
        extraction: also decode from the prefix and count canaries whose secret comes out.
        beam_width: beam width of that decoding (1 = greedy); a canary counts as extracted
            when its secret is any of the ``beam_width`` beams.
        every_n_epochs: evaluate every this many epochs.
        run_dir: root of the run directory (default ``<trainer.log_dir>/memcallbacks``).
        log_per_sample: send the per-canary table (ids, no secrets) to trackers.
        log_secrets: include the secrets in the table sent to trackers and write
            ``secrets.json`` to the run directory.
        progress: progress bar while scoring (None: when slow and stdout is a terminal).

    Raises:
        ValueError: bad ``method``, ``num_references``, ``max_exact``, ``batch_size`` or
            ``beam_width``; ``method="exact"`` on a space above ``max_exact``; at fit start,
            a canary longer than the module's ``max_len`` or a format whose prefix encodes
            to no token.
        TypeError: ``canaries`` is not a CanarySet; at fit start, the module's output is not
            ``[B, T, V]`` logits and no ``score_fn`` was given.

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
        reference_seed: int | None = None,
        score_fn: ScoreFn | None = None,
        batch_size: int = 1024,
        extraction: bool = False,
        beam_width: int = 1,
        every_n_epochs: int = 1,
        run_dir: Any = None,
        log_per_sample: bool = False,
        log_secrets: bool = False,
        progress: bool | None = None,
    ) -> None:
        super().__init__(
            every_n_epochs=every_n_epochs,
            run_dir=run_dir,
            log_per_sample=log_per_sample,
            log_secrets=log_secrets,
        )
        if not isinstance(canaries, CanarySet):
            raise TypeError(f"`canaries` must be a memcallbacks.CanarySet, got {type(canaries).__name__}")
        if method not in _METHODS:
            raise ValueError(f"`method` can be {', '.join(_METHODS)}, got {method!r}")
        for name, value in (
            ("num_references", num_references),
            ("max_exact", max_exact),
            ("batch_size", batch_size),
            ("beam_width", beam_width),
        ):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}")
        if score_fn is not None and not callable(score_fn):
            raise TypeError(
                f"`score_fn` must be callable (module, token_ids, target_mask) -> Tensor[B], got {score_fn!r}"
            )
        if method == "exact" and canaries.space_size > max_exact:
            raise ValueError(
                f"method='exact' scores all {canaries.space_size} candidates, more than `max_exact`={max_exact}; "
                "use method='extrapolated' (or raise `max_exact`)"
            )
        self.canaries = canaries
        self.method = method
        self.num_references = int(num_references)
        self.max_exact = int(max_exact)
        self.reference_seed = canaries.seed + 1 if reference_seed is None else int(reference_seed)
        self.score_fn = score_fn
        self.batch_size = int(batch_size)
        self.extraction = bool(extraction)
        self.beam_width = int(beam_width)
        self.progress = progress
        self.resolved_method: str | None = None
        self._references: list[str] | None = None
        self._epochs: list[int] = []
        self._history: dict[str, list[list[float]]] = {"exposure": [], "rank": [], "log_perplexity": []}
        self._extracted: list[list[bool]] = []
        self._last_reference_scores: np.ndarray | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            format=self.canaries.format,
            seed=self.canaries.seed,
            method=self.method,
            space=self.canaries.space_size,
        )

    # -- setup ---------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
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
        # fails early, with a hint to pass score_fn, when the module's output is not [B, T, V]
        self._score_list(pl_module, [c.secret for c in cs], progress=False)
        if self.extraction and not is_incremental(pl_module):
            try:  # decoding needs [B, T, V] logits: check now rather than after an epoch
                beam_search(pl_module, cs.prefix_ids, 1, width=1)
            except TypeError as e:
                raise TypeError(f"`extraction=True` decodes from the module's logits: {e}") from None
        self.resolved_method = self._resolve_method(pl_module)
        if self.resolved_method == "extrapolated" and self._references is None:
            self._references = cs.sample_references(self.num_references, seed=self.reference_seed)

    def _trie_ok(self, pl_module: Any) -> bool:
        return (
            self.score_fn is None and is_incremental(pl_module) and self.canaries.char_token_ids() is not None
        )

    def _resolve_method(self, pl_module: Any) -> str:
        if self.method != "auto":
            return self.method
        space = self.canaries.space_size
        if space <= self.num_references + len(self.canaries):
            return "exact"
        if space <= self.max_exact and self._trie_ok(pl_module):
            return "exact"
        return "extrapolated"

    # -- scoring -------------------------------------------------------------------------
    def _score_list(self, module: Any, secrets: Sequence[str], *, progress: bool | None) -> np.ndarray:
        cs = self.canaries
        secret_ids = [cs.encode_secret(s) for s in secrets]
        prefix = cs.prefix_ids
        if self.score_fn is None and is_incremental(module) and len({len(s) for s in secret_ids}) == 1:
            return score_shared_prefix(
                module,
                prefix,
                np.array(secret_ids, dtype=np.int64),
                batch_size=max(self.batch_size, 4096),
                progress=progress,
            )
        return score_sequences(
            module, [prefix + s for s in secret_ids], len(prefix), score_fn=self.score_fn,
            batch_size=self.batch_size, progress=progress,
        )  # fmt: skip

    def compute(self, pl_module: Any) -> dict[str, Any]:
        """Scores the canaries now and returns per-canary arrays (exposure, rank, log_perplexity).

        Usable outside a Trainer (after ``on_fit_start`` or with ``method`` not ``"auto"``).
        """
        cs = self.canaries
        method = self.resolved_method or self._resolve_method(pl_module)
        space = cs.space_size
        reference_scores: np.ndarray
        if method == "exact":
            chars = cs.char_token_ids()
            if self._trie_ok(pl_module) and chars is not None:
                all_scores = score_space_trie(
                    pl_module,
                    cs.prefix_ids,
                    chars,
                    cs.length or 0,
                    batch_size=max(self.batch_size, 16384),
                    progress=self.progress,
                )
            else:
                all_scores = self._score_list(
                    pl_module, cs.enumerate_candidates(self.max_exact), progress=self.progress
                )
            canary_scores = all_scores[cs.candidate_index_array()]
            # rank among all of R, ties against the canary: #(candidates <= score), itself included
            rank = np.searchsorted(np.sort(all_scores), canary_scores, side="right").astype(np.int64)
            exposure = np.asarray(exposure_from_rank(rank, space), dtype=np.float64).reshape(-1)
            reference_scores = all_scores
        else:
            if self._references is None:
                self._references = cs.sample_references(self.num_references, seed=self.reference_seed)
            scores = self._score_list(pl_module, [*cs.secrets, *self._references], progress=self.progress)
            canary_scores, reference_scores = scores[: len(cs)], scores[len(cs) :]
            rank = exposure_rank(canary_scores, reference_scores)
            if np.ptp(reference_scores) == 0:  # every candidate alike: nothing memorised
                exposure = np.where(canary_scores < reference_scores[0], math.log2(space), 0.0)
            else:
                exposure = exposure_extrapolated(
                    canary_scores, fit=fit_skewnorm(reference_scores), space_size=space
                )
        out: dict[str, Any] = {
            "exposure": np.asarray(exposure, dtype=np.float64),
            "rank": np.asarray(rank, dtype=np.int64),
            "log_perplexity": np.asarray(canary_scores, dtype=np.float64),
            "saturated": exposure_saturated(exposure, space),
            "method": method,
        }
        if method != "exact" or space <= 100_000:
            out["reference_scores"] = np.asarray(reference_scores, dtype=np.float32)
        if self.extraction:
            out["extracted"] = self._extract(pl_module)
        return out

    def _extract(self, module: Any) -> np.ndarray:
        cs = self.canaries
        found = np.zeros(len(cs), dtype=bool)
        by_length: dict[int, list[int]] = {}
        for i, c in enumerate(cs):
            by_length.setdefault(c.secret_end - c.secret_start, []).append(i)
        for steps, members in by_length.items():
            beams = set(beam_search(module, cs.prefix_ids, steps, width=self.beam_width))
            for i in members:
                c = cs[i]
                found[i] = tuple(c.token_ids[c.secret_start : c.secret_end]) in beams
        return found

    # -- epoch end -----------------------------------------------------------------------
    def on_memorisation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.is_due(trainer):
            return
        # FSDP/DeepSpeed shard the parameters: every forward is a collective, so every rank scores
        # (rank 0's result is still the one broadcast); under DDP rank 0 alone scores
        sharded = type(trainer.strategy).__name__ in _SHARDED_STRATEGIES
        result = self.compute(pl_module) if trainer.is_global_zero or sharded else None
        result = broadcast_object(trainer, result)
        assert result is not None
        epoch = int(trainer.current_epoch)
        self._epochs.append(epoch)
        for key in self._history:
            self._history[key].append([float(v) for v in result[key]])
        if self.extraction:
            self._extracted.append([bool(v) for v in result["extracted"]])
        self._last_reference_scores = result.get("reference_scores")
        self.log_metrics(pl_module, self._metrics(result))
        if trainer.is_global_zero:
            self._save()
        self._emit_records(trainer, epoch)

    def _metrics(self, result: dict[str, Any]) -> dict[str, float]:
        exposure = result["exposure"]
        reps = np.array([c.repetitions for c in self.canaries])
        metrics = {
            "mem/canary/exposure_max": float(exposure.max()),
            "mem/canary/exposure_mean": float(exposure.mean()),
            "mem/canary/rank_min": float(result["rank"].min()),
            "mem/canary/saturated": float(result["saturated"]),
        }
        for r in sorted(set(reps.tolist())):
            metrics[f"mem/canary/exposure_mean/r{r}"] = float(exposure[reps == r].mean())
        if self.extraction:
            metrics["mem/canary/extracted"] = float(np.count_nonzero(result["extracted"]))
        return metrics

    def _arrays(self) -> dict[str, Any]:
        cs = self.canaries
        arrays: dict[str, Any] = {
            "epochs": np.array(self._epochs, dtype=np.int64),
            "canary_ids": np.array(cs.ids, dtype=str),
            "repetitions": np.array([c.repetitions for c in cs], dtype=np.int64),
            "exposure": np.array(self._history["exposure"], dtype=np.float64).reshape(-1, len(cs)),
            "rank": np.array(self._history["rank"], dtype=np.int64).reshape(-1, len(cs)),
            "log_perplexity": np.array(self._history["log_perplexity"], dtype=np.float64).reshape(
                -1, len(cs)
            ),
            "space_size": np.array(float(cs.space_size)),
            "log2_space_size": np.array(cs.log2_space_size),
            "method": np.array(self.resolved_method or self.method),
        }
        if cs.injected_indices:  # where the canaries sit in the training set (for the report's data map)
            arrays["injected_index"] = np.array(
                [i for c in cs for i in cs.injected_indices.get(c.id, [])], dtype=np.int64
            )
            arrays["injected_canary"] = np.array(
                [c.id for c in cs for _ in cs.injected_indices.get(c.id, [])], dtype=str
            )
        if self.extraction:
            arrays["extracted"] = np.array(self._extracted, dtype=bool).reshape(-1, len(cs))
        if self._last_reference_scores is not None:
            arrays["reference_scores"] = np.asarray(self._last_reference_scores, dtype=np.float32)
        return arrays

    def _save(self) -> None:
        _io.save_npz(self.run_dir / "exposure.npz", **self._arrays())
        if self.log_secrets:
            _io.save_json(self.run_dir / "secrets.json", {c.id: c.secret for c in self.canaries})

    def _emit_records(self, trainer: pl.Trainer, epoch: int) -> None:
        cs = self.canaries
        reps = np.array([c.repetitions for c in cs])
        counts = sorted(set(reps.tolist()))
        series = {}
        for e, exposures in zip(self._epochs, self._history["exposure"]):
            values = np.asarray(exposures)
            series[f"epoch {e}"] = [float(values[reps == r].mean()) for r in counts]
        self.emit(
            trainer,
            trackers.LineSeries(
                key="mem/canary/exposure_vs_repetitions",
                xs=[float(r) for r in counts],
                ys=series,
                epoch=epoch,
                title="Canary exposure vs insertions",
                xname="repetitions",
                yname="exposure (bits)",
            ),
        )
        columns = ["canary", "repetitions", "exposure", "rank", "log_perplexity"]
        if self.extraction:
            columns.append("extracted")
        if self.log_secrets:
            columns.append("secret")
        rows = []
        for i, c in enumerate(cs):
            row: list[Any] = [
                c.id,
                c.repetitions,
                self._history["exposure"][-1][i],
                int(self._history["rank"][-1][i]),
                self._history["log_perplexity"][-1][i],
            ]
            if self.extraction:
                row.append(self._extracted[-1][i])
            if self.log_secrets:
                row.append(c.secret)
            rows.append(row)
        self.emit(
            trainer,
            trackers.Table(
                key="mem/canary/canaries",
                columns=columns,
                rows=rows,
                epoch=epoch,
                per_sample=not self.log_secrets,
                secret=self.log_secrets,
            ),
        )

    # -- results & state -----------------------------------------------------------------
    @property
    def history(self) -> dict[str, np.ndarray]:
        """Recorded arrays: ``epochs [E]``, ``exposure``/``rank``/``log_perplexity`` ``[E, C]``, ..."""
        return self._arrays()

    @property
    def references(self) -> list[str] | None:
        """The sampled reference candidates (extrapolated method), fixed at setup."""
        return None if self._references is None else list(self._references)

    def state_dict(self) -> dict[str, Any]:
        return {
            **self.base_state(),
            "canaries": self.canaries.state_dict(),
            "references": None if self._references is None else list(self._references),
            "resolved_method": self.resolved_method,
            "epochs": list(self._epochs),
            "exposure": [list(r) for r in self._history["exposure"]],
            "rank": [list(r) for r in self._history["rank"]],
            "log_perplexity": [list(r) for r in self._history["log_perplexity"]],
            "extracted": [list(r) for r in self._extracted],
            "reference_scores": None
            if self._last_reference_scores is None
            else [float(v) for v in np.asarray(self._last_reference_scores).tolist()]
            if self._last_reference_scores.size <= 100_000
            else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.load_base_state(state_dict)
        saved = state_dict.get("canaries")
        if saved is not None:
            if list(saved.get("secrets", [])) != self.canaries.secrets:
                warnings.warn(
                    "CanaryExposureMonitor: the checkpoint's canaries differ from the CanarySet passed in "
                    "(another seed or format?); scoring the checkpoint's canaries",
                    stacklevel=2,
                )
            self.canaries.load_state_dict(saved)
        refs = state_dict.get("references")
        self._references = None if refs is None else [str(r) for r in refs]
        self.resolved_method = state_dict.get("resolved_method", self.resolved_method)
        self._epochs = [int(e) for e in state_dict.get("epochs", [])]
        for key in self._history:
            self._history[key] = [[float(v) for v in row] for row in state_dict.get(key, [])]
        self._extracted = [[bool(v) for v in row] for row in state_dict.get("extracted", [])]
        ref_scores = state_dict.get("reference_scores")
        self._last_reference_scores = None if ref_scores is None else np.asarray(ref_scores, dtype=np.float32)
