"""What the function runs: the zip package (built by :mod:`.package` or given) uploaded to the
bucket, or a container image, and the steps to build and push an image when a zip cannot do."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .target import Out, Target

if TYPE_CHECKING:
    from .spec import PackageSpec


def build_zip(target: Target, spec: PackageSpec, out: Out) -> Path:
    """Build the zip package of ``spec``; where it cannot be a zip, raise the error that lists
    the steps to deploy an image instead."""
    from ..deployment import names
    from ..errors import ImageNeededError, PackageTooLargeError
    from . import package as pkg

    try:
        built = pkg.build(spec, log=out)
    except ImageNeededError as exc:  # e.g. Python 3.11 with libraries newer than AL2's
        context = Path(exc.dockerfile).parent
        raise ImageNeededError(f"{exc}\n{image_steps(target, context, spec.arch)}",
                               exc.dockerfile) from None
    if built.zip_path is None or built.unzipped_bytes > names.UNZIPPED_LIMIT:
        context = pkg.write_image_context(built, spec)
        raise PackageTooLargeError(too_large(target, built.unzipped_bytes, context, spec.arch),
                                   str(context / "Dockerfile"))
    return built.zip_path


def function_code(s3: Any, target: Target, package: Path | None, image: str | None,
                  out: Out) -> tuple[dict, str | None]:
    """Lambda's ``Code`` for the image or the package (uploaded if it changed), and the
    package's SHA-256 (None for an image)."""
    from ..deployment import names
    from . import function

    if image is not None:
        return {"ImageUri": image}, None
    assert package is not None
    code = {"S3Bucket": target.bucket, "S3Key": names.code_key(target.prefix, target.function)}
    sha = function.sha256_b64(package)
    upload(s3, target, Path(package), sha, out)
    return code, sha


def upload(s3: Any, target: Target, package: Path, sha: str, out: Out) -> None:
    """Put ``package`` at the deployment's code key, unless the object there has its hash."""
    from ..deployment import names

    key = names.code_key(target.prefix, target.function)
    try:
        head = s3.head_object(Bucket=target.bucket, Key=key)
        if head.get("Metadata", {}).get("sha256") == sha:
            return
    except Exception:
        pass
    out(f"uploading the package ({package.stat().st_size / 2**20:.0f} MB) to "
        f"s3://{target.bucket}/{key}")
    with open(package, "rb") as body:  # one PutObject: S3 takes up to 5 GB in one
        s3.put_object(Bucket=target.bucket, Key=key, Body=body, Metadata={"sha256": sha})


def too_large(target: Target, size: int, context: Path, arch: str) -> str:
    """The message for a package over Lambda's unzipped limit."""
    from ..deployment import names

    return (
        f"the package is {size / 2**20:.0f} MB unzipped, more than Lambda's "
        f"{names.UNZIPPED_LIMIT / 2**20:.0f} MB for zip functions. Leave out --extra-packages the "
        "tasks do not import, or deploy a container image (up to 10 GB): a build context with "
        f"its Dockerfile is in {context}. " + image_steps(target, context, arch))


def image_steps(target: Target, context: Path, arch: str) -> str:
    """The commands that build and push the image of ``context`` and deploy it."""
    repo = f"ACCOUNT.dkr.ecr.{target.region}.amazonaws.com/{target.function}"
    platform = "linux/amd64" if arch == "x86_64" else "linux/arm64"
    return (
        "Build and push it, then deploy the image:\n"
        f"  aws ecr create-repository --repository-name {target.function} --region "
        f"{target.region}\n"
        f"  aws ecr get-login-password --region {target.region} | docker login --username AWS "
        f"--password-stdin ACCOUNT.dkr.ecr.{target.region}.amazonaws.com\n"
        f"  docker build --platform {platform} -t {repo}:latest {context}\n"
        f"  docker push {repo}:latest\n"
        f"  {target.command('deploy', '--image', repo + ':latest')}\n"
        "(ACCOUNT is your AWS account id: `aws sts get-caller-identity`.)")
