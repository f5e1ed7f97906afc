"""Run-directory I/O: atomic writes, no pickle on load."""

import json
import os

import numpy as np
import pytest
import torch

from memcallbacks.utilities import fileio


def test_save_and_load_npz_roundtrip(tmp_path):
    path = fileio.save_npz(tmp_path / "a.npz", x=np.arange(5), y=torch.tensor([1.5, float("nan")]))
    data = fileio.load_npz(path)
    np.testing.assert_array_equal(data["x"], np.arange(5))
    assert data["y"][0] == 1.5
    assert np.isnan(data["y"][1])


def test_no_temporary_file_left_and_replace_is_whole(tmp_path):
    fileio.save_npy(tmp_path / "e.npy", np.zeros(3))
    fileio.save_npy(tmp_path / "e.npy", np.ones(4))
    assert sorted(os.listdir(tmp_path)) == ["e.npy"]
    np.testing.assert_array_equal(fileio.load_npy(tmp_path / "e.npy"), np.ones(4))


def test_failed_write_keeps_old_file(tmp_path):
    fileio.save_json(tmp_path / "m.json", {"a": 1})
    with pytest.raises(TypeError):
        fileio.save_json(tmp_path / "m.json", {"a": object()})
    assert fileio.load_json(tmp_path / "m.json") == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["m.json"]


def test_json_nan_becomes_null(tmp_path):
    fileio.save_json(
        tmp_path / "m.json", {"v": float("nan"), "w": np.float32(2.5), "t": torch.tensor([1, 2])}
    )
    assert json.loads((tmp_path / "m.json").read_text()) == {"v": None, "w": 2.5, "t": [1, 2]}


def test_object_arrays_are_refused_on_save(tmp_path):
    with pytest.raises(TypeError, match="`bad` has dtype object"):
        fileio.save_npz(tmp_path / "a.npz", bad=np.array([{"a": 1}], dtype=object))


def test_pickle_bearing_files_are_refused(tmp_path):
    np.save(tmp_path / "evil.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickled"):
        fileio.load_npy(tmp_path / "evil.npy")
    np.savez(tmp_path / "evil.npz", x=np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickled"):
        fileio.load_npz(tmp_path / "evil.npz")


# -- clear errors for damaged files (issue 13) -----------------------------------------------
def _npy_bytes(array):
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_truncated_npy_names_the_file_and_says_truncated(tmp_path):
    data = _npy_bytes(np.arange(1000.0))
    for name, cut in (("body.npy", 500), ("header.npy", 50)):
        (tmp_path / name).write_bytes(data[:cut])
        for mmap in (False, True):
            with pytest.raises(
                ValueError, match=f"cannot load '.*{name}': the .npy file is truncated or damaged"
            ):
                fileio.load_npy(tmp_path / name, mmap=mmap)
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.npy': the file is empty"):
        fileio.load_npy(tmp_path / "empty.npy")


def test_garbage_npy_is_not_called_a_pickle(tmp_path):
    (tmp_path / "garbage.npy").write_bytes(b"hello, this is not an array" * 4)
    with pytest.raises(ValueError, match="garbage.npy': it is not a .npy file") as info:
        fileio.load_npy(tmp_path / "garbage.npy")
    assert "pickle" not in str(info.value)
    (tmp_path / "garbage.npz").write_bytes(b"hello, this is not an archive" * 4)
    with pytest.raises(ValueError, match="garbage.npz': it is not a .npz file"):
        fileio.load_npz(tmp_path / "garbage.npz")


def test_truncated_npz_names_the_file(tmp_path):
    path = fileio.save_npz(tmp_path / "t.npz", x=np.arange(1000.0))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="t.npz': the .npz file is truncated or damaged"):
        fileio.load_npz(path)


_FULL_DISK = r"""
import resource, signal, sys
import numpy as np
from memcallbacks.utilities import fileio
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the limit makes write() fail with EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
{body}
"""


def _run_with_small_file_limit(body, tmp_path):
    import subprocess
    import sys

    code = _FULL_DISK.replace("{body}", body)
    return subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )


def test_a_failed_write_names_the_file(tmp_path):
    body = """
try:
    fileio.save_npy(sys.argv[1] + "/big.npy", np.zeros(100_000))
except OSError as e:
    print("ERR", e.errno, e.filename, e)
"""
    out = _run_with_small_file_limit(body, tmp_path)
    assert "ERR 27" in out.stdout, out.stderr  # EFBIG, as ENOSPC would be: an OSError from write()
    assert f"{tmp_path}/big.npy" in out.stdout
    assert "File too large; memcallbacks could not write" in out.stdout
    assert not list(tmp_path.glob(".big.npy*"))  # the temporary file is gone


@pytest.mark.parametrize(
    ("max_epochs", "checkpointing", "raised_at"),
    [
        (3, False, "epoch 2"),  # the next evaluation waits for the write
        (2, False, "the end"),  # the end of training flushes
        (3, True, "epoch 1"),  # the epoch's checkpoint waits for its files
    ],
)
def test_a_failed_background_write_raises_by_the_next_evaluation_naming_the_file(
    tmp_path, max_epochs, checkpointing, raised_at
):
    body = f"""
import pytorch_lightning as pl, torch
from torch.utils.data import DataLoader, TensorDataset
from memcallbacks.callbacks._base import MemorisationCallback

class Growing(MemorisationCallback):
    subdir = "growing"
    def on_memorisation_epoch_end(self, trainer, pl_module):
        n = 1_000 if trainer.current_epoch == 0 else 100_000  # epoch 1 writes 800 kB: over the limit
        self.write_in_background(fileio.save_npy, self.run_dir / f"epoch_{{trainer.current_epoch}}.npy", np.zeros(n))

class Model(pl.LightningModule):
    def __init__(self):
        super().__init__(); self.net = torch.nn.Linear(4, 1)
    def training_step(self, batch, i):
        return self.net(batch[0]).pow(2).mean()
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

t = pl.Trainer(max_epochs={max_epochs}, logger=False, enable_checkpointing={checkpointing},
               enable_progress_bar=False, enable_model_summary=False, default_root_dir=sys.argv[1],
               callbacks=[Growing()])
try:
    t.fit(Model(), DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4))
except OSError as e:
    print("ERR at", "the end" if t.current_epoch == t.max_epochs else f"epoch {{t.current_epoch}}", "|", e)
"""
    out = _run_with_small_file_limit(body, tmp_path)
    assert f"ERR at {raised_at} |" in out.stdout, out.stdout + out.stderr
    assert "Growing, epoch 1: File too large; memcallbacks could not write" in out.stdout
    assert "memcallbacks/growing/epoch_1.npy" in out.stdout
