"""The Secret Sharer on a CPU: canary exposure grows with the number of insertions.

Reproduces the central experiment of Carlini et al., "The Secret Sharer: Evaluating and
Testing Unintended Memorization in Neural Networks" (USENIX Security 2019) at toy scale:
a character language model (by default :class:`memcallbacks.demos.toy.WindowLM`, the next
character from the previous 12; ``--model lstm`` for the character LSTM) is trained on
generated payment records into which canaries
``"my pin is NNNNNN."`` are inserted 1, 2, 4, 8, 16 and 32 times (two canaries per count).
:class:`memcallbacks.CanaryExposureMonitor` measures each canary's exposure after every
epoch; the script prints mean exposure by repetition count per epoch and writes
``exposure_vs_repetitions.png`` (one line per epoch).

Run::

    python examples/secret_sharer.py                    # about 2 CPU-minutes
    python examples/secret_sharer.py --epochs 3 --sentences 5000 --out /tmp/ss

The run directory (``<out>/memcallbacks/canary/exposure.npz``) holds the raw numbers.
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

from memcallbacks import CanaryExposureMonitor, CanarySet, CharTokenizer
from memcallbacks.demos.toy import CharLSTMLM, WindowLM, lm_loader, make_payment_corpus


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=4, help="training epochs (default 4)")
    p.add_argument(
        "--sentences", type=int, default=20_000, help="generated training sentences (default 20,000)"
    )
    p.add_argument("--out", type=Path, default=Path("secret_sharer_out"), help="output folder")
    p.add_argument(
        "--model",
        choices=("window", "lstm"),
        default="window",
        help="toy model: window (default, fast) or lstm",
    )
    p.add_argument(
        "--method",
        choices=("auto", "exact", "extrapolated"),
        default="extrapolated",
        help="exposure method (default extrapolated; exact uses the trie over all 10^6 secrets)",
    )
    p.add_argument("--references", type=int, default=5_000, help="references for the extrapolation")
    p.add_argument("--repetitions", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--per-count", type=int, default=2, help="canaries per repetition count")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def exposure_table(history: dict[str, np.ndarray]) -> tuple[list[int], list[int], np.ndarray]:
    """Mean exposure per (epoch, repetition count): ``(epochs, counts, means [E, K])``."""
    reps = history["repetitions"]
    counts = sorted(set(reps.tolist()))
    exposure = history["exposure"]
    means = np.stack([exposure[:, reps == r].mean(axis=1) for r in counts], axis=1)
    return history["epochs"].tolist(), counts, means


def format_table(epochs: list[int], counts: list[int], means: np.ndarray) -> str:
    header = "epoch " + "".join(f"{'r' + str(r):>8}" for r in counts)
    lines = [header, "-" * len(header)]
    for e, row in zip(epochs, means):
        lines.append(f"{e:>5} " + "".join(f"{v:8.2f}" for v in row))
    return "\n".join(lines)


def plot(epochs: list[int], counts: list[int], means: np.ndarray, path: Path, log2_space: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (e, row) in enumerate(zip(epochs, means)):
        ax.plot(
            counts, row, marker="o", color=plt.cm.viridis(i / max(1, len(epochs) - 1)), label=f"epoch {e}"
        )
    ax.axhline(log2_space, color="grey", linestyle="--", linewidth=1, label="log2|R| (cap)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.set_xlabel("insertions of the canary")
    ax.set_ylabel("mean exposure (bits)")
    ax.set_title("Canary exposure vs insertions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Trains, prints the exposure table, writes the figure; returns the monitor's history and paths."""
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    pl.seed_everything(args.seed, verbose=False)
    if args.threads:
        torch.set_num_threads(args.threads)

    tokenizer = CharTokenizer()
    canaries = CanarySet(
        "my pin is {secret}.",
        tokenizer,
        repetitions=tuple(args.repetitions),
        per_count=args.per_count,
        seed=args.seed,
    )
    texts = canaries.inject(make_payment_corpus(args.sentences, seed=args.seed))
    loader = lm_loader(texts, tokenizer, batch_size=args.batch_size)
    model_cls = CharLSTMLM if args.model == "lstm" else WindowLM
    model = model_cls(tokenizer.vocab_size, lr=args.lr)
    monitor = CanaryExposureMonitor(
        canaries,
        method=args.method,
        num_references=args.references,
        progress=False if args.quiet else None,
    )
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        default_root_dir=str(args.out),
        logger=pl.loggers.CSVLogger(str(args.out), name="logs"),
        callbacks=[monitor],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=not args.quiet and sys.stdout.isatty(),
        num_sanity_val_steps=0,
    )
    trainer.fit(model, loader)

    history = monitor.arrays
    epochs, counts, means = exposure_table(history)
    print(
        f"\nmean exposure (bits) by insertions, {monitor.resolved_method}, log2|R| = {canaries.log2_space_size:.1f}"
    )
    print(format_table(epochs, counts, means))
    figure = plot(epochs, counts, means, args.out / "exposure_vs_repetitions.png", canaries.log2_space_size)
    print(f"\nfigure: {figure}\nraw numbers: {monitor.run_dir / 'exposure.npz'}")
    print(f"took {time.perf_counter() - start:.0f} s")
    return {
        "history": history,
        "counts": counts,
        "means": means,
        "figure": figure,
        "run_dir": monitor.run_dir,
    }


if __name__ == "__main__":
    main()
