"""One-run privacy audit: an empirical lower bound on the epsilon of the training run being watched.

Implements the black-box audit of Steinke, Nasr and Jagielski, "Privacy Auditing with One (1)
Training Run", NeurIPS 2023 (their Algorithm 1 with the analysis of Theorems 3.1 and 5.2, see
:mod:`memcallbacks.metrics.audit`):

1. ``m`` *audit canaries* are chosen before training: data points (a map-style dataset of ``m``
   items) or token-sequence canaries (a :class:`~memcallbacks.data.canaries.CanarySet`).
2. Each canary is included in the training set independently with probability 1/2, by a draw
   from ``numpy.random.default_rng(seed)`` made when the monitor is built
   (:attr:`PrivacyAuditMonitor.included`). The monitor hands out the included subset
   (:meth:`PrivacyAuditMonitor.inject` / :meth:`PrivacyAuditMonitor.included_dataset`); the
   excluded half is never trained on.
3. At the end of every ``every_n_epochs``-th epoch every canary gets a membership score
   (higher = "more likely trained on"): ``-loss`` for data points (the per-sample loss of
   :func:`memcallbacks.callbacks.probes.evaluate_sample_losses`, eval mode), ``-log-perplexity`` of the
   secret for token canaries (:func:`memcallbacks.lm.scoring.score_sequences`), or the
   user's ``canary_score_fn``.
4. The auditor guesses "in" for the ``k_pos`` highest scores and "out" for the ``k_neg`` lowest
   and abstains on the rest. ``k_pos`` and ``k_neg`` are fixed when the monitor is built
   (docs/audit.md): choosing the ``k`` that gives the largest bound after looking at the
   scores inflates epsilon. Every evaluation is logged, but only one evaluation should be
   *reported* as the audit result — normally the last one; taking the maximum over epochs is
   the same multiple-testing mistake (use ``beta / number_of_evaluations`` if you must).
5. From ``v`` correct out of ``r = k_pos + k_neg`` guesses, ``epsilon_lower_bound`` returns the
   largest epsilon rejected at confidence ``1 - beta`` for the ``delta`` audited.

Default ``k``: the paper's experiments guess on a small fraction of the canaries, in equal
numbers "in" and "out", and show that abstaining on the rest raises the bound when only the
extreme scores are informative; with too few guesses even a perfect attack proves little
(``r`` all-correct guesses at ``delta = 0`` need ``2**-r < beta``, i.e. ``r >= 5`` at
``beta = 0.05``). The default here, ``k_pos = k_neg = max(3, m // 10)`` (capped at ``m // 2``),
follows that shape; pass explicit values chosen *before* training for an audit you report.

The bound is a lower bound: a DP-SGD run with an accountant's epsilon of ``eps`` should give
``epsilon_lb <= eps`` (with probability ``1 - beta``); a larger value means the privacy
analysis or its implementation is wrong. A black-box audit of the last model is usually far
below the accountant's value (the paper reports this too).

Distributed runs: the canaries are few, so every rank scores all of them with its (identical)
model replica and logs identical numbers; rank 0 writes the run directory.

A diverged model: canaries whose score is NaN or infinite are counted
(``mem/audit/nonfinite``) and warned about once; that evaluation's ``epsilon_lb``, ``correct``
and ``accuracy`` are NaN (never a safe-looking 0), and training goes on unless a stop
condition asks otherwise (``LeakageEarlyStopping(check_finite=True)`` stops on NaN).

Resume: ``seed``, the number of canaries, ``k_pos``, ``k_neg`` and the inclusion mask define
what is measured and must match the checkpoint (a ``ValueError`` names the argument and both
values); ``every_n_epochs`` and ``run_dir`` may change. The run directory is written at
evaluations only, so a resume that stops before its first evaluation leaves ``audit.json`` as
it was.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from memcallbacks import loggers, rundir
from memcallbacks.callbacks import probes
from memcallbacks.callbacks._base import MemorisationCallback
from memcallbacks.callbacks.exposure import training_data_of
from memcallbacks.data.canaries import ListDataset
from memcallbacks.data.canary_check import SCAN_LIMIT, item_fingerprint, locate_canaries, locate_items
from memcallbacks.lm.collate import check_pad_id
from memcallbacks.metrics.audit import audit_guesses, count_correct, epsilon_lower_bound
from memcallbacks.utilities.validation import check_bool, check_int, check_real, check_seed

__all__ = ["PrivacyAuditMonitor", "default_num_guesses"]

CanaryScoreFn = Callable[[pl.LightningModule, Any], Any]
"""``canary_score_fn(pl_module, canaries) -> array [m]``: membership score per canary, higher = "in"."""


def default_num_guesses(m: int) -> int:
    """Default ``k_pos`` (= ``k_neg``) for ``m`` canaries: ``max(3, m // 10)``, at most ``m // 2``.

    Example:
        >>> default_num_guesses(1000), default_num_guesses(40), default_num_guesses(4)
        (100, 4, 2)
    """
    return max(1, min(max(3, m // 10), m // 2))


def _is_canary_set(obj: Any) -> bool:
    from memcallbacks.data.canaries import CanarySet

    return isinstance(obj, CanarySet)


def check_delta(value: Any) -> float:
    """``delta`` as a float in ``[0, 1)``, or an error naming the value received."""
    return check_real("delta", value, minimum=0.0, maximum=1.0, max_inclusive=False, hint="e.g. delta=1e-5")


def _validate_init(
    canaries: Any, k_pos: Any, k_neg: Any, delta: Any, beta: Any, seed: Any, included: Any, batch_size: Any
) -> dict[str, Any]:
    """Check the arguments of :class:`PrivacyAuditMonitor`; return the checked values and the mask."""
    try:
        m = len(canaries)
    except TypeError as e:
        raise TypeError(
            f"`canaries` must be a map-style dataset or a CanarySet (something with len()), "
            f"got {type(canaries).__name__}"
        ) from e
    if m < 2:
        raise ValueError(
            f"`canaries` must hold at least 2 audit canaries, got {m}; the audit needs many "
            "(hundreds for a meaningful bound)"
        )
    k_default = default_num_guesses(m)
    hint = f"e.g. k_pos=k_neg={k_default}, fixed before training"
    k_pos = k_default if k_pos is None else check_int("k_pos", k_pos, minimum=0, hint=hint)
    k_neg = k_default if k_neg is None else check_int("k_neg", k_neg, minimum=0, hint=hint)
    if k_pos + k_neg > m or k_pos + k_neg < 1:
        raise ValueError(
            f"`k_pos` + `k_neg` must be between 1 and the number of canaries ({m}), got "
            f"{k_pos} + {k_neg} = {k_pos + k_neg}; {hint}"
        )
    seed = check_seed("seed", seed)
    if included is None:
        # one fair coin per canary, drawn before training and never looked at by the scorer
        mask = np.random.default_rng(seed).random(m) < 0.5
    else:
        raw = np.asarray(included.cpu() if isinstance(included, torch.Tensor) else included)
        if raw.shape != (m,) or not (raw.dtype == np.bool_ or np.isin(raw, (0, 1)).all()):
            raise ValueError(
                f"`included` must be a bool mask of shape ({m},) (one entry per canary), got "
                f"shape {raw.shape} and dtype {raw.dtype}"
            )
        mask = raw.astype(bool)
    return {
        "num_canaries": m,
        "k_pos": k_pos,
        "k_neg": k_neg,
        "delta": check_delta(delta),
        "beta": check_real(
            "beta",
            beta,
            minimum=0.0,
            maximum=1.0,
            min_inclusive=False,
            max_inclusive=False,
            hint="a significance level, e.g. beta=0.05",
        ),  # fmt: skip
        "seed": seed,
        "included": mask,
        "batch_size": check_int("batch_size", batch_size, minimum=1),
    }


class PrivacyAuditMonitor(MemorisationCallback):
    """One-run privacy audit (Steinke, Nasr and Jagielski, NeurIPS 2023) as a Lightning callback.

    The user-side change: build the monitor before the DataLoader and train on
    ``monitor.inject(train_dataset)`` — the training data plus the canaries drawn "in".

    Logged keys (every evaluation, identical on every rank):

    * ``mem/audit/epsilon_lb``: empirical lower bound on epsilon at confidence ``1 - beta``
      for the ``delta`` given (Steinke et al. 2023, Thm. 3.1 / 5.2). 0 = nothing proved.
    * ``mem/audit/correct``: number of correct guesses ``v``.
    * ``mem/audit/guesses``: number of guesses ``r = k_pos + k_neg``.
    * ``mem/audit/accuracy``: ``v / r``; 0.5 is chance.
    * ``mem/audit/nonfinite``: canaries whose score is NaN or infinite (a diverged model; the
      evaluation's ``epsilon_lb``, ``correct`` and ``accuracy`` are then NaN).

    Run directory (``<log_dir>/memcallbacks/audit/``): ``inclusion.npz`` (``included`` mask,
    ``seed``), ``epoch_XXXX.npz`` per evaluation (``scores``, ``guesses``, ``included``; under a step
    or validation schedule ``step_XXXXXXXX.npz``, named by the global step) and
    ``audit.json`` (settings and the history of counts and bounds).

    Args:
        canaries: the ``m >= 2`` audit canaries: a map-style dataset whose items the training
            set can hold (scored by ``-sample_loss_fn``), or a
            :class:`~memcallbacks.data.canaries.CanarySet` (scored by ``-log-perplexity`` of
            each secret; build it with ``repetitions=(1,)`` and ``per_count=m``).
        k_pos: number of "in" guesses (highest scores); default :func:`default_num_guesses`.
        k_neg: number of "out" guesses (lowest scores); default :func:`default_num_guesses`.
        delta: the delta of the (epsilon, delta)-DP guarantee audited, in ``[0, 1)``; use the
            delta the accountant reports at.
        beta: significance level in ``(0, 1)``: the bound holds with probability ``1 - beta``.
        seed: seed of the inclusion draw.
        included: an explicit inclusion mask (bool ``[m]``) instead of the seeded draw; only for
            experiments that control inclusion themselves (the audit's guarantee needs
            independent fair coins).
        canary_score_fn: ``(pl_module, canaries) -> array [m]``, higher = more likely trained on;
            replaces the default score.
        sample_loss_fn: per-sample loss of a batch of data-point canaries (default
            cross-entropy, see :func:`memcallbacks.callbacks.probes.default_sample_loss_fn`).
        batch_size: evaluation batch size.
        collate_fn: collate function for data-point canaries.
        pad_id: the pad id for data-point canaries that are token-id rows of different lengths (lists,
            1-D tensors, tokenized ``datasets`` rows), padded on the right into causal-LM batches
            (default: the model config's ``pad_token_id``; needed when it has none, e.g.
            ``pad_id=tokenizer.eos_token_id``). Padding is never scored.
        check_training_data: at the start of training, look for the canaries in the last
            :data:`~memcallbacks.data.canary_check.SCAN_LIMIT` items of the training data (by content
            for data points; by the CanarySet's token ids, or text, for token canaries). A canary drawn
            "out" found there raises a ``ValueError`` (the audit would be invalid); canaries drawn "in"
            not found, or data that cannot be read, give a warning (once, counted in the checkpoint)
            and ``data_check`` in ``audit.json``. ``False`` skips the look.
        every_n_epochs: evaluate every this many epochs.
        every_n_steps: evaluate every this many optimizer steps instead (``trainer.global_step``;
            not at epoch ends); see :class:`~memcallbacks.callbacks._base.MemorisationCallback`.
        evaluate_on_validation: evaluate at the end of every validation run inside ``fit`` instead
            (with ``val_check_interval``, also mid-epoch).
        run_dir: run directory root (default ``<trainer.log_dir>/memcallbacks``).
        log_per_sample: send the per-canary scores to trackers (a table); the run directory
            always gets them.
        name: tells two audits in one Trainer apart: keys ``mem/audit/<metric>/<name>``, folder
            ``audit_<name>``, checkpoint state.

    Raises:
        ValueError: ``m < 2``, ``k_pos + k_neg > m`` or ``< 1``, ``delta`` outside ``[0, 1)``,
            ``beta`` outside ``(0, 1)``, or an ``included`` mask of the wrong shape; at train start
            (before the first step), canaries the model cannot score (shape, label range, token-id rows
            without a pad id) or a canary drawn "out" found in the training data.
        TypeError: ``pad_id`` is not an int, ``check_training_data`` not a bool.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> canaries = TensorDataset(torch.randn(100, 8), torch.randint(0, 3, (100,)))
        >>> audit = PrivacyAuditMonitor(canaries, k_pos=10, k_neg=10, seed=0)
        >>> int(audit.included.sum()), len(audit.included_dataset())
        (44, 44)
        >>> train_set = audit.inject(TensorDataset(torch.randn(500, 8), torch.randint(0, 3, (500,))))
        >>> len(train_set)
        544
    """

    subdir = "audit"

    def __init__(
        self,
        canaries: Any,
        *,
        k_pos: int | None = None,
        k_neg: int | None = None,
        delta: float = 0.0,
        beta: float = 0.05,
        seed: int = 0,
        included: Sequence[bool] | np.ndarray | torch.Tensor | None = None,
        canary_score_fn: CanaryScoreFn | None = None,
        sample_loss_fn: probes.SampleLossFn = probes.default_sample_loss_fn,
        batch_size: int = 256,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        pad_id: int | None = None,
        check_training_data: bool = True,
        every_n_epochs: int = 1,
        every_n_steps: int | None = None,
        evaluate_on_validation: bool = False,
        run_dir: str | os.PathLike[str] | None = None,
        log_per_sample: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(
            every_n_epochs=every_n_epochs,
            every_n_steps=every_n_steps,
            evaluate_on_validation=evaluate_on_validation,
            run_dir=run_dir,
            log_per_sample=log_per_sample,
            name=name,
        )
        checked = _validate_init(canaries, k_pos, k_neg, delta, beta, seed, included, batch_size)
        self.canaries = canaries
        self.is_token_canaries = _is_canary_set(canaries)
        self.num_canaries: int = checked["num_canaries"]
        self.k_pos: int = checked["k_pos"]
        self.k_neg: int = checked["k_neg"]
        self.delta: float = checked["delta"]
        self.beta: float = checked["beta"]
        self.seed: int = checked["seed"]
        self._included: np.ndarray = checked["included"]
        self.canary_score_fn = canary_score_fn
        self.sample_loss_fn = sample_loss_fn
        self.batch_size: int = checked["batch_size"]
        self.collate_fn = collate_fn
        self.pad_id: int | None = check_pad_id(pad_id)
        self.check_training_data = check_bool("check_training_data", check_training_data)
        self.data_check = "off" if not self.check_training_data else "not_run"
        """What the look for the canaries in the training data found: ok, missing, unchecked, off."""
        self._inclusion_written = False

    # -- the user-side API ----------------------------------------------------------------
    @property
    def included(self) -> np.ndarray:
        """Bool ``[m]``: whether each canary is in the training set (a copy)."""
        return self._included.copy()

    def included_indices(self) -> np.ndarray:
        """Indices (into ``canaries``) of the canaries drawn "in", ascending."""
        return np.flatnonzero(self._included)

    def included_dataset(self, make_item: Callable[[Any], Any] | None = None) -> Dataset[Any]:
        """The canaries to add to the training set.

        Args:
            make_item: for a ``CanarySet``, ``canary -> training item`` (default the canary's
                text); each included canary appears ``canary.repetitions`` times. Ignored for
                data-point canaries, whose included items are returned as a ``Subset``.

        Returns:
            A map-style dataset of the included canaries.
        """
        idx = self.included_indices().tolist()
        if not self.is_token_canaries:
            return Subset(self.canaries, idx)
        make = make_item if make_item is not None else (lambda c: c.text)
        items: list[Any] = []
        for i in idx:
            canary = self.canaries[i]
            items.extend([make(canary)] * int(canary.repetitions))
        return ListDataset(items)

    def inject(
        self, dataset: Dataset[Any], make_item: Callable[[Any], Any] | None = None
    ) -> ConcatDataset[Any]:
        """``dataset`` followed by the included canaries: the dataset to train on.

        Args:
            dataset: the training dataset (wrap the result in ``IndexedDataset`` if other
                monitors need sample ids).
            make_item: see :meth:`included_dataset`.

        Returns:
            ``ConcatDataset([dataset, self.included_dataset(make_item)])``.
        """
        return ConcatDataset([dataset, self.included_dataset(make_item)])

    @classmethod
    def split(cls, dataset: Any, *, seed: int = 0, **kwargs: Any) -> tuple[PrivacyAuditMonitor, Dataset[Any]]:
        """Use ``dataset`` itself as the audit canaries: returns the monitor and its included half.

        For auditing a model trained on a dataset with no other data: train on the second
        element (about half of ``dataset``, a coin per item).

        Args:
            dataset: map-style dataset of the ``m`` audit canaries.
            seed: seed of the inclusion draw.
            **kwargs: other arguments of :class:`PrivacyAuditMonitor`.

        Returns:
            ``(monitor, monitor.included_dataset())``.
        """
        monitor = cls(dataset, seed=seed, **kwargs)
        return monitor, monitor.included_dataset()

    # -- scoring --------------------------------------------------------------------------
    def compute_scores(self, pl_module: pl.LightningModule, trainer: pl.Trainer | None = None) -> np.ndarray:
        """Membership score of every canary (float64 ``[m]``, higher = more likely trained on)."""
        if self.canary_score_fn is not None:
            raw = self.canary_score_fn(pl_module, self.canaries)
            if isinstance(raw, torch.Tensor):
                raw = raw.detach().cpu().numpy()
            scores = np.asarray(raw, dtype=np.float64)
        elif self.is_token_canaries:
            from memcallbacks.lm import scoring

            log_ppl = scoring.score_sequences(
                pl_module,
                [c.scored_ids for c in self.canaries],
                [c.secret_start for c in self.canaries],
                batch_size=self.batch_size,
                progress=False,
                desc="scoring audit canaries",
            )
            scores = -np.asarray(log_ppl, dtype=np.float64)
        else:
            scores = -self._data_point_losses(pl_module, self.canaries, trainer).double().numpy()
        if scores.shape != (self.num_canaries,):
            raise ValueError(
                f"the audit scores must have shape ({self.num_canaries},) (one per canary), got {scores.shape}; "
                "check `canary_score_fn`/`sample_loss_fn`"
            )
        return scores

    def _data_point_losses(
        self, pl_module: Any, dataset: Any, trainer: Any, collate_fn: Callable[[list[Any]], Any] | None = None
    ) -> torch.Tensor:
        """Per-sample losses of data-point canaries (``dataset``: all of them, or a few at setup)."""
        try:
            losses, _ = probes.evaluate_sample_losses(
                pl_module,
                dataset,
                self.sample_loss_fn,
                batch_size=self.batch_size,
                collate_fn=collate_fn or self.collate_fn,
                trainer=trainer,
                pad_id=self.pad_id,
            )
        except (RuntimeError, IndexError) as e:  # shape or label-range mismatch inside the model
            raise ValueError(
                f"PrivacyAuditMonitor could not score its {self.num_canaries} audit canaries with the model "
                f"({type(e).__name__}: {e}). The canaries must be items the training set could hold: the "
                f"same feature shape and label range as the training data (first canary: "
                f"{_describe_item(self.canaries[0])}); or pass `sample_loss_fn`/`canary_score_fn`"
            ) from e
        return losses

    def audit(self, scores: Any) -> dict[str, Any]:
        """Guesses, counts and the epsilon lower bound for one vector of scores (no logging).

        Args:
            scores: membership scores ``[m]``, higher = more likely included.

        Returns:
            ``{"guesses": int8 [m], "correct": v, "guesses_made": r, "accuracy": v / r,
            "epsilon_lb": float, "nonfinite": int}``. When a score is NaN or infinite, no
            guess is made (``guesses`` all 0) and ``correct``, ``accuracy`` and ``epsilon_lb``
            are NaN: a diverged model proves nothing either way.
        """
        values = np.asarray(scores, dtype=np.float64)
        nonfinite = int(values.size - np.count_nonzero(np.isfinite(values)))
        if nonfinite:
            r = self.k_pos + self.k_neg
            nan = float("nan")
            return {
                "guesses": np.zeros(values.shape, dtype=np.int8),
                "correct": nan,
                "guesses_made": r,
                "accuracy": nan,
                "epsilon_lb": nan,
                "nonfinite": nonfinite,
            }
        guesses = audit_guesses(values, k_pos=self.k_pos, k_neg=self.k_neg)
        v, r = count_correct(guesses, self._included)
        eps = epsilon_lower_bound(v, r, num_canaries=self.num_canaries, delta=self.delta, beta=self.beta)
        return {
            "guesses": guesses,
            "correct": v,
            "guesses_made": r,
            "accuracy": v / r,
            "epsilon_lb": eps,
            "nonfinite": 0,
        }

    # -- setup: checks before the first step ----------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._check_scoring(trainer, pl_module)
        if self.check_training_data:  # the training DataLoader exists from here on
            self.data_check = self._check_training_data(trainer)

    def _check_scoring(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Score two canaries now, so a wrong shape, label range or missing pad id fails before the first step."""
        if self.canary_score_fn is not None:
            return
        few = list(range(min(2, self.num_canaries)))
        if self.is_token_canaries:
            from memcallbacks.lm import scoring

            chosen = [self.canaries[i] for i in few]
            scoring.score_sequences(
                pl_module, [c.scored_ids for c in chosen], [c.secret_start for c in chosen], progress=False
            )
            return
        # token-id rows: the padding collate is chosen from every canary, so a missing pad id fails here
        collate = probes.probe_collate(
            self.canaries, self.collate_fn, pad_id=self.pad_id, module=pl_module, owner="PrivacyAuditMonitor"
        )
        self._data_point_losses(pl_module, Subset(self.canaries, few), trainer, collate_fn=collate)

    def _check_training_data(self, trainer: pl.Trainer) -> str:
        """Look for the canaries in the training data; raise when one drawn "out" is there, warn when "in" is not.

        Raises:
            ValueError: a canary drawn "out" is in the training data (not a duplicate of one drawn "in").
        """
        data, collate = training_data_of(trainer)
        if self.is_token_canaries:
            cs = self.canaries
            presence = locate_canaries(cs, data, collate=collate)
            ids = set(presence.found)
            found = {i for i, c in enumerate(cs) if c.id in ids}
            scanned, complete, readable = presence.scanned, presence.complete, presence.status != "unchecked"
            twins: set[int] = set()
        else:
            items = [self.canaries[i] for i in range(self.num_canaries)]
            found, scanned, complete = locate_items(items, data)
            readable = scanned > 0
            twins = _twins_of_included(items, self._included)
        out_found = sorted(i for i in found if not self._included[i] and i not in twins)
        if out_found:
            raise ValueError(
                f"PrivacyAuditMonitor: {len(out_found)} audit canaries drawn 'out' are in the training data "
                f"(canaries {out_found[:6]}); the audit's bound needs the excluded half never trained on. Train on "
                "`audit.inject(train_set)` (it adds only the canaries drawn 'in') and add the canaries nowhere "
                "else, or pass check_training_data=False"
            )
        return self._warn_absent(found, scanned, complete, readable)

    def _warn_absent(self, found: set[int], scanned: int, complete: bool, readable: bool) -> str:
        if not readable:
            self.warn_once(
                "canaries_not_in_training_data",
                "PrivacyAuditMonitor could not check that its canaries drawn 'in' are in the training data (no "
                "map-style training dataset, or items it cannot compare); make sure you train on "
                "`audit.inject(train_set)`, or pass check_training_data=False (warned once; audit.json records "
                "data_check='unchecked')",
            )
            return "unchecked"
        missing = [int(i) for i in self.included_indices() if int(i) not in found]
        if not missing:
            return "ok"
        where = (
            f"in any of the {scanned} training items" if complete else f"in the last {scanned} training items"
        )
        self.warn_once(
            "canaries_not_in_training_data",
            f"PrivacyAuditMonitor: {len(missing)} of the {int(self._included.sum())} canaries drawn 'in' were not "
            f"found {where} (first: {missing[:6]}; the look stops at {SCAN_LIMIT} items). An audit of canaries "
            "the model never saw proves nothing: train on `audit.inject(train_set)`. Pass "
            "check_training_data=False to skip the look (warned once; audit.json records data_check='missing')",
        )
        return "missing"

    # -- the evaluation cycle (see MemorisationCallback) ------------------------------------
    def measure(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Score the canaries and guess; returns ``(scores, audit result)``."""
        scores = self.compute_scores(pl_module, trainer)
        result = self.audit(scores)
        nonfinite = int(result["nonfinite"])
        if nonfinite:
            self.warn_once(
                "nonfinite",
                f"PrivacyAuditMonitor: {nonfinite} of {self.num_canaries} audit scores are NaN or infinite at "
                f"epoch {trainer.current_epoch} (the model diverged, or `canary_score_fn` returned non-finite "
                "values); that evaluation's mem/audit/epsilon_lb, correct and accuracy are NaN, counted in "
                "mem/audit/nonfinite (warned once)",
            )
        return scores, result

    def metrics(self, result: tuple[np.ndarray, dict[str, Any]]) -> dict[str, float]:
        audit = result[1]
        return {
            "mem/audit/epsilon_lb": float(audit["epsilon_lb"]),
            "mem/audit/correct": float(audit["correct"]),
            "mem/audit/guesses": float(int(audit["guesses_made"])),
            "mem/audit/accuracy": float(audit["accuracy"]),
            "mem/audit/nonfinite": float(int(audit["nonfinite"])),
        }

    def write_files(self, result: tuple[np.ndarray, dict[str, Any]]) -> None:
        """``inclusion.npz`` (first evaluation of a process), this evaluation's scores and ``audit.json``.

        The scores go to ``epoch_XXXX.npz`` under the epoch schedule and to ``step_XXXXXXXX.npz`` (the
        global step, one file per evaluation) under a step or validation schedule.
        """
        scores, audit = result
        step = self._history[-1]["step"] if self.schedule != "epochs" else None
        self.write_in_background(
            _write_evaluation,
            self.run_dir,
            (self.last_epoch_done, step),
            None if self._inclusion_written else (self._included.copy(), self.seed),
            {"scores": scores, "guesses": audit["guesses"], "included": self._included.copy()},
            self._summary(),
        )
        self._inclusion_written = True

    def records(self, result: tuple[np.ndarray, dict[str, Any]]) -> list[loggers.Record]:
        """A histogram of the scores; the per-canary table with ``log_per_sample=True``."""
        scores, audit = result
        epoch = self.last_epoch_done
        out: list[loggers.Record] = [loggers.Histogram(key="mem/audit/scores", values=scores, epoch=epoch)]
        if self.log_per_sample:
            rows = [
                [i, float(s), bool(inc), int(g)]
                for i, (s, inc, g) in enumerate(zip(scores, self._included, audit["guesses"]))
            ]
            out.append(
                loggers.Table(
                    key="mem/audit/canary_scores",
                    columns=["canary", "score", "included", "guess"],
                    rows=rows,
                    epoch=epoch,
                    per_sample=True,
                )
            )
        return out

    def _summary(self) -> dict[str, Any]:
        return {
            "method": "Steinke, Nasr and Jagielski 2023, one-run audit",
            "num_canaries": self.num_canaries,
            "canary_kind": "token_sequences" if self.is_token_canaries else "data_points",
            "num_included": int(self._included.sum()),
            "k_pos": self.k_pos,
            "k_neg": self.k_neg,
            "delta": self.delta,
            "beta": self.beta,
            "seed": self.seed,
            "data_check": self.__dict__.get("data_check", "not_run"),
            "history": [_file_row(h) for h in self._history],
        }

    # -- state ----------------------------------------------------------------------------
    def _measured_args(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "num_canaries": self.num_canaries,
            "k_pos": self.k_pos,
            "k_neg": self.k_neg,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            **self.base_state(),
            "included": torch.from_numpy(self._included.copy()),
            "delta": self.delta,
            "beta": self.beta,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the history; refuse a checkpoint measured with other canaries, seed, k or inclusion.

        Raises:
            ValueError: ``seed``, the number of canaries, ``k_pos`` or ``k_neg`` differ from the
                checkpoint's (named with both values), or the inclusion mask does (the training set
                built from this monitor would not match the audit's record).
        """
        self.load_base_state(state_dict)
        saved = state_dict.get("included")
        if saved is not None:
            mask = np.asarray(saved.cpu().numpy() if hasattr(saved, "cpu") else saved, dtype=bool)
            if mask.shape != self._included.shape or not np.array_equal(mask, self._included):
                differ = (
                    np.flatnonzero(mask != self._included)[:5].tolist()
                    if mask.shape == self._included.shape
                    else "shapes differ"
                )
                raise ValueError(
                    "PrivacyAuditMonitor: the checkpoint's audit inclusion mask differs from this monitor's "
                    f"({int(mask.sum())}/{mask.size} vs {int(self._included.sum())}/{self._included.size} "
                    f"included; first differing canaries: {differ}); rebuild the monitor with the run's "
                    "`seed`, canaries and `included` before building the training set, or the audit is invalid"
                )


def _file_row(h: dict[str, Any]) -> dict[str, Any]:
    """A :attr:`~PrivacyAuditMonitor.history` row as ``audit.json`` writes it (plain keys, ``correct`` int or None)."""
    correct = float(h["mem/audit/correct"])
    return {
        "epoch": int(h["epoch"]),
        "step": int(h.get("step", -1)),
        "correct": int(correct) if np.isfinite(correct) else None,
        "guesses": int(h["mem/audit/guesses"]),
        "accuracy": float(h["mem/audit/accuracy"]),
        "epsilon_lb": float(h["mem/audit/epsilon_lb"]),
        "nonfinite": int(h["mem/audit/nonfinite"]),
    }


def _write_evaluation(
    folder: Any,
    at: tuple[int, int | None],
    inclusion: tuple[np.ndarray, int] | None,
    arrays: dict[str, Any],
    summary: dict[str, Any],
) -> None:
    """One evaluation's files: ``inclusion.npz`` (first evaluation of a process), the scores, ``audit.json``.

    ``at`` is ``(epoch, step)``: ``step`` is ``None`` under the epoch schedule (``epoch_XXXX.npz``),
    else the global step of the evaluation (``step_XXXXXXXX.npz``).
    """
    if inclusion is not None:
        rundir.write_audit_inclusion(folder, inclusion[0], inclusion[1])
    epoch, step = at
    if step is None:
        rundir.write_audit_epoch(folder, epoch, **arrays)
    else:
        rundir.write_audit_step(folder, step, **arrays)
    rundir.write_audit_summary(folder, summary)


def _twins_of_included(items: list[Any], included: np.ndarray) -> set[int]:
    """Canaries drawn "out" whose content equals a canary drawn "in" (a duplicate in the pool)."""
    prints = [item_fingerprint(item) for item in items]
    inside = {p for p, inc in zip(prints, included) if inc and p is not None}
    return {k for k, p in enumerate(prints) if not included[k] and p in inside}


def _describe_item(item: Any) -> str:
    parts = item if isinstance(item, (list, tuple)) else [item]
    return ", ".join(f"{type(p).__name__}{tuple(p.shape) if hasattr(p, 'shape') else ''}" for p in parts)
