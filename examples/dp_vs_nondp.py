"""DP-SGD against memorisation: the same canary language model trained with and without DP.

Carlini et al., "The Secret Sharer" (USENIX Security 2019, Sec. 9.3) found that training
with differential privacy (DP-SGD, Abadi et al. 2016) removes the exposure of inserted
secrets. This script reproduces that at CPU scale: a character model (:class:`WindowLM`,
Embedding + Linear only, which Opacus handles quickly) is trained on generated payment
records into which canaries ``"my pin is NNNNNN."`` are inserted 1, 2, 4, 8, 16 and 32
times, once normally and once with Opacus' DP-SGD (noise multiplier 1.0, clipping norm 1.0,
Poisson-sampled batches of 128 expected, Adam 3e-3). It prints the mean extrapolated
exposure per insertion count side by side.

Both runs also carry a one-run privacy audit (:class:`memcallbacks.PrivacyAuditMonitor`,
Steinke, Nasr and Jagielski 2023): 200 further canaries ``"my account is NNNNNNNN."``,
each inserted once with probability 1/2. The DP run prints the sanity check "audit epsilon
lower bound <= Opacus epsilon"; a lower bound above the accountant's epsilon would mean a
broken DP implementation.

Group privacy: a canary inserted ``k`` times is protected only at about ``k * epsilon``, so
one 32-times canary can keep a high exposure under DP; compare means, not single canaries.

Run::

    python examples/dp_vs_nondp.py                      # about 10 CPU-minutes (590 s measured)
    python examples/dp_vs_nondp.py --epochs 2 --sentences 5000 --out /tmp/dp
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from memcallbacks import (
    CanaryExposureMonitor,
    CanarySet,
    CharTokenizer,
    DPEpsilonMonitor,
    PrivacyAuditMonitor,
)
from memcallbacks.demos.toy import DPWindowLM, WindowLM, lm_loader, make_payment_corpus


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=3, help="training epochs of each run (default 3)")
    p.add_argument(
        "--sentences", type=int, default=20_000, help="generated training sentences (default 20,000)"
    )
    p.add_argument("--out", type=Path, default=Path("dp_vs_nondp_out"), help="output folder")
    p.add_argument("--noise-multiplier", type=float, default=1.0)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--delta", type=float, default=1e-5, help="delta of the reported epsilon (default 1e-5)")
    p.add_argument("--batch-size", type=int, default=128, help="(expected) batch size")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--references", type=int, default=5_000, help="references for the exposure extrapolation")
    p.add_argument("--audit-canaries", type=int, default=200, help="canaries of the one-run audit")
    p.add_argument("--seed", type=int, default=0)
    return p


def _train(args: argparse.Namespace, dp: bool) -> dict[str, Any]:
    name = "dp" if dp else "nondp"
    pl.seed_everything(args.seed, verbose=False)
    tokenizer = CharTokenizer()
    canaries = CanarySet(
        "my pin is {secret}.", tokenizer, repetitions=(1, 2, 4, 8, 16, 32), per_count=2, seed=args.seed
    )
    audit_canaries = CanarySet(
        "my account is {secret}.",
        tokenizer,
        length=8,
        repetitions=(1,),
        per_count=args.audit_canaries,
        seed=args.seed + 1,
    )
    audit = PrivacyAuditMonitor(audit_canaries, delta=args.delta, seed=args.seed, every_n_epochs=args.epochs)
    texts = audit.inject(canaries.inject(make_payment_corpus(args.sentences, seed=args.seed)))
    loader: DataLoader[Any] = lm_loader(texts, tokenizer, batch_size=args.batch_size)
    exposure = CanaryExposureMonitor(
        canaries,
        method="extrapolated",
        num_references=args.references,
        every_n_epochs=args.epochs,
        progress=False,
    )
    callbacks: list[pl.Callback] = [exposure, audit]
    if dp:
        from opacus.data_loader import DPDataLoader

        # Poisson sampling, which the accountant assumes: each record joins each batch with prob. 128 / N
        loader = DPDataLoader.from_data_loader(loader, generator=torch.Generator().manual_seed(args.seed))
        model: WindowLM = DPWindowLM(
            tokenizer.vocab_size,
            noise_multiplier=args.noise_multiplier,
            max_grad_norm=args.max_grad_norm,
            lr=args.lr,
        )
        epsilon_monitor = DPEpsilonMonitor(delta=args.delta)
        callbacks.append(epsilon_monitor)
    else:
        model = WindowLM(tokenizer.vocab_size, lr=args.lr)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        default_root_dir=str(args.out / name),
        logger=pl.loggers.CSVLogger(str(args.out / name), name="logs"),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=sys.stdout.isatty(),
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(model, loader)
    seconds = time.perf_counter() - start
    hist = exposure.arrays
    reps = hist["repetitions"]
    counts = sorted(set(reps.tolist()))
    last = hist["exposure"][-1]
    out: dict[str, Any] = {
        "counts": counts,
        "exposure": last,
        "repetitions": reps,
        "mean_exposure": {r: float(last[reps == r].mean()) for r in counts},
        "audit": {k.removeprefix("mem/audit/"): v for k, v in audit.history[-1].items()},
        "seconds": seconds,
        "run_dir": audit.run_dir.parent,
    }
    if dp:
        out["epsilon"] = epsilon_monitor.history[-1]["mem/dp/epsilon"]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Trains both models, prints exposure by insertion count side by side; returns the numbers.

    Returns:
        ``{"counts", "nondp", "dp", "epsilon", "audit_epsilon_lb", "audit_within_bound", "dp_lower"}``
        where ``nondp``/``dp`` map insertion count -> mean exposure (bits) after the last epoch
        and ``dp_lower`` maps insertion count -> whether DP's mean is lower.
    """
    args = _parser().parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    nondp = _train(args, dp=False)
    dp = _train(args, dp=True)
    counts = nondp["counts"]
    print(f"\nmean extrapolated exposure (bits) after {args.epochs} epochs, by insertions (log2|R| = 19.9)")
    print(f"{'insertions':>10} {'no DP':>8} {'DP-SGD':>8}")
    for r in counts:
        print(f"{r:>10} {nondp['mean_exposure'][r]:8.2f} {dp['mean_exposure'][r]:8.2f}")
    eps = float(dp["epsilon"])
    lb = float(dp["audit"]["epsilon_lb"])
    print(
        f"\nDP-SGD: noise {args.noise_multiplier}, clip {args.max_grad_norm}, Poisson batches of "
        f"{args.batch_size}: Opacus epsilon = {eps:.2f} at delta = {args.delta:g}"
    )
    for name, run in (("no DP", nondp), ("DP-SGD", dp)):
        a = run["audit"]
        print(
            f"one-run audit ({name}): {a['correct']:.0f}/{a['guesses']:.0f} guesses right, "
            f"epsilon lower bound {a['epsilon_lb']:.2f}"
        )
    within = lb <= eps
    print(
        f"sanity check: audit epsilon lower bound {lb:.2f} <= Opacus epsilon {eps:.2f}: {'OK' if within else 'FAILED'}"
    )
    print(
        f"time: {nondp['seconds']:.0f} s without DP, {dp['seconds']:.0f} s with DP; run dirs under {args.out}"
    )
    return {
        "counts": counts,
        "nondp": nondp["mean_exposure"],
        "dp": dp["mean_exposure"],
        "epsilon": eps,
        "audit_epsilon_lb": lb,
        "nondp_audit_epsilon_lb": float(nondp["audit"]["epsilon_lb"]),
        "audit_within_bound": within,
        "dp_lower": {r: dp["mean_exposure"][r] < nondp["mean_exposure"][r] for r in counts},
        "seconds": {"nondp": nondp["seconds"], "dp": dp["seconds"]},
        "exposure": {"nondp": np.asarray(nondp["exposure"]), "dp": np.asarray(dp["exposure"])},
    }


if __name__ == "__main__":
    main()
