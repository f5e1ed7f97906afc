"""The run-directory schema: readers against the files a real small Trainer run wrote.

Every value read back is checked against what the callbacks logged to the CSV logger (an
independent channel), and every broken file is named by the reader.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from memcallbacks.rundir import (
    RunDirectory,
    RunDirectoryError,
    find_run_dir,
    mean_by_repetition,
    write_audit_epoch,
    write_audit_inclusion,
    write_audit_summary,
    write_dp,
    write_exposure,
    write_membership,
    write_stopping,
    write_trajectory_summary,
)
from memcallbacks.utilities import fileio


def logged(run: dict[str, Any], key: str) -> dict[int, float]:
    """``{epoch: value}`` of a key as the CSV logger recorded it."""
    return {int(r["epoch"]): r[key] for r in run["csv"] if key in r}


def test_run_dir_is_found_from_the_log_folder(run):
    assert run["root"] == run["callbacks"]["exposure"].run_dir.parent
    assert find_run_dir(run["root"]) == run["root"]


def test_membership_reader_returns_the_logged_values(run):
    mem = RunDirectory(run["root"]).membership()
    assert mem is not None
    assert mem.epochs.tolist() == [0, 1, 2]
    for key in ("mem/mia/auc", "mem/gap/loss", "mem/mia/tpr@1%fpr"):
        assert mem.metric(key).tolist() == pytest.approx(list(logged(run, key).values()), rel=1e-6), key
    assert mem.member_losses.shape == (3, 100)
    assert mem.nonmember_losses.shape == (3, 100)
    # the stored losses are the ones behind the logged AUC (independent computation: sklearn)
    from sklearn.metrics import roc_auc_score

    m, n = mem.member_losses[-1], mem.nonmember_losses[-1]
    auc = roc_auc_score(np.r_[np.ones(m.size), np.zeros(n.size)], -np.r_[m, n])
    assert mem.metric("mem/mia/auc")[-1] == pytest.approx(auc, abs=1e-9)
    assert mem.fprs == (0.001, 0.01, 0.1)


def test_exposure_reader_and_mean_by_repetition_match_the_logged_keys(run):
    exp = RunDirectory(run["root"]).exposure()
    assert exp is not None
    assert exp.epochs.tolist() == [0, 1, 2]
    assert exp.exposure.shape == (3, 4)
    assert sorted(exp.repetitions.tolist()) == [1, 1, 4, 4]
    for row, epoch in enumerate(exp.epochs.tolist()):
        for r, value in exp.mean_by_repetition(row).items():
            assert value == pytest.approx(logged(run, f"mem/canary/exposure_mean/r{r}")[epoch], rel=1e-6)
    np.testing.assert_array_equal(exp.exposure, run["callbacks"]["exposure"].arrays["exposure"])
    assert exp.secrets is None  # log_secrets=False: no secrets.json
    assert exp.method == "extrapolated"
    assert exp.log2_space_size == pytest.approx(math.log2(10**6))


def test_trajectory_audit_dp_and_stopping_readers(run):
    rd = RunDirectory(run["root"])
    traj = rd.trajectory()
    assert traj is not None
    assert traj.epochs.tolist() == [0, 1, 2]
    assert traj.meta["num_epochs"] == 3
    assert traj.seen.sum() > 0.8 * traj.seen.size
    assert np.nanmean(traj.epoch_losses(2)) == pytest.approx(logged(run, "mem/traj/loss_mean")[2], rel=1e-3)

    audit = rd.audit()
    assert audit is not None
    assert [h["epoch"] for h in audit.history] == [0, 1, 2]
    assert audit.epsilon_lb().tolist() == pytest.approx(list(logged(run, "mem/audit/epsilon_lb").values()))
    assert audit.confidence == pytest.approx(0.95)
    assert audit.inclusion()["included"].shape == (16,)
    assert audit.evaluation(2)["scores"].shape == (16,)

    dp = rd.dp()
    assert dp is not None
    assert dp.summary["delta"] == 1e-5
    assert dp.epsilon.tolist() == pytest.approx(list(logged(run, "mem/dp/epsilon").values()), rel=1e-6)
    assert np.all(np.diff(dp.epsilon) > 0)

    stop = rd.stopping()
    assert stop is not None
    assert stop.stopped
    assert stop.info["stopped_epoch"] == 2
    assert run["callbacks"]["stopping"].stopped_epoch == 2


def test_sequence_reader_returns_the_logged_values(run):
    seq = RunDirectory(run["root"]).sequence()
    assert seq is not None
    assert seq.arrays["epochs"].tolist() == [0, 1, 2]
    assert seq.summary["n_tries"] == [1, 10, 100]
    assert seq.summary["prefix_len"] == 8
    keys = ["mem/extract/exact_rate", "mem/extract/exact_rate_nonmember", "mem/extract/prob_rate/n100"]
    keys += [f"mem/mia_lm/auc/{score}" for score in ("loss", "min_k", "zlib")]
    for key in keys:
        assert seq.metric(key).tolist() == pytest.approx(list(logged(run, key).values()), rel=1e-6), key
    # the stored per-probe flags are the ones behind the logged rate
    exact = seq.arrays["member_exact"][-1]
    assert np.nanmean(exact) == pytest.approx(logged(run, "mem/extract/exact_rate")[2], abs=1e-9)


@pytest.mark.parametrize("by", ["mean_loss", "min_loss", "low_loss", "loss_drop"])
def test_trajectory_score_is_the_trackers_own(run, by):
    """``TrajectoryFiles.score`` from ``statistics.npz`` equals the tracker's in-memory score."""
    from memcallbacks.metrics import memorisation_score

    traj = RunDirectory(run["root"]).trajectory()
    assert traj is not None
    assert traj.score_by == "min_loss"
    expected = memorisation_score(run["callbacks"]["trajectory"].statistics(), by=by)
    got = traj.score(by)
    seen = traj.seen
    np.testing.assert_allclose(got[seen], expected[seen], rtol=1e-12)
    assert np.isnan(got[~seen]).all()
    np.testing.assert_array_equal(traj.score(), traj.score("min_loss"))


def test_trajectory_score_defaults_to_mean_loss_and_names_an_unknown_one(run, tmp_path):
    traj = RunDirectory(run["root"]).trajectory()
    assert traj is not None
    meta = {k: v for k, v in traj.meta.items() if k != "score_by"}  # written before `score=` existed
    write_trajectory_summary(tmp_path / "trajectory", traj.statistics, meta)
    old = RunDirectory(tmp_path).trajectory()
    assert old is not None
    assert old.score_by == "mean_loss"
    np.testing.assert_array_equal(old.score()[old.seen], traj.statistics["mean"][old.seen])
    write_trajectory_summary(tmp_path / "trajectory", traj.statistics, {**meta, "score_by": "auc"})
    with pytest.raises(RunDirectoryError, match=r"meta.json.*unknown score 'auc'"):
        RunDirectory(tmp_path).trajectory().score()  # type: ignore[union-attr]


def test_writers_reproduce_the_files_they_are_given(run, tmp_path):
    """Each writer takes what its callback builds; rewriting what was read gives the same reading."""
    src, dst = RunDirectory(run["root"]), tmp_path / "copy"
    traj, mem, exp, audit, dp, stop = (
        src.trajectory(),
        src.membership(),
        src.exposure(),
        src.audit(),
        src.dp(),
        src.stopping(),
    )
    assert traj
    assert mem
    assert exp
    assert audit
    assert dp
    assert stop
    write_trajectory_summary(dst / "trajectory", traj.statistics, traj.meta)
    write_membership(dst / "membership", mem.arrays, mem.summary)
    write_exposure(dst / "canary", exp.arrays, secrets={"c00_r1": "123456"})
    inclusion = audit.inclusion()
    write_audit_inclusion(dst / "audit", inclusion["included"], int(inclusion["seed"]))
    write_audit_epoch(dst / "audit", 2, **audit.evaluation(2))
    write_audit_summary(dst / "audit", audit.summary)
    write_dp(dst / "dp", dp.summary)
    write_stopping(dst, stop.info)
    for name in (
        "trajectory/statistics.npz",
        "membership/losses.npz",
        "canary/exposure.npz",
        "audit/epoch_0002.npz",
    ):
        a, b = fileio.load_npz(run["root"] / name), fileio.load_npz(dst / name)
        assert a.keys() == b.keys(), name
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    for name in (
        "membership/metrics.json",
        "audit/audit.json",
        "dp/dp.json",
        "stopping.json",
        "trajectory/meta.json",
    ):
        assert fileio.load_json(run["root"] / name) == fileio.load_json(dst / name), name
    assert RunDirectory(dst).exposure().secrets == {"c00_r1": "123456"}  # type: ignore[union-attr]


def test_mean_by_repetition_by_hand():
    assert mean_by_repetition([1.0, 3.0, 10.0, 20.0], [2, 2, 8, 8]) == {2: 2.0, 8: 15.0}
    nan = mean_by_repetition([1.0, float("nan")], [4, 4])[4]
    assert math.isnan(nan)  # a non-finite exposure never averages into a safe-looking number


@pytest.mark.parametrize(
    ("name", "content", "reader", "says"),
    [
        ("canary/exposure.npz", b"PK\x03\x04 cut short", "exposure", "not a readable .npz"),
        ("membership/metrics.json", b'{"history": [', "membership", "not readable JSON"),
        ("audit/audit.json", b"[1, 2]", "audit", "JSON list, not an object"),
        ("dp/dp.json", b'{"delta": 1e-5, "history": [{"eps": 1}]}', "dp", "`history` must be a list"),
        ("stopping.json", b"\xff\xfe", "stopping", "not readable JSON"),
    ],
)
def test_a_broken_file_is_named(run, tmp_path, name, content, reader, says):
    import shutil

    root = tmp_path / "memcallbacks"
    shutil.copytree(run["root"], root)
    (root / name).write_bytes(content)
    with pytest.raises(RunDirectoryError, match=says) as info:
        getattr(RunDirectory(root), reader)()
    assert info.value.path == root / name
    assert str(root / name) in str(info.value)


def test_an_array_missing_from_a_file_is_named(run, tmp_path):
    root = tmp_path / "memcallbacks"
    arrays = fileio.load_npz(run["root"] / "canary" / "exposure.npz")
    del arrays["exposure"]
    write_exposure(root / "canary", arrays)
    with pytest.raises(RunDirectoryError, match=r"exposure.npz.*lacks the array\(s\) \['exposure'\]"):
        RunDirectory(root).exposure()
