"""One synchronous invoke through the Lambda API, every answer mapped to a typed error.

Shared by the aws backend (a deployed function) and the simulated backend (a
simulated Lambda endpoint in another process), so that what the simulator measures
is the client's real invoke path. Invokes go through :mod:`.http.lambda_api` (``direct``)
or through an aiobotocore Lambda client (``sdk``: used where a proxy applies).

An invoke is never re-sent once it may have run: only connection failures where nothing
was sent are retried here, a few times with backoff, and an invoke refused for expired
credentials once, with credentials fetched again. What every other answer means is
:mod:`dask_lambda.failures`'s: a 429 is `LambdaThrottledError` (the executor backs off); an
answer that leaves unknown whether the task ran is `HandlerCrashedError` (the executor
retries under a new attempt key, so a late run can never overwrite an accepted output).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

from dask_lambda_handler import records
from dask_lambda_handler.s3errors import error_code as error_code_of

from .. import failures
from ..errors import HandlerCrashedError
from .base import Invoker
from .http.lambda_api import LambdaInvoker, error_fields
from .http.pool import ConnectionLost, NothingSent, ReadTimeout

#: Attempts to connect when nothing could be sent (backing off 0.5, 1, 2, 4, 8 s).
CONNECT_RETRIES = 5


class FunctionInvoker(Invoker):
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
        Called for each invocation that may have run (not the ones Lambda refused), as it is
        counted in ``invocations``.

    Attributes
    ----------
    reserved_concurrency
        The function's reserved concurrency where the backend has read it (for the advice
        of a 429), else ``None``.
    """

    reserved_concurrency: int | None = None

    def __init__(self, function: str, where: str, *, direct: LambdaInvoker | None = None,
                 sdk: Any = None, memory: int, timeout: float, read_timeout: float,
                 fix: Callable[[str, int], str], redeploy: str,
                 on_sent: Callable[[], None] = lambda: None):
        if (direct is None) == (sdk is None):
            raise ValueError("give exactly one of direct= and sdk=")
        super().__init__()
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
        from .http.sockets import raise_open_files_limit

        connections = max(10, concurrency)
        raise_open_files_limit(connections)
        if self.direct is not None:
            self.direct.set_limit(connections)

    async def invoke(self, event: dict) -> dict:
        """Run ``event`` and return the handler's response (a dict).

        What the log tail's ``REPORT`` line says goes into the response's ``stats``:
        ``billed_ms`` (what Lambda billed, the INIT phase of a cold start included),
        ``max_memory_mb`` and ``init_ms``.
        """
        body, function_error, log, request_id = await self.send(json.dumps(event).encode())
        text = base64.b64decode(log).decode("utf-8", "replace") if log else ""
        if function_error:
            try:
                err = json.loads(body)
            except ValueError:
                err = {"errorType": "Unhandled", "errorMessage": body[:1000].decode("replace")}
            raise failures.function_error(
                err if isinstance(err, dict) else {"errorMessage": str(err)}, text,
                request_id=request_id, memory=self.memory, timeout=self.timeout, fix=self.fix)
        response = json.loads(body)
        report = failures.parse_report(text)
        if isinstance(response, dict) and report.billed_ms is not None:
            records.add_stats(response, billed_ms=report.billed_ms,
                              max_memory_mb=report.max_memory_mb, init_ms=report.init_ms)
        return self.count_cold_start(response)

    async def send(self, payload: bytes, *, count: bool = True) -> tuple[bytes, str, str, str]:
        """Invoke once: (body, function error, log tail in base64, request id).

        ``count``: count it and report it to ``on_sent`` (not a version ping).
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
        if resp.status == 403 and error_fields(resp)[0] == "ExpiredTokenException":
            # refused, so nothing ran: once more with credentials fetched again (botocore
            # renews temporary credentials before they expire; a clock that runs late does not)
            self.direct.forget_credentials()
            resp = await self.direct.invoke(payload)
        if not 200 <= resp.status < 300:
            code, message, body = error_fields(resp)
            raise self.api_error(code, resp.status, f"{message} (HTTP {resp.status})",
                                 body=body, headers=resp.headers)
        headers = resp.headers
        return (resp.body, headers.get("x-amz-function-error", ""),
                headers.get("x-amz-log-result", ""), headers.get("x-amzn-requestid", "?"))

    async def _send_sdk(self, payload: bytes) -> tuple[bytes, str, str, str]:
        """As `_send_direct`, through aiobotocore: its failures become `.http.pool`'s."""
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
            answer = getattr(exc, "response", None)
            answer = answer if isinstance(answer, dict) else {}
            meta = answer.get("ResponseMetadata", {})
            raise self.api_error(error_code_of(exc), int(meta.get("HTTPStatusCode", 0)),
                                 str(exc), body=answer,
                                 headers=meta.get("HTTPHeaders") or {}) from None
        try:
            body = await resp["Payload"].read()
        except Exception as exc:  # the answer began: the task may have run
            raise ConnectionLost(f"the answer broke off: {exc!r}") from None
        return (body, resp.get("FunctionError") or "", resp.get("LogResult") or "",
                resp.get("ResponseMetadata", {}).get("RequestId", "?"))

    def _sent(self, count: bool) -> None:
        if count:
            self.invocations += 1
            self.on_sent()

    async def close(self) -> None:
        if self.direct is not None:  # (an sdk client is its owner's to close)
            await self.direct.close()

    def api_error(self, code: str, status: int, text: str, *, body: dict | None = None,
                  headers: dict | None = None) -> Exception:
        """The typed error for an invoke the Lambda API refused (``code``, HTTP ``status``;
        ``body`` and ``headers`` of the answer: a 429's ``Reason`` and ``Retry-After``, the
        server's ``Date``)."""
        return failures.api_error(
            code, status, text, function=self.function, redeploy=self.redeploy,
            reason=str((body or {}).get("Reason") or ""),
            retry_after=_retry_after(body or {}, headers or {}),
            reserved=self.reserved_concurrency, clock_skew=_clock_skew(headers or {}))


def _retry_after(body: dict, headers: dict) -> float | None:
    """A 429's ``retryAfterSeconds``: botocore's model reads it from the ``Retry-After`` header
    (some emulators put it in the body)."""
    for value in ({k.lower(): v for k, v in headers.items()}.get("retry-after"),
                  body.get("retryAfterSeconds")):
        try:
            return max(0.0, float(value))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
    return None


def _clock_skew(headers: dict) -> float | None:
    """Seconds this machine's clock is ahead of the server's, from the answer's ``Date``."""
    import email.utils
    import time

    date = {k.lower(): v for k, v in headers.items()}.get("date")
    try:
        return time.time() - email.utils.parsedate_to_datetime(str(date)).timestamp()
    except (TypeError, ValueError):
        return None
