"""A TLS client connection for asyncio whose handshake runs in a thread."""

from __future__ import annotations

import asyncio
import os
import ssl
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .sockets import keepalive
from .wire import HEAD_LIMIT


class TLSConnection(asyncio.Protocol):
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


async def open_tls(host: str, port: int, context: ssl.SSLContext
                    ) -> tuple[asyncio.StreamReader, TLSConnection]:
    """Like ``asyncio.open_connection(host, port, ssl=context)``, on a `TLSConnection`."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=HEAD_LIMIT, loop=loop)
    connection = TLSConnection(context, host, reader)
    transport, _ = await loop.create_connection(lambda: connection, host, port)
    try:
        keepalive(transport.get_extra_info("socket"))
        await connection.handshake()
    except BaseException:
        transport.close()
        raise
    return reader, connection
