"""Benchmark: exact exposure of 12 canaries over all 10**6 six-digit secrets on a tiny transformers GPT-2.

The model is ``GPT2LMHeadModel`` built from a config (2 layers, 64 wide, 2 heads, random
init, no download; ``--vocab`` tokens, 1024 by default, the size of a small locally trained
BPE vocabulary). Two ways to score the space:

(a) the KV-cache trie: ``memcallbacks.lm.hf.HFIncrementalLM`` + ``score_space_trie``, every one of
    the 10**6 candidates, then the exact rank (and exposure) of each of the 12 canaries;
(b) the generic batched path, ``score_sequences`` (a full forward per candidate), timed on
    ``--naive-sample`` candidates (10,000 by default) and extrapolated linearly to 10**6.

It also checks that (a) and (b) agree on the sampled candidates (max absolute difference in
nats; the target is <= 1e-4).

Run::

    python benchmarks/bench_hf.py [--threads 2] [--vocab 1024] [--batch-size 16384]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from memcallbacks import CanarySet, CharTokenizer
from memcallbacks.lm.hf import HFIncrementalLM
from memcallbacks.lm.scoring import score_sequences, score_space_trie
from memcallbacks.metrics.exposure import exposure_from_rank, exposure_rank_in_space


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=1024, help="vocabulary size of the GPT-2 config")
    p.add_argument("--batch-size", type=int, default=16384, help="rows per model step of the trie")
    p.add_argument("--naive-sample", type=int, default=10_000, help="candidates timed on the batched path")
    p.add_argument("--naive-batch-size", type=int, default=1024)
    p.add_argument("--json", action="store_true", help="print one JSON line only")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from transformers import GPT2Config, GPT2LMHeadModel  # the hf extra

    tok = CharTokenizer()  # digits are single tokens, as the trie needs
    config = GPT2Config(
        n_layer=2, n_embd=64, n_head=2, vocab_size=args.vocab, n_positions=64, bos_token_id=1, eos_token_id=1
    )
    model = GPT2LMHeadModel(config).eval()
    cs = CanarySet(
        "my pin is {secret}.", tok, length=6, repetitions=(1, 2, 4, 8, 16, 32), per_count=2, seed=0
    )
    chars = cs.char_token_ids()
    assert chars is not None
    assert len(cs) == 12
    lm = HFIncrementalLM(model)
    res: dict[str, float] = {}

    # (a) the KV-cache trie over the whole space, then the 12 exact ranks
    t = time.perf_counter()
    scores = score_space_trie(lm, cs.prefix_ids, chars, 6, batch_size=args.batch_size, progress=False)
    idx = np.array([cs.candidate_index(c.secret) for c in cs])
    ranks = exposure_rank_in_space(scores[idx], scores)
    exposure = exposure_from_rank(ranks, cs.space_size)
    res["trie_exact_12_canaries_s"] = time.perf_counter() - t
    res["exposure_max_bits"] = float(np.max(exposure))

    # (b) the batched path on a sample, extrapolated
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(cs.space_size, args.naive_sample, replace=False))
    seqs = [cs.prefix_ids + cs.encode_secret(cs.candidate(int(i))) for i in sample]
    t = time.perf_counter()
    naive = score_sequences(model, seqs, len(cs.prefix_ids), batch_size=args.naive_batch_size, progress=False)
    res["batched_sample_s"] = time.perf_counter() - t
    res["batched_full_space_extrapolated_s"] = res["batched_sample_s"] * cs.space_size / len(sample)
    res["speedup"] = res["batched_full_space_extrapolated_s"] / res["trie_exact_12_canaries_s"]
    res["max_abs_diff_nats"] = float(np.abs(scores[sample] - naive).max())

    meta = {
        "torch": torch.__version__,
        "threads": args.threads,
        "vocab": args.vocab,
        "batch_size": args.batch_size,
        "naive_sample": args.naive_sample,
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
        "python": platform.python_version(),
    }
    if args.json:
        print(json.dumps({**meta, **res}))
    else:
        print(json.dumps(meta))
        print(
            f"(a) KV-cache trie, 10**6 candidates + 12 exact ranks: {res['trie_exact_12_canaries_s']:8.1f} s"
        )
        print(f"(b) batched path, {len(sample)} candidates:               {res['batched_sample_s']:8.1f} s")
        print(
            f"    extrapolated to 10**6:                           {res['batched_full_space_extrapolated_s']:8.1f} s"
        )
        print(f"    speed-up of (a) over (b):                        {res['speedup']:8.1f} x")
        print(f"    max |(a) - (b)| on the sample:                   {res['max_abs_diff_nats']:.2e} nats")
    return res


if __name__ == "__main__":
    main()
