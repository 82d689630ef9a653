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

An invoke is never re-sent here. What a failure means for the task:

`NothingSent`
    no connection could be made: nothing reached Lambda, the caller may retry;
`ConnectionLost`
    the request went out and no complete answer came back: the task may have run;
`ReadTimeout`
    no answer within the read timeout (the function timeout plus a margin).

A synchronous invoke's connection is silent for as long as the function runs (up to 900 s),
and NAT gateways, VPC endpoints and load balancers drop TCP flows idle for 350 s (AWS
Knowledge Center, "How do I prevent my Lambda function connected to a VPC from timing
out?": turn on TCP keepalive with a value under 350 s). Every connection here sends keepalive
probes after `KEEPALIVE_IDLE` seconds of silence (`keepalive`, also used by the sdk path).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import platform
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

#: Pooled connections idle longer than this are closed instead of reused: a request written to
#: a connection the server has just closed cannot be told apart from one that was lost.
IDLE_TIMEOUT = 20.0
#: Most bytes of a response head (status line and headers; the log tail header is <= 4 KB).
_HEAD_LIMIT = 64 * 1024
#: Request bodies above this many bytes wait for the socket's buffer (flow control).
_DRAIN_ABOVE = 64 * 1024
_INVOKE_HEADERS = {"x-amz-invocation-type": "RequestResponse", "x-amz-log-type": "Tail"}
#: Seconds of silence before the first keepalive probe, then seconds between probes, and
#: unanswered probes before the connection counts as dead: traffic at least every minute, well
#: under the 350 s after which NAT gateways and load balancers forget an idle flow.
KEEPALIVE_IDLE = 60
KEEPALIVE_INTERVAL = 15
KEEPALIVE_PROBES = 4


def keepalive(sock: Any) -> None:
    """Turn on TCP keepalive on ``sock`` (a socket, or asyncio's view of a transport's one)
    with `KEEPALIVE_IDLE` (Linux, macOS, Windows 10+).

    The idle time is ``TCP_KEEPIDLE`` on Linux and ``TCP_KEEPALIVE`` on macOS (the same
    option under Darwin's name); ``TCP_KEEPINTVL`` and ``TCP_KEEPCNT`` are named alike on
    both. Without the idle time the system's default applies (two hours on Linux and macOS).
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle = getattr(socket, "TCP_KEEPIDLE", None)
    if idle is None:
        idle = getattr(socket, "TCP_KEEPALIVE", None)  # macOS
    for option, value in ((idle, KEEPALIVE_IDLE),
                          (getattr(socket, "TCP_KEEPINTVL", None), KEEPALIVE_INTERVAL),
                          (getattr(socket, "TCP_KEEPCNT", None), KEEPALIVE_PROBES)):
        if option is not None:
            with contextlib.suppress(OSError):  # an old kernel without the option
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


def user_agent() -> str:
    """The User-Agent of dask-lambda's requests: ``dask-lambda/<version> Python/<x.y.z> <OS>``."""
    from .. import __version__

    return f"dask-lambda/{__version__} Python/{platform.python_version()} {platform.system()}"


class TransportError(Exception):
    """An invoke that got no complete HTTP answer (see the module's docstring)."""


class NothingSent(TransportError):
    """No connection could be made; nothing reached the server."""


class ConnectionLost(TransportError):
    """The request was sent (maybe in part) and the connection failed before a full answer."""


class ReadTimeout(TransportError):
    """No complete answer within the read timeout."""


@dataclass(frozen=True)
class Credentials:
    """AWS credentials, as botocore's ``get_frozen_credentials()`` gives them."""

    access_key: str
    secret_key: str
    token: str | None = None


@dataclass(frozen=True)
class Response:
    """An HTTP answer: status, headers (lower-case names) and body."""

    status: int
    headers: dict[str, str]
    body: bytes


class SigV4:
    """AWS Signature Version 4 for one region and service (the signing key is cached per day).

    Examples
    --------
    >>> signer = SigV4("us-east-1", "lambda")
    >>> headers = signer.sign("POST", "lambda.us-east-1.amazonaws.com",
    ...                       "/2015-03-31/functions/f/invocations", {}, b"{}",
    ...                       Credentials("AKID", "secret"), now=0.0)
    >>> headers["x-amz-date"], headers["authorization"][:48]
    ('19700101T000000Z', 'AWS4-HMAC-SHA256 Credential=AKID/19700101/us-eas')
    """

    def __init__(self, region: str, service: str):
        self.region = region
        self.service = service
        self._cached: tuple[str, str, bytes] = ("", "", b"")  # (day, secret key, signing key)

    def _signing_key(self, day: str, secret: str) -> bytes:
        cached_day, cached_secret, key = self._cached
        if cached_day != day or cached_secret != secret:
            key = _hmac(("AWS4" + secret).encode(), day)
            for part in (self.region, self.service, "aws4_request"):
                key = _hmac(key, part)
            self._cached = (day, secret, key)
        return key

    def sign(self, method: str, host: str, path: str, headers: dict[str, str], payload: bytes,
             credentials: Credentials, now: float) -> dict[str, str]:
        """The headers to send: ``headers`` (lower-case names) plus host, date and signature.

        ``path`` is the request path as sent (already percent-encoded once); as botocore
        does for every service but S3, the canonical request encodes it once more.
        """
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        day = amz_date[:8]
        signed = {"host": host, "x-amz-date": amz_date, **headers}
        if credentials.token:
            signed["x-amz-security-token"] = credentials.token
        names = sorted(signed)
        canonical = "\n".join((
            method, quote(path, safe="/~"), "", *(f"{n}:{signed[n]}" for n in names), "",
            ";".join(names), hashlib.sha256(payload).hexdigest()))
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = (f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n"
                   f"{hashlib.sha256(canonical.encode()).hexdigest()}")
        signature = hmac.new(self._signing_key(day, credentials.secret_key), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        signed["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}")
        return signed


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


class _Connection:
    __slots__ = ("reader", "writer", "idle_since", "expired")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | _TLSConnection):
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0
        self.expired = False

    def close(self) -> None:
        self.writer.close()


def _expire(conn: _Connection) -> None:
    """The read timeout passed: end the wait for the answer (and the connection)."""
    conn.expired = True
    conn.close()  # no more data reaches the reader
    conn.reader.feed_eof()  # so the pending read ends with IncompleteReadError


class HttpPool:
    """Keep-alive HTTP/1.1 connections to one endpoint, at most ``max_connections`` at once.

    A synchronous invoke holds its connection until the function returns, so the pool
    needs as many connections as invocations in flight; a request beyond
    ``max_connections`` waits for one to be free.

    Parameters
    ----------
    url
        ``http(s)://host[:port][/base-path]``.
    max_connections
        Connections open at once.
    connect_timeout
        Seconds to open a connection (TLS handshake included).
    ssl_context
        For ``https``: the context to verify the server with (default: the system's CAs).
    """

    def __init__(self, url: str, *, max_connections: int, connect_timeout: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.tls = parts.scheme == "https"
        self.hostname = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        default_port = parts.port is None or parts.port == (443 if self.tls else 80)
        #: The Host header (and the host SigV4 signs): the port only when not the default.
        self.host = self.hostname if default_port else f"{self.hostname}:{self.port}"
        self.base_path = parts.path.rstrip("/")
        self.connect_timeout = connect_timeout
        self.ssl_context = (ssl_context or ssl.create_default_context()) if self.tls else None
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._closed = False
        #: Connections opened so far (a measure of how well they are reused).
        self.opened = 0

    async def _connect(self) -> _Connection:
        try:
            if self.ssl_context is not None:
                opened: Any = _open_tls(self.hostname, self.port, self.ssl_context)
            else:
                opened = _open_plain(self.hostname, self.port)
            reader, writer = await asyncio.wait_for(opened, self.connect_timeout)
        except ssl.SSLCertVerificationError:
            raise
        except (OSError, asyncio.TimeoutError) as exc:
            raise NothingSent(f"cannot connect to {self.host}: "
                              f"{exc or type(exc).__name__}") from exc
        self.opened += 1
        return _Connection(reader, writer)

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the likeliest to be alive
            if now - conn.idle_since < IDLE_TIMEOUT and not conn.reader.at_eof():
                return conn
            conn.close()
        return None

    def set_limit(self, max_connections: int) -> None:
        """At most ``max_connections`` from now on (requests under way keep theirs)."""
        self._slots = asyncio.Semaphore(max_connections)

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes,
                      timeout: float) -> Response:
        """Send one request and read its answer (``timeout``: seconds for the answer)."""
        async with self._slots:
            if self._closed:
                raise NothingSent("the connection pool is closed")
            conn = self._take_idle() or await self._connect()
            keep = False
            try:
                head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                # A timer that closes the connection, not asyncio.wait_for: that makes a task
                # per call, a tenth of this whole request's CPU.
                timer = asyncio.get_running_loop().call_later(timeout, _expire, conn)
                try:
                    conn.writer.write(
                        f"{method} {self.base_path}{path} HTTP/1.1\r\n{head}"
                        f"content-length: {len(body)}\r\n\r\n".encode("latin-1") + body)
                    if len(body) > _DRAIN_ABOVE:
                        await conn.writer.drain()
                    response, keep = await _read_response(conn.reader)
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                        ValueError) as exc:
                    if conn.expired:
                        raise ReadTimeout(f"no answer from {self.host} within {timeout:.0f} s") \
                            from None
                    raise ConnectionLost(f"the connection to {self.host} failed before the "
                                         f"answer was complete: {exc!r}") from None
                finally:
                    timer.cancel()
                return response
            finally:
                if keep and not self._closed:
                    conn.idle_since = time.monotonic()
                    self._idle.append(conn)
                else:
                    conn.close()

    async def close(self) -> None:
        """Close the idle connections; requests in flight close theirs when they end."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _TLSConnection(asyncio.Protocol):
    """A TLS client connection whose handshake runs in a thread, off the event loop.

    A synchronous invoke holds its connection while the function runs, so a client that
    keeps 1,000 functions busy opens 1,000 TLS connections in its first wave. Each handshake
    costs about a millisecond of CPU, nearly all in OpenSSL (key exchange), and asyncio runs
    it on the event loop: a second of the loop's time at the start of a burst, while the
    loop should be sending invocations (benchmarks/README.md, scale.py). OpenSSL releases the
    GIL while it works, so here each handshake step runs in a thread (`_handshakes`) and the
    loop only moves bytes. After the handshake, records are encrypted and decrypted on the
    loop (cheap), through an `ssl.SSLObject` on memory buffers; the plain text goes to an
    `asyncio.StreamReader`. It is also the writer: ``write``, ``drain``, ``close``.

    asyncio's own TLS transport would also give each connection a 256 KiB read buffer,
    256 MB of the client's memory for 1,000 connections; decrypted data here is read in
    the sizes it arrives in.
    """

    def __init__(self, context: ssl.SSLContext, host: str, reader: asyncio.StreamReader):
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._context = context
        self._host = host
        self._tls: ssl.SSLObject | None = None  # made in the handshake's first thread call
        self.reader = reader
        self.transport: Any = None
        self._handshaking = True
        self._received: list[bytes] = []  # while a handshake step runs in its thread
        self._wake: asyncio.Future | None = None
        self._lost: Exception | None = None
        self._writable = asyncio.Event()
        self._writable.set()

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._handshaking:  # the SSLObject may be in use by the handshake's thread
            self._received.append(data)
            self._wake_handshake()
            return
        self._incoming.write(data)
        self._read_plaintext()

    def eof_received(self) -> bool:
        self._incoming.write_eof()
        if not self._handshaking:
            self._read_plaintext()
        self._end(ConnectionResetError("the server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc or ConnectionResetError("the connection was closed"))
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- the writer ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        assert self._tls is not None, "write before the handshake"
        self._tls.write(data)
        self._flush()

    async def drain(self) -> None:
        await self._writable.wait()
        if self._lost is not None:
            raise self._lost

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- internals ----------------------------------------------------------------------------

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _read_plaintext(self) -> None:
        reader, tls = self.reader, self._tls
        assert tls is not None, "data before the handshake"
        while True:
            try:
                chunk = tls.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # the server ended TLS (close_notify)
                chunk = b""
            except ssl.SSLError as exc:
                reader.set_exception(ConnectionResetError(f"TLS failed: {exc}"))
                self.close()
                return
            if not chunk:
                reader.feed_eof()
                break
            reader.feed_data(chunk)
        self._flush()  # e.g. a key update answered while reading

    def _end(self, exc: Exception) -> None:
        if self._lost is None:
            self._lost = exc
        if not self.reader.at_eof() and not self._handshaking:
            self.reader.feed_eof()
        self._wake_handshake()

    def _wake_handshake(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _handshake_step(self) -> None:
        """In a thread: one step of the handshake (the first makes the SSL object too)."""
        if self._tls is None:
            self._tls = self._context.wrap_bio(self._incoming, self._outgoing,
                                               server_hostname=self._host)
        self._tls.do_handshake()

    async def handshake(self) -> None:
        """Run the TLS handshake, its CPU-heavy steps in `_handshakes`' threads."""
        loop = asyncio.get_running_loop()
        threads = _handshakes()
        while True:
            for data in self._received:
                self._incoming.write(data)
            self._received.clear()
            try:
                await loop.run_in_executor(threads, self._handshake_step)
                break
            except ssl.SSLWantReadError:
                self._flush()  # what the handshake has to say next
                if not self._received:
                    if self._lost is not None:
                        raise self._lost from None
                    self._wake = loop.create_future()
                    await self._wake
                    self._wake = None
                if self._lost is not None and not self._received:
                    raise self._lost from None
        self._flush()
        self._handshaking = False
        for data in self._received:
            self._incoming.write(data)
        self._received.clear()
        self._read_plaintext()


_HANDSHAKE_THREADS: ThreadPoolExecutor | None = None


def _handshakes() -> ThreadPoolExecutor:
    """The threads TLS handshakes run in (one per core: the work is OpenSSL's, without the GIL)."""
    global _HANDSHAKE_THREADS
    if _HANDSHAKE_THREADS is None:
        _HANDSHAKE_THREADS = ThreadPoolExecutor(max(2, os.cpu_count() or 2),
                                                thread_name_prefix="dask-lambda-tls")
    return _HANDSHAKE_THREADS


async def _open_plain(host: str, port: int
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port, limit=_HEAD_LIMIT)
    keepalive(writer.get_extra_info("socket"))
    return reader, writer


async def _open_tls(host: str, port: int, context: ssl.SSLContext
                    ) -> tuple[asyncio.StreamReader, _TLSConnection]:
    """Like ``asyncio.open_connection(host, port, ssl=context)``, on a `_TLSConnection`."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_HEAD_LIMIT, loop=loop)
    connection = _TLSConnection(context, host, reader)
    transport, _ = await loop.create_connection(lambda: connection, host, port)
    try:
        keepalive(transport.get_extra_info("socket"))
        await connection.handshake()
    except BaseException:
        transport.close()
        raise
    return reader, connection


async def _read_response(reader: asyncio.StreamReader) -> tuple[Response, bool]:
    """One HTTP/1.1 response; also whether the connection may be reused."""
    while True:  # skip interim answers (100 Continue, 103 Early Hints): the final one follows
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, code, _ = (lines[0].split(" ", 2) + [""])[:3]
        status = int(code)
        if not 100 <= status < 200 or status == 101:
            break
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    if status < 200 or status in (204, 304):  # never a body (RFC 9112, 6.3), whatever the headers
        body, keep = b"", keep and status != 101
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunks.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        body = b"".join(c[:-2] for c in chunks)
        await _skip_trailers(reader, chunks[-1])
    else:  # delimited by the end of the connection
        body, keep = await reader.read(), False
    return Response(status, headers, body), keep


async def _skip_trailers(reader: asyncio.StreamReader, last: bytes) -> None:
    if last != b"\r\n":  # trailer fields follow the last chunk: read up to the empty line
        await reader.readuntil(b"\r\n\r\n")


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


def raise_open_files_limit(connections: int) -> None:
    """Let this process hold ``connections`` sockets (a synchronous invoke holds one while the
    function runs): raise the soft limit on open files toward the hard one.

    Raises
    ------
    ConfigurationError
        The hard limit is too low (macOS starts shells at 256 open files).
    """
    import resource

    from ..errors import ConfigurationError

    needed = connections + 256  # the rest of the process: S3 pool, pipes, the dashboard
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ConfigurationError(
            f"concurrency={connections} needs about {needed} open files (one connection per "
            f"invocation in flight) and this process may open at most {hard}: raise the limit "
            f"before starting Python (`ulimit -n {needed}`), or lower the concurrency, e.g. "
            f"LambdaClient(..., concurrency={max(1, hard - 256)})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
