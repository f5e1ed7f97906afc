"""The report's output folder is refused when it is a symbolic link (issue 27: no link followed on write)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from memcallbacks.report import build_report


def test_an_out_folder_that_is_a_link_is_refused(run: dict[str, Any], tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "report"
    link.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(NotADirectoryError, match=r"`out` .*report' is a symbolic link .*Pass a real folder"):
        build_report(run["root"], out=link)
    assert list(elsewhere.iterdir()) == []  # nothing written through the link


def test_the_default_report_folder_planted_as_a_link_is_refused(run: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(run["root"], root, ignore=shutil.ignore_patterns("report"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "report").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(NotADirectoryError, match="symbolic link"):
        build_report(root)
    assert list(elsewhere.iterdir()) == []
