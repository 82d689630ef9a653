"""What a task writes, to its file descriptors 1 and 2 and through ``logging``: on to the
function's log as it is written, and its tail back to the client."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

#: Most bytes of a task's printed output returned to the client (all of it goes to the log).
LOG_LIMIT = 64 * 1024


class _Tail:
    """The last `LOG_LIMIT` bytes written to it (from several threads)."""

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._lock = threading.Lock()

    def add(self, data: bytes) -> None:
        with self._lock:
            self._chunks.append(data)
            self._size += len(data)
            while self._size - len(self._chunks[0]) >= LOG_LIMIT:
                self._size -= len(self._chunks.popleft())

    def text(self) -> str:
        with self._lock:
            return b"".join(self._chunks)[-LOG_LIMIT:].decode(errors="replace")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _forward(source: int, log: int, tail: _Tail) -> None:
    """In a thread: copy what arrives on ``source`` to ``log`` as it comes, keeping its tail.
    Closes both when ``source`` ends (when every writer, the task's children too, is done)."""
    try:
        while True:
            data = os.read(source, 65536)
            if not data:
                break
            tail.add(data)
            with contextlib.suppress(OSError):  # the log is gone: keep the tail for the client
                _write_all(log, data)
    finally:
        os.close(source)
        os.close(log)


class _TeeBytes(io.RawIOBase):
    """The binary side (``sys.stdout.buffer``) of a `_Tee`."""

    def __init__(self, log: int, tail: _Tail, fileno: int):
        super().__init__()
        self._log = log
        self._tail = tail
        self._fileno = fileno

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fileno

    def write(self, data: Any) -> int:
        data = bytes(data)
        self._tail.add(data)
        with contextlib.suppress(OSError):
            _write_all(self._log, data)
        return len(data)


class _Tee(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` while a task runs: each write goes to the log at once
    (no buffer and no thread in between, so it is there even if the process dies on the next
    line) and into the tail."""

    def __init__(self, log: int, tail: _Tail, fileno: int, encoding: str | None):
        super().__init__()
        self._bytes = _TeeBytes(log, tail, fileno)
        self._fileno = fileno
        self._encoding = encoding or "utf-8"

    @property
    def buffer(self) -> _TeeBytes:
        return self._bytes

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._encoding

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "replace"

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fileno

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        self._bytes.write(text.encode(self._encoding, "replace"))
        return len(text)


class _LogRecords(logging.Handler):
    """Keeps the records the task logs in the tail of its output."""

    def __init__(self, tail: _Tail):
        super().__init__()
        self.tail = tail
        self.setFormatter(logging.Formatter("[%(levelname)s] %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.tail.add((self.format(record) + "\n").encode(errors="replace"))
        except Exception:
            self.handleError(record)


def _writes_to_fd_1_or_2(handler: logging.Handler) -> bool:
    try:
        return handler.stream.fileno() in (1, 2)  # type: ignore[attr-defined]
    except Exception:
        return False


@contextlib.contextmanager
def captured_output(box: dict) -> Iterator[None]:
    """Capture what the task prints, what it writes to file descriptors 1 and 2 (C code,
    child processes), and what it logs with `logging`.

    Output is passed on to the original stderr as it is written, so the function's log
    (CloudWatch on AWS, the terminal on the local backend) has it even when the task then
    crashes, times out or runs out of memory; the client gets its last `LOG_LIMIT` bytes
    (``box["log"]``). Python's writes (``sys.stdout``, ``sys.stderr``) reach the log before
    they return; writes to the descriptors go through a pipe that a thread copies on, so
    the last of them may be lost if the process dies at once. Everything goes to stderr: a
    runtime may use descriptor 1 for its own protocol (ministack's does), and Lambda sends
    both to the same log.

    On Lambda the root logger does not write to descriptors 1 or 2: the runtime interface
    client (``awslambdaric.bootstrap``) gives it a handler that writes to the log through
    the ``_LAMBDA_TELEMETRY_LOG_FD`` descriptor. Its records reach the log already; they are
    added to the client's tail here. Where the root logger has no handler (Python's last
    resort writes to ``sys.stderr``) or one on descriptor 1 or 2, they are captured with the
    rest.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    tail = _Tail()
    source, sink = os.pipe()
    saved = (os.dup(1), os.dup(2))
    log = os.dup(2)
    forwarder = threading.Thread(target=_forward, args=(source, os.dup(2), tail),
                                 name="dask-lambda-task-output", daemon=True)
    forwarder.start()
    os.dup2(sink, 1)
    os.dup2(sink, 2)
    os.close(sink)
    streams = sys.stdout, sys.stderr
    sys.stdout = _Tee(log, tail, 1, getattr(streams[0], "encoding", None))
    sys.stderr = _Tee(log, tail, 2, getattr(streams[1], "encoding", None))
    root = logging.getLogger()
    records = None
    if root.handlers and not any(_writes_to_fd_1_or_2(h) for h in root.handlers):
        records = _LogRecords(tail)
        root.addHandler(records)
    try:
        yield
    finally:
        if records is not None:
            root.removeHandler(records)
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1)  # the pipe's last writers: its reader sees the end
        os.dup2(saved[1], 2)
        for fd in (*saved, log):
            os.close(fd)
        forwarder.join(timeout=1.0)  # longer only if a child of the task still writes
        text = tail.text()
        if text:
            box["log"] = text


