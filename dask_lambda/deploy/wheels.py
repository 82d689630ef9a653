"""Which wheels the package holds: this machine's distributions, pinned, as
requirements for the Lambda platform; pip run for them; and what pip says when a
wheel is missing.

``pip install --target DIR --only-binary=:all: --python-version X.Y --platform ...``
fetches wheels for the runtime's OS (manylinux up to the runtime's glibc, x86_64
or aarch64), every distribution pinned to the version installed here, so the
function unpickles what the client pickles.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import distributions
from pathlib import Path
from typing import TYPE_CHECKING

from ..deployment import compat
from ..errors import DeployError

if TYPE_CHECKING:
    from .spec import PackageSpec

#: What tasks need by default: the handler's and dask's libraries, pandas/numpy/pyarrow for
#: dataframes and arrays, s3fs for s3:// paths (with the botocore its aiobotocore was made for),
#: and boto3 at the version that matches that botocore: the package's botocore comes first on
#: the path, so a task importing boto3 must not get the runtime's, made for another botocore.
DEFAULT_PACKAGES = ("dask[array,dataframe]", "cloudpickle", "s3fs", "boto3")
#: The runtime interface client, for images whose base is not a Lambda Python base image.
RUNTIME_CLIENT = "awslambdaric"
#: How long one pip run may take (a cold cache downloads hundreds of MB).
PIP_TIMEOUT = 1800


def local_distributions() -> dict[str, str]:
    """``{normalized name: version}`` of every distribution installed here (not editable ones)."""
    out = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        if not name:
            continue
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
        if direct.get("dir_info", {}).get("editable"):  # a source checkout: not on PyPI
            continue
        out[normalize(name)] = dist.version
    return out


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(spec: PackageSpec, local: dict[str, str]) -> list[str]:
    """Requirement strings: each default or extra package at its local version when installed."""
    out = []
    runtime_client = (RUNTIME_CLIENT,) if spec.al2023_image else ()
    for req in (*DEFAULT_PACKAGES, *spec.extra_packages, *runtime_client):
        req = req.strip()
        if not req:
            continue
        name = re.split(r"[\[<>=!~;@ ]", req, maxsplit=1)[0]
        version = local.get(normalize(name))
        pinned = re.search(r"[<>=!~@]", req) is not None
        out.append(req if pinned or version is None else f"{req}=={version}")
    return out


def platforms(spec: PackageSpec) -> list[str]:
    """pip ``--platform`` tags: manylinux from the runtime's glibc down to 2.17 (manylinux2014)."""
    machine = {"x86_64": "x86_64", "arm64": "aarch64"}[spec.arch]
    major, minor = (int(p) for p in spec.effective_glibc.split("."))
    tags = [f"manylinux_{major}_{m}_{machine}" for m in range(minor, 16, -1)]
    tags.append(f"manylinux2014_{machine}")
    if machine == "x86_64":
        tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
    return tags


def find_python(version: str) -> str | None:
    """A CPython ``X.Y`` interpreter on this machine (this one, on PATH, or pyenv's), or None."""
    if compat.local_python() == version:
        return sys.executable
    pattern = os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")
    for candidate in [shutil.which(f"python{version}"), *sorted(glob.glob(pattern))]:
        if candidate is None:
            continue
        try:
            out = subprocess.run([candidate, "-c", "import sys; print(*sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.split() == version.split("."):
            return candidate
    return None


class NoWheel(Exception):
    """pip found no wheel for a requirement on the platform (``args``: pip's output)."""


def pip_install(spec: PackageSpec, reqs: list[str], local: dict[str, str], tree: Path,
                 root: Path) -> None:
    constraints = root / "constraints.txt"
    constraints.write_text("".join(f"{n}=={v}\n" for n, v in sorted(local.items())
                                   if n != "dask-lambda" and "+" not in v))
    cmd = [sys.executable, "-m", "pip", "install", "--no-compile", "--progress-bar", "off",
           "--disable-pip-version-check", "--no-warn-script-location", "--timeout", "60",
           "--target", str(tree), "--only-binary=:all:", "--implementation", "cp",
           "--python-version", spec.python, "-c", str(constraints)]
    for tag in platforms(spec):
        cmd += ["--platform", tag]
    try:
        proc = subprocess.run([*cmd, *reqs], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=PIP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise DeployError(f"pip did not finish in {PIP_TIMEOUT} s; is PyPI reachable? "
                          "Run `dask-lambda deploy` again.") from None
    if proc.returncode != 0:
        if missing_name(proc.stdout) is not None:
            raise NoWheel(proc.stdout)
        raise DeployError(
            "pip could not install the package's requirements; run `dask-lambda deploy` "
            "again, or leave out the --extra-packages it names.\npip said:\n"
            + "\n".join(pip_said(proc.stdout)))


def missing_name(output: str) -> str | None:
    unavailable = re.search(r"no matching distributions available for your environment:\s+(\S+)",
                            output)
    missing = re.findall(r"No matching distribution found for (\S+)", output)
    name = unavailable.group(1) if unavailable else (missing[0] if missing else None)
    return None if name is None else re.split(r"[\[=<>!~ ]", name, maxsplit=1)[0]


def pip_said(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("ERROR") or ln.startswith("    ")
            and "is ignored" not in ln][-12:]


def glibc_version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def local_version(name: str) -> str | None:
    return local_distributions().get(normalize(name))


def tree_versions(tree: Path) -> dict:
    out = {}
    for info in tree.glob("*.dist-info"):
        meta = (info / "METADATA").read_text(errors="replace")
        name = re.search(r"^Name: (.+)$", meta, re.M)
        version = re.search(r"^Version: (.+)$", meta, re.M)
        if name and version:
            out[normalize(name.group(1).strip())] = version.group(1).strip()
    return out


def pins(tree: Path) -> str:
    """A requirements file pinning every distribution in the package."""
    return "".join(f"{name}=={version}\n" for name, version in sorted(tree_versions(tree).items())
                   if name != "dask-lambda")
