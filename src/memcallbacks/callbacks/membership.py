"""Membership-inference monitor: the train/held-out loss gap and a loss-threshold attack, per epoch.

At the end of every ``every_n_epochs``-th training epoch the monitor evaluates two fixed probe
sets in eval mode (docs/architecture.md, "Data flow"): *members*, a seeded random subset
of the training data, and *non-members*, held-out samples. From their per-sample losses it
computes (with :mod:`memcallbacks.metrics.membership`; this module only collects, names and logs):

* the loss gap, mean held-out loss minus mean member loss, and their ratio;
* the loss-threshold membership-inference attack of Yeom, Giacomelli, Fredrikson and Jha,
  "Privacy Risk in Machine Learning: Analyzing the Connection to Overfitting", CSF 2018
  (members positive, score ``-loss``): exact ROC AUC, attacker advantage, balanced accuracy
  and the true-positive rate at low false-positive rates advocated by Carlini, Chien, Nasr,
  Song, Terzis and Tramer, "Membership Inference Attacks From First Principles", S&P 2022;
* optionally (``calibrate=True``) the difficulty-calibrated attack of Watson, Guo, Cormode and
  Sablayrolles, "On the Importance of Difficulty Calibration in Membership Inference Attacks",
  ICLR 2022: the score of a sample is its loss now minus its loss at the first evaluation, so
  samples that are simply easy (low loss whether trained on or not) stop looking like members;
* by default (``trajectory_attack=True``), from the second evaluation on, the trajectory attack
  adapted from Liu, Wen, Backes and Zhang, "Membership Inference Attacks by Exploiting Loss
  Trajectory", CCS 2022 (:mod:`memcallbacks.metrics.trajectory_mia`): each probe's losses at
  the recorded evaluations are the features of a 2-fold cross-validated logistic regression, so
  every probe gets an out-of-fold score. It assumes an attacker who sees the loss after every
  evaluated epoch (a checkpoint holder) and knows the membership of half the probes.

Resolution limit: TPR at FPR ``x`` is read from the ``floor(x * m)`` lowest-scoring
non-members; with ``m = 1,000`` non-members, TPR at 0.1% FPR rests on a single sample. The
probe sizes are logged (``mem/mia/n_members``, ``mem/mia/n_nonmembers``) so a reader can
judge this; ``metrics.membership_inference`` warns when ``m < 1/x``.

Precision: probes are evaluated with autocast switched off (:func:`memcallbacks.callbacks.probes.full_precision`),
so under ``precision="bf16-mixed"`` or ``"16-mixed"`` the losses are those of a float32 evaluation
of the same weights, like every other memcallbacks measurement.

Distributed runs: :func:`memcallbacks.callbacks.probes.evaluate_sharded` splits the probes across ranks
(contiguous shards of equal length, the last padded by repeating the final sample, no
``DistributedSampler``), each rank evaluates its shard, one all-gather reassembles the vectors
in probe order, and every rank computes the metrics from the same numbers, so every rank logs
identical values (``EarlyStopping`` sees the same value everywhere). Rank 0 writes the run
directory and the tracker records; the files are written by a background thread (atomic renames
through :mod:`memcallbacks.utilities.fileio`), flushed at the end of fit or by
:meth:`MembershipInferenceMonitor.flush`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, RandomSampler, SequentialSampler, Subset

from memcallbacks import loggers, rundir
from memcallbacks.callbacks import probes
from memcallbacks.callbacks._base import MemorisationCallback, state_array, state_tensor
from memcallbacks.lm.collate import check_pad_id
from memcallbacks.lm.losses import hf_forward, split_xy
from memcallbacks.lm.model import evaluating, find_hf_model, output_logits
from memcallbacks.metrics.membership import (
    MembershipReport,
    calibrated_losses,
    check_fprs,
    format_fpr,
    loss_gap,
    loss_ratio,
    membership_inference,
    roc_curve,
    slice_aucs,
)
from memcallbacks.metrics.trajectory_mia import trajectory_attack_scores
from memcallbacks.utilities.validation import check_bool, check_int, check_seed

__all__ = ["REFERENCES", "MembershipInferenceMonitor"]

NAN = float("nan")

#: what ``MembershipInferenceMonitor(reference=...)`` accepts as a string (or a ``torch.nn.Module``, or None)
REFERENCES = ("fit_start", "peft_base")


def check_reference(reference: Any) -> str | torch.nn.Module | None:
    """``reference`` if it is None, ``"fit_start"``, ``"peft_base"`` or a ``torch.nn.Module``.

    Raises:
        ValueError: another string.
        TypeError: another type.

    Example:
        >>> check_reference("fit_start")
        'fit_start'
    """
    if reference is None or isinstance(reference, torch.nn.Module):
        return reference
    if isinstance(reference, str):
        if reference in REFERENCES:
            return reference
        raise ValueError(
            f"`reference` must be 'fit_start', 'peft_base', a torch.nn.Module or None, got {reference!r}; "
            "e.g. reference='fit_start' (the weights before the first training step)"
        )
    raise TypeError(
        f"`reference` must be 'fit_start', 'peft_base', a torch.nn.Module or None, got {type(reference).__name__}"
    )


def reference_kind(reference: str | torch.nn.Module | None) -> str | None:
    """``"fit_start"``, ``"peft_base"``, ``"module"`` or None: what the checkpoint records of ``reference``."""
    return "module" if isinstance(reference, torch.nn.Module) else reference


def peft_model_of(module: Any, owner: str) -> Any:
    """The peft model (with ``disable_adapter()``) that ``module`` is or holds (:func:`find_hf_model` rule).

    Raises:
        ValueError: no peft model with adapters.
    """
    found = find_hf_model(module)
    if (
        found is None
        or not callable(getattr(found, "disable_adapter", None))
        or not getattr(found, "peft_config", None)
    ):
        what = "no Hugging Face model" if found is None else f"a {type(found).__name__} without peft adapters"
        raise ValueError(
            f"{owner}(reference='peft_base'): the model holds {what}, so there is no base model to evaluate "
            "with the adapters disabled; wrap the model with `peft.get_peft_model(model, config)` (as "
            "`self.model` of the LightningModule), or pass reference='fit_start' (the weights at fit start) "
            "or reference=<the base model>"
        )
    return found


def logits_width(module: Any, batch: Any) -> int | None:
    """The last dimension (vocabulary or classes) of ``module``'s logits on ``batch``; None when it gives none."""
    try:
        if isinstance(batch, Mapping) and "input_ids" in batch:
            out = hf_forward(module, batch)
        else:
            out = module(split_xy(batch)[0])
        logits = output_logits(out)
    except Exception:
        return None
    return int(logits.shape[-1]) if logits.dim() >= 2 else None


def check_reference_vocabulary(
    pl_module: Any,
    reference: torch.nn.Module,
    dataset: Dataset[Any],
    *,
    owner: str,
    batch_size: int,
    collate_fn: Callable[[list[Any]], Any] | None,
    pad_id: int | None,
) -> None:
    """Both models' logits on the first probe batch of ``dataset`` have the same last dimension.

    Raises:
        ValueError: the widths differ (another tokenizer or head), naming ``owner`` and both widths.
    """
    from lightning_fabric.utilities.apply_func import move_data_to_device

    items = [dataset[i] for i in range(min(batch_size, len(dataset)))]  # type: ignore[arg-type]
    chosen = probes.probe_collate(dataset, collate_fn, pad_id=pad_id, module=pl_module)
    batch = move_data_to_device((chosen or torch.utils.data.default_collate)(items), pl_module.device)
    with probes.full_precision(None, pl_module.device), evaluating(pl_module), evaluating(reference):
        ours, theirs = logits_width(pl_module, batch), logits_width(reference, batch)
    if ours is not None and theirs is not None and ours != theirs:
        raise ValueError(
            f"{owner}(reference={type(reference).__name__}): the reference model's logits "
            f"have {theirs} entries (vocabulary or classes), the trained model's {ours}: it was built with "
            "another tokenizer or head, so its losses are not comparable; pass the model the run fine-tunes "
            "from (the same tokenizer), or reference='fit_start'"
        )


def _class_of(item: Any) -> Hashable:
    """The label of an ``(x, y)`` item (or a dict item with a label key)."""
    y: Any = None
    if isinstance(item, Mapping):
        for k in ("y", "label", "labels", "target", "targets"):
            if k in item:
                y = item[k]
                break
    elif isinstance(item, (list, tuple)) and len(item) == 2:
        y = item[1]
    if isinstance(y, torch.Tensor) and y.numel() == 1 or isinstance(y, np.ndarray) and y.size == 1:
        y = y.item()
    if isinstance(y, float) and y.is_integer():
        y = int(y)
    if isinstance(y, (bool, np.bool_)) or not isinstance(y, (int, np.integer, str)):
        raise TypeError(
            f"`slices='class'` needs `(x, y)` items with a scalar integer label y, got an item of type "
            f"{type(item).__name__} with label {type(y).__name__}; pass `slices=lambda item: ...` returning "
            "the item's group"
        )
    return y if isinstance(y, str) else int(y)


def _slice_name(key: Hashable) -> str:
    text = str(key)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text) or "_"


def _unvisited_members(trainer: Any, member_indices: np.ndarray) -> tuple[float, bool] | None:
    """How many default members the training loop has not visited yet: ``(count, exact)`` or ``None``.

    Cheap (no per-step hook): from the batches an epoch runs (``trainer.num_training_batches``,
    lowered by ``limit_train_batches``), a ``max_steps`` that cut the current epoch short, and
    the loader's sampler. A sequential sampler visits the same first ``k * batch_size`` samples
    every epoch, so the count is exact; a shuffling one visits a random share, and the count is
    the expectation ``n * prod(1 - k_e / K)`` over the epochs so far. ``None`` when every batch
    ran or the loader/sampler is not one of these.
    """
    loader = getattr(trainer, "train_dataloader", None)
    if not isinstance(loader, DataLoader):
        return None
    try:
        total = len(loader)
    except TypeError:
        return None
    limit = trainer.num_training_batches
    if total == 0 or not isinstance(limit, (int, float)) or not np.isfinite(limit):
        return None
    k = int(min(limit, total))
    done = int(trainer.current_epoch)
    per_epoch = [k] * done
    this = k
    max_steps = getattr(trainer, "max_steps", -1)
    if max_steps is not None and max_steps >= 0 and trainer.global_step >= max_steps:
        batches = int(trainer.global_step) * int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
        this = max(0, min(k, batches - done * k))
    per_epoch.append(this)
    if min(per_epoch) >= total:
        return None
    sampler = loader.sampler
    if isinstance(sampler, SequentialSampler):
        batch_size = loader.batch_size or -(-len(sampler) // total)
        visited = max(per_epoch) * batch_size
        return float((member_indices >= visited).sum()), True
    if isinstance(sampler, RandomSampler) or getattr(sampler, "shuffle", False) is True:
        share_unvisited = float(np.prod([1.0 - c / total for c in per_epoch]))
        return len(member_indices) * share_unvisited, False
    return None


def _validate_init(
    *,
    num_probes: Any,
    sample_loss_fn: Any,
    fprs: Any,
    calibrate: Any,
    trajectory_attack: Any,
    slices: Any,
    min_slice_size: Any,
    batch_size: Any,
    collate_fn: Any,
    seed: Any,
) -> dict[str, Any]:
    """Every argument check of :class:`MembershipInferenceMonitor`; returns the normalised values."""
    loss_fn = sample_loss_fn if sample_loss_fn is not None else probes.default_sample_loss_fn
    if not callable(loss_fn):
        raise TypeError(
            f"`sample_loss_fn` must be callable (module, batch) -> Tensor[B], got {type(sample_loss_fn).__name__}"
        )
    if slices is not None and slices != "class" and not callable(slices):
        raise TypeError(
            f"`slices` must be None, 'class' or a function item -> hashable, got {slices!r}; "
            "e.g. slices='class' for per-label AUCs"
        )
    if collate_fn is not None and not callable(collate_fn):
        raise TypeError(
            f"`collate_fn` must be None or a function list[item] -> batch, got {type(collate_fn).__name__}"
        )
    return {
        "num_probes": check_int("num_probes", num_probes, minimum=1, hint="e.g. num_probes=1000"),
        "sample_loss_fn": loss_fn,
        "fprs": check_fprs(fprs),
        "calibrate": check_bool("calibrate", calibrate),
        "trajectory_attack": check_bool("trajectory_attack", trajectory_attack),
        "slices": slices,
        "min_slice_size": check_int(
            "min_slice_size", min_slice_size, minimum=1, hint="e.g. min_slice_size=50"
        ),
        "batch_size": check_int("batch_size", batch_size, minimum=1, hint="e.g. batch_size=256"),
        "collate_fn": collate_fn,
        "seed": check_seed("seed", seed),
    }


class MembershipInferenceMonitor(MemorisationCallback):
    """Log the train/held-out loss gap and a loss-threshold membership-inference attack each epoch.

    Two fixed probe sets are evaluated at the end of each ``every_n_epochs``-th training epoch,
    in eval mode under ``torch.no_grad()`` with autocast off (train mode is restored
    afterwards): members (training samples) and non-members (held-out samples). No change to the
    LightningModule is needed when batches are ``(x, y)`` and ``module(x)`` returns logits.

    Logged keys (every rank logs the same values; ``n`` counts exclude non-finite losses):

    ========================================  =================================================
    ``mem/gap/loss``                          mean non-member loss minus mean member loss
    ``mem/gap/loss_ratio``                    mean non-member loss / max(mean member loss, 1e-6)
    ``mem/gap/member_loss``                   mean member loss
    ``mem/gap/nonmember_loss``                mean non-member loss
    ``mem/mia/auc``                           ROC AUC, members positive, score ``-loss``
    ``mem/mia/advantage``                     ``max(TPR - FPR)`` over thresholds
    ``mem/mia/tpr@<x>%fpr``                   TPR at FPR ``<= x`` for each of ``fprs``
    ``mem/mia/balanced_accuracy``             ``(1 + advantage) / 2``
    ``mem/mia/n_members``, ``n_nonmembers``   finite probe losses used
    ``mem/mia/nonfinite``                     NaN/inf probe losses excluded this evaluation
    ``mem/mia/auc/<slice>``                   AUC per slice (``class_3``, ``group_a``) with
                                              ``min_slice_size`` members and non-members
    ``mem/mia_cal/*``                         the same attack keys for the calibrated score
                                              (``calibrate=True``), plus per-slice AUC
    ``mem/mia_ref/*``                         the same attack keys (``auc``, ``advantage``,
                                              ``tpr@<x>%fpr``, ...) for ``loss - reference loss``
                                              (``reference=...``), plus per-slice AUC
    ``mem/mia_traj/auc``                      trajectory attack AUC (out-of-fold logits, members
                                              positive), from the second evaluation on
    ``mem/mia_traj/tpr@<x>%fpr``              its TPR at FPR ``<= x`` for each of ``fprs``
    ``mem/mia_traj/n_members``,               probes scored (rows with a finite loss at every
    ``n_nonmembers``                          recorded evaluation)
    ``mem/mia_traj/dropped``                  probes dropped: a NaN/inf loss at some evaluation
    ========================================  =================================================

    Non-finite losses (a diverged model, an overflow) are counted in ``mem/mia/nonfinite``,
    warned about once, kept as NaN in ``losses.npz`` and left out of the attack; when a probe
    set has no finite loss left, every ``mem/gap/*`` and ``mem/mia/*`` value of that evaluation
    is NaN (never a chance-looking 0.5 or a stale value), and training goes on.

    The ratio is defined for non-negative losses (cross-entropy): 1 means no gap; the
    denominator is clamped at ``1e-6`` so a model that drives member loss to 0 gives a large
    finite number rather than a division by zero. Use ``mem/gap/loss`` for losses that can be
    negative.

    Calibrated attack (Watson et al. 2022): score = loss now minus the same sample's loss at the
    first evaluation (the *reference*). At the reference evaluation itself every difference is
    0, so the calibrated keys are logged as the chance values they are: AUC 0.5, advantage 0,
    TPR 0 (balanced accuracy 0.5). They are logged rather than left out so that a
    ``strict=True`` ``EarlyStopping`` on a ``mem/mia_cal/*`` key finds it from the first epoch.

    Reference attack (``reference=``; Carlini et al., "Extracting Training Data from Large Language
    Models", USENIX Security 2021, the ratio to a reference model's perplexity; Mireshghallah et
    al., EMNLP 2022, the pre-trained model as reference in fine-tuning): score = loss now minus
    the same sample's loss under a reference, evaluated ONCE in ``on_train_start`` before the
    first step (the same probe evaluation, one probe pass), stored in the checkpoint and never
    recomputed on resume. ``"fit_start"``: the weights at the start of ``fit`` (for fine-tuning:
    the pre-trained model; assumes the run starts from weights that never saw the probes).
    ``"peft_base"``: the model with its peft adapters disabled (``with model.disable_adapter():``;
    the peft model is found like every Hugging Face model, the module or its ``model`` child;
    without adapters, a ``ValueError`` at setup). A ``torch.nn.Module``: that model, moved to the
    training device and evaluated with ``sample_loss_fn`` once (it does not train); its logits'
    last dimension must match the trained model's on the first probe batch (another tokenizer or
    head: a ``ValueError`` naming both). Unlike ``calibrate=True`` (whose reference is the first
    evaluation, after a whole epoch of training), the fit-start reference has seen no training
    step.

    Trajectory attack (``trajectory_attack=True``): not logged at the first evaluation (one epoch is
    no trajectory); from the second on, features are the losses at the recorded evaluations (at most
    32 of them, evenly spaced, first and latest included), standardised, L2-regularised logistic
    regression (``C = 1``), folds drawn with ``seed``. A probe with a NaN/inf loss at any recorded
    evaluation is dropped from it for the rest of the run and counted in ``mem/mia_traj/dropped``;
    with fewer than 2 finite probes per class every ``mem/mia_traj/*`` score is NaN. Its cost grows
    with the probes and the (capped) epochs: tens of milliseconds per evaluation for 2 x 1,000 probes;
    ``trajectory_attack=False`` switches it off.

    Run directory (``<log_dir>/memcallbacks/membership/``, rank 0, rewritten each evaluation):
    ``losses.npz`` (``epochs [E]`` and ``steps [E]``, the epoch and global step of each evaluation;
    ``member_losses [E, n]``, ``nonmember_losses [E, m]``,
    float32, NaN kept; ``member_indices [n]`` into the training dataset or ``members``;
    ``nonmember_indices [m]``; with ``reference=``, ``reference_member_losses [n]`` and
    ``reference_nonmember_losses [m]``, the fit-start reference losses) and ``metrics.json``
    (``{"history": [{"epoch": e, "step": s, key: value}]}``, the rows of :attr:`history`).
    Tracker records: a ``RocCurve`` (``mem/mia/roc``, ``mem/mia_cal/roc``, ``mem/mia_ref/roc``,
    ``mem/mia_traj/roc``) and one
    ``Histogram`` each of member and non-member losses (``mem/mia/member_losses``,
    ``mem/mia/nonmember_losses``); all aggregate.

    Resuming from a checkpoint: the probe indices, the calibration reference and the history are
    restored, and so are the ``reference=`` losses (never recomputed). ``seed``, ``num_probes``,
    ``calibrate``, the kind of ``reference`` and the probe sets (``members``/``nonmembers``
    given or not, and their sizes) define what is measured and must match the checkpoint (a
    ``ValueError`` names the argument and both values); ``every_n_epochs``, ``run_dir``, ``fprs``,
    ``slices``, ``batch_size`` and ``trajectory_attack`` may change, and the history carries over
    (the trajectory attack after a resume uses the restored loss history, so it logs the numbers of
    an uninterrupted run).

    Args:
        members: training samples to probe (a map-style dataset or a DataLoader over one; an
            :class:`~memcallbacks.IndexedDataset` is unwrapped). Default: a fixed random subset
            of ``num_probes`` samples (seed ``seed``) of the dataset behind
            ``trainer.train_dataloader``.
        nonmembers: held-out samples, same item structure as ``members``. Default: the first
            ``num_probes`` samples of the validation dataloader's dataset, resolved at the first
            evaluation (the validation dataloader is requested from the Trainer's data source
            when it is not loaded yet, e.g. with ``num_sanity_val_steps=0``).
        num_probes: size of the default probe sets (default 1,000).
        sample_loss_fn: ``(module, batch) -> Tensor[B]`` per-sample losses (``reduction='none'``);
            default: cross-entropy of ``module(x)`` against ``y``.
        every_n_epochs: evaluate after every this many training epochs.
        every_n_steps: evaluate every this many optimizer steps instead (``trainer.global_step``;
            not at epoch ends); see :class:`~memcallbacks.callbacks._base.MemorisationCallback`.
        evaluate_on_validation: evaluate at the end of every validation run inside ``fit`` instead
            (with ``val_check_interval``, also mid-epoch).
        fprs: false-positive rates in ``(0, 1)`` at which TPR is logged.
        calibrate: also log the difficulty-calibrated attack (``mem/mia_cal/*``).
        reference: also log the reference attack (``mem/mia_ref/*``) against ``"fit_start"`` (the
            weights before the first step), ``"peft_base"`` (the peft model with adapters disabled)
            or a given ``torch.nn.Module`` (e.g. the base model); None: not logged.
        trajectory_attack: also log the loss-trajectory attack (``mem/mia_traj/*``) from the second
            evaluation on.
        slices: ``None``; ``"class"`` (labels of ``(x, y)`` items, keys ``.../auc/class_<y>``); or
            a function ``item -> hashable`` (keys ``.../auc/group_<key>``).
        min_slice_size: a slice is logged only with at least this many members and non-members.
        batch_size: batch size of the probe evaluation.
        collate_fn: collate function for probe batches (default: PyTorch's default collate; token-id
            rows of any length, e.g. tokenized ``datasets`` rows, are padded, see ``pad_id``).
        pad_id: the pad id for token-id rows of different lengths (default: the model config's
            ``pad_token_id``; needed when it has none, e.g. ``pad_id=tokenizer.eos_token_id``).
            Padding is never scored, so the value does not change any number.
        seed: seed of the default member subset (an integer >= 0).
        run_dir: override the run directory root.
        log_per_sample: accepted for symmetry; this monitor sends only aggregate records.
        name: tells two monitors in one Trainer apart (each needs its own): it names the
            checkpoint state, the run-directory folder (``membership_<name>``) and the logged keys,
            which end in ``/<name>`` (``mem/mia/auc/<name>``); ``history`` keeps the plain keys.

    Raises:
        ValueError: bad argument values (empty probes, ``every_n_epochs < 1``, FPRs outside
            ``(0, 1)``, ``num_probes < 1``, ``min_slice_size < 1``, ``seed < 0``), probes whose
            items differ in structure or (with the default collate) feature shape.
        TypeError: probes that are not map-style datasets, a ``slices`` that is neither
            ``"class"`` nor callable, a non-integer ``seed``/``num_probes``, a non-bool ``calibrate``
            or ``trajectory_attack``.

    Example:
        >>> import pytorch_lightning as pl
        >>> from memcallbacks import MembershipInferenceMonitor
        >>> monitor = MembershipInferenceMonitor(num_probes=500, calibrate=True)
        >>> trainer = pl.Trainer(callbacks=[monitor], max_epochs=3)  # doctest: +SKIP
        >>> trainer.fit(model, train_loader, val_loader)  # doctest: +SKIP
        >>> monitor.report.auc  # doctest: +SKIP
        0.61
    """

    subdir = "membership"

    def __init__(
        self,
        members: Any = None,
        nonmembers: Any = None,
        *,
        num_probes: int = 1000,
        sample_loss_fn: probes.SampleLossFn | None = None,
        every_n_epochs: int = 1,
        every_n_steps: int | None = None,
        evaluate_on_validation: bool = False,
        fprs: Iterable[float] = (0.001, 0.01, 0.1),
        calibrate: bool = False,
        reference: str | torch.nn.Module | None = None,
        trajectory_attack: bool = True,
        slices: str | Callable[[Any], Hashable] | None = None,
        min_slice_size: int = 50,
        batch_size: int = 256,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        pad_id: int | None = None,
        seed: int = 0,
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
        args = _validate_init(
            num_probes=num_probes,
            sample_loss_fn=sample_loss_fn,
            fprs=fprs,
            calibrate=calibrate,
            trajectory_attack=trajectory_attack,
            slices=slices,
            min_slice_size=min_slice_size,
            batch_size=batch_size,
            collate_fn=collate_fn,
            seed=seed,
        )
        self.num_probes: int = args["num_probes"]
        self.sample_loss_fn: probes.SampleLossFn = args["sample_loss_fn"]
        self.fprs: tuple[float, ...] = args["fprs"]
        self.calibrate: bool = args["calibrate"]
        self.reference: str | torch.nn.Module | None = check_reference(reference)
        self.trajectory_attack: bool = args["trajectory_attack"]
        self.slices: str | Callable[[Any], Hashable] | None = args["slices"]
        self.min_slice_size: int = args["min_slice_size"]
        self.batch_size: int = args["batch_size"]
        self.collate_fn: Callable[[list[Any]], Any] | None = args["collate_fn"]
        self.pad_id: int | None = check_pad_id(pad_id)
        self.seed: int = args["seed"]
        self._init_probes(members, nonmembers)
        self._init_state()

    def _init_probes(self, members: Any, nonmembers: Any) -> None:
        """The probe resolver (seeded, persisted indices); given probe sets must match in structure."""
        self._probes = probes.ProbeResolver(
            type(self).__name__,
            members=members,
            nonmembers=nonmembers,
            num_probes=self.num_probes,
            seed=self.seed,
        )
        if self._probes.members_arg is not None and self._probes.nonmembers_arg is not None:
            self._check_same_structure(self._probes.members_arg, self._probes.nonmembers_arg)

    def _init_state(self) -> None:
        """What the monitor records: the resolved probes, the loss history and the last reports."""
        # resolved probes (lazily, at the first evaluation)
        self._members: Subset[Any] | None = None
        self._nonmembers: Subset[Any] | None = None
        self._member_slices: np.ndarray | None = None
        self._nonmember_slices: np.ndarray | None = None
        # loss history (kept across resume)
        self._epochs: list[int] = []
        self._steps: list[int] = []  # global step of each evaluation (-1: from a checkpoint without steps)
        self._member_history: list[np.ndarray] = []
        self._nonmember_history: list[np.ndarray] = []
        self._ref_members: np.ndarray | None = None
        self._ref_nonmembers: np.ndarray | None = None
        # the reference losses of `reference=` (evaluated once at fit start, kept across resume)
        self._fit_ref_members: np.ndarray | None = None
        self._fit_ref_nonmembers: np.ndarray | None = None
        # finite scores of the last evaluation, for the tracker records
        self._last_scores: dict[str, np.ndarray] = {}
        self.report: MembershipReport | None = None
        """The last aggregate :class:`MembershipReport` (``None`` before the first evaluation or when
        a probe set had no finite loss)."""
        self.calibrated_report: MembershipReport | None = None
        """The last calibrated report (``calibrate=True``)."""
        self.reference_report: MembershipReport | None = None
        """The last reference-attack report (``reference=...``)."""
        self.trajectory_report: MembershipReport | None = None
        """The last trajectory-attack report (``trajectory_attack=True``, from the second evaluation on;
        its ``threshold`` is on the negated out-of-fold logit)."""

    # -- identity and state --------------------------------------------------------------
    def _measured_args(self) -> dict[str, Any]:
        """What this monitor measures: checked against the checkpoint on resume."""
        return {
            "calibrate": self.calibrate,
            "reference": reference_kind(self.reference),
            **self._probes.measured_args(),
        }

    @property
    def member_indices(self) -> np.ndarray | None:
        """Indices of the member probes into the training dataset or ``members`` (``None`` before resolving)."""
        return self._probes.member_indices

    @property
    def nonmember_indices(self) -> np.ndarray | None:
        """Indices of the non-member probes into the validation dataset or ``nonmembers``."""
        return self._probes.nonmember_indices

    @property
    def member_losses(self) -> np.ndarray:
        """Member losses per evaluation, ``[E, n]`` float32 (NaN kept)."""
        n = 0 if self.member_indices is None else len(self.member_indices)
        return np.stack(self._member_history) if self._member_history else np.zeros((0, n), np.float32)

    @property
    def nonmember_losses(self) -> np.ndarray:
        """Non-member losses per evaluation, ``[E, m]`` float32 (NaN kept)."""
        m = 0 if self.nonmember_indices is None else len(self.nonmember_indices)
        return np.stack(self._nonmember_history) if self._nonmember_history else np.zeros((0, m), np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {
            **self.base_state(),
            **self._probes.state_dict(),
            "epochs": list(self._epochs),
            "steps": list(self._steps),
            "member_losses": state_tensor(self.member_losses) if self._member_history else None,
            "nonmember_losses": state_tensor(self.nonmember_losses) if self._nonmember_history else None,
            "ref_members": state_tensor(self._ref_members),
            "ref_nonmembers": state_tensor(self._ref_nonmembers),
            "reference_members": state_tensor(self._fit_ref_members),
            "reference_nonmembers": state_tensor(self._fit_ref_nonmembers),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.load_base_state(state_dict)
        self._probes.load_state_dict(state_dict)
        self._epochs = [int(e) for e in state_dict.get("epochs", [])]
        self._steps = [int(s) for s in state_dict.get("steps", [-1] * len(self._epochs))]
        ml = state_array(state_dict, "member_losses", np.float32)
        nl = state_array(state_dict, "nonmember_losses", np.float32)
        self._member_history = [] if ml is None else [row.copy() for row in ml]
        self._nonmember_history = [] if nl is None else [row.copy() for row in nl]
        self._ref_members = state_array(state_dict, "ref_members", np.float32)
        self._ref_nonmembers = state_array(state_dict, "ref_nonmembers", np.float32)
        self._fit_ref_members = state_array(state_dict, "reference_members", np.float32)
        self._fit_ref_nonmembers = state_array(state_dict, "reference_nonmembers", np.float32)
        self._members = self._nonmembers = None  # re-resolved against the stored indices

    # -- probe resolution ----------------------------------------------------------------
    def _check_same_structure(self, members: Dataset[Any], nonmembers: Dataset[Any]) -> None:
        first_m, first_n = members[0], nonmembers[0]
        a, b = probes.item_structure(first_m), probes.item_structure(first_n)
        if a != b:
            raise ValueError(
                "`members` and `nonmembers` must yield items of the same structure (they are batched and "
                f"scored the same way), got members item {a} and nonmembers item {b}; wrap one of them so "
                "both give the same kind of item (e.g. `(x, y)` pairs, or token-id rows such as "
                "`{'input_ids': [...]}` of any length)"
            )
        if self.collate_fn is None:  # the default collate stacks members and non-members in one batch
            shapes_m, shapes_n = probes.item_shapes(first_m), probes.item_shapes(first_n)
            if shapes_m != shapes_n:
                raise ValueError(
                    f"the held-out set ({self._nonmember_source()}, the non-members) yields tensors of shape "
                    f"{shapes_n} but the members yield {shapes_m}; both are scored by the same model, so "
                    "pass held-out samples with the members' feature shape (or a `collate_fn` that pads "
                    "items of different lengths)"
                )

    def _nonmember_source(self) -> str:
        return "`nonmembers`" if self._probes.nonmembers_arg is not None else "the validation dataset"

    def _resolve(self, trainer: pl.Trainer) -> None:
        if self._members is not None and self._nonmembers is not None:
            return
        members, nonmembers = self._probes.resolve(trainer)
        assert nonmembers is not None  # required: the resolver raises otherwise
        self._check_same_structure(members, nonmembers)
        # token-id rows: the padding collate is chosen now, so a missing pad id fails before training
        probes.probe_collate(
            ConcatDataset([members, nonmembers]),
            self.collate_fn,
            pad_id=self.pad_id,
            module=trainer.lightning_module,
            owner="MembershipInferenceMonitor",
        )
        if self.slices is not None:
            slices: Any = self.slices
            fn: Callable[[Any], Hashable] = _class_of if slices == "class" else slices
            prefix = "class_" if self.slices == "class" else "group_"
            self._member_slices = np.array(
                [prefix + _slice_name(fn(members[i])) for i in range(len(members))]
            )
            self._nonmember_slices = np.array(
                [prefix + _slice_name(fn(nonmembers[i])) for i in range(len(nonmembers))]
            )
        self._members, self._nonmembers = members, nonmembers

    # -- evaluation ----------------------------------------------------------------------
    def _evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, module: torch.nn.Module | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Member and non-member losses of ``module`` (default ``pl_module``) on ``pl_module``'s device."""
        assert self._members is not None
        assert self._nonmembers is not None
        n = len(self._members)
        probe: Dataset[Any] = ConcatDataset([self._members, self._nonmembers])
        try:
            losses, _ = probes.evaluate_sharded(
                trainer,
                pl_module if module is None else module,
                probe,
                self.sample_loss_fn,
                batch_size=self.batch_size,
                collate_fn=self.collate_fn,
                device=pl_module.device,
                pad_id=self.pad_id,
            )
        except Exception as e:
            if module is not None:
                raise ValueError(
                    f"MembershipInferenceMonitor(reference={type(module).__name__}): the reference model cannot "
                    f"score the probes: {type(e).__name__}: {e}. Pass a reference that `sample_loss_fn(module, "
                    "batch)` can run (the same inputs and outputs as the trained model)"
                ) from e
            self._diagnose(pl_module, e)
            raise
        values = losses.numpy().astype(np.float32, copy=False)
        return values[:n].copy(), values[n:].copy()

    def _diagnose(self, pl_module: pl.LightningModule, error: Exception) -> None:
        """After a failed evaluation: if the members evaluate alone, blame the held-out set by name."""
        assert self._members is not None
        try:
            probes.evaluate_sample_losses(
                pl_module,
                self._members,
                self.sample_loss_fn,
                batch_size=self.batch_size,
                collate_fn=self.collate_fn,
                device=pl_module.device,
                pad_id=self.pad_id,
            )
        except Exception:
            return
        source = self._nonmember_source()
        raise ValueError(
            f"MembershipInferenceMonitor: the held-out set ({source}, the non-members) cannot be scored by "
            f"the model, while the members can: {type(error).__name__}: {error}. HINT: non-members must look "
            "like the members: the same feature shape, and labels that are class indices the model "
            "predicts (0 <= y < number of logits)"
        ) from error

    def _attack(self, members: np.ndarray, nonmembers: np.ndarray, prefix: str) -> MembershipReport:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = membership_inference(members, nonmembers, fprs=self.fprs)
        for w in caught:
            self.warn_once(f"few/{prefix}", f"MembershipInferenceMonitor ({prefix}): {w.message}")
        return report

    def _warn_unvisited(self, trainer: pl.Trainer) -> None:
        idx = self.member_indices
        if self.warned("unvisited") or self._probes.members_arg is not None or idx is None:
            return
        found = _unvisited_members(trainer, idx)
        if found is None or found[0] < 1.0:
            return
        count, exact = found
        amount = f"{int(count)}" if exact else f"about {count:.0f} (expected, the loader shuffles)"
        batches = len(trainer.train_dataloader)  # type: ignore[arg-type]
        self.warn_once(
            "unvisited",
            f"MembershipInferenceMonitor: {amount} of the {len(idx)} member probes have not been visited by training "
            f"by epoch {trainer.current_epoch} (the loop ran {trainer.num_training_batches} of "
            f"{batches} batches an epoch: `limit_train_batches` or `max_steps`); "
            "they still count as members, which pulls the attack towards chance. Pass `members=` the "
            "samples actually trained on (warned once)",
        )

    def _warn_nonfinite(self, epoch: int, members: np.ndarray, nonmembers: np.ndarray) -> int:
        bad_m, bad_n = int((~np.isfinite(members)).sum()), int((~np.isfinite(nonmembers)).sum())
        if bad_m or bad_n:
            self.warn_once(
                "nonfinite",
                f"MembershipInferenceMonitor: {bad_m + bad_n} probe losses are NaN/inf at epoch {epoch} "
                f"({bad_m} members, {bad_n} non-members); they are excluded from the attack and counted in "
                "`mem/mia/nonfinite`; an evaluation with no finite member or non-member loss logs NaN for "
                "every mem/gap and mem/mia value; the trajectory attack drops these probes for the rest of "
                "the run (`mem/mia_traj/dropped`) (warned once)",
            )
        return bad_m + bad_n

    def _metrics(self, epoch: int, members: np.ndarray, nonmembers: np.ndarray) -> dict[str, float]:
        """Every key this monitor logs, spelled out; the numbers come from ``metrics.membership``."""
        nonfinite = self._warn_nonfinite(epoch, members, nonmembers)
        m = members[np.isfinite(members)].astype(np.float64)
        nm = nonmembers[np.isfinite(nonmembers)].astype(np.float64)
        self._last_scores = {"members": m, "nonmembers": nm}
        ok = m.size > 0 and nm.size > 0
        r = self.report = self._attack(m, nm, "mem/mia") if ok else None
        metrics: dict[str, float] = {
            "mem/mia/nonfinite": float(nonfinite),
            "mem/gap/loss": loss_gap(m, nm) if ok else NAN,
            "mem/gap/loss_ratio": loss_ratio(m, nm) if ok else NAN,
            "mem/gap/member_loss": float(m.mean()) if ok else NAN,
            "mem/gap/nonmember_loss": float(nm.mean()) if ok else NAN,
            "mem/mia/auc": r.auc if r else NAN,
            "mem/mia/advantage": r.advantage if r else NAN,
        }
        for fpr in self.fprs:
            metrics[f"mem/mia/tpr@{format_fpr(fpr)}fpr"] = r.tpr_at_fpr[fpr] if r else NAN
        metrics["mem/mia/balanced_accuracy"] = r.balanced_accuracy if r else NAN
        metrics["mem/mia/n_members"] = float(m.size)
        metrics["mem/mia/n_nonmembers"] = float(nm.size)
        for name, auc in self._slice_aucs(members, nonmembers).items():
            metrics[f"mem/mia/auc/{name}"] = auc
        if self.trajectory_attack and self._member_history:  # a trajectory needs a second evaluation
            n_scored, m_scored, dropped = self._trajectory_scores(members, nonmembers)
            t = self.trajectory_report
            metrics["mem/mia_traj/auc"] = t.auc if t else NAN
            for fpr in self.fprs:
                metrics[f"mem/mia_traj/tpr@{format_fpr(fpr)}fpr"] = t.tpr_at_fpr[fpr] if t else NAN
            metrics["mem/mia_traj/n_members"] = float(n_scored)
            metrics["mem/mia_traj/n_nonmembers"] = float(m_scored)
            metrics["mem/mia_traj/dropped"] = float(dropped)
        if self.calibrate:
            metrics.update(self._calibrated_metrics(members, nonmembers))
        if self._fit_ref_members is not None and self._fit_ref_nonmembers is not None:
            metrics.update(self._reference_metrics(members, nonmembers))
        return metrics

    def _relative_attack(
        self,
        tag: str,
        members: np.ndarray,
        nonmembers: np.ndarray,
        ref_members: np.ndarray,
        ref_nonmembers: np.ndarray,
    ) -> tuple[MembershipReport | None, np.ndarray, np.ndarray]:
        """The attack on ``loss - reference loss`` (lower = member), for ``mem/mia_cal`` and ``mem/mia_ref``.

        Returns the report (None when a class has no finite score) and the scores of every probe
        (NaN where either loss is non-finite), for the per-slice AUCs.
        """
        dm_all = calibrated_losses(members, ref_members)
        dn_all = calibrated_losses(nonmembers, ref_nonmembers)
        dm, dn = dm_all[np.isfinite(dm_all)], dn_all[np.isfinite(dn_all)]
        self._last_scores.update({f"{tag}_members": dm, f"{tag}_nonmembers": dn})
        report = self._attack(dm, dn, f"mem/mia_{tag}") if dm.size and dn.size else None
        return report, dm_all, dn_all

    def _calibrated_metrics(self, members: np.ndarray, nonmembers: np.ndarray) -> dict[str, float]:
        """The ``mem/mia_cal/*`` keys: the reference is each probe's loss at the first evaluation."""
        assert self._ref_members is not None
        assert self._ref_nonmembers is not None
        c, dm_all, dn_all = self._relative_attack(
            "cal", members, nonmembers, self._ref_members, self._ref_nonmembers
        )
        self.calibrated_report = c
        metrics = {"mem/mia_cal/auc": c.auc if c else NAN, "mem/mia_cal/advantage": c.advantage if c else NAN}
        for fpr in self.fprs:
            metrics[f"mem/mia_cal/tpr@{format_fpr(fpr)}fpr"] = c.tpr_at_fpr[fpr] if c else NAN
        metrics["mem/mia_cal/balanced_accuracy"] = c.balanced_accuracy if c else NAN
        metrics["mem/mia_cal/n_members"] = float(np.isfinite(dm_all).sum())
        metrics["mem/mia_cal/n_nonmembers"] = float(np.isfinite(dn_all).sum())
        for name, auc in self._slice_aucs(dm_all, dn_all).items():
            metrics[f"mem/mia_cal/auc/{name}"] = auc
        return metrics

    def _reference_metrics(self, members: np.ndarray, nonmembers: np.ndarray) -> dict[str, float]:
        """The ``mem/mia_ref/*`` keys: the reference is ``reference=`` evaluated at fit start."""
        assert self._fit_ref_members is not None
        assert self._fit_ref_nonmembers is not None
        r, dm_all, dn_all = self._relative_attack(
            "ref", members, nonmembers, self._fit_ref_members, self._fit_ref_nonmembers
        )
        self.reference_report = r
        metrics = {"mem/mia_ref/auc": r.auc if r else NAN, "mem/mia_ref/advantage": r.advantage if r else NAN}
        for fpr in self.fprs:
            metrics[f"mem/mia_ref/tpr@{format_fpr(fpr)}fpr"] = r.tpr_at_fpr[fpr] if r else NAN
        metrics["mem/mia_ref/balanced_accuracy"] = r.balanced_accuracy if r else NAN
        metrics["mem/mia_ref/n_members"] = float(np.isfinite(dm_all).sum())
        metrics["mem/mia_ref/n_nonmembers"] = float(np.isfinite(dn_all).sum())
        for name, auc in self._slice_aucs(dm_all, dn_all).items():
            metrics[f"mem/mia_ref/auc/{name}"] = auc
        return metrics

    def _trajectory_scores(self, members: np.ndarray, nonmembers: np.ndarray) -> tuple[int, int, int]:
        """Run the trajectory attack (Liu et al., CCS 2022) on the recorded evaluations plus this one.

        Sets :attr:`trajectory_report` (``None`` when a class has no score) and the scores for the ROC
        record; returns ``(members scored, non-members scored, probes dropped)``.
        """
        member_traj = np.stack([*self._member_history, members], axis=1)  # [n, E]
        nonmember_traj = np.stack([*self._nonmember_history, nonmembers], axis=1)
        sm, sn = trajectory_attack_scores(member_traj, nonmember_traj, folds=2, seed=self.seed)
        fm, fn = sm[np.isfinite(sm)], sn[np.isfinite(sn)]
        self._last_scores.update(traj_members=fm, traj_nonmembers=fn)
        ok = fm.size > 0 and fn.size > 0
        # the non-members are (a subset of) mem/mia's: its resolution warning covers this attack too
        self.trajectory_report = self._attack(-fm, -fn, "mem/mia") if ok else None
        dropped = (~np.isfinite(member_traj)).any(axis=1).sum() + (~np.isfinite(nonmember_traj)).any(
            axis=1
        ).sum()
        return int(fm.size), int(fn.size), int(dropped)

    def _slice_aucs(self, members: np.ndarray, nonmembers: np.ndarray) -> dict[str, float]:
        if self._member_slices is None or self._nonmember_slices is None:
            return {}
        return slice_aucs(
            members,
            nonmembers,
            member_slices=self._member_slices,
            nonmember_slices=self._nonmember_slices,
            min_size=self.min_slice_size,
        )

    # -- the reference of `reference=` (once, before the first training step) ----------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and self.reference == "peft_base":
            peft_model_of(pl_module, type(self).__name__)  # no adapters: a clear error before training

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Evaluates the probes under ``reference`` once (never again on resume: the checkpoint holds them)."""
        super().on_train_start(trainer, pl_module)
        # unusable probes (e.g. token-id rows with no pad id) fail here, before the first step
        self._resolve(trainer)
        if self.reference is None or self._fit_ref_members is not None:
            return
        if self.reference == "peft_base":
            with peft_model_of(pl_module, type(self).__name__).disable_adapter():
                ref = self._evaluate(trainer, pl_module)
        elif isinstance(self.reference, torch.nn.Module):
            self.reference.to(pl_module.device)
            self._check_vocabulary(pl_module, self.reference)
            ref = self._evaluate(trainer, pl_module, self.reference)
        else:  # "fit_start": the weights before the first step
            ref = self._evaluate(trainer, pl_module)
        self._fit_ref_members, self._fit_ref_nonmembers = ref

    def _check_vocabulary(self, pl_module: pl.LightningModule, reference: torch.nn.Module) -> None:
        """Both models' logits on the first member probe batch have the same last dimension, else a clear error."""
        assert self._members is not None
        check_reference_vocabulary(
            pl_module,
            reference,
            self._members,
            owner="MembershipInferenceMonitor",
            batch_size=self.batch_size,
            collate_fn=self.collate_fn,
            pad_id=self.pad_id,
        )

    # -- the evaluation cycle (see MemorisationCallback) ------------------------------------
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Evaluate the probes, run the attacks, keep the losses; returns this evaluation's metrics."""
        epoch = int(trainer.current_epoch)
        self._resolve(trainer)
        members, nonmembers = self._evaluate(trainer, pl_module)
        self._warn_unvisited(trainer)
        if self.calibrate and self._ref_members is None:
            self._ref_members, self._ref_nonmembers = members.copy(), nonmembers.copy()
        metrics = self._metrics(epoch, members, nonmembers)
        self._epochs.append(epoch)
        self._steps.append(int(trainer.global_step))
        self._member_history.append(members)
        self._nonmember_history.append(nonmembers)
        return metrics

    def metrics(self, result: dict[str, float]) -> dict[str, float]:
        return result

    def write_files(self, result: dict[str, float]) -> None:
        """Write ``losses.npz`` and ``metrics.json`` in the background (one writer thread, in order).

        The arrays are snapshotted here; the writer only serialises them (uncompressed ``.npz``:
        float losses barely compress, and zlib cost grows with the epochs) and renames atomically
        through :mod:`memcallbacks.utilities.fileio`. A write error surfaces at the end of the epoch
        or of fit; :meth:`flush` waits for the pending write.
        """
        assert self.member_indices is not None
        assert self.nonmember_indices is not None
        arrays = {
            "epochs": np.asarray(self._epochs, dtype=np.int64),
            "steps": np.asarray(self._steps, dtype=np.int64),
            "member_losses": self.member_losses,
            "nonmember_losses": self.nonmember_losses,
            "member_indices": self.member_indices.copy(),
            "nonmember_indices": self.nonmember_indices.copy(),
        }
        if self._fit_ref_members is not None and self._fit_ref_nonmembers is not None:
            arrays["reference_member_losses"] = self._fit_ref_members.copy()
            arrays["reference_nonmember_losses"] = self._fit_ref_nonmembers.copy()
        summary = {
            "history": self.history,
            "fprs": list(self.fprs),
            "calibrate": self.calibrate,
            "reference": reference_kind(self.reference),
            "n_members": len(self.member_indices),
            "n_nonmembers": len(self.nonmember_indices),
        }
        self.write_in_background(rundir.write_membership, self.run_dir, arrays, summary)

    def records(self, result: dict[str, float]) -> list[loggers.Record]:
        """ROC curves of each attack and histograms of the member and non-member losses (aggregate)."""
        if self.report is None:
            return []
        epoch = self.last_epoch_done
        scores = self._last_scores
        m, nm = scores["members"], scores["nonmembers"]
        fpr, tpr, _ = roc_curve(m, nm)
        out: list[loggers.Record] = [
            loggers.RocCurve("mem/mia/roc", fpr, tpr, epoch, title="loss-threshold MIA")
        ]
        if self.calibrate and self.calibrated_report is not None:
            fpr_c, tpr_c, _ = roc_curve(scores["cal_members"], scores["cal_nonmembers"])
            out.append(loggers.RocCurve("mem/mia_cal/roc", fpr_c, tpr_c, epoch, title="calibrated MIA"))
        if self.reference_report is not None and "ref_members" in scores:
            fpr_r, tpr_r, _ = roc_curve(scores["ref_members"], scores["ref_nonmembers"])
            out.append(loggers.RocCurve("mem/mia_ref/roc", fpr_r, tpr_r, epoch, title="reference-model MIA"))
        if self.trajectory_report is not None and "traj_members" in scores:
            fpr_t, tpr_t, _ = roc_curve(-scores["traj_members"], -scores["traj_nonmembers"])
            out.append(loggers.RocCurve("mem/mia_traj/roc", fpr_t, tpr_t, epoch, title="trajectory MIA"))
        out.append(loggers.Histogram("mem/mia/member_losses", m, epoch))
        out.append(loggers.Histogram("mem/mia/nonmember_losses", nm, epoch))
        return out
