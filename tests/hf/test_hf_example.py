"""examples/hf_gpt2_canaries.py, a short run: what it wrote to CSV, W&B offline and the run directory."""

from __future__ import annotations

import csv
import importlib.util
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers.wandb_reader import history_rows, wait_for_run_file
from memcallbacks.lm.best_first import rank_best_first
from memcallbacks.lm.hf import as_incremental
from memcallbacks.lm.scoring import score_sequences

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hf_gpt2_canaries.py"


def _load_example(name: str) -> Any:
    """Import examples/hf_gpt2_canaries.py as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example
    spec.loader.exec_module(example)
    return example


@pytest.mark.slow
def test_hf_gpt2_example_short_run(tmp_path: Path) -> None:
    example = _load_example("hf_gpt2_canaries_example")
    out = example.main(
        ["--sentences", "400", "--heldout", "200", "--epochs", "1", "--num-probe", "100", "--references", "500",
         "--exposure-method", "extrapolated", "--repetitions", "1", "64", "--per-count", "1",
         "--out", str(tmp_path), "--quiet"]
    )  # fmt: skip
    assert (tmp_path / "tokenizer.json").exists()

    rows = list(csv.DictReader(out["csv"].open()))
    evaluated = [r for r in rows if r.get("mem/mia/auc")]
    assert len(evaluated) == 1
    row = evaluated[0]
    assert 0.0 <= float(row["mem/mia/auc"]) <= 1.0
    assert 0.0 <= float(row["mem/canary/exposure_max"]) <= math.log2(10**6) + 1e-6
    val_loss = float(row["val_loss"])
    # the default per-sample loss applied the one-token shift: held-out probe losses sit at the
    # validation loss (the unshifted loss scores each token against itself and sits far above)
    assert abs(float(row["mem/gap/nonmember_loss"]) - val_loss) < 0.3
    assert abs(float(row["mem/gap/member_loss"]) - val_loss) < 0.5

    logged = {k for r in history_rows(wait_for_run_file(tmp_path / "wandb")) for k in r}
    assert {"mem/mia/auc", "mem/canary/exposure_max", "train_loss"} <= logged
    assert (out["exposure"].run_dir / "exposure.npz").exists()

    # the secret is six single-digit tokens after the prefix, so the adapter's best-first search
    # applies to the trained model; its score is the batched path's
    canaries = out["exposure"].canaries
    assert canaries.char_token_ids() is not None
    model = out["trainer_module"]
    lm = as_incremental(model)
    assert lm is not None
    assert lm.model is model.model
    canary = max(canaries, key=lambda c: c.repetitions)
    result = rank_best_first(lm, canaries, canary.secret, max_expansions=2_000)
    seq = canaries.prefix_ids + canaries.encode_secret(canary.secret)
    batched = score_sequences(model.model, [seq], len(canaries.prefix_ids))[0]
    assert abs(result.canary_score - batched) < 1e-4
    assert result.lower_bound_rank >= 1
    assert np.isfinite(out["exposure_by_count"][64])


@pytest.mark.slow
def test_hf_gpt2_example_by_steps_stops_mid_epoch(tmp_path: Path) -> None:
    example = _load_example("hf_gpt2_canaries_example_steps")
    out = example.main(
        ["--every-n-steps", "5", "--epochs", "1", "--sentences", "500", "--heldout", "200", "--num-probe", "200",
         "--batch-size", "16", "--repetitions", "4", "128", "--per-count", "1", "--exposure-method", "extrapolated",
         "--references", "2000", "--stop-bits", "15", "--out", str(tmp_path), "--quiet"]
    )  # fmt: skip
    stopping, per_epoch = out["stopping"], out["steps_per_epoch"]
    assert stopping.stopped_epoch == 0
    assert stopping.stopped_step is not None
    assert stopping.stopped_step % 5 == 0
    assert stopping.stopped_step < per_epoch  # within the one epoch
    arrays = out["exposure"].arrays
    steps = np.asarray(arrays["steps"]).tolist()
    assert steps == list(range(5, stopping.stopped_step + 1, 5))
    often = np.asarray(arrays["repetitions"]) == 128
    exposure = np.asarray(arrays["exposure"])[:, often].mean(axis=1)
    assert exposure[-1] > exposure[0] + 2.0  # exposure rises within the epoch
    assert exposure[-1] > 15.0
    rows = list(csv.DictReader(out["csv"].open()))
    assert [int(r["step"]) for r in rows if r.get("mem/mia/auc")] == steps
