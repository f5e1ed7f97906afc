"""Cost of SequenceMemorisationMonitor's evaluation against one bare forward pass over its probes.

Probes: ``--probes`` member and ``--probes`` non-member sequences of ``--tokens`` tokens (two
generated payment records each, truncated), prefix = suffix = ``tokens / 2``. The model is the
demo's :class:`~memcallbacks.demos.toy.WindowLM` (``--model lstm`` for :class:`CharLSTMLM`, ``--model
gpt2`` for a small GPT-2 built from a config, KV-cache decoding). Figures, each the median of
``--repeats`` interleaved runs under ``torch.inference_mode()`` in eval mode, same batch size:

* ``bare``: one forward pass ``model(ids)`` over every probe (the reference, 1.0x);
* ``loss``: the teacher-forced scoring with no sampling scheme (per-token log-probabilities,
  mean loss, Min-K% Prob): the monitor's "loss evaluation";
* ``loss+np``: the same pass with the (n, p) schemes (``T=1`` full softmax and ``T=0.7, top_k=40``);
  issue 19 asks that the (n, p) part cost no more than the loss evaluation (``np_extra <= loss``);
* ``greedy``: batched greedy decoding of the suffix from every prefix on its own (KV cache: one
  prefix pass, then ``suffix_len - 1`` one-token steps; IncrementalLM: ``init_state``, then steps);
* ``evaluation``: the monitor's whole per-probe work (``memcallbacks.lm.windows.score_windows``: scoring + decoding);
  target ``evaluation / bare <= 3``. With a KV cache (GPT-2), decoding starts from the scoring
  pass's cache cut back to the prefix, so it costs ``greedy`` minus the prefix pass
  (``decoding in the evaluation`` below = ``evaluation - loss+np``);
* ``trainer``: ``monitor.last_eval_seconds`` in a real one-epoch ``Trainer.fit`` (adds probe
  loading at the first evaluation, the metrics, the run-directory files and log_dict).

Run::

    .venv/bin/python benchmarks/bench_sequence.py                      # 1,000 + 1,000 probes, 64 tokens
    .venv/bin/python benchmarks/bench_sequence.py --probes 200 --repeats 1   # a quick look
    .venv/bin/python benchmarks/bench_sequence.py --model gpt2 --threads 4
    .venv/bin/python benchmarks/bench_sequence.py --model gpt2 --threads 1 --clock cpu   # on a busy machine
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch

from memcallbacks import CharTokenizer, SequenceMemorisationMonitor
from memcallbacks.demos.toy import CharLSTMLM, TokenDataset, WindowLM, lm_loader, make_payment_corpus
from memcallbacks.lm.windows import LanguageModel, pad_windows, score_windows


class GPT2LM(pl.LightningModule):
    """A small GPT-2 from a config (no download), trained with the HF loss."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        import transformers

        cfg = transformers.GPT2Config(
            vocab_size=vocab, n_positions=128, n_embd=128, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=1
        )
        self.model = transformers.GPT2LMHeadModel(cfg)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        _, ids = batch
        return self.model(input_ids=ids, labels=ids.masked_fill(ids == 0, -100)).loss  # type: ignore[no-any-return]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def _model(kind: str, vocab: int) -> pl.LightningModule:
    if kind == "window":
        return WindowLM(vocab)
    if kind == "lstm":
        return CharLSTMLM(vocab)
    return GPT2LM(vocab)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--probes", type=int, default=1000, help="member probes (and as many non-members)")
    parser.add_argument("--tokens", type=int, default=64, help="probe window: prefix_len + suffix_len")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", choices=("window", "lstm", "gpt2"), default="window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: this process's CPU time, steadier on a machine shared with other work (use with --threads 1; "
        "the trainer figure stays wall-clock)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)

    tok = CharTokenizer()
    records = make_payment_corpus(4 * args.probes + 2000, seed=0)
    texts = [a + " " + b for a, b in zip(records[::2], records[1::2])]
    members, held_out, extra = (
        texts[: args.probes],
        texts[args.probes : 2 * args.probes],
        texts[2 * args.probes :],
    )
    model = _model(args.model, tok.vocab_size)
    prefix = args.tokens // 2
    suffix = args.tokens - prefix

    # a short real fit (the trainer figure), which also gives the model non-random weights
    monitor = SequenceMemorisationMonitor(
        TokenDataset(members, tok),
        TokenDataset(held_out, tok),
        prefix_len=prefix,
        suffix_len=suffix,
        num_probes=args.probes,
        batch_size=args.batch_size,
        sampling=[{"temperature": 1.0}, {"temperature": 0.7, "top_k": 40}],
    )
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(
            max_epochs=1,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp,
            callbacks=[monitor],
        )
        trainer.fit(model, lm_loader(members + extra[:1000], tok, batch_size=64, max_len=128))
        monitor.flush()
    trainer_seconds = monitor.last_eval_seconds

    seqs = [TokenDataset(members, tok)[i] for i in range(args.probes)]
    seqs += [TokenDataset(held_out, tok)[i] for i in range(args.probes)]
    windows, lengths = pad_windows(seqs, args.tokens)
    short = int((lengths < args.tokens).sum())
    device = torch.device("cpu")
    model.eval()
    lm = LanguageModel(model, None, "auto")
    schemes = [(1.0, None), (0.7, 40)]

    def bare() -> None:
        for start in range(0, windows.shape[0], args.batch_size):
            lm.logits(windows[start : start + args.batch_size])

    def scoring(sampling: list[tuple[float, int | None]], decode: bool = False) -> Callable[[], Any]:
        return lambda: score_windows(
            lm,
            windows,
            lengths,
            prefix_len=prefix,
            suffix_len=suffix,
            min_k=0.2,
            sampling=sampling,
            batch_size=args.batch_size,
            device=device,
            decode=decode,
        )

    def greedy() -> None:
        for start in range(0, windows.shape[0], args.batch_size):
            lm.greedy(windows[start : start + args.batch_size, :prefix], suffix)

    evaluation = scoring(schemes, decode=True)  # the monitor's whole per-probe work

    figures: dict[str, Callable[[], Any]] = {
        "bare": bare,
        "loss": scoring([]),
        "loss+np": scoring(schemes),
        "greedy": greedy,
        "evaluation": evaluation,
    }
    times: dict[str, list[float]] = {name: [] for name in figures}
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    with torch.inference_mode():
        bare()  # warm-up
        greedy()
        for _ in range(args.repeats):  # interleaved, so load drift on a shared machine hits every figure
            for name, fn in figures.items():
                start = clock()
                fn()
                times[name].append(clock() - start)
    t_bare, t_loss, t_np, t_greedy, t_eval = (statistics.median(times[name]) for name in figures)

    print(
        f"# bench_sequence: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"model {args.model} ({sum(p.numel() for p in model.parameters()):,} parameters), decoding {lm.mode}; "
        f"{2 * args.probes} probes x {args.tokens} tokens ({short} shorter), batch {args.batch_size}, "
        f"median of {args.repeats}, {args.clock} clock"
    )
    print(f"{'figure':<12}{'seconds':>10}{'x bare':>9}")
    for name, seconds in (
        ("bare", t_bare),
        ("loss", t_loss),
        ("loss+np", t_np),
        ("greedy", t_greedy),
        ("evaluation", t_eval),
        ("trainer", trainer_seconds),
    ):
        print(f"{name:<12}{seconds:>10.3f}{seconds / t_bare:>9.2f}")
    np_extra = t_np - t_loss
    print(
        f"(n, p) extra over the loss evaluation: {np_extra:.3f} s = {np_extra / t_loss:.2f}x loss "
        f"(target <= 1.0x); evaluation / bare = {t_eval / t_bare:.2f} (target <= 3)"
    )
    print(
        f"decoding in the evaluation (evaluation - loss+np): {t_eval - t_np:.3f} s = "
        f"{(t_eval - t_np) / t_bare:.2f}x bare; on its own (greedy): {t_greedy / t_bare:.2f}x bare"
    )


if __name__ == "__main__":
    main()
