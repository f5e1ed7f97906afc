"""Run-directory I/O: atomic writes, no pickle on load."""

import json
import os

import numpy as np
import pytest
import torch

from memcallbacks import _io


def test_save_and_load_npz_roundtrip(tmp_path):
    path = _io.save_npz(tmp_path / "a.npz", x=np.arange(5), y=torch.tensor([1.5, float("nan")]))
    data = _io.load_npz(path)
    np.testing.assert_array_equal(data["x"], np.arange(5))
    assert data["y"][0] == 1.5 and np.isnan(data["y"][1])


def test_no_temporary_file_left_and_replace_is_whole(tmp_path):
    _io.save_npy(tmp_path / "e.npy", np.zeros(3))
    _io.save_npy(tmp_path / "e.npy", np.ones(4))
    assert sorted(os.listdir(tmp_path)) == ["e.npy"]
    np.testing.assert_array_equal(_io.load_npy(tmp_path / "e.npy"), np.ones(4))


def test_failed_write_keeps_old_file(tmp_path):
    _io.save_json(tmp_path / "m.json", {"a": 1})
    with pytest.raises(TypeError):
        _io.save_json(tmp_path / "m.json", {"a": object()})
    assert _io.load_json(tmp_path / "m.json") == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["m.json"]


def test_json_nan_becomes_null(tmp_path):
    _io.save_json(tmp_path / "m.json", {"v": float("nan"), "w": np.float32(2.5), "t": torch.tensor([1, 2])})
    assert json.loads((tmp_path / "m.json").read_text()) == {"v": None, "w": 2.5, "t": [1, 2]}


def test_object_arrays_are_refused_on_save(tmp_path):
    with pytest.raises(TypeError, match="`bad` has dtype object"):
        _io.save_npz(tmp_path / "a.npz", bad=np.array([{"a": 1}], dtype=object))


def test_pickle_bearing_files_are_refused(tmp_path):
    np.save(tmp_path / "evil.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickled"):
        _io.load_npy(tmp_path / "evil.npy")
    np.savez(tmp_path / "evil.npz", x=np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickled"):
        _io.load_npz(tmp_path / "evil.npz")
