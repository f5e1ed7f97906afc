"""Benchmark: exact exposure over a 10**6 secret space, three ways, plus one extrapolated evaluation.

(a) a per-candidate Python loop (one forward per candidate; a sample is timed and scaled),
(b) batched naive scoring (``memcallbacks.lm.scoring.score_sequences``; ``--naive-sample`` candidates
    timed and scaled linearly unless ``--full``),
(c) the shared-prefix trie (``score_space_trie``), all 10**6 candidates,
and one extrapolated-exposure evaluation of the canaries against 10,000 references
(``CanaryExposureMonitor.compute`` with ``method="extrapolated"``).

Run::

    python benchmarks/bench_exposure.py [--model window|lstm] [--threads 1] [--full]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from memcallbacks import CanaryExposureMonitor, CanarySet, CharTokenizer
from memcallbacks.demos.toy import CharLSTMLM, WindowLM
from memcallbacks.lm.scoring import score_sequences, score_space_trie
from memcallbacks.metrics.exposure import exposure_from_rank


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=("window", "lstm"), default="window")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--hidden", type=int, default=0, help="hidden width (default: the toy model's)")
    p.add_argument("--loop-sample", type=int, default=2_000)
    p.add_argument("--naive-sample", type=int, default=100_000)
    p.add_argument("--full", action="store_true", help="time batched naive scoring on all 10**6 candidates")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tok = CharTokenizer()
    cs = CanarySet("my pin is {secret}.", tok, seed=0)
    kw = {"hidden_size": args.hidden} if args.hidden else {}
    model = (WindowLM if args.model == "window" else CharLSTMLM)(tok.vocab_size, **kw).eval()
    prefix, start = cs.prefix_ids, len(cs.prefix_ids)
    space = cs.space_size
    canary = cs[0]
    res: dict[str, float] = {}

    # (a) per-candidate loop
    sample = [cs.candidate(i) for i in range(args.loop_sample)]
    t = time.perf_counter()
    with torch.inference_mode():
        for s in sample:
            ids = torch.tensor([prefix + cs.encode_secret(s)])
            lp = torch.log_softmax(model(ids)[0], -1)
            _ = -lp[start - 1 : -1].gather(1, ids[0, start:, None]).sum()
    res["a_loop_s"] = (time.perf_counter() - t) * space / len(sample)

    # (b) batched naive
    n_b = space if args.full else min(space, args.naive_sample)
    seqs = [prefix + cs.encode_secret(cs.candidate(i)) for i in range(n_b)]
    t = time.perf_counter()
    naive = score_sequences(model, seqs, start, batch_size=1024, progress=False)
    res["b_batched_s"] = (time.perf_counter() - t) * space / n_b

    # (c) trie over the whole space, and the canary's exact exposure from it
    t = time.perf_counter()
    trie = score_space_trie(model, prefix, cs.char_token_ids() or [], cs.length or 0, progress=False)
    s_c = trie[cs.candidate_index(canary.secret)]
    rank = int(np.sum(trie <= s_c))
    exposure = float(exposure_from_rank(rank, space))
    res["c_trie_s"] = time.perf_counter() - t
    res["max_abs_diff_trie_vs_naive"] = float(np.abs(trie[:n_b] - naive).max())

    # extrapolated evaluation: 10,000 references + canaries, fit, exposure
    monitor = CanaryExposureMonitor(cs, method="extrapolated", num_references=10_000, progress=False)
    monitor.compute(model)  # first call samples the references
    t = time.perf_counter()
    monitor.compute(model)
    res["extrapolated_10k_s"] = time.perf_counter() - t

    print(
        f"model={args.model} hidden={args.hidden or 'default'} threads={args.threads} "
        f"torch={torch.__version__} python={platform.python_version()}"
    )
    print(f"canary {canary.id}: exact rank {rank}, exposure {exposure:.2f} bits (untrained model)")
    print(f"(a) per-candidate loop    {res['a_loop_s']:10.1f} s  (scaled from {len(sample)} candidates)")
    print(f"(b) batched naive         {res['b_batched_s']:10.1f} s  (scaled from {n_b} candidates)")
    print(f"(c) shared-prefix trie    {res['c_trie_s']:10.1f} s")
    print(
        f"(b)/(c) = {res['b_batched_s'] / res['c_trie_s']:.1f}x   (a)/(b) = {res['a_loop_s'] / res['b_batched_s']:.1f}x"
    )
    print(f"max |trie - naive| = {res['max_abs_diff_trie_vs_naive']:.2e}")
    print(f"one extrapolated evaluation (10,000 references): {res['extrapolated_10k_s']:.2f} s")
    return res


if __name__ == "__main__":
    main()
