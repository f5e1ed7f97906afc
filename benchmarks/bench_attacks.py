"""Speed of the cross-run attacks (LiRA, RMIA, loss) over N shadow runs x M pool samples.

Writes N run directories in the format ``ShadowScoreRecorder`` writes (``shadow/inclusion.npz``
from :func:`memcallbacks.shadow_split`, ``shadow/scores.npz`` with synthetic logit confidences:
per-sample difficulty plus a membership shift plus run noise), then times
:func:`memcallbacks.offline.attack.run_attack` end to end: loading and checking the runs, every run as the
target once, the pooled exact ROC per attack. Online and offline are timed separately; the
``memcallbacks attack`` CLI adds only the JSON and the PNG (timed too).

Target (issue 17): 8 runs x 50,000 pool samples in seconds, not minutes.

Run::

    .venv/bin/python benchmarks/bench_attacks.py                       # 8 runs x 50,000
    .venv/bin/python benchmarks/bench_attacks.py --runs 16 --pool 200000
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
from memcallbacks.offline.attack import run_attack, write_outputs


def write_runs(root: Path, runs: int, pool: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(2.0, 2.0, size=pool)
    dirs = []
    for i in range(runs):
        split = shadow_split(pool, run_index=i, num_runs=runs, seed=seed)
        scores = difficulty + 1.5 * split.inclusion + rng.normal(0.0, 1.0, size=pool)
        folder = root / f"run{i}" / "memcallbacks" / "shadow"
        rundir.write_shadow_inclusion(folder, split, "benchmark0000000")
        rundir.write_shadow_scores(
            folder, scores, score_kind="logit_confidence", fingerprint="benchmark0000000"
        )
        dirs.append(root / f"run{i}")
    return dirs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--pool", type=int, default=50_000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        dirs = write_runs(Path(tmp), args.runs, args.pool)
        for offline in (False, True):
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                result = run_attack(dirs, methods=("loss", "lira", "rmia"), offline=offline)
                times.append(time.perf_counter() - start)
            print(
                f"{args.runs} runs x {args.pool:,} samples, {'offline' if offline else 'online'}: "
                f"best {min(times):.2f} s, median {sorted(times)[len(times) // 2]:.2f} s (loss + LiRA + RMIA, "
                f"{args.runs} targets each)"
            )
            print(result.table())
        start = time.perf_counter()
        write_outputs(result, Path(tmp) / "out")
        print(f"attack.json + roc.png: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
