"""The top-level exports of memcallbacks: one list, the static names equal to it, one version source."""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

import pytest

import memcallbacks
import memcallbacks.callbacks

ROOT = Path(__file__).resolve().parents[2]
INIT = ROOT / "src" / "memcallbacks" / "__init__.py"


def type_checking_imports(path: Path) -> dict[str, str]:
    """Name -> module of every ``from <module> import <name>`` under ``if TYPE_CHECKING:`` in ``path``."""
    names: dict[str, str] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom), ast.dump(stmt)
                names.update({alias.asname or alias.name: stmt.module or "" for alias in stmt.names})
    return names


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert memcallbacks.__all__ == sorted(memcallbacks.__all__)
    assert "__version__" in memcallbacks.__all__
    assert sorted(dir(memcallbacks)) == sorted(memcallbacks.__all__)
    with pytest.raises(AttributeError, match="module 'memcallbacks' has no attribute 'nope'"):
        memcallbacks.nope  # noqa: B018


def test_the_static_names_for_type_checkers_are_the_export_list() -> None:
    static = type_checking_imports(INIT)
    assert sorted(static) == sorted(n for n in memcallbacks.__all__ if n != "__version__")
    for name, module in static.items():
        assert getattr(memcallbacks, name) is getattr(importlib.import_module(module), name), name


def test_the_extension_points_are_public() -> None:
    from memcallbacks.callbacks._base import MemorisationCallback
    from memcallbacks.rundir import RunDirectory

    assert memcallbacks.MemorisationCallback is MemorisationCallback
    assert memcallbacks.RunDirectory is RunDirectory
    assert issubclass(memcallbacks.MembershipInferenceMonitor, memcallbacks.MemorisationCallback)


@pytest.mark.parametrize("name", ["pool_fingerprint", "label_fingerprint", "HFIncrementalLM"])
def test_internals_stay_in_their_modules(name: str) -> None:
    assert name not in memcallbacks.__all__
    with pytest.raises(AttributeError):
        getattr(memcallbacks, name)


def test_callbacks_package_reexports_the_same_objects() -> None:
    assert memcallbacks.callbacks.__all__ == sorted(memcallbacks.callbacks.__all__)
    for name in memcallbacks.callbacks.__all__:
        assert name in memcallbacks.__all__, name
        assert getattr(memcallbacks.callbacks, name) is getattr(memcallbacks, name), name


def test_one_version_source() -> None:
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"], "the version is read from memcallbacks.__version__ only"
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["hatch"]["version"]["path"] == "src/memcallbacks/__init__.py"
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]\d+|rc\d+|\.dev\d+)?", memcallbacks.__version__)
    assert INIT.read_text(encoding="utf-8").count("__version__ = ") == 1
