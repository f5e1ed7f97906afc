"""`memcallbacks memorisation` over real Lightning shadow runs: outputs, proxies, mapping, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from counterfactual_runs import make_lm_pool, make_pool, train_lm_run, train_run
from scipy import stats
from torch.utils.data import TensorDataset

from memcallbacks.cli import main
from memcallbacks.metrics import counterfactual_memorisation
from memcallbacks.offline.counterfactual import MemorisationInputError, run_memorisation, trajectory_pool_ids
from memcallbacks.utilities import fileio

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("shadow")
    pool = make_pool()
    out = {"balanced": [train_run(pool, root / "balanced", i) for i in range(4)]}
    out["pool_indexed"] = [train_run(pool, root / "pool_indexed", 0, pool_indexed=True)]
    out["independent"] = [
        train_run(pool, root / "independent", i, num_runs=None, trajectory=False) for i in range(2)
    ]
    out["other_pool"] = [train_run(make_pool(seed=1), root / "other", 1, trajectory=False)]
    x, y = pool.tensors
    relabelled = TensorDataset(x, (y + 1) % 3)
    out["relabelled"] = [train_run(relabelled, root / "relabelled", 1, trajectory=False)]
    out["short"] = [train_run(pool, root / "short", 1, epochs=1, trajectory=False)]
    return out


def _recorded(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    shadow = run_dir / "memcallbacks" / "shadow"
    with np.load(shadow / "scores.npz") as s, np.load(shadow / "inclusion.npz") as i:
        return s["correct"].astype(float), i["inclusion"].astype(bool)


def _cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    try:
        code = main(["memorisation", *map(str, argv)])
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_writes_the_estimator_of_the_recorded_files(
    runs: dict[str, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _cli(capsys, *runs["balanced"], "--out", tmp_path / "m")
    assert code == 0, err
    correct, included = zip(*(_recorded(d) for d in runs["balanced"]), strict=True)
    expected = counterfactual_memorisation(np.stack(correct), np.stack(included))
    with np.load(tmp_path / "m" / "memorisation.npz") as saved:
        np.testing.assert_array_equal(saved["mem"], expected.mem)
        np.testing.assert_array_equal(saved["se"], expected.se)
        assert (saved["n_in"] == 2).all()
        assert (saved["n_out"] == 2).all()
    summary = json.loads((tmp_path / "m" / "memorisation.json").read_text())
    assert summary["settings"]["signal"] == "correct"
    assert summary["settings"]["num_runs"] == 4
    assert summary["summary"]["num_undefined"] == 0
    top = summary["most_memorised"]
    assert top[0]["mem"] == pytest.approx(np.nanmax(expected.mem))
    assert [r["mem"] for r in top] == sorted((r["mem"] for r in top), reverse=True)
    assert all("label" not in r for r in top)  # no per-sample labels without --log-per-sample
    assert set(summary["proxies"]["per_run"]) == {
        str(d / "memcallbacks" / "shadow") for d in runs["balanced"]
    }
    assert (tmp_path / "m" / "mem_histogram.png").stat().st_size > 1000
    assert "## Counterfactual memorisation" in (tmp_path / "m" / "memorisation.md").read_text()
    assert "most memorised pool samples" in out
    assert "mean_loss" in out
    assert "learned_epoch" in out


def _hand_rho(run_dir: Path, others: list[Path], pool_ids_of_rows: np.ndarray | None = None) -> float:
    """Spearman of the run's mean loss with mem estimated from the other runs only."""
    correct, included = zip(*(_recorded(d) for d in others), strict=True)
    loo = counterfactual_memorisation(np.stack(correct), np.stack(included)).mem
    _, own_inclusion = _recorded(run_dir)
    with np.load(run_dir / "memcallbacks" / "trajectory" / "statistics.npz") as st:
        ids, mean, count = st["sample_ids"], st["mean"], st["count"]
    pool = np.flatnonzero(own_inclusion)[ids] if pool_ids_of_rows is None else pool_ids_of_rows
    keep = (count > 0) & np.isfinite(loo[pool])
    return float(stats.spearmanr(mean[keep], loo[pool][keep]).statistic)


def test_proxy_rho_uses_leave_one_out_mem_and_training_set_positions(runs: dict[str, list[Path]]) -> None:
    dirs = runs["balanced"]
    result = run_memorisation(dirs)
    for k in (0, 2):
        got = result.proxies[str(dirs[k] / "memcallbacks" / "shadow")]["mean_loss"]
        assert got.rho == pytest.approx(_hand_rho(dirs[k], [d for j, d in enumerate(dirs) if j != k]))
        assert got.n == int(_recorded(dirs[k])[1].sum())  # every training sample of the run
    assert result.expected["mean_loss"] == "+"
    assert result.expected["min_loss"] == "-"


def test_trajectory_ids_that_are_pool_positions_are_mapped_as_such(runs: dict[str, list[Path]]) -> None:
    dirs = [runs["pool_indexed"][0], *runs["balanced"][1:]]
    result = run_memorisation(dirs)
    with np.load(dirs[0] / "memcallbacks" / "trajectory" / "statistics.npz") as st:
        n_train = int(_recorded(dirs[0])[1].sum())
        assert st["count"].size == 48
        assert (st["count"] > 0).sum() == n_train
        ids = st["sample_ids"]
    got = result.proxies[str(dirs[0] / "memcallbacks" / "shadow")]["mean_loss"]
    assert got.rho == pytest.approx(_hand_rho(dirs[0], dirs[1:], pool_ids_of_rows=ids))
    assert got.n == n_train


def test_trajectory_pool_ids_rules() -> None:
    inclusion = np.array([0, 1, 1, 0, 1, 0], dtype=bool)
    # training-set positions: row j -> j-th included pool sample
    assert trajectory_pool_ids(np.arange(3), np.ones(3, bool), inclusion, where="r").tolist() == [1, 2, 4]
    # pool positions: one row per pool sample, only included ones visited
    visited = inclusion.copy()
    assert trajectory_pool_ids(np.arange(6), visited, inclusion, where="r").tolist() == list(range(6))
    with pytest.raises(MemorisationInputError, match="'runX'.*neither pool positions"):
        trajectory_pool_ids(np.arange(6), np.ones(6, bool), inclusion, where="runX")


def test_samples_never_in_or_never_out_are_nan_and_counted(
    runs: dict[str, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _cli(capsys, *runs["independent"], "--out", tmp_path)
    assert code == 0, err
    with np.load(tmp_path / "memorisation.npz") as saved:
        mem, n_in = saved["mem"], saved["n_in"]
    undefined = np.isnan(mem)
    assert undefined.any()
    assert np.array_equal(undefined, (n_in == 0) | (n_in == 2))
    summary = json.loads((tmp_path / "memorisation.json").read_text())["summary"]
    assert summary["num_undefined"] == int(undefined.sum())
    assert summary["num_never_in"] == int((n_in == 0).sum())
    assert summary["num_never_out"] == int((n_in == 2).sum())
    assert f"undefined (NaN) for {int(undefined.sum())} samples" in out
    assert "no run directory holds a LossTrajectoryTracker folder" in out


def _expect_exit_2(capsys: pytest.CaptureFixture[str], *argv: object) -> str:
    code, _, err = _cli(capsys, *argv)
    assert code == 2, err
    assert "Traceback" not in err
    return err


def test_bad_input_exits_2_naming_the_run_directory(
    runs: dict[str, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    balanced = runs["balanced"]
    err = _expect_exit_2(capsys, balanced[0], "--out", tmp_path)
    assert "at least 2 shadow runs" in err
    assert str(balanced[0]) in err
    err = _expect_exit_2(capsys, balanced[0], runs["other_pool"][0], "--out", tmp_path)
    assert "another pool" in err
    assert str(runs["other_pool"][0]) in err
    # the same features with other labels: the fingerprint hashes items with their labels
    err = _expect_exit_2(capsys, balanced[0], runs["relabelled"][0], "--out", tmp_path)
    assert "another pool" in err
    assert str(runs["relabelled"][0]) in err
    err = _expect_exit_2(capsys, balanced[0], balanced[0], "--out", tmp_path)
    assert "same run directory" in err
    err = _expect_exit_2(capsys, *balanced[:2], "--signal", "token_accuracy", "--out", tmp_path)
    assert "per-token accuracy" in err
    assert str(balanced[0]) in err
    broken = tmp_path / "broken"
    shutil.copytree(balanced[1], broken)
    (broken / "memcallbacks" / "shadow" / "scores.npz").unlink()
    err = _expect_exit_2(capsys, balanced[0], broken, "--out", tmp_path)
    assert "no scores.npz" in err
    assert str(broken) in err
    assert not (tmp_path / "memorisation.json").exists()


def _with_labels(src: Path, dst: Path, labels: np.ndarray) -> Path:
    shutil.copytree(src, dst)
    path = dst / "memcallbacks" / "shadow" / "scores.npz"
    fileio.save_npz(path, **fileio.load_npz(path), labels=labels)
    return dst


def test_recorded_labels_must_agree_and_show_only_with_log_per_sample(
    runs: dict[str, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = make_pool().tensors[1].numpy()
    a = _with_labels(runs["balanced"][0], tmp_path / "a", labels)
    b = _with_labels(runs["balanced"][1], tmp_path / "b", labels)
    c = _with_labels(runs["balanced"][2], tmp_path / "c", (labels + 1) % 3)
    err = _expect_exit_2(capsys, a, b, c, "--out", tmp_path / "x")
    assert "other labels" in err
    assert str(c) in err
    code, out, _ = _cli(capsys, a, b, "--out", tmp_path / "plain")
    assert code == 0
    assert "label" not in out.split("most memorised")[1].splitlines()[1]
    plain = json.loads((tmp_path / "plain" / "memorisation.json").read_text())
    assert all("label" not in r for r in plain["most_memorised"])
    code, out, _ = _cli(capsys, a, b, "--log-per-sample", "--out", tmp_path / "opt")
    assert code == 0
    rows = json.loads((tmp_path / "opt" / "memorisation.json").read_text())["most_memorised"]
    assert rows
    assert all(r["label"] == int(labels[r["pool_id"]]) for r in rows)


def test_score_signal_uses_the_recorded_logit_confidence(runs: dict[str, list[Path]]) -> None:
    dirs = runs["balanced"]
    result = run_memorisation(dirs, signal="score")
    scores, included = [], []
    for d in dirs:
        with np.load(d / "memcallbacks" / "shadow" / "scores.npz") as s:
            scores.append(s["scores"].astype(np.float64))
        included.append(_recorded(d)[1])
    np.testing.assert_allclose(
        result.estimate.mem, counterfactual_memorisation(np.stack(scores), np.stack(included)).mem
    )
    assert result.signal == "score"
    assert torch.is_tensor(torch.as_tensor(result.estimate.mem))


def test_language_model_runs_use_minus_the_loss(tmp_path: Path) -> None:
    pool = make_lm_pool()
    dirs = [train_lm_run(pool, tmp_path, i) for i in range(2)]
    result = run_memorisation(dirs)
    scores, included = [], []
    for d in dirs:
        with np.load(d / "memcallbacks" / "shadow" / "scores.npz") as s:
            assert str(s["score_kind"]) == "neg_loss"
            scores.append(s["scores"].astype(np.float64))
        included.append(_recorded(d)[1])
    assert result.signal == "score"  # no per-token accuracy recorded: minus the loss (Zhang et al. 2023)
    expected = counterfactual_memorisation(np.stack(scores), np.stack(included))
    np.testing.assert_allclose(result.estimate.mem, expected.mem)
    assert result.estimate.num_undefined == 0  # balanced over 2 runs: each sample in exactly one
    assert result.expected["min_loss"] == "+"


def test_runs_of_different_lengths_are_computed_with_a_warning(
    runs: dict[str, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _cli(capsys, runs["balanced"][0], runs["short"][0], "--out", tmp_path)
    assert code == 0
    assert "warning: the shadow runs trained for different numbers of epochs ([1, 3])" in err
    with pytest.warns(UserWarning, match="different numbers of epochs"):
        run_memorisation([runs["balanced"][0], runs["short"][0]])
