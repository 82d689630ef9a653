"""A local stand-in for the Lambda runtime: one process = one execution environment.

Started by the local backend as a fresh interpreter
(``python -m dask_lambda.backends.local_runtime``), like Lambda starts its
runtime, so a user's script is never re-imported.  It imports the handler
named by ``_HANDLER`` (``module.function``, as Lambda's variable), then
serves invocations one at a time, warm, until its stdin closes.

Wire protocol on stdin/stdout: 4-byte big-endian length, then JSON.  The
process keeps the real stdout for that and points file descriptor 1 at
stderr, so whatever a task prints cannot corrupt the protocol.  This module
imports only the standard library and the handler.
"""

from __future__ import annotations

import importlib
import json
import os
import struct
import sys
import time
import traceback
from typing import Any

_LEN = struct.Struct(">I")


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
    head = stream.read(_LEN.size)
    if len(head) < _LEN.size:
        return None
    (n,) = _LEN.unpack(head)
    return json.loads(stream.read(n))


def _write(stream: Any, msg: dict) -> None:
    data = json.dumps(msg).encode()
    stream.write(_LEN.pack(len(data)) + data)
    stream.flush()


def main() -> None:
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # prints from tasks go to stderr, as Lambda sends both to its log
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    sys.stdout = sys.stderr

    module_name, _, func_name = os.environ["_HANDLER"].rpartition(".")
    try:
        handler = getattr(importlib.import_module(module_name), func_name)
    except Exception as exc:  # Lambda reports this as Runtime.ImportModuleError
        _write(proto_out, {"init_error": {"errorType": "Runtime.ImportModuleError",
                                          "errorMessage": f"{type(exc).__name__}: {exc}"}})
        return
    _write(proto_out, {"ready": os.getpid()})

    while True:
        request = _read(proto_in)
        if request is None:
            return
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
            _write(proto_out, reply)
        except TypeError as exc:  # a response that is not JSON
            _write(proto_out, {"error": {"errorType": "Runtime.MarshalError",
                                         "errorMessage": str(exc)}})


if __name__ == "__main__":
    main()
