"""Every named monitor folder is read back and shown; every summary file carries a format version.

A monitor given ``name="x"`` writes ``<folder>_x/`` for every folder (trajectory, membership,
canary, audit, dp, sequence, shadow). The files here are real: the folders a small Trainer run
wrote (the ``run`` fixture), copied under named folders, read through :class:`RunDirectory` and
drawn by :func:`build_report`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from memcallbacks.report import build_report
from memcallbacks.rundir import (
    AUDIT,
    CANARY,
    DP,
    FORMAT_VERSION,
    MONITOR_FOLDERS,
    SHADOW,
    RunDirectory,
    RunDirectoryError,
    find_run_dir,
    monitor_folder,
    read_shadow_inclusion,
    read_shadow_scores,
    write_dp,
    write_shadow_inclusion,
    write_shadow_scores,
)
from memcallbacks.utilities import fileio


@pytest.fixture
def named_root(run, tmp_path: Path) -> Path:
    """Two named canary folders and one named audit folder, and nothing else."""
    root = tmp_path / "memcallbacks"
    shutil.copytree(run["root"] / CANARY, root / "canary_rare")
    shutil.copytree(run["root"] / CANARY, root / "canary_common")
    shutil.copytree(run["root"] / AUDIT, root / "audit_heldout")
    return root


def test_every_named_folder_is_found_and_read(run, named_root: Path) -> None:
    reader = RunDirectory(named_root)
    assert find_run_dir(named_root.parent) == named_root  # named folders alone mark a run directory
    assert reader.folders(CANARY) == ["canary_common", "canary_rare"]
    assert reader.folders(AUDIT) == ["audit_heldout"]
    assert reader.folders(DP) == []
    assert reader.exposure() is None
    assert reader.audit() is None
    original = RunDirectory(run["root"])
    for sub in ("canary_common", "canary_rare"):
        exp = reader.exposure(sub)
        assert exp is not None
        np.testing.assert_array_equal(exp.exposure, original.exposure().exposure)  # type: ignore[union-attr]
    audit = reader.audit("audit_heldout")
    assert audit is not None
    np.testing.assert_array_equal(audit.epsilon_lb(), original.audit().epsilon_lb())  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="`kind` must be one of"):
        reader.folders("attack")


def test_the_report_shows_a_section_for_each_named_folder(run, named_root: Path) -> None:
    result = build_report(named_root)
    assert result["problems"] == []
    assert {p.name for p in result["figures"]} == {
        "exposure_vs_repetitions_common.png",
        "exposure_vs_repetitions_rare.png",
        "epsilon_audit_heldout.png",
    }
    md = result["markdown"].read_text()
    assert "## Canary exposure (Secret Sharer), `canary_common`" in md
    assert "## Canary exposure (Secret Sharer), `canary_rare`" in md
    assert "## Privacy: the one-run audit, `audit_heldout`" in md
    audit = run["callbacks"]["audit"].history[-1]
    assert md.count(f"one-run audit after epoch {int(audit['epoch'])}: epsilon >=") == 1
    html = result["html"].read_text()
    assert html.count("<h2>Canary exposure (Secret Sharer), `canary_") == 2


def test_a_named_dp_folder_beside_the_default_ones_gets_its_own_section(run, tmp_path: Path) -> None:
    root = tmp_path / "memcallbacks"
    for sub in (AUDIT, DP):
        shutil.copytree(run["root"] / sub, root / sub)
    shutil.copytree(run["root"] / DP, root / "dp_strict")
    result = build_report(root)
    assert result["problems"] == []
    assert {p.name for p in result["figures"]} == {"epsilon.png", "epsilon_dp_strict.png"}
    md = result["markdown"].read_text()
    assert "## Privacy: DP-SGD epsilon and the one-run audit" in md
    assert "## Privacy: DP-SGD epsilon, `dp_strict`" in md


def test_monitor_folder_is_the_one_naming_rule() -> None:
    assert [monitor_folder(kind) for kind in MONITOR_FOLDERS] == list(MONITOR_FOLDERS)
    assert monitor_folder(SHADOW, "run 3") == "shadow_run_3"
    assert monitor_folder(CANARY, "../x") == "canary_.._x"  # no separator: stays inside the run directory


def test_summary_files_carry_the_format_version(run) -> None:
    root = run["root"]
    for name in ("membership/metrics.json", "audit/audit.json", "dp/dp.json", "stopping.json"):
        assert fileio.load_json(root / name)["format"] == FORMAT_VERSION, name
    assert fileio.load_json(root / "trajectory" / "meta.json")["format"] == FORMAT_VERSION


def test_a_file_without_the_field_reads_as_version_1_and_a_newer_one_is_refused(tmp_path: Path) -> None:
    history = [{"epoch": 0, "epsilon": 0.5, "steps": 10}]
    write_dp(tmp_path / DP, {"accountant": "rdp", "delta": 1e-5, "history": history})
    path = tmp_path / DP / "dp.json"
    old = {k: v for k, v in fileio.load_json(path).items() if k != "format"}
    path.write_text(json.dumps(old))
    assert RunDirectory(tmp_path).dp().epsilon.tolist() == [0.5]  # type: ignore[union-attr]
    path.write_text(json.dumps({**old, "format": FORMAT_VERSION + 1}))
    with pytest.raises(RunDirectoryError, match=r"dp\.json.*format version 2, newer than") as info:
        RunDirectory(tmp_path).dp()
    assert "upgrade memcallbacks" in str(info.value)
    path.write_text(json.dumps({**old, "format": "one"}))
    with pytest.raises(RunDirectoryError, match="not a version number"):
        RunDirectory(tmp_path).dp()


def test_shadow_files_carry_the_format_and_a_newer_one_is_refused(tmp_path: Path) -> None:
    class Split:
        inclusion = np.array([True, False, True, False])
        run_index, num_runs, seed, keep_fraction = 0, 2, 0, 0.5

    folder = tmp_path / SHADOW
    write_shadow_inclusion(folder, Split(), "pool")
    write_shadow_scores(folder, np.zeros(4), score_kind="neg_loss", fingerprint="pool")
    assert int(read_shadow_inclusion(folder)["format"]) == FORMAT_VERSION
    assert int(read_shadow_scores(folder)["format"]) == FORMAT_VERSION
    shadow = RunDirectory(tmp_path).shadow()
    assert shadow is not None
    assert shadow.scores is not None
    assert shadow.inclusion["inclusion"].tolist() == [True, False, True, False]
    arrays = dict(read_shadow_scores(folder))
    fileio.save_npz(folder / "scores.npz", **{**arrays, "format": np.int64(FORMAT_VERSION + 1)})
    with pytest.raises(RunDirectoryError, match=r"scores\.npz.*newer than"):
        read_shadow_scores(folder)


def test_monitors_given_a_name_are_read_back_and_shown(tmp_path: Path) -> None:
    """Real monitors given ``name=`` (two canary sets, one audit) write named folders the report shows."""
    import pytorch_lightning as pl

    from memcallbacks import CanaryExposureMonitor, CanarySet, CharTokenizer, PrivacyAuditMonitor
    from memcallbacks.demos.toy import WindowLM, lm_loader, make_payment_corpus

    pl.seed_everything(0, verbose=False)
    tok = CharTokenizer()
    rare = CanarySet("my pin is {secret}.", tok, repetitions=(1, 4), per_count=2, seed=0)
    common = CanarySet("my pin is {secret}.", tok, repetitions=(1, 2), per_count=2, seed=5)
    audit_set = CanarySet("my code is {secret}.", tok, repetitions=(1,), per_count=16, seed=1)
    audit = PrivacyAuditMonitor(audit_set, seed=0, name="heldout", run_dir=tmp_path)
    texts = audit.inject(common.inject(rare.inject(make_payment_corpus(300, seed=0))))
    callbacks = [
        CanaryExposureMonitor(rare, method="extrapolated", num_references=50, name="rare", run_dir=tmp_path),
        CanaryExposureMonitor(
            common, method="extrapolated", num_references=50, name="common", run_dir=tmp_path
        ),
        audit,
    ]
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(WindowLM(tok.vocab_size), lm_loader(texts, tok, batch_size=64))
    reader = RunDirectory(tmp_path)
    assert reader.folders(CANARY) == ["canary_common", "canary_rare"]
    assert reader.folders(AUDIT) == ["audit_heldout"]
    result = build_report(tmp_path)
    assert result["problems"] == []
    assert {p.name for p in result["figures"]} == {
        "exposure_vs_repetitions_common.png",
        "exposure_vs_repetitions_rare.png",
        "epsilon_audit_heldout.png",
    }
    md = result["markdown"].read_text()
    for title in (
        "Canary exposure (Secret Sharer), `canary_rare`",
        "Privacy: the one-run audit, `audit_heldout`",
    ):
        assert f"## {title}" in md
