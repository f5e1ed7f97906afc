"""The offline report built from a real run directory: numbers, location, figures, broken files."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from helpers.report_figures import FIGURES
from memcallbacks.report import build_report, report_dir
from memcallbacks.utilities import fileio


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
    mem = fileio.load_npz(run["root"] / "membership" / "losses.npz")
    m, n = mem["member_losses"][-1], mem["nonmember_losses"][-1]
    auc = roc_auc_score(np.r_[np.ones(m.size), np.zeros(n.size)], -np.r_[m, n])
    assert re.search(rf"last evaluation \(epoch 2\): AUC {auc:.3f}", md)
    exp = run["callbacks"]["exposure"].arrays
    reps, last = exp["repetitions"], exp["exposure"][-1]
    assert (
        f"at the last evaluation (epoch 2): x1: {last[reps == 1].mean():.1f}, x4: {last[reps == 4].mean():.1f}"
        in md
    )
    audit = run["callbacks"]["audit"].history[-1]
    assert (
        f"one-run audit after epoch 2: epsilon >= {audit['mem/audit/epsilon_lb']:.3f} with confidence 95%"
        in md
    )
    dp = run["callbacks"]["dp"].history[-1]
    assert f"DP-SGD epsilon after epoch 2: {dp['mem/dp/epsilon']:.3f}" in md
    assert "**stopped** at epoch 2" in md
    # the data map explains its stars: 2 canaries inserted once, 2 inserted 4 times = 10 copies
    assert "stars: the 10 training copies of the 4 canaries" in md


def logged(run, key):
    return {int(r["epoch"]): r[key] for r in run["csv"] if key in r}


def test_sequence_numbers_are_the_logged_ones(run, report):
    """Every number of the sequence section is what the monitor logged (read back from the CSV logger).

    The CSV holds Lightning's float32 copy, the report prints the float64 value with 3 decimals:
    equal within half a unit of the last digit plus the float32 rounding.
    """
    md = report["markdown"].read_text()

    def printed(pattern: str) -> list[float]:
        found = re.search(pattern, md)
        assert found is not None, pattern
        return [float(v) for v in found.groups()]

    def close(shown: list[float], keys: list[str]) -> None:
        expected = [logged(run, key)[2] for key in keys]
        assert shown == pytest.approx(expected, abs=5e-4 + 1e-6), keys

    num = r"(\d\.\d{3})"
    close(
        printed(
            r"last evaluation \(epoch 2\): exact extraction of the 8-token suffix from a 8-token prefix "
            rf"\(Carlini et al\. 2023\): members {num}, non-members {num}"
        ),
        ["mem/extract/exact_rate", "mem/extract/exact_rate_nonmember"],
    )
    # every member rate beside the held-out rate of the same kind
    close(
        printed(
            rf"p = 0\.10: fraction of probes .*: n=1: members {num} vs held out {num}, "
            rf"n=10: members {num} vs held out {num}, n=100: members {num} vs held out {num}"
        ),
        [f"mem/extract/prob_rate{who}/n{n}" for n in (1, 10, 100) for who in ("", "_nonmember")],
    )
    close(
        printed(rf"Carlini et al\. 2021\): loss {num}, min_k {num}, zlib {num}"),
        [f"mem/mia_lm/auc/{s}" for s in ("loss", "min_k", "zlib")],
    )
    assert "![Greedy extraction rate (members, non-members) and LM membership AUCs per epoch]" in md
    assert "(n, p)-discoverable extraction rate against the number of tries n, p = 0.10" in md


def test_figures_draw_the_logged_series(run, tmp_path, monkeypatch):
    """The sequence figures plot, per epoch, the logged rates and AUCs (captured from matplotlib)."""
    from memcallbacks.report import sequence as sequence_module

    figures = []
    save = sequence_module.save_figure

    def capture(fig, out_dir, name):
        figures.append((name, fig))  # a closed figure keeps its axes and lines
        return save(fig, out_dir, name)

    monkeypatch.setattr(sequence_module, "save_figure", capture)
    shutil.copytree(run["root"] / "sequence", tmp_path / "memcallbacks" / "sequence")
    build_report(tmp_path / "memcallbacks")
    drawn = dict(figures)
    over_epochs = drawn["sequence_epochs.png"]
    rates, aucs = over_epochs.axes
    series = {line.get_label(): line.get_ydata() for ax in (rates, aucs) for line in ax.lines}
    np.testing.assert_allclose(
        series["members (trained on)"], list(logged(run, "mem/extract/exact_rate").values()), rtol=1e-6
    )
    np.testing.assert_allclose(
        series["zlib ratio (Carlini et al. 2021)"],
        list(logged(run, "mem/mia_lm/auc/zlib").values()),
        rtol=1e-6,
    )
    for ax in (rates, aucs):  # integer epoch ticks
        assert ax.get_xlabel() == "epoch"
        assert np.array_equal(ax.get_xticks(), np.round(ax.get_xticks()))
    tries = drawn["extraction_vs_tries.png"].axes[0]
    assert tries.get_xscale() == "log"
    epoch2 = next(line for line in tries.lines if line.get_label() == "epoch 2")
    assert epoch2.get_xdata().tolist() == [1, 10, 100]
    np.testing.assert_allclose(
        epoch2.get_ydata(), [logged(run, f"mem/extract/prob_rate/n{n}")[2] for n in (1, 10, 100)], rtol=1e-6
    )
    dashed = [
        line
        for line in tries.lines
        if line.get_linestyle() == "--" and line.get_color() == epoch2.get_color()
    ]
    assert len(dashed) == 1  # the held-out baseline of epoch 2, same colour, dashed
    np.testing.assert_allclose(
        dashed[0].get_ydata(),
        [logged(run, f"mem/extract/prob_rate_nonmember/n{n}")[2] for n in (1, 10, 100)],
        rtol=1e-6,
    )
    legend = [t.get_text() for t in tries.get_legend().get_texts()]
    assert "held out (never trained on): the baseline" in legend
    assert "greedy exact rate (one greedy decode)" in legend
    assert any("p_threshold = 0.10" in t for t in legend)


def test_data_map_ranks_by_the_trackers_score(run, report):
    """The tracker ran with ``score="min_loss"``: the data map and the list rank by it and say so."""
    md = report["markdown"].read_text()
    tracker = run["callbacks"]["trajectory"]
    listed = re.search(r"most memorised, ranked by `min_loss` \(lowest loss reached[^)]*\): sample (.*)", md)
    assert listed is not None
    ids = [int(part.split(" ")[0]) for part in listed.group(1).split(", ")]
    assert ids == tracker.most_memorised(10, by="min_loss").tolist()
    n = int(tracker.statistics().count.astype(bool).sum())
    assert f"circled: the top {max(1, min(50, n // 100))} by `min_loss`" in md
    # the canary copies in the top 1%, counted independently from the tracker and the canary set
    # (the canaries here are inserted at most 4 times: the report counts those inserted 4 times)
    k = int(np.ceil(0.01 * n))
    best = set(tracker.most_memorised(k, by="min_loss").tolist())
    canaries = run["canaries"]
    copies = [i for c in canaries if c.repetitions == 4 for i in canaries.injected_indices[c.id]]
    copies = [i for i in copies if tracker.statistics().count[i] > 0]
    hits = len(best & set(copies))
    assert (
        f"{hits} of the {len(copies)} training copies ({100 * hits / len(copies):.0f}%) of the canaries inserted "
        f">= 4 times rank in the top 1% ({k} of the {n} samples) by `min_loss`"
    ) in md


def test_audit_bound_at_zero_is_explained(run, tmp_path):
    root = tmp_path / "memcallbacks"
    shutil.copytree(run["root"] / "audit", root / "audit")
    summary = fileio.load_json(root / "audit" / "audit.json")
    for row in summary["history"]:
        row["epsilon_lb"] = 0.0
    fileio.save_json(root / "audit" / "audit.json", summary)
    md = build_report(root)["markdown"].read_text()
    assert "0 = nothing proved" in md
    assert "a lower bound, not an estimate" in md


def test_a_corrupted_file_is_named_and_the_other_sections_stay(run, tmp_path):
    root = tmp_path / "memcallbacks"
    shutil.copytree(run["root"], root, ignore=shutil.ignore_patterns("report"))
    (root / "canary" / "exposure.npz").write_bytes(b"PK\x03\x04 truncated")
    result = build_report(root)
    assert len(result["problems"]) == 1
    assert str(root / "canary" / "exposure.npz") in result["problems"][0]
    md = result["markdown"].read_text()
    assert "## Canary exposure (Secret Sharer)\n\n- could not be drawn:" in md
    assert "exposure.npz" in md
    assert "Membership inference" in md
    assert "data_map.png" in md


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


def test_a_named_sequence_monitor_gets_its_own_figures(run, tmp_path):
    """``name="canaries"`` writes ``sequence_canaries/``: its own section, figures named after it."""
    root = tmp_path / "memcallbacks"
    shutil.copytree(run["root"] / "sequence", root / "sequence_canaries")
    result = build_report(root)
    assert result["problems"] == []
    assert {p.name for p in result["figures"]} == {
        "sequence_epochs_canaries.png",
        "extraction_vs_tries_canaries.png",
    }
    md = result["markdown"].read_text()
    assert "## Sequence memorisation (language models), `sequence_canaries`" in md


def test_sequence_section_reads_the_logged_rates(tmp_path):
    from memcallbacks.rundir import write_sequence

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
    assert "members 0.250, non-members 0.000" in md
    assert "loss 0.750, zlib n/a" in md
