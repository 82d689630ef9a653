"""The code checks pyproject.toml configures, run as part of the suite so that they stay clean."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=280)


def test_ruff_finds_nothing_in_the_code_benchmarks_and_notebooks():
    out = _run("ruff", "check", "--no-cache", ".")
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-2000:]


def test_mypy_finds_nothing_in_the_library_and_the_handler():
    out = _run("mypy", "--no-incremental", "dask_lambda", "handler")
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-2000:]
    assert "Success: no issues found" in out.stdout


def test_setup_cfg_mirrors_ruffs_settings_for_tools_that_cannot_read_pyproject():
    import configparser

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    ruff = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg.sections() == ["flake8"]  # nothing else lives there
    assert int(cfg["flake8"]["max-line-length"]) == ruff["line-length"]
    # flake8 has the families ruff's pyflakes, pycodestyle and bugbear rules come from
    # (isort's I and pyupgrade's UP have no flake8 counterpart without plugins)
    families = {code for code in ruff["lint"]["select"] if code in ("E", "F", "W", "B")}
    assert set(cfg["flake8"]["select"].split(",")) == families


def test_every_package_of_the_source_tree_is_installed():
    """A package missing from pyproject's list is left out of a (non-editable) install."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    found = {".".join(path.parent.relative_to(ROOT).parts)
             for path in (ROOT / "dask_lambda").rglob("__init__.py")}
    found |= {"dask_lambda_handler" + "".join("." + part for part in
                                               path.parent.relative_to(ROOT / "handler").parts)
              for path in (ROOT / "handler").rglob("__init__.py")}
    assert found == listed


# -- the import graph ---------------------------------------------------------------------------

def _modules() -> dict[str, Path]:
    """Every module of the library and of the handler (``dask_lambda_handler``), by name."""
    found = {}
    for root, package in ((ROOT / "dask_lambda", "dask_lambda"),
                          (ROOT / "handler", "dask_lambda_handler")):
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def _import_nodes(tree: ast.AST, *, module_level: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements of ``tree``: all of them, or those of the module's own level
    (not in functions; those under ``if TYPE_CHECKING:`` included, as a type checker and a
    reader follow them)."""
    stack = list(ast.iter_child_nodes(tree))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                              ast.Lambda)):
            continue
        stack.extend(ast.iter_child_nodes(node))


def _imports(name: str, modules: dict[str, Path], *, module_level: bool = False) -> set[str]:
    """The modules of ``modules`` that module ``name`` imports (relative imports resolved)."""
    path = modules[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in _import_nodes(ast.parse(path.read_text()), module_level=module_level):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        for target in targets:
            while target and target not in modules:  # ``import a.b.c`` of a name in a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_backends_and_deploy_never_import_each_other():
    """Both build on :mod:`dask_lambda.deployment` (what names and describes a deployed
    function); neither reaches into the other, nor does deploy into the client."""
    modules = _modules()
    wrong = []
    for name in modules:
        imported = _imports(name, modules)
        if _under(name, "dask_lambda.backends"):
            wrong += [(name, m) for m in imported if _under(m, "dask_lambda.deploy")]
        if _under(name, "dask_lambda.deploy"):
            wrong += [(name, m) for m in imported
                      if any(_under(m, p) for p in ("dask_lambda.backends", "dask_lambda.cluster",
                                                     "dask_lambda.client"))]
    assert not wrong, "\n".join(f"{a} imports {b}" for a, b in wrong)


def test_no_import_cycle_between_modules():
    """The modules' import graph (their module-level imports, those for types included) has no
    cycle: a module that needs another's type only gets it from a module below both."""
    modules = _modules()
    graph = {name: _imports(name, modules, module_level=True) for name in modules}
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for other in sorted(graph[name]):
            if state.get(other) == 1:
                cycles.append(path[path.index(other):] + [other])
            elif other not in state:
                visit(other)
        path.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)
