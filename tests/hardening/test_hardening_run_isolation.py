"""Run isolation: one run directory per run whatever the logger, each folder stamped with the run
that wrote it, a resume that keeps both, and a report that shows another run's folders apart."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl

from helpers.data import loaders, make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks import LossTrajectoryTracker, MembershipInferenceMonitor
from memcallbacks.cli import main as cli_main
from memcallbacks.report import build_report
from memcallbacks.rundir import RUN_FILE, RunDirectory


def _fit(
    root: Path,
    logger: Any,
    *,
    membership: bool,
    epochs: int = 2,
    extra: tuple[Any, ...] = (),
    ckpt_path: str | None = None,
    **kw: Any,
) -> pl.Trainer:
    tl, vl = loaders(make_blobs(48), make_blobs(32, seed=1))
    callbacks: list[Any] = [LossTrajectoryTracker(source="step"), *extra]
    if membership:
        callbacks.append(MembershipInferenceMonitor(num_probes=16, batch_size=16))
    t = trainer(root, max_epochs=epochs, logger=logger, callbacks=callbacks, **kw)
    t.fit(TinyClassifier(), tl, vl, ckpt_path=ckpt_path)
    return t


def _root(t: pl.Trainer) -> Path:
    tracker = next(c for c in t.callbacks if isinstance(c, LossTrajectoryTracker))  # type: ignore[attr-defined]
    return tracker.run_dir.parent


def _run_id(root: Path) -> str:
    return json.loads((root / RUN_FILE).read_text())["run_id"]


def test_wandb_runs_in_one_folder_get_their_own_run_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the Quick start's logger: save_dir ".", so trainer.log_dir is "." for every run started there
    wandb = pytest.importorskip("wandb")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    first = _fit(tmp_path, pl.loggers.WandbLogger(project="p"), membership=True)
    first_id = first.loggers[0].version
    wandb.finish()
    second = _fit(tmp_path, pl.loggers.WandbLogger(project="p"), membership=False)
    second_id = second.loggers[0].version
    wandb.finish()
    assert first_id != second_id
    a, b = _root(first), _root(second)
    assert a.resolve() == (tmp_path / "p" / first_id / "memcallbacks").resolve()  # beside checkpoints/
    assert b.resolve() == (tmp_path / "p" / second_id / "memcallbacks").resolve()
    assert not (tmp_path / "memcallbacks").exists()  # nothing shared in "."
    assert (_run_id(a), _run_id(b)) == (first_id, second_id)
    run_b = RunDirectory(b)
    assert run_b.membership() is None  # the first run's membership folder is not in the second's
    assert run_b.written_by("trajectory") == second_id
    assert RunDirectory(a).written_by("membership") == first_id


def test_csv_and_tensorboard_runs_record_distinct_run_ids(tmp_path: Path) -> None:
    csv = _fit(tmp_path, pl.loggers.CSVLogger(str(tmp_path), name="csv"), membership=False)
    tb = _fit(tmp_path, pl.loggers.TensorBoardLogger(str(tmp_path), name="tb"), membership=False)
    a, b = _root(csv), _root(tb)
    assert a == Path(csv.log_dir) / "memcallbacks"
    assert b == Path(tb.log_dir) / "memcallbacks"
    ids = {_run_id(a), _run_id(b)}
    assert len(ids) == 2
    assert {RunDirectory(a).written_by("trajectory"), RunDirectory(b).written_by("trajectory")} == ids


def test_runs_sharing_a_folder_are_warned_and_reported_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _fit(tmp_path, False, membership=True)
    root = _root(first)
    first_id = _run_id(root)
    with pytest.warns(UserWarning, match="holds files of another run"):
        second = _fit(tmp_path, False, membership=False)
    assert _root(second) == root  # no logger, the same default_root_dir: the folder is shared
    second_id = _run_id(root)
    run = RunDirectory(root)
    assert second_id != first_id
    assert run.run() is not None
    assert run.run().previous == (first_id,)
    assert run.written_by("membership") == first_id
    assert run.written_by("trajectory") == second_id
    report = build_report(root)
    md = report["markdown"].read_text()
    assert f"Run: `{second_id}`" in md
    own, _, other = md.partition("# From other runs")
    assert "## Per-sample loss trajectories" in own
    assert "## Membership inference" not in own
    assert "## Membership inference" in other
    assert first_id in other
    assert report["run_id"] == second_id
    assert report["other_runs"] == [f"Membership inference (loss threshold) (run {first_id})"]
    assert report["problems"] == []  # shown apart, not missing
    assert cli_main(["report", str(root)]) == 0
    assert f"written by another run, shown apart: Membership inference (loss threshold) (run {first_id})" in (
        capsys.readouterr().err
    )


def test_resume_keeps_the_run_directory_and_the_run_id(tmp_path: Path) -> None:
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    first = _fit(
        tmp_path,
        pl.loggers.CSVLogger(str(tmp_path), name="csv"),
        membership=True,
        enable_checkpointing=True,
        extra=(ckpt,),
    )
    root = _root(first)
    run_id = _run_id(root)
    # a new logger version (version_1), resumed: the run keeps its folder and its id, with no warning
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*another run.*")
        resumed = _fit(
            tmp_path,
            pl.loggers.CSVLogger(str(tmp_path), name="csv"),
            membership=True,
            epochs=3,
            ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"),
        )
    assert Path(resumed.log_dir).name == "version_1"
    assert _root(resumed) == root
    assert _run_id(root) == run_id
    run = RunDirectory(root)
    assert run.written_by("membership") == run_id
    assert np.asarray(run.membership().epochs).tolist() == [0, 1, 2]  # type: ignore[union-attr]
    assert not (Path(resumed.log_dir) / "memcallbacks" / "membership").exists()


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_ranks_agree_on_rank_zeros_run_directory(tmp_path: Path) -> None:
    # each process's logger makes up its own version, as W&B's does on ranks other than 0
    from helpers.run_isolation import PerProcessVersionLogger, RunDirRecorder

    tracker = LossTrajectoryTracker(source="step")
    t = trainer(
        tmp_path,
        max_epochs=1,
        strategy="ddp_spawn",
        devices=2,
        logger=PerProcessVersionLogger(str(tmp_path)),
        callbacks=[tracker, RunDirRecorder(tmp_path / "ranks", tracker)],
    )
    t.fit(TinyClassifier(), *loaders(make_blobs(48), make_blobs(16, seed=1)))
    rank0, rank1 = ((tmp_path / "ranks" / f"rank{r}.txt").read_text().split("\n")[:2] for r in (0, 1))
    assert rank0 == rank1  # one root and one run id on both ranks
    root = Path(rank0[0])
    assert root.parent.parent == tmp_path / "project"
    assert rank0[1] == root.parent.name  # the logger's own run id (rank 0's), the folder's name
    assert _run_id(root) == rank0[1]
    assert [p.name for p in (tmp_path / "project").iterdir()] == [root.parent.name]  # no folder per rank
