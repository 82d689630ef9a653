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
import contextvars
import functools
import hashlib
import itertools
import json
import logging
import random
import statistics
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from time import time
from typing import Any

from dask._task_spec import Alias, DataNode
from dask.sizeof import sizeof
from dask.utils import key_split
from dask_lambda_handler import protocol

from . import batching, serialize
from .backends.base import Backend
from .cost import CostMeter, billed_ms, invocation_ms
from .errors import (
    DaskLambdaError,
    FunctionError,
    HandlerCrashedError,
    LambdaOutOfMemoryError,
    LambdaThrottledError,
    LambdaTimeoutError,
    RemoteTaskError,
    ResultLostError,
)
from .scaling import Governor
from .store import S3Store

_GC_INTERVAL = 1.0
_LOG_KEYS = 10_000
_DURATION_SAMPLES = 25  # recent durations kept per task prefix; their median is the estimate
#: What tasks print in Lambda is logged here at INFO (and kept for LambdaClient.get_task_logs).
task_log = logging.getLogger("dask_lambda.task_output")
#: Task types the gateway runs itself: an Alias renames another output (a persisted
#: partition, say) and a DataNode holds a literal; shipping either would copy data for nothing.
_LOCAL_TASKS = (Alias, DataNode)
_THROTTLE_RETRIES = 10  # a throttled invoke is retried this often, backing off, before failing
_THROTTLE_BASE = 0.05
_THROTTLE_CAP = 5.0
_ADVICE = {
    HandlerCrashedError: " If the task kills its process (os._exit, a crashing C extension), "
                         "fix that; otherwise raise LambdaClient(..., retries=N).",
    ResultLostError: " Something deletes objects under the bucket's results/ prefix while "
                     "the computation runs: stop it, or lengthen the lifecycle expiry.",
}


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
        Extra attempts after an execution environment crashed, an output was lost, or an
        out-of-memory task was given more memory.
    throttled
        Invocations refused with 429 and retried after a backoff.
    local_tasks
        Trivial tasks (aliases, literals) the gateway ran itself, without an invocation.
    inline_jobs, s3_jobs
        Jobs sent in the invoke request / as S3 objects.
    bytes_sent, bytes_received
        Job and output bytes moved by this process (inline and S3, gathers included).
    outputs_in_s3, output_bytes_in_s3
        Outputs left in S3 for the tasks that use them (never downloaded unless gathered).
    batches, batched_tasks
        Tasks that ran a fused group of graph tasks (`dask_lambda.batching`), and the graph
        tasks those groups held.
    cancelled
        Running tasks stopped because the scheduler no longer wanted them (cancelled, or
        their last future released). On AWS, Lambda bills each until it ends by itself.
    shared_values, shared_bytes
        Values held here (graph literals, scattered data, small outputs) uploaded to S3 once
        for the tasks that read them (``share-min``), and their encoded bytes.
    shared_bytes_saved
        Bytes those references kept out of jobs: what each later job that read a shared
        value would have carried again.
    """

    tasks: int = 0
    errors: int = 0
    retries: int = 0
    throttled: int = 0
    local_tasks: int = 0
    inline_jobs: int = 0
    s3_jobs: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    outputs_in_s3: int = 0
    output_bytes_in_s3: int = 0
    batches: int = 0
    batched_tasks: int = 0
    cancelled: int = 0
    shared_values: int = 0
    shared_bytes: int = 0
    shared_bytes_saved: int = 0


#: Values of outputs kept in S3, downloaded for the gather being answered in this context
#: (`dask_lambda.gateway.GatewayWorker.get_data`): other readers of the worker's data, the
#: tasks it ships to Lambda, keep seeing references.
RESOLVED: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "dask_lambda_resolved", default=None)


class LambdaData(MutableMapping):
    """The gateway worker's data: small values, or `ObjectRef`s to outputs kept in S3.

    The scheduler counts references between tasks: it tells the worker to forget a key only
    when no task or client future needs it any more. Several keys may hold the same
    reference (an alias of a persisted output), so references are counted here too: an S3
    object is deleted when the last key holding it is forgotten or replaced.
    """

    def __init__(self, release: Any):
        self._data: dict = {}
        self._holders: Counter = Counter()
        self._release = release

    @property
    def holders(self) -> Counter:
        """How many keys hold each `ObjectRef`."""
        return self._holders

    def __getitem__(self, key: Any) -> Any:
        resolved = RESOLVED.get()
        if resolved is not None and key in resolved:  # a gather: the value, not the reference
            return resolved[key]
        return self._data[key]

    def peek(self, key: Any) -> Any:
        """What the worker holds for ``key`` (a value or an `ObjectRef`), or None."""
        return self._data.get(key)

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(value, protocol.ObjectRef):
            self._holders[value] += 1
        old = self._data.get(key, None)
        self._data[key] = value
        self._drop(old)

    def __delitem__(self, key: Any) -> None:
        self._drop(self._data.pop(key))

    def _drop(self, value: Any) -> None:
        if isinstance(value, protocol.ObjectRef):
            self._holders[value] -= 1
            if self._holders[value] <= 0:
                del self._holders[value]
                self._release(value)

    def __iter__(self) -> Iterator:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def _type_named(name: str) -> type:
    """The type called ``module.qualname`` if its module is loaded here, else `ObjectRef`."""
    import sys

    module, _, qualname = name.rpartition(".")
    obj: Any = sys.modules.get(module)
    for part in qualname.split(".") if obj is not None else ():
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) else protocol.ObjectRef


def _fits_inline(nbytes: int, event: dict) -> bool:
    """Whether a job of ``nbytes`` fits in ``event`` within Lambda's invoke payload limit (the
    ``inline-max`` setting may allow more than fits, once base64 and JSON are counted)."""
    if 4 * -(-nbytes // 3) < protocol.INVOKE_PAYLOAD_LIMIT // 2:  # far below: nothing to count
        return True
    # the result key the attempts add is about as long as the job key
    envelope = len(json.dumps(event)) + 2 * len(event["job_key"]) + 64
    return protocol.fits_inline(nbytes, envelope)


class _AsyncExecutor(concurrent.futures.Executor):
    """An Executor whose work is a coroutine on the worker's event loop (no thread per task).

    The worker calls ``submit(_run_task_simple, task_spec, data, delay)`` from its event
    loop; subclasses implement ``_run_task(task_spec, data, delay)`` returning the message
    ``_run_task_simple`` would have returned.
    """

    def __init__(self) -> None:
        self._running: dict[asyncio.Task, asyncio.AbstractEventLoop] = {}
        #: The running task of each key (a key runs once at a time on the worker).
        self._by_key: dict[Any, asyncio.Task] = {}

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> asyncio.Future:  # type: ignore[override]
        """Start ``fn(*args)`` on the running (worker's) loop; returns its asyncio task.

        The worker awaits what this returns through ``loop.run_in_executor``, which hands
        an asyncio future through as it is (`asyncio.wrap_future`): no concurrent future,
        no thread hand-off and no wake-up of the loop through its self-pipe per task.
        """
        from distributed.worker import _run_task_simple

        loop = asyncio.get_running_loop()  # the worker's event loop
        if fn is not _run_task_simple or kwargs:
            refused = loop.create_future()
            refused.set_exception(DaskLambdaError(
                f"dask-lambda can only run Dask tasks, not {fn!r}: actors and custom "
                "worker executors are not supported in Lambda"))
            return refused
        key = args[0].key
        task = loop.create_task(self._run_task(*args))
        self._running[task] = loop
        self._by_key[key] = task
        task.add_done_callback(functools.partial(self._forget, key))
        self._started(loop)
        return task

    def _forget(self, key: Any, task: asyncio.Task) -> None:
        self._running.pop(task, None)
        if self._by_key.get(key) is task:
            del self._by_key[key]

    def _started(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hook: called on each submit, on the worker's loop."""

    async def _run_task(self, task: Any, data: dict, delay: float) -> dict:
        raise NotImplementedError

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        # Called from a thread by Worker.close: cancel in-flight tasks on their loop.
        for task, loop in list(self._running.items()):
            loop.call_soon_threadsafe(task.cancel)


class LambdaExecutor(_AsyncExecutor):
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
        The run's HMAC key (`protocol.run_key` of the key shared with the function).
    inline_max
        Jobs and outputs up to this many encoded bytes travel in the invoke request/response.
    retries
        Further attempts when an execution environment crashes.
    locality
        Keep outputs above ``inline_max`` in S3 (True) or download every output (False).
    max_output
        Largest encoded output a task may return, in bytes (``None``: no limit).
    oom_retry_memory
        Retry a task killed for memory once with this much memory (MB), where the backend
        can; ``None``: no retry.
    cost
        Accumulates billable usage and enforces the budget.
    share_min
        Input values held here of at least this many bytes are uploaded once and referenced
        (``None``: never).
    """

    def __init__(self, backend: Backend, store: S3Store, layout: protocol.Layout, *,
                 signing_key: bytes, inline_max: int, retries: int, locality: bool = True,
                 max_output: int | None = None, oom_retry_memory: int | None = None,
                 cost: CostMeter | None = None, share_min: int | None = None):
        self.backend = backend
        self.share_min = share_min
        self.store = store
        self.layout = layout
        self.signing_key = signing_key
        self.inline_max = inline_max
        self.retries = retries
        self.locality = locality
        self.max_output = max_output
        self.oom_retry_memory = oom_retry_memory
        self.cost = cost or CostMeter(backend.settings.memory)
        self.data = LambdaData(self.release)
        #: What the handler reported for recent invocations (request id, cold, timings, memory).
        self.invocations: deque[dict] = deque(maxlen=10_000)
        super().__init__()
        self.stats = ExecutorStats()
        self._seq = itertools.count()
        #: What tasks printed in Lambda, by task key (most recent keys kept).
        self.logs: OrderedDict[str, list[dict]] = OrderedDict()
        self._garbage: list[str] = []
        self._gc: asyncio.Task | None = None
        #: Paces invocations to Lambda's scaling rate and to the limit learnt from 429s.
        self.governor = Governor(backend.settings.concurrency, rate=backend.scaling_rate,
                                 period=backend.scaling_period)
        #: Seconds recent tasks of each prefix took in Lambda, as the handler measured them
        #: (a fused group's time shared out evenly): what batching plans with.
        self.durations: dict[str, deque[float]] = {}
        #: Keys whose running task `cancel` stopped (until their task has ended).
        self._cancelling: set = set()
        #: Files shipped with every job (``client.upload_file``), by name.
        self._uploaded: dict[str, bytes] = {}
        #: Local modules' files, by module: (the submission they were read in, file or None).
        self._module_files: dict[str, tuple[int, tuple[str, bytes] | None]] = {}
        #: Files already in S3 for this run, by content hash.
        self._shipped: dict[str, str] = {}
        #: Uploads of values held here, by key, under way (`share`); the S3 keys of those done.
        self._sharing: dict[Any, asyncio.Future] = {}
        self._shared_keys: set[str] = set()
        #: Keys whose output could not be read by a gather: (times, last error).
        self._unreadable: dict[Any, tuple[int, BaseException]] = {}
        #: The gateway worker, once it has started (`dask_lambda.gateway.GatewayWorker`).
        self.worker: Any = None
        serialize.prepare()

    # -- one task -------------------------------------------------------------------------

    def _started(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._gc is None:
            self._gc = loop.create_task(self._collect_garbage())

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait, cancel_futures=cancel_futures)
        if self._gc is not None:
            gc, self._gc = self._gc, None
            gc.get_loop().call_soon_threadsafe(gc.cancel)

    def reset(self) -> None:
        """Forget every task and output for a new gateway worker (``client.restart()``): the
        outputs kept in S3 are deleted; counters, cost and logs stay."""
        for key in list(self.data):
            del self.data[key]  # releases what each held
        self._by_key.clear()
        self._cancelling.clear()
        self._unreadable.clear()
        self.worker = None

    def cancel(self, key: Any) -> bool:
        """Stop the running task ``key`` (the scheduler no longer wants it): its invocation is
        abandoned (the local backend kills its environment) and its slot freed; the task ends
        as erred, which the worker discards for a cancelled task. Returns whether it ran."""
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
        lost = self._unreadable.get(key)
        if lost is not None and lost[0] > self.retries:
            exc = lost[1]
            if not isinstance(exc, PermissionError):  # (that one was not computed again)
                note = (f" (the output of task {key!r} could not be read {lost[0]} times; it "
                        f"was computed again each time, retries={self.retries})")
                try:
                    exc = type(exc)(f"{exc}{note}")
                except Exception:  # an exception type that takes other arguments: keep it
                    pass
            return self._erred(key, exc, None, "", start, delay)
        if type(task) in _LOCAL_TASKS:  # renaming or literal data: no work worth a Lambda
            self.stats.local_tasks += 1
            return self._finished(task(data), start, delay)
        shared: list[protocol.ObjectRef] = []
        if self.share_min is not None and data:
            try:
                data = await self._share_inputs(data, shared)
            except Exception as exc:  # S3 refused or failed: the task cannot be sent
                return self._erred(key, type(exc)(f"task {key!r}: {exc}"), None, "", start,
                                   delay)
        try:
            frames, modules = serialize.dumps_shipping((task, (data,), {}))
        except Exception as exc:
            return self._erred(key, serialize.unpicklable(key, exc), None, "", start, delay)
        header: dict = {"kind": "job", "key": str(key)}
        if modules or self._uploaded:
            try:
                header["files"] = await self._files(modules)
            except Exception as exc:  # S3 refused or failed: the task cannot be sent
                return self._erred(key, type(exc)(f"task {key!r}: {exc}"), None, "", start,
                                   delay)
        token = protocol.task_token(key) + f"-{next(self._seq)}"
        at = protocol.identity(self.layout.bucket, self.layout.job_key(token, 0))
        parts = protocol.encode_parts(header, frames, self.signing_key, at)
        del frames, data
        prefixes = batching.group_prefixes(task)
        if prefixes is None:
            prefixes = (key_split(key),)
        else:  # a fused group of graph tasks
            self.stats.batches += 1
            self.stats.batched_tasks += len(prefixes)
        try:
            outcome = await self._call(token, parts, key, prefixes)
        except protocol.PayloadError as exc:  # a tampered or misplaced object: never retried
            return self._erred(key, type(exc)(f"task {key!r}: {exc}"), None, "", start, delay)
        except DaskLambdaError as exc:
            advice = ""
            if len(prefixes) > 1 and isinstance(exc, (LambdaTimeoutError,
                                                      LambdaOutOfMemoryError)):
                advice = (f" This invocation ran {len(prefixes)} graph tasks fused by batching: "
                          "LambdaClient(..., batching=False) runs one task per invocation.")
            message = f"task {key!r}: {exc}{advice}"
            wrapped = (type(exc)(message, exc.error_type)  # keep the handler's error type
                       if isinstance(exc, FunctionError) else type(exc)(message))
            return self._erred(key, wrapped, None, "", start, delay)
        finally:
            self.stats.tasks += 1
            if shared:
                self._garbage.extend(self._unheld(shared))
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

    async def _call(self, token: str, parts: list, key: Any = None,
                    prefixes: tuple[str, ...] = ()) -> protocol.Payload | protocol.ObjectRef:
        """Send one job, with bounded retries, and return its outcome.

        Returns the verified output when it came inline or is an error, else a reference to
        the output object in S3. Each attempt writes to its own result key, so a late or
        duplicated attempt can never overwrite the output that was accepted.
        """
        nbytes = protocol.parts_size(parts)
        event: dict = {"op": "run", "bucket": self.layout.bucket,
                       "job_key": self.layout.job_key(token, 0), "inline_max": self.inline_max}
        if self.max_output is not None:
            event["max_output"] = self.max_output
        if len(prefixes) > 1:
            event["tasks"] = len(prefixes)  # graph tasks this job runs (for logs and models)
        if nbytes <= self.inline_max and _fits_inline(nbytes, event):
            event["job"] = base64.b64encode(b"".join(parts)).decode()
            self.stats.inline_jobs += 1
        else:
            await self.store.put(event["job_key"], parts)
            self.stats.s3_jobs += 1
        self.stats.bytes_sent += nbytes
        del parts
        memory = None
        try:
            for attempt in itertools.count():
                event["result_key"] = self.layout.result_key(token, attempt)
                try:
                    response = await self._invoke(event, key, memory, prefixes)
                    return await self._outcome(response, event["result_key"])
                except (HandlerCrashedError, ResultLostError) as exc:
                    if attempt >= self.retries:
                        raise type(exc)(f"{exc} Gave up after {attempt + 1} attempts "
                                        f"(retries={self.retries}).{_ADVICE[type(exc)]}") from None
                except LambdaOutOfMemoryError:
                    bigger = self.oom_retry_memory
                    if memory is not None or not bigger or bigger <= self.backend.settings.memory:
                        raise
                    if not self.backend.supports_memory_override:
                        raise
                    memory = bigger
                self.stats.retries += 1
        finally:
            if "job" not in event:  # the job object is needed until the last attempt ends
                self._garbage.append(event["job_key"])
        raise AssertionError("unreachable")

    async def _invoke(self, event: dict, key: Any, memory: int | None,
                      prefixes: tuple[str, ...] = ()) -> dict:
        """One invocation: budget check, a slot from the governor (Lambda's scaling rules),
        then backoff and retry while Lambda throttles."""
        for throttled in itertools.count():
            self.cost.reserve(f"task {key!r}")
            sent = time()
            try:
                response = await self._invoke_paced(event, memory)
            except asyncio.CancelledError:  # stopped while it ran: billed at least until now
                self.cost.settle(billed_ms(time() - sent))
                raise
            except FunctionError as exc:
                self.cost.settle(getattr(exc, "billed_ms", None) or 0)
                if exc.error_type == "InputLostError":
                    raise ResultLostError(str(exc).split(": ", 1)[-1]) from None
                raise
            except LambdaThrottledError as exc:
                self.cost.cancel()
                if throttled >= _THROTTLE_RETRIES:
                    raise LambdaThrottledError(
                        f"Lambda throttled this task {throttled + 1} times in a row (429 "
                        f"{exc.reason or 'TooManyRequests'}). " + (exc.advice or (
                            "Lower the concurrency, e.g. LambdaClient(..., concurrency=100), "
                            "or ask AWS to raise the account's concurrency limit.")),
                        exc.reason) from None
                self.stats.throttled += 1
                backoff = min(_THROTTLE_CAP, _THROTTLE_BASE * 2**throttled)
                await asyncio.sleep(max(backoff * (0.5 + random.random()),
                                        exc.retry_after or 0.0))  # Lambda's Retry-After
                continue
            except BaseException as exc:  # billed too: what the log tail said, if it did
                self.cost.settle(getattr(exc, "billed_ms", None) or 0)
                raise
            stats = response.get("stats") or {}
            self.cost.settle(invocation_ms(stats),
                             s3_puts=stats.get("s3_puts", 0), s3_gets=stats.get("s3_gets", 0))
            if prefixes and response["status"] == "ok" and "duration_s" in stats:
                self._learn(prefixes, stats["duration_s"])
            self.invocations.append(dict(stats, key=str(key), status=response["status"],
                                         nbytes=response["nbytes"]))
            if response.get("log"):
                self._keep_log(key, event, stats, response["log"])
            return response
        raise AssertionError("unreachable")

    async def _invoke_paced(self, event: dict, memory: int | None) -> dict:
        """Invoke once, when the governor gives a slot; tell it whether Lambda throttled."""
        governor = self.governor
        await governor.acquire()
        try:
            # memory is set only where backend.supports_memory_override (the local backend)
            response = await (self.backend.invoke(event, memory=memory)  # type: ignore[call-arg]
                              if memory else self.backend.invoke(event))
        except LambdaThrottledError:
            governor.release(throttled=True)
            raise
        except BaseException:
            governor.release(throttled=False, succeeded=False)
            raise
        governor.release(throttled=False)
        return response

    def _learn(self, prefixes: tuple[str, ...], seconds: float) -> None:
        each = seconds / len(prefixes)
        durations = self.durations
        for prefix in prefixes:
            samples = durations.get(prefix)
            if samples is None:
                samples = durations[prefix] = deque(maxlen=_DURATION_SAMPLES)
            samples.append(each)

    def duration_estimates(self) -> dict[str, float]:
        """Median of the recent durations of each task prefix, in seconds."""
        return {prefix: statistics.median(samples)
                for prefix, samples in list(self.durations.items()) if samples}

    def _keep_log(self, key: Any, event: dict, stats: dict, text: str) -> None:
        entries = self.logs.setdefault(str(key), [])
        entries.append({"request_id": stats.get("request_id"), "text": text,
                        "attempt": event["result_key"].rsplit("-a", 1)[-1].split(".")[0]})
        self.logs.move_to_end(str(key))
        while len(self.logs) > _LOG_KEYS:
            self.logs.popitem(last=False)
        task_log.info("%s (request %s):\n%s", key, stats.get("request_id"), text.rstrip())

    async def _outcome(self, response: dict, result_key: str
                       ) -> protocol.Payload | protocol.ObjectRef:
        """The attempt's output: decoded when it came inline (it stands for ``result_key``)
        or is an error, else a reference to the output object the handler wrote."""
        if response.get("result") is not None:
            blob = bytearray(base64.b64decode(response["result"]))
            self.stats.bytes_received += len(blob)
            return protocol.decode(blob, self.signing_key,
                                   protocol.identity(self.layout.bucket, result_key))
        ref = protocol.ObjectRef(self.layout.bucket, response["result_key"], response["nbytes"],
                                 response.get("size") or 0, response.get("type") or "")
        if response["status"] == "error" or not self.locality:
            return await self._fetch(ref, release=True)
        return ref

    async def _fetch(self, ref: protocol.ObjectRef, *, release: bool) -> protocol.Payload:
        """Download and verify an output object; ``release`` deletes it afterwards."""
        try:
            blob = await self.store.get(ref.key, ref.bucket)
        except FileNotFoundError:
            raise ResultLostError(
                f"the output object s3://{ref.bucket}/{ref.key} was deleted before it was read "
                "(by hand, or by a lifecycle rule shorter than the computation).") from None
        self.stats.bytes_received += len(blob)
        if release:
            self._garbage.append(ref.key)
        return protocol.decode(blob, self.signing_key, protocol.identity(ref.bucket, ref.key))

    async def load(self, refs: Iterable[protocol.ObjectRef]) -> dict:
        """Values of outputs kept in S3 (for the client's gather); the objects stay."""
        refs = list(dict.fromkeys(refs))
        payloads = await asyncio.gather(*(self._fetch(r, release=False) for r in refs))
        return {r: p.load() for r, p in zip(refs, payloads, strict=True)}

    async def load_values(self, refs: dict) -> tuple[dict, dict]:
        """``({key: value}, {key: error})`` of the outputs ``{key: ObjectRef}`` kept in S3 (a
        gather); the objects stay."""

        async def one(ref: protocol.ObjectRef) -> Any:
            return (await self._fetch(ref, release=False)).load()

        unique = list(dict.fromkeys(refs.values()))
        loaded = dict(zip(unique, await asyncio.gather(*map(one, unique),
                                                       return_exceptions=True), strict=True))
        values, failed = {}, {}
        for key, ref in refs.items():
            value = loaded[ref]
            if isinstance(value, Exception):
                failed[key] = value
            else:
                values[key] = value
        return values, failed

    def unreadable(self, key: Any, exc: BaseException) -> int:
        """Count that ``key``'s output could not be read (it is computed again); returns how
        many times. Past ``retries``, the next run of ``key`` fails with ``exc``."""
        count = self._unreadable.get(key, (0, exc))[0] + 1
        if isinstance(exc, PermissionError):  # computing it again cannot help
            count = self.retries + 1
        self._unreadable[key] = (count, exc)
        self.stats.retries += 1
        return count

    # -- values held here, uploaded once -------------------------------------------------

    async def _share_inputs(self, data: dict, shared: list) -> dict:
        """``data`` with each value held here of at least ``share_min`` bytes replaced by a
        reference to an S3 object uploaded once (the handler reads it as it reads outputs);
        the references go into ``shared``."""
        out = data
        worker_tasks = self.worker.state.tasks if self.worker is not None else {}
        for dep, value in data.items():
            if isinstance(value, protocol.ObjectRef):
                if value.key in self._shared_keys:  # shared before: this job reads it too
                    self.stats.shared_bytes_saved += value.nbytes
                continue
            if value is None:
                continue
            ts = worker_tasks.get(dep)
            size = ts.nbytes if ts is not None and ts.nbytes is not None else sizeof(value)
            if size < self.share_min:  # type: ignore[operator]
                continue
            ref = await self.share(dep, value)
            if out is data:
                out = dict(data)
            out[dep] = ref
            shared.append(ref)
            self.stats.shared_bytes_saved += ref.nbytes
        return out

    def share_soon(self, key: Any, value: Any) -> None:
        """Start uploading ``value`` (held here under ``key``, e.g. scattered) so that it
        lives in S3 rather than in this process."""
        if self.share_min is not None and sizeof(value) >= self.share_min:
            task = asyncio.ensure_future(self.share(key, value))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def share(self, key: Any, value: Any) -> protocol.ObjectRef:
        """The reference to ``value`` (held here under ``key``) in S3, uploaded once: the
        worker's data then holds the reference, released as outputs are."""
        held = self.data.peek(key)
        if isinstance(held, protocol.ObjectRef):
            return held
        future = self._sharing.get(key)
        if future is None:
            future = self._sharing[key] = asyncio.ensure_future(self._upload_value(key, value))
            future.add_done_callback(lambda _: self._sharing.pop(key, None))
        ref: protocol.ObjectRef = await asyncio.shield(future)
        if self.data.peek(key) is value:
            self.data[key] = ref  # later jobs (and gathers) use the object; released with key
        return ref

    def _unheld(self, refs: Iterable[protocol.ObjectRef]) -> list[str]:
        """Keys of ``refs`` that no key of the worker's data holds (their key was released
        while a job that reads them was being made): deleted once that job has ended."""
        return [r.key for r in refs if r not in self.data.holders]

    async def _upload_value(self, key: Any, value: Any) -> protocol.ObjectRef:
        token = protocol.task_token(key) + f"-{next(self._seq)}-value"
        object_key = self.layout.result_key(token, 0)
        frames = serialize.dumps(value)
        parts = protocol.encode_parts({"kind": "result", "type": protocol.type_name(value)},
                                      frames, self.signing_key,
                                      protocol.identity(self.layout.bucket, object_key))
        nbytes = protocol.parts_size(parts)
        await self.store.put(object_key, parts)
        self.stats.bytes_sent += nbytes
        self.stats.shared_values += 1
        self.stats.shared_bytes += nbytes
        self.stats.shared_bytes_saved -= nbytes  # the first reader's copy was sent after all
        self._shared_keys.add(object_key)
        return protocol.ObjectRef(self.layout.bucket, object_key, nbytes, sizeof(value),
                                  protocol.type_name(value))

    # -- files that travel with the jobs ----------------------------------------------------

    def upload_file(self, filename: str, data: bytes) -> None:
        """Ship ``filename`` (a ``.py``, ``.zip`` or ``.egg``, from ``client.upload_file``)
        with every later job: the handler puts it on ``sys.path`` before it runs the task."""
        self._uploaded[filename] = bytes(data)

    async def _files(self, modules: frozenset[str]) -> list:
        """``[[name, sha256, key], ...]``: the uploaded files and the local modules a job
        imports, each uploaded to S3 once per run (signed, under the run's jobs prefix)."""
        submission = serialize.submission()
        wanted: dict[str, bytes] = dict(self._uploaded)
        for module in sorted(modules):
            cached = self._module_files.get(module)
            if cached is None or cached[0] != submission:
                cached = self._module_files[module] = (
                    submission, serialize.local_module_file(module))
            if cached[1] is not None:
                wanted.setdefault(*cached[1])
        entries = []
        for name, data in wanted.items():
            sha = hashlib.sha256(data).hexdigest()
            key = self._shipped.get(sha)
            if key is None:
                key = self.layout.file_key(sha, name)
                parts = protocol.encode_parts({"kind": "file", "name": name, "sha": sha},
                                              [data], self.signing_key,
                                              protocol.identity(self.layout.bucket, key))
                await self.store.put(key, parts)
                self.stats.bytes_sent += protocol.parts_size(parts)
                self._shipped[sha] = key
            entries.append([name, sha, key])
        return entries

    def release(self, ref: protocol.ObjectRef) -> None:
        """The scheduler released the key holding ``ref``: its object can go."""
        self._shared_keys.discard(ref.key)
        self._garbage.append(ref.key)

    # -- results in the worker's format (see distributed.worker._run_task_simple) ----------------

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
        """Delete everything this run wrote; returns how many objects were left to delete.

        Raises the first S3 error (the caller reports what is left behind).
        """
        if self._gc is not None:
            self._gc.cancel()
        batch, self._garbage = self._garbage, []
        await self.store.delete(batch, quick=True)
        return await self.store.delete_prefixes(self.layout.run_prefixes, quick=True)


class LocalTaskExecutor(_AsyncExecutor):
    """Runs tasks annotated ``dask.annotate(executor="local")`` here, in threads.

    For tiny tasks, or tasks that need this machine; their inputs that are kept in S3 are
    downloaded first, and their outputs stay in this process.

    Parameters
    ----------
    lambda_executor
        The gateway's Lambda executor (for downloading inputs kept in S3).
    threads
        Threads for local tasks.
    """

    def __init__(self, lambda_executor: LambdaExecutor, threads: int):
        super().__init__()
        from concurrent.futures import ThreadPoolExecutor

        self._lambda = lambda_executor
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="dask-lambda-local")
        self.tasks = 0

    async def _run_task(self, task: Any, data: dict, delay: float) -> dict:
        from distributed.worker import _run_task_simple

        refs = [v for v in data.values() if isinstance(v, protocol.ObjectRef)]
        if refs:
            values = await self._lambda.load(refs)
            data = {k: values[v] if isinstance(v, protocol.ObjectRef) else v
                    for k, v in data.items()}
        self.tasks += 1
        loop = asyncio.get_running_loop()
        run: Any = _run_task_simple  # returns the worker's message (a TypedDict)
        return await loop.run_in_executor(self._pool, run, task, data, delay)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait, cancel_futures=cancel_futures)
        self._pool.shutdown(wait=False, cancel_futures=True)


def gateway_metrics(executor: LambdaExecutor) -> dict:
    """Worker metrics that put the Lambda side on the dashboard's worker table."""
    stats = executor.stats
    backend = executor.backend
    return {
        "lambda_concurrency": lambda w: executor.governor.concurrency,
        "lambda_in_flight": lambda w: len(executor._running),
        "lambda_invocations": lambda w: backend.invocations,
        "lambda_cold_starts": lambda w: backend.cold_starts,
        "lambda_retries": lambda w: stats.retries,
        "lambda_throttled": lambda w: stats.throttled,
        "lambda_bytes_sent": lambda w: stats.bytes_sent,
        "lambda_bytes_received": lambda w: stats.bytes_received,
        "lambda_s3_bytes_kept": lambda w: stats.output_bytes_in_s3,
        "lambda_shared_bytes": lambda w: stats.shared_bytes,
        "lambda_shared_bytes_saved": lambda w: stats.shared_bytes_saved,
        "lambda_cost_usd": lambda w: executor.cost.dollars(),
    }
