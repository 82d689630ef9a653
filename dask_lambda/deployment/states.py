"""A deployed function's state: waiting until Lambda may invoke it, and waking it.

Lambda does not invoke a function that is not ``Active`` and refuses an update while another
is in progress (``LastUpdateStatus`` InProgress); a function idle for weeks goes ``Inactive``
(Lambda function states). Deploy waits for both before and after each change; the aws
backend wakes or waits for the function at start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from dask_lambda_handler import s3errors

from ..errors import DeployError
from .ping import PING

#: Seconds to wait for a function to become Active, or for an update to finish. Lambda
#: takes seconds, or minutes for a large image (Lambda function states).
READY_TIMEOUT = 600.0
_POLL = 2.0
#: Seconds an invoked Inactive function may take to leave Inactive.
_WAKE_START = 30.0

_code = s3errors.error_code  # of a botocore ClientError


def wait_ready(lam: Any, function: str, *, timeout: float = READY_TIMEOUT,
               out: Callable[[str], None] | None = None) -> dict:
    """Wait until the function is Active and no update is in progress; its configuration.

    Raises
    ------
    DeployError
        The function is Failed or Inactive, or it is still not ready after ``timeout``
        seconds.
    """
    deadline = time.monotonic() + timeout
    said = ""
    while True:
        conf = lam.get_function_configuration(FunctionName=function)
        state, update = conf.get("State") or "Active", conf.get("LastUpdateStatus")
        if state == "Active" and update != "InProgress":
            return conf
        if state == "Failed":
            raise DeployError(
                f"the Lambda function {function!r} is Failed ({conf.get('StateReasonCode')}: "
                f"{conf.get('StateReason')}): Lambda cannot recover it; delete it (`aws lambda "
                f"delete-function --function-name {function}`) and deploy again")
        if state == "Inactive":
            raise DeployError(
                f"the Lambda function {function!r} is Inactive ({conf.get('StateReasonCode')}: "
                f"{conf.get('StateReason')}): Lambda could not recreate its resources; fix what "
                "the reason names, then run deploy again")
        if state != "Pending" and update != "InProgress":
            raise DeployError(
                f"the Lambda function {function!r} is {state} ({conf.get('StateReason')}): "
                "wait until it is Active, or delete it and deploy again")
        waiting = f"the function {function} is {state}" + (
            ", an update is in progress" if update == "InProgress" else "")
        if out is not None and waiting != said:
            out(f"waiting: {waiting}")
            said = waiting
        if time.monotonic() > deadline:
            raise DeployError(f"{waiting} after {timeout:.0f} s: try again later")
        time.sleep(_POLL)


def wake(lam: Any, function: str, *, out: Callable[[str], None] | None = None) -> dict:
    """Make an Inactive function Active again (and wait for one that is Pending or being
    updated); returns its configuration.

    A function idle for weeks becomes Inactive; an invoke then fails (for a function in a
    VPC, with ResourceNotReadyException) and sets it Pending while Lambda recreates its
    resources, then Active, or Inactive again if it cannot (Lambda function states). A
    ping is that invoke.
    """
    conf = lam.get_function_configuration(FunctionName=function)
    if conf.get("State") != "Inactive":
        return wait_ready(lam, function, out=out)
    if out is not None:
        out(f"the function {function} is Inactive ({conf.get('StateReason') or 'idle'}): "
            "waking it")
    refused = ""
    try:
        lam.invoke(FunctionName=function, Payload=PING)["Payload"].read()
    except Exception as exc:
        if not _code(exc):
            raise
        refused = f" (the invoke was answered {_code(exc)})"
    deadline = time.monotonic() + _WAKE_START
    while conf.get("State") == "Inactive":
        if time.monotonic() > deadline:
            raise DeployError(
                f"the Lambda function {function!r} stays Inactive after an invoke{refused}: "
                f"{conf.get('StateReasonCode')}: {conf.get('StateReason')}. Fix what the "
                "reason names, then run deploy again")
        time.sleep(_POLL)
        conf = lam.get_function_configuration(FunctionName=function)
    return wait_ready(lam, function, out=out)
