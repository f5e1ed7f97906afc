"""Exact exposure under sharded parameters (FSDP2 on 2 CPU processes) versus 1 process (a benchmark, not a test).

Under ``ModelParallelStrategy`` + ``fully_shard`` every forward pass all-gathers the parameters, and
every rank scores every canary candidate (rank 0's result is broadcast): canary scoring costs one
all-gather per forward call on top of the compute, and no rank is spared. This script times
``CanaryExposureMonitor.compute`` (exact ranks: every candidate of the space scored) on a 2-layer
GPT-2 built from a config, after a one-batch fit:

``one``
    1 process, as a user gets it: the Hugging Face model is scored through its KV cache (the
    candidates' shared prefixes run once).
``one-plain``
    1 process, full forward passes of ``module(token_ids)`` (``score_fn=log_perplexity``): the path
    sharded runs take (no KV-cache adapter there), without the all-gathers.
``sharded``
    2 processes over gloo, ``fully_shard`` on each block and the model (each rank does the full work).

Printed: the median seconds of one exact-exposure evaluation (``--reps`` timed evaluations after one
warm-up), and the candidates scored per second.

Run (a minute or two on 2 quiet cores):
    python benchmarks/bench_sharded_exposure.py --space 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/helpers: the tiny GPT-2

from helpers.sharded import GPT2LM, TEXTS, TOK
from memcallbacks import CanaryExposureMonitor, CanarySet
from memcallbacks.demos.toy import lm_loader
from memcallbacks.lm.scoring import log_perplexity


class ShardedGPT2LM(GPT2LM):
    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        for block in self.model.transformer.h:
            fully_shard(block)
        fully_shard(self.model)


class TimeExposure(pl.Callback):
    def __init__(self, monitor: CanaryExposureMonitor, reps: int, out: Path, mode: str) -> None:
        self.monitor, self.reps, self.out, self.mode = monitor, reps, out, mode

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.monitor.compute(pl_module)  # warm-up
        times = []
        for _ in range(self.reps):
            start = time.perf_counter()
            self.monitor.compute(pl_module)
            times.append(time.perf_counter() - start)
        if trainer.is_global_zero:
            space = int(self.monitor.canaries.space_size)
            result = {
                "mode": self.mode,
                "candidates": space,
                "canaries": len(self.monitor.canaries),
                "median_s": statistics.median(times),
                "candidates_per_s": space
                / statistics.median(times),  # the space is scored once for all canaries
            }
            self.out.write_text(json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["one", "one-plain", "sharded"])
    parser.add_argument("--space", type=int, default=3, help="secret digits (|R| = 10**space)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_sharded_exposure.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    canaries = CanarySet("pin {secret}.", TOK, length=args.space, repetitions=(1,), per_count=2, seed=0)
    monitor = CanaryExposureMonitor(
        canaries,
        method="exact",
        every_n_epochs=10**6,
        run_dir=args.out.parent / "run",
        score_fn=log_perplexity if args.mode == "one-plain" else None,
    )
    kwargs: dict[str, Any] = {"accelerator": "cpu", "devices": 1}
    module: GPT2LM = GPT2LM()
    if args.mode == "sharded":
        from pytorch_lightning.strategies import ModelParallelStrategy

        kwargs = {"accelerator": "cpu", "devices": 2, "strategy": ModelParallelStrategy(2, 1)}
        module = ShardedGPT2LM()
    trainer = pl.Trainer(
        **kwargs,
        max_epochs=1,
        limit_train_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[monitor, TimeExposure(monitor, args.reps, args.out, args.mode)],
    )
    trainer.fit(module, lm_loader(TEXTS[:8], TOK, batch_size=8))
    if trainer.is_global_zero:
        print(args.out.read_text())


if __name__ == "__main__":
    main()
