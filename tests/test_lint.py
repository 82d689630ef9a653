"""The code checks pyproject.toml configures, run as part of the suite so that they stay clean."""

from __future__ import annotations

import subprocess
import sys
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
