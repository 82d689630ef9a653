"""Build the deployment package: the handler plus this machine's library versions, as wheels
for the Lambda platform.

The wheels come from :mod:`.wheels`; :mod:`.slimming` then trims the tree and compiles it
for the cold start.

The result is zipped deterministically (same inputs, same bytes: a redeploy of an
unchanged package uploads nothing).  Packages are cached under
``~/.cache/dask-lambda/packages/<hash>/``.  Where the runtime's OS has no wheels for
the local versions (Python 3.10/3.11 run on Amazon Linux 2), `build` writes a
container build context (:mod:`.image_context`) for the same Python on Amazon Linux 2023
instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ..deployment import compat, names
from ..errors import DeployError, ImageNeededError
from .image_context import dockerfile, write_image_context
from .slimming import TASK_ROOT, compile_modules, slim, tree_size
from .spec import AWS_SERVICES, Package, PackageSpec
from .wheels import (
    DEFAULT_PACKAGES,
    RUNTIME_CLIENT,
    NoWheel,
    find_python,
    glibc_version,
    local_distributions,
    local_version,
    missing_name,
    pins,
    pip_install,
    pip_said,
    platforms,
    requirements,
    tree_versions,
)

__all__ = ["AWS_SERVICES", "DEFAULT_PACKAGES", "RUNTIME_CLIENT", "TASK_ROOT", "Package",
           "PackageSpec", "build", "build_id", "dockerfile", "find_python",
           "local_distributions", "platforms", "requirements", "write_image_context",
           "zip_tree"]

#: Changes when the recipe below changes, so that older cached builds are not reused.
_RECIPE = 2
#: Fixed timestamp of zip entries, so identical contents give an identical zip.
_EPOCH = (1980, 1, 1, 0, 0, 0)


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
        size = tree_size(tree)
        if not zip_path.exists() and size <= names.UNZIPPED_LIMIT:
            zip_tree(tree, zip_path)  # cached while a lower limit applied: zip it now
        cached = tuple((root / "notes.txt").read_text().splitlines())
        return Package(tree, zip_path if zip_path.exists() else None, size, tree_versions(tree),
                       compiler is not None, cached)
    shutil.rmtree(root, ignore_errors=True)
    tree.mkdir(parents=True)
    log(f"Building the {spec.runtime} {spec.arch} package (glibc <= {spec.effective_glibc}): "
        + " ".join(reqs))
    try:
        pip_install(spec, reqs, local, tree, root)
    except NoWheel as missing:
        shutil.rmtree(root, ignore_errors=True)
        raise _no_wheel_error(spec, missing, log, python) from None
    _add_handler(tree)
    notes = slim(tree, spec)
    if compiler is not None:
        notes.append(compile_modules(tree, compiler))
    else:
        notes.append(f"no .pyc: no Python {spec.python} here to compile them (cold starts "
                     "compile every module they import)")
    size = tree_size(tree)
    if size <= names.UNZIPPED_LIMIT:
        zip_tree(tree, zip_path)
    (root / "requirements.txt").write_text(pins(tree))
    (root / "notes.txt").write_text("\n".join(notes) + "\n")
    (root / "done").write_text("ok\n")
    for line in notes:
        log(f"  {line}")
    return Package(tree, zip_path if zip_path.exists() else None, size, tree_versions(tree),
                   compiler is not None, tuple(notes))


def _no_wheel_error(spec: PackageSpec, missing: NoWheel, log: Callable[[str], None],
                    python: str | None) -> DeployError:
    """The error for a library without a wheel for the runtime's OS, with the paths that work.

    For Python 3.10/3.11 (Amazon Linux 2, glibc 2.26) with the runtime's own glibc, the same
    versions are built for Amazon Linux 2023 (glibc 2.34) and written as an image build
    context: that path keeps this Python and these versions.
    """
    output = missing.args[0]
    base = missing_name(output) or "a library"
    version = local_version(base)
    runtime_glibc = glibc_version(compat.RUNTIME_GLIBC[spec.python])
    newer = [p for p, g in compat.RUNTIME_GLIBC.items() if glibc_version(g) > runtime_glibc]
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
    return DeployError(f"{what} {advice}{older}.\npip said:\n" + "\n".join(pip_said(output)))


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
