"""What machine and code a benchmark ran on (shared by the benchmark scripts)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib.metadata import version
from typing import Any


def git_revision() -> str | None:
    """``git describe --always --dirty`` of the checkout this file is in, if any."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=10, cwd=os.path.dirname(os.path.abspath(__file__)))
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(packages: tuple[str, ...] = ("dask", "distributed", "dask-lambda", "cloudpickle",
                                             "moto")) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "git": git_revision(),
        "versions": {name: version(name) for name in packages},
    }


def banner(title: str, env: dict[str, Any], details: str = "") -> str:
    """The first line a benchmark prints: what ran, when, on what."""
    line = (f"dask-lambda {title} benchmark, {env['date']}: Python {env['python']}, "
            f"{env['cpu_count']} CPUs, dask {env['versions']['dask']}, "
            f"distributed {env['versions']['distributed']}, git {env['git']}")
    return f"{line}; {details}" if details else line


def write_json(path: str, report: dict[str, Any]) -> None:
    """Write a benchmark's figures (``--json PATH``) and say so."""
    import json

    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {path}")
