"""What a deployment package is: the spec of a build (`PackageSpec`) and its result
(`Package`), shared by the build's steps (:mod:`.package`, :mod:`.wheels`,
:mod:`.slimming`, :mod:`.image_context`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..deployment import compat

#: botocore models kept: the services the handler calls (S3; STS for credentials; Secrets
#: Manager for the signing key, `dask_lambda_handler.env`). A task calling another service
#: needs it listed (``deploy --aws-services s3,sts,secretsmanager,dynamodb``).
AWS_SERVICES = ("s3", "sts", "secretsmanager")


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
