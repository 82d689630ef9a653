"""``dask-lambda deploy``, ``status`` and ``destroy``: everything the aws backend needs, made
from this machine's environment, and removed again.

What ``deploy`` makes, for a bucket ``B`` (optionally a prefix ``P``) and a function ``F``:

* the bucket (if missing), with public access blocked, default encryption, and lifecycle
  rules expiring ``P/jobs/``, ``P/results/`` and ``P/runs/`` objects after a few days;
* the role ``F-role``, whose inline policy allows only reading ``P/jobs/`` and
  ``P/results/``, writing ``P/results/``, and writing F's log (writing ``P/jobs/`` is denied);
* the log group ``/aws/lambda/F`` with a retention;
* the function ``F`` (the package built by :mod:`.package`, uploaded to ``P/deploy/F.zip``),
  with the signing key in its environment and in ``~/.config/dask-lambda/F.key``;
* with ``--trigger``: the permission for S3 to invoke F and the bucket notification on
  ``P/jobs/*.trigger.job``.

Running it again updates all of that in place. Submodules: :mod:`.names` (naming and
limits), :mod:`.compat` (runtimes and versions), :mod:`.keys`, :mod:`.package`,
:mod:`.bucket`, :mod:`.iam`, :mod:`.function`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DeployError

Out = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    """Where a deployment lives.

    Attributes
    ----------
    bucket, prefix
        The bucket and the prefix inside it (as in ``LambdaClient("s3://bucket/prefix")``).
    function
        The Lambda function's name.
    region
        AWS region.
    """

    bucket: str
    prefix: str
    function: str
    region: str

    @classmethod
    def parse(cls, bucket: str, function: str | None = None, region: str | None = None
              ) -> Target:
        from ..backends.aws import default_region
        from ..cluster import parse_bucket
        from . import names

        name, prefix = parse_bucket(bucket)
        region = region or default_region()
        if not region:
            raise DeployError(f"no AWS region: add --region, e.g. `dask-lambda deploy --bucket "
                              f"{bucket} --region us-east-1`, or set AWS_REGION")
        return cls(name, prefix, function or names.DEFAULT_FUNCTION, region)

    def command(self, verb: str = "deploy", *extra: str) -> str:
        from . import names

        words = names.deploy_command(self.bucket, self.prefix, self.function, self.region, *extra)
        return words.replace("dask-lambda deploy", f"dask-lambda {verb}", 1)


def _clients(target: Target) -> dict[str, Any]:
    import botocore.session

    session = botocore.session.get_session()
    return {name: session.create_client(name, region_name=target.region)
            for name in ("s3", "iam", "lambda", "logs", "sts")}


def deploy(target: Target, *, memory: int = 2048, timeout: int = 300, arch: str = "x86_64",
           trigger: bool = False, extra_packages: tuple[str, ...] = (), glibc: str | None = None,
           package: Path | None = None, image: str | None = None,
           attach_policies: tuple[str, ...] = (), expire_days: int | None = None,
           aws_services: tuple[str, ...] | None = None, out: Out = print) -> dict:
    """Create or update everything the aws backend needs for ``target``.

    Parameters
    ----------
    target
        Bucket, prefix, function and region.
    memory, timeout
        The function's memory (MB) and timeout (s).
    arch
        ``"x86_64"`` or ``"arm64"``.
    trigger
        Also set up the S3 notification for ``mode="trigger"`` (without it, remove it).
    extra_packages
        Requirements the tasks import beyond the defaults.
    glibc
        Build for this glibc instead of the runtime's (for emulators running functions here).
    package
        Deploy this zip instead of building one.
    image
        Deploy this container image URI (see the package-too-large message) instead of a zip.
    attach_policies
        Managed policy ARNs to attach to the role (e.g. for the tasks' own data).
    expire_days
        Days after which the lifecycle rule expires dask-lambda's objects.
    aws_services
        Services whose botocore models the package keeps (default: those the handler calls,
        `package.AWS_SERVICES`); tasks that call others through boto3 need them listed.
    out
        Where progress lines go.

    Returns
    -------
    dict
        ``function_arn``, ``role_arn``, ``key_file``, ``function`` ("created", "updated" or
        "unchanged"), ``versions`` (the handler's ping answer).
    """
    from ..errors import ImageNeededError, PackageTooLargeError, VersionMismatchError
    from . import bucket, compat, function, iam, keys, names
    from . import package as pkg

    lo, hi = names.MEMORY_RANGE
    if not lo <= memory <= hi:
        raise DeployError(f"--memory {memory} is outside Lambda's {lo}-{hi} MB: e.g. "
                          f"`{target.command('deploy', '--memory', '2048')}`")
    if not 1 <= timeout <= names.MAX_TIMEOUT:
        raise DeployError(f"--timeout {timeout} is outside Lambda's 1-{names.MAX_TIMEOUT} s: "
                          f"e.g. `{target.command('deploy', '--timeout', '300')}`")
    if arch not in ("x86_64", "arm64"):
        raise DeployError(f"--arch must be x86_64 or arm64, not {arch!r}")
    spec = pkg.PackageSpec(compat.local_python(), arch, glibc, tuple(extra_packages),
                           tuple(aws_services or pkg.AWS_SERVICES))
    runtime = spec.runtime
    if image is None and package is None:
        try:
            built = pkg.build(spec, log=out)
        except ImageNeededError as exc:  # e.g. Python 3.11 with libraries newer than AL2's
            context = Path(exc.dockerfile).parent
            raise ImageNeededError(f"{exc}\n{_image_steps(target, context, arch)}",
                                   exc.dockerfile) from None
        if built.zip_path is None or built.unzipped_bytes > names.UNZIPPED_LIMIT:
            context = pkg.write_image_context(built, spec)
            raise PackageTooLargeError(_too_large(target, built.unzipped_bytes, context, arch),
                                       str(context / "Dockerfile"))
        package = built.zip_path
    c = _clients(target)
    account = c["sts"].get_caller_identity()["Account"]

    if bucket.ensure(c["s3"], target.bucket, target.region):
        out(f"created bucket {target.bucket}")
    bucket.configure(c["s3"], target.bucket, target.prefix, expire_days or names.EXPIRE_DAYS)
    out(f"bucket {target.bucket}: public access blocked, encryption on, lifecycle rules on "
        f"{names.jobs_prefix(target.prefix)}, {names.results_prefix(target.prefix)}, "
        f"{names.runs_prefix(target.prefix)}")

    current = function.get(c["lambda"], target.function)
    deployed_key = ((current or {}).get("Environment") or {}).get("Variables", {}).get(
        "DASK_LAMBDA_SIGNING_KEY")
    key = bytes.fromhex(deployed_key) if deployed_key else (keys.read_file(target.function)
                                                              or keys.new_key())
    key_path = keys.save(target.function, key)

    policy = iam.handler_policy(target.bucket, target.prefix, target.function, target.region,
                                account)
    role_arn, created = iam.ensure_role(c["iam"], target.function, policy, tuple(attach_policies))
    out(f"{'created' if created else 'updated'} role {names.role_name(target.function)}")
    function.ensure_log_group(c["logs"], target.function)

    if image is not None:
        code: dict = {"ImageUri": image}
        sha = None
    else:
        assert package is not None
        code = {"S3Bucket": target.bucket, "S3Key": names.code_key(target.prefix,
                                                                   target.function)}
        sha = function.sha256_b64(package)
        _upload(c["s3"], target, Path(package), sha, out)
    from .. import __version__

    conf, what = function.ensure(
        c["lambda"], function=target.function, role_arn=role_arn, code=code, runtime=runtime,
        arch=arch, memory=memory, timeout=timeout,
        env={"DASK_LAMBDA_SIGNING_KEY": key.hex()},
        description=f"dask-lambda {__version__} handler ({runtime})", code_sha=sha)
    out(f"{what} function {target.function} ({runtime}, {arch}, {memory} MB, {timeout} s)")

    function.set_s3_permission(c["lambda"], target.function, target.bucket, target.prefix,
                               account, allow=trigger)
    if trigger:
        function.set_retries(c["lambda"], target.function)
    bucket.set_trigger(c["s3"], target.bucket, target.prefix, target.function,
                       conf["FunctionArn"] if trigger else None)
    if trigger:
        out(f"S3 trigger: objects under {names.jobs_prefix(target.prefix)} ending in "
            f"{names.TRIGGER_SUFFIX} invoke {target.function}")

    versions = function.ping(c["lambda"], target.function) or {}
    diffs = compat.differences(versions)
    if diffs:
        raise VersionMismatchError(
            f"the deployed handler does not match this environment ({'; '.join(diffs)}); "
            f"the package did not install as expected. Run `{target.command()}` again.")
    out(f"signing key: {key_path} (and the function's environment)")
    return {"function_arn": conf["FunctionArn"], "role_arn": role_arn,
            "key_file": str(key_path), "function": what, "versions": versions}


def _upload(s3: Any, target: Target, package: Path, sha: str, out: Out) -> None:
    from . import names

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


def _too_large(target: Target, size: int, context: Path, arch: str) -> str:
    from . import names

    return (
        f"the package is {size / 2**20:.0f} MB unzipped, more than Lambda's "
        f"{names.UNZIPPED_LIMIT / 2**20:.0f} MB for zip functions. Leave out --extra-packages the "
        "tasks do not import, or deploy a container image (up to 10 GB): a build context with "
        f"its Dockerfile is in {context}. " + _image_steps(target, context, arch))


def _image_steps(target: Target, context: Path, arch: str) -> str:
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


def destroy(target: Target, *, out: Out = print) -> list[str]:
    """Remove what `deploy` made for ``target`` (and nothing else); returns what it did."""
    from . import bucket, function, iam, names

    c = _clients(target)
    done: list[str] = []
    if function.get(c["lambda"], target.function) is not None:
        function.set_s3_permission(c["lambda"], target.function, target.bucket, target.prefix,
                                   "", allow=False)
    done += bucket.remove(c["s3"], target.bucket, target.prefix, target.function)
    done += function.delete(c["lambda"], c["logs"], target.function)
    if iam.delete_role(c["iam"], target.function):
        done.append(f"deleted the role {names.role_name(target.function)}")
    path = names.key_file(target.function)
    if path.exists():
        path.unlink()
        done.append(f"deleted the key file {path}")
    for line in done or ["nothing to remove: no dask-lambda deployment found for "
                         f"{names.bucket_url(target.bucket, target.prefix)} and "
                         f"{target.function}"]:
        out(line)
    return done


def status(target: Target, *, out: Out = print) -> bool:
    """Print what exists and whether it matches this environment; True if all is ready."""
    from . import bucket, compat, function, iam, keys, names

    c = _clients(target)
    problems: list[str] = []

    def line(ok: bool, text: str) -> None:
        out(f"{'ok ' if ok else 'NO '} {text}")
        if not ok:
            problems.append(text)

    has_bucket = bucket.exists(c["s3"], target.bucket)
    line(has_bucket, f"bucket {target.bucket}")
    if has_bucket:
        line(bucket.public_access_blocked(c["s3"], target.bucket), "  public access blocked")
        enc = bucket.encryption(c["s3"], target.bucket)
        line(enc is not None, f"  default encryption ({enc or 'none'})")
        rules = bucket.our_lifecycle_rules(c["s3"], target.bucket, target.prefix)
        line(len(rules) == 3, f"  lifecycle rules expiring jobs/, results/, runs/ ({len(rules)})")
    role = iam.describe(c["iam"], target.function)
    line(role is not None and role["policy"] is not None,
         f"role {names.role_name(target.function)} with its policy")
    conf = function.get(c["lambda"], target.function)
    line(conf is not None, f"function {target.function}" + (
        f" ({conf.get('Runtime') or 'image'}, {conf['MemorySize']} MB, {conf['Timeout']} s, "
        f"{conf.get('State', 'Active')})" if conf else ""))
    if conf is not None:
        versions = function.ping(c["lambda"], target.function)
        diffs = compat.differences(versions or {})
        line(versions is not None and not diffs,
             "  handler matches this environment" if versions and not diffs else
             f"  handler differs from this environment: {'; '.join(diffs)}")
        env_key = (conf.get("Environment") or {}).get("Variables", {}).get(
            "DASK_LAMBDA_SIGNING_KEY")
        local_key = keys.read_file(target.function)
        line(local_key is not None and env_key == local_key.hex(),
             f"  signing key {names.key_file(target.function)} matches the function's")
        if has_bucket:
            on = bucket.trigger(c["s3"], target.bucket, target.prefix, target.function)
            out(f"{'ok ' if on else '-- '} S3 trigger for mode=\"trigger\": "
                f"{'on' if on else 'off (deploy with --trigger to use it)'}")
    if problems:
        out(f"Not ready. Fix it with `{target.command()}`"
            + (" (add --trigger for mode=\"trigger\")" if conf is None else ""))
    else:
        out(f"Ready: LambdaClient(\"{names.bucket_url(target.bucket, target.prefix)}\", "
            f"backend=\"aws\", function=\"{target.function}\", region=\"{target.region}\")")
    return not problems
