"""Crash safety: SIGKILL mid-epoch and mid-write, then resume from the last checkpoint (issue 8, item 2).

A training run with every callback is started in a subprocess (``tests/_hard_scripts/crash_train.py``)
and frozen at a chosen point: in the middle of epoch 2, or inside the atomic write of an
epoch-2 file of the run directory (after the temporary file is flushed, before its rename;
the other monitors' epoch-2 files are then already written, the epoch-2 checkpoint is not).
The test kills it with SIGKILL, checks the run directory as the crash left it, resumes from
the last checkpoint in a new Trainer and compares with an uninterrupted run.

It stays in tests/hardening: it kills and resumes a run carrying every callback at once (one
Trainer, one run directory), which no single area folder owns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl

from helpers import every_monitor as H
from helpers.frozen_process import kill_when_frozen

SCRIPT = Path(__file__).resolve().parents[1] / "_hard_scripts" / "crash_train.py"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("uninterrupted")
    data = H.Data()
    pl.seed_everything(0)
    callbacks = H.build_callbacks(tmp / "run", data)
    H.crash_trainer(tmp / "run", callbacks, tmp / "ck").fit(
        H.HardModel(), data.train_loader(), data.val_loader()
    )
    return H.snapshot(callbacks), H.load_tree(tmp / "run")


def _run_until_frozen(tmp: Path, mode: str) -> str:
    marker = tmp / "frozen"
    return kill_when_frozen(SCRIPT, str(tmp / "run"), str(tmp / "ck"), str(marker), mode, marker=marker)


def _prefix_equal(after_crash: dict[str, Any], expected: dict[str, Any], kept: int) -> None:
    """Everything of epochs < ``kept`` in the crashed run directory equals the uninterrupted run's."""
    for j in range(kept):
        for name in (
            f"trajectory/epoch_{j:04d}.npy",
            f"trajectory/correct_{j:04d}.npy",
            f"audit/epoch_{j:04d}.npz",
        ):
            assert H.same(after_crash[name], expected[name]), name
    losses = after_crash["membership/losses.npz"]
    assert list(losses["epochs"][:kept]) == list(range(kept))
    for key in ("member_losses", "nonmember_losses"):
        assert H.same(losses[key][:kept], expected["membership/losses.npz"][key][:kept]), key
    exposure = after_crash["canary/exposure.npz"]
    for key in ("exposure", "rank", "log_perplexity"):
        assert H.same(exposure[key][:kept], expected["canary/exposure.npz"][key][:kept]), key
    assert after_crash["dp/dp.json"]["history"][:kept] == expected["dp/dp.json"]["history"][:kept]
    assert after_crash["audit/audit.json"]["history"][:kept] == expected["audit/audit.json"]["history"][:kept]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["batch", "write"])
def test_sigkill_then_resume_loses_nothing(
    tmp_path: Path, mode: str, uninterrupted: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    expected_snapshot, expected_tree = uninterrupted
    frozen_in = _run_until_frozen(tmp_path, mode)
    run = tmp_path / "run"

    # every file under a final name loads (hidden temporary files are the only leftovers)
    after_crash = H.load_tree(run)
    hidden = [p for p in run.rglob(".*") if p.is_file()]
    if mode == "write":
        assert Path(frozen_in).name.startswith(".epoch_0002.npz.")
        assert Path(frozen_in).parent.name == "audit"
        assert any(p.name == Path(frozen_in).name for p in hidden)  # the partial write stayed hidden
        assert "audit/epoch_0002.npz" not in after_crash
        assert after_crash["trajectory/meta.json"]["epochs"] == [0, 1, 2]  # written after the checkpoint
    else:
        assert "trajectory/epoch_0002.npy" not in after_crash
    assert all(p.name.endswith(".tmp") for p in hidden), hidden
    _prefix_equal(after_crash, expected_tree, kept=2)

    checkpoints = sorted((tmp_path / "ck").glob("*.ckpt"))
    assert [p.name for p in checkpoints] == ["epoch=0.ckpt", "epoch=1.ckpt"]

    data = H.Data()
    pl.seed_everything(0)
    callbacks = H.build_callbacks(run, data)
    H.crash_trainer(run, callbacks, tmp_path / "ck2").fit(
        H.HardModel(), data.train_loader(), data.val_loader(), ckpt_path=str(checkpoints[-1])
    )
    assert H.differences(H.snapshot(callbacks), expected_snapshot) == []
    final = H.without_run_ids(H.load_tree(run))  # the uninterrupted fit was another run
    expected_tree = H.without_run_ids(expected_tree)
    assert sorted(final) == sorted(expected_tree)
    assert H.differences(final, expected_tree) == []
