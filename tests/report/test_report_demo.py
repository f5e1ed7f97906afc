"""The demo end to end (short), the offline report it writes, and the CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _wandb_reader import history_rows, wait_for_run_file
from memcallbacks import _io
from memcallbacks.demo import run_demo
from memcallbacks.report import build_report, find_run_dir

FIGURES = {"exposure_vs_repetitions.png", "mia_roc.png", "gap_auc.png", "data_map.png", "epsilon.png"}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo")
    result = run_demo(
        out=out, epochs=2, sentences=1500, loggers=("wandb", "csv"), stop_bits=None, audit_canaries=64
    )
    return out, result


@pytest.mark.slow
def test_demo_writes_run_dir_report_and_offline_wandb(demo_run):
    out, result = demo_run
    run_dir = out / "memcallbacks"
    for sub in ("trajectory", "membership", "canary", "audit"):
        assert (run_dir / sub).is_dir(), sub
    # the report: every figure written, embedded in the HTML and linked from the Markdown
    html = (out / "report" / "report.html").read_text()
    md = (out / "report" / "summary.md").read_text()
    written = {p.name for p in (out / "report").glob("*.png")}
    assert FIGURES <= written
    for name in written:
        assert f"id='{name}'" in html and f"({name})" in md
    assert html.count("data:image/png;base64,") == len(written)
    # the numbers in the summary are the monitors' own
    exposure = _io.load_npz(run_dir / "canary" / "exposure.npz")
    reps, last = exposure["repetitions"], exposure["exposure"][-1]
    assert result["exposure_by_count"][32] == pytest.approx(float(last[reps == 32].mean()))
    assert f"x32: {last[reps == 32].mean():.1f}" in md
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
    assert logged_auc[-1] == pytest.approx(result["mia_auc"], abs=1e-6)
    # privacy by default: no per-sample table and no secret went to W&B
    assert not any(k.startswith("mem/traj/most_memorised") or k == "mem/canary/canaries" for k in keys)


@pytest.mark.slow
def test_report_cli_rebuilds_from_the_run_dir_alone(demo_run, tmp_path):
    out, _ = demo_run
    target = tmp_path / "again"
    proc = subprocess.run(
        [sys.executable, "-m", "memcallbacks", "report", str(out), "--out", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "report written" in proc.stdout
    assert FIGURES <= {p.name for p in target.glob("*.png")}
    assert find_run_dir(out) == out / "memcallbacks"


def test_report_of_an_empty_folder_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="run_dir"):
        build_report(tmp_path)


def test_report_survives_a_broken_section(tmp_path):
    run = tmp_path / "memcallbacks"
    (run / "canary").mkdir(parents=True)
    (run / "canary" / "exposure.npz").write_bytes(b"not an npz")
    _io.save_json(run / "stopping.json", {"stopped": True, "stopped_epoch": 3, "reason": "Leakage: x > 1"})
    paths = build_report(run)
    md = paths["markdown"].read_text()
    assert "stopped** at epoch 3" in md and "could not be drawn" in md


def test_report_membership_numbers_match_sklearn(tmp_path):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    members, nonmembers = rng.gamma(2.0, 0.5, (2, 300)), rng.gamma(2.0, 0.6, (2, 400))
    run = tmp_path / "memcallbacks"
    _io.save_npz(
        run / "membership" / "losses.npz",
        epochs=np.array([0, 1]),
        member_losses=members,
        nonmember_losses=nonmembers,
    )
    md = build_report(run)["markdown"].read_text()
    auc = roc_auc_score(np.r_[np.ones(300), np.zeros(400)], -np.r_[members[1], nonmembers[1]])
    assert re.search(rf"AUC {auc:.3f}", md)
