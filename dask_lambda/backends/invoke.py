"""One synchronous invoke through the Lambda API, every answer mapped to a typed error.

Shared by the aws backend (a deployed function) and the simulated backend (a
simulated Lambda endpoint in another process), so that what the simulator measures
is the client's real invoke path. Invokes go through :mod:`.lambda_api` (``direct``)
or through an aiobotocore Lambda client (``sdk``: used where a proxy applies).

An invoke is never re-sent: only connection failures where nothing was sent are
retried here, a few times with backoff. A 429 is `LambdaThrottledError` (the executor
backs off); an answer that leaves unknown whether the task ran is
`HandlerCrashedError` (the executor retries under a new attempt key, so a late run can
never overwrite an accepted output).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

from dask_lambda_handler.s3errors import error_code as error_code_of

from ..errors import (
    FunctionError,
    HandlerCrashedError,
    LambdaThrottledError,
    PermissionDeniedError,
)
from .aws_errors import invoke_error
from .lambda_api import ConnectionLost, LambdaInvoker, NothingSent, ReadTimeout, error_code

#: Attempts to connect when nothing could be sent (backing off 0.5, 1, 2, 4, 8 s).
CONNECT_RETRIES = 5


class FunctionInvoker:
    """Invoke one function and return the handler's response, or raise a typed error.

    Parameters
    ----------
    function
        Name or ARN of the function, for messages.
    where
        Where it runs, for messages (e.g. ``"AWS Lambda in eu-west-1"``).
    direct, sdk
        The client that sends invokes: a `LambdaInvoker`, or else an aiobotocore Lambda
        client.
    memory, timeout
        The function's memory (MB) and timeout (s), for messages.
    read_timeout
        Seconds the client waits for an answer (for messages).
    fix
        How the user changes a setting of the function: ``fix("timeout", 10)``.
    redeploy
        What to do when the function is gone (e.g. the deploy command).
    on_sent
        Called for each invocation that may have run (not the ones Lambda refused).
    """

    def __init__(self, function: str, where: str, *, direct: LambdaInvoker | None = None,
                 sdk: Any = None, memory: int, timeout: float, read_timeout: float,
                 fix: Callable[[str, int], str], redeploy: str,
                 on_sent: Callable[[], None] = lambda: None):
        if (direct is None) == (sdk is None):
            raise ValueError("give exactly one of direct= and sdk=")
        self.function = function
        self.where = where
        self.direct = direct
        self.sdk = sdk
        self.memory = memory
        self.timeout = timeout
        self.read_timeout = read_timeout
        self.fix = fix
        self.redeploy = redeploy
        self.on_sent = on_sent

    def set_concurrency(self, concurrency: int) -> None:
        """Hold up to ``concurrency`` invokes at once (each holds a connection while the
        function runs). The sdk client keeps the connection pool it was made with."""
        from .lambda_api import raise_open_files_limit

        connections = max(10, concurrency)
        raise_open_files_limit(connections)
        if self.direct is not None:
            self.direct.pool.set_limit(connections)

    async def invoke(self, event: dict) -> dict:
        """Run ``event`` and return the handler's response (a dict)."""
        body, function_error, log, request_id = await self.send(json.dumps(event).encode())
        if function_error:
            try:
                err = json.loads(body)
            except ValueError:
                err = {"errorType": "Unhandled", "errorMessage": body[:1000].decode("replace")}
            text = base64.b64decode(log or b"").decode("utf-8", "replace")
            raise invoke_error(err if isinstance(err, dict) else {"errorMessage": str(err)},
                               text, request_id=request_id, memory=self.memory,
                               timeout=self.timeout, fix=self.fix)
        return json.loads(body)

    async def send(self, payload: bytes, *, count: bool = True) -> tuple[bytes, str, str, str]:
        """Invoke once: (body, function error, log tail in base64, request id).

        ``count``: report it to ``on_sent`` (not a version ping).
        """
        send = self._send_sdk if self.direct is None else self._send_direct
        for attempt in range(CONNECT_RETRIES + 1):
            try:
                answer = await send(payload)
            except NothingSent as exc:
                if attempt == CONNECT_RETRIES:  # nothing was sent: retrying was safe
                    raise HandlerCrashedError(f"cannot connect to {self.where}: {exc}") from None
                await asyncio.sleep(min(8.0, 0.5 * 2**attempt))
                continue
            except ReadTimeout:  # the task may have run
                self._sent(count)
                raise HandlerCrashedError(
                    f"no answer from Lambda {self.read_timeout:.0f} s after invoking it (the "
                    "function timeout plus a margin): the connection was lost. The attempt is "
                    "not re-sent; a new attempt writes its own result.") from None
            except ConnectionLost as exc:  # the task may have run
                self._sent(count)
                raise HandlerCrashedError(f"the connection to Lambda closed: {exc}") from None
            self._sent(count)
            return answer
        raise AssertionError("unreachable")

    async def _send_direct(self, payload: bytes) -> tuple[bytes, str, str, str]:
        assert self.direct is not None
        resp = await self.direct.invoke(payload)
        if not 200 <= resp.status < 300:
            code, message = error_code(resp)
            raise self.api_error(code, resp.status, f"{message} (HTTP {resp.status})")
        headers = resp.headers
        return (resp.body, headers.get("x-amz-function-error", ""),
                headers.get("x-amz-log-result", ""), headers.get("x-amzn-requestid", "?"))

    async def _send_sdk(self, payload: bytes) -> tuple[bytes, str, str, str]:
        """As `_send_direct`, through aiobotocore: its failures become `.lambda_api`'s."""
        from botocore.exceptions import (
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            ReadTimeoutError,
        )

        try:
            resp = await self.sdk.invoke(FunctionName=self.function, Payload=payload,
                                         InvocationType="RequestResponse", LogType="Tail")
        except (EndpointConnectionError, ConnectTimeoutError) as exc:
            raise NothingSent(str(exc)) from None
        except ReadTimeoutError as exc:
            raise ReadTimeout(str(exc)) from None
        except ConnectionClosedError as exc:
            raise ConnectionLost(str(exc)) from None
        except Exception as exc:
            status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get(
                "HTTPStatusCode", 0)
            raise self.api_error(error_code_of(exc), int(status), str(exc)) from None
        try:
            body = await resp["Payload"].read()
        except Exception as exc:  # the answer began: the task may have run
            raise ConnectionLost(f"the answer broke off: {exc!r}") from None
        return (body, resp.get("FunctionError") or "", resp.get("LogResult") or "",
                resp.get("ResponseMetadata", {}).get("RequestId", "?"))

    def _sent(self, count: bool) -> None:
        if count:
            self.on_sent()

    def api_error(self, code: str, status: int, text: str) -> Exception:
        """The typed error for an invoke the Lambda API refused (``code``, HTTP ``status``)."""
        if code == "TooManyRequestsException" or status == 429:
            return LambdaThrottledError(f"Rate Exceeded ({code or 429}): {text}")
        if code == "ResourceNotFoundException":
            return FunctionError(f"the Lambda function {self.function!r} is gone: "
                                 f"{self.redeploy}", code)
        if code in ("AccessDeniedException", "AccessDenied") or status == 403:
            return PermissionDeniedError(
                f"AWS refused lambda:InvokeFunction on {self.function!r} ({code}): allow it for "
                "your credentials (see README, Run on AWS)")
        if status >= 500:  # unknown whether it ran: a new attempt writes its own result
            return HandlerCrashedError(f"Lambda answered {code or status}: {text}")
        return FunctionError(f"{code}: {text}", code or "Unhandled")
