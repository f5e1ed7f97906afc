"""Package-level tests for memcallbacks.metrics: exports, no Lightning import, docstrings."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import memcallbacks.metrics as metrics

# discovered, so a new metrics module is checked without editing this file
MODULES = sorted(m.name for m in pkgutil.iter_modules(metrics.__path__) if not m.name.startswith("_"))


def test_discovery_finds_the_metric_modules() -> None:
    assert {"exposure", "membership", "dynamics", "audit"} <= set(MODULES), MODULES


def test_importing_metrics_does_not_import_lightning() -> None:
    code = (
        "import sys, memcallbacks.metrics\n"
        "bad = sorted(m for m in ('pytorch_lightning', 'lightning') if m in sys.modules)\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_all_exports_exist_and_are_documented() -> None:
    assert sorted(metrics.__all__) == metrics.__all__
    for name in metrics.__all__:
        obj = getattr(metrics, name)
        doc = inspect.getdoc(obj) or ""
        assert doc, name
        if inspect.isfunction(obj):
            for section in ("Args:", "Returns:", "Example:"):
                assert section in doc, (name, section)


def test_keyword_only_after_the_first_two_arguments() -> None:
    for name in metrics.__all__:
        obj = getattr(metrics, name)
        if not inspect.isfunction(obj):
            continue
        params = list(inspect.signature(obj).parameters.values())
        for p in params[2:]:
            assert p.kind is inspect.Parameter.KEYWORD_ONLY, (name, p.name)


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_are_exact(module: str) -> None:
    mod = importlib.import_module(f"memcallbacks.metrics.{module}")
    assert "20" in (mod.__doc__ or "")  # the module docstring cites its paper (a year)
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0
