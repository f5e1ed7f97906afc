"""examples/lira_digits.py, tiny: 4 shadow runs of a few epochs through the whole pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import lira_digits
import pytest


@pytest.mark.slow
def test_lira_digits_tiny_run_writes_both_modes_and_leaks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = lira_digits.main(["--runs", "4", "--epochs", "8", "--out", str(tmp_path)])
    assert results is not None
    printed = capsys.readouterr().out
    for label in ("loss", "lira-offline", "lira-online", "rmia-offline", "rmia-online"):
        assert label in printed
    online = json.loads((tmp_path / "attack-online" / "attack.json").read_text())
    offline = json.loads((tmp_path / "attack-offline" / "attack.json").read_text())
    assert set(online["attacks"]) == {"loss", "lira-online", "rmia-online"}
    assert set(offline["attacks"]) == {"loss", "lira-offline", "rmia-offline"}
    assert online["settings"]["num_runs"] == 4
    assert online["settings"]["pool_size"] == 1797
    # after 8 epochs the MLP fits its half better than the other: every attack is above chance
    for summary in (online, offline):
        for entry in summary["attacks"].values():
            assert entry["auc"] > 0.52, summary
    assert (tmp_path / "attack-online" / "roc.png").stat().st_size > 1000
    # one run again from its own process-style invocation: same split, refused duplicate is not made
    assert (
        lira_digits.main(
            ["--runs", "4", "--run-index", "0", "--epochs", "1", "--out", str(tmp_path / "solo")]
        )
        is None
    )
    assert (tmp_path / "solo" / "run0" / "memcallbacks" / "shadow" / "scores.npz").is_file()
