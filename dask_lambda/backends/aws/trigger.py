"""S3-trigger mode of the aws backend: jobs go in as objects, completion records come back.

For each job the client writes ``P/jobs/<run>/<token>-a<n>.trigger.job``; the
bucket's ObjectCreated notification invokes the function, which claims the job,
runs it and writes a signed completion record under ``P/results/<run>/_done/``
(:mod:`dask_lambda_handler.trigger`). One poller per client lists that prefix
(one LIST request per pass for all running jobs, every 50 ms while records
arrive, backing off to 1 s while none do), reads each new record and wakes the
task waiting for it. Nothing sleeps per task.

A job whose record does not come in time is looked up by its claim: no claim
after ``grace`` seconds means no notification reached the function (the attempt
fails as crashed, so it is retried with a new job object); a claim older than
the function timeout means the function died without a record (timeout, memory,
crash).

Lambda does not refuse an asynchronous invocation it cannot run yet: it keeps the event
and retries it, for up to the function's MaximumEventAgeInSeconds (``dask-lambda
deploy`` sets it near the grace). So that a job the client has given up on never runs
late beside its new attempt, each job object says within how many seconds of being
written it must start (``start_within``, less than ``grace``), and the handler refuses
it after that. And so that jobs do not wait in Lambda's queue at all, no more jobs are
out at once than the function may run (`read_limits`: its reserved concurrency, else
the account's unreserved concurrency).

S3 requests are counted in each job's response stats, as the handler counts its own: the
job's PUT (or COPY), the record's GET, the claim's HEADs, and the poller's LISTs (each
LIST is counted once, in the next response delivered).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dask_lambda_handler import protocol, records, s3errors, s3keys, trigger

from ... import failures
from ...deployment import names
from ...errors import FunctionError, HandlerCrashedError, LambdaTimeoutError
from ..base import Invoker

_MIN_INTERVAL = 0.05
_MAX_INTERVAL = 1.0
_MARGIN = 15.0  # seconds after the function timeout before a claimed job counts as lost
#: Most seconds before the grace ends by which a job must have started (its claim written
#: and visible when the client looks at the grace's end); a quarter of shorter graces.
START_MARGIN = 10.0
logger = logging.getLogger("dask_lambda")


@dataclass(frozen=True)
class Limits:
    """How many invocations of the function Lambda runs at once (``None``: not known).

    Attributes
    ----------
    reserved
        The function's reserved concurrency (GetFunctionConcurrency), if it has one.
    unreserved
        The account's concurrency in the region left to functions without a reservation
        (GetAccountSettings ``AccountLimit.UnreservedConcurrentExecutions``).
    """

    reserved: int | None = None
    unreserved: int | None = None

    def cap(self) -> tuple[int, str] | None:
        """The most invocations that can run at once, and why; None if not known."""
        if self.reserved is not None:
            return self.reserved, "the function's reserved concurrency"
        if self.unreserved is not None:  # (AWS keeps at least 100 of it; an emulator may not)
            return max(1, self.unreserved), "the account's unreserved concurrency in this region"
        return None


async def read_limits(control: Any, function: str, *, account: bool = True) -> Limits:
    """The function's `Limits`, as far as these credentials may read them (``account``:
    the account's too)."""
    reserved = unreserved = None
    try:
        answer = await control.get_function_concurrency(FunctionName=function)
        value = answer.get("ReservedConcurrentExecutions")
        reserved = None if value is None else int(value)
    except Exception as exc:  # e.g. no lambda:GetFunctionConcurrency: not known
        logger.debug("cannot read the reserved concurrency of %s: %s", function, exc)
    try:
        if account:
            answer = await control.get_account_settings()
            value = answer.get("AccountLimit", {}).get("UnreservedConcurrentExecutions")
            unreserved = None if value is None else int(value)
    except Exception as exc:  # e.g. no lambda:GetAccountSettings
        logger.debug("cannot read the account's concurrency: %s", exc)
    return Limits(reserved, unreserved)


@dataclass
class _Pending:
    job_key: str
    claim_key: str
    future: asyncio.Future
    deadline: float
    claimed: bool = False
    heads: int = 0
    extra: dict = field(default_factory=dict)


_code = s3errors.error_code  # of a botocore ClientError


class TriggerDispatcher(Invoker):
    """Send jobs as S3 objects and wait for their completion records.

    Parameters
    ----------
    s3
        An aiobotocore S3 client.
    layout
        The run's key layout.
    signing_key
        The run's key (`protocol.run_key`), that completion records are signed with.
    timeout
        The function's timeout, seconds.
    grace
        Seconds a notification may take to start the function.
    function, deploy
        The function's name and its ``dask-lambda deploy`` command, for messages.
    limit
        Most jobs out at once (what the function may run at once), or ``None``.
    """

    def __init__(self, s3: Any, layout: s3keys.Layout, *, signing_key: bytes, timeout: float,
                 grace: float, function: str, deploy: str, limit: int | None = None,
                 memory: int = 0, fix: Callable[[str, int], str] | None = None):
        super().__init__()
        self.s3 = s3
        self.layout = layout
        self.signing_key = signing_key
        self.timeout = timeout
        self.grace = grace
        self.function = function
        self.deploy = deploy
        self.memory = memory
        self.fix = fix or (lambda option, value: f"`{deploy} --trigger --{option} {value}`")
        self.limit = limit
        self.done_prefix = layout.done_prefix
        self._pending: dict[str, _Pending] = {}
        self._wake = asyncio.Event()
        self._poller: asyncio.Task | None = None
        self._slots = asyncio.Semaphore(limit) if limit else None
        #: LIST requests made by the poller; those not yet counted in a response's stats.
        self.polls = 0
        self._unbilled_polls = 0

    @property
    def start_within(self) -> float:
        """Seconds after its job object is written within which a job must start."""
        return self.grace - min(START_MARGIN, self.grace / 4)

    def trigger_job_key(self, result_key: str) -> str:
        """The job key whose result key (`s3keys.result_key_for_job`) is beside ``result_key``."""
        relative = result_key[len(self.layout.results_root):]
        return f"{self.layout.jobs_root}{relative.removesuffix('.out')}{names.TRIGGER_SUFFIX}"

    async def invoke(self, event: dict) -> dict:
        """Write the event's job as a trigger job object; return the handler's response."""
        self.invocations += 1  # (a job object written is a notification Lambda may deliver)
        if self._slots is None:
            return self.count_cold_start(await self._run(event))
        async with self._slots:
            return self.count_cold_start(await self._run(event))

    async def _run(self, wire: dict) -> dict:
        event = records.InvokeEvent.from_wire(wire)
        job_key = self.trigger_job_key(event.result_key)
        result_key = s3keys.result_key_for_job(job_key)
        claim_key, done_key = trigger.state_keys(result_key)
        loop = asyncio.get_running_loop()
        pending = _Pending(job_key, claim_key, loop.create_future(), float("inf"))
        self._pending[done_key] = pending
        options: dict = {trigger.START_WITHIN: round(self.start_within, 3)}
        if event.max_output is not None:
            options[trigger.MAX_OUTPUT] = event.max_output
        meta = {"dask-lambda-options": json.dumps(options)}
        try:
            if event.job is not None:
                await self.s3.put_object(Bucket=self.layout.bucket, Key=job_key, Metadata=meta,
                                         Body=base64.b64decode(event.job))
            else:  # the executor uploaded it under its plain key: copy it inside S3
                await self.s3.copy_object(
                    Bucket=self.layout.bucket, Key=job_key, Metadata=meta,
                    MetadataDirective="REPLACE",
                    CopySource={"Bucket": self.layout.bucket, "Key": event.job_key})
            # the grace runs from when the object exists, as the handler's start_within does
            pending.deadline = time.monotonic() + self.grace
            if self._poller is None:
                self._poller = asyncio.ensure_future(self._poll())
            self._wake.set()
            response = await pending.future
        finally:
            self._pending.pop(done_key, None)
        # the job's PUT or COPY; the record's GET and the claim's HEADs; LISTs not yet counted
        records.add_requests(response, gets=1 + pending.heads, puts=1 + self._unbilled_polls)
        self._unbilled_polls = 0
        return response

    async def stop(self) -> None:
        await super().stop()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._poller
            self._poller = None
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(HandlerCrashedError("the client is closing"))

    # -- the poller --------------------------------------------------------------------------

    async def _poll(self) -> None:
        interval = _MIN_INTERVAL
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                interval = _MIN_INTERVAL
            try:
                found = await self._pass()
            except Exception as exc:  # S3 trouble: fail what waits rather than hang
                for pending in list(self._pending.values()):
                    if not pending.future.done():
                        pending.future.set_exception(FunctionError(
                            f"cannot list completion records under s3://{self.layout.bucket}/"
                            f"{self.done_prefix}: {exc}", "S3Error"))
                found = 0
            interval = _MIN_INTERVAL if found else min(_MAX_INTERVAL, interval * 1.5)
            await asyncio.sleep(interval)

    async def _pass(self) -> int:
        keys: list[str] = []
        paginator = self.s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.layout.bucket, Prefix=self.done_prefix):
            self.polls += 1
            self._unbilled_polls += 1
            keys.extend(o["Key"] for o in page.get("Contents", ()))
        hits = [k for k in keys if k in self._pending]
        garbage = keys + [self._pending[k].job_key for k in hits]
        await asyncio.gather(*(self._deliver(k) for k in hits))
        if garbage:  # records read (or of attempts nobody waits for), and their job objects
            await self.s3.delete_objects(Bucket=self.layout.bucket, Delete={
                "Objects": [{"Key": k} for k in garbage], "Quiet": True})
        now = time.monotonic()
        overdue = [p for p in self._pending.values() if now > p.deadline and not p.future.done()]
        await asyncio.gather(*(self._check_claim(p) for p in overdue))
        return len(hits)

    async def _deliver(self, done_key: str) -> None:
        pending = self._pending.get(done_key)
        if pending is None or pending.future.done():
            return
        try:
            resp = await self.s3.get_object(Bucket=self.layout.bucket, Key=done_key)
            async with resp["Body"] as body:
                blob = await body.read()
            pending.future.set_result(self._response(blob, done_key))
        except Exception as exc:
            if not pending.future.done():
                pending.future.set_exception(exc)

    def _response(self, blob: bytes, done_key: str) -> dict:
        at = s3keys.identity(self.layout.bucket, done_key)
        try:
            record = protocol.decode(blob, self.signing_key, at).header
        except protocol.MisplacedPayloadError:
            raise
        except protocol.PayloadError as exc:
            try:  # an unsigned record can only report that the handler failed
                record = {"error": json.loads(blob)["error"]}
            except Exception:
                raise FunctionError(f"the function's completion record is not valid: {exc}",
                                    "PayloadError") from None
        if "error" in record:  # the handler failed (not the task): Lambda's shape of it
            err = record["error"]
            raise failures.function_error(err, "", request_id=str(err.get("requestId")),
                                          memory=self.memory, timeout=self.timeout, fix=self.fix)
        return record["response"]

    async def _check_claim(self, pending: _Pending) -> None:
        pending.heads += 1
        try:
            head = await self.s3.head_object(Bucket=self.layout.bucket, Key=pending.claim_key)
        except Exception as exc:
            if _code(exc) not in ("404", "NoSuchKey", "NotFound"):
                raise
            pending.future.set_exception(HandlerCrashedError(
                f"no S3 notification started the function {self.function!r} for job "
                f"s3://{self.layout.bucket}/{pending.job_key} within {self.grace:.0f} s (the "
                f"function refuses that job object now; a new attempt is sent). Notifications "
                "are usually delivered in seconds; if this keeps happening, check the bucket's "
                f"trigger (`{self.deploy} --trigger`), the function's log and its Throttles "
                "metric (other functions may use the account's concurrency), or raise "
                "lambda.aws.notification-grace."))
            return
        date = head.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        server_now = email.utils.parsedate_to_datetime(date).timestamp() if date else time.time()
        left = head["LastModified"].timestamp() + self.timeout + _MARGIN - server_now
        if not pending.claimed and left > 0:
            pending.claimed = True
            pending.deadline = time.monotonic() + left
            return
        pending.future.set_exception(LambdaTimeoutError(
            f"no result {self.timeout:.0f} s after the function started the task: it timed out, "
            f"ran out of memory or its execution environment crashed (the function's log, "
            f"CloudWatch log group {names.log_group(self.function)}, says which). Raise the "
            f"function timeout or memory, e.g. `{self.deploy} --trigger --timeout "
            f"{failures.longer_timeout(self.timeout)}`, or split the task into smaller ones."))
