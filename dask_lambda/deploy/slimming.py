"""Make the package start fast: leave out what no task needs at run time, strip pyarrow's
shared objects, and compile every module for the runtime.

* parts no task needs at run time are left out (tests, headers, type stubs, Arrow
  Flight, botocore's models of services the function does not call);
* pyarrow's own shared objects are stripped of symbols no loader needs (the
  auditwheel-vendored libraries under ``*.libs/`` are left byte for byte: their
  patched sonames and RPATHs do not survive ``strip``, and numpy's break);
* every module is compiled to ``__pycache__/*.pyc`` by the runtime's Python, with
  ``--invalidation-mode unchecked-hash``: ``/var/task`` is read-only, so without them
  each cold start compiles every module it imports again (seconds for numpy, pandas,
  pyarrow and dask), and timestamp-checked ones would be ignored because the zip's
  timestamps are fixed.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DeployError

if TYPE_CHECKING:
    from .spec import PackageSpec

#: Where Lambda mounts the package (zip) or where images put it (``LAMBDA_TASK_ROOT``): the
#: path compiled modules name as their source.
TASK_ROOT = "/var/task"
#: Directories and files no task needs at run time.
_DROP_DIRS = {"tests", "__pycache__"}
_DROP_SUFFIXES = (".pyi", ".pxd", ".pyx", ".h", ".hpp", ".c", ".cc", ".cpp")
_DROP_PATHS = ("pyarrow/include", "pyarrow/src", "numpy/_core/include")
_DROP_NAMES = re.compile(
    r"^pyarrow/(libarrow_flight\.so.*|libarrow_python_flight\.so.*|_flight\..*\.so"
    r"|_pyarrow_cpp_tests\..*\.so|libarrow_python\.so(\.\d+\.\d+\.\d+)?)$")
#: How long compiling the package may take.
_COMPILE_TIMEOUT = 1800


def slim(tree: Path, spec: PackageSpec) -> list[str]:
    """Leave out what no task needs; returns what it did, for the notes."""
    for rel in _DROP_PATHS:
        shutil.rmtree(tree / rel, ignore_errors=True)
    for dirpath, dirnames, filenames in os.walk(tree):
        for d in [d for d in dirnames if d in _DROP_DIRS]:
            shutil.rmtree(Path(dirpath) / d, ignore_errors=True)
            dirnames.remove(d)
        for f in filenames:
            path = Path(dirpath) / f
            rel = path.relative_to(tree).as_posix()
            if f.endswith(_DROP_SUFFIXES) or _DROP_NAMES.match(rel):
                path.unlink()
    shutil.rmtree(tree / "bin", ignore_errors=True)
    return [prune_botocore(tree, spec.aws_services), strip_pyarrow(tree, spec.arch)]


def prune_botocore(tree: Path, services: tuple[str, ...]) -> str:
    """Keep botocore's models of ``services`` only (and its shared files: endpoints, partitions,
    retry and default configuration): about 16 MiB of the package otherwise."""
    data = tree / "botocore" / "data"
    if "all" in services or not data.is_dir():
        return "botocore: every service model kept"
    dropped = [d for d in data.iterdir() if d.is_dir() and d.name not in services]
    freed = sum(tree_size(d) for d in dropped)
    for d in dropped:
        shutil.rmtree(d)
    return (f"botocore: models of {', '.join(sorted(services))} kept, {len(dropped)} others "
            f"left out (-{freed / 2**20:.1f} MiB)")


def strip_pyarrow(tree: Path, arch: str) -> str:
    """``strip --strip-unneeded`` pyarrow's own shared objects (not those under ``*.libs/``)."""
    objects = sorted(p for p in (tree / "pyarrow").glob("*.so*") if p.is_file())
    machine = {"x86_64": "x86_64", "arm64": "aarch64"}[arch]
    tool = "strip" if platform.machine() == machine else f"{machine}-linux-gnu-strip"
    if not objects:
        return "strip: no pyarrow shared objects"
    if shutil.which(tool) is None:
        return f"strip: `{tool}` (GNU binutils) not found, pyarrow's shared objects kept whole"
    before = sum(p.stat().st_size for p in objects)
    proc = subprocess.run([tool, "--strip-unneeded", *map(str, objects)], capture_output=True,
                          text=True, timeout=600)
    after = sum(p.stat().st_size for p in objects)
    freed = f"-{(before - after) / 2**20:.1f} MiB"
    if proc.returncode != 0:  # strip leaves a file it cannot read as it was
        return f"strip: {tool} failed ({proc.stderr.strip()[:200]}); {freed}"
    return f"strip: pyarrow's {len(objects)} shared objects {freed}"


def compile_modules(tree: Path, python: str) -> str:
    """Compile every module with the runtime's Python into unchecked-hash ``.pyc`` files.

    Unchecked: the zip's timestamps are fixed, and the package never changes in place.
    Source paths are recorded as under `TASK_ROOT`, so the bytes do not depend on where the
    package was built; ``PYTHONHASHSEED=0`` keeps set constants in one order.
    """
    before = tree_size(tree)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    # Exit code 1 means some file did not compile (a template, a module for another
    # Python): importing it would fail the same way, with or without a .pyc.
    proc = subprocess.run(
        [python, "-m", "compileall", "-q", "-q", "-j", "0", "--invalidation-mode",
         "unchecked-hash", "-s", str(tree), "-p", TASK_ROOT, str(tree)],
        capture_output=True, text=True, timeout=_COMPILE_TIMEOUT, env=env)
    count = sum(1 for _ in tree.rglob("*.pyc"))
    if proc.returncode not in (0, 1) or count == 0:
        raise DeployError(f"{python} -m compileall failed on the package: "
                          f"{(proc.stderr or proc.stdout).strip()[-1000:]}")
    return (f"compiled {count} modules (unchecked-hash .pyc) "
            f"+{(tree_size(tree) - before) / 2**20:.1f} MiB")


def tree_size(tree: Path) -> int:
    return sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
