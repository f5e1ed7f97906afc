"""``memcallbacks demo``: every monitor on a small canary language model, end to end.

A character language model (:class:`~memcallbacks.toy.WindowLM`; with ``--dp`` its DP-SGD
twin :class:`~memcallbacks.toy.DPWindowLM`) is trained on generated payment records
into which secret canaries ``"my pin is NNNNNN."`` are inserted 1-32 times (Carlini et al.
2019), plus audit canaries each included with probability 1/2 (Steinke et al. 2023). Attached:
:class:`~memcallbacks.LossTrajectoryTracker`, :class:`~memcallbacks.MembershipInferenceMonitor`,
:class:`~memcallbacks.CanaryExposureMonitor`, :class:`~memcallbacks.PrivacyAuditMonitor`,
:class:`~memcallbacks.LeakageEarlyStopping` and, with ``--dp``,
:class:`~memcallbacks.DPEpsilonLogger`. Metrics go to an offline W&B run and CSV (or the
loggers asked for); at the end the report is written from the run directory.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

__all__ = ["run_demo", "lm_sample_loss"]


def lm_sample_loss(module: Any, batch: Any) -> torch.Tensor:
    """Per-sequence mean next-token cross-entropy of a padded ``[B, T]`` batch (pad id 0)."""
    ids = batch
    logits = module(ids[:, :-1])
    logits = getattr(logits, "logits", logits)
    target = ids[:, 1:]
    nll = F.cross_entropy(logits.float().transpose(1, 2), target, reduction="none")
    mask = (target != 0).float()
    return (nll * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def _loggers(names: Sequence[str], out: Path) -> list[Any]:
    from pytorch_lightning import loggers as L

    result: list[Any] = []
    for name in names:
        if name == "csv":
            result.append(L.CSVLogger(str(out), name="csv"))
        elif name == "wandb":
            os.environ.setdefault("WANDB_MODE", "offline")
            os.environ.setdefault("WANDB_SILENT", "true")
            result.append(L.WandbLogger(project="memcallbacks-demo", save_dir=str(out), offline=True))
        elif name == "tensorboard":
            result.append(L.TensorBoardLogger(str(out), name="tensorboard"))
        elif name == "mlflow":
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            result.append(
                L.MLFlowLogger(
                    experiment_name="memcallbacks-demo",
                    tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}",
                    artifact_location=str((out / "mlflow-artifacts").resolve()),
                )
            )
        else:  # argparse restricts the choices; keep a clear message for direct callers
            raise ValueError(f"`loggers` entries can be wandb, tensorboard, mlflow or csv, got {name!r}")
    return result


def _callback_seconds(profiler: Any) -> dict[str, float]:
    """Seconds spent in each callback's hooks, from Lightning's SimpleProfiler."""
    totals: dict[str, float] = {}
    for action, durations in getattr(profiler, "recorded_durations", {}).items():
        if action.startswith("[Callback]"):
            name = action[len("[Callback]") :].split(".")[0].split("{")[0]
            totals[name] = totals.get(name, 0.0) + float(np.sum(durations))
    return totals


def run_demo(
    *,
    out: str | os.PathLike[str] = "demo_run",
    epochs: int = 4,
    sentences: int = 10000,
    loggers: Sequence[str] = ("wandb", "csv"),
    dp: bool = False,
    stop_bits: float | None = None,
    seed: int = 0,
    report: bool = True,
    audit_canaries: int = 256,
    batch_size: int = 128,
) -> dict[str, Any]:
    """Train the demo model with every monitor; return the key numbers and paths.

    Args:
        out: output folder (loggers, run directory, report).
        epochs: training epochs.
        sentences: generated training sentences (plus 1,000 held out).
        loggers: any of ``"wandb"`` (offline), ``"tensorboard"``, ``"mlflow"``, ``"csv"``.
        dp: train with DP-SGD (Opacus; noise 1.0, clip 1.0, Poisson batches) and log epsilon.
        stop_bits: stop training once ``mem/canary/exposure_max`` exceeds this many bits.
        seed: seed of data, canaries and training.
        report: write the HTML/Markdown report at the end.
        audit_canaries: number of one-run-audit canaries (each included with probability 1/2).
        batch_size: training batch size.

    Returns:
        A dict with ``run_dir``, ``report`` (paths), ``exposure_by_count``, ``mia_auc``,
        ``audit_epsilon_lb``, ``dp_epsilon``, ``stopped_reason``, ``seconds`` and
        ``callback_seconds``.
    """
    from pytorch_lightning.profilers import SimpleProfiler

    from memcallbacks import (
        CanaryExposureMonitor,
        CanarySet,
        CharTokenizer,
        LeakageEarlyStopping,
        LossTrajectoryTracker,
        MembershipInferenceMonitor,
        PrivacyAuditMonitor,
    )
    from memcallbacks.toy import (
        DPWindowLM,
        TokenDataset,
        WindowLM,
        collate_tokens,
        lm_loader,
        make_payment_corpus,
    )

    if epochs < 1:
        raise ValueError(f"`epochs` must be >= 1, got {epochs}")
    if sentences < 100:
        raise ValueError(f"`sentences` must be >= 100, got {sentences}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run_dir = out / "memcallbacks"
    pl.seed_everything(seed, workers=True, verbose=False)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")

    t0 = time.perf_counter()
    tok = CharTokenizer()
    corpus = make_payment_corpus(sentences + 1000, seed=seed)
    train_texts, heldout_texts = corpus[:sentences], corpus[sentences:]
    canaries = CanarySet("my pin is {secret}.", tok, repetitions=(1, 2, 4, 8, 16, 32), per_count=2, seed=seed)
    audit_set = CanarySet(
        "my code is {secret}.", tok, repetitions=(1,), per_count=audit_canaries, seed=seed + 1
    )
    audit = PrivacyAuditMonitor(audit_set, seed=seed, delta=1e-5 if dp else 0.0, run_dir=run_dir)
    texts: Any = audit.inject(canaries.inject(train_texts))

    loader: Any = lm_loader(texts, tok, batch_size=batch_size, shuffle=True)
    if dp:
        from opacus.data_loader import DPDataLoader

        # Poisson sampling, which the accountant assumes
        loader = DPDataLoader.from_data_loader(loader, generator=torch.Generator().manual_seed(seed))
        model: pl.LightningModule = DPWindowLM(tok.vocab_size, noise_multiplier=1.0, max_grad_norm=1.0)
    else:
        model = WindowLM(tok.vocab_size)

    exposure = CanaryExposureMonitor(canaries, method="extrapolated", num_references=5000, run_dir=run_dir)
    members = TokenDataset(train_texts[:1000], tok)
    nonmembers = TokenDataset(heldout_texts, tok)
    callbacks: list[Any] = [
        LossTrajectoryTracker(source="step", correct_key=None, run_dir=run_dir),
        MembershipInferenceMonitor(
            members, nonmembers, sample_loss_fn=lm_sample_loss, collate_fn=collate_tokens, run_dir=run_dir
        ),
        exposure,
        audit,
    ]
    if dp:
        from memcallbacks import DPEpsilonLogger

        callbacks.append(DPEpsilonLogger(delta=1e-5, run_dir=run_dir))
    stopper = None
    if stop_bits is not None:
        stopper = LeakageEarlyStopping.exposure(bits=stop_bits, restore="best_safe", run_dir=run_dir)
        callbacks.append(stopper)

    profiler = SimpleProfiler(dirpath=str(out), filename="profile")
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=_loggers(loggers, out),
        callbacks=callbacks,
        default_root_dir=str(out),
        profiler=profiler,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    t_fit = time.perf_counter()
    trainer.fit(model, loader)
    fit_seconds = time.perf_counter() - t_fit
    if "wandb" in loggers:
        import wandb

        wandb.finish()  # close the offline run so `wandb sync` sees a complete file
    cb_seconds = _callback_seconds(profiler)

    results: dict[str, Any] = {"run_dir": run_dir, "seconds": None, "callback_seconds": cb_seconds}
    hist = exposure.history
    if len(hist["exposure"]):
        reps, last = hist["repetitions"], hist["exposure"][-1]
        results["exposure_by_count"] = {int(r): float(np.mean(last[reps == r])) for r in np.unique(reps)}
    mia = callbacks[1]
    results["mia_auc"] = float(mia.report.auc) if mia.report is not None else float("nan")
    results["audit_epsilon_lb"] = float(audit.history[-1]["epsilon_lb"]) if audit.history else float("nan")
    results["dp_epsilon"] = (
        float(callbacks[4].history[-1]["epsilon"]) if dp and callbacks[4].history else None
    )
    results["stopped_reason"] = stopper.reason if stopper is not None else None

    if report:
        from memcallbacks.report import build_report

        results["report"] = build_report(run_dir, out=out / "report")
    results["seconds"] = time.perf_counter() - t0
    _print_summary(results, loggers, out, fit_seconds)
    return results


def _print_summary(results: dict[str, Any], loggers: Sequence[str], out: Path, fit_seconds: float) -> None:
    print()
    print("=" * 72)
    print("memcallbacks demo: results")
    print("=" * 72)
    if "exposure_by_count" in results:
        print("canary exposure (bits, mean of 2 canaries) by times inserted:")
        print("  " + "  ".join(f"x{k}: {v:5.1f}" for k, v in results["exposure_by_count"].items()))
    print(f"membership-inference AUC (1,000 members vs 1,000 held out): {results['mia_auc']:.3f}")
    print(f"one-run audit epsilon lower bound (95%): {results['audit_epsilon_lb']:.3f}")
    if results.get("dp_epsilon") is not None:
        print(f"DP-SGD epsilon (accountant, delta 1e-5): {results['dp_epsilon']:.3f}")
    if results.get("stopped_reason"):
        print(f"early stopping: {results['stopped_reason']}")
    print(f"\ntime: {results['seconds']:.1f} s in all, {fit_seconds:.1f} s in Trainer.fit; in the monitors:")
    for name, sec in sorted(results["callback_seconds"].items(), key=lambda kv: -kv[1]):
        if sec >= 0.01:
            print(f"  {name:<32s} {sec:7.2f} s  ({100 * sec / max(fit_seconds, 1e-9):4.1f}% of fit)")
    print(f"\nrun directory: {results['run_dir']}")
    if "report" in results:
        print(f"report:        {results['report']['html']}")
        print(f"summary:       {results['report']['markdown']}")
    if "wandb" in loggers:
        runs = sorted((out / "wandb").glob("offline-run-*"))
        if runs:
            print(f"W&B offline run: {runs[-1]}\n  upload it with: wandb sync {runs[-1]}")
