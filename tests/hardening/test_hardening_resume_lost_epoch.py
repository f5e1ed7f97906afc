"""A step checkpoint on an epoch's last batch, then a kill during the epoch-end evaluation (issue 27, item 5).

``ModelCheckpoint(every_n_train_steps=n)`` with ``n`` the epoch's length saves after the last batch
of every epoch, before the monitors evaluate it. A process killed during that evaluation resumes
at the next epoch, and Lightning does not run the lost ``on_train_epoch_end`` again. Every monitor
must then evaluate that epoch on resume (as that epoch, at the checkpoint's step), and
LeakageEarlyStopping must decide on it, so that the resumed run equals an uninterrupted one:
the same history (epochs 0, 1, 2), the same run-directory files and the same stop.

The run is a real process (``tests/_hard_scripts/crash_epoch_end.py``) killed with SIGKILL.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import pytorch_lightning as pl

from helpers import every_monitor as H
from helpers.frozen_process import kill_when_frozen

SCRIPT = Path(__file__).resolve().parents[1] / "_hard_scripts" / "crash_epoch_end.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("crash_epoch_end", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fit(tmp: Path, ckpt: str | None = None, ckpt_dir: str = "ck") -> list[Any]:
    script = _script()
    data = H.Data()
    pl.seed_everything(0)
    loader = data.train_loader()
    callbacks = H.build_callbacks(tmp / "run", data)
    trainer = script.lost_epoch_trainer(tmp / "run", callbacks, tmp / ckpt_dir, len(loader))
    trainer.fit(script.StepAccountantModel(), loader, ckpt_path=ckpt)
    return callbacks


def _numbers(tree: dict[str, Any]) -> dict[str, Any]:
    """The run directory without what names the run that wrote it (two runs here: the crashed one resumed)."""
    return {
        name: {k: v for k, v in content.items() if k != "run_id"} if isinstance(content, dict) else content
        for name, content in tree.items()
        if name != "run.json"
    }


def _kill_at_epoch_end(tmp: Path) -> str:
    return kill_when_frozen(
        SCRIPT, str(tmp / "run"), str(tmp / "ck"), str(tmp / "frozen"), marker=tmp / "frozen"
    )


@pytest.mark.slow
def test_an_epoch_whose_evaluation_a_kill_lost_is_evaluated_on_resume(tmp_path: Path) -> None:
    expected_callbacks = _fit(tmp_path / "uninterrupted")
    expected, expected_tree = H.snapshot(expected_callbacks), H.load_tree(tmp_path / "uninterrupted" / "run")
    stopper = expected_callbacks[-1]
    assert stopper.stopped_epoch == 2  # patience 3 on a key crossed at every evaluation: epochs 0, 1, 2

    crashed = tmp_path / "crashed"
    crashed.mkdir()
    steps = len(H.Data().train_loader())
    assert _kill_at_epoch_end(crashed) == f"epoch 1 step {2 * steps}"
    checkpoint = crashed / "ck" / f"epoch=1-step={2 * steps}.ckpt"
    assert checkpoint.exists(), sorted(p.name for p in (crashed / "ck").iterdir())

    callbacks = _fit(crashed, str(checkpoint), ckpt_dir="ck2")
    for cb in callbacks[:-1]:  # every monitor evaluated epoch 1, at the checkpoint's step
        assert [(row["epoch"], row["step"]) for row in cb.history] == [
            (e, (e + 1) * steps) for e in range(3)
        ], cb
    assert callbacks[-1].stopped_epoch == 2, callbacks[-1].reason  # not one epoch late
    assert callbacks[-1].gaps == []
    assert H.differences(H.snapshot(callbacks), expected) == []
    final = _numbers(H.load_tree(crashed / "run"))
    assert sorted(final) == sorted(_numbers(expected_tree))
    assert H.differences(final, _numbers(expected_tree)) == []
