"""The offline report built from a real run directory: numbers, location, figures, broken files."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from memcallbacks import _io
from memcallbacks.report import build_report, report_dir

FIGURES = {"exposure_vs_repetitions.png", "mia_roc.png", "gap_auc.png", "data_map.png", "epsilon.png"}


@pytest.fixture(scope="module")
def report(run):
    return build_report(run["root"])


def test_report_goes_to_one_place_whichever_folder_is_given(run, report):
    assert (
        report["html"].parent == run["root"] / "report" == report_dir(run["out"]) == report_dir(run["root"])
    )
    assert report["problems"] == []
    assert {p.name for p in report["figures"]} == FIGURES
    for p in report["figures"]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = report["html"].read_text()
    assert html.count("data:image/png;base64,") == len(FIGURES)


def test_report_numbers_are_the_logged_ones(run, report):
    from sklearn.metrics import roc_auc_score

    md = report["markdown"].read_text()
    mem = _io.load_npz(run["root"] / "membership" / "losses.npz")
    m, n = mem["member_losses"][-1], mem["nonmember_losses"][-1]
    auc = roc_auc_score(np.r_[np.ones(m.size), np.zeros(n.size)], -np.r_[m, n])
    assert re.search(rf"last evaluation \(epoch 2\): AUC {auc:.3f}", md)
    exp = run["callbacks"]["exposure"].history
    reps, last = exp["repetitions"], exp["exposure"][-1]
    assert (
        f"at the last evaluation (epoch 2): x1: {last[reps == 1].mean():.1f}, x4: {last[reps == 4].mean():.1f}"
        in md
    )
    audit = run["callbacks"]["audit"].history[-1]
    assert f"one-run audit after epoch 2: epsilon >= {audit['epsilon_lb']:.3f} with confidence 95%" in md
    dp = run["callbacks"]["dp"].history[-1]
    assert f"DP-SGD epsilon after epoch 2: {dp['epsilon']:.3f}" in md
    assert "**stopped** at epoch 2" in md
    # the data map explains its stars: 2 canaries inserted once, 2 inserted 4 times = 10 copies
    assert "stars: the 10 training copies of the 4 canaries" in md


def test_audit_bound_at_zero_is_explained(run, tmp_path):
    root = tmp_path / "memcallbacks"
    shutil.copytree(run["root"] / "audit", root / "audit")
    summary = _io.load_json(root / "audit" / "audit.json")
    for row in summary["history"]:
        row["epsilon_lb"] = 0.0
    _io.save_json(root / "audit" / "audit.json", summary)
    md = build_report(root)["markdown"].read_text()
    assert "0 = nothing proved" in md and "a lower bound, not an estimate" in md


def test_a_corrupted_file_is_named_and_the_other_sections_stay(run, tmp_path):
    root = tmp_path / "memcallbacks"
    shutil.copytree(run["root"], root, ignore=shutil.ignore_patterns("report"))
    (root / "canary" / "exposure.npz").write_bytes(b"PK\x03\x04 truncated")
    result = build_report(root)
    assert len(result["problems"]) == 1 and str(root / "canary" / "exposure.npz") in result["problems"][0]
    md = result["markdown"].read_text()
    assert "## Canary exposure (Secret Sharer)\n\n- could not be drawn:" in md
    assert "exposure.npz" in md and "Membership inference" in md and "data_map.png" in md


def test_an_empty_folder_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="run_dir"):
        build_report(tmp_path)


def test_out_that_is_a_file_is_refused(run, tmp_path):
    target = tmp_path / "report.html"
    target.write_text("mine")
    with pytest.raises(NotADirectoryError, match="`out`"):
        build_report(run["root"], out=target)
    assert target.read_text() == "mine"


def test_named_monitors_get_their_own_sections(run, tmp_path):
    """``name="holdout2"`` writes ``membership_holdout2/``: a second section with its own figures."""
    root = tmp_path / "memcallbacks"
    shutil.copytree(run["root"] / "membership", root / "membership_holdout2")
    result = build_report(root)
    assert result["problems"] == []
    assert {p.name for p in result["figures"]} == {"mia_roc_holdout2.png", "gap_auc_holdout2.png"}
    assert "## Membership inference (loss threshold), `membership_holdout2`" in result["markdown"].read_text()


def test_sequence_section_reads_the_logged_rates(tmp_path):
    from memcallbacks._rundir import write_sequence

    root = tmp_path / "memcallbacks"
    history = [
        {"epoch": 0.0, "mem/extract/exact_rate": 0.0, "mem/mia_lm/auc/loss": 0.5},
        {"epoch": 1.0, "mem/extract/exact_rate": 0.25, "mem/extract/exact_rate_nonmember": 0.0,
         "mem/mia_lm/auc/loss": 0.75, "mem/mia_lm/auc/zlib": None},
    ]  # fmt: skip
    write_sequence(
        root / "sequence",
        {"epochs": np.array([0, 1]), "member_exact": np.zeros((2, 4))},
        {"history": history, "prefix_len": 8, "suffix_len": 4},
    )
    md = build_report(root)["markdown"].read_text()
    assert "last evaluation (epoch 1): exact extraction of the 4-token suffix from a 8-token prefix" in md
    assert "members 0.250, non-members 0.000" in md and "loss 0.750, zlib n/a" in md
