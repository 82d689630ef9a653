"""The container build context of a package: the built tree, its pins and a Dockerfile, for
packages a zip cannot carry (too large, or wheels only Amazon Linux 2023 can run)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ..deployment import compat, names
from .wheels import RUNTIME_CLIENT, pins

if TYPE_CHECKING:
    from .spec import Package, PackageSpec


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
    (context / "requirements.txt").write_text(pins(package.directory))
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
