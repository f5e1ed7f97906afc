"""Saved data never unpickles (issue 8, item 7).

Each loader the package has gets a file that carries a pickle whose unpickling would create a
marker file; every loader must refuse it with a clear message and the marker must never appear.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memcallbacks.data.store import TrajectoryStore
from memcallbacks.report import build_report
from memcallbacks.utilities import fileio

SRC = Path(__file__).resolve().parents[2] / "src" / "memcallbacks"


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "unpickled!"))


def _pickled_npy(marker: Path) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([_Payload(marker), 1], dtype=object), allow_pickle=True)
    return buf.getvalue()


def _pickled_npz(path: Path, marker: Path, names: tuple[str, ...]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name in names:
            z.writestr(name + ".npy", _pickled_npy(marker))


REFUSAL = re.compile(r"refusing to load .*pickled", re.S)


def test_io_loaders_refuse_pickles(tmp_path: Path) -> None:
    marker = tmp_path / "owned"
    npy, npz = tmp_path / "a.npy", tmp_path / "a.npz"
    npy.write_bytes(_pickled_npy(marker))
    _pickled_npz(npz, marker, ("x",))
    with pytest.raises(ValueError, match=REFUSAL):
        fileio.load_npy(npy)
    with pytest.raises(ValueError, match=REFUSAL):
        fileio.load_npy(npy, mmap=True)
    with pytest.raises(ValueError, match=REFUSAL):
        fileio.load_npz(npz)
    # writing refuses object arrays too, so the package never produces such files
    with pytest.raises(TypeError, match="dtype object"):
        fileio.save_npy(tmp_path / "b.npy", np.array([object()], dtype=object))
    assert not marker.exists()


def test_trajectory_store_open_refuses_pickled_epoch_files(tmp_path: Path) -> None:
    marker = tmp_path / "owned"
    folder = tmp_path / "trajectory"
    folder.mkdir()
    (folder / "epoch_0000.npy").write_bytes(_pickled_npy(marker))
    with pytest.raises(ValueError, match=REFUSAL):
        TrajectoryStore.open(folder)
    # a good first epoch and a pickled second one: refused when read back
    good = tmp_path / "good"
    store = TrajectoryStore(2, directory=good, memory_budget_bytes=0)
    store.append(np.array([1.0, 2.0]))
    store.append(np.array([1.5, 2.5]))
    (good / "epoch_0001.npy").write_bytes(_pickled_npy(marker))
    with pytest.raises(ValueError, match=REFUSAL):
        TrajectoryStore.open(good, memory_budget_bytes=10**6)
    assert not marker.exists()


def test_report_refuses_pickled_run_directory(tmp_path: Path) -> None:
    marker = tmp_path / "owned"
    run = tmp_path / "run"
    (run / "membership").mkdir(parents=True)
    (run / "trajectory").mkdir()
    (run / "canary").mkdir()
    _pickled_npz(run / "membership" / "losses.npz", marker, ("epochs", "member_losses", "nonmember_losses"))
    _pickled_npz(run / "trajectory" / "statistics.npz", marker, ("mean", "variability", "count"))
    (run / "trajectory" / "epoch_0000.npy").write_bytes(_pickled_npy(marker))
    _pickled_npz(run / "canary" / "exposure.npz", marker, ("epochs", "exposure", "repetitions"))
    paths = build_report(run)
    summary = Path(paths["markdown"]).read_text()
    assert not marker.exists()
    # each broken section says why, the report itself is still written
    assert summary.count("pickled") >= 3, summary
    assert "refusing to load" in summary


def test_source_never_loads_with_pickle_enabled() -> None:
    """Static guard: every np.load passes allow_pickle=False, every torch.load weights_only=True."""
    offenders = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for match in re.finditer(r"\b(np|numpy)\.load\(([^)]*)\)", text):
            if "allow_pickle=False" not in match.group(2):
                offenders.append(f"{path.name}: {match.group(0)}")
        for match in re.finditer(r"\btorch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in match.group(1):
                offenders.append(f"{path.name}: {match.group(0)}")
        if re.search(r"\bpickle\.loads?\(", text):
            offenders.append(f"{path.name}: pickle.load")
    assert offenders == []


def test_best_safe_weights_file_refuses_pickles(tmp_path: Path) -> None:
    """LeakageEarlyStopping reloads stopping_best_safe.pt with weights_only=True: a pickle is refused."""
    import torch

    marker = tmp_path / "owned"
    path = tmp_path / "stopping_best_safe.pt"
    with open(path, "wb") as f:
        pickle.dump({"w": _Payload(marker)}, f)
    torch.save({"w": _Payload(marker)}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(path, map_location="cpu", weights_only=True)
    assert not marker.exists()
    assert os.path.getsize(path) > 0
