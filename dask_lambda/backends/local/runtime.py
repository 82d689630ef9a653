"""A local stand-in for the Lambda runtime: one process = one execution environment.

Started by the local backend as a fresh interpreter
(``python -m dask_lambda.backends.local.runtime``), like Lambda starts its
runtime, so a user's script is never re-imported.  It imports the handler
named by ``_HANDLER`` (``module.function``, as Lambda's variable), then
serves invocations one at a time, warm, until its stdin closes.

Wire protocol on stdin/stdout: 4-byte big-endian length, then JSON.  The
process keeps the real stdout for that and points file descriptor 1 at
stderr, so whatever a task prints cannot corrupt the protocol.  Processes a
task forks get ``/dev/null`` in place of the protocol pipes, so one that
outlives its task cannot hold them open (the backend sees the environment's
exit at once) or write into them.

The environment is a session (process group) of its own, started by the
backend; whatever ends it (the backend closing stdin, or the client dying)
ends the whole group, so processes a task left running go with it, as they do
when Lambda shuts an execution environment down.  It also refuses opens of
the client's files (`dask_lambda.backends.local.files`), as Lambda cannot see
them.  This module imports only the standard library and the handler.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import struct
import sys
import threading
import time
import traceback
from typing import Any, NoReturn

_LEN = struct.Struct(">I")
_PARENT_POLL = 0.5


class LambdaContext:
    """The subset of Lambda's context object a handler can rely on."""

    def __init__(self, info: dict):
        self.aws_request_id: str = info["aws_request_id"]
        self.function_name: str = info.get("function_name", "dask-lambda-local")
        self.function_version = "$LATEST"
        self.memory_limit_in_mb: int = int(info.get("memory_limit_in_mb", 0))
        self.invoked_function_arn = (
            f"arn:aws:lambda:local:000000000000:function:{self.function_name}")
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = f"local/{os.getpid()}"
        self._deadline = float(info["deadline"])

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.time()) * 1000))


def _read(stream: Any) -> dict | None:
    """The next request, or None at end of input (also one cut short: the client died)."""
    head = stream.read(_LEN.size)
    if len(head) < _LEN.size:
        return None
    (n,) = _LEN.unpack(head)
    data = stream.read(n)
    return json.loads(data) if len(data) == n else None


def _write(stream: Any, msg: dict) -> None:
    data = json.dumps(msg).encode()
    stream.write(_LEN.pack(len(data)) + data)
    stream.flush()


def _end_environment() -> NoReturn:
    """Exit, killing this environment's process group (what its tasks left running) if it
    leads one (the backend starts it so; never the group of whoever ran it by hand)."""
    sys.stderr.flush()
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(0)


def _watch_parent(parent: int) -> None:
    """End the environment when the client that started it is gone (even mid-task)."""
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL)
    _end_environment()


def _release_in_children(fds: tuple[int, ...]) -> None:
    """Give forked children /dev/null in place of the protocol pipes (``fds``)."""
    def release() -> None:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in fds:
            os.dup2(null, fd, inheritable=False)
        os.close(null)

    os.register_at_fork(after_in_child=release)


def main() -> None:
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # prints from tasks go to stderr, as Lambda sends both to its log
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    sys.stdout = sys.stderr
    _release_in_children((proto_in.fileno(), proto_out.fileno()))
    own = (os.getcwd(), os.environ.get("TMPDIR", ""))
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True,
                     name="dask-lambda-parent-watch").start()

    module_name, _, func_name = os.environ["_HANDLER"].rpartition(".")
    try:
        handler = getattr(importlib.import_module(module_name), func_name)
    except Exception as exc:  # Lambda reports this as Runtime.ImportModuleError
        _write(proto_out, {"init_error": {"errorType": "Runtime.ImportModuleError",
                                          "errorMessage": f"{type(exc).__name__}: {exc}"}})
        return
    try:
        from .files import install

        install([d for d in own if d])
    except Exception as exc:  # a check that cannot be set up must not stop the environment
        print(f"dask-lambda: opens of the client's files are not checked here: {exc!r}",
              file=sys.stderr)
    _write(proto_out, {"ready": os.getpid()})

    while True:
        request = _read(proto_in)
        if request is None:  # the backend closed stdin, or the client died
            _end_environment()
        try:
            result = handler(request["event"], LambdaContext(request["context"]))
            reply = {"response": result}
        except Exception as exc:
            reply = {"error": {
                "errorType": type(exc).__name__,
                "errorMessage": str(exc),
                "stackTrace": traceback.format_exception(type(exc), exc, exc.__traceback__),
            }}
        try:
            try:
                _write(proto_out, reply)
            except TypeError as exc:  # a response that is not JSON
                _write(proto_out, {"error": {"errorType": "Runtime.MarshalError",
                                             "errorMessage": str(exc)}})
        except OSError:  # nobody reads the reply any more: the backend discarded us
            _end_environment()


if __name__ == "__main__":
    main()
