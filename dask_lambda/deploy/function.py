"""The Lambda function: created or updated in place, its log group, and the S3 permission."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from dask_lambda_handler import s3errors

from ..errors import DeployError
from . import names

_ROLE_PROPAGATION = 90.0  # seconds a new IAM role may take before Lambda can assume it


_code = s3errors.error_code  # of a botocore ClientError


def get(lam: Any, function: str) -> dict | None:
    """The function's configuration (with ``Tags``), or None."""
    try:
        found = lam.get_function(FunctionName=function)
    except lam.exceptions.ResourceNotFoundException:
        return None
    conf = found["Configuration"]
    conf["Tags"] = found.get("Tags") or {}
    return conf


def sha256_b64(path: Path) -> str:
    """Lambda's ``CodeSha256`` of a zip file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return base64.b64encode(digest.digest()).decode()


def ensure(lam: Any, *, function: str, role_arn: str, code: dict, runtime: str | None,
           arch: str, memory: int, timeout: int, env: dict, description: str,
           code_sha: str | None) -> tuple[dict, str]:
    """Create the function, or update its code (if changed) and configuration.

    ``code`` is ``{"S3Bucket", "S3Key"}`` for a zip or ``{"ImageUri"}`` for an image.
    Returns (configuration, "created" | "updated" | "unchanged").
    """
    config: dict = {"Role": role_arn, "MemorySize": memory, "Timeout": timeout,
                    "Environment": {"Variables": env}, "Description": description}
    if "ImageUri" not in code:
        config.update(Runtime=runtime, Handler=names.HANDLER)
    current = get(lam, function)
    if current is None:
        options = dict(config, FunctionName=function, Architectures=[arch], Code=code,
                       PackageType="Image" if "ImageUri" in code else "Zip",
                       Tags={names.TAG_KEY: names.TAG_VALUE})
        conf = _retry_role(lambda: lam.create_function(**options))
        lam.get_waiter("function_active_v2").wait(FunctionName=function)
        return conf, "created"
    if current["Tags"].get(names.TAG_KEY) != names.TAG_VALUE:
        raise DeployError(
            f"a Lambda function {function!r} exists that dask-lambda deploy did not make; "
            f"deploy under another name: dask-lambda deploy ... --function {function}-dask")
    changed = False
    if code_sha is None or current.get("CodeSha256") != code_sha or \
            current.get("Architectures", ["x86_64"]) != [arch]:
        lam.update_function_code(FunctionName=function, Architectures=[arch], **code)
        lam.get_waiter("function_updated_v2").wait(FunctionName=function)
        changed = True
    wanted = {k: v for k, v in config.items()}
    have = {k: current.get(k) for k in wanted}
    if have != wanted:
        _retry_role(lambda: lam.update_function_configuration(FunctionName=function, **wanted))
        lam.get_waiter("function_updated_v2").wait(FunctionName=function)
        changed = True
    return lam.get_function_configuration(FunctionName=function), \
        "updated" if changed else "unchanged"


def _retry_role(call: Any) -> Any:
    """Call, retrying while a new role cannot be assumed yet (IAM is eventually consistent)."""
    deadline = time.monotonic() + _ROLE_PROPAGATION
    delay = 2.0
    while True:
        try:
            return call()
        except Exception as exc:
            if _code(exc) != "InvalidParameterValueException" or "role" not in str(exc).lower() \
                    or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(10.0, delay * 1.5)


def set_retries(lam: Any, function: str) -> None:
    """No Lambda retries of asynchronous (S3-triggered) invocations: the client retries.

    Lambda also keeps the events it cannot run yet (throttled) and retries them for up to
    MaximumEventAgeInSeconds (default 6 hours; 60-21,600): by the notification grace the
    client has sent the job again, so older events are dropped (the handler would refuse
    their jobs anyway).
    """
    from .. import config

    grace = float(config.get("aws.notification-grace"))
    lam.put_function_event_invoke_config(FunctionName=function, MaximumRetryAttempts=0,
                                         MaximumEventAgeInSeconds=int(min(21600, max(60, grace))))


def set_s3_permission(lam: Any, function: str, bucket: str, prefix: str, account: str,
                      allow: bool) -> None:
    """Allow (or no longer allow) S3 notifications from ``bucket`` to invoke ``function``."""
    sid = names.permission_id(bucket, prefix)
    try:
        lam.remove_permission(FunctionName=function, StatementId=sid)
    except lam.exceptions.ResourceNotFoundException:
        pass
    if allow:
        lam.add_permission(FunctionName=function, StatementId=sid,
                           Action="lambda:InvokeFunction", Principal="s3.amazonaws.com",
                           SourceArn=f"arn:aws:s3:::{bucket}", SourceAccount=account)


def permissions(lam: Any, function: str) -> list[dict]:
    try:
        return json.loads(lam.get_policy(FunctionName=function)["Policy"])["Statement"]
    except lam.exceptions.ResourceNotFoundException:
        return []


def ensure_log_group(logs: Any, function: str) -> None:
    """The function's log group with a retention, so logs do not cost forever."""
    group = names.log_group(function)
    try:
        logs.create_log_group(logGroupName=group, tags={names.TAG_KEY: names.TAG_VALUE})
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    logs.put_retention_policy(logGroupName=group, retentionInDays=names.LOG_RETENTION_DAYS)


def ping(lam: Any, function: str) -> dict | None:
    """The deployed handler's versions, or None if it does not answer like a dask-lambda handler."""
    resp = lam.invoke(FunctionName=function, Payload=b'{"op": "ping"}')
    body = resp["Payload"].read()
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    if resp.get("FunctionError") or not isinstance(answer, dict):
        return None
    return answer.get("versions")


def delete(lam: Any, logs: Any, function: str) -> list[str]:
    """Delete the function (if deploy made it) and its log group; returns what it did."""
    done: list[str] = []
    conf = get(lam, function)
    if conf is not None:
        if conf["Tags"].get(names.TAG_KEY) != names.TAG_VALUE:
            raise DeployError(f"the Lambda function {function!r} was not made by dask-lambda "
                              "deploy; it was left alone")
        lam.delete_function(FunctionName=function)
        done.append(f"deleted the function {function}")
    try:
        logs.delete_log_group(logGroupName=names.log_group(function))
        done.append(f"deleted the log group {names.log_group(function)}")
    except logs.exceptions.ResourceNotFoundException:
        pass
    return done
