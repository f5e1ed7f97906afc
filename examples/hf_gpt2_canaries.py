"""A Hugging Face GPT-2 in Lightning memorises canaries: membership inference and exact exposure.

A ``transformers`` GPT-2 built from a config (2 layers, 64 wide, random init, no download)
learns generated payment records (:func:`memcallbacks.demos.toy.make_payment_corpus`) tokenised by
a byte-level BPE tokenizer trained here with the ``tokenizers`` library. Canaries
``"my pin is NNNNNN."`` (6 digits, ``|R| = 10**6``) are inserted 1, 4, 16 and 64 times.
Training runs in ``lightning.pytorch`` on Hugging Face style dict batches
(``input_ids``, ``attention_mask``, ``labels``), with:

* :class:`~memcallbacks.MembershipInferenceMonitor` with no ``sample_loss_fn``: the default
  per-sample loss recognises the causal-LM batch and applies the one-token shift;
* :class:`~memcallbacks.CanaryExposureMonitor`: the monitor finds the GPT-2 inside the
  LightningModule (:func:`memcallbacks.lm.hf.as_incremental`) and scores with its KV cache, so
  ``--exposure-method auto`` is the exact exposure over all 10**6 secrets (Carlini et al.,
  "The Secret Sharer", USENIX Security 2019);
* :meth:`~memcallbacks.LeakageEarlyStopping.exposure`: training stops once a canary's
  exposure exceeds ``--stop-bits``;
* a W&B logger in offline mode and a CSV logger.

The tokenizer splits digits into single tokens (``--digits split``, the default, as LLaMA's
does), so every secret is six tokens in any context and the digit trie and best-first
search apply. ``--digits merged`` keeps plain byte-level BPE, where digits merge into
multi-digit tokens.

Run::

    python examples/hf_gpt2_canaries.py                      # a few CPU-minutes
    python examples/hf_gpt2_canaries.py --sentences 1000 --epochs 1 --out /tmp/hf   # seconds

One epoch measured by steps (``--every-n-steps N``: both monitors evaluate every ``N`` global
steps, the stop decides after each evaluation and fires mid-epoch; the table printed at the end
shows exposure rising step by step)::

    python examples/hf_gpt2_canaries.py --every-n-steps 5 --epochs 1 --sentences 500 --heldout 200 \\
        --num-probe 200 --batch-size 16 --repetitions 4 128 --per-count 1 --exposure-method extrapolated \\
        --references 2000 --stop-bits 15 --out /tmp/hf     # seconds: 40 steps, stops mid-epoch

Outputs under ``--out``: ``tokenizer.json``, ``csv/`` (metrics.csv), ``wandb/`` (offline
run), ``memcallbacks/`` (the run directory: raw numbers as .npz/.json).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from memcallbacks import CanarySet
from memcallbacks.demos.toy import make_payment_corpus
from memcallbacks.lightning import CanaryExposureMonitor, LeakageEarlyStopping, MembershipInferenceMonitor

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--sentences", type=int, default=10_000, help="generated training sentences (default 10,000)"
    )
    p.add_argument("--heldout", type=int, default=1_000, help="held-out sentences for membership inference")
    p.add_argument("--epochs", type=int, default=6, help="most training epochs (default 6)")
    p.add_argument(
        "--every-n-steps",
        type=int,
        default=0,
        help="evaluate every N global steps instead of every epoch (0: every epoch); one epoch is then enough",
    )
    p.add_argument("--repetitions", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--per-count", type=int, default=2, help="canaries per repetition count")
    p.add_argument("--vocab", type=int, default=512, help="BPE vocabulary size (default 512)")
    p.add_argument("--digits", choices=("split", "merged"), default="split", help="digit tokenisation")
    p.add_argument(
        "--exposure-method",
        default="auto",
        help="CanaryExposureMonitor method: auto (exact over 10**6 with the KV cache), exact, hybrid, extrapolated",
    )
    p.add_argument("--references", type=int, default=10_000, help="references for extrapolated exposure")
    p.add_argument("--stop-bits", type=float, default=18.0, help="LeakageEarlyStopping.exposure threshold")
    p.add_argument("--num-probe", type=int, default=1_000, help="members and non-members probed (each)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--max-len", type=int, default=64, help="most tokens per sentence (GPT-2 n_positions)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=Path("hf_gpt2_out"), help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def train_tokenizer(texts: list[str], vocab_size: int, *, split_digits: bool, path: Path) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` (no download), wrapped for ``transformers``.

    ``encode(text)`` adds ``<bos>`` in front (so a canary's prefix encodes as it starts in the
    training data); ``<pad>`` is id 0.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if split_digits
        else byte_level
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)


class EncodedTexts(Dataset[dict[str, torch.Tensor]]):
    """Each text as ``<bos> tokens <eos>`` (truncated to ``max_len``), a dict of 1-D tensors."""

    def __init__(self, texts: Any, tokenizer: Any, max_len: int) -> None:
        eos = tokenizer.eos_token_id
        self.items = [(tokenizer.encode(t) + [eos])[:max_len] for t in texts]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.tensor(self.items[i], dtype=torch.long)}


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Right-pads to the longest item: ``input_ids``, ``attention_mask``, ``labels`` (-100 on padding)."""
    width = max(len(it["input_ids"]) for it in items)
    ids = torch.zeros(len(items), width, dtype=torch.long)
    mask = torch.zeros(len(items), width, dtype=torch.long)
    for i, it in enumerate(items):
        n = len(it["input_ids"])
        ids[i, :n], mask[i, :n] = it["input_ids"], 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


class GPT2Module(L.LightningModule):
    """A ``transformers`` GPT-2 from a config, trained on dict batches with the model's own loss."""

    def __init__(self, vocab_size: int, n_positions: int, lr: float) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        self.save_hyperparameters()
        config = GPT2Config(
            vocab_size=vocab_size,
            n_positions=n_positions,
            n_layer=2,
            n_embd=64,
            n_head=2,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
        self.model = GPT2LMHeadModel(config)
        self.lr = lr

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # `position_ids`: the monitors pass them counted from each row's first real token, so a
        # left-padded probe scores as it would unpadded (see docs/hf.md, "Padding side")
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return out.logits  # type: ignore[no-any-return]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        self.log("train_loss", loss, prog_bar=True, on_epoch=True, on_step=False)
        return loss  # type: ignore[no-any-return]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self.model(**batch).loss, prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.0)


def _print_steps(history: dict[str, np.ndarray], reps: np.ndarray, counts: list[int], per_epoch: Any) -> None:
    """Mean exposure by insertions at each step-scheduled evaluation: it rises within the one epoch."""
    print(f"exposure (bits) by evaluation ({per_epoch} steps per epoch):")
    print("  step  " + "  ".join(f"x{r:<5d}" for r in counts))
    for step, row in zip(history["steps"], history["exposure"]):
        print(f"  {int(step):4d}  " + "  ".join(f"{float(row[reps == r].mean()):6.1f}" for r in counts))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Trains, prints exposure by insertions and the MIA AUC; returns the monitors and paths."""
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    L.seed_everything(args.seed, verbose=False)
    if args.threads:
        torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    corpus = make_payment_corpus(args.sentences + args.heldout, seed=args.seed)
    train_texts, heldout_texts = corpus[: args.sentences], corpus[args.sentences :]
    tokenizer = train_tokenizer(
        train_texts, args.vocab, split_digits=args.digits == "split", path=out / "tokenizer.json"
    )
    canaries = CanarySet(
        "my pin is {secret}.",
        tokenizer,
        length=6,
        repetitions=tuple(args.repetitions),
        per_count=args.per_count,
        seed=args.seed,
    )
    train_set = EncodedTexts(canaries.inject(train_texts), tokenizer, args.max_len)
    # probes: `num_probe` training sentences (members) and as many held-out ones (non-members)
    pick = np.random.default_rng(args.seed).choice(
        len(train_texts), min(args.num_probe, len(train_texts)), replace=False
    )
    members = EncodedTexts([train_texts[i] for i in np.sort(pick)], tokenizer, args.max_len)
    nonmembers = EncodedTexts(heldout_texts[: args.num_probe], tokenizer, args.max_len)
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, collate_fn=collate)
    val_loader = DataLoader(
        EncodedTexts(heldout_texts, tokenizer, args.max_len), batch_size=256, collate_fn=collate
    )

    model = GPT2Module(len(tokenizer), args.max_len, args.lr)
    schedule = {"every_n_steps": args.every_n_steps} if args.every_n_steps > 0 else {}
    membership = MembershipInferenceMonitor(
        members, nonmembers, collate_fn=collate, seed=args.seed, **schedule
    )  # no sample_loss_fn: the default reads the causal-LM batch
    exposure = CanaryExposureMonitor(
        canaries,
        method=args.exposure_method,
        num_references=args.references,
        progress=False if args.quiet else None,
        **schedule,
    )
    stopping = LeakageEarlyStopping.exposure(bits=args.stop_bits)

    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    loggers = [
        CSVLogger(str(out), name="csv", version=0),
        WandbLogger(project="memcallbacks-hf-gpt2", save_dir=str(out), offline=True),
    ]
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        default_root_dir=str(out),
        logger=loggers,
        callbacks=[membership, exposure, stopping],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=not args.quiet and sys.stdout.isatty(),
        num_sanity_val_steps=0,
    )
    trainer.fit(model, loader, val_loader)
    for logger in loggers:
        logger.finalize("success")
    import wandb

    wandb.finish()

    metrics = {
        k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("mem/", "val_", "train_"))
    }
    history = exposure.arrays
    reps = np.asarray(history["repetitions"])
    last = np.asarray(history["exposure"])[-1]
    counts = sorted(set(reps.tolist()))
    by_count = {int(r): float(last[reps == r].mean()) for r in counts}
    print(f"\nexposure method: {exposure.resolved_method}; log2|R| = {canaries.log2_space_size:.1f} bits")
    print(
        "mean exposure (bits) by insertions, last epoch: "
        + ", ".join(f"x{r}: {v:.1f}" for r, v in by_count.items())
    )
    auc, val_loss = metrics.get("mem/mia/auc", float("nan")), metrics.get("val_loss", float("nan"))
    print(f"membership AUC {auc:.3f}, val_loss {val_loss:.3f}")
    if schedule:
        _print_steps(history, reps, counts, trainer.num_training_batches)
    print(
        f"epochs run: {trainer.current_epoch}, stopped by LeakageEarlyStopping: {stopping.stopped_epoch is not None}"
        + (
            f" at step {stopping.stopped_step} (epoch {stopping.stopped_epoch})"
            if stopping.stopped_step
            else ""
        )
    )
    print(f"outputs: {out} (csv/, wandb/, memcallbacks/); took {time.perf_counter() - start:.0f} s")
    return {
        "metrics": metrics,
        "exposure_by_count": by_count,
        "resolved_method": exposure.resolved_method,
        "epochs_run": trainer.current_epoch,
        "stopping": stopping,
        "steps_per_epoch": trainer.num_training_batches,
        "csv": Path(loggers[0].log_dir) / "metrics.csv",
        "out": out,
        "membership": membership,
        "exposure": exposure,
        "tokenizer": tokenizer,
        "trainer_module": model,
    }


if __name__ == "__main__":
    main()
