"""Read back an offline W&B run (``run-*.wandb``) in tests: wandb 0.31 ships no Python reader.

The file is a 7-byte header (``b":W&B"``, a 2-byte magic, a 1-byte version) followed by a
LevelDB-style log: 32 KiB blocks of chunks ``crc32c (u32) | length (u16 LE) | type (u8)``
(1 full, 2 first, 3 middle, 4 last); joined chunks are ``wandb_internal_pb2.Record`` messages.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

_BLOCK = 32 * 1024
_HEADER = 7


def read_records(path: str | Path) -> list[Any]:
    """Every ``Record`` of a ``.wandb`` file, in order."""
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    records, pending, pos = [], b"", _HEADER
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # block trailer too short for a chunk header: padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def history_rows(path: str | Path) -> list[dict[str, Any]]:
    """History rows as ``{key: decoded JSON value}`` (nested keys joined with ``/``)."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    (item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return rows


def find_run_file(root: str | Path) -> Path:
    """The one ``run-*.wandb`` file under ``root`` (offline run folder)."""
    files = sorted(Path(root).rglob("run-*.wandb"))
    assert len(files) == 1, f"expected one offline W&B run under {root}, found {files}"
    return files[0]


def wait_for_run_file(root: str | Path, timeout: float = 60.0) -> Path:
    """The run file once W&B has written its ``exit`` record (``wandb.finish()`` returns earlier)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            path = find_run_file(root)
            if any(r.WhichOneof("record_type") == "exit" for r in read_records(path)):
                return path
        except (AssertionError, Exception):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"W&B did not finish writing its run under {root} within {timeout} s")
        time.sleep(0.2)
