"""Lambda's Invoke API on pooled HTTP/1.1 connections, signed with SigV4 here.

Why not aiobotocore for invokes: on this machine its ``invoke`` costs about 1 ms of
client CPU per call (parameter validation, endpoint rules, event hooks, response
parsing), about as much as everything else the client does per task; this path costs
about 0.1 ms (benchmarks/README.md, ``invoke_cost.py``). A laptop that keeps 1,000 functions
of one second busy makes 1,000 invokes a second, so that difference is most of a core.

What goes on the wire is what botocore sends for ``invoke(FunctionName=...,
Payload=..., InvocationType="RequestResponse", LogType="Tail")``, with the same SigV4
signature (tests/test_lambda_api.py checks it against botocore's signer). Control-plane
calls and S3 stay on aiobotocore; the aws backend gives this client the endpoint, region,
credentials and CA bundle that aiobotocore resolved, so both reach the same place.

An invoke is never re-sent here. What a failure means for the task (:mod:`.pool`'s errors):

`NothingSent`
    no connection could be made: nothing reached Lambda, the caller may retry;
`ConnectionLost`
    the request went out and no complete answer came back: the task may have run;
`ReadTimeout`
    no answer within the read timeout (the function timeout plus a margin).

Every connection sends TCP keepalive probes while the function runs (:mod:`.sockets`).
"""

from __future__ import annotations

import platform
import ssl
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from .pool import HttpPool
from .sigv4 import Credentials, SigV4
from .wire import Response

_INVOKE_HEADERS = {"x-amz-invocation-type": "RequestResponse", "x-amz-log-type": "Tail"}


def user_agent() -> str:
    """The User-Agent of dask-lambda's requests: ``dask-lambda/<version> Python/<x.y.z> <OS>``."""
    from ... import __version__

    return f"dask-lambda/{__version__} Python/{platform.python_version()} {platform.system()}"


class LambdaInvoker:
    """Synchronous (``RequestResponse``) invokes of one function, log tail included.

    Parameters
    ----------
    endpoint_url
        Lambda's endpoint, e.g. ``https://lambda.us-east-1.amazonaws.com`` (what
        aiobotocore resolved: ``client.meta.endpoint_url``).
    region
        Region the requests are signed for.
    function
        Function name or ARN.
    credentials
        Coroutine function returning the current `Credentials`; called at most every
        ``refresh`` seconds (botocore refreshes temporary credentials well before expiry).
    max_connections
        Invocations in flight at once.
    read_timeout
        Seconds to wait for an answer: the function timeout plus a margin.
    connect_timeout
        Seconds to open a connection.
    ssl_context
        TLS verification for https endpoints (default: the system's CAs).
    """

    #: Seconds between calls of ``credentials``.
    refresh = 60.0

    def __init__(self, endpoint_url: str, region: str, function: str,
                 credentials: Callable[[], Awaitable[Credentials]], *, max_connections: int,
                 read_timeout: float, connect_timeout: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None):
        self.pool = HttpPool(endpoint_url, max_connections=max_connections,
                             connect_timeout=connect_timeout, ssl_context=ssl_context)
        self.signer = SigV4(region, "lambda")
        self.path = f"/2015-03-31/functions/{quote(function, safe='')}/invocations"
        self.read_timeout = read_timeout
        self._credentials = credentials
        self._frozen: Credentials | None = None
        self._fetched = 0.0
        self.user_agent = user_agent()

    async def _current_credentials(self) -> Credentials:
        now = time.monotonic()
        if self._frozen is None or now - self._fetched > self.refresh:
            self._frozen = await self._credentials()
            self._fetched = now
        return self._frozen

    async def invoke(self, payload: bytes) -> Response:
        """Invoke the function once with ``payload`` (JSON bytes); never re-sent.

        Raises
        ------
        NothingSent, ConnectionLost, ReadTimeout
            No complete HTTP answer; see the module's docstring.
        """
        credentials = await self._current_credentials()
        headers = self.signer.sign("POST", self.pool.host, self.pool.base_path + self.path,
                                   _INVOKE_HEADERS, payload, credentials, time.time())
        headers["user-agent"] = self.user_agent  # not signed, as botocore does not sign it
        return await self.pool.request("POST", self.path, headers, payload, self.read_timeout)

    async def get(self, path: str, timeout: float = 30.0) -> Response:
        """An unsigned ``GET path`` on the same endpoint and connections (e.g. the simulated
        Lambda's own ``/_simulator/...`` paths); never re-sent."""
        return await self.pool.request("GET", path, {"host": self.pool.host}, b"", timeout)

    def set_limit(self, max_connections: int) -> None:
        """At most ``max_connections`` invocations in flight from now on."""
        self.pool.set_limit(max_connections)

    def forget_credentials(self) -> None:
        """Fetch the credentials again before the next invoke (Lambda found them expired)."""
        self._frozen = None

    async def close(self) -> None:
        await self.pool.close()


def error_fields(response: Response) -> tuple[str, str, dict]:
    """The AWS error code, message and JSON body of a failed API call, as botocore's
    rest-json parser reads them (``x-amzn-ErrorType`` header, else the body's
    ``__type``/``code``)."""
    import json

    try:
        body = json.loads(response.body or b"{}")
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    code = str(body.get("__type") or body.get("code") or "")
    header = response.headers.get("x-amzn-errortype", "")
    if header:
        code = header.split(":")[0]
    code = code.rsplit("#", 1)[-1]
    message = str(body.get("message") or body.get("Message") or response.body[:300]
                  .decode("utf-8", "replace"))
    return code, message, body
