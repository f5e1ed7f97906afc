"""Rules of the architecture, enforced over the source tree.

- the pure layers (:mod:`memcallbacks.metrics`, ``.data``, ``.lm``, ``.utilities``) import no
  Lightning and no :mod:`memcallbacks.callbacks`: statically (every import in every module, those
  inside functions included) and dynamically (importing them in a fresh interpreter loads no
  Lightning);
- no import cycle among memcallbacks modules (module-level imports; those under
  ``if TYPE_CHECKING:`` and inside functions do not run at import time and are left out);
- no module imports a private name (``_x``) from another memcallbacks module, neither as
  ``from memcallbacks.a import _x`` nor as ``a._x`` on an imported memcallbacks module;
- no function in ``src`` has more than 60 lines of code (docstring, blank and comment-only lines
  excluded);
- the top level of ``src/memcallbacks`` has at most 14 entries.

Each rule is a pure function over a source tree (a folder holding the ``memcallbacks`` package),
so the tests at the bottom also show each one failing on a small synthetic tree.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "memcallbacks"
PURE_PACKAGES = ("memcallbacks.metrics", "memcallbacks.data", "memcallbacks.lm", "memcallbacks.utilities")
FORBIDDEN_IN_PURE = ("pytorch_lightning", "lightning", "memcallbacks.callbacks")
MAX_FUNCTION_LINES = 60
MAX_TOP_LEVEL_ENTRIES = 14


# -- reading a source tree ------------------------------------------------------------------
def parse_tree(src: Path, package: str = PACKAGE) -> dict[str, ast.Module]:
    """Every module of ``package`` under ``src``, by dotted name (a package by its ``__init__``).

    A package's tree carries ``is_package = True``, which relative imports need.
    """
    modules: dict[str, ast.Module] = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        tree.is_package = parts[-1] == "__init__"  # type: ignore[attr-defined]
        modules[".".join(parts[:-1] if tree.is_package else parts)] = tree  # type: ignore[attr-defined]
    return modules


def _is_package(name: str, modules: Mapping[str, ast.Module]) -> bool:
    """Whether ``name`` is a package (its ``__init__``), as :func:`parse_tree` marked it."""
    return bool(getattr(modules.get(name), "is_package", False))


def _absolute(module: str, node: ast.ImportFrom, modules: Mapping[str, ast.Module]) -> str:
    """The absolute module an ``ImportFrom`` reads from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not _is_package(module, modules):
        base = base[:-1]  # a plain module's relative import starts from its package
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imported_modules(
    module: str, node: ast.Import | ast.ImportFrom, modules: Mapping[str, ast.Module]
) -> list[str]:
    """The modules an import statement names: ``from a import b`` names ``a.b`` when that is a module."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    source = _absolute(module, node, modules)
    return [
        f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source for alias in node.names
    ]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: not in functions, not under ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = list(reversed(tree.body))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            stack.extend(reversed(node.orelse if _is_type_checking(node.test) else node.body + node.orelse))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        else:
            stack.extend(reversed(list(ast.iter_child_nodes(node))))


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


# -- the rules ------------------------------------------------------------------------------
def forbidden_imports(
    modules: Mapping[str, ast.Module],
    layers: tuple[str, ...] = PURE_PACKAGES,
    forbidden: tuple[str, ...] = FORBIDDEN_IN_PURE,
) -> list[str]:
    """``"<module>:<line> imports <name>"`` for each import in ``layers`` of something in ``forbidden``.

    Every import counts, those inside functions included (they run when the function is called).
    """
    found = []
    for module, tree in sorted(modules.items()):
        if not any(_within(module, layer) for layer in layers):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name in imported_modules(module, node, modules):
                    if any(_within(name, bad) for bad in forbidden):
                        found.append(f"{module}:{node.lineno} imports {name}")
    return found


def import_graph(modules: Mapping[str, ast.Module]) -> dict[str, set[str]]:
    """Module -> the memcallbacks modules its module-level imports load.

    Importing ``a.b.c`` also runs the ``__init__`` of ``a.b``, unless that package is one the
    importing module sits in (then it is already being imported).
    """
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for module, tree in modules.items():
        for node in module_level_imports(tree):
            for name in imported_modules(module, node, modules):
                parts = name.split(".")
                for target in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
                    if target in modules and target != module and not _within(module, target):
                        graph[module].add(target)
    return graph


def import_cycles(modules: Mapping[str, ast.Module]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected group of modules that import each other."""
    graph = import_graph(modules)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[set[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm; the graphs here are a few dozen nodes deep
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_cycle_in(graph, group) for group in groups]


def _cycle_in(graph: Mapping[str, set[str]], group: set[str]) -> list[str]:
    """A shortest cycle through the group's first module (breadth-first within the group)."""
    start = min(group)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & group):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if v != start else [start, start]
                if w not in parents:
                    parents[w] = v
                    following.append(w)
        frontier = following
    return sorted(group)  # pragma: no cover - a strongly connected group always has a cycle


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node: ast.expr) -> list[str] | None:
    """``a.b.c`` as ``["a", "b", "c"]``; ``None`` unless the chain starts at a plain name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def _module_bindings(module: str, tree: ast.Module, modules: Mapping[str, ast.Module]) -> dict[str, str]:
    """Local name -> the memcallbacks module it is bound to by an import anywhere in the file."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _within(alias.name, PACKAGE):
                    if alias.asname:
                        bound[alias.asname] = alias.name
                    else:
                        bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node, modules)
            for alias in node.names:
                target = f"{source}.{alias.name}"
                if _within(source, PACKAGE) and target in modules:
                    bound[alias.asname or alias.name] = target
    return bound


def private_imports(modules: Mapping[str, ast.Module]) -> list[str]:
    """``"<module>:<line> uses <other>.<_name>"`` for each private name taken from another memcallbacks module."""
    found = []
    for module, tree in sorted(modules.items()):
        bound = _module_bindings(module, tree, modules)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = _absolute(module, node, modules)
                if _within(source, PACKAGE) and source != module:
                    found += [
                        f"{module}:{node.lineno} uses {source}.{alias.name}"
                        for alias in node.names
                        if _private(alias.name)
                    ]
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                chain = _dotted(node)
                if chain is None or chain[0] not in bound:
                    continue
                target, rest = bound[chain[0]], chain[1:]
                while rest and f"{target}.{rest[0]}" in modules:  # walk down submodules: pkg.sub.name
                    target, rest = f"{target}.{rest[0]}", rest[1:]
                if rest and _private(rest[0]) and target != module:
                    found.append(f"{module}:{node.lineno} uses {target}.{rest[0]}")
    return sorted(set(found))


def code_lines(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of code of a function: its docstring, blank lines and comment-only lines excluded."""
    doc: set[int] = set()
    body = node.body
    first = body[0] if body else None
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        doc = set(range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1))
    count = 0
    for i in range(node.lineno, (node.end_lineno or node.lineno) + 1):
        stripped = lines[i - 1].strip()
        if i not in doc and stripped and not stripped.startswith("#"):
            count += 1
    return count


def long_functions(src: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``"<path>:<line> <name> (<n> lines)"`` for each function under ``src`` longer than ``limit``."""
    found = []
    for path in sorted(src.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = code_lines(lines, node)
                if n > limit:
                    found.append(f"{path.relative_to(src)}:{node.lineno} {node.name} ({n} lines)")
    return found


def top_level_entries(package_dir: Path) -> list[str]:
    """The files and folders at the top of a package (caches and hidden entries left out)."""
    return sorted(
        p.name for p in package_dir.iterdir() if p.name != "__pycache__" and not p.name.startswith(".")
    )


# -- the real tree --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def modules() -> dict[str, ast.Module]:
    return parse_tree(SRC)


def test_the_tree_is_found(modules: dict[str, ast.Module]) -> None:
    for name in (*PURE_PACKAGES, "memcallbacks.callbacks._base", "memcallbacks.metrics.exposure"):
        assert name in modules, sorted(modules)


def test_pure_layers_import_no_lightning_and_no_callbacks(modules: dict[str, ast.Module]) -> None:
    found = forbidden_imports(modules)
    assert not found, "the pure layers must not import Lightning or memcallbacks.callbacks:\n" + "\n".join(
        found
    )


@pytest.mark.parametrize("package", PURE_PACKAGES)
def test_importing_a_pure_layer_loads_no_lightning(package: str) -> None:
    code = textwrap.dedent(
        f"""
        import importlib, pkgutil, sys
        package = importlib.import_module({package!r})
        for info in pkgutil.walk_packages(package.__path__, prefix={package!r} + "."):
            try:
                importlib.import_module(info.name)
            except ModuleNotFoundError as e:  # an optional extra that is not installed
                if (e.name or "").split(".")[0] == "memcallbacks":
                    raise
        print(sorted(m for m in sys.modules if m.split(".")[0] in {{"pytorch_lightning", "lightning"}}
                     or m.startswith("memcallbacks.callbacks")))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"importing {package} loaded {result.stdout.strip()}"


def test_no_import_cycle(modules: dict[str, ast.Module]) -> None:
    cycles = import_cycles(modules)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_name_imported_across_modules(modules: dict[str, ast.Module]) -> None:
    found = private_imports(modules)
    assert not found, "private names used across modules (make them public):\n" + "\n".join(found)


def test_no_function_over_60_lines_of_code() -> None:
    found = long_functions(SRC / PACKAGE)
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines of code:\n" + "\n".join(found)


def test_top_level_of_the_package_stays_small() -> None:
    entries = top_level_entries(SRC / PACKAGE)
    assert len(entries) <= MAX_TOP_LEVEL_ENTRIES, entries


# -- each rule fails on a small synthetic tree ----------------------------------------------
def _write_tree(root: Path, files: Mapping[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root


def test_a_cycle_is_found_and_named(tmp_path: Path) -> None:
    src = _write_tree(
        tmp_path,
        {
            "memcallbacks/__init__.py": "",
            "memcallbacks/a.py": "from memcallbacks import b\n",
            "memcallbacks/b.py": "import memcallbacks.sub.c\n",
            "memcallbacks/sub/__init__.py": "",
            "memcallbacks/sub/c.py": "from ..a import thing\n",
            "memcallbacks/d.py": "from memcallbacks import a\n",  # imports into the cycle, not part of it
        },
    )
    cycles = import_cycles(parse_tree(src))
    assert cycles == [["memcallbacks.a", "memcallbacks.b", "memcallbacks.sub.c", "memcallbacks.a"]]


def test_imports_under_type_checking_or_in_functions_make_no_cycle(tmp_path: Path) -> None:
    src = _write_tree(
        tmp_path,
        {
            "memcallbacks/__init__.py": "",
            "memcallbacks/a.py": "from memcallbacks import b\n",
            "memcallbacks/b.py": """
                from typing import TYPE_CHECKING
                if TYPE_CHECKING:
                    from memcallbacks.a import A
                def f():
                    from memcallbacks import a
                """,
        },
    )
    assert import_cycles(parse_tree(src)) == []
    src_cycle = _write_tree(
        tmp_path / "two", {"memcallbacks/__init__.py": "", "memcallbacks/a.py": "import memcallbacks.a\n"}
    )
    assert import_cycles(parse_tree(src_cycle)) == []  # a module importing itself is no cycle


def test_a_private_import_is_found(tmp_path: Path) -> None:
    src = _write_tree(
        tmp_path,
        {
            "memcallbacks/__init__.py": "",
            "memcallbacks/a.py": "def _helper(): ...\ndef public(): ...\n_CONST = 1\n",
            "memcallbacks/pkg/__init__.py": "",
            "memcallbacks/pkg/b.py": """
                from memcallbacks.a import _helper, public
                from .. import a
                import memcallbacks.a as alias
                import memcallbacks.a
                def f():
                    return a._CONST, alias.public, memcallbacks.a._helper, a.__name__
                """,
            "memcallbacks/pkg/c.py": "from ._d import public_name\n",  # a private module, public name: fine
            "memcallbacks/pkg/_d.py": "public_name = 1\n_own = 2\nprint(_own)\n",
        },
    )
    assert private_imports(parse_tree(src)) == [
        "memcallbacks.pkg.b:2 uses memcallbacks.a._helper",
        "memcallbacks.pkg.b:7 uses memcallbacks.a._CONST",
        "memcallbacks.pkg.b:7 uses memcallbacks.a._helper",
    ]


def test_a_lightning_import_in_a_pure_layer_is_found(tmp_path: Path) -> None:
    src = _write_tree(
        tmp_path,
        {
            "memcallbacks/__init__.py": "",
            "memcallbacks/metrics/__init__.py": "import numpy\n",
            "memcallbacks/metrics/m.py": "def f():\n    import pytorch_lightning as pl\n    return pl\n",
            "memcallbacks/lm/x.py": "from ..callbacks._base import Base\n",
            "memcallbacks/callbacks/__init__.py": "",
            "memcallbacks/callbacks/_base.py": "import lightning.pytorch\nclass Base: ...\n",
        },
    )
    assert forbidden_imports(parse_tree(src)) == [
        "memcallbacks.lm.x:1 imports memcallbacks.callbacks._base",
        "memcallbacks.metrics.m:2 imports pytorch_lightning",
    ]


def test_a_long_function_and_a_crowded_package_are_found(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(61))
    src = _write_tree(
        tmp_path,
        {
            "memcallbacks/__init__.py": "",
            "memcallbacks/long.py": f'def long():\n    """Doc.\n\n    More doc.\n    """\n\n    # comment\n{body}',
            "memcallbacks/short.py": "def short():\n"
            + "".join(f"    # note {i}\n\n" for i in range(80))
            + "    return 1\n",
        },
    )
    assert long_functions(src / "memcallbacks") == ["long.py:1 long (62 lines)"]
    assert top_level_entries(src / "memcallbacks") == ["__init__.py", "long.py", "short.py"]


def test_a_cycle_through_a_package_init_is_found(tmp_path: Path) -> None:
    src = _write_tree(
        tmp_path,
        {
            "memcallbacks/__init__.py": "",
            "memcallbacks/pkg/__init__.py": "from memcallbacks.other import helper\n",
            "memcallbacks/pkg/y.py": "from memcallbacks.pkg import z\n",  # a sibling: the package is already loading
            "memcallbacks/pkg/z.py": "",
            "memcallbacks/other.py": "from memcallbacks.pkg.y import thing\n",  # runs pkg/__init__ first
        },
    )
    assert import_cycles(parse_tree(src)) == [
        ["memcallbacks.other", "memcallbacks.pkg", "memcallbacks.other"]
    ]


def test_relative_imports_resolve_from_a_package_init_and_from_a_module(tmp_path: Path) -> None:
    src = _write_tree(
        tmp_path,
        {
            "memcallbacks/__init__.py": "",
            "memcallbacks/utilities/__init__.py": "",
            "memcallbacks/utilities/io.py": "",
            # a package without submodules: its relative imports start from itself
            "memcallbacks/loggers/__init__.py": "from ..utilities import io\nfrom . import _x\n",
            "memcallbacks/metrics/__init__.py": "",
            "memcallbacks/metrics/m.py": "from ..loggers import emit\nfrom .n import f\n",
            "memcallbacks/metrics/n.py": "",
        },
    )
    graph = import_graph(parse_tree(src))
    assert graph["memcallbacks.loggers"] == {"memcallbacks.utilities", "memcallbacks.utilities.io"}
    assert graph["memcallbacks.metrics.m"] == {"memcallbacks.loggers", "memcallbacks.metrics.n"}
