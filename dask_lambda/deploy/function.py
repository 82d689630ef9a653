"""The Lambda function: created or updated in place, its log group, and the S3 permission.

Lambda refuses an update while another is in progress (``LastUpdateStatus`` InProgress,
ResourceConflictException) and does not invoke a function that is not ``Active``: deploy
waits for both (:mod:`dask_lambda.deployment.states`, which also wakes a function that went
``Inactive`` after weeks without invocations).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dask_lambda_handler import s3errors

from ..deployment import names
from ..deployment import ping as ping_request
from ..deployment.states import wait_ready
from ..errors import DeployError

_ROLE_PROPAGATION = 90.0  # seconds a new IAM role may take before Lambda can assume it

_code = s3errors.error_code  # of a botocore ClientError
_DENIED = ("AccessDeniedException", "AccessDenied")


def get(lam: Any, function: str) -> dict | None:
    """The function's configuration (with ``Tags``), or None.

    The tags come from ListTags, called explicitly: GetFunction leaves them out for a
    caller without ``lambda:ListTags``, and deploy would then take its own function for
    someone else's.
    """
    try:
        found = lam.get_function(FunctionName=function)
    except lam.exceptions.ResourceNotFoundException:
        return None
    conf = found["Configuration"]
    try:
        conf["Tags"] = lam.list_tags(Resource=conf["FunctionArn"]).get("Tags") or {}
    except Exception as exc:
        if _code(exc) not in _DENIED:
            raise
        raise DeployError(
            f"AWS refused lambda:ListTags on the function {function!r} ({_code(exc)}): deploy "
            "and destroy read its tags to tell a function they made from someone else's. "
            "Allow lambda:ListTags on it for these credentials (README, Run on AWS: "
            "Permissions; `dask-lambda permissions` prints the policy)") from None
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
           code_sha: str | None, current: dict | None = None,
           out: Callable[[str], None] | None = None) -> tuple[dict, str]:
    """Create the function, or update its code (if changed) and configuration.

    ``code`` is ``{"S3Bucket", "S3Key"}`` for a zip or ``{"ImageUri"}`` for an image;
    ``current`` is the function's configuration from `get` (None: read it here).
    Returns (configuration, "created" | "updated" | "unchanged").
    """
    config: dict = {"Role": role_arn, "MemorySize": memory, "Timeout": timeout,
                    "Environment": {"Variables": env}, "Description": description}
    if "ImageUri" not in code:
        config.update(Runtime=runtime, Handler=names.HANDLER)
    if current is None:
        current = get(lam, function)
    if current is None:
        options = dict(config, FunctionName=function, Architectures=[arch], Code=code,
                       PackageType="Image" if "ImageUri" in code else "Zip",
                       Tags={names.TAG_KEY: names.TAG_VALUE})
        with _image_access(code):
            conf = _retry_role(lambda: lam.create_function(**options))
        wait_ready(lam, function, out=out)
        return conf, "created"
    check_ours(current, function)
    check_package_type(current, function, image="ImageUri" in code)
    changed = False
    if code_sha is None or current.get("CodeSha256") != code_sha or \
            current.get("Architectures", ["x86_64"]) != [arch]:
        with _image_access(code):
            _updating(lam, function, out, lambda: lam.update_function_code(
                FunctionName=function, Architectures=[arch], **code))
        changed = True
    wanted = {k: v for k, v in config.items()}
    have = {k: current.get(k) for k in wanted}
    if have != wanted:
        _updating(lam, function, out, lambda: _retry_role(
            lambda: lam.update_function_configuration(FunctionName=function, **wanted)))
        changed = True
    return wait_ready(lam, function, out=out), "updated" if changed else "unchanged"


@contextlib.contextmanager
def _image_access(code: dict) -> Iterator[None]:
    """Name the ECR permissions when Lambda may not pull an image (it answers
    InvalidParameterValueException, not AccessDenied)."""
    try:
        yield
    except Exception as exc:
        if "ImageUri" not in code or _code(exc) != "InvalidParameterValueException" or \
                "ecr" not in str(exc).lower():
            raise
        raise DeployError(
            f"Lambda may not use the image {code['ImageUri']} ({exc}): the repository must be "
            "in the function's region, and whoever deploys needs ECR access to it (the third "
            "policy `dask-lambda permissions` prints; README, Run on AWS: Permissions)"
        ) from None


def check_ours(current: dict, function: str) -> None:
    """Raise `DeployError` unless deploy made this function (its tag)."""
    if not names.tagged(current.get("Tags")):
        raise DeployError(
            f"a Lambda function {function!r} exists that dask-lambda deploy did not make; "
            f"deploy under another name: dask-lambda deploy ... --function {function}-dask")


def check_package_type(current: dict, function: str, *, image: bool) -> None:
    """Raise `DeployError` if deploying would switch the function between zip and image.

    A function's package type is set when it is created and cannot change (CreateFunction's
    ``PackageType``; Lambda: "You cannot change the deployment package type of an existing
    function").
    """
    have = current.get("PackageType") or "Zip"
    want = "Image" if image else "Zip"
    if have == want:
        return
    was = "an image" if have == "Image" else "a zip package"
    how = "--image" if image else "a zip package (without --image)"
    raise DeployError(
        f"the Lambda function {function!r} was deployed as {was}, "
        f"and Lambda cannot switch an existing function to {how}. Deploy under another name "
        f"(`dask-lambda deploy ... --function {function}-{want.lower()}`), or delete the "
        f"function first (`aws lambda delete-function --function-name {function}`), then run "
        "deploy again")


def _updating(lam: Any, function: str, out: Callable[[str], None] | None,
              call: Callable[[], Any]) -> Any:
    """Run an update once the function accepts one (no update in progress), then wait for it.

    Lambda answers ResourceConflictException while an update (ours, or another deploy's)
    is in progress; waiting for LastUpdateStatus first, and once more on a conflict, covers
    an update that started in between.
    """
    wait_ready(lam, function, out=out)
    for attempt in range(3):
        try:
            answer = call()
            break
        except Exception as exc:
            if _code(exc) != "ResourceConflictException" or attempt == 2:
                raise
            wait_ready(lam, function, out=out)
    conf = wait_ready(lam, function, out=out)
    if conf.get("LastUpdateStatus") == "Failed":  # Lambda kept the previous code and settings
        raise DeployError(
            f"Lambda could not apply the update of the function {function!r} "
            f"({conf.get('LastUpdateStatusReasonCode')}: {conf.get('LastUpdateStatusReason')}); "
            "it still runs the previous code and settings. Fix what the reason names, then run "
            "deploy again")
    return answer


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
    from .. import settings

    grace = float(settings.read("notification_grace"))
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


def ping_answer(lam: Any, function: str) -> dict | None:
    """The deployed handler's ping answer (``versions``, ``key``), or None if it does not
    answer like a dask-lambda handler."""
    resp = lam.invoke(FunctionName=function, Payload=ping_request.PING)
    return ping_request.answer(resp["Payload"].read(), resp.get("FunctionError"))


def ping(lam: Any, function: str) -> dict | None:
    """The deployed handler's versions, or None if it does not answer like a dask-lambda handler."""
    return (ping_answer(lam, function) or {}).get("versions")


def delete(lam: Any, logs: Any, function: str) -> list[str]:
    """Delete the function (if deploy made it) and its log group; returns what it did."""
    done: list[str] = []
    conf = get(lam, function)
    if conf is not None:
        if not names.tagged(conf.get("Tags")):
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
