"""Every number of the report beside its baseline: the exposure chance level, chance AUC/TPR, held-out rates."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from memcallbacks.report import build_report
from memcallbacks.report.canary import chance_exposure
from memcallbacks.rundir import RunDirectory


@pytest.mark.parametrize("n", [1, 2, 3, 10, 1000, 4096])
def test_chance_exposure_is_the_mean_over_uniform_ranks(n: int) -> None:
    # a secret the model never saw ranks uniformly in 1..|R|: its mean exposure, summed rank by rank
    brute = sum(math.log2(n) - math.log2(r) for r in range(1, n + 1)) / n
    assert chance_exposure(math.log2(n)) == pytest.approx(brute, abs=1e-9)


def test_chance_exposure_tends_to_one_over_ln_2() -> None:
    assert chance_exposure() == pytest.approx(1 / math.log(2))  # unknown space: the limit
    assert chance_exposure(math.log2(10**6)) == pytest.approx(1 / math.log(2), abs=1e-4)


def test_the_exposure_figure_marks_chance_where_the_definition_puts_it(
    run: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from memcallbacks.report import canary as canary_module

    figures: dict[str, Any] = {}
    save = canary_module.save_figure

    def capture(fig: Any, out_dir: Path, name: str) -> str:
        figures[name] = fig
        return save(fig, out_dir, name)

    monkeypatch.setattr(canary_module, "save_figure", capture)
    shutil.copytree(run["root"] / "canary", tmp_path / "memcallbacks" / "canary")
    report = build_report(tmp_path / "memcallbacks")
    ax = figures["exposure_vs_repetitions.png"].axes[0]
    exp = RunDirectory(tmp_path / "memcallbacks").exposure()
    assert exp is not None
    chance = [line for line in ax.lines if line.get_label().startswith("chance")]
    assert len(chance) == 1
    assert chance[0].get_ydata()[0] == pytest.approx(chance_exposure(exp.log2_space_size))
    assert chance[0].get_ydata()[0] == pytest.approx(1.44, abs=0.01)  # never 0 bits
    md = report["markdown"].read_text()
    assert f"chance (a secret never trained on) {chance_exposure(exp.log2_space_size):.2f} bits" in md


def test_membership_and_sequence_lines_carry_their_baselines(run: dict[str, Any]) -> None:
    md = build_report(run["root"], out=run["root"].parent / "baselines")["markdown"].read_text()
    assert "(chance 0.500)" in md  # AUC
    assert "TPR@1%FPR" in md and "(chance 0.010)" in md  # noqa: PT018
    assert "vs held out" in md  # (n, p) rates of members beside the held-out probes'
