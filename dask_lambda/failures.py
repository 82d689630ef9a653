"""What Lambda's answers mean: the one map from Lambda-shaped failures to dask-lambda's typed
errors (the classes are in :mod:`dask_lambda.errors`), each message naming the fix.

A synchronous invoke fails in one of two ways (Invoke API reference):

* Lambda refused it: an HTTP error status and an error code (`api_error`). Codes and
  statuses are those of botocore's Lambda service model (``Invoke``'s errors) and of the
  errors common to every AWS API (403 ``ExpiredTokenException``,
  ``UnrecognizedClientException``, ``InvalidSignatureException``...);
* the function ran and failed: HTTP 200 with ``X-Amz-Function-Error``, a payload
  ``{"errorType", "errorMessage"}`` and the log tail (``LogType=Tail``: the last 4 KB of the
  invocation's log), whose ``REPORT`` line says how long it was billed and how much memory it
  used (`function_error`, `parse_report`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from . import limits
from .errors import (
    DaskLambdaError,
    FunctionError,
    HandlerCrashedError,
    LambdaOutOfMemoryError,
    LambdaThrottledError,
    LambdaTimeoutError,
    PermissionDeniedError,
    ResultLostError,
)


def longer_timeout(timeout: float) -> int:
    """A function timeout to advise for a task that timed out at ``timeout`` s: twice as long,
    within Lambda's limit."""
    return int(min(limits.MAX_TIMEOUT_S, timeout * 2))


def more_memory(memory: int) -> int:
    """A memory (MB) to advise for a task that ran out of ``memory``: twice as much, within
    Lambda's limit."""
    return min(limits.MEMORY_MB[1], memory * 2)


# -- the REPORT line --------------------------------------------------------------------------

#: ``REPORT RequestId: <id>\tDuration: 395.99 ms\tBilled Duration: 662 ms\tMemory Size: 512 MB
#: \tMax Memory Used: 301 MB\tInit Duration: 265.72 ms`` (Lambda's "Monitoring and
#: troubleshooting" docs; Init Duration only after a cold start). Since 2025-08-01 Billed
#: Duration includes the INIT phase for zip packages on managed runtimes too (AWS Compute
#: Blog, "AWS Lambda standardizes billing for INIT phase").
_REPORT_FIELDS = {
    "duration_ms": re.compile(r"RequestId: \S+\s+Duration: ([\d.]+) ms"),
    "billed_ms": re.compile(r"Billed Duration: ([\d.]+) ms"),
    "memory_mb": re.compile(r"Memory Size: (\d+) MB"),
    "max_memory_mb": re.compile(r"Max Memory Used: (\d+) MB"),
    "init_ms": re.compile(r"Init Duration: ([\d.]+) ms"),
}


@dataclass(frozen=True)
class Report:
    """The figures of an invocation's ``REPORT`` line (``None``: not in the log tail).

    Attributes
    ----------
    duration_ms
        The handler's duration.
    billed_ms
        What Lambda billed (whole ms; the INIT phase included).
    memory_mb, max_memory_mb
        The function's memory and the most the invocation used.
    init_ms
        The INIT phase of a cold start.
    """

    duration_ms: float | None = None
    billed_ms: int | None = None
    memory_mb: int | None = None
    max_memory_mb: int | None = None
    init_ms: float | None = None


def parse_report(log: str) -> Report:
    """The last ``REPORT`` line of a log tail (an empty `Report` if it has none).

    Examples
    --------
    >>> parse_report("START...\\nREPORT RequestId: r\\tDuration: 395.99 ms\\tBilled Duration: "
    ...              "662 ms\\tMemory Size: 512 MB\\tMax Memory Used: 301 MB\\tInit Duration: "
    ...              "265.72 ms\\n").billed_ms
    662
    """
    at = log.rfind("REPORT RequestId:")  # on every invoke's answer: no more than this line
    if at < 0:
        return Report()
    line = log[at:].split("\n", 1)[0]
    values: dict = {}
    for name, pattern in _REPORT_FIELDS.items():
        found = pattern.search(line)
        if found:
            values[name] = float(found.group(1))
    for name in ("billed_ms", "memory_mb", "max_memory_mb"):
        if name in values:
            values[name] = int(math.ceil(values[name]))
    return Report(**values)


# -- the function ran and failed --------------------------------------------------------------

_TIMED_OUT = re.compile(r"Task timed out after ([\d.]+) seconds")
_CRASH_TYPES = {"Runtime.ExitError", "Runtime.Unknown", "Runtime.ExitCode"}
#: Texts of a dead execution environment: AWS ("Runtime exited with error: exit status 13",
#: "signal: segmentation fault") and ministack's local executor ("Worker process died").
_CRASHED = re.compile(r"Runtime exited|exit status|signal: |[Pp]rocess died|exited unexpectedly")
#: The last line of a Python traceback: "package.module.ErrorType: message".
_RAISED = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception|Lost\w*)):", re.M)


def function_error(err: dict, log: str, *, request_id: str, memory: int, timeout: float,
                   fix: Callable[[str, int], str]) -> DaskLambdaError:
    """The typed error for a function error ``err`` of an invocation.

    The error's ``billed_ms`` attribute is what Lambda billed for it, where the log tail says.

    Parameters
    ----------
    err
        The invocation's payload: ``errorType`` and ``errorMessage``.
    log
        The invocation's log tail (may be empty).
    request_id
        Lambda's request id, quoted in the message.
    memory, timeout
        The function's configured memory (MB) and timeout (s).
    fix
        How the user gives the function another setting: ``fix("timeout", 10)`` is, for a
        deployed function, ```dask-lambda deploy ... --timeout 10```.
    """
    report = parse_report(log)
    error = _function_error(err, log, report, request_id=request_id, memory=memory,
                            timeout=timeout, fix=fix)
    error.billed_ms = report.billed_ms  # type: ignore[attr-defined]
    return error


def _function_error(err: dict, log: str, report: Report, *, request_id: str, memory: int,
                    timeout: float, fix: Callable[[str, int], str]) -> DaskLambdaError:
    etype = str(err.get("errorType") or "Unhandled")
    text = str(err.get("errorMessage") or "")
    peak = report.max_memory_mb
    timed_out = _TIMED_OUT.search(text)
    # A task at the memory limit can stall in the kernel's reclaim until the timeout stops
    # it: Lambda then reports a timeout whose Max Memory Used is the whole memory size.
    full = peak is not None and peak >= memory
    if (timed_out or etype == "Sandbox.Timedout") and not full:
        seconds = float(timed_out.group(1)) if timed_out else timeout
        return LambdaTimeoutError(
            f"Task timed out after {seconds:.2f} seconds (request {request_id}). Raise the "
            f"function timeout, e.g. {fix('timeout', longer_timeout(timeout))}, or split "
            "the task into smaller ones.")
    if etype == "Runtime.OutOfMemory" or full or (
            "signal: killed" in text and peak is not None and peak >= memory * 0.95):
        how = "timed out at the memory limit" if timed_out or etype == "Sandbox.Timedout" \
            else "out of memory"
        return LambdaOutOfMemoryError(
            f"Runtime exited: {how}. The task used {peak or memory} MB, the function's "
            f"{memory} MB (request {request_id}). Give it more, e.g. "
            f"{fix('memory', more_memory(memory))}, or use smaller partitions/chunks.")
    if etype in _CRASH_TYPES or _CRASHED.search(text):
        return HandlerCrashedError(
            f"{text or etype} while running the task (request {request_id}): the execution "
            "environment crashed or was killed.")
    if etype == "Runtime.HandlerError":  # ministack reports every exception as this: find its type
        raised = _RAISED.findall(log)
        etype = raised[-1] if raised else etype
    if etype == "InputLostError":  # an input deleted before the task read it: not the task's
        return ResultLostError(f"{text} (request {request_id})")  # fault; computed again
    return FunctionError(f"{etype}: {text} (request {request_id})", etype)


# -- Lambda refused the invoke ----------------------------------------------------------------

#: 429 Reasons (botocore's model: ``ThrottleReason``) whose limit the user can change.
_RESERVED = "ReservedFunctionConcurrentInvocationLimitExceeded"
_ACCOUNT = "ConcurrentInvocationLimitExceeded"
#: 5xx answers of an invoke that never reached the function and clear by themselves: waited
#: out like a throttle ("Wait a few moments and try the request again").
_NOT_YET = {"EC2ThrottledException", "ENINotReadyException"}
_VPC = ("the function's VPC configuration (subnets, security groups, the role's EC2 "
        "permissions) does not let Lambda connect it")
_KMS = ("Lambda cannot decrypt the function's environment variables with their KMS key: "
        "let the function's role use the key (kms:Decrypt), enable the key, or remove the "
        "customer managed key from the function's configuration")
#: 5xx answers that retrying does not clear: what is wrong, and what to do.
_STUCK = {
    "ResourceNotReadyException":
        "the function is Inactive (unused for weeks, its resources released) and Lambda is "
        "restoring it: wait until its State is Active (`aws lambda get-function-configuration "
        "--function-name {function} --query State`), then run again",
    "KMSAccessDeniedException": _KMS,
    "KMSDisabledException": _KMS,
    "KMSNotFoundException": _KMS,
    "KMSInvalidStateException": _KMS,
    "EC2AccessDeniedException": _VPC,
    "InvalidSubnetIDException": _VPC,
    "InvalidSecurityGroupIDException": _VPC,
    "SubnetIPAddressLimitReachedException": _VPC,
    "ENILimitReachedException": _VPC,
    "EC2UnexpectedException": _VPC,
    "InvalidZipFileException": "the function's package is broken: {redeploy}",
    "InvalidRuntimeException": "the function's runtime is no longer supported: {redeploy}",
}
_SKEW = re.compile(r"Signature expired|Signature not yet current", re.I)
_CHECK = "check them with `aws sts get-caller-identity`"


def api_error(code: str, status: int, text: str, *, function: str, redeploy: str,
              reason: str = "", retry_after: float | None = None,
              reserved: int | None = None, clock_skew: float | None = None) -> Exception:
    """The typed error for an invoke the Lambda API refused.

    Parameters
    ----------
    code, status, text
        The error code, HTTP status and message of the answer.
    function
        The function's name, for messages.
    redeploy
        What to do when the function is gone or broken (e.g. the deploy command).
    reason, retry_after
        A 429's ``Reason`` (body) and ``retryAfterSeconds`` (``Retry-After`` header).
    reserved
        The function's reserved concurrency, if known.
    clock_skew
        Seconds this machine's clock is ahead of Lambda's (from the answer's ``Date``), if known.
    """
    if code == "TooManyRequestsException" or status == 429:
        return _throttled(code, text, function, reason, retry_after, reserved)
    if code == "ResourceNotFoundException":
        return FunctionError(f"the Lambda function {function!r} is gone: {redeploy}", code)
    if status == 403 or code in ("AccessDeniedException", "AccessDenied"):
        return PermissionDeniedError(_refused(code, text, function, clock_skew))
    if code in _STUCK:
        advice = _STUCK[code].format(function=function, redeploy=redeploy)
        return FunctionError(f"Lambda cannot run {function!r} ({code}: {text}): {advice}", code)
    if code in _NOT_YET:
        return LambdaThrottledError(f"Lambda is not ready to run {function!r} ({code}): {text}",
                                    reason=code, retry_after=retry_after)
    if status >= 500:  # unknown whether it ran: a new attempt writes its own result
        return HandlerCrashedError(f"Lambda answered {code or status}: {text}")
    if code in ("RequestTooLargeException", "SerializedRequestEntityTooLargeException"):
        return FunctionError(
            f"Lambda refused the invocation as too large ({code}: {text}): lower "
            "lambda.inline-max, e.g. dask.config.set({'lambda.inline-max': 262144})", code)
    return FunctionError(f"{code}: {text}", code or "Unhandled")


def switched_off(function: str) -> str:
    """What to do about a function whose reserved concurrency is 0."""
    return (f"Lambda runs no invocations of {function!r}: its reserved concurrency is 0 (the "
            "console's Throttle button, or put-function-concurrency, sets that). Remove the "
            f"limit: `aws lambda delete-function-concurrency --function-name {function}`, or "
            f"set one above 0: `aws lambda put-function-concurrency --function-name {function} "
            "--reserved-concurrent-executions 100`")


def _throttled(code: str, text: str, function: str, reason: str, retry_after: float | None,
               reserved: int | None) -> Exception:
    quota = ("ask AWS for more (Service Quotas, AWS Lambda, \"Concurrent executions\")")
    if reason == _RESERVED and reserved == 0:
        return FunctionError(switched_off(function), reason)
    if reason == _RESERVED:
        limit = f" ({reserved})" if reserved else ""
        advice = (f"The function's reserved concurrency{limit} is in use: run fewer at once, "
                  f"e.g. LambdaClient(..., concurrency={reserved or 10}), or raise it: `aws "
                  f"lambda put-function-concurrency --function-name {function} "
                  f"--reserved-concurrent-executions {2 * (reserved or 10)}`.")
    elif reason == _ACCOUNT:
        advice = ("The account's concurrency in this region is in use (new accounts get less "
                  "than the default 1,000): run fewer at once, e.g. LambdaClient(..., "
                  f"concurrency=10), or {quota}.")
    else:
        advice = ""
    return LambdaThrottledError(f"Rate Exceeded ({reason or code or 429}): {text}",
                                reason=reason, retry_after=retry_after, advice=advice)


def _refused(code: str, text: str, function: str, clock_skew: float | None) -> str:
    if code == "ExpiredTokenException":
        return (f"AWS refused the invoke of {function!r}: the credentials' session token has "
                f"expired ({code}). Renew them (e.g. `aws sso login`, or a new "
                "AWS_SESSION_TOKEN) and run again.")
    if code == "UnrecognizedClientException":
        return (f"AWS does not know the access key these credentials use ({code}): it is "
                f"wrong, deleted, or of another account or partition; {_CHECK}.")
    if code == "InvalidSignatureException" and _SKEW.search(text):
        off = ""
        if clock_skew is not None:
            off = (f" This machine's clock is {abs(clock_skew):.0f} s "
                   f"{'ahead of' if clock_skew > 0 else 'behind'} AWS's.")
        return (f"AWS refused the invoke of {function!r}: this machine's clock is off and the "
                f"request's signature has expired ({code}: {text}).{off} AWS allows 5 "
                "minutes: set the clock from the network (NTP; `timedatectl set-ntp true` on "
                "Linux, \"Set time automatically\" on macOS) and run again.")
    if code in ("InvalidSignatureException", "IncompleteSignatureException",
                "MissingAuthenticationTokenException"):
        return (f"AWS refused the invoke of {function!r}: the request's signature does not "
                f"match its credentials ({code}: {text}); the secret access key does not "
                f"belong to the access key id, {_CHECK}.")
    return (f"AWS refused lambda:InvokeFunction on {function!r} ({code or 403}): allow it for "
            "your credentials (see README, Run on AWS)")
