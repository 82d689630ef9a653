"""A task's outcome as the handler sends it back: its result, or its error and traceback."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

from . import protocol
from .errors import TaskExitError

#: Frames from these files are dropped from the front of a remote traceback.
_INTERNAL = (os.path.dirname(__file__), os.path.join("dask", "_task_spec"))


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


def error_payload(exc: BaseException) -> tuple[dict, list]:
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


def sizeof(value: Any) -> int:
    try:
        from dask.sizeof import sizeof
    except ImportError:  # a plain (non-Dask) job
        return sys.getsizeof(value)
    return int(sizeof(value))


def failed(exc: BaseException) -> tuple:
    header, frames = error_payload(exc)
    return "error", header, frames, 0, None


def exit_error(exc: BaseException) -> TaskExitError:
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


