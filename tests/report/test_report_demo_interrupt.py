"""Ctrl-C in the demo: it says what each monitor kept and how to see it, instead of exiting silently."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.mark.slow
def test_ctrl_c_in_the_demo_says_what_was_kept(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "memcallbacks.cli", "demo", "--out", str(out), "--epochs", "50"]
        + ["--sentences", "200", "--logger", "csv", "--no-report", "--stop-bits", "-1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "WANDB_MODE": "offline"},
        # a child inherits an ignored SIGINT (Lightning ignores it in a process after a Ctrl-C), and
        # Python then never turns it into KeyboardInterrupt: start the demo as a terminal would
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    first = out / "memcallbacks" / "membership" / "metrics.json"
    deadline = time.monotonic() + 600
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the demo ended before its first evaluation"
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    printed, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert re.search(r"memcallbacks demo: interrupted \(Ctrl-C\) in epoch \d+; what was kept:", printed), (
        printed
    )
    run_dir = out / "memcallbacks"
    kept = re.search(r"MembershipInferenceMonitor +evaluations up to epoch (\d+): (\S+)", printed)
    assert kept is not None, printed
    assert Path(kept.group(2)) == run_dir / "membership"
    assert f"the report of what was kept: memcallbacks report {out}" in printed
    assert "checkpoints: " in printed
