"""Benchmark of memcallbacks.metrics against the usual references (not a test).

Run from the repository root::

    python benchmarks/bench_metrics.py [--repeats 5] [--write metrics_section.md]   (paste into RESULTS.md)

Measures, as the median of ``--repeats`` runs on the same data:

* ``membership_inference`` (exact ROC from value sorts, AUC, advantage, TPR at 0.1/1/10% FPR)
  on 10^6 member + 10^6 non-member losses, against ``sklearn.metrics.roc_curve`` + ``auc``
  (the ROC and AUC alone) and torchmetrics' exact ``binary_roc`` + ``binary_auroc``;
* ``exposure_exact`` for 1,000 canaries against 10^6 references.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import sklearn
import sklearn.metrics as skm
import torch
from torchmetrics.functional.classification import binary_auroc, binary_roc

from memcallbacks.metrics import exposure_exact, membership_inference


def median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n", type=int, default=10**6, help="members and non-members each")
    parser.add_argument("--write", default=None, help="write a Markdown report to this path")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    n = args.n
    members = rng.gamma(2.0, 0.5, size=n)
    nonmembers = rng.gamma(2.0, 0.6, size=n)
    y = np.r_[np.ones(n, dtype=np.int8), np.zeros(n, dtype=np.int8)]
    score = -np.r_[members, nonmembers]

    def ours() -> float:
        return membership_inference(members, nonmembers).auc

    def sklearn_roc_auc() -> float:
        fpr, tpr, _ = skm.roc_curve(y, score)
        return float(skm.auc(fpr, tpr))

    preds_t = torch.from_numpy(score)
    target_t = torch.from_numpy(y.astype(np.int64))

    def torchmetrics_roc_auc() -> float:
        binary_roc(preds_t, target_t, thresholds=None)
        return float(binary_auroc(preds_t, target_t, thresholds=None))

    rows = []
    t_ours, auc_ours = median_seconds(ours, args.repeats)
    t_sk, auc_sk = median_seconds(sklearn_roc_auc, args.repeats)
    t_tm, auc_tm = median_seconds(torchmetrics_roc_auc, max(1, args.repeats // 2))
    rows.append(("`membership_inference` (ROC, AUC, advantage, 3 TPR@FPR)", t_ours, f"AUC {auc_ours:.6f}"))
    rows.append(("`sklearn.metrics.roc_curve` + `auc`", t_sk, f"AUC {auc_sk:.6f}"))
    rows.append(("torchmetrics `binary_roc` + `binary_auroc` (exact)", t_tm, f"AUC {auc_tm:.6f}"))
    assert abs(auc_ours - auc_sk) < 1e-9, (auc_ours, auc_sk)

    references = rng.normal(100.0, 10.0, size=10**6)
    canaries = rng.normal(80.0, 15.0, size=1000)
    t_exp, values = median_seconds(lambda: exposure_exact(canaries, references), args.repeats)
    rows.append(
        ("`exposure_exact`, 1,000 canaries vs 10^6 references", t_exp, f"max {values.max():.2f} bits")
    )

    command = "python " + " ".join([os.path.relpath(__file__), *sys.argv[1:]])
    machine = (
        f"{os.cpu_count()} CPUs (`nproc` {len(os.sched_getaffinity(0))}), {cpu_model()}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"scikit-learn {sklearn.__version__}"
    )
    lines = [
        "## memcallbacks.metrics",
        "",
        f"Command: `{command}` (median of {args.repeats} runs; torchmetrics {max(1, args.repeats // 2)}).",
        f"Machine: {machine}. Load average at the end: {os.getloadavg()[0]:.1f} "
        "(the machine is shared: absolute times are noisy, ratios less so).",
        f"Data: {n:,} member + {n:,} non-member losses (gamma distributed, continuous: ~2e6 distinct values).",
        "",
        "| what | median s | check |",
        "|---|---:|---|",
        *[f"| {name} | {t:.3f} | {check} |" for name, t, check in rows],
        "",
        f"`membership_inference` vs sklearn: {t_sk / t_ours:.1f}x faster; vs torchmetrics {t_tm / t_ours:.1f}x.",
    ]
    report = "\n".join(lines)
    print(report)
    if args.write:
        with open(args.write, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
