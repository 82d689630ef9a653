"""Lambda's invocation errors as dask-lambda's typed errors, each message naming the fix.

A synchronous invoke that failed inside the function answers HTTP 200 with
``X-Amz-Function-Error: Unhandled`` and a payload ``{"errorType", "errorMessage"}``;
the log tail (``LogType=Tail``) holds the ``REPORT`` line with the peak memory.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..errors import (
    DaskLambdaError,
    FunctionError,
    HandlerCrashedError,
    LambdaOutOfMemoryError,
    LambdaTimeoutError,
)

_TIMED_OUT = re.compile(r"Task timed out after ([\d.]+) seconds")
_MAX_MEMORY = re.compile(r"Max Memory Used: (\d+) MB")
_CRASH_TYPES = {"Runtime.ExitError", "Runtime.Unknown", "Runtime.ExitCode"}
#: Texts of a dead execution environment: AWS ("Runtime exited with error: exit status 13",
#: "signal: segmentation fault") and ministack's local executor ("Worker process died").
_CRASHED = re.compile(r"Runtime exited|exit status|signal: |[Pp]rocess died|exited unexpectedly")
#: The last line of a Python traceback: "package.module.ErrorType: message".
_RAISED = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception|Lost\w*)):", re.M)


def invoke_error(err: dict, log: str, *, request_id: str, memory: int, timeout: float,
                 fix: Callable[[str, int], str]) -> DaskLambdaError:
    """The typed error for a function error ``err`` of an invocation.

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
    etype = str(err.get("errorType") or "Unhandled")
    text = str(err.get("errorMessage") or "")
    timed_out = _TIMED_OUT.search(text)
    if timed_out or etype == "Sandbox.Timedout":
        seconds = float(timed_out.group(1)) if timed_out else timeout
        return LambdaTimeoutError(
            f"Task timed out after {seconds:.2f} seconds (request {request_id}). Raise the "
            f"function timeout, e.g. {fix('timeout', int(min(900, timeout * 2)))}, or split "
            "the task into smaller ones.")
    used = _MAX_MEMORY.findall(log)
    peak = int(used[-1]) if used else None
    if etype == "Runtime.OutOfMemory" or (
            "signal: killed" in text and peak is not None and peak >= memory * 0.95):
        return LambdaOutOfMemoryError(
            f"Runtime exited: out of memory. The task used {peak or memory} MB, the function's "
            f"{memory} MB (request {request_id}). Give it more, e.g. "
            f"{fix('memory', min(10240, memory * 2))}, or use smaller partitions/chunks.")
    if etype in _CRASH_TYPES or _CRASHED.search(text):
        return HandlerCrashedError(
            f"{text or etype} while running the task (request {request_id}): the execution "
            "environment crashed or was killed.")
    if etype == "Runtime.HandlerError":  # ministack reports every exception as this: find its type
        raised = _RAISED.findall(log)
        etype = raised[-1] if raised else etype
    return FunctionError(f"{etype}: {text} (request {request_id})", etype)
