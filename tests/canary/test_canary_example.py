"""The Secret Sharer example, short run: exposure grows with the number of insertions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "secret_sharer.py"


@pytest.mark.slow
def test_secret_sharer_example_short_run(tmp_path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("secret_sharer_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    out = module.main(
        ["--epochs", "3", "--sentences", "1500", "--repetitions", "1", "32", "--references", "2000",
         "--out", str(tmp_path), "--quiet"]
    )  # fmt: skip
    means = out["means"]  # [epochs, counts]
    assert out["counts"] == [1, 32]
    assert means.shape == (3, 2)
    assert means[-1, 1] > means[-1, 0] + 8.0  # 32 insertions: many more bits than 1
    assert means[-1, 1] <= np.log2(10**6) + 1e-9  # capped at log2|R|
    assert out["figure"].exists()
    assert out["figure"].stat().st_size > 1000
    assert (out["run_dir"] / "exposure.npz").exists()
    printed = capsys.readouterr().out
    assert "r32" in printed
    assert "epoch" in printed
