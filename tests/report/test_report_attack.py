"""The report's attack section: `memcallbacks attack` results (attack.json, roc.png) read back through
`rundir.read_attack`, shown as a table with the file's numbers and the ROC figure in HTML and Markdown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.shadow_runs import write_shadow_files
from memcallbacks.cli import main
from memcallbacks.offline.attack import run_attack
from memcallbacks.report import build_report
from memcallbacks.rundir import ATTACK_FORMAT_VERSION, RunDirectory, RunDirectoryError, read_attack
from memcallbacks.utilities import fileio


def _cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def dirs(tmp_path: Path) -> list[Path]:
    return write_shadow_files(tmp_path / "runs")


def _row(label: str, entry: dict) -> str:
    spread = f"{min(entry['per_target_auc']):.4f}-{max(entry['per_target_auc']):.4f}"
    return (
        f"| {label} | {entry['auc']:.4f} | {entry['tpr@0.1%fpr']:.4f} | {entry['tpr@1%fpr']:.4f} | {spread} |"
    )


def test_attack_default_out_lands_in_the_first_run_and_the_report_shows_it(
    dirs: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, printed, err = _cli(capsys, "attack", *dirs)
    assert code == 0, err
    folder = dirs[0] / "memcallbacks" / "attack"
    assert f"written: {folder / 'attack.json'}" in printed
    code, _, err = _cli(capsys, "attack", *dirs, "--offline", "--method", "lira")
    assert code == 0, err
    summary = json.loads((folder / "attack.json").read_text())
    assert summary["version"] == ATTACK_FORMAT_VERSION
    assert summary["order"] == [
        "loss",
        "lira-online",
        "rmia-online",
    ]

    code, _, err = _cli(capsys, "report", dirs[0])  # the run's own folder: finds attack/ and attack_offline/
    assert code == 0, err
    report = dirs[0] / "memcallbacks" / "report"
    md = (report / "summary.md").read_text()
    assert "## Attacks across shadow runs (loss, LiRA, RMIA), `attack`" in md
    assert "| attack | AUC | TPR@0.1%FPR | TPR@1%FPR | AUC per target (min-max) |" in md
    lines = md.splitlines()
    rows = [_row(label, summary["attacks"][label]) for label in summary["order"]]
    start = lines.index(rows[0])
    assert lines[start : start + 3] == rows  # the file's numbers, in the attack's order
    assert "| lira-offline |" in md
    assert "`attack_offline`" in md
    # the figure is attack's own roc.png, copied next to the report and embedded in the page
    assert (report / "attack_roc.png").read_bytes() == (folder / "roc.png").read_bytes()
    assert (report / "attack_roc_offline.png").is_file()
    assert "![ROC of each attack on log-log axes" in md
    assert "(attack_roc.png)" in md
    page = (report / "report.html").read_text()
    entry = summary["attacks"]["rmia-online"]
    assert f"<td>rmia-online</td><td>{entry['auc']:.4f}</td><td>{entry['tpr@0.1%fpr']:.4f}</td>" in page
    assert "id='attack_roc.png'" in page
    assert "data:image/png;base64," in page


def test_report_attack_flag_shows_results_written_elsewhere(
    dirs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_attack(dirs, methods=("loss", "lira"))
    from memcallbacks.offline.attack import write_outputs

    write_outputs(result, tmp_path / "elsewhere")
    files = read_attack(tmp_path / "elsewhere")
    # one schema: what the reader returns is what the attack computed, to the last bit
    assert [r.label for r in files.rows] == ["loss", "lira-online"]
    for row in files.rows:
        report = result.reports[row.label]
        assert row.auc == report.auc
        assert row.tpr_at_fpr == report.tpr_at_fpr
        assert row.n_nonmembers == report.n_nonmembers
    assert files.fprs == (0.001, 0.01)
    assert files.figure == tmp_path / "elsewhere" / "roc.png"

    out = tmp_path / "rep"
    code, _, err = _cli(capsys, "report", dirs[1], "--attack", tmp_path / "elsewhere", "--out", out)
    assert code == 0, err
    md = (out / "summary.md").read_text()
    assert f"`{tmp_path / 'elsewhere'}`" in md
    assert f"| lira-online | {result.reports['lira-online'].auc:.4f} |" in md
    assert (out / "attack_roc_elsewhere.png").is_file()

    code, _, err = _cli(capsys, "report", dirs[1], "--attack", tmp_path / "nothing")
    assert code == 2
    assert "argument --attack" in err
    assert "nothing" in err
    assert "attack.json" in err


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda s: "{not json", "not readable JSON"),
        (lambda s: json.dumps({**s, "version": 2}), "version 2"),
        (lambda s: json.dumps({**s, "format": "somebody.else"}), "'somebody.else'"),
        (
            lambda s: json.dumps({k: v for k, v in s.items() if k != "settings"}),
            "lacks the object 'settings'",
        ),
        (
            lambda s: json.dumps({**s, "attacks": {"loss": {"auc": 0.5}}}),
            "attack 'loss' lacks the field 'n_members'",
        ),
        (
            lambda s: json.dumps({**s, "attacks": {"loss": {**s["attacks"]["loss"], "auc": "high"}}}),
            "'auc' is 'high', not a number",
        ),
    ],
)
def test_a_damaged_or_foreign_attack_json_is_named_and_the_rest_of_the_report_stays(
    dirs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], damage, says: str
) -> None:
    from memcallbacks.offline.attack import write_outputs

    folder = dirs[0] / "memcallbacks" / "attack"
    write_outputs(run_attack(dirs, methods=("loss",)), folder)
    path = folder / "attack.json"
    path.write_text(damage(json.loads(path.read_text())))
    with pytest.raises(RunDirectoryError, match=says) as info:
        RunDirectory(dirs[0] / "memcallbacks").attack()
    assert str(path) in str(info.value)

    code, _, err = _cli(capsys, "report", dirs[0], "--out", tmp_path / "rep")
    assert code == 1
    assert str(path) in err
    assert says in err
    assert "Traceback" not in err
    assert f"could not be drawn: '{path}'" in (tmp_path / "rep" / "summary.md").read_text()


def test_a_missing_figure_is_reported_and_the_table_still_shown(dirs: list[Path], tmp_path: Path) -> None:
    from memcallbacks.offline.attack import write_outputs

    folder = dirs[0] / "memcallbacks" / "attack"
    write_outputs(run_attack(dirs, methods=("loss",)), folder)
    (folder / "roc.png").unlink()
    paths = build_report(dirs[0], out=tmp_path / "rep")
    assert any("roc.png" in p and "missing" in p for p in paths["problems"])
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert "| loss |" in md
    assert "attack_roc.png" not in md
    assert fileio.load_json(folder / "attack.json")["attacks"]["loss"]["auc"] > 0.5
