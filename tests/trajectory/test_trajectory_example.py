"""The label-noise example end to end, shortened: flipped labels are ranked as most memorised."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "label_noise_digits.py"


def _load():
    spec = importlib.util.spec_from_file_location("label_noise_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_auroc_matches_sklearn() -> None:
    from sklearn.metrics import roc_auc_score

    example = _load()
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=200), 1)  # ties
    labels = rng.random(200) < 0.3
    assert example.auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))


@pytest.mark.slow
def test_label_noise_example_short_run(tmp_path: Path) -> None:
    example = _load()
    auroc = example.main(["--epochs", "6", "--out", str(tmp_path)])
    assert auroc > 0.9  # chance is 0.5; 30 epochs give 0.999
    assert (tmp_path / "data_map.png").stat().st_size > 10_000
    assert len(list(tmp_path.rglob("trajectory/epoch_*.npy"))) == 6
