"""Run a training script in a subprocess until it freezes at a marked point, then SIGKILL it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def kill_when_frozen(script: Path, *args: str, marker: Path, timeout: float = 120.0) -> str:
    """Run ``python script *args`` until it writes ``marker``, SIGKILL it there, and return the marker's text.

    The script writes ``marker`` when it reaches its freeze point and then waits to be killed.

    Args:
        script: The script to run (with ``PYTHONHASHSEED=0``).
        *args: Its command-line arguments.
        marker: The file the script writes at its freeze point.
        timeout: Seconds to wait for the marker.

    Returns:
        What the script wrote in ``marker`` (where it froze).

    Raises:
        AssertionError: The script ended before freezing (its last stderr is shown), or did not freeze in time.
    """
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        env=dict(os.environ, PYTHONHASHSEED="0"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            if proc.poll() is not None:
                err = proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
                raise AssertionError(f"the script ended before freezing:\n{err}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the script did not reach its freeze point in {timeout:g} s")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
    return marker.read_text()
