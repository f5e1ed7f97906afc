"""Speed of counterfactual memorisation over R shadow runs x N pool samples.

Times (1) the estimator alone, :func:`memcallbacks.metrics.counterfactual_memorisation` on an
``[R, N]`` correctness matrix and inclusion mask (one masked reduction, no per-sample loop), and
(2) ``memcallbacks memorisation`` end to end through
:func:`memcallbacks.offline.counterfactual.run_memorisation` and ``write_outputs``: R run directories in
the format ``ShadowScoreRecorder`` writes (``shadow/inclusion.npz`` from
:func:`memcallbacks.shadow_split`, ``shadow/scores.npz`` with synthetic correctness), loaded,
checked, estimated, the leave-one-out proxy totals, and the .npz/.json/.png/.md outputs, plus
Spearman over the whole pool (3) once.

Target (issue 18): 64 runs x 100,000 samples in seconds.

Run::

    .venv/bin/python benchmarks/bench_counterfactual.py                    # 64 runs x 100,000
    .venv/bin/python benchmarks/bench_counterfactual.py --runs 16 --pool 1000000
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from memcallbacks import rundir
from memcallbacks.callbacks.shadow import shadow_split
from memcallbacks.metrics import counterfactual_memorisation, spearman
from memcallbacks.offline.counterfactual import run_memorisation, write_outputs


def write_runs(root: Path, runs: int, pool: int, seed: int = 0) -> tuple[list[Path], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p_out = rng.uniform(0.2, 1.0, size=pool)  # accuracy of a model that did not see the sample
    lift = rng.uniform(0.0, 0.8, size=pool) * (1.0 - p_out)
    dirs, correct, included = [], [], []
    for i in range(runs):
        split = shadow_split(pool, run_index=i, num_runs=runs, seed=seed)
        c = rng.random(pool) < p_out + lift * split.inclusion
        folder = root / f"run{i}" / "memcallbacks" / "shadow"
        rundir.write_shadow_inclusion(folder, split, "benchmark0000000")
        rundir.write_shadow_scores(
            folder,
            np.where(c, 2.0, -2.0),
            score_kind="logit_confidence",
            fingerprint="benchmark0000000",
            correct=c,
        )
        dirs.append(root / f"run{i}")
        correct.append(c)
        included.append(split.inclusion)
    return dirs, np.stack(correct), np.stack(included)


def best_of(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=64)
    p.add_argument("--pool", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        dirs, correct, included = write_runs(root, args.runs, args.pool)
        setup = time.perf_counter() - start
        estimator = best_of(lambda: counterfactual_memorisation(correct, included), args.repeats)
        mem = counterfactual_memorisation(correct, included).mem
        signal = mem + np.random.default_rng(1).normal(0.0, 0.1, size=mem.size)
        rank = best_of(lambda: spearman(signal, mem), args.repeats)
        end_to_end = best_of(lambda: run_memorisation(dirs), args.repeats)
        result = run_memorisation(dirs)
        outputs = best_of(lambda: write_outputs(result, root / "out"), 1)
    print(f"{platform.processor() or platform.machine()}, numpy {np.__version__}")
    print(f"{args.runs} runs x {args.pool:,} pool samples (writing the run directories: {setup:.1f} s)")
    print(f"  counterfactual_memorisation (estimator):   {estimator:8.3f} s")
    print(f"  spearman over the pool:                    {rank:8.3f} s")
    print(f"  run_memorisation (load, check, estimate):  {end_to_end:8.3f} s")
    print(f"  write_outputs (npz, json, png, md):        {outputs:8.3f} s")
    print(f"  end to end (CLI):                          {end_to_end + outputs:8.3f} s")


if __name__ == "__main__":
    main()
