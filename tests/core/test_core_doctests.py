"""Every docstring example in the package runs and prints what it shows (exact outputs).

Modules are discovered, not listed: a module added under ``src/memcallbacks`` has its examples
run here without touching this file. A module that needs an optional extra which is not
installed (``transformers`` for :mod:`memcallbacks.lm.hf`, say) is skipped with the reason; with
``pip install -e ".[dev]"`` every extra is installed and every module runs.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import memcallbacks

#: top-level packages of the optional extras (``pyproject.toml``), and the other Lightning namespace
OPTIONAL_DEPENDENCIES = frozenset(
    {
        "transformers",
        "tokenizers",
        "safetensors",
        "opacus",
        "wandb",
        "mlflow",
        "tensorboard",
        "matplotlib",
        "lightning",
    }
)


def _discover() -> list[str]:
    names: list[str] = []
    # a subpackage that fails to import is still listed, so its test reports the error
    for info in pkgutil.walk_packages(memcallbacks.__path__, prefix="memcallbacks.", onerror=names.append):
        names.append(info.name)
    return sorted(n for n in names if not n.endswith(".__main__"))  # importing __main__ would run the CLI


MODULES = _discover()


def _skip_if_extra_missing(what: str, error: ImportError) -> None:
    """Skip when ``error`` is an optional extra that is not installed; otherwise return (the caller re-raises)."""
    missing = (error.name or "").split(".")[0]
    if isinstance(error, ModuleNotFoundError) and missing in OPTIONAL_DEPENDENCIES:
        pytest.skip(f"{what} needs the optional dependency {missing!r}, which is not installed")


def test_discovery_finds_the_package() -> None:
    for name in (
        "memcallbacks.metrics.exposure",
        "memcallbacks.callbacks._base",
        "memcallbacks.utilities.validation",
    ):
        assert name in MODULES, f"{name} not discovered: {MODULES}"


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        _skip_if_extra_missing(name, e)
        raise
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert result.failed == 0, f"{result.failed} failing docstring example(s) in {name}"


@pytest.mark.parametrize("name", sorted(n for n in memcallbacks.__all__ if not n.startswith("__")))
def test_public_names_have_examples(name: str) -> None:
    """Each public class and function exported from memcallbacks shows a usage example."""
    try:
        obj = getattr(memcallbacks, name)
    except ImportError as e:
        _skip_if_extra_missing(f"memcallbacks.{name}", e)
        raise
    assert ">>>" in (obj.__doc__ or ""), f"memcallbacks.{name} has no docstring example"
