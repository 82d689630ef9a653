"""The executors of the gateway worker: `LambdaExecutor` ships each task to Lambda.

The worker hands its executor ``_run_task_simple(task_spec, data, delay)`` for every task
it runs; `LambdaExecutor`, instead of running it,

1. lets the trivial ones (an alias of another output, a literal) run here;
2. replaces large inputs held here by references to objects uploaded once
   (`dask_lambda.outputs`), pickles the task and its inputs into a signed job with the
   files it needs (`dask_lambda.shipping`), and has the dispatcher run it
   (`dask_lambda.dispatch`: attempts, throttling, pacing, billing);
3. returns the message ``_run_task_simple`` would have returned, so the worker, scheduler,
   dashboard and client see a normal finished or erred task (an output kept in S3 as its
   `ObjectRef`).

All of this is a coroutine on the worker's event loop: no thread per task.
"""

from __future__ import annotations

import asyncio
import threading
from time import time
from typing import Any

from dask.utils import key_split
from dask_lambda_handler import protocol, s3keys

from .. import batching, serialize
from .._compat import Alias, DataNode
from ..backends.base import Backend
from ..cost import CostMeter
from ..counters import ExecutorStats
from ..dispatch import Dispatcher
from ..errors import (
    DaskLambdaError,
    FunctionError,
    LambdaOutOfMemoryError,
    LambdaTimeoutError,
    RemoteTaskError,
)
from ..outputs import Outputs
from ..shipping import Shipping
from ..store import S3Store
from .async_executor import AsyncExecutor

#: Task types the gateway runs itself: an Alias renames another output (a persisted
#: partition, say) and a DataNode holds a literal; shipping either would copy data for nothing.
_LOCAL_TASKS = (Alias, DataNode)


def _type_named(name: str) -> type:
    """The type called ``module.qualname`` if its module is loaded here, else `ObjectRef`."""
    import sys

    module, _, qualname = name.rpartition(".")
    obj: Any = sys.modules.get(module)
    for part in qualname.split(".") if obj is not None else ():
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) else protocol.ObjectRef


class LambdaExecutor(AsyncExecutor):
    """Run the worker's tasks in Lambda (see the module docstring).

    Parameters
    ----------
    backend
        Where invocations run.
    store
        S3 access for job and result objects.
    layout
        Key layout of this run.
    signing_key
        The run's HMAC key (`protocol.run_key` of the key shared with the function).
    inline_max, retries, locality, max_output, oom_retry_memory
        As `dask_lambda.dispatch.Dispatcher` takes them.
    cost
        Accumulates billable usage and enforces the budget.
    share_min
        Input values held here of at least this many bytes are uploaded once and referenced
        (``None``: never); outputs of that size stay in S3 rather than travel back inline,
        since a task that reads one would have it uploaded again.
    """

    def __init__(self, backend: Backend, store: S3Store, layout: s3keys.Layout, *,
                 signing_key: bytes, inline_max: int, retries: int, locality: bool = True,
                 max_output: int | None = None, oom_retry_memory: int | None = None,
                 cost: CostMeter | None = None, share_min: int | None = None):
        super().__init__()
        self.backend = backend
        self.stats = ExecutorStats()
        self.cost = cost or CostMeter(backend.settings.memory)
        self.outputs = Outputs(store, layout, signing_key=signing_key, stats=self.stats,
                               share_min=share_min, retries=retries)
        self.shipping = Shipping(store, layout, signing_key=signing_key, stats=self.stats)
        self.dispatch = Dispatcher(backend, self.outputs, layout, signing_key=signing_key,
                                   stats=self.stats, cost=self.cost, inline_max=inline_max,
                                   retries=retries, locality=locality, max_output=max_output,
                                   oom_retry_memory=oom_retry_memory,
                                   output_inline_max=None if share_min is None or not locality
                                   else min(inline_max, share_min))
        #: The worker's data (`dask_lambda.outputs.LambdaData`).
        self.data = self.outputs.data
        #: Keys whose running task `cancel` stopped (until their task has ended).
        self._cancelling: set = set()
        #: The gateway worker, once it has started (`dask_lambda.gateway.GatewayWorker`).
        self.worker: Any = None
        serialize.prepare()

    @property
    def logs(self) -> Any:
        """What tasks printed in Lambda, by task key (`Dispatcher.logs`)."""
        return self.dispatch.logs

    def duration_estimates(self) -> dict[str, float]:
        """Median of the recent durations of each task prefix, in seconds."""
        return self.dispatch.duration_estimates()

    def _started(self, loop: asyncio.AbstractEventLoop) -> None:
        self.outputs.start(loop)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait, cancel_futures=cancel_futures)
        self.outputs.stop()

    def reset(self) -> None:
        """Forget every task and output for a new gateway worker (``client.restart()``): the
        outputs kept in S3 are deleted; counters, cost and logs stay."""
        self.outputs.reset()
        self._by_key.clear()
        self._cancelling.clear()
        self.worker = None

    async def close(self) -> int:
        """Delete everything this run wrote (`Outputs.close`)."""
        return await self.outputs.close()

    # -- one task ---------------------------------------------------------------------------

    def cancel(self, key: Any) -> bool:
        """Stop the running task ``key`` (the scheduler no longer wants it): its invocation is
        abandoned (the local backend kills its environment) and its slot freed. Returns
        whether it ran."""
        task = self._by_key.get(key)
        if task is None or task.done():
            return False
        self._cancelling.add(key)
        task.cancel()
        return True

    async def _run_task(self, task: Any, data: dict, delay: float) -> dict:
        key = task.key
        try:
            return await self._run_one(task, data, delay)
        except asyncio.CancelledError:
            if key not in self._cancelling:  # the worker is closing: not ours to absorb
                raise
            self._cancelling.discard(key)
            current: Any = asyncio.current_task()
            if hasattr(current, "uncancel"):  # Python >= 3.11
                current.uncancel()
            self.stats.cancelled += 1
            # "Reschedule": the worker forgets a cancelled task, and hands one that was asked
            # for again meanwhile back to the scheduler to run anew (never this attempt's
            # outcome, which does not exist).
            from distributed import Reschedule

            return self._erred(key, Reschedule(), None, "", time(), delay, count=False)

    async def _run_one(self, task: Any, data: dict, delay: float) -> dict:
        start = time()
        key = task.key
        lost = self.outputs.lost(key)
        if lost is not None:  # a gather could not read its output, too often
            return self._erred(key, lost, None, "", start, delay)
        if type(task) in _LOCAL_TASKS:  # renaming or literal data: no work worth a Lambda
            self.stats.local_tasks += 1
            return self._finished(task(data), start, delay)
        shared: list[protocol.ObjectRef] = []
        try:
            token, parts = await self._job(task, data, shared)
        except _NotSent as refused:
            return self._erred(key, refused.error, None, "", start, delay)
        del data
        prefixes = batching.group_prefixes(task)
        if prefixes is None:
            prefixes = (key_split(key),)
        else:  # a fused group of graph tasks
            self.stats.batches += 1
            self.stats.batched_tasks += len(prefixes)
        try:
            outcome = await self.dispatch.run(token, parts, key, prefixes)
        except protocol.PayloadError as exc:  # a tampered or misplaced object: never retried
            return self._erred(key, type(exc)(f"task {key!r}: {exc}"), None, "", start, delay)
        except DaskLambdaError as exc:
            return self._erred(key, _in_task(key, exc, prefixes), None, "", start, delay)
        finally:
            self.stats.tasks += 1
            if shared:
                self.outputs.release_unheld(shared)
        return self._outcome(key, outcome, start, delay)

    async def _job(self, task: Any, data: dict, shared: list) -> tuple[str, list]:
        """The task's signed job: its large inputs held here shared, its modules shipped."""
        key = task.key
        try:
            if self.outputs.share_min is not None and data:
                worker_tasks = self.worker.state.tasks if self.worker is not None else {}
                data = await self.outputs.share_inputs(data, shared, worker_tasks)
        except Exception as exc:  # S3 refused or failed: the task cannot be sent
            raise _NotSent(type(exc)(f"task {key!r}: {exc}")) from None
        try:
            frames, modules = serialize.dumps_shipping((task, (data,), {}))
        except Exception as exc:
            raise _NotSent(serialize.unpicklable(key, exc)) from None
        header: dict = {"kind": "job", "key": str(key)}
        if self.shipping.needed(modules):
            try:
                header["files"] = await self.shipping.files(modules)
            except Exception as exc:  # S3 refused or failed: the task cannot be sent
                raise _NotSent(type(exc)(f"task {key!r}: {exc}")) from None
        return self.dispatch.job(key, header, frames)

    def _outcome(self, key: Any, outcome: protocol.Payload | protocol.ObjectRef,
                 start: float, delay: float) -> dict:
        if isinstance(outcome, protocol.ObjectRef):  # the output stays in S3
            self.stats.outputs_in_s3 += 1
            self.stats.output_bytes_in_s3 += outcome.nbytes
            return self._finished(outcome, start, delay)
        header = outcome.header
        if header["kind"] == "error":
            error = outcome.load()
            if not isinstance(error, BaseException):
                error = RemoteTaskError(f"{header['exc_text']} (raised in Lambda)")
            tb = None
            if header.get("traceback"):
                import tblib

                tb = tblib.Traceback.from_dict(header["traceback"]).as_traceback()
            return self._erred(key, error, tb, header.get("traceback_text", ""), start, delay)
        return self._finished(outcome.load(), start, delay)

    # -- results in the worker's format (see distributed.worker._run_task_simple) ------------

    def _finished(self, value: Any, start: float, delay: float) -> dict:
        """The worker's message for a finished task; a reference reports its value's size."""
        typ: type | None
        if isinstance(value, protocol.ObjectRef):
            nbytes, typ = value.size, _type_named(value.type)
        else:
            from dask.sizeof import sizeof

            nbytes, typ = sizeof(value), type(value) if value is not None else None
        return {"op": "task-finished", "status": "OK", "result": value, "nbytes": nbytes,
                "type": typ, "start": start + delay, "stop": time() + delay,
                "thread": threading.get_ident()}

    def _erred(self, key: Any, exc: BaseException, tb: Any, tb_text: str,
               start: float, delay: float, *, count: bool = True) -> dict:
        from distributed.core import error_message
        from distributed.protocol import pickle, to_serialize

        if count:
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


class _NotSent(Exception):
    """The task's job could not be made: ``error`` is what the task fails with."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def _in_task(key: Any, exc: DaskLambdaError, prefixes: tuple[str, ...]) -> DaskLambdaError:
    """``exc``, its message naming the task (and batching, when a fused group timed out or ran
    out of memory)."""
    advice = ""
    if len(prefixes) > 1 and isinstance(exc, (LambdaTimeoutError, LambdaOutOfMemoryError)):
        advice = (f" This invocation ran {len(prefixes)} graph tasks fused by batching: "
                  "LambdaClient(..., batching=False) runs one task per invocation.")
    message = f"task {key!r}: {exc}{advice}"
    if isinstance(exc, FunctionError):  # keep the handler's error type
        return type(exc)(message, exc.error_type)
    return type(exc)(message)
