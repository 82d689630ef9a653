"""Build the deployment package: the handler plus this machine's library versions, as wheels
for the Lambda platform.

``pip install --target DIR --only-binary=:all: --python-version X.Y --platform ...``
fetches wheels for the runtime's OS (manylinux up to the runtime's glibc, x86_64
or aarch64), every distribution pinned to the version installed here, so the
function unpickles what the client pickles.  Then, for the cold start:

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

The result is zipped deterministically (same inputs, same bytes: a redeploy of an
unchanged package uploads nothing).  Packages are cached under
``~/.cache/dask-lambda/packages/<hash>/``.  Where the runtime's OS has no wheels for
the local versions (Python 3.10/3.11 run on Amazon Linux 2), `build` writes a
container build context for the same Python on Amazon Linux 2023 instead.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib.metadata import distributions
from pathlib import Path

from ..deployment import compat, names
from ..errors import DeployError, ImageNeededError

#: What tasks need by default: the handler's and dask's libraries, pandas/numpy/pyarrow for
#: dataframes and arrays, s3fs for s3:// paths (with the botocore its aiobotocore was made for),
#: and boto3 at the version that matches that botocore: the package's botocore comes first on
#: the path, so a task importing boto3 must not get the runtime's, made for another botocore.
DEFAULT_PACKAGES = ("dask[array,dataframe]", "cloudpickle", "s3fs", "boto3")
#: botocore models kept: the services the handler calls (S3; STS for credentials; Secrets
#: Manager for the signing key, `dask_lambda_handler.env`). A task calling another service
#: needs it listed (``deploy --aws-services s3,sts,secretsmanager,dynamodb``).
AWS_SERVICES = ("s3", "sts", "secretsmanager")
#: The runtime interface client, for images whose base is not a Lambda Python base image.
RUNTIME_CLIENT = "awslambdaric"
#: Where Lambda mounts the package (zip) or where images put it (``LAMBDA_TASK_ROOT``): the
#: path compiled modules name as their source.
TASK_ROOT = "/var/task"
#: Changes when the recipe below changes, so that older cached builds are not reused.
_RECIPE = 2
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
    aws_services
        Services whose botocore models the package keeps (default `AWS_SERVICES`); ``("all",)``
        keeps every model.
    al2023_image
        For a container image of this Python on Amazon Linux 2023 (glibc 2.34, with the
        runtime interface client), where the runtime's own OS has no wheels.
    """

    python: str
    arch: str = "x86_64"
    glibc: str | None = None
    extra_packages: tuple[str, ...] = ()
    aws_services: tuple[str, ...] = AWS_SERVICES
    al2023_image: bool = False

    @property
    def runtime(self) -> str:
        return compat.runtime_for(self.python)

    @property
    def effective_glibc(self) -> str:
        if self.glibc:
            return self.glibc
        return compat.AL2023_GLIBC if self.al2023_image else compat.RUNTIME_GLIBC[self.python]


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
    compiled
        Whether the package holds ``.pyc`` files (compiled by the runtime's Python).
    notes
        What the build did to the size (lines for the log and the cold-start benchmark).
    """

    directory: Path
    zip_path: Path | None
    unzipped_bytes: int
    versions: dict
    compiled: bool = False
    notes: tuple[str, ...] = field(default=())


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
    runtime_client = (RUNTIME_CLIENT,) if spec.al2023_image else ()
    for req in (*DEFAULT_PACKAGES, *spec.extra_packages, *runtime_client):
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


def build_id(spec: PackageSpec, reqs: list[str], local: dict[str, str],
             compiler: str | None = None) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([_RECIPE, spec.python, spec.arch, spec.effective_glibc, reqs,
                              sorted(spec.aws_services), compiler is not None,
                              sorted(local.items())]).encode())
    for path in sorted(_handler_source().glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


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


def build(spec: PackageSpec, *, log: Callable[[str], None] = print,
          python: str | None = None) -> Package:
    """Build (or reuse the cached) package for ``spec``.

    Parameters
    ----------
    spec
        What to build.
    log
        Where progress lines go.
    python
        The Python ``spec.python`` interpreter that compiles the ``.pyc`` files (default: this
        one when it is that version, else one `find_python` finds; with none, the package has
        no ``.pyc`` and says so in its notes).

    Raises
    ------
    ImageNeededError
        When the runtime's OS has no wheel for a local version but Amazon Linux 2023 has:
        the message names the build context written for an image.
    DeployError
        With what to do when a requirement has no wheel for the platform at all.
    """
    local = local_distributions()
    reqs = requirements(spec, local)
    compiler = python or find_python(spec.python)
    root = names.cache_dir() / "packages" / build_id(spec, reqs, local, compiler)
    tree, zip_path = root / "tree", root / "package.zip"
    if (root / "done").exists():
        size = _tree_size(tree)
        if not zip_path.exists() and size <= names.UNZIPPED_LIMIT:
            zip_tree(tree, zip_path)  # cached while a lower limit applied: zip it now
        cached = tuple((root / "notes.txt").read_text().splitlines())
        return Package(tree, zip_path if zip_path.exists() else None, size, _versions(tree),
                       compiler is not None, cached)
    shutil.rmtree(root, ignore_errors=True)
    tree.mkdir(parents=True)
    log(f"Building the {spec.runtime} {spec.arch} package (glibc <= {spec.effective_glibc}): "
        + " ".join(reqs))
    try:
        _pip_install(spec, reqs, local, tree, root)
    except _NoWheel as missing:
        shutil.rmtree(root, ignore_errors=True)
        raise _no_wheel_error(spec, missing, log, python) from None
    _add_handler(tree)
    notes = _slim(tree, spec)
    if compiler is not None:
        notes.append(_compile(tree, compiler))
    else:
        notes.append(f"no .pyc: no Python {spec.python} here to compile them (cold starts "
                     "compile every module they import)")
    size = _tree_size(tree)
    if size <= names.UNZIPPED_LIMIT:
        zip_tree(tree, zip_path)
    (root / "requirements.txt").write_text(_pins(tree))
    (root / "notes.txt").write_text("\n".join(notes) + "\n")
    (root / "done").write_text("ok\n")
    for line in notes:
        log(f"  {line}")
    return Package(tree, zip_path if zip_path.exists() else None, size, _versions(tree),
                   compiler is not None, tuple(notes))


class _NoWheel(Exception):
    """pip found no wheel for a requirement on the platform (``args``: pip's output)."""


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
        if _missing_name(proc.stdout) is not None:
            raise _NoWheel(proc.stdout)
        raise DeployError(
            "pip could not install the package's requirements; run `dask-lambda deploy` "
            "again, or leave out the --extra-packages it names.\npip said:\n"
            + "\n".join(_pip_said(proc.stdout)))


def _missing_name(output: str) -> str | None:
    unavailable = re.search(r"no matching distributions available for your environment:\s+(\S+)",
                            output)
    missing = re.findall(r"No matching distribution found for (\S+)", output)
    name = unavailable.group(1) if unavailable else (missing[0] if missing else None)
    return None if name is None else re.split(r"[\[=<>!~ ]", name, maxsplit=1)[0]


def _pip_said(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("ERROR") or ln.startswith("    ")
            and "is ignored" not in ln][-12:]


def _glibc(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def _no_wheel_error(spec: PackageSpec, missing: _NoWheel, log: Callable[[str], None],
                    python: str | None) -> DeployError:
    """The error for a library without a wheel for the runtime's OS, with the paths that work.

    For Python 3.10/3.11 (Amazon Linux 2, glibc 2.26) with the runtime's own glibc, the same
    versions are built for Amazon Linux 2023 (glibc 2.34) and written as an image build
    context: that path keeps this Python and these versions.
    """
    output = missing.args[0]
    base = _missing_name(output) or "a library"
    version = _local_version(base)
    runtime_glibc = _glibc(compat.RUNTIME_GLIBC[spec.python])
    newer = [p for p, g in compat.RUNTIME_GLIBC.items() if _glibc(g) > runtime_glibc]
    named = f"{base} {version} (the version installed here)" if version else base
    what = (f"{named} has no wheel for Lambda's "
            f"{spec.runtime} {spec.arch} runtime (manylinux, glibc <= {spec.effective_glibc}), "
            "so the function cannot run it.")
    older = (f"install a {base} here that has such a wheel (`pip index versions {base}` lists "
             f"them; e.g. `pip install \"{base}<X.Y\"`), then run `dask-lambda deploy` again")
    if spec.glibc is None and newer and not spec.al2023_image:
        image_spec = replace(spec, al2023_image=True)
        log(f"{what} Building the same versions for Python {spec.python} on Amazon Linux 2023 "
            f"(glibc {compat.AL2023_GLIBC}) as a container image instead.")
        image = build(image_spec, log=log, python=python)
        context = write_image_context(image, image_spec)
        return ImageNeededError(
            f"{what} Python {spec.python}'s Lambda runtime runs on Amazon Linux 2 (glibc "
            f"{compat.RUNTIME_GLIBC[spec.python]}); the same Python and these same versions run "
            f"on Amazon Linux 2023 (glibc {compat.AL2023_GLIBC}) in a container image, whose "
            f"build context is in {context}. Or run dask-lambda from Python {newer[0]} or "
            f"newer (its runtime runs on Amazon Linux 2023), or {older}.",
            str(context / "Dockerfile"))
    advice = (f"Run dask-lambda from Python {newer[0]} or newer (Lambda's python{newer[0]}+ "
              f"runtimes run on Amazon Linux 2023, glibc {compat.RUNTIME_GLIBC[newer[0]]}), or "
              if newer else "")
    return DeployError(f"{what} {advice}{older}.\npip said:\n" + "\n".join(_pip_said(output)))


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


def _slim(tree: Path, spec: PackageSpec) -> list[str]:
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
    return [_prune_botocore(tree, spec.aws_services), _strip_pyarrow(tree, spec.arch)]


def _prune_botocore(tree: Path, services: tuple[str, ...]) -> str:
    """Keep botocore's models of ``services`` only (and its shared files: endpoints, partitions,
    retry and default configuration): about 16 MiB of the package otherwise."""
    data = tree / "botocore" / "data"
    if "all" in services or not data.is_dir():
        return "botocore: every service model kept"
    dropped = [d for d in data.iterdir() if d.is_dir() and d.name not in services]
    freed = sum(_tree_size(d) for d in dropped)
    for d in dropped:
        shutil.rmtree(d)
    return (f"botocore: models of {', '.join(sorted(services))} kept, {len(dropped)} others "
            f"left out (-{freed / 2**20:.1f} MiB)")


def _strip_pyarrow(tree: Path, arch: str) -> str:
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


def _compile(tree: Path, python: str) -> str:
    """Compile every module with the runtime's Python into unchecked-hash ``.pyc`` files.

    Unchecked: the zip's timestamps are fixed, and the package never changes in place.
    Source paths are recorded as under `TASK_ROOT`, so the bytes do not depend on where the
    package was built; ``PYTHONHASHSEED=0`` keeps set constants in one order.
    """
    before = _tree_size(tree)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    # Exit code 1 means some file did not compile (a template, a module for another
    # Python): importing it would fail the same way, with or without a .pyc.
    proc = subprocess.run(
        [python, "-m", "compileall", "-q", "-q", "-j", "0", "--invalidation-mode",
         "unchecked-hash", "-s", str(tree), "-p", TASK_ROOT, str(tree)],
        capture_output=True, text=True, timeout=_PIP_TIMEOUT, env=env)
    count = sum(1 for _ in tree.rglob("*.pyc"))
    if proc.returncode not in (0, 1) or count == 0:
        raise DeployError(f"{python} -m compileall failed on the package: "
                          f"{(proc.stderr or proc.stdout).strip()[-1000:]}")
    return (f"compiled {count} modules (unchecked-hash .pyc) "
            f"+{(_tree_size(tree) - before) / 2**20:.1f} MiB")


def _pins(tree: Path) -> str:
    """A requirements file pinning every distribution in the package."""
    return "".join(f"{name}=={version}\n" for name, version in sorted(_versions(tree).items())
                   if name != "dask-lambda")


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
    """A container build context: the package itself, its pins, and a Dockerfile.

    The image copies the built package (every distribution at the local version, compiled),
    so it runs what was tested here, with nothing resolved again at build time. On the
    runtime's OS the base is Lambda's Python base image; for wheels that need Amazon Linux
    2023 under Python 3.10/3.11, it is Lambda's OS-only base for Amazon Linux 2023 with that
    Python and the runtime interface client (both in the package).
    """
    context = package.directory.parent / "image"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir()
    shutil.copytree(package.directory, context / "task", copy_function=_link_or_copy)
    (context / "requirements.txt").write_text(_pins(package.directory))
    (context / "Dockerfile").write_text(dockerfile(spec))
    return context


def dockerfile(spec: PackageSpec) -> str:
    """The Dockerfile of `write_image_context` for ``spec``."""
    head = (f"# dask-lambda handler image for Python {spec.python} ({spec.arch}), by dask-lambda "
            "deploy.\n# task/ is the package deploy built (requirements.txt lists its pins).\n")
    if not spec.al2023_image:
        return (head + f"FROM public.ecr.aws/lambda/python:{spec.python}\n"
                "COPY task/ ${LAMBDA_TASK_ROOT}/\n"
                f"CMD [\"{names.HANDLER}\"]\n")
    # Amazon Linux 2023 packages Python 3.11 but not 3.10; python-build-standalone (installed
    # by uv) has both, built for glibc 2.17, so one recipe serves every version.
    return (head + f"# Lambda's python{spec.python} runtime runs on Amazon Linux 2 (glibc "
            f"{compat.RUNTIME_GLIBC[spec.python]}), where these\n# versions have no wheels: this "
            f"image runs Python {spec.python} on Amazon Linux 2023 (glibc {compat.AL2023_GLIBC}).\n"
            "FROM public.ecr.aws/lambda/provided:al2023\n"
            "COPY --from=ghcr.io/astral-sh/uv:0.13.8 /uv /usr/local/bin/uv\n"
            "ENV UV_PYTHON_INSTALL_DIR=/opt/python PYTHONPATH=/var/task\n"
            f"RUN uv python install {spec.python} && ln -s \"$(uv python find {spec.python})\" "
            f"/usr/local/bin/python{spec.python}\n"
            "COPY task/ /var/task/\n"
            "WORKDIR /var/task\n"
            f"ENTRYPOINT [\"/usr/local/bin/python{spec.python}\", \"-m\", \"{RUNTIME_CLIENT}\"]\n"
            f"CMD [\"{names.HANDLER}\"]\n")


def _link_or_copy(src: str, dst: str) -> object:
    try:
        os.link(src, dst)  # the package is never changed in place: share its files
        return dst
    except OSError:
        return shutil.copy2(src, dst)
