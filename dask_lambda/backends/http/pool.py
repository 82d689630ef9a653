"""Keep-alive HTTP/1.1 connections to one endpoint (`HttpPool`).

A request is never re-sent here. What a failure means for the caller:

`NothingSent`
    no connection could be made: nothing reached the server, the caller may retry;
`ConnectionLost`
    the request went out and no complete answer came back: the server may have acted on it;
`ReadTimeout`
    no answer within the read timeout.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from .sockets import keepalive
from .tls import TLSConnection, open_tls
from .wire import HEAD_LIMIT, Response, message, read_response

#: Pooled connections idle longer than this are closed instead of reused: a request written to
#: a connection the server has just closed cannot be told apart from one that was lost.
IDLE_TIMEOUT = 20.0
#: Request bodies above this many bytes wait for the socket's buffer (flow control).
_DRAIN_ABOVE = 64 * 1024


class TransportError(Exception):
    """A request that got no complete HTTP answer (see the module's docstring)."""


class NothingSent(TransportError):
    """No connection could be made; nothing reached the server."""


class ConnectionLost(TransportError):
    """The request was sent (maybe in part) and the connection failed before a full answer."""


class ReadTimeout(TransportError):
    """No complete answer within the read timeout."""


class _Connection:
    __slots__ = ("reader", "writer", "idle_since", "expired")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | TLSConnection):
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
                opened: Any = open_tls(self.hostname, self.port, self.ssl_context)
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
                # A timer that closes the connection, not asyncio.wait_for: that makes a task
                # per call, a tenth of this whole request's CPU.
                timer = asyncio.get_running_loop().call_later(timeout, _expire, conn)
                try:
                    conn.writer.write(
                        message(f"{method} {self.base_path}{path} HTTP/1.1", headers, body))
                    if len(body) > _DRAIN_ABOVE:
                        await conn.writer.drain()
                    response, keep = await read_response(conn.reader)
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


async def _open_plain(host: str, port: int
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port, limit=HEAD_LIMIT)
    keepalive(writer.get_extra_info("socket"))
    return reader, writer
