"""The command line: bad input is one line naming the flag, exit code 2, no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from memcallbacks.cli import main
from memcallbacks.demos.demo import DemoOutputError, _prepare_out


def exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code or 0)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["demo", "--epochs", "-1"], "argument --epochs: must be an integer in [1, 1000], got '-1'"),
        (
            ["demo", "--sentences", "5"],
            "argument --sentences: must be an integer in [100, 10000000], got '5'",
        ),
        (["demo", "--epochs", "two"], "argument --epochs: must be an integer"),
        (["demo", "--stop-bits", "nan"], "argument --stop-bits: must be a finite number"),
        (["demo", "--seed", "-3"], "argument --seed: must be an integer in [0, 4294967295]"),
        (["demo", "--logger", "neptune"], "argument --logger: invalid choice: 'neptune'"),
        (["demo", "--bogus"], "usage: memcallbacks demo"),
        (["report", "--bogus", "x"], "usage: memcallbacks report"),
    ],
)
def test_bad_flags_exit_2_with_the_flag_named(argv, says, capsys):
    assert exit_code(argv) == 2
    err = capsys.readouterr().err
    assert says in err
    assert "Traceback" not in err


def test_demo_bogus_flag_prints_the_demo_usage(capsys):
    assert exit_code(["demo", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: memcallbacks demo")
    assert "unrecognized arguments: --bogus" in err


def test_no_traceback_from_the_console_script(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "memcallbacks.cli", "demo", "--sentences", "5"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("memcallbacks demo: error: argument --sentences")


def test_demo_out_that_is_a_file_exits_2(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert exit_code(["demo", "--out", str(target)]) == 2
    assert "argument --out" in capsys.readouterr().err


def test_demo_starts_clean_in_its_own_folder_and_keeps_other_files(tmp_path):
    out = tmp_path / "demo_run"
    assert _prepare_out(out) == []
    for name in ("memcallbacks/trajectory/epoch_0007.npy", "csv/version_0/metrics.csv", "fit-profile.txt"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("old")
    (out / "my-notes.txt").write_text("keep")
    assert _prepare_out(out) == ["memcallbacks", "csv", "fit-profile.txt"]
    assert sorted(p.name for p in out.iterdir()) == [".memcallbacks-demo", "my-notes.txt"]


def test_demo_refuses_a_run_dir_it_did_not_write(tmp_path):
    (tmp_path / "memcallbacks" / "canary").mkdir(parents=True)
    with pytest.raises(DemoOutputError, match="did not write"):
        _prepare_out(tmp_path)
    assert (tmp_path / "memcallbacks" / "canary").is_dir()


def test_report_of_a_missing_folder_exits_2(tmp_path, capsys):
    assert exit_code(["report", str(tmp_path / "nope")]) == 2
    assert "argument run_dir: `run_dir`" in capsys.readouterr().err


def test_report_out_existing_file_exits_2(run, tmp_path, capsys):
    target = tmp_path / "summary.md"
    target.write_text("mine")
    assert exit_code(["report", str(run["out"]), "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert "argument --out:" in err
    assert "is a file" in err
    assert target.read_text() == "mine"


def _make_read_only(folder: Path) -> None:
    for p in [folder, *folder.rglob("*")]:
        if p.is_dir():
            p.chmod(0o555)
    probe = folder / ".probe"
    try:
        probe.write_text("")
    except OSError:
        return
    probe.unlink()
    # root ignores permission bits: mark the folder immutable instead (ext4 and most local filesystems)
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
        pytest.skip("cannot make a read-only folder on this filesystem as this user")


def _make_writable(folder: Path) -> None:
    if shutil.which("chattr"):
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    for p in [folder, *folder.rglob("*")]:
        if p.is_dir():
            p.chmod(0o755)


def test_report_on_a_read_only_run_dir_says_to_pass_out(run, tmp_path, capsys):
    root = tmp_path / "memcallbacks"
    shutil.copytree(run["root"], root, ignore=shutil.ignore_patterns("report"))
    _make_read_only(root)
    try:
        assert exit_code(["report", str(root)]) == 2
        err = capsys.readouterr().err
        assert f"cannot write the report to {str(root / 'report')!r}" in err
        assert "--out" in err
        out = tmp_path / "elsewhere"
        assert exit_code(["report", str(root), "--out", str(out)]) == 0
        assert (out / "report.html").is_file()
    finally:
        _make_writable(root)


def test_report_with_a_corrupted_file_exits_1_and_names_it(run, tmp_path, capsys):
    root = tmp_path / "memcallbacks"
    shutil.copytree(run["root"], root, ignore=shutil.ignore_patterns("report"))
    (root / "membership" / "metrics.json").write_text('{"history": [')
    assert exit_code(["report", str(root)]) == 1
    captured = capsys.readouterr()
    assert "report written" in captured.out
    assert "section missing: Membership inference" in captured.err
    assert str(root / "membership" / "metrics.json") in captured.err
    assert "Traceback" not in captured.err
    assert os.path.exists(root / "report" / "data_map.png")
