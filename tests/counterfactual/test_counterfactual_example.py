"""examples/counterfactual_digits.py, tiny: 4 shadow runs through the whole pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import counterfactual_digits
import numpy as np
import pytest


@pytest.mark.slow
def test_counterfactual_digits_tiny_run_flipped_labels_are_more_memorised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = counterfactual_digits.main(["--runs", "4", "--epochs", "15", "--out", str(tmp_path)])
    assert out is not None
    result, flipped = out
    mem = result.estimate.mem
    assert result.estimate.num_undefined == 0  # balanced split: every sample in 2 of the 4 runs
    flipped_mean, clean_mean = float(np.mean(mem[flipped])), float(np.mean(mem[~flipped]))
    # a flipped label is predicted only by a model that trained on it (Feldman & Zhang 2020)
    assert flipped_mean > clean_mean + 0.1, (flipped_mean, clean_mean)
    printed = capsys.readouterr().out
    assert "mean mem: flipped" in printed
    assert "mean_loss" in printed
    summary = json.loads((tmp_path / "memorisation" / "memorisation.json").read_text())
    assert summary["settings"]["pool_size"] == 1797
    assert len(summary["proxies"]["per_run"]) == 4
    # the mean loss of a run ranks its training samples in the direction of mem
    assert summary["proxies"]["summary"]["mean_loss"]["rho_mean"] > 0
