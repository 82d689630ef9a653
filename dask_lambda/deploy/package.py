"""Build the deployment package: the handler plus this machine's library versions, as wheels
for the Lambda platform.

``pip install --target DIR --only-binary=:all: --python-version X.Y --platform ...``
fetches wheels for the runtime's OS (manylinux up to the runtime's glibc, x86_64
or aarch64), pinned to the versions installed here, so the function unpickles
what the client pickles.  Parts no task needs at run time (tests, headers, type
stubs, Arrow Flight) are left out; the result is zipped deterministically
(same inputs, same bytes: a redeploy of an unchanged package uploads nothing).
Packages are cached under ``~/.cache/dask-lambda/packages/<hash>/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from importlib.metadata import distributions
from pathlib import Path

from ..errors import DeployError
from . import compat, names

#: What tasks need by default: the handler's and dask's libraries, pandas/numpy/pyarrow for
#: dataframes and arrays, s3fs for s3:// paths, and boto3 (pinned, so s3fs's aiobotocore finds
#: the botocore it was made for, whatever the runtime ships).
DEFAULT_PACKAGES = ("dask[array,dataframe]", "cloudpickle", "s3fs", "boto3")
#: Directories and files no task needs at run time.
_DROP_DIRS = {"tests", "__pycache__"}
_DROP_SUFFIXES = (".pyi", ".pxd", ".pyx", ".h", ".hpp", ".c", ".cc", ".cpp")
_DROP_PATHS = ("pyarrow/include", "pyarrow/src", "numpy/_core/include")
_DROP_NAMES = re.compile(
    r"^pyarrow/(libarrow_flight\.so.*|libarrow_python_flight\.so.*|_flight\..*\.so"
    r"|_pyarrow_cpp_tests\..*\.so|libarrow_python\.so(\.\d+\.\d+\.\d+)?)$")
_PIP_TIMEOUT = 1800
#: Fixed timestamp of zip entries, so identical contents give an identical zip.
_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class PackageSpec:
    """What to build.

    Attributes
    ----------
    python
        ``"X.Y"`` of the runtime (this machine's).
    arch
        ``"x86_64"`` or ``"arm64"``.
    glibc
        Newest glibc the wheels may need; default the runtime OS's (`compat.RUNTIME_GLIBC`).
    extra_packages
        More requirements the tasks import (pinned to the local version when installed here).
    """

    python: str
    arch: str = "x86_64"
    glibc: str | None = None
    extra_packages: tuple[str, ...] = ()

    @property
    def runtime(self) -> str:
        return compat.runtime_for(self.python)

    @property
    def effective_glibc(self) -> str:
        return self.glibc or compat.RUNTIME_GLIBC[self.python]


@dataclass(frozen=True)
class Package:
    """A built package.

    Attributes
    ----------
    directory
        The unpacked tree (what the function sees as its task root).
    zip_path
        The zip, or None when the tree is over Lambda's limit.
    unzipped_bytes
        Size of the tree.
    versions
        ``{distribution: version}`` inside the package.
    """

    directory: Path
    zip_path: Path | None
    unzipped_bytes: int
    versions: dict


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
        out[_normalize(name)] = dist.version
    return out


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(spec: PackageSpec, local: dict[str, str]) -> list[str]:
    """Requirement strings: each default or extra package at its local version when installed."""
    out = []
    for req in (*DEFAULT_PACKAGES, *spec.extra_packages):
        req = req.strip()
        if not req:
            continue
        name = re.split(r"[\[<>=!~;@ ]", req, maxsplit=1)[0]
        version = local.get(_normalize(name))
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


def _handler_source() -> Path:
    import dask_lambda_handler

    return Path(dask_lambda_handler.__file__).parent


def build_id(spec: PackageSpec, reqs: list[str], local: dict[str, str]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([spec.python, spec.arch, spec.effective_glibc, reqs,
                              sorted(local.items())]).encode())
    for path in sorted(_handler_source().glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def build(spec: PackageSpec, *, log=print) -> Package:
    """Build (or reuse the cached) package for ``spec``.

    Raises `DeployError` with what to do when a requirement has no wheel for the platform.
    """
    local = local_distributions()
    reqs = requirements(spec, local)
    root = names.cache_dir() / "packages" / build_id(spec, reqs, local)
    tree, zip_path = root / "tree", root / "package.zip"
    if (root / "done").exists():
        size = _tree_size(tree)
        if not zip_path.exists() and size <= names.UNZIPPED_LIMIT:
            zip_tree(tree, zip_path)  # cached while a lower limit applied: zip it now
        return Package(tree, zip_path if zip_path.exists() else None, size, _versions(tree))
    shutil.rmtree(root, ignore_errors=True)
    tree.mkdir(parents=True)
    log(f"Building the {spec.runtime} {spec.arch} package (glibc <= {spec.effective_glibc}): "
        + " ".join(reqs))
    _pip_install(spec, reqs, local, tree, root)
    _add_handler(tree)
    _strip(tree)
    size = _tree_size(tree)
    if size <= names.UNZIPPED_LIMIT:
        zip_tree(tree, zip_path)
    (root / "requirements.txt").write_text("\n".join(reqs) + "\n")
    (root / "done").write_text("ok\n")
    return Package(tree, zip_path if zip_path.exists() else None, size, _versions(tree))


def _pip_install(spec: PackageSpec, reqs: list[str], local: dict[str, str], tree: Path,
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
                              text=True, timeout=_PIP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise DeployError(f"pip did not finish in {_PIP_TIMEOUT} s; is PyPI reachable? "
                          "Run `dask-lambda deploy` again.") from None
    if proc.returncode != 0:
        raise DeployError(_pip_failure(spec, proc.stdout))


def _pip_failure(spec: PackageSpec, output: str) -> str:
    unavailable = re.search(r"no matching distributions available for your environment:\s+(\S+)",
                            output)
    missing = re.findall(r"No matching distribution found for (\S+)", output)
    name = unavailable.group(1) if unavailable else (missing[0] if missing else None)
    detail = [ln for ln in output.splitlines() if ln.startswith("ERROR") or ln.startswith("    ")
              and "is ignored" not in ln]
    if name is None:
        return ("pip could not install the package's requirements; run `dask-lambda deploy` "
                "again, or leave out the --extra-packages it names.\npip said:\n"
                + "\n".join(detail[-12:]))
    base = re.split(r"[\[=<>!~ ]", name, maxsplit=1)[0]
    def glibc(text: str) -> tuple[int, ...]:
        return tuple(int(x) for x in text.split("."))

    runtime_glibc = glibc(compat.RUNTIME_GLIBC[spec.python])
    newer = [p for p, g in compat.RUNTIME_GLIBC.items() if glibc(g) > runtime_glibc]
    advice = (f"Run dask-lambda from Python {newer[0]} or newer (Lambda's python{newer[0]}+ "
              f"runtimes run on Amazon Linux 2023, glibc {compat.RUNTIME_GLIBC[newer[0]]}), or "
              if newer else "")
    return (
        f"{base} {_local_version(base) or ''} (the version installed here) has no wheel for "
        f"Lambda's {spec.runtime} {spec.arch} runtime (manylinux, glibc <= "
        f"{spec.effective_glibc}), so the function cannot run it. {advice}install a {base} "
        f"here that has such a wheel (`pip index versions {base}` lists them; e.g. "
        f"`pip install \"{base}<X.Y\"`), then run `dask-lambda deploy` again.\npip said:\n"
        + "\n".join(detail[-12:]))


def _local_version(name: str) -> str | None:
    return local_distributions().get(_normalize(name))


def _add_handler(tree: Path) -> None:
    """The handler package and a dist-info so the handler reports dask-lambda's version."""
    from .. import __version__

    shutil.copytree(_handler_source(), tree / "dask_lambda_handler",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    info = tree / f"dask_lambda-{__version__}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: dask-lambda\nVersion: {__version__}\n"
        "Summary: dask-lambda's Lambda handler\n")
    (info / "top_level.txt").write_text("dask_lambda_handler\n")
    (info / "INSTALLER").write_text("dask-lambda deploy\n")


def _strip(tree: Path) -> None:
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


def _tree_size(tree: Path) -> int:
    return sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())


def _versions(tree: Path) -> dict:
    out = {}
    for info in tree.glob("*.dist-info"):
        meta = (info / "METADATA").read_text(errors="replace")
        name = re.search(r"^Name: (.+)$", meta, re.M)
        version = re.search(r"^Version: (.+)$", meta, re.M)
        if name and version:
            out[_normalize(name.group(1).strip())] = version.group(1).strip()
    return out


def zip_tree(tree: Path, zip_path: Path) -> None:
    """Zip ``tree`` deterministically (sorted entries, fixed timestamps, kept modes)."""
    tmp = zip_path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in sorted(p for p in tree.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(path.relative_to(tree).as_posix(), _EPOCH)
            info.external_attr = (0o755 if os.access(path, os.X_OK) else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as src, zf.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    tmp.replace(zip_path)


def write_image_context(package: Package, spec: PackageSpec) -> Path:
    """A container build context (Dockerfile, requirements, handler) for packages over 250 MB."""
    context = package.directory.parent / "image"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir()
    reqs = (package.directory.parent / "requirements.txt").read_text()
    (context / "requirements.txt").write_text(reqs)
    shutil.copytree(package.directory / "dask_lambda_handler", context / "dask_lambda_handler")
    for info in package.directory.glob("dask_lambda-*.dist-info"):
        shutil.copytree(info, context / info.name)
    (context / "Dockerfile").write_text(
        f"# dask-lambda handler image for {spec.runtime} ({spec.arch}), by dask-lambda deploy\n"
        f"FROM public.ecr.aws/lambda/python:{spec.python}\n"
        "COPY requirements.txt .\n"
        "RUN pip install --no-cache-dir -r requirements.txt --target \"${LAMBDA_TASK_ROOT}\"\n"
        "COPY dask_lambda_handler ${LAMBDA_TASK_ROOT}/dask_lambda_handler\n"
        "COPY dask_lambda-*.dist-info ${LAMBDA_TASK_ROOT}/\n"
        f"CMD [\"{names.HANDLER}\"]\n")
    return context
