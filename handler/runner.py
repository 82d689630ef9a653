"""Run one job: read it, verify it, run it, write its output.

Events (JSON)::

    {"op": "ping", "key": <optional, true: also report the signing key's fingerprint>}
    {"op": "run", "bucket": B, "job_key": K, "result_key": R,
     "job": <base64, optional: the job travels inline instead of in S3>,
     "inline_max": <bytes: an output up to this size is returned in the response>}

Response of a run::

    {"status": "ok" | "error", "result_key": R or None, "result": <base64 or None>,
     "nbytes": <size of the output object>, "stats": {...}}

``status == "error"`` means the *task* raised; the payload then holds the
exception and its traceback.  Anything wrong with the job itself (bad
signature, missing object, no permission) raises out of the handler, which
Lambda reports as a function error.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator
from typing import Any

from . import compat, env, protocol, s3io, trigger
from .client_paths import note_client_paths
from .errors import (  # noqa: F401  (NotAvailableInLambda: importable from here)
    InputLostError,
    NotAvailableInLambda,
    OutputTooLargeError,
    SigningKeyError,
    TaskExitError,
)

_COLD = True
_S3: Any = None

#: Frames from these files are dropped from the front of a remote traceback.
_INTERNAL = (os.path.dirname(__file__), os.path.join("dask", "_task_spec"))


_find_class = compat.find_class


#: Inputs of a task read at once; each reads a large object in `_transfer_concurrency`
#: parallel ranges, so the S3 client's pool holds both: a request beyond the pool would
#: open (and throw away) a connection of its own.
_LOADERS = 16


def _s3() -> Any:
    global _S3
    if _S3 is None:
        import botocore.session
        from botocore.config import Config

        _S3 = botocore.session.get_session().create_client(
            "s3",
            config=Config(retries={"mode": "standard", "max_attempts": 5},
                          max_pool_connections=_LOADERS * max(1, _transfer_concurrency())),
        )
    return _S3


def _transfer_concurrency() -> int:
    return int(os.environ.get(protocol.TRANSFER_CONCURRENCY_ENV, protocol.TRANSFER_CONCURRENCY))


def _signing_key() -> bytes:
    """The deployment's signing key (`env.signing_key`: the one place the handler gets it)."""
    return env.signing_key()


def _key_check() -> dict:
    """``{"id": key_id}`` of the signing key this environment reads, or ``{"error": why}``."""
    try:
        return {"id": env.key_id(_signing_key())}
    except SigningKeyError as exc:
        return {"error": str(exc)}


_RUN_KEYS: dict[str, bytes] = {}


def run_key(key: str) -> bytes:
    """The signing key of the run that job or result ``key`` belongs to (cached: a warm
    environment serves many tasks of few runs)."""
    run = protocol.run_of(key)
    found = _RUN_KEYS.get(run)
    if found is None:
        if len(_RUN_KEYS) > 64:
            _RUN_KEYS.clear()
        found = _RUN_KEYS[run] = protocol.run_key(_signing_key(), run)
    return found


def versions() -> dict:
    """What this execution environment runs, for the client's version check."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": "{}.{}".format(*sys.version_info[:2]), "protocol": protocol.PROTOCOL_VERSION}
    for dist in protocol.VERSIONED:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def _user_frames(tb: Any) -> Any:
    """Skip the handler's and dask's own frames at the head of a traceback."""
    while tb is not None and any(p in tb.tb_frame.f_code.co_filename for p in _INTERNAL):
        tb = tb.tb_next
    return tb


def _traceback_dict(tb: Any) -> dict | None:
    """The traceback as tblib's dict form (so the client can rebuild a real one)."""
    tb = _user_frames(tb)
    frames = []
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    out = None
    for t in reversed(frames):
        code = t.tb_frame.f_code
        out = {
            "tb_frame": {
                "f_code": {"co_filename": code.co_filename, "co_name": code.co_name},
                "f_globals": {"__name__": t.tb_frame.f_globals.get("__name__", "?"),
                              "__file__": code.co_filename},
                "f_lineno": t.tb_lineno,
            },
            "tb_lineno": t.tb_lineno,
            "tb_next": out,
        }
    return out


def _error_payload(exc: BaseException) -> tuple[dict, list]:
    import cloudpickle

    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    tb = _traceback_dict(exc.__traceback__)
    try:
        frames = protocol.dumps_object(exc)
        cloudpickle.loads(frames[0], buffers=frames[1:])
    except Exception:  # the exception itself does not pickle: send its text
        frames = protocol.dumps_object(None)
    header = {
        "kind": "error",
        "exc_type": protocol.type_name(exc),
        "exc_text": text,
        "traceback": tb,
        "traceback_text": "".join(traceback.format_list(
            traceback.extract_tb(_user_frames(exc.__traceback__)))),
    }
    return header, frames


class _InputCache:
    """Inputs read from S3 lately, as verified bytes, so that the tasks a warm execution
    environment runs next (the other chunks that read the same climatology, the same scattered
    array) do not fetch them again. At most a quarter of the function's memory; objects are
    immutable (every output and shared value has a key of its own), so no entry goes stale.
    """

    def __init__(self) -> None:
        from collections import OrderedDict

        self._entries: OrderedDict[str, bytearray] = OrderedDict()
        self._bytes = 0
        memory_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") or 1024)
        self.budget = memory_mb * 2**20 // 4

    def get(self, key: str) -> bytearray | None:
        raw = self._entries.get(key)
        if raw is not None:
            self._entries.move_to_end(key)
        return raw

    def put(self, key: str, raw: bytearray) -> None:
        """Keep a copy of ``raw`` (the caller's values may be views of it, and change)."""
        if len(raw) > self.budget // 2:
            return
        self._entries[key] = bytearray(raw)
        self._bytes += len(raw)
        while self._bytes > self.budget:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= len(dropped)


_INPUTS = _InputCache()


def _resolve(args: tuple, key: bytes) -> tuple:
    """Replace `ObjectRef` inputs (top-level, or values of a top-level dict) by their values,
    each verified as the object it names (signed with the run's ``key``)."""
    refs: dict = {}
    for a in args:
        for v in (a.values() if isinstance(a, dict) else (a,)):
            if isinstance(v, protocol.ObjectRef):
                refs[v] = None
    if not refs:
        return args
    from concurrent.futures import ThreadPoolExecutor

    def load(ref: protocol.ObjectRef) -> Any:
        expected = protocol.identity(ref.bucket, ref.key)
        raw = _INPUTS.get(ref.key)
        if raw is None:
            try:
                raw = s3io.get(_s3(), ref.bucket, ref.key, _transfer_concurrency())
            except FileNotFoundError:
                raise InputLostError(
                    f"input s3://{ref.bucket}/{ref.key} of this task was deleted before it was "
                    "read (by hand, or by a lifecycle rule shorter than the computation): "
                    "recompute the graph; if it keeps happening, lengthen the bucket's "
                    "lifecycle expiry") from None
            payload = protocol.decode(raw, key, expected)  # verified before it is kept
            _INPUTS.put(ref.key, raw)  # (a copy: this task's values are views of ``raw``)
            return payload.load(_find_class)
        # a copy: a task may change its inputs in place, and the next one must not see that
        return protocol.decode(bytearray(raw), key, expected).load(_find_class)

    with ThreadPoolExecutor(min(_LOADERS, len(refs))) as pool:
        values = dict(zip(refs, pool.map(load, refs), strict=True))

    def swap(v: Any) -> Any:
        return values[v] if isinstance(v, protocol.ObjectRef) else v

    return tuple({k: swap(v) for k, v in a.items()} if isinstance(a, dict) else swap(a)
                 for a in args)


#: Files that travel with jobs and are installed here, by content hash: their folder.
_INSTALLED: dict[str, str] = {}


def _install_files(bucket: str, files: Any, key: bytes) -> None:
    """Put the job's modules and uploaded files (``[[name, sha256, s3 key], ...]``) on
    ``sys.path``, each fetched and verified once per execution environment; a newer version
    of a module replaces the one imported before."""
    import hashlib
    import importlib

    changed = False
    for name, sha, s3_key in files:
        if sha in _INSTALLED:
            continue
        raw = s3io.get(_s3(), bucket, s3_key, _transfer_concurrency())
        payload = protocol.decode(raw, key, protocol.identity(bucket, s3_key))
        data = bytes(payload.frames[0])
        if hashlib.sha256(data).hexdigest() != sha:
            raise protocol.PayloadError(f"refused s3://{bucket}/{s3_key}: its content is not "
                                        f"the {name} the job names")
        folder = os.path.join(tempfile.gettempdir(), "dask-lambda-files", sha[:16])
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(data)
        entry = path if name.endswith((".zip", ".egg")) else folder
        sys.path.insert(0, entry)
        _INSTALLED[sha] = folder
        module = name.rsplit(".", 1)[0]
        for loaded in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
            del sys.modules[loaded]  # the next import gets this version
        changed = True
    if changed:
        importlib.invalidate_caches()


def _sizeof(value: Any) -> int:
    try:
        from dask.sizeof import sizeof
    except ImportError:  # a plain (non-Dask) job
        return sys.getsizeof(value)
    return int(sizeof(value))


def _failed(exc: BaseException) -> tuple:
    header, frames = _error_payload(exc)
    return "error", header, frames, 0, None


def _exit_error(exc: BaseException) -> TaskExitError:
    """What a task that raised SystemExit, KeyboardInterrupt (or another BaseException that
    ends a process) is reported as: its own error, which does not end the client's script."""
    if isinstance(exc, SystemExit):
        what = f"called sys.exit({exc.code!r}) (SystemExit)"
    else:
        what = f"raised {type(exc).__name__}" + (f": {exc}" if str(exc) else "")
    error = TaskExitError(
        f"the task {what}, which would end the function's process: it is reported as the "
        "task's error and was not retried. Return a value, or raise an exception to fail "
        "the task.")
    return error.with_traceback(exc.__traceback__)


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
def _captured_output(box: dict) -> Iterator[None]:
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


def _execute(func: Any, args: tuple, kwargs: dict, box: dict) -> tuple:
    """Run the task: (status, header, frames, sizeof, type name) of its output or error."""
    try:
        with _captured_output(box):
            result = func(*args, **kwargs)
    except Exception as exc:
        return _failed(note_client_paths(exc))
    except BaseException as exc:  # the task's outcome too, not a crash of its environment
        return _failed(_exit_error(exc))
    try:
        frames = protocol.dumps_object(result)
    except Exception as exc:
        return _failed(TypeError(
            f"the task's result of type {type(result).__name__} cannot be pickled to send it "
            f"back from Lambda: {exc}"))
    typename = protocol.type_name(result)
    return "ok", {"kind": "result", "type": typename}, frames, _sizeof(result), typename


def _run(event: dict, context: Any) -> dict:
    global _COLD
    cold, _COLD = _COLD, False
    t0 = time.time()
    counts0 = s3io.COUNTS.copy()
    captured: dict = {}
    bucket = event["bucket"]
    key = run_key(event["job_key"])
    if event.get("job") is not None:
        raw = bytearray(base64.b64decode(event["job"]))
    else:
        raw = s3io.get(_s3(), bucket, event["job_key"], _transfer_concurrency())
    job = protocol.decode(raw, key,
                          protocol.identity(bucket, protocol.job_identity(event["job_key"])))
    if job.header.get("kind") != "job":
        raise protocol.PayloadError(f"expected a job payload, got {job.header.get('kind')!r}")
    t1 = time.time()

    # modules the job imports; a missing or refused one raises out of the handler
    _install_files(bucket, job.header.get("files") or (), key)
    try:
        func, args, kwargs = job.load(find_class=_find_class)
    except Exception as exc:  # e.g. a module the task needs is not installed here
        status, header, frames, size, typename = _failed(exc)
    else:
        del raw, job
        # a missing input raises out of the handler: not the task's fault
        args = _resolve(args, key)
        t1 = time.time()
        status, header, frames, size, typename = _execute(func, args, kwargs, captured)
        del func, args, kwargs
    t2 = time.time()

    stats = {
        "cold": cold,
        "read_s": t1 - t0,
        "run_s": t2 - t1,
        "request_id": getattr(context, "aws_request_id", None),
        "pid": os.getpid(),
    }
    header["stats"] = stats
    at = protocol.identity(bucket, event["result_key"])  # also when it travels inline
    parts = protocol.encode_parts(header, frames, key, at)
    nbytes = protocol.parts_size(parts)
    max_output = event.get("max_output")
    if status == "ok" and max_output is not None and nbytes > int(max_output):
        status, header, frames, size, typename = _failed(OutputTooLargeError(
            f"the task's output is {nbytes:,} bytes encoded, more than max-output="
            f"{int(max_output):,}; it was not stored. Return less (e.g. write large data to S3 "
            "inside the task and return its path), or raise the limit: "
            f"LambdaClient(..., max_output={2 * nbytes}) or DASK_LAMBDA__MAX_OUTPUT"))
        header["stats"] = stats
        parts = protocol.encode_parts(header, frames, key, at)
        nbytes = protocol.parts_size(parts)
    response: dict = {"status": status, "nbytes": nbytes, "size": size, "type": typename,
                      "stats": stats, "result": None, "result_key": None,
                      "log": captured.get("log")}
    if nbytes <= int(event.get("inline_max", 0)) and protocol.fits_inline(
            nbytes, len(json.dumps(response)) + 1024):  # 1024: the stats added below
        response["result"] = base64.b64encode(b"".join(parts)).decode()
    else:
        trigger.refuse_jobs_prefix(event["result_key"], event.get("job_key"))
        s3io.put(_s3(), bucket, event["result_key"], parts, _transfer_concurrency())
        response["result_key"] = event["result_key"]
    del parts, frames
    stats["write_s"] = time.time() - t2
    stats["peak_rss_mb"] = _peak_rss_mb()
    stats["duration_s"] = time.time() - t0
    stats["s3_gets"] = s3io.COUNTS["get"] - counts0["get"]
    stats["s3_puts"] = s3io.COUNTS["put"] - counts0["put"]
    return response


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def handle(event: dict, context: Any) -> dict:
    """Dispatch one Lambda event."""
    compat.install()  # this process runs tasks: distributed's worker APIs explain themselves
    if "Records" in event:  # S3-trigger mode: an ObjectCreated notification
        return trigger.handle_records(event, context)
    op = event.get("op")
    if op == "ping":
        answer: dict = {"status": "ok", "versions": versions()}
        if event.get("key"):  # and whether this environment can read its signing key
            answer["key"] = _key_check()
        return answer
    if op == "run":
        return _run(event, context)
    raise ValueError(f"unknown dask-lambda event op {op!r}; expected 'run' or 'ping'")
