"""The demo end to end (short), the offline report it writes, and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.report_figures import DEMO_FIGURES as FIGURES
from helpers.wandb_reader import history_rows, wait_for_run_file
from memcallbacks.report import find_run_dir
from memcallbacks.utilities import fileio


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The console script, as a user runs it (everything it prints, from every library, captured)."""
    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "memcallbacks.cli",
            "demo",
            "--out",
            str(out),
            "--epochs",
            "2",
            "--sentences",
            "1500",
        ]
        + ["--stop-bits", "50"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "WANDB_MODE": "offline"},
    )
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout + proc.stderr


@pytest.mark.slow
def test_demo_writes_run_dir_report_and_offline_wandb(demo_run):
    out, printed = demo_run
    run_dir = out / "memcallbacks"
    for sub in ("trajectory", "membership", "canary", "audit", "sequence", "sequence_canaries"):
        assert (run_dir / sub).is_dir(), sub
    # the report: every figure written, embedded in the HTML and linked from the Markdown
    report = run_dir / "report"  # where `memcallbacks report` writes too
    assert f"report:        {report / 'report.html'}" in printed
    html = (report / "report.html").read_text()
    md = (report / "summary.md").read_text()
    written = {p.name for p in report.glob("*.png")}
    assert written >= FIGURES
    for name in written:
        assert f"id='{name}'" in html
        assert f"({name})" in md
    assert html.count("data:image/png;base64,") == len(written)
    # the numbers in the summary are the monitors' own
    exposure = fileio.load_npz(run_dir / "canary" / "exposure.npz")
    reps, last = exposure["repetitions"], exposure["exposure"][-1]
    assert f"x32: {last[reps == 32].mean():5.1f}" in printed
    assert f"x32: {last[reps == 32].mean():.1f}" in md
    assert "(epoch 1): x1:" in md
    # W&B offline: read back the binary run log and find the mem/* scalars with the epoch axis
    rows = history_rows(wait_for_run_file(out / "wandb"))
    keys = set().union(*rows)
    for key in (
        "mem/canary/exposure_max",
        "mem/mia/auc",
        "mem/traj/loss_mean",
        "mem/audit/epsilon_lb",
        "epoch",
    ):
        assert key in keys, key
    logged_auc = [r["mem/mia/auc"] for r in rows if "mem/mia/auc" in r]
    written = fileio.load_json(run_dir / "membership" / "metrics.json")["history"][-1]["mem/mia/auc"]
    assert logged_auc[-1] == pytest.approx(written, abs=1e-6)
    assert "membership inference (loss threshold, 1,000 members vs 1,000 held out, after epoch 1):" in printed
    assert f"  AUC {written:.3f} vs chance 0.500 -> " in printed
    for key in ("mem/extract/exact_rate", "mem/extract/prob_rate/n100", "mem/mia_lm/auc/min_k"):
        assert key in keys, key
        assert f"{key}/canaries" in keys, key
    # privacy by default: no per-sample table and no secret went to W&B
    assert not any(k.startswith("mem/traj/most_memorised") or k == "mem/canary/canaries" for k in keys)


@pytest.mark.slow
def test_demo_output_is_quiet_and_says_where_things_come_from(demo_run):
    out, printed = demo_run
    for noise in ("Tip:", "anonymous", "GPU available", "it/s", "LeafSpec", "removed"):
        assert noise not in printed, noise
    assert "measured after epoch 1 (the last evaluation)" in printed
    assert "early stopping: did not fire (mem/canary/exposure_max never exceeded 50 bits)" in printed
    assert f"CSV metrics:   {out / 'csv' / 'version_0' / 'metrics.csv'}" in printed
    assert (out / "csv" / "version_0" / "metrics.csv").is_file()
    assert (out / "fit-profile.txt").is_file()
    assert [p.name.split("-")[0] for p in (out / "checkpoints").glob("*.ckpt")] == ["epoch=1"]


@pytest.mark.slow
def test_report_cli_rebuilds_from_the_run_dir_alone(demo_run, tmp_path):
    out, _ = demo_run
    target = tmp_path / "again"
    proc = subprocess.run(
        [sys.executable, "-m", "memcallbacks.cli", "report", str(out), "--out", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "report written" in proc.stdout
    assert {p.name for p in target.glob("*.png")} >= FIGURES
    assert find_run_dir(out) == out / "memcallbacks"


@pytest.mark.slow
def test_demo_prints_the_extraction_rates_and_the_lm_ranking_it_logged(demo_run):
    """The printed rates are the sequence monitors' last logged values (CSV), the ranking the report's."""
    import csv
    import re

    from memcallbacks.report import canary_copies_ranked
    from memcallbacks.rundir import RunDirectory

    out, printed = demo_run
    with open(out / "csv" / "version_0" / "metrics.csv") as f:
        rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]

    def last(key):
        return [r[key] for r in rows if key in r][-1]

    # each member rate printed beside the held-out rate of the same kind (greedy with greedy, (n, p) with (n, p))
    line = re.search(
        r"extractable after epoch 1 \(16-token prefix, 16-token suffix\):\n"
        r"  greedy:      training text (\S+) vs held out (\S+) -> .*\n"
        r"  \(n=100, p=0\.1\) sampling: training text (\S+) vs held out (\S+) -> .*\n"
        r"  greedy:      canary secrets (\S+) vs fresh canaries (\S+) -> .*\n"
        r"  \(n=100, p=0\.1\) sampling: canary secrets (\S+) vs fresh canaries (\S+) -> .*\n"
        r"  canary secrets extracted by times inserted \(greedy, \(n=100, p=0\.1\) sampling\): "
        r"x1: \d/2, \d/2  x2: \d/2, \d/2  x4: \d/2, \d/2  x8: \d/2, \d/2  x16: \d/2, \d/2  x32: \d/2, \d/2\n",
        printed,
    )
    assert line is not None, printed
    keys = [
        "mem/extract/exact_rate",
        "mem/extract/exact_rate_nonmember",
        "mem/extract/prob_rate/n100",
        "mem/extract/prob_rate_nonmember/n100",
    ]
    expected = [last(k) for k in keys] + [last(k + "/canaries") for k in keys]
    assert [float(v) for v in line.groups()] == pytest.approx(expected, abs=5e-4 + 1e-6)
    for member, heldout, verdict in re.findall(
        r" (\S+) vs (?:held out|fresh canaries) (\S+) -> (.*)", printed
    ):
        # the demo says plainly when members are not above their baseline
        assert verdict.startswith("NOT above") == (float(member) <= float(heldout)), verdict
    # the LM ranking: the tracker ranks by calibrated_loss (zlib reference); the printed share is the report's
    run = RunDirectory(out / "memcallbacks")
    traj, exp = run.trajectory(), run.exposure()
    assert traj is not None
    assert exp is not None
    assert traj.score_by == "calibrated_loss"
    ranked = canary_copies_ranked(traj, exp)
    assert ranked is not None
    assert ranked.copies == 96
    assert (
        f"most memorised by `calibrated_loss`: {ranked.in_top} of the 96 copies ({100 * ranked.share:.0f}%) of the "
        f"canaries inserted >= 16 times rank in the top 1% ({ranked.top_size} samples)"
    ) in printed
    md = (out / "memcallbacks" / "report" / "summary.md").read_text()
    assert f"{ranked.in_top} of the 96 training copies" in md
    assert "ranked by `calibrated_loss`" in md
