"""``memcallbacks demo``: every monitor on a small canary language model, end to end.

A character language model (:class:`~memcallbacks.demos.toy.WindowLM`; with ``--dp`` its DP-SGD
twin :class:`~memcallbacks.demos.toy.DPWindowLM`) is trained on generated payment records
into which secret canaries ``"my pin is NNNNNN."`` are inserted 1-32 times (Carlini et al.
2019), plus audit canaries each included with probability 1/2 (Steinke et al. 2023). Attached:
:class:`~memcallbacks.LossTrajectoryTracker` (ranking by the language-model score
``calibrated_loss``: the lowest loss reached, calibrated by the zlib entropy of each text),
:class:`~memcallbacks.MembershipInferenceMonitor`, two
:class:`~memcallbacks.SequenceMemorisationMonitor` (training text vs held-out text, and the
canary sentences vs fresh canaries never trained on, ``name="canaries"``),
:class:`~memcallbacks.CanaryExposureMonitor`, :class:`~memcallbacks.PrivacyAuditMonitor`,
:class:`~memcallbacks.LeakageEarlyStopping` and, with ``--dp``,
:class:`~memcallbacks.DPEpsilonMonitor`. Metrics go to an offline W&B run and CSV (or the
loggers asked for); at the end the report is written from the run directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

__all__ = ["DemoOutputError", "lm_sample_loss", "run_demo"]


def lm_sample_loss(module: Any, batch: Any) -> torch.Tensor:
    """Per-sequence mean next-token cross-entropy of a padded ``[B, T]`` batch (pad id 0)."""
    ids = batch
    logits = module(ids[:, :-1])
    logits = getattr(logits, "logits", logits)
    target = ids[:, 1:]
    nll = F.cross_entropy(logits.float().transpose(1, 2), target, reduction="none")
    mask = (target != 0).float()
    return (nll * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class DemoOutputError(ValueError):
    """The demo's ``out`` folder cannot be used (a file, not writable, another tool's run)."""


#: what the demo writes into ``out``; a second run removes these (and only these) first
_DEMO_OUTPUTS = (
    "memcallbacks",
    "report",
    "csv",
    "wandb",
    "tensorboard",
    "mlflow.db",
    "mlflow-artifacts",
    "checkpoints",
    "memcallbacks-demo",
    "lightning_logs",
    "fit-profile.txt",
)
_DEMO_MARKER = ".memcallbacks-demo"


def _prepare_out(out: Path) -> list[str]:
    """Create ``out``, or empty the demo's own outputs from an earlier demo run there; return what was removed."""
    if out.exists() and not out.is_dir():
        raise DemoOutputError(f"{str(out)!r} is a file; pass a folder (it is created if missing)")
    removed: list[str] = []
    if out.is_dir():
        earlier_demo = (out / _DEMO_MARKER).exists() or (out / "fit-profile.txt").exists()
        if not earlier_demo and (out / "memcallbacks").exists():
            raise DemoOutputError(
                f"{str(out)!r} holds a memcallbacks run directory that the demo did not write; pass another "
                "folder (the demo replaces only its own earlier output)"
            )
        if earlier_demo:
            for name in _DEMO_OUTPUTS:
                target = out / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                    removed.append(name)
                elif target.exists() or target.is_symlink():
                    target.unlink()
                    removed.append(name)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / _DEMO_MARKER).write_text(
            "written by `memcallbacks demo`; a new demo run replaces this folder's outputs\n"
        )
    except OSError as e:
        raise DemoOutputError(f"cannot write {str(out)!r} ({e.strerror or e}); pass a writable folder") from e
    return removed


_CHATTY_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric", "mlflow")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide Lightning's and MLflow's start-up chatter and tips, and notices about their own code.

    The monitors' own warnings still show.
    """
    quiet = {n: logging.WARNING for n in _CHATTY_LOGGERS}
    quiet["pytorch_lightning.loggers.mlflow"] = logging.ERROR  # "Experiment ... not found. Creating it."
    levels = {n: logging.getLogger(n).level for n in quiet}
    for n, level in quiet.items():
        logging.getLogger(n).setLevel(level)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
            # Lightning renames `mem/mia/tpr@1%fpr` to `mem/mia/tpr1fpr` for MLflow (see the README)
            warnings.filterwarnings("ignore", message=".*MLFlow only allows.*")
            yield
    finally:
        for n, level in levels.items():  # back to the caller's settings
            logging.getLogger(n).setLevel(level)


def _loggers(names: Sequence[str], out: Path) -> list[Any]:
    from pytorch_lightning import loggers as L

    result: list[Any] = []
    for name in names:
        if name == "csv":
            result.append(L.CSVLogger(str(out), name="csv"))
        elif name == "wandb":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            # the run is opened here (offline, no account) rather than by WandbLogger, whose default
            # `anonymous` argument makes wandb print a deprecation warning
            run = wandb.init(project="memcallbacks-demo", dir=str(out), mode="offline")
            result.append(L.WandbLogger(experiment=run, save_dir=str(out)))
        elif name == "tensorboard":
            result.append(L.TensorBoardLogger(str(out), name="tensorboard"))
        elif name == "mlflow":
            import mlflow  # noqa: F401 - configures its logger on import: quieten it afterwards

            logging.getLogger("mlflow").setLevel(logging.WARNING)
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

    ``out`` is created, or, if an earlier demo run wrote it, its demo outputs (run directory,
    report, logger folders, checkpoints, profile) are removed first, so every run starts clean.

    Args:
        out: output folder (loggers, run directory with the report, checkpoints, profile).
        epochs: training epochs (>= 1).
        sentences: generated training sentences (>= 100; plus 1,000 held out).
        loggers: any of ``"wandb"`` (offline), ``"tensorboard"``, ``"mlflow"``, ``"csv"``.
        dp: train with DP-SGD (Opacus; noise 1.0, clip 1.0, Poisson batches) and log epsilon.
        stop_bits: stop training once ``mem/canary/exposure_max`` exceeds this many bits and
            restore the last safe weights; ``None``: no early stopping.
        seed: seed of data, canaries and training.
        report: write the HTML/Markdown report at the end (to ``<out>/memcallbacks/report``).
        audit_canaries: number of one-run-audit canaries (each included with probability 1/2).
        batch_size: training batch size.

    Returns:
        A dict with ``run_dir``, ``report`` (paths), ``exposure_epoch`` and ``exposure_by_count``
        (the last evaluation), ``restored_epoch`` and ``kept_exposure_by_count`` (after a
        rollback), ``mia_auc``, ``extraction`` (the last greedy and (n, p) extraction rates of the
        training text and of the canaries, and the canaries extracted by insertion count),
        ``canary_top1`` (the copies of the canaries inserted >= 16 times that the tracker's score
        ranks in the top 1%), ``audit_epsilon_lb``, ``dp_epsilon``, ``stopped_reason``,
        ``stopping``, ``seconds``, ``callback_seconds`` and ``logger_paths``.

    Raises:
        ValueError, TypeError: an argument out of range (named in the message).
        DemoOutputError: ``out`` is a file, cannot be written, or holds a run the demo did not write.

    Example:
        >>> result = run_demo(out="/tmp/demo", epochs=1, sentences=500)  # doctest: +SKIP
        >>> sorted(result["exposure_by_count"])  # doctest: +SKIP
        [1, 2, 4, 8, 16, 32]
    """
    from pytorch_lightning.profilers import SimpleProfiler

    from memcallbacks.utilities.validation import check_bool, check_choice, check_int, check_real, check_seed

    epochs = check_int("epochs", epochs, minimum=1)
    sentences = check_int("sentences", sentences, minimum=100)
    loggers = tuple(
        check_choice("loggers", name, ("wandb", "tensorboard", "mlflow", "csv")) for name in loggers
    )
    dp = check_bool("dp", dp)
    if stop_bits is not None:
        stop_bits = check_real("stop_bits", stop_bits, hint="or None for no stopping")
    seed = check_seed("seed", seed)
    report = check_bool("report", report)
    audit_canaries = check_int("audit_canaries", audit_canaries, minimum=2)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    out = Path(out)
    removed = _prepare_out(out)
    if removed:
        print(f"memcallbacks demo: replaced the earlier demo run in {out} ({', '.join(removed)})")
    run_dir = out / "memcallbacks"

    t0 = time.perf_counter()
    with _quiet():
        pl.seed_everything(seed, workers=True, verbose=False)
        demo = _build(
            run_dir,
            sentences=sentences,
            dp=dp,
            seed=seed,
            audit_canaries=audit_canaries,
            batch_size=batch_size,
        )
        if stop_bits is not None:
            demo.stopper = _stopper(stop_bits, run_dir)
            demo.callbacks.append(demo.stopper)
        profiler = SimpleProfiler(dirpath=str(out), filename="profile")  # writes fit-profile.txt
        logger_objects = _loggers(loggers, out)
        fit_seconds = _fit(demo, out, epochs=epochs, loggers=logger_objects, profiler=profiler)
        if "wandb" in loggers:
            import wandb

            wandb.finish()  # close the offline run so `wandb sync` sees a complete file
    results = _results(demo, run_dir, out, logger_objects, _callback_seconds(profiler))
    results["stop_bits"] = stop_bits
    if report:
        from memcallbacks.report import build_report

        results["report"] = build_report(run_dir)
    results["seconds"] = time.perf_counter() - t0
    _print_summary(results, loggers, out, fit_seconds)
    return results


@dataclass
class _Demo:
    """What one demo run builds: the training texts, the model and its loader, the monitors."""

    texts: Any
    canaries: Any
    members: Any
    nonmembers: Any
    model: Any
    loader: Any
    mia: Any
    callbacks: list[Any]
    dp_monitor: Any = None
    stopper: Any = None


def _build(
    run_dir: Path, *, sentences: int, dp: bool, seed: int, audit_canaries: int, batch_size: int
) -> _Demo:
    """The generated corpus with both canary sets inserted, its loader, the model, and every monitor."""
    from memcallbacks import CanaryExposureMonitor, CanarySet, CharTokenizer, PrivacyAuditMonitor
    from memcallbacks.demos.toy import DPWindowLM, TokenDataset, WindowLM, make_payment_corpus

    tok = CharTokenizer()
    corpus = make_payment_corpus(sentences + 1000, seed=seed)
    train_texts, heldout_texts = corpus[:sentences], corpus[sentences:]
    canaries = CanarySet("my pin is {secret}.", tok, repetitions=(1, 2, 4, 8, 16, 32), per_count=2, seed=seed)
    audit_set = CanarySet(
        "my code is {secret}.", tok, repetitions=(1,), per_count=audit_canaries, seed=seed + 1
    )
    audit = PrivacyAuditMonitor(audit_set, seed=seed, delta=1e-5 if dp else 0.0, run_dir=run_dir)
    texts: Any = audit.inject(canaries.inject(train_texts))
    loader = _loader(texts, tok, dp=dp, seed=seed, batch_size=batch_size)
    if dp:
        model: pl.LightningModule = DPWindowLM(tok.vocab_size, noise_multiplier=1.0, max_grad_norm=1.0)
    else:
        model = WindowLM(tok.vocab_size)
    exposure = CanaryExposureMonitor(canaries, method="extrapolated", num_references=5000, run_dir=run_dir)
    members = TokenDataset(train_texts[:1000], tok)
    nonmembers = TokenDataset(heldout_texts, tok)
    demo = _Demo(texts, canaries, members, nonmembers, model, loader, mia=None, callbacks=[])
    demo.mia = _mia(demo, run_dir)
    demo.callbacks = [
        _tracker(texts, run_dir),
        demo.mia,
        *_sequence_monitors(canaries, members, heldout_texts, tok, run_dir, seed),
        exposure,
        audit,
    ]
    if dp:
        from memcallbacks import DPEpsilonMonitor

        demo.dp_monitor = DPEpsilonMonitor(delta=1e-5, run_dir=run_dir)
        demo.callbacks.append(demo.dp_monitor)
    return demo


def _stopper(stop_bits: float, run_dir: Path) -> Any:
    """Stop once ``mem/canary/exposure_max`` exceeds ``stop_bits`` and restore the last safe weights."""
    from memcallbacks import LeakageEarlyStopping

    return LeakageEarlyStopping.exposure(bits=stop_bits, restore="best_safe", run_dir=run_dir)


def _loader(texts: Any, tok: Any, *, dp: bool, seed: int, batch_size: int) -> Any:
    """The training loader; with DP-SGD, Poisson sampling (which the accountant assumes)."""
    from memcallbacks.demos.toy import lm_loader

    loader: Any = lm_loader(texts, tok, batch_size=batch_size, shuffle=True)
    if dp:
        from opacus.data_loader import DPDataLoader

        loader = DPDataLoader.from_data_loader(loader, generator=torch.Generator().manual_seed(seed))
    return loader


def _mia(demo: _Demo, run_dir: Path) -> Any:
    """The membership monitor: 1,000 training texts against the held-out texts."""
    from memcallbacks import MembershipInferenceMonitor
    from memcallbacks.demos.toy import collate_tokens

    return MembershipInferenceMonitor(
        demo.members,
        demo.nonmembers,
        sample_loss_fn=lm_sample_loss,
        collate_fn=collate_tokens,
        run_dir=run_dir,
    )


def _tracker(texts: Any, run_dir: Path) -> Any:
    """The trajectory tracker, ranking by ``calibrated_loss``.

    Language models: a memorised sequence has a *low* loss, but so has templated text; rank by the
    lowest loss reached below a reference that was not trained on it, the text's zlib entropy (nats
    per character, the units of the per-character mean loss the model returns).
    """
    from memcallbacks import LossTrajectoryTracker
    from memcallbacks.metrics import zlib_entropy

    return LossTrajectoryTracker(
        source="step",
        correct_key=None,
        score="calibrated_loss",
        reference=zlib_entropy([texts[i] for i in range(len(texts))]),
        run_dir=run_dir,
    )


def _sequence_monitors(
    canaries: Any, members: Any, heldout_texts: Sequence[str], tok: Any, run_dir: Path, seed: int
) -> list[Any]:
    """The two sequence monitors.

    Extraction of the first 32 tokens of training text (16-token prompt, 16-token continuation)
    against held-out text, and of the canaries' secrets ("my pin is " + BOS = 11 tokens,
    "NNNNNN." = 7) against fresh canaries of the same format that were never trained on.
    """
    from memcallbacks import SequenceMemorisationMonitor
    from memcallbacks.demos.toy import TokenDataset

    fresh = [canaries.format.format(secret=c) for c in canaries.sample_references(200, seed=seed + 2)]
    sequence = SequenceMemorisationMonitor(
        members,
        TokenDataset(heldout_texts[:1000], tok),
        prefix_len=16,
        suffix_len=16,
        num_probes=500,  # of each; greedy decoding of 1,000 + 1,000 would double the demo's monitor time
        tokenizer=tok,
        batch_size=256,
        run_dir=run_dir,
    )
    canary_sequence = SequenceMemorisationMonitor(
        TokenDataset([c.text for c in canaries], tok),
        TokenDataset(fresh, tok),
        prefix_len=11,
        suffix_len=7,
        tokenizer=tok,
        batch_size=256,
        name="canaries",
        run_dir=run_dir,
    )
    return [sequence, canary_sequence]


def _fit(demo: _Demo, out: Path, *, epochs: int, loggers: list[Any], profiler: Any) -> float:
    """Train with every monitor and a checkpoint per epoch; the seconds ``Trainer.fit`` took."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=loggers,
        callbacks=[*demo.callbacks, ModelCheckpoint(dirpath=str(out / "checkpoints"))],
        default_root_dir=str(out),
        profiler=profiler,
        enable_model_summary=False,
        enable_progress_bar=False,
        log_every_n_steps=10,
    )
    t_fit = time.perf_counter()
    try:
        trainer.fit(demo.model, demo.loader)
    except (KeyboardInterrupt, SystemExit) as e:  # Lightning turns Ctrl-C into sys.exit(1)
        if isinstance(e, KeyboardInterrupt) or trainer.interrupted:
            _print_interrupted(demo, trainer, out)
        raise
    return time.perf_counter() - t_fit


def _print_interrupted(demo: _Demo, trainer: Any, out: Path) -> None:
    """After Ctrl-C: what each monitor kept in the run directory, the checkpoints, and how to see them."""
    print(
        f"\nmemcallbacks demo: interrupted (Ctrl-C) in epoch {trainer.current_epoch}; what was kept:",
        flush=True,
    )
    for cb in demo.callbacks:
        history = getattr(cb, "history", None)
        try:
            folder = str(cb.run_dir)
        except (AttributeError, RuntimeError):
            folder = str(getattr(cb, "path", "") or "")
        if not isinstance(history, list):
            continue
        last = history[-1] if history else None
        kept = f"evaluations up to epoch {last.get('epoch')}" if last else "nothing evaluated yet"
        print(f"  {type(cb).__name__:<30s} {kept}: {folder}")
    ckpts = sorted((out / "checkpoints").glob("*.ckpt"))
    print(
        f"  checkpoints: {', '.join(p.name for p in ckpts) if ckpts else 'none yet'} in {out / 'checkpoints'}"
    )
    print(f"  the report of what was kept: memcallbacks report {out}", flush=True)


def _results(
    demo: _Demo, run_dir: Path, out: Path, logger_objects: Sequence[Any], callback_seconds: dict[str, float]
) -> dict[str, Any]:
    """The key numbers, read back from the run directory (and the monitors), and where things are."""
    results: dict[str, Any] = {
        "run_dir": run_dir,
        "seconds": None,
        "callback_seconds": callback_seconds,
        "logger_paths": _logger_paths(logger_objects, out),
        "checkpoints": sorted(str(p) for p in (out / "checkpoints").glob("*.ckpt")),
        "profile": out / "fit-profile.txt",
    }
    results.update(_numbers(run_dir))
    mia = demo.mia
    results["mia_auc"] = float(mia.report.auc) if mia.report is not None else float("nan")
    results["mia_tpr"] = {float(f): float(t) for f, t in mia.report.tpr_at_fpr.items()} if mia.report else {}
    results["mia_members"], results["mia_nonmembers"] = len(demo.members), len(demo.nonmembers)
    results["extraction"] = _extraction(run_dir, [c.repetitions for c in demo.canaries])
    results["canary_top1"] = _canary_top1(run_dir)
    dp_monitor = demo.dp_monitor
    results["dp_epsilon"] = (
        float(dp_monitor.history[-1]["mem/dp/epsilon"])
        if dp_monitor is not None and dp_monitor.history
        else None
    )
    results["stopped_reason"] = demo.stopper.reason if demo.stopper is not None else None
    results["restored_epoch"] = _restored(run_dir)
    if results["restored_epoch"] is not None:
        results.update(_numbers(run_dir, epoch=results["restored_epoch"], prefix="kept_"))
    return results


def _restored(run_dir: Path) -> int | None:
    """The epoch whose weights early stopping restored, as ``stopping.json`` records it."""
    from memcallbacks.rundir import RunDirectory

    stop = RunDirectory(run_dir).stopping()
    return None if stop is None else stop.restored_epoch


def _numbers(run_dir: Path, epoch: int | None = None, prefix: str = "") -> dict[str, Any]:
    """Exposure by insertion count and the audit bound, read back from the run directory.

    The last evaluation, or the one at ``epoch``; keys get ``prefix``.
    """
    from memcallbacks.rundir import RunDirectory

    run = RunDirectory(run_dir)
    out: dict[str, Any] = {}
    exp = run.exposure()
    if exp is not None and exp.exposure.size:
        epochs = exp.epochs.tolist()
        row = -1 if epoch is None else (epochs.index(epoch) if epoch in epochs else None)
        if row is not None:
            out[f"{prefix}exposure_epoch"] = int(epochs[row])
            out[f"{prefix}exposure_by_count"] = exp.mean_by_repetition(row)
            out[f"{prefix}canaries_per_count"] = {
                int(r): int((exp.repetitions == r).sum()) for r in out[f"{prefix}exposure_by_count"]
            }
    if epoch is None:
        audit = run.audit()
        hist = audit.history if audit is not None else []
        value = hist[-1].get("epsilon_lb") if hist else None
        out["audit_epsilon_lb"] = float("nan") if value is None else float(value)  # null = NaN, never 0
        out["audit_epoch"] = int(hist[-1]["epoch"]) if hist else None
        mem = run.membership()
        out["mia_epoch"] = int(mem.epochs[-1]) if mem is not None and mem.epochs.size else None
    return out


def _extraction(run_dir: Path, repetitions: Sequence[int]) -> dict[str, Any] | None:
    """The last greedy and (n, p) extraction rates of both sequence monitors, from the run directory."""
    from memcallbacks.rundir import RunDirectory, as_number

    run = RunDirectory(run_dir)
    text, canary = run.sequence(), run.sequence("sequence_canaries")
    if text is None or canary is None or not text.history or not canary.history:
        return None
    last_t, last_c = text.history[-1], canary.history[-1]
    n = max(int(v) for v in canary.summary.get("n_tries") or [1])
    out: dict[str, Any] = {
        "epoch": int(last_t["epoch"]),
        "n": n,
        "p": canary.summary.get("p_threshold"),
        "window": (text.summary.get("prefix_len"), text.summary.get("suffix_len")),
    }
    for who, row in (("text", last_t), ("canary", last_c)):
        # every member rate beside its held-out baseline of the same kind (greedy / (n, p) sampling)
        out[who] = float(as_number(row.get("mem/extract/exact_rate")))
        out[f"{who}_nonmember"] = float(as_number(row.get("mem/extract/exact_rate_nonmember")))
        out[f"{who}_prob"] = float(as_number(row.get(f"mem/extract/prob_rate/n{n}")))
        out[f"{who}_prob_nonmember"] = float(as_number(row.get(f"mem/extract/prob_rate_nonmember/n{n}")))
    out["canary_by_count"] = _canary_by_count(canary, repetitions, n, float(out["p"] or 0.0))
    return out


def _canary_by_count(canary: Any, repetitions: Sequence[int], n: int, p: float) -> dict[int, dict[str, int]]:
    """Per insertion count, the canary secrets extracted greedily and by (n, p) sampling, at the last evaluation.

    Member probe ``i`` is canary ``member_indices[i]``; a probe not decoded (NaN) counts in neither.
    """
    from memcallbacks.metrics.sequence import extraction_probability

    exact = np.asarray(canary.arrays["member_exact"][-1], dtype=np.float64)
    log_q = np.asarray(canary.arrays["member_log_q"][-1], dtype=np.float64)
    log_q = log_q[:, 0] if log_q.ndim == 2 and log_q.shape[1] else np.full(exact.shape, np.nan)
    discovered = extraction_probability(np.minimum(log_q, 0.0), n) >= p
    reps = np.asarray(repetitions, dtype=np.int64)[canary.arrays["member_indices"]]
    out: dict[int, dict[str, int]] = {}
    for r in sorted(set(reps.tolist())):
        rows = (reps == r) & np.isfinite(exact)
        out[int(r)] = {
            "greedy": int(np.sum(exact[rows] > 0)),
            "sampled": int(np.sum(discovered[rows & np.isfinite(log_q)])),
            "of": int(rows.sum()),
        }
    return out


def _versus(what: str, member: float, heldout: float, baseline: str) -> str:
    """``member`` beside its baseline, and a plain verdict when members are not above it."""
    line = f"{what} {member:.3f} vs {baseline} {heldout:.3f}"
    if not (np.isfinite(member) and np.isfinite(heldout)):
        return line + " (not measured)"
    if member <= heldout:
        return line + f" -> NOT above {baseline}: no sign of memorisation here"
    return line + f" -> {member - heldout:+.3f} above {baseline}"


def _canary_top1(run_dir: Path) -> dict[str, Any] | None:
    """Training copies of the canaries inserted >= 16 times in the top 1% by the tracker's score."""
    from memcallbacks.report import canary_copies_ranked
    from memcallbacks.rundir import RunDirectory

    run = RunDirectory(run_dir)
    traj, exp = run.trajectory(), run.exposure()
    if traj is None or exp is None:
        return None
    ranked = canary_copies_ranked(traj, exp, min_repetitions=16, top=0.01)
    return None if ranked is None else {**ranked._asdict(), "share": ranked.share, "by": traj.score_by}


def _logger_paths(logger_objects: Sequence[Any], out: Path) -> dict[str, str]:
    """How to open each logger's output."""
    paths: dict[str, str] = {}
    for lg in logger_objects:
        kind = type(lg).__name__
        if kind == "CSVLogger":
            paths["csv"] = str(Path(lg.log_dir) / "metrics.csv")
        elif kind == "TensorBoardLogger":
            paths["tensorboard"] = f"tensorboard --logdir {out / 'tensorboard'}"
        elif kind == "MLFlowLogger":
            paths["mlflow"] = f"mlflow ui --backend-store-uri sqlite:///{(out / 'mlflow.db').resolve()}"
        elif kind == "WandbLogger":
            runs = sorted((out / "wandb").glob("offline-run-*"))
            if runs:
                paths["wandb"] = f"wandb sync {runs[-1]}"
    return paths


def _by_count(values: dict[int, float]) -> str:
    return "  ".join(f"x{k}: {v:5.1f}" for k, v in values.items())


def _print_summary(results: dict[str, Any], loggers: Sequence[str], out: Path, fit_seconds: float) -> None:
    print()
    print("=" * 72)
    print("memcallbacks demo: results")
    print("=" * 72)
    if "exposure_by_count" in results:
        per = sorted(set(results["canaries_per_count"].values()))
        print(
            f"canary exposure (bits, mean of {'/'.join(map(str, per))} canaries) by times inserted, "
            f"measured after epoch {results['exposure_epoch']} (the last evaluation):"
        )
        print("  " + _by_count(results["exposure_by_count"]))
    if results.get("kept_exposure_by_count") is not None:
        print(
            f"weights kept: those of epoch {results['restored_epoch']} (restored by early stopping); "
            "their exposure, measured after that epoch:"
        )
        print("  " + _by_count(results["kept_exposure_by_count"]))
    print(
        f"membership inference (loss threshold, {results['mia_members']:,} members vs "
        f"{results['mia_nonmembers']:,} held out, after epoch {results.get('mia_epoch')}):"
    )
    print("  " + _versus("AUC", results["mia_auc"], 0.5, "chance"))
    for fpr, tpr in sorted(results.get("mia_tpr", {}).items()):
        print("  " + _versus(f"TPR at {100 * fpr:g}% FPR", tpr, fpr, "chance"))
    ext = results.get("extraction")
    if ext is not None:
        _print_extraction(ext)
    top1 = results.get("canary_top1")
    if top1 is not None:
        print(
            f"most memorised by `{top1['by']}`: {top1['in_top']} of the {top1['copies']} copies "
            f"({100 * top1['share']:.0f}%) of the canaries inserted >= {top1['min_repetitions']} times rank in "
            f"the top 1% ({top1['top_size']} samples) of the training set"
        )
    print(
        f"one-run audit epsilon lower bound (95% confidence, after epoch {results.get('audit_epoch')}): "
        f"{results['audit_epsilon_lb']:.3f}"
    )
    _print_stopping_and_times(results, fit_seconds)
    _print_where(results, out)


def _print_extraction(ext: dict[str, Any]) -> None:
    """Extraction rates, each beside the held-out rate of the same kind, and the canaries by insertion count."""
    prefix_len, suffix_len = ext["window"]
    sampled = f"(n={ext['n']}, p={ext['p']:g}) sampling"
    print(f"extractable after epoch {ext['epoch']} ({prefix_len}-token prefix, {suffix_len}-token suffix):")
    print("  greedy:      " + _versus("training text", ext["text"], ext["text_nonmember"], "held out"))
    print(
        f"  {sampled}: " + _versus("training text", ext["text_prob"], ext["text_prob_nonmember"], "held out")
    )
    print(
        "  greedy:      "
        + _versus("canary secrets", ext["canary"], ext["canary_nonmember"], "fresh canaries")
    )
    print(
        f"  {sampled}: "
        + _versus("canary secrets", ext["canary_prob"], ext["canary_prob_nonmember"], "fresh canaries")
    )
    by_count = "  ".join(
        f"x{r}: {c['greedy']}/{c['of']}, {c['sampled']}/{c['of']}" for r, c in ext["canary_by_count"].items()
    )
    print(f"  canary secrets extracted by times inserted (greedy, {sampled}): {by_count}")


def _print_stopping_and_times(results: dict[str, Any], fit_seconds: float) -> None:
    if results.get("dp_epsilon") is not None:
        print(f"DP-SGD epsilon (accountant, delta 1e-5): {results['dp_epsilon']:.3f}")
    if results.get("stop_bits") is None:
        print("early stopping: off (a negative --stop-bits)")
    elif results.get("stopped_reason"):
        print(f"early stopping: {results['stopped_reason']}")
    else:
        print(
            f"early stopping: did not fire (mem/canary/exposure_max never exceeded {results['stop_bits']:g} bits); "
            "the model is the last epoch's"
        )
    print(f"\ntime: {results['seconds']:.1f} s in all, {fit_seconds:.1f} s in Trainer.fit; in the monitors:")
    for name, sec in sorted(results["callback_seconds"].items(), key=lambda kv: -kv[1]):
        if sec >= 0.01:
            print(f"  {name:<32s} {sec:7.2f} s  ({100 * sec / max(fit_seconds, 1e-9):4.1f}% of fit)")


def _print_where(results: dict[str, Any], out: Path) -> None:
    print(f"\nrun directory: {results['run_dir']}")
    if "report" in results:
        print(f"report:        {results['report']['html']}")
        print(f"summary:       {results['report']['markdown']}")
    print(f"checkpoints:   {out / 'checkpoints'}")
    print(f"profile:       {results['profile']}")
    paths = results["logger_paths"]
    if "csv" in paths:
        print(f"CSV metrics:   {paths['csv']}")
    if "wandb" in paths:
        print(f"W&B offline run, upload it with: {paths['wandb']}")
    if "tensorboard" in paths:
        print(f"TensorBoard:   {paths['tensorboard']}   (then open http://localhost:6006)")
    if "mlflow" in paths:
        print(f"MLflow:        {paths['mlflow']}   (then open http://localhost:5000)")
