"""HTTP/1.1 messages (RFC 9112): heads parsed and written, response bodies read.

The client's pool (:mod:`.pool`) writes requests and reads responses; the simulated Lambda
(:mod:`dask_lambda.backends.simulated.server`) reads requests and writes responses. Both
parse a head with `parse_head` and write a message with `message`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

#: Most bytes of a response head (status line and headers; the log tail header is <= 4 KB).
HEAD_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Response:
    """An HTTP answer: status, headers (lower-case names) and body."""

    status: int
    headers: dict[str, str]
    body: bytes


def parse_head(head: bytes) -> tuple[list[str], dict[str, str]]:
    """The start line's three parts and the header fields (lower-case names) of a message
    head, ``head`` without its final empty line (or with it).

    Per request of the simulated Lambda's server, so kept lean: no whitespace may come
    between a field name and its colon (RFC 9112, 5.1), so names are not stripped.
    """
    start, _, fields = head.decode("latin-1").partition("\r\n")
    headers: dict[str, str] = {}
    for line in fields.split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.lower()] = value.strip()
    parts = start.split(" ", 2)
    return parts if len(parts) == 3 else (parts + ["", ""])[:3], headers


def message(start: str, headers: dict[str, str], body: bytes) -> bytes:
    """One HTTP/1.1 message: ``start`` line, ``headers``, a ``content-length`` and ``body``."""
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"{start}\r\n{head}content-length: {len(body)}\r\n\r\n".encode("latin-1") + body


async def read_response(reader: asyncio.StreamReader) -> tuple[Response, bool]:
    """One HTTP/1.1 response; also whether the connection may be reused."""
    while True:  # skip interim answers (100 Continue, 103 Early Hints): the final one follows
        (version, code, _), headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
        status = int(code)
        if not 100 <= status < 200 or status == 101:
            break
    keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    if status < 200 or status in (204, 304):  # never a body (RFC 9112, 6.3), whatever the headers
        body, keep = b"", keep and status != 101
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = await read_chunked(reader)
    else:  # delimited by the end of the connection
        body, keep = await reader.read(), False
    return Response(status, headers, body), keep


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked body (``transfer-encoding: chunked``), its trailer fields skipped."""
    chunks = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        chunks.append(await reader.readexactly(size + 2))
        if size == 0:
            break
    if chunks[-1] != b"\r\n":  # trailer fields follow the last chunk: read up to the empty line
        await reader.readuntil(b"\r\n\r\n")
    return b"".join(c[:-2] for c in chunks)
