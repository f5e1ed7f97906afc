"""Benchmark: membership signals for fine-tuning (loss, zlib, Min-K%, Min-K%++, the fit-start reference) and their cost.

Two settings, each trained here from scratch on generated payment records
(:func:`memcallbacks.demos.toy.make_payment_corpus`), no download:

* ``gpt2``: the GPT-2 of ``examples/hf_gpt2_canaries.py`` (``transformers`` GPT-2 from a config, 2 layers,
  64 wide, a byte-level BPE tokenizer trained here) is first "pre-trained" on ``--pretrain`` general texts
  (no monitor), then fine-tuned on ``--finetune`` other texts of the same distribution with
  :class:`~memcallbacks.MembershipInferenceMonitor` and :class:`~memcallbacks.SequenceMemorisationMonitor`,
  both ``reference="fit_start"``: the reference is the pre-trained model, evaluated once before the first
  fine-tuning step. Members are the fine-tuning texts, non-members held-out texts of the same generator
  that neither phase saw.
* ``demo``: the model of ``memcallbacks demo`` (:class:`~memcallbacks.demos.toy.WindowLM`, a character LM,
  trained from random initialisation on 10,000 texts with the demo's canaries), with the same two
  monitors on the demo's probes (1,000 training texts against 1,000 held-out ones for the membership
  monitor; 500 + 500 windows of 16 + 16 characters for the sequence monitor). Here "fit start" is the
  random initialisation, so the reference attack has nothing pre-trained to calibrate against.

Per evaluation (epoch) it prints ROC AUC and TPR at 1% FPR (members positive, exact ROC) of: the
sequence monitor's window loss (``mem/mia_lm/*/loss``), zlib ratio, Min-K% Prob, Min-K%++ and the
reference attack (``.../ref``: loss now minus loss at fit start), and the membership monitor's loss
attack on the whole text (``mem/mia/*``) and its reference attack (``mem/mia_ref/*``).

``--cost`` (gpt2 setting): the fine-tuning fit with both monitors ``reference="fit_start"`` against the
same fit with ``reference=None``, ``--reps`` interleaved repetitions (alternating order, each from the
same pre-trained weights), end to end; the time of the reference pass itself (both monitors'
``on_train_start``, with minus without); and the time Min-K%++ adds to each sequence-monitor evaluation
(every call of ``min_k_pp_token_scores`` timed, against the evaluation's time). Medians are reported
with the load average: the machine may be shared.

Run::

    python benchmarks/bench_mia_signals.py --threads 2 --out /tmp/mia_signals      # about 3-5 CPU-minutes
    python benchmarks/bench_mia_signals.py --settings gpt2 --no-cost --quick        # seconds: a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hf_gpt2_canaries.py"
#: (column, sequence-monitor or membership-monitor key suffix) of the printed tables
SIGNALS = (
    ("loss", "mem/mia_lm/{m}/loss"),
    ("zlib", "mem/mia_lm/{m}/zlib"),
    ("min_k", "mem/mia_lm/{m}/min_k"),
    ("min_k_pp", "mem/mia_lm/{m}/min_k_pp"),
    ("ref (fit_start)", "mem/mia_lm/{m}/ref"),
    ("text loss", "mem/mia/{m}"),
    ("text ref (fit_start)", "mem/mia_ref/{m}"),
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", choices=("gpt2", "demo"), default=["gpt2", "demo"])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--pretrain", type=int, default=6000, help="gpt2: general texts of the pre-training phase")
    p.add_argument("--pretrain-epochs", type=int, default=3)
    p.add_argument("--finetune", type=int, default=500, help="gpt2: member texts of the fine-tuning phase")
    p.add_argument("--finetune-epochs", type=int, default=5)
    p.add_argument("--heldout", type=int, default=500, help="gpt2: held-out texts (non-members)")
    p.add_argument("--demo-sentences", type=int, default=10_000)
    p.add_argument("--demo-epochs", type=int, default=4)
    p.add_argument("--no-cost", action="store_true", help="skip the cost benchmark")
    p.add_argument("--reps", type=int, default=5, help="cost: interleaved repetitions of each configuration")
    p.add_argument("--cost-epochs", type=int, default=2, help="cost: fine-tuning epochs per timed fit")
    p.add_argument("--quick", action="store_true", help="a smoke run: small sizes, 1 repetition")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("/tmp/bench_mia_signals"))
    return p


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def _example() -> Any:
    spec = importlib.util.spec_from_file_location("hf_gpt2_canaries_bench", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    names = ("lightning", "lightning.pytorch", "pytorch_lightning", "lightning.fabric", "transformers")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for n, level in levels.items():
                logging.getLogger(n).setLevel(level)


def _trainer(L: Any, out: Path, epochs: int, callbacks: list[Any]) -> Any:
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        default_root_dir=str(out),
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
    )


class _Timer:
    """Wraps a callable (an instance's hook, or a module function) and adds up its wall time."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls += 1


def _timed(cls: type) -> type:
    """A subclass of the monitor class ``cls`` that adds up the wall time of ``on_train_start`` and ``measure``.

    (The base class manages hook attributes on instances, so the timing wraps the class's methods.)
    """

    class Timed(cls):
        def _time(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
            timers = self.__dict__.setdefault("bench_timers", {})
            timer = timers.setdefault(name, _Timer(fn))
            timer.fn = fn
            return timer(*args)

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self._time("on_train_start", super().on_train_start, trainer, pl_module)

        def measure(self, trainer: Any, pl_module: Any) -> Any:
            return self._time("measure", super().measure, trainer, pl_module)

    Timed.__name__ = Timed.__qualname__ = cls.__name__
    return Timed


def _seconds(monitor: Any, name: str) -> tuple[float, int]:
    timer = monitor.__dict__.get("bench_timers", {}).get(name)
    return (timer.seconds, timer.calls) if timer is not None else (0.0, 0)


def _rows(mia: Any, seq: Any) -> list[dict[str, Any]]:
    """One row per evaluation: epoch, step and AUC / TPR@1%FPR of every signal."""
    rows = []
    for a, b in zip(seq.history, mia.history):
        row: dict[str, Any] = {"epoch": int(a["epoch"]), "step": int(a["step"])}
        for name, key in SIGNALS:
            src = a if key.startswith("mem/mia_lm/") else b
            auc_key = key.format(m="auc")
            tpr_key = key.format(m="tpr@1%fpr")
            row[name] = (float(src.get(auc_key, np.nan)), float(src.get(tpr_key, np.nan)))
        row["n"] = (int(a.get("mem/mia_lm/n_members", 0)), int(a.get("mem/mia_lm/n_nonmembers", 0)))
        row["n_text"] = (int(b.get("mem/mia/n_members", 0)), int(b.get("mem/mia/n_nonmembers", 0)))
        rows.append(row)
    return rows


def _table(title: str, rows: list[dict[str, Any]]) -> str:
    names = [name for name, _ in SIGNALS]
    lines = [
        f"{title}",
        "",
        "| epoch | step | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for r in rows:
        cells = [f"{r[n][0]:.3f} / {r[n][1]:.3f}" for n in names]
        lines.append(f"| {r['epoch']} | {r['step']} | " + " | ".join(cells) + " |")
    if rows:
        lines.append("")
        lines.append(
            f"(AUC / TPR at 1% FPR; window probes {rows[0]['n'][0]} + {rows[0]['n'][1]}, "
            f"whole-text probes {rows[0]['n_text'][0]} + {rows[0]['n_text'][1]})"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# GPT-2: pre-train, then fine-tune with the monitors
# --------------------------------------------------------------------------------------
def _gpt2_data(args: argparse.Namespace, ex: Any) -> dict[str, Any]:
    from memcallbacks.demos.toy import make_payment_corpus

    corpus = make_payment_corpus(args.pretrain + args.finetune + args.heldout, seed=args.seed)
    pre = corpus[: args.pretrain]
    ft = corpus[args.pretrain : args.pretrain + args.finetune]
    held = corpus[args.pretrain + args.finetune :]
    tok = ex.train_tokenizer(pre, 512, split_digits=True, path=args.out / "gpt2" / "tokenizer.json")
    return {
        "tok": tok,
        "pre": ex.EncodedTexts(pre, tok, 64),
        "ft": ex.EncodedTexts(ft, tok, 64),
        "held": ex.EncodedTexts(held, tok, 64),
    }


def _gpt2_pretrained(args: argparse.Namespace, ex: Any, data: dict[str, Any]) -> tuple[Any, float]:
    import lightning.pytorch as L
    from torch.utils.data import DataLoader

    L.seed_everything(args.seed, verbose=False)
    model = ex.GPT2Module(len(data["tok"]), 64, 3e-3)
    loader = DataLoader(data["pre"], batch_size=64, shuffle=True, collate_fn=ex.collate)
    t0 = time.perf_counter()
    with _quiet():
        _trainer(L, args.out / "gpt2" / "pretrain", args.pretrain_epochs, []).fit(model, loader)
    return model, time.perf_counter() - t0


def _gpt2_finetune(
    args: argparse.Namespace, ex: Any, data: dict[str, Any], model: Any, *, reference: str | None, epochs: int
) -> dict[str, Any]:
    """One fine-tuning fit with both monitors; returns the monitors, hook timers and the fit's wall time."""
    import lightning.pytorch as L
    from torch.utils.data import DataLoader

    from memcallbacks.lightning import MembershipInferenceMonitor, SequenceMemorisationMonitor

    run_dir = args.out / "gpt2" / f"finetune_{reference}"
    n = min(len(data["ft"]), len(data["held"]))
    mia = _timed(MembershipInferenceMonitor)(
        data["ft"], data["held"], num_probes=n, reference=reference, trajectory_attack=False, run_dir=run_dir
    )
    seq = _timed(SequenceMemorisationMonitor)(
        data["ft"],
        data["held"],
        prefix_len=8,
        suffix_len=8,
        num_probes=n,
        n_tries=(1,),
        reference=reference,
        tokenizer=data["tok"],
        run_dir=run_dir,
    )
    L.seed_everything(args.seed + 1, verbose=False)
    loader = DataLoader(data["ft"], batch_size=32, shuffle=True, collate_fn=ex.collate)
    with _quiet():
        trainer = _trainer(L, run_dir, epochs, [mia, seq])
        t0 = time.perf_counter()
        trainer.fit(model, loader)
        seconds = time.perf_counter() - t0
    return {"mia": mia, "seq": seq, "fit_seconds": seconds}


def gpt2_signals(args: argparse.Namespace) -> dict[str, Any]:
    ex = _example()
    data = _gpt2_data(args, ex)
    model, pre_seconds = _gpt2_pretrained(args, ex, data)
    pretrained = copy.deepcopy(model.state_dict())
    run = _gpt2_finetune(args, ex, data, model, reference="fit_start", epochs=args.finetune_epochs)
    rows = _rows(run["mia"], run["seq"])
    return {"rows": rows, "pretrain_seconds": pre_seconds, "ex": ex, "data": data, "pretrained": pretrained}


# --------------------------------------------------------------------------------------
# The demo's model and probes, with the reference attack added
# --------------------------------------------------------------------------------------
def demo_signals(args: argparse.Namespace) -> dict[str, Any]:
    import pytorch_lightning as pl

    from memcallbacks import CanarySet, CharTokenizer, MembershipInferenceMonitor, SequenceMemorisationMonitor
    from memcallbacks.demos.demo import lm_sample_loss
    from memcallbacks.demos.toy import TokenDataset, WindowLM, collate_tokens, lm_loader, make_payment_corpus

    pl.seed_everything(args.seed, workers=True, verbose=False)
    tok = CharTokenizer()
    corpus = make_payment_corpus(args.demo_sentences + 1000, seed=args.seed)
    train_texts, heldout = corpus[: args.demo_sentences], corpus[args.demo_sentences :]
    canaries = CanarySet(
        "my pin is {secret}.", tok, repetitions=(1, 2, 4, 8, 16, 32), per_count=2, seed=args.seed
    )
    loader = lm_loader(canaries.inject(train_texts), tok, batch_size=128, shuffle=True)
    members, nonmembers = TokenDataset(train_texts[:1000], tok), TokenDataset(heldout, tok)
    run_dir = args.out / "demo"
    mia = MembershipInferenceMonitor(
        members,
        nonmembers,
        sample_loss_fn=lm_sample_loss,
        collate_fn=collate_tokens,
        reference="fit_start",
        trajectory_attack=False,
        run_dir=run_dir,
    )
    seq = SequenceMemorisationMonitor(
        members,
        TokenDataset(heldout[:1000], tok),
        prefix_len=16,
        suffix_len=16,
        num_probes=500,
        n_tries=(1,),
        tokenizer=tok,
        batch_size=256,
        reference="fit_start",
        run_dir=run_dir,
    )
    with _quiet():
        trainer = _trainer(pl, run_dir, args.demo_epochs, [mia, seq])
        t0 = time.perf_counter()
        trainer.fit(WindowLM(tok.vocab_size), loader)
    return {"rows": _rows(mia, seq), "fit_seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------
# Cost: the reference pass and Min-K%++
# --------------------------------------------------------------------------------------
def cost(args: argparse.Namespace, gpt2: dict[str, Any]) -> dict[str, Any]:
    import memcallbacks.metrics.sequence as seqmetrics

    ex, data, pretrained = gpt2["ex"], gpt2["data"], gpt2["pretrained"]
    original = seqmetrics.min_k_pp_token_scores
    fits: dict[str, list[float]] = {"fit_start": [], "none": []}
    start_hooks: dict[str, list[float]] = {"fit_start": [], "none": []}
    evals: list[float] = []
    mia_evals: list[float] = []
    minkpp: list[float] = []
    model = ex.GPT2Module(len(data["tok"]), 64, 3e-3)
    model.load_state_dict(pretrained)
    _gpt2_finetune(args, ex, data, model, reference=None, epochs=1)  # warm-up, not timed
    try:
        for rep in range(args.reps):
            order = ("fit_start", None) if rep % 2 == 0 else (None, "fit_start")
            for reference in order:
                timer = _Timer(original)
                seqmetrics.min_k_pp_token_scores = timer  # read at call time by teacher_forced_scores
                model = ex.GPT2Module(len(data["tok"]), 64, 3e-3)
                model.load_state_dict(pretrained)
                run = _gpt2_finetune(args, ex, data, model, reference=reference, epochs=args.cost_epochs)
                key = reference or "none"
                fits[key].append(run["fit_seconds"])
                start_hooks[key].append(sum(_seconds(run[m], "on_train_start")[0] for m in ("mia", "seq")))
                seconds, calls = _seconds(run["seq"], "measure")
                mia_seconds, mia_calls = _seconds(run["mia"], "measure")
                if reference is None and calls and mia_calls:
                    evals.append(seconds / calls)
                    mia_evals.append(mia_seconds / mia_calls)
                    minkpp.append(timer.seconds / calls)  # evaluations only (no reference pass)
    finally:
        seqmetrics.min_k_pp_token_scores = original
    with_ref, without = statistics.median(fits["fit_start"]), statistics.median(fits["none"])
    paired = statistics.median(a / b for a, b in zip(fits["fit_start"], fits["none"]))
    return {
        "fit_with_reference_s": fits["fit_start"],
        "fit_without_s": fits["none"],
        "median_with_s": with_ref,
        "median_without_s": without,
        "ratio_of_medians": with_ref / without,
        "paired_ratio": paired,
        "reference_pass_s": statistics.median(start_hooks["fit_start"])
        - statistics.median(start_hooks["none"]),
        "on_train_start_with_s": statistics.median(start_hooks["fit_start"]),
        "on_train_start_without_s": statistics.median(start_hooks["none"]),
        "seq_evaluation_s": statistics.median(evals) if evals else float("nan"),
        "mia_evaluation_s": statistics.median(mia_evals) if mia_evals else float("nan"),
        "min_k_pp_per_evaluation_s": statistics.median(minkpp) if minkpp else float("nan"),
    }


def _print_cost(c: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"cost: fine-tuning fit ({args.finetune} texts, {args.cost_epochs} epochs, both monitors), "
        f"{args.reps} interleaved repetitions each",
        "",
        "| measure | median |",
        "|---|---|",
        f"| fit, reference='fit_start' | {c['median_with_s']:.2f} s |",
        f"| fit, reference=None | {c['median_without_s']:.2f} s |",
        f"| ratio of medians (paired) | {c['ratio_of_medians']:.3f} ({c['paired_ratio']:.3f}) |",
        f"| reference pass (both monitors' on_train_start, with minus without) | {c['reference_pass_s']:.3f} s |",
        f"| one membership-monitor evaluation | {c['mia_evaluation_s']:.3f} s |",
        f"| one sequence-monitor evaluation (with greedy decoding) | {c['seq_evaluation_s']:.3f} s |",
        f"| of which Min-K%++ (`min_k_pp_token_scores`) | {c['min_k_pp_per_evaluation_s'] * 1e3:.2f} ms |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    if args.quick:
        args.pretrain, args.pretrain_epochs, args.finetune, args.heldout = 400, 1, 100, 100
        args.demo_sentences, args.demo_epochs, args.reps, args.cost_epochs = 500, 1, 1, 1
    os.environ.setdefault("WANDB_MODE", "disabled")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(
        f"{platform.node()}: {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads, "
        f"load average at start {os.getloadavg()[0]:.2f}"
    )
    result: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "load_start": os.getloadavg(),
    }
    gpt2 = None
    if "gpt2" in args.settings or not args.no_cost:
        gpt2 = gpt2_signals(args)
        result["gpt2"] = {"rows": gpt2["rows"], "pretrain_seconds": gpt2["pretrain_seconds"]}
        print(
            _table(
                f"GPT-2 fine-tuned on {args.finetune} texts after pre-training on {args.pretrain} "
                f"({args.pretrain_epochs} epochs, {gpt2['pretrain_seconds']:.0f} s)",
                gpt2["rows"],
            )
        )
    if "demo" in args.settings:
        demo = demo_signals(args)
        result["demo"] = demo
        print()
        print(_table(f"demo WindowLM, {args.demo_sentences} texts, from random init", demo["rows"]))
    if not args.no_cost and gpt2 is not None:
        c = cost(args, gpt2)
        result["cost"] = c
        print()
        print(_print_cost(c, args))
    result["load_end"] = os.getloadavg()
    print(f"\nload average at end {os.getloadavg()[0]:.2f}; took {time.perf_counter() - started:.0f} s")
    (args.out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
