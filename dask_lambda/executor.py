"""The gateway: an Executor that ships each task the Dask worker runs to Lambda.

The cluster's one worker is a normal ``distributed.Worker`` created with
``executor=LambdaExecutor(...)``.  The worker hands the executor
``_run_task_simple(task_spec, data, delay)`` for every task it runs; instead
of running it, the executor

1. pickles ``task_spec`` and its resolved inputs into a signed job
   (:mod:`dask_lambda_handler.protocol`), inline in the invoke request when
   small, else as an S3 object under ``jobs/``;
2. invokes the handler through the backend (async, on the worker's event
   loop: no thread per task);
3. reads the output (inline, or from ``results/``), verifies and unpickles it,
   and returns the message ``_run_task_simple`` would have returned, so the
   worker, scheduler, dashboard and client see a normal finished or erred task.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import itertools
import threading
from dataclasses import dataclass
from time import time
from typing import Any

from dask_lambda_handler import protocol

from . import serialize
from .backends.base import Backend
from .errors import DaskLambdaError, HandlerCrashedError, RemoteTaskError
from .store import S3Store

_GC_INTERVAL = 1.0


@dataclass
class ExecutorStats:
    """Counters of one client's Lambda work.

    Attributes
    ----------
    tasks
        Tasks finished or erred.
    errors
        Tasks that ended in an error.
    retries
        Extra attempts after an execution environment crashed.
    inline_jobs, s3_jobs
        Jobs sent in the invoke request / as S3 objects.
    bytes_sent, bytes_received
        Job and output bytes moved by this process (inline and S3).
    """

    tasks: int = 0
    errors: int = 0
    retries: int = 0
    inline_jobs: int = 0
    s3_jobs: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0


class LambdaExecutor(concurrent.futures.Executor):
    """Run the worker's tasks in Lambda.

    Parameters
    ----------
    backend
        Where invocations run.
    store
        S3 access for job and result objects.
    layout
        Key layout of this run.
    signing_key
        HMAC key shared with the function.
    inline_max
        Jobs and outputs up to this many encoded bytes travel in the invoke request/response.
    retries
        Further attempts when an execution environment crashes.
    """

    def __init__(self, backend: Backend, store: S3Store, layout: protocol.Layout, *,
                 signing_key: bytes, inline_max: int, retries: int):
        self.backend = backend
        self.store = store
        self.layout = layout
        self.signing_key = signing_key
        self.inline_max = inline_max
        self.retries = retries
        self.stats = ExecutorStats()
        self._seq = itertools.count()
        self._running: dict[asyncio.Task, asyncio.AbstractEventLoop] = {}
        self._garbage: list[str] = []
        self._gc: asyncio.Task | None = None

    # -- concurrent.futures.Executor -------------------------------------------------------

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        from distributed.worker import _run_task_simple

        future: concurrent.futures.Future = concurrent.futures.Future()
        if fn is not _run_task_simple or kwargs:
            future.set_exception(DaskLambdaError(
                f"dask-lambda can only run Dask tasks, not {fn!r}: actors and custom "
                "worker executors are not supported in Lambda"))
            return future
        loop = asyncio.get_running_loop()  # the worker's event loop
        task = loop.create_task(self._run_task(*args))
        self._running[task] = loop

        def done(t: asyncio.Task) -> None:
            self._running.pop(t, None)
            if t.cancelled():
                future.cancel()
                future.set_running_or_notify_cancel()
            elif t.exception() is not None:
                future.set_exception(t.exception())
            else:
                future.set_result(t.result())

        task.add_done_callback(done)
        if self._gc is None:
            self._gc = loop.create_task(self._collect_garbage())
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        # Called from a thread by Worker.close: cancel in-flight tasks on their loop.
        for task, loop in list(self._running.items()):
            loop.call_soon_threadsafe(task.cancel)
        if self._gc is not None:
            self._gc.get_loop().call_soon_threadsafe(self._gc.cancel)

    # -- one task -------------------------------------------------------------------------

    async def _run_task(self, task: Any, data: dict, delay: float) -> dict:
        start = time()
        key = task.key
        try:
            frames = serialize.dumps((task, (data,), {}))
        except Exception as exc:
            return self._erred(key, serialize.unpicklable(key, exc), None, "", start, delay)
        blob = protocol.encode({"kind": "job", "key": str(key)}, frames, self.signing_key)
        del frames, data
        try:
            payload = await self._call(protocol.task_token(key) + f"-{next(self._seq)}", blob)
        except DaskLambdaError as exc:
            return self._erred(key, type(exc)(f"task {key!r}: {exc}"), None, "", start, delay)
        finally:
            self.stats.tasks += 1
        header = payload.header
        if header["kind"] == "error":
            exc = payload.load()
            if not isinstance(exc, BaseException):
                exc = RemoteTaskError(f"{header['exc_text']} (raised in Lambda)")
            tb = None
            if header.get("traceback"):
                import tblib

                tb = tblib.Traceback.from_dict(header["traceback"]).as_traceback()
            return self._erred(key, exc, tb, header.get("traceback_text", ""), start, delay)
        return self._finished(payload.load(), start, delay)

    async def _call(self, token: str, blob: bytes) -> protocol.Payload:
        """Send one job (with retries after crashes) and return its verified output."""
        event: dict = {"op": "run", "bucket": self.layout.bucket,
                       "job_key": self.layout.job_key(token, 0), "inline_max": self.inline_max}
        if len(blob) <= self.inline_max:
            event["job"] = base64.b64encode(blob).decode()
            self.stats.inline_jobs += 1
        else:
            await self.store.put(event["job_key"], blob)
            self.stats.s3_jobs += 1
        self.stats.bytes_sent += len(blob)
        del blob
        try:
            response = await self._invoke_with_retries(token, event)
        finally:
            if "job" not in event:  # the job object is needed until the last attempt ends
                self._garbage.append(event["job_key"])
        if response.get("result") is not None:
            out = base64.b64decode(response["result"])
        else:
            out = await self.store.get(response["result_key"])
            self._garbage.append(response["result_key"])
        self.stats.bytes_received += len(out)
        return protocol.decode(out, self.signing_key)

    async def _invoke_with_retries(self, token: str, event: dict) -> dict:
        for attempt in itertools.count():
            event["result_key"] = self.layout.result_key(token, attempt)
            try:
                return await self.backend.invoke(event)
            except HandlerCrashedError as exc:
                if attempt >= self.retries:
                    raise HandlerCrashedError(
                        f"{exc} Gave up after {attempt + 1} attempts (retries={self.retries}). "
                        "If the task kills its process (os._exit, a crashing C extension), fix "
                        "that; otherwise raise LambdaClient(..., retries=N).") from None
                self.stats.retries += 1
        raise AssertionError("unreachable")

    # -- results in the worker's format (see distributed.worker._run_task_simple) ----------------

    def _finished(self, value: Any, start: float, delay: float) -> dict:
        from dask.sizeof import sizeof

        return {"op": "task-finished", "status": "OK", "result": value,
                "nbytes": sizeof(value), "type": type(value) if value is not None else None,
                "start": start + delay, "stop": time() + delay, "thread": threading.get_ident()}

    def _erred(self, key: Any, exc: BaseException, tb: Any, tb_text: str,
               start: float, delay: float) -> dict:
        from distributed.core import error_message
        from distributed.protocol import pickle, to_serialize

        self.stats.errors += 1
        msg: dict = dict(error_message(exc))
        if tb is not None:
            try:
                msg["traceback"] = to_serialize(pickle.dumps(tb))
            except Exception:  # keep the text; a text traceback object would hang the client
                msg["traceback"] = None
            msg["traceback_text"] = tb_text
        else:
            msg["traceback"] = None
        msg.update(op="task-erred", actual_exception=exc, start=start + delay,
                   stop=time() + delay, thread=threading.get_ident())
        return msg

    # -- clean-up -------------------------------------------------------------------------

    async def _collect_garbage(self) -> None:
        """Delete used job and result objects in batches, off the per-task path."""
        while True:
            await asyncio.sleep(_GC_INTERVAL)
            await self.flush_garbage()

    async def flush_garbage(self) -> None:
        batch, self._garbage = self._garbage, []
        if batch:
            try:
                await self.store.delete(batch)
            except Exception:  # they are under the run prefix, which close() removes
                pass

    async def close(self) -> int:
        """Delete everything this run wrote; returns how many objects were left to delete."""
        if self._gc is not None:
            self._gc.cancel()
        await self.flush_garbage()
        return await self.store.delete_prefixes(self.layout.run_prefixes)
