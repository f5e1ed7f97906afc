"""Every docstring example in the package runs and prints what it shows (STYLE: exact outputs)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import memcallbacks

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(memcallbacks.__path__, prefix="memcallbacks.")
    if m.name != "memcallbacks.__main__"
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert result.failed == 0, f"{result.failed} failing docstring example(s) in {name}"


def test_public_names_have_examples() -> None:
    """Each public class and function exported from memcallbacks shows a usage example."""
    missing = []
    for name in memcallbacks.__all__:
        if name.startswith("__"):
            continue
        doc = getattr(memcallbacks, name).__doc__ or ""
        if ">>>" not in doc:
            missing.append(name)
    assert not missing, f"public names without a docstring example: {missing}"
