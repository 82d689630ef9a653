"""``dask-lambda deploy``, ``status`` and ``destroy``: everything the aws backend needs, made
from this machine's environment, and removed again.

What ``deploy`` makes, for a bucket ``B`` (optionally a prefix ``P``) and a function ``F``:

* the bucket (if missing, in the deployment's region), then with public access blocked and
  default encryption; on any bucket, lifecycle rules expiring ``P/jobs/``, ``P/results/``
  and ``P/runs/`` objects after a few days;
* the signing key, in the Secrets Manager secret ``dask-lambda/F/signing-key`` and in
  ``~/.config/dask-lambda/F.key`` (``--rotate-key`` makes a new one);
* the role ``F-role``, whose inline policy allows only reading ``P/jobs/`` and
  ``P/results/``, writing ``P/results/``, reading the key, using the bucket's KMS key
  through S3 (if it has one), and writing F's log (writing ``P/jobs/`` is denied);
* the log group ``/aws/lambda/F`` with a retention;
* the function ``F`` (the package built by :mod:`.package`, uploaded to ``P/deploy/F.zip``),
  whose configuration names the key's secret version and fingerprint, not the key;
* with ``--trigger``: the permission for S3 to invoke F and the bucket notification on
  ``P/jobs/*.trigger.job``.

Running it again updates all of that in place, and changes only what deploy made (tags).
Submodules: :mod:`.keys`, :mod:`.package`, :mod:`.bucket`, :mod:`.iam`, :mod:`.function`,
:mod:`.permissions` (the IAM policies the deployer and the users need). What the aws backend
needs too (naming and limits, runtimes and versions, the ping, function states) is
:mod:`dask_lambda.deployment`'s.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, DeployError

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
        from ..deployment import names
        from ..deployment.region import default_region
        from ..settings import parse_bucket

        name, prefix = parse_bucket(bucket)
        region = region or default_region()
        if not region:
            raise DeployError(f"no AWS region: add --region, e.g. `dask-lambda deploy --bucket "
                              f"{bucket} --region us-east-1`, or set AWS_REGION")
        return cls(name, prefix, function or names.DEFAULT_FUNCTION, region)

    def command(self, verb: str = "deploy", *extra: str) -> str:
        from ..deployment import names

        words = names.deploy_command(self.bucket, self.prefix, self.function, self.region, *extra)
        return words.replace("dask-lambda deploy", f"dask-lambda {verb}", 1)


#: Error codes of a refused request (credentials fine, permission missing).
_DENIED = {"AccessDenied", "AccessDeniedException", "403", "Forbidden",
           "UnauthorizedOperation", "AuthorizationError"}
#: Error codes of credentials AWS does not accept.
_BAD_CREDENTIALS = {"UnrecognizedClientException", "InvalidClientTokenId", "ExpiredToken",
                    "ExpiredTokenException", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                    "InvalidSignatureException"}


def _clients(target: Target) -> dict[str, Any]:
    import botocore.session

    session = botocore.session.get_session()
    return {name: session.create_client(name, region_name=target.region) for name in
            ("s3", "iam", "lambda", "logs", "sts", "secretsmanager", "kms")}


@contextlib.contextmanager
def _refusals(clients: dict[str, Any], target: Target, verb: str) -> Iterator[None]:
    """Report AWS's refusals as the permission that is missing (any call of ``verb``)."""
    from dask_lambda_handler import s3errors

    from . import permissions

    try:
        yield
    except Exception as exc:
        code = s3errors.error_code(exc)
        operation = getattr(exc, "operation_name", "")
        if not code or not operation or code not in _DENIED | _BAD_CREDENTIALS:
            raise
        service = next((name for name, client in clients.items()
                        if operation in client.meta.service_model.operation_names), "")
        said = str(getattr(exc, "response", {}).get("Error", {}).get("Message") or "")
        if code in _BAD_CREDENTIALS:
            raise DeployError(
                f"AWS rejected the credentials ({operation}: {code}): they are wrong or "
                "expired. Check `aws sts get-caller-identity`, refresh them (`aws sso login`), "
                "or select another profile with AWS_PROFILE=name") from None
        action = permissions.action_of(operation, service)
        raise DeployError(
            f"AWS refused {action} ({operation}: {code}{': ' + said if said else ''}). "
            f"`dask-lambda {verb}` needs the permissions listed in the README (Run on AWS: "
            f"Permissions); `{target.command('permissions')}` prints them for this "
            "deployment") from None


def deploy(target: Target, *, memory: int = 2048, timeout: int = 300, arch: str = "x86_64",
           trigger: bool = False, extra_packages: tuple[str, ...] = (), glibc: str | None = None,
           package: Path | None = None, image: str | None = None,
           attach_policies: tuple[str, ...] = (), detach_policies: tuple[str, ...] = (),
           expire_days: int | None = None, rotate_key: bool = False,
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
    attach_policies, detach_policies
        Managed policy ARNs to attach to the role (e.g. for the tasks' own data), and to
        detach from it; every other attached policy stays.
    expire_days
        Days after which the lifecycle rule expires dask-lambda's objects.
    rotate_key
        Replace the signing key with a new one.
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
    from ..deployment import compat, names
    from ..errors import ImageNeededError, PackageTooLargeError
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
    with _refusals(c, target, "deploy"):
        return _deploy(c, target, spec.runtime, memory=memory, timeout=timeout, arch=arch,
                       trigger=trigger, package=package, image=image,
                       attach=tuple(attach_policies), detach=tuple(detach_policies),
                       expire_days=expire_days or names.EXPIRE_DAYS, rotate_key=rotate_key,
                       out=out)


def _deploy(c: dict[str, Any], target: Target, runtime: str, *, memory: int, timeout: int,
            arch: str, trigger: bool, package: Path | None, image: str | None,
            attach: tuple[str, ...], detach: tuple[str, ...], expire_days: int,
            rotate_key: bool, out: Out) -> dict:
    from dask_lambda_handler import env as handler_env
    from dask_lambda_handler import protocol

    from .. import __version__
    from ..deployment import compat, names, ping, states
    from ..errors import VersionMismatchError
    from . import bucket, function, iam, keys

    account = c["sts"].get_caller_identity()["Account"]
    # Everything that would stop the deployment is checked before anything is changed.
    current = function.get(c["lambda"], target.function)
    if current is not None:
        function.check_ours(current, target.function)
        function.check_package_type(current, target.function, image=image is not None)
    iam.check_ours(c["iam"], target.function)
    secret = keys.find_secret(c["secretsmanager"], target.function)
    if current is not None and current.get("State") == "Inactive":
        states.wake(c["lambda"], target.function, out=out)

    created = bucket.ensure(c["s3"], target.bucket, target.region, target.prefix,
                            target.function)
    secure = created or bucket.created_by_deploy(c["s3"], target.bucket)
    bucket.configure(c["s3"], target.bucket, target.prefix, expire_days, secure=secure)
    roots = (f"{names.jobs_prefix(target.prefix)}, {names.results_prefix(target.prefix)}, "
             f"{names.runs_prefix(target.prefix)}")
    if created:
        out(f"created bucket {target.bucket} in {target.region}")
    out(f"bucket {target.bucket}: " + ("public access blocked, encryption on, " if secure else
        "public access and encryption settings left as they are (deploy did not create it), ")
        + f"lifecycle rules on {roots}")
    kms_arn = _kms_key_arn(c, target, account, bucket.kms_key(c["s3"], target.bucket))
    if kms_arn:
        out(f"bucket {target.bucket} encrypts with the KMS key {kms_arn}: the role may use it "
            "through S3; users of this deployment need kms:GenerateDataKey and kms:Decrypt "
            "on it too")

    old_key = ((current or {}).get("Environment") or {}).get("Variables", {}).get(
        protocol.SIGNING_KEY_ENV)
    if rotate_key:
        key = keys.new_key()
        out("signing key: replaced by a new one (--rotate-key)")
    elif secret is not None:
        key = keys.read_secret(c["secretsmanager"], secret)
    elif old_key:
        key = keys.new_key()
        out("signing key: the old one was in the function's configuration, which every user "
            "of the function may read; replaced by a new one, kept in Secrets Manager")
    else:
        key = keys.read_file(target.function) or keys.new_key()
    secret_arn, version = keys.store(c["secretsmanager"], target.function, key, secret)
    try:
        held = keys.read_file(target.function)
    except ConfigurationError:  # unreadable: save says what is in the way, or replaces it
        held = None
    key_path = keys.save(target.function, key)
    if held is not None and held != key and not rotate_key:
        out(f"signing key: {key_path} held another key; it now holds the function's")

    policy = iam.handler_policy(target.bucket, target.prefix, target.function, target.region,
                                account, secret_arn=secret_arn, kms_key_arn=kms_arn)
    role_arn, _, changes = iam.ensure_role(c["iam"], target.function, policy, attach, detach)
    for line in changes or [f"role {names.role_name(target.function)}: unchanged"]:
        out(line)
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

    conf, what = function.ensure(
        c["lambda"], function=target.function, role_arn=role_arn, code=code, runtime=runtime,
        arch=arch, memory=memory, timeout=timeout,
        env={handler_env.KEY_SECRET_ENV: secret_arn, handler_env.KEY_VERSION_ENV: version,
             handler_env.KEY_ID_ENV: handler_env.key_id(key)},
        description=f"dask-lambda {__version__} handler ({runtime})", code_sha=sha,
        current=current, out=out)
    out(f"{what} function {target.function} ({'image' if image else runtime}, {arch}, "
        f"{memory} MB, {timeout} s)")

    function.set_s3_permission(c["lambda"], target.function, target.bucket, target.prefix,
                               account, allow=trigger)
    if trigger:
        function.set_retries(c["lambda"], target.function)
    bucket.set_trigger(c["s3"], target.bucket, target.prefix, target.function,
                       conf["FunctionArn"] if trigger else None)
    if trigger:
        out(f"S3 trigger: objects under {names.jobs_prefix(target.prefix)} ending in "
            f"{names.TRIGGER_SUFFIX} invoke {target.function}")

    answer = function.ping_answer(c["lambda"], target.function)
    versions = (answer or {}).get("versions") or {}
    diffs = compat.differences(versions)
    if diffs:
        raise VersionMismatchError(
            f"the deployed handler does not match this environment ({'; '.join(diffs)}); "
            f"the package did not install as expected. Run `{target.command()}` again.")
    problem = ping.key_problem(answer, handler_env.key_id(key))
    if problem:
        raise DeployError(f"the deployed function cannot use its signing key: {problem}")
    out(f"signing key: {key_path} (and the secret {names.secret_name(target.function)})")
    return {"function_arn": conf["FunctionArn"], "role_arn": role_arn,
            "key_file": str(key_path), "function": what, "versions": versions}


def _kms_key_arn(c: dict[str, Any], target: Target, account: str, key: str | None
                 ) -> str | None:
    """The ARN of the customer managed KMS key ``key`` (an id, ARN or alias), or None for
    none or the AWS managed ``aws/s3`` key. IAM policies name keys by key ARN."""
    from dask_lambda_handler import s3errors

    if key is None:
        return None
    if key.startswith("arn:") and ":key/" in key:
        return key
    try:
        meta = c["kms"].describe_key(KeyId=key)["KeyMetadata"]
    except Exception as exc:
        if s3errors.error_code(exc) not in _DENIED:
            raise
        if not key.startswith(("alias/", "arn:")):  # a bare key id: its ARN is known
            return f"arn:aws:kms:{target.region}:{account}:key/{key}"
        raise DeployError(
            f"the bucket {target.bucket} encrypts new objects with the KMS key {key}, and "
            "deploy may not look it up (kms:DescribeKey) to let the function's role use it. "
            "Allow kms:DescribeKey for these credentials, or set the bucket's default "
            "encryption to name the key by its ARN") from None
    if meta.get("KeyManager") == "AWS":  # aws/s3: every principal of the account may use it
        return None
    return str(meta["Arn"])


def _upload(s3: Any, target: Target, package: Path, sha: str, out: Out) -> None:
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


def _too_large(target: Target, size: int, context: Path, arch: str) -> str:
    from ..deployment import names

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
    c = _clients(target)
    with _refusals(c, target, "destroy"):
        return _destroy(c, target, out)


def _destroy(c: dict[str, Any], target: Target, out: Out) -> list[str]:
    from ..deployment import names
    from . import bucket, function, iam, keys

    done: list[str] = []
    current = function.get(c["lambda"], target.function)
    if current is not None:
        function.check_ours(current, target.function)
        function.set_s3_permission(c["lambda"], target.function, target.bucket, target.prefix,
                                   "", allow=False)
    done += bucket.remove(c["s3"], target.bucket, target.prefix, target.function)
    done += function.delete(c["lambda"], c["logs"], target.function)
    if iam.delete_role(c["iam"], target.function):
        done.append(f"deleted the role {names.role_name(target.function)}")
    if keys.delete_secret(c["secretsmanager"], target.function):
        done.append(f"deleted the secret {names.secret_name(target.function)}")
    path = names.key_file(target.function)
    if path.exists() or path.is_symlink():
        path.unlink()
        done.append(f"deleted the key file {path}")
    for line in done or ["nothing to remove: no dask-lambda deployment found for "
                         f"{names.bucket_url(target.bucket, target.prefix)} and "
                         f"{target.function}"]:
        out(line)
    return done


def status(target: Target, *, out: Out = print) -> bool:
    """Print what exists and whether it matches this environment; True if all is ready.

    An Inactive function (idle for weeks) is woken, as the client would.
    """
    c = _clients(target)
    with _refusals(c, target, "status"):
        return _status(c, target, out)


def _status(c: dict[str, Any], target: Target, out: Out) -> bool:
    from dask_lambda_handler import env as handler_env
    from dask_lambda_handler import protocol

    from ..deployment import compat, names, ping, states
    from . import bucket, function, iam, keys

    problems: list[str] = []

    def line(ok: bool | None, text: str) -> None:
        """ok: True, False (a problem), None (for information)."""
        out(f"{'ok ' if ok else '-- ' if ok is None else 'NO '} {text}")
        if ok is False:
            problems.append(text)

    where = bucket.region(c["s3"], target.bucket)
    in_region = not where or where == target.region
    line(where is not None and in_region, f"bucket {target.bucket}" + (
        f" (in {where}: the function must be in its region, deploy with --region {where})"
        if not in_region else ""))
    kms = None
    if where is not None:
        if bucket.created_by_deploy(c["s3"], target.bucket):
            line(bucket.public_access_blocked(c["s3"], target.bucket), "  public access blocked")
            enc = bucket.encryption(c["s3"], target.bucket)
            line(enc is not None, f"  default encryption ({enc or 'none'})")
        else:
            enc = bucket.encryption(c["s3"], target.bucket)
            line(None, "  not created by deploy: its public access block and encryption are "
                 f"yours to set (default encryption: {enc or 'none'})")
        rules = bucket.our_lifecycle_rules(c["s3"], target.bucket, target.prefix)
        line(len(rules) == 3, f"  lifecycle rules expiring jobs/, results/, runs/ ({len(rules)})")
        kms = bucket.kms_key(c["s3"], target.bucket)
    role = iam.describe(c["iam"], target.function)
    line(role is not None and role["ours"] and role["policy"] is not None,
         f"role {names.role_name(target.function)} with its policy" + (
             " (not made by deploy: deploy will not change it)"
             if role is not None and not role["ours"] else ""))
    if kms is not None and role is not None and role["policy"] is not None:
        grants = [s for s in role["policy"].get("Statement", ()) if s.get("Sid") == "BucketKmsKey"]
        line(bool(grants), f"  may use the bucket's KMS key {kms} through S3")
    conf = function.get(c["lambda"], target.function)
    if conf is not None and conf.get("State") == "Inactive":
        out(f"--  function {target.function} was Inactive (no invocations for a long time)")
        conf = dict(conf, **states.wake(c["lambda"], target.function, out=out))
    line(conf is not None, f"function {target.function}" + (
        f" ({conf.get('Runtime') or 'image'}, {conf['MemorySize']} MB, {conf['Timeout']} s, "
        f"{conf.get('State', 'Active')})" if conf else ""))
    if conf is not None:
        answer = function.ping_answer(c["lambda"], target.function)
        versions = (answer or {}).get("versions")
        diffs = compat.differences(versions or {})
        line(versions is not None and not diffs,
             "  handler matches this environment" if versions and not diffs else
             f"  handler differs from this environment: {'; '.join(diffs)}")
        variables = (conf.get("Environment") or {}).get("Variables", {})
        if variables.get(protocol.SIGNING_KEY_ENV):
            line(False, "  the signing key is in the function's configuration, which every "
                 "user of the function may read: deploy again to move it to Secrets Manager "
                 "(and replace it)")
        else:
            local_key = keys.read_file(target.function)
            line(local_key is not None and variables.get(handler_env.KEY_ID_ENV)
                 == handler_env.key_id(local_key),
                 f"  signing key {names.key_file(target.function)} matches the function's"
                 + ("" if local_key is not None else " (no such file)"))
            problem = ping.key_problem(answer, variables.get(handler_env.KEY_ID_ENV))
            line(problem is None, "  the function can read its signing key" if problem is None
                 else f"  the function cannot use its signing key: {problem}")
        if where is not None:
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
