"""Run directories are untrusted input, and the CLIs' multi-file outputs are crash-consistent.

A run directory may come from someone else (a shared folder, a downloaded artifact). Every reader
confines the paths it reads to their folder, follows no symbolic link, opens no FIFO or device,
checks sizes before reading (an array's declared size before allocating it), range-checks the values
against their definitions and names the file (and the field) in every error. ``attack`` and
``memorisation`` tie their outputs together with digests, so a reader never pairs files of two runs.
Histograms leave the machine without the exact extreme losses unless per-sample logging is opted in.
"""

from __future__ import annotations

import io
import json
import os
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers.shadow_runs import write_shadow_files
from memcallbacks import loggers, rundir
from memcallbacks.cli import main
from memcallbacks.offline.attack import run_attack, write_outputs
from memcallbacks.offline.counterfactual import check_outputs, run_memorisation
from memcallbacks.offline.counterfactual import write_outputs as write_memorisation
from memcallbacks.report import build_report
from memcallbacks.rundir import RunDirectory, RunDirectoryError, read_attack

SECRET = "AWS_SECRET_ACCESS_KEY=hunter2-planted"


def _cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def _in_time(fn: Callable[[], Any], seconds: float = 20.0) -> Any:
    """``fn()`` in a thread; fails (instead of hanging the suite) when it does not return in time."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn} blocked for {seconds} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _membership_run(root: Path, **history: Any) -> Path:
    """A membership folder as the monitor writes it (two evaluations), history values overridable."""
    folder = root / rundir.MEMBERSHIP
    rows = [{"epoch": e, "mem/mia/auc": 0.6, "mem/gap/loss": 0.1, "mem/mia/n_members": 8} for e in (0, 1)]
    rows[-1].update(history)
    rundir.write_membership(
        folder,
        {
            "epochs": np.array([0, 1]),
            "member_losses": np.ones((2, 8)),
            "nonmember_losses": np.full((2, 8), 2.0),
        },
        {"history": rows, "fprs": [0.01]},
    )
    return folder


def _npy_bytes(header_shape: tuple[int, ...], payload: bytes = b"\0" * 64) -> bytes:
    """An ``.npy`` whose header claims ``header_shape`` float64 values, followed by ``payload`` only."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": header_shape})
    return buf.getvalue() + payload


def _npz_with(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name + ".npy", data)


def _array_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


# -- 1. paths confined to their folder, no link followed, no special file opened ---------------
@pytest.fixture
def attacked(tmp_path: Path) -> tuple[list[Path], Path]:
    dirs = write_shadow_files(tmp_path / "runs")
    folder = dirs[0] / "memcallbacks" / "attack"
    write_outputs(run_attack(dirs, methods=("loss",)), folder)
    (tmp_path / "secret.txt").write_text(SECRET)
    return dirs, folder


@pytest.mark.parametrize("figure", ["../../../../secret.txt", "/etc/passwd", "..", "sub/roc.png"])
def test_attack_json_naming_a_figure_outside_its_folder_is_refused(
    attacked: tuple[list[Path], Path], tmp_path: Path, figure: str
) -> None:
    dirs, folder = attacked
    path = folder / "attack.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "figure": figure}))
    with pytest.raises(RunDirectoryError, match="the field 'figure'") as info:
        read_attack(folder)
    assert str(path) in str(info.value)
    paths = build_report(dirs[0], out=tmp_path / "rep")
    assert any("the field 'figure'" in p for p in paths["problems"])
    for f in (tmp_path / "rep").iterdir():
        assert SECRET.encode() not in f.read_bytes()


def test_a_figure_linked_elsewhere_is_not_followed(attacked: tuple[list[Path], Path], tmp_path: Path) -> None:
    dirs, folder = attacked
    (folder / "roc.png").unlink()
    (folder / "roc.png").symlink_to(tmp_path / "secret.txt")
    paths = build_report(dirs[0], out=tmp_path / "rep")
    problem = next(p for p in paths["problems"] if "roc.png" in p)
    assert "symbolic link" in problem
    assert "is missing" not in problem
    for f in (tmp_path / "rep").iterdir():
        assert SECRET.encode() not in f.read_bytes()


def test_a_summary_linked_to_dev_zero_or_a_fifo_is_refused_without_reading_or_blocking(
    tmp_path: Path,
) -> None:
    root = tmp_path / "run"
    folder = _membership_run(root)
    (folder / "metrics.json").unlink()
    (folder / "metrics.json").symlink_to("/dev/zero")
    with pytest.raises(RunDirectoryError, match="symbolic link") as info:
        _in_time(lambda: RunDirectory(root).membership())
    assert "metrics.json" in str(info.value)

    seq = root / rundir.SEQUENCE
    seq.mkdir()
    os.mkfifo(seq / "sequences.npz")
    with pytest.raises(RunDirectoryError, match="FIFO") as info:
        _in_time(lambda: RunDirectory(root).sequence())
    assert "sequences.npz" in str(info.value)
    paths = _in_time(lambda: build_report(root, out=tmp_path / "rep"))
    assert any("sequences.npz" in p and "FIFO" in p for p in paths["problems"])


def test_a_monitor_folder_linked_elsewhere_is_not_followed(tmp_path: Path) -> None:
    elsewhere = _membership_run(tmp_path / "elsewhere")
    root = tmp_path / "run"
    root.mkdir()
    (root / rundir.MEMBERSHIP).symlink_to(elsewhere, target_is_directory=True)
    (root / f"{rundir.MEMBERSHIP}_x").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(RunDirectoryError, match="symbolic link"):
        RunDirectory(root).membership()
    assert RunDirectory(root).folders(rundir.MEMBERSHIP) == [
        rundir.MEMBERSHIP
    ]  # the named link is not listed


def test_a_shadow_file_that_is_a_link_or_a_fifo_is_named_by_attack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dirs = write_shadow_files(tmp_path / "runs")
    scores = dirs[1] / "memcallbacks" / "shadow" / "scores.npz"
    scores.unlink()
    os.mkfifo(scores)
    code, _, err = _in_time(lambda: _cli(capsys, "attack", *dirs, "--out", tmp_path / "a"))
    assert code == 2
    assert str(scores) in err
    assert "FIFO" in err
    assert "Traceback" not in err


# -- 2. bounded reads --------------------------------------------------------------------------
def test_an_npy_header_claiming_a_terabyte_is_refused_before_allocating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dirs = write_shadow_files(tmp_path / "runs")
    scores = dirs[2] / "memcallbacks" / "shadow" / "scores.npz"
    good = rundir.read_shadow_scores(scores.parent)
    members = {k: _array_npy(v) for k, v in good.items()}
    members["scores"] = _npy_bytes((10**12,))
    _npz_with(scores, members)
    for command in ("attack", "memorisation"):
        code, _, err = _cli(capsys, command, *dirs, "--out", tmp_path / command)
        assert code == 2, err
        assert str(scores) in err
        assert "`scores` declares shape (1000000000000,)" in err
        assert "MemoryError" not in err
        assert "Traceback" not in err


def test_a_report_file_over_its_size_or_declaring_more_than_it_holds_is_named(tmp_path: Path) -> None:
    root = tmp_path / "run"
    folder = _membership_run(root)
    with open(folder / "metrics.json", "r+b") as f:  # sparse: 65 MiB of nothing on disk
        f.truncate(rundir.MAX_JSON_BYTES + 1)
    with pytest.raises(RunDirectoryError, match="more than a memcallbacks file of its kind"):
        RunDirectory(root).membership()

    _membership_run(root)
    _npz_with(
        folder / "losses.npz", {"epochs": _array_npy(np.array([0])), "member_losses": _npy_bytes((10**6,))}
    )
    paths = build_report(root, out=tmp_path / "rep")
    problem = next(p for p in paths["problems"] if "losses.npz" in p)
    assert "declares 8000000 bytes of data but holds" in problem
    assert "MemoryError" not in problem


def test_a_trajectory_epoch_file_with_a_lying_header_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "trajectory"
    folder.mkdir()
    (folder / "epoch_0000.npy").write_bytes(_npy_bytes((10**12,)))
    files = rundir.TrajectoryFiles(folder, {"epochs": np.array([0]), "count": np.ones(3)}, {})
    with pytest.raises(RunDirectoryError, match="epoch_0000.npy"):
        files.epoch_losses(0)


# -- 6. crash-consistent multi-file outputs ---------------------------------------------------
def test_attack_json_and_roc_png_of_two_runs_are_never_paired(
    attacked: tuple[list[Path], Path], tmp_path: Path
) -> None:
    dirs, folder = attacked
    old_png = (folder / "roc.png").read_bytes()
    write_outputs(run_attack(dirs, methods=("loss", "lira")), folder)
    assert read_attack(folder).figure_png() == (folder / "roc.png").read_bytes()
    # a kill between the two writes: the new attack.json beside the previous run's figure
    (folder / "roc.png").write_bytes(old_png)
    with pytest.raises(RunDirectoryError, match="not the figure attack.json was written with"):
        read_attack(folder).figure_png()
    paths = build_report(dirs[0], out=tmp_path / "rep")
    assert any("not the figure attack.json was written with" in p for p in paths["problems"])
    assert not (tmp_path / "rep" / "attack_roc.png").exists()


def test_memorisation_outputs_of_two_runs_are_detected(tmp_path: Path) -> None:
    dirs = write_shadow_files(tmp_path / "runs")
    out = tmp_path / "m"
    write_memorisation(run_memorisation(dirs, signal="score"), out)
    assert check_outputs(out)["files"]
    old_npz = (out / "memorisation.npz").read_bytes()
    write_memorisation(run_memorisation(dirs[:3], signal="score"), out)
    (out / "memorisation.npz").write_bytes(old_npz)  # the other run's table beside this run's summary
    with pytest.raises(RunDirectoryError, match="memorisation.npz") as info:
        check_outputs(out)
    assert "not the file memorisation.json was written with" in str(info.value)


# -- 8. out-of-range values, a missing format, non-float scores -------------------------------
@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("mem/mia/auc", 5.0, r"outside its range \[0, 1\]"),
        ("mem/extract/exact_rate", 7.5, r"outside its range \[0, 1\]"),
        ("mem/mia/tpr@1%fpr", 7.0, r"outside its range \[0, 1\]"),
        ("mem/mia/n_members", -3, "not a non-negative integer"),
        ("mem/mia/auc", "high", "not a number"),
    ],
)
def test_out_of_range_history_values_are_refused_naming_file_and_field(
    tmp_path: Path, field: str, value: Any, says: str
) -> None:
    root = tmp_path / "run"
    _membership_run(root, **{field: value})
    with pytest.raises(RunDirectoryError, match=says) as info:
        RunDirectory(root).membership()
    assert "metrics.json" in str(info.value)
    assert field in str(info.value)
    problems = build_report(root, out=tmp_path / "rep")["problems"]
    assert any("metrics.json" in p and field in p for p in problems)
    assert not any("could not convert" in p for p in problems)


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda s: {k: v for k, v in s.items() if k != "format"}, "lacks the field 'format'"),
        (lambda s: {**s, "attacks": {"loss": {**s["attacks"]["loss"], "auc": 5.0}}}, "'auc' is 5.0, outside"),
        (
            lambda s: {**s, "attacks": {"loss": {**s["attacks"]["loss"], "tpr@1%fpr": 7.0}}},
            "'tpr@1%fpr' is 7.0, outside",
        ),
        (
            lambda s: {**s, "attacks": {"loss": {**s["attacks"]["loss"], "n_members": 2.5}}},
            "'n_members' is 2.5, not a non-negative integer",
        ),
    ],
)
def test_a_damaged_attack_json_is_refused_naming_the_field(
    attacked: tuple[list[Path], Path], damage: Callable[[dict], dict], says: str
) -> None:
    _, folder = attacked
    path = folder / "attack.json"
    path.write_text(json.dumps(damage(json.loads(path.read_text()))))
    with pytest.raises(RunDirectoryError, match=says) as info:
        read_attack(folder)
    assert str(path) in str(info.value)


def test_scores_held_as_strings_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dirs = write_shadow_files(tmp_path / "runs")
    scores = dirs[0] / "memcallbacks" / "shadow" / "scores.npz"
    arrays = rundir.read_shadow_scores(scores.parent)
    np.savez(scores, **{**arrays, "scores": arrays["scores"].astype(str)})
    code, _, err = _cli(capsys, "attack", *dirs, "--out", tmp_path / "a")
    assert code == 2
    assert str(scores) in err
    assert "not floating-point ones" in err


# -- 9. clear errors naming the path ------------------------------------------------------------
def test_deeply_nested_json_is_named_not_a_recursion_error(tmp_path: Path) -> None:
    root = tmp_path / "run"
    folder = _membership_run(root)
    (folder / "metrics.json").write_text("[" * 200_000 + "]" * 200_000)
    problems = build_report(root, out=tmp_path / "rep")["problems"]
    problem = next(p for p in problems if "metrics.json" in p)
    assert "nested too deeply" in problem
    assert "RecursionError" not in problem


def _deny(monkeypatch: pytest.MonkeyPatch, target: Path) -> None:
    """Make ``target`` unreadable (a file), or a folder that cannot be entered, as ``chmod 000`` does
    for a user other than root (the tests run as root in some containers)."""
    import builtins

    real = {"open": os.open, "lstat": os.lstat, "stat": os.stat, "builtin_open": builtins.open}

    def check(path: Any, entered: bool) -> None:
        if isinstance(path, int):
            return
        p = Path(os.fspath(path))
        if target in p.parents or (not entered and p == target):
            raise PermissionError(13, "Permission denied", os.fspath(path))

    def opener(name: str) -> Callable[..., Any]:
        def wrapped(path: Any, *args: Any, **kwargs: Any) -> Any:
            check(path, entered=name in ("lstat", "stat"))
            return real[name](path, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(os, "open", opener("open"))
    monkeypatch.setattr(os, "lstat", opener("lstat"))
    monkeypatch.setattr(os, "stat", opener("stat"))
    monkeypatch.setattr(builtins, "open", opener("builtin_open"))


@pytest.mark.parametrize("command", ["attack", "memorisation"])
def test_an_unreadable_scores_file_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    dirs = write_shadow_files(tmp_path / "runs")
    scores = dirs[1] / "memcallbacks" / "shadow" / "scores.npz"
    _deny(monkeypatch, scores)
    code, _, err = _cli(capsys, command, *dirs, "--out", tmp_path / "o")
    assert code == 2
    assert str(scores) in err
    assert "Permission denied" in err
    assert "chmod" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["attack", "memorisation"])
def test_a_run_folder_that_cannot_be_entered_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    dirs = write_shadow_files(tmp_path / "runs")
    _deny(monkeypatch, dirs[2])
    code, _, err = _cli(capsys, command, *dirs, "--out", tmp_path / "o")
    assert code == 2
    assert str(dirs[2]) in err
    assert "Permission denied" in err
    assert "Traceback" not in err


def test_a_scores_array_of_the_wrong_shape_says_its_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dirs = write_shadow_files(tmp_path / "runs", pool_size=300)
    folder = dirs[0] / "memcallbacks" / "shadow"
    arrays = rundir.read_shadow_scores(folder)
    np.savez(folder / "scores.npz", **{**arrays, "scores": arrays["scores"].reshape(300, 1)})
    code, _, err = _cli(capsys, "attack", *dirs, "--out", tmp_path / "a")
    assert code == 2
    assert "shape (300, 1)" in err
    assert "300 scores for a pool of 300" not in err


def test_a_run_of_another_pool_is_reported_as_another_pool_not_other_labels(tmp_path: Path) -> None:
    from memcallbacks.offline.shadow_runs import AttackInputError, check_compatible, load_shadow_run

    dirs = write_shadow_files(tmp_path / "a", runs=2)
    other = write_shadow_files(tmp_path / "b", runs=2, pool_size=500)
    runs = [load_shadow_run(d) for d in (*dirs, other[0])]
    runs = [
        *(r.__class__(**{**r.__dict__, "label_fingerprint": "labels-a"}) for r in runs[:2]),
        runs[2].__class__(**{**runs[2].__dict__, "label_fingerprint": "labels-b", "fingerprint": "pool-b"}),
    ]
    with pytest.raises(AttackInputError, match="another pool"):
        check_compatible(runs)


def test_cli_write_failures_do_not_suggest_resuming_from_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dirs = write_shadow_files(tmp_path / "runs")
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = _cli(capsys, "attack", *dirs, "--out", blocker / "sub")
    assert code == 2
    assert "argument --out" in err
    assert "checkpoint" not in err


# -- 3. histograms leave the machine without the exact extremes -------------------------------
def _exact_extremes() -> set[float]:
    values: set[float] = set()
    for epoch in (0, 1):  # what helpers.callbacks.RecordEmitter emits
        v = np.random.default_rng(epoch).normal(size=200)
        values |= {float(v.min()), float(v.max())}
    return values


def test_wandb_histograms_carry_no_exact_extreme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wandb = pytest.importorskip("wandb")
    import pytorch_lightning as pl

    from helpers.callbacks import RecordEmitter
    from helpers.data import loaders, make_blobs
    from helpers.models import TinyClassifier
    from helpers.training import trainer
    from helpers.wandb_reader import history_rows, wait_for_run_file

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = pl.loggers.WandbLogger(save_dir=str(tmp_path), project="memcallbacks-test")
    tl, vl = loaders(make_blobs(48), make_blobs(16, seed=1))
    trainer(tmp_path, max_epochs=2, logger=logger, callbacks=[RecordEmitter(run_dir=tmp_path / "run")]).fit(
        TinyClassifier(), tl, vl
    )
    wandb.finish()
    rows = [r for r in history_rows(wait_for_run_file(tmp_path)) if "mem/test/hist/bins" in r]
    assert len(rows) == 2
    extremes = _exact_extremes()
    for r in rows:
        assert sum(r["mem/test/hist/values"]) == 200
        assert not extremes & {float(b) for b in r["mem/test/hist/bins"]}


def test_mlflow_histograms_carry_no_exact_min_max(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    import pytorch_lightning as pl
    from mlflow.tracking import MlflowClient

    from helpers.callbacks import RecordEmitter
    from helpers.data import loaders, make_blobs
    from helpers.models import TinyClassifier
    from helpers.training import trainer

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = pl.loggers.MLFlowLogger(
        experiment_name="memcallbacks", tracking_uri=uri, artifact_location=str(tmp_path / "artifacts")
    )
    tl, vl = loaders(make_blobs(48), make_blobs(16, seed=1))
    trainer(tmp_path, max_epochs=2, logger=logger, callbacks=[RecordEmitter(run_dir=tmp_path / "run")]).fit(
        TinyClassifier(), tl, vl
    )
    client = MlflowClient(uri)
    local = Path(
        client.download_artifacts(
            logger.run_id, "memcallbacks/mem/test/hist/epoch_0001.json", str(tmp_path / "dl")
        )
    )
    hist = json.loads(local.read_text())
    assert "min" not in hist
    assert "max" not in hist
    assert sum(hist["counts"]) == 200
    assert not _exact_extremes() & set(hist["bin_edges"])


def test_the_per_sample_opt_in_sends_the_exact_range() -> None:
    values = np.random.default_rng(0).normal(size=200)
    record = loggers.Histogram("mem/x", values, epoch=0, num_bins=10)
    from memcallbacks.loggers.rendering import histogram_summary

    coarse = histogram_summary(record)
    exact = histogram_summary(loggers.Histogram("mem/x", values, epoch=0, num_bins=10, exact=True))
    assert coarse is not None
    assert exact is not None
    assert "min" not in coarse
    assert exact["min"] == values.min()
    assert exact["bin_edges"][-1] == values.max()
    assert coarse["bin_edges"][0] < values.min() or coarse["bin_edges"][0] > values.min()
