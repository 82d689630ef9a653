"""Cold start: the real python3.12 package's size, and what importing a task's libraries costs.

What it measures
----------------
It builds the package ``dask-lambda deploy`` makes for Lambda's python3.12 runtime (x86_64,
manylinux wheels up to glibc 2.34, the runtime's Amazon Linux 2023) from this environment's
versions (:func:`dask_lambda.deploy.package.build`, cached like deploy's), its ``.pyc``
compiled by a Python 3.12 found here, and reports its unzipped size against Lambda's 250
MiB limit, its zip size and what the build did to the size.

Then it copies the package twice, as built and without its ``__pycache__`` directories,
makes both copies read-only (as ``/var/task`` is; the interpreter also runs with ``-B``, so
even root writes nothing), and runs fresh interpreters (``python3.12 -I -S -B``) from them,
alternating, ``--repeat`` times each after one warm-up each, timing the imports a task needs
in this order: numpy; pandas; pyarrow with pyarrow.parquet; dask with dask.array and
dask.dataframe; s3fs; the handler (``dask_lambda_handler.entry`` and ``runner``, and its S3
client). Each part is the time its imports add after the parts before it. It prints medians
and ranges over the repetitions, and the whole process's wall time (interpreter start
included). The files are in the page cache after the warm-up: Lambda reads its copy from
its own storage, so a real cold start adds that I/O on top.

How to run
----------
From the repository root::

    python benchmarks/cold_start.py                   # 7 repetitions (~2 minutes once built)
    python benchmarks/cold_start.py --python 3.11     # another runtime, same method
    python benchmarks/cold_start.py --quick           # smoke test: 1 repetition, no warm-up
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _env import banner, environment  # noqa: E402

from dask_lambda.deploy import package as pkg  # noqa: E402
from dask_lambda.deployment import compat, names  # noqa: E402

PARTS = (
    ("numpy", "import numpy"),
    ("pandas", "import pandas"),
    ("pyarrow", "import pyarrow, pyarrow.parquet"),
    ("dask", "import dask, dask.array, dask.dataframe"),
    ("s3fs", "import s3fs"),
    ("handler", "from dask_lambda_handler import entry, env; env.s3()"),
)
PROBE = """\
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
parts = {}
last = t0
for name, code in json.loads(sys.argv[2]):
    exec(code)
    now = time.perf_counter()
    parts[name] = now - last
    last = now
parts["total"] = last - t0
print(json.dumps(parts))
"""


def read_only_copy(tree: Path, into: Path, with_pyc: bool) -> Path:
    ignore = None if with_pyc else shutil.ignore_patterns("__pycache__")
    shutil.copytree(tree, into, ignore=ignore)
    for path in [into, *into.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return into


def writable_again(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def file_count(root: Path) -> int:
    return sum(1 for _ in root.rglob("*"))


def run_once(python: str, task: Path) -> dict:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "LANG": "C.UTF-8"}
    start = time.perf_counter()
    out = subprocess.run([python, "-I", "-S", "-B", "-c", PROBE, str(task), json.dumps(PARTS)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=task.parent)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"importing from {task} failed:\n{out.stderr[-3000:]}")
    parts = json.loads(out.stdout)
    parts["process"] = wall
    return parts


def summary(runs: list[dict], key: str) -> str:
    values = [r[key] for r in runs]
    med = statistics.median(values)
    return f"{med:6.3f} s" + (f" ({min(values):.3f}-{max(values):.3f})" if len(values) > 1 else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--python", default="3.12", help="the runtime's Python X.Y (3.12)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="1 repetition, no warm-up")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the figures")
    args = parser.parse_args(argv)
    repeat = 1 if args.quick else args.repeat

    python = pkg.find_python(args.python)
    if python is None:
        raise SystemExit(f"no Python {args.python} here to compile the package and time its "
                         f"imports; measure this machine's with --python "
                         f"{compat.local_python()}")
    spec = pkg.PackageSpec(args.python)
    env = environment()
    print(banner("cold_start", env, f"package for Lambda's {spec.runtime} {spec.arch}, glibc <= "
                 f"{spec.effective_glibc}, compiled by {python}"), flush=True)
    logged: list[str] = []

    def log(line: str) -> None:
        logged.append(line)
        print(line, flush=True)

    built = pkg.build(spec, log=log, python=python)
    limit = names.UNZIPPED_LIMIT
    zip_bytes = built.zip_path.stat().st_size if built.zip_path else None
    pyc_bytes = sum(p.stat().st_size for p in built.directory.rglob("*.pyc"))
    print(f"package: {built.unzipped_bytes / 2**20:.1f} MiB unzipped of Lambda's "
          f"{limit / 2**20:.0f} MiB ({100 * built.unzipped_bytes / limit:.1f}%), "
          f"{pyc_bytes / 2**20:.1f} MiB of it .pyc; zip "
          + (f"{zip_bytes / 2**20:.1f} MiB" if zip_bytes else "none (over the limit)"))
    for note in built.notes if not logged else ():  # a cached build logged nothing
        print(f"  {note}")

    runs: dict[str, list[dict]] = {"with_pyc": [], "without_pyc": []}
    with tempfile.TemporaryDirectory(prefix="dask-lambda-cold-") as tmp:
        copies = {kind: read_only_copy(built.directory, Path(tmp) / kind, kind == "with_pyc")
                  for kind in runs}
        counts = {kind: file_count(path) for kind, path in copies.items()}
        try:
            if not args.quick:
                for path in copies.values():  # warm-up: the page cache, not counted
                    run_once(python, path)
            for _ in range(repeat):
                for kind, path in copies.items():
                    runs[kind].append(run_once(python, path))
            for kind, path in copies.items():  # nothing was written into the read-only copies
                assert file_count(path) == counts[kind], f"{kind}: files appeared"
        finally:
            for path in copies.values():
                with contextlib.suppress(OSError):
                    writable_again(path)

    print(f"\nimports from a read-only copy, {repeat} fresh python{args.python} processes "
          "each (median, range):")
    print(f"  {'':9} {'with .pyc':>24} {'without .pyc':>24}")
    for key in [name for name, _ in PARTS] + ["total", "process"]:
        print(f"  {key:9} {summary(runs['with_pyc'], key):>24} "
              f"{summary(runs['without_pyc'], key):>24}")
    ratio = (statistics.median(r["total"] for r in runs["without_pyc"])
             / statistics.median(r["total"] for r in runs["with_pyc"]))
    print(f"  without .pyc the imports take {ratio:.1f}x as long")

    if args.json:
        Path(args.json).write_text(json.dumps({
            "env": env, "python": args.python, "arch": spec.arch, "glibc": spec.effective_glibc,
            "compiled": built.compiled, "unzipped_bytes": built.unzipped_bytes,
            "zip_bytes": zip_bytes, "pyc_bytes": pyc_bytes, "limit_bytes": limit,
            "notes": list(built.notes),
            "import_s": {kind: [r["total"] for r in rs] for kind, rs in runs.items()},
            "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
