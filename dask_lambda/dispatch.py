"""The backend-neutral engine: a job in, its outcome out.

`Dispatcher.run` sends one signed job (inline in the invoke request when it fits, else as
an S3 object) and returns the verified outcome, with everything an invocation involves on
the way: attempts (a crashed environment or a lost output gets a new attempt key, so a late
attempt can never overwrite an accepted output; an out-of-memory task is retried once with
more memory where the backend can), the budget, Lambda's 429s (backoff with jitter, at least
Lambda's ``Retry-After``, a bounded number of times), pacing to Lambda's scaling rate
(`dask_lambda.scaling.Governor`), billing, task durations for batching, and what tasks
printed.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import random
import statistics
from collections import OrderedDict, deque
from time import time
from typing import Any

from dask_lambda_handler import protocol, records, s3keys

from . import limits
from .backends.base import Backend
from .cost import CostMeter, billed_ms, invocation_ms
from .counters import ExecutorStats
from .errors import (
    HandlerCrashedError,
    LambdaOutOfMemoryError,
    LambdaThrottledError,
    ResultLostError,
)
from .outputs import Outputs
from .scaling import Governor

_LOG_KEYS = 10_000
_DURATION_SAMPLES = 25  # recent durations kept per task prefix; their median is the estimate
#: What tasks print in Lambda is logged here at INFO (and kept for LambdaClient.get_task_logs).
task_log = logging.getLogger("dask_lambda.task_output")
_THROTTLE_RETRIES = 10  # a throttled invoke is retried this often, backing off, before failing
_THROTTLE_BASE = 0.05
_THROTTLE_CAP = 5.0
_ADVICE = {
    HandlerCrashedError: " If the task kills its process (os._exit, a crashing C extension), "
                         "fix that; otherwise raise LambdaClient(..., retries=N).",
    ResultLostError: " Something deletes objects under the bucket's results/ prefix while "
                     "the computation runs: stop it, or lengthen the lifecycle expiry.",
}


def _fits_inline(nbytes: int, event: records.InvokeEvent) -> bool:
    """Whether a job of ``nbytes`` fits in ``event`` within Lambda's invoke payload limit (the
    ``inline-max`` setting may allow more than fits, once base64 and JSON are counted)."""
    if 4 * -(-nbytes // 3) < limits.SYNC_PAYLOAD_BYTES // 2:  # far below: nothing to count
        return True
    # the result key the attempts add is about as long as the job key
    envelope = len(json.dumps(event.to_wire())) + 2 * len(event.job_key) + 64
    return protocol.fits_inline(nbytes, envelope)


class Dispatcher:
    """Send jobs to the backend and bring back their outcomes (see the module docstring).

    Parameters
    ----------
    backend
        Where invocations run.
    outputs
        The run's objects: outcomes kept in S3 are fetched and verified there, used job
        objects deleted through it.
    layout, signing_key
        Key layout of this run and its HMAC key.
    stats, cost
        The counters, and the billing meter (which enforces the budget).
    inline_max
        Jobs and outputs up to this many encoded bytes travel in the invoke request/response.
    output_inline_max
        Outputs up to this many encoded bytes travel in the response (default
        ``inline_max``); larger ones stay in S3 where the tasks that read them read them.
    retries
        Further attempts when an execution environment crashes or an output is lost.
    locality
        Keep outputs above ``inline_max`` in S3 (True) or download every output (False).
    max_output
        Largest encoded output a task may return, in bytes (``None``: no limit).
    oom_retry_memory
        Retry a task killed for memory once with this much memory (MB), where the backend
        can; ``None``: no retry.
    """

    def __init__(self, backend: Backend, outputs: Outputs, layout: s3keys.Layout, *,
                 signing_key: bytes, stats: ExecutorStats, cost: CostMeter, inline_max: int,
                 retries: int, locality: bool = True, max_output: int | None = None,
                 oom_retry_memory: int | None = None, output_inline_max: int | None = None):
        self.backend = backend
        self.outputs = outputs
        self.store = outputs.store
        self.layout = layout
        self.signing_key = signing_key
        self.stats = stats
        self.cost = cost
        self.inline_max = inline_max
        self.output_inline_max = inline_max if output_inline_max is None else output_inline_max
        self.retries = retries
        self.locality = locality
        self.max_output = max_output
        self.oom_retry_memory = oom_retry_memory
        self._seq = itertools.count()
        #: What the handler reported for recent invocations (request id, cold, timings, memory).
        self.invocations: deque[dict] = deque(maxlen=10_000)
        #: What tasks printed in Lambda, by task key (most recent keys kept).
        self.logs: OrderedDict[str, list[dict]] = OrderedDict()
        #: Paces invocations to Lambda's scaling rate and to the limit learnt from 429s.
        self.governor = Governor(backend.settings.concurrency, rate=backend.scaling_rate,
                                 period=backend.scaling_period)
        #: Seconds recent tasks of each prefix took in Lambda, as the handler measured them
        #: (a fused group's time shared out evenly): what batching plans with.
        self.durations: dict[str, deque[float]] = {}

    def job(self, key: Any, header: dict, frames: list) -> tuple[str, list]:
        """``(token, parts)``: the signed job of task ``key``, bound to its job key."""
        token = s3keys.task_token(key) + f"-{next(self._seq)}"
        at = s3keys.identity(self.layout.bucket, self.layout.job_key(token, 0))
        return token, protocol.encode_parts(header, frames, self.signing_key, at)

    async def run(self, token: str, parts: list, key: Any = None,
                  prefixes: tuple[str, ...] = ()) -> protocol.Payload | protocol.ObjectRef:
        """Send one job, with bounded retries, and return its outcome.

        Returns the verified output when it came inline or is an error, else a reference to
        the output object in S3. Each attempt writes to its own result key, so a late or
        duplicated attempt can never overwrite the output that was accepted.
        """
        nbytes = protocol.parts_size(parts)
        event = records.InvokeEvent(bucket=self.layout.bucket,
                                    job_key=self.layout.job_key(token, 0),
                                    inline_max=self.output_inline_max,
                                    max_output=self.max_output,
                                    tasks=max(1, len(prefixes)))
        if nbytes <= self.inline_max and _fits_inline(nbytes, event):
            event = event.carrying(base64.b64encode(b"".join(parts)).decode())
            self.stats.inline_jobs += 1
        else:
            await self.store.put(event.job_key, parts)
            self.stats.s3_jobs += 1
        self.stats.bytes_sent += nbytes
        del parts
        memory = None
        try:
            for attempt in itertools.count():
                event = event.attempt(self.layout.result_key(token, attempt))
                try:
                    response = await self._invoke(event, key, memory, prefixes)
                    return await self._outcome(response, event.result_key)
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
            if event.job is None:  # the job object is needed until the last attempt ends
                self.outputs.discard(event.job_key)
        raise AssertionError("unreachable")

    async def _invoke(self, event: records.InvokeEvent, key: Any, memory: int | None,
                      prefixes: tuple[str, ...] = ()) -> records.InvokeResponse:
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
            stats = response.stats
            self.cost.settle(invocation_ms(stats), s3_puts=stats.s3_puts, s3_gets=stats.s3_gets)
            if prefixes and response.status == records.OK and stats.duration_s is not None:
                self._learn(prefixes, stats.duration_s)
            self.invocations.append(dict(stats.to_wire(), key=str(key), status=response.status,
                                         nbytes=response.nbytes))
            if response.log:
                self._keep_log(key, event, stats, response.log)
            return response
        raise AssertionError("unreachable")

    async def _invoke_paced(self, event: records.InvokeEvent, memory: int | None
                            ) -> records.InvokeResponse:
        """Invoke once, when the governor gives a slot; tell it whether Lambda throttled."""
        governor = self.governor
        await governor.acquire()
        try:
            # memory is set only where backend.supports_memory_override (the local backend)
            wire = event.to_wire()
            response = await (self.backend.invoke(wire, memory=memory)  # type: ignore[call-arg]
                              if memory else self.backend.invoke(wire))
        except LambdaThrottledError:
            governor.release(throttled=True)
            raise
        except BaseException:
            governor.release(throttled=False, succeeded=False)
            raise
        governor.release(throttled=False)
        return records.InvokeResponse.from_wire(response)

    async def _outcome(self, response: records.InvokeResponse, result_key: str
                       ) -> protocol.Payload | protocol.ObjectRef:
        """The attempt's output: decoded when it came inline (it stands for ``result_key``)
        or is an error, else a reference to the output object the handler wrote."""
        if response.result is not None:
            blob = bytearray(base64.b64decode(response.result))
            self.stats.bytes_received += len(blob)
            return self.outputs.decode(blob, result_key)
        # (trigger mode's handler writes beside result_key: the response says where)
        ref = protocol.ObjectRef(self.layout.bucket, response.result_key or result_key,
                                 response.nbytes, response.size, response.type)
        if response.status == records.ERROR or not self.locality:
            return await self.outputs.fetch(ref, release=True)
        return ref

    # -- what invocations tell: durations and output ----------------------------------------

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

    def _keep_log(self, key: Any, event: records.InvokeEvent, stats: records.RunStats,
                  text: str) -> None:
        entries = self.logs.setdefault(str(key), [])
        entries.append({"request_id": stats.request_id, "text": text,
                        "attempt": event.attempt_number})
        self.logs.move_to_end(str(key))
        while len(self.logs) > _LOG_KEYS:
            self.logs.popitem(last=False)
        task_log.info("%s (request %s):\n%s", key, stats.request_id, text.rstrip())
