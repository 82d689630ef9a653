"""``deploy`` and ``destroy``: make, update and remove what the aws backend needs, in steps.

Everything that would stop a deployment is checked (:func:`_preflight`) before anything is
changed; then the bucket, the signing key, the role, the function and the trigger, each made
or brought up to date; last, the deployed handler is asked whether it matches this machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, DeployError
from .target import DENIED, Out, Target, clients, refusals


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
    from . import artifact
    from . import package as pkg

    _check_sizes(target, memory, timeout, arch)
    spec = pkg.PackageSpec(compat.local_python(), arch, glibc, tuple(extra_packages),
                           tuple(aws_services or pkg.AWS_SERVICES))
    if image is None and package is None:
        package = artifact.build_zip(target, spec, out)
    c = clients(target)
    with refusals(c, target, "deploy"):
        return _deploy(c, target, spec.runtime, memory=memory, timeout=timeout, arch=arch,
                       trigger=trigger, package=package, image=image,
                       attach=tuple(attach_policies), detach=tuple(detach_policies),
                       expire_days=expire_days or names.EXPIRE_DAYS, rotate_key=rotate_key,
                       out=out)


def _check_sizes(target: Target, memory: int, timeout: int, arch: str) -> None:
    """Refuse a memory, timeout or architecture Lambda does not take, naming a valid one."""
    from ..deployment import names

    lo, hi = names.MEMORY_RANGE
    if not lo <= memory <= hi:
        raise DeployError(f"--memory {memory} is outside Lambda's {lo}-{hi} MB: e.g. "
                          f"`{target.command('deploy', '--memory', '2048')}`")
    if not 1 <= timeout <= names.MAX_TIMEOUT:
        raise DeployError(f"--timeout {timeout} is outside Lambda's 1-{names.MAX_TIMEOUT} s: "
                          f"e.g. `{target.command('deploy', '--timeout', '300')}`")
    if arch not in ("x86_64", "arm64"):
        raise DeployError(f"--arch must be x86_64 or arm64, not {arch!r}")


@dataclass(frozen=True)
class _Key:
    """The signing key in use, where it is kept, and the file that holds it here."""

    key: bytes
    secret_arn: str
    version: str
    path: Path


def _deploy(c: dict[str, Any], target: Target, runtime: str, *, memory: int, timeout: int,
            arch: str, trigger: bool, package: Path | None, image: str | None,
            attach: tuple[str, ...], detach: tuple[str, ...], expire_days: int,
            rotate_key: bool, out: Out) -> dict:
    from dask_lambda_handler import env as handler_env

    from .. import __version__
    from . import artifact, function

    account, current, secret = _preflight(c, target, image=image, out=out)
    kms_arn = _ensure_bucket(c, target, account, expire_days, out)
    key = _signing_key(c, target, current, secret, rotate_key, out)
    role_arn = _ensure_role(c, target, account, key, kms_arn, attach, detach, out)
    function.ensure_log_group(c["logs"], target.function)
    code, sha = artifact.function_code(c["s3"], target, package, image, out)
    conf, what = function.ensure(
        c["lambda"], function=target.function, role_arn=role_arn, code=code, runtime=runtime,
        arch=arch, memory=memory, timeout=timeout,
        env={handler_env.KEY_SECRET_ENV: key.secret_arn, handler_env.KEY_VERSION_ENV: key.version,
             handler_env.KEY_ID_ENV: handler_env.key_id(key.key)},
        description=f"dask-lambda {__version__} handler ({runtime})", code_sha=sha,
        current=current, out=out)
    out(f"{what} function {target.function} ({'image' if image else runtime}, {arch}, "
        f"{memory} MB, {timeout} s)")
    _set_trigger(c, target, account, conf["FunctionArn"] if trigger else None, out)
    versions = _check_handler(c, target, key, out)
    return {"function_arn": conf["FunctionArn"], "role_arn": role_arn,
            "key_file": str(key.path), "function": what, "versions": versions}


def _preflight(c: dict[str, Any], target: Target, *, image: str | None, out: Out
               ) -> tuple[str, dict | None, dict | None]:
    """Check, before anything is changed, that what exists is deploy's and of the right kind;
    wake an Inactive function. Returns the account, the function's configuration (None for
    none) and the signing key's secret (None for none)."""
    from ..deployment import states
    from . import function, iam, keys

    account = c["sts"].get_caller_identity()["Account"]
    current = function.get(c["lambda"], target.function)
    if current is not None:
        function.check_ours(current, target.function)
        function.check_package_type(current, target.function, image=image is not None)
    iam.check_ours(c["iam"], target.function)
    secret = keys.find_secret(c["secretsmanager"], target.function)
    if current is not None and current.get("State") == "Inactive":
        states.wake(c["lambda"], target.function, out=out)
    return account, current, secret


def _ensure_bucket(c: dict[str, Any], target: Target, account: str, expire_days: int,
                   out: Out) -> str | None:
    """Make or configure the bucket; returns the ARN of its KMS key for the role (or None)."""
    from ..deployment import names
    from . import bucket

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
    return kms_arn


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
        if s3errors.error_code(exc) not in DENIED:
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


def _signing_key(c: dict[str, Any], target: Target, current: dict | None,
                 secret: dict | None, rotate_key: bool, out: Out) -> _Key:
    """Choose the signing key (kept, or new where asked or where the old one was exposed),
    store it in Secrets Manager and in the local key file."""
    from dask_lambda_handler import protocol

    from . import keys

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
    return _Key(key, secret_arn, version, key_path)


def _ensure_role(c: dict[str, Any], target: Target, account: str, key: _Key,
                 kms_arn: str | None, attach: tuple[str, ...], detach: tuple[str, ...],
                 out: Out) -> str:
    """Make or update the function's role and its policy; returns the role's ARN."""
    from ..deployment import names
    from . import iam

    policy = iam.handler_policy(target.bucket, target.prefix, target.function, target.region,
                                account, secret_arn=key.secret_arn, kms_key_arn=kms_arn)
    role_arn, _, changes = iam.ensure_role(c["iam"], target.function, policy, attach, detach)
    for line in changes or [f"role {names.role_name(target.function)}: unchanged"]:
        out(line)
    return role_arn


def _set_trigger(c: dict[str, Any], target: Target, account: str, function_arn: str | None,
                 out: Out) -> None:
    """Set up the S3 trigger of ``function_arn``, or remove it (None)."""
    from ..deployment import names
    from . import bucket, function

    trigger = function_arn is not None
    function.set_s3_permission(c["lambda"], target.function, target.bucket, target.prefix,
                               account, allow=trigger)
    if trigger:
        function.set_retries(c["lambda"], target.function)
    bucket.set_trigger(c["s3"], target.bucket, target.prefix, target.function, function_arn)
    if trigger:
        out(f"S3 trigger: objects under {names.jobs_prefix(target.prefix)} ending in "
            f"{names.TRIGGER_SUFFIX} invoke {target.function}")


def _check_handler(c: dict[str, Any], target: Target, key: _Key, out: Out) -> Any:
    """Ask the deployed handler its versions and whether it can use its key; returns them."""
    from dask_lambda_handler import env as handler_env

    from ..deployment import compat, names, ping
    from ..errors import VersionMismatchError
    from . import function

    answer = function.ping_answer(c["lambda"], target.function)
    versions = (answer or {}).get("versions") or {}
    diffs = compat.differences(versions)
    if diffs:
        raise VersionMismatchError(
            f"the deployed handler does not match this environment ({'; '.join(diffs)}); "
            f"the package did not install as expected. Run `{target.command()}` again.")
    problem = ping.key_problem(answer, handler_env.key_id(key.key))
    if problem:
        raise DeployError(f"the deployed function cannot use its signing key: {problem}")
    out(f"signing key: {key.path} (and the secret {names.secret_name(target.function)})")
    return versions


def destroy(target: Target, *, out: Out = print) -> list[str]:
    """Remove what `deploy` made for ``target`` (and nothing else); returns what it did."""
    c = clients(target)
    with refusals(c, target, "destroy"):
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
