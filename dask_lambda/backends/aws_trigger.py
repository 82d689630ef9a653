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
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import json
import time
from dataclasses import dataclass, field
from typing import Any

from dask_lambda_handler import protocol, s3errors, trigger

from ..deploy import names
from ..errors import FunctionError, HandlerCrashedError, LambdaTimeoutError

_MIN_INTERVAL = 0.05
_MAX_INTERVAL = 1.0
_MARGIN = 15.0  # seconds after the function timeout before a claimed job counts as lost


@dataclass
class _Pending:
    job_key: str
    claim_key: str
    future: asyncio.Future
    deadline: float
    claimed: bool = False
    extra: dict = field(default_factory=dict)


_code = s3errors.error_code  # of a botocore ClientError


class TriggerDispatcher:
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
    """

    def __init__(self, s3: Any, layout: protocol.Layout, *, signing_key: bytes, timeout: float,
                 grace: float, function: str, deploy: str):
        self.s3 = s3
        self.layout = layout
        self.signing_key = signing_key
        self.timeout = timeout
        self.grace = grace
        self.function = function
        self.deploy = deploy
        self.done_prefix = layout.done_prefix
        self._pending: dict[str, _Pending] = {}
        self._wake = asyncio.Event()
        self._poller: asyncio.Task | None = None
        #: LIST requests made by the poller.
        self.polls = 0

    def trigger_job_key(self, result_key: str) -> str:
        """The job key whose result key (`protocol.result_key_for_job`) is beside ``result_key``."""
        relative = result_key[len(self.layout.results_root):]
        return f"{self.layout.jobs_root}{relative.removesuffix('.out')}{names.TRIGGER_SUFFIX}"

    async def run(self, event: dict) -> dict:
        """Write the event's job as a trigger job object; return the handler's response."""
        job_key = self.trigger_job_key(event["result_key"])
        result_key = protocol.result_key_for_job(job_key)
        claim_key, done_key = trigger.state_keys(result_key)
        loop = asyncio.get_running_loop()
        pending = _Pending(job_key, claim_key, loop.create_future(),
                           time.monotonic() + self.grace)
        self._pending[done_key] = pending
        if self._poller is None:
            self._poller = asyncio.ensure_future(self._poll())
        self._wake.set()
        options = {"max_output": event["max_output"]} if "max_output" in event else {}
        meta = {"dask-lambda-options": json.dumps(options)}
        try:
            if event.get("job") is not None:
                await self.s3.put_object(Bucket=self.layout.bucket, Key=job_key, Metadata=meta,
                                         Body=base64.b64decode(event["job"]))
            else:  # the executor uploaded it under its plain key: copy it inside S3
                await self.s3.copy_object(
                    Bucket=self.layout.bucket, Key=job_key, Metadata=meta,
                    MetadataDirective="REPLACE",
                    CopySource={"Bucket": self.layout.bucket, "Key": event["job_key"]})
            return await pending.future
        finally:
            self._pending.pop(done_key, None)

    async def stop(self) -> None:
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
        at = protocol.identity(self.layout.bucket, done_key)
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
        if "error" in record:
            err = record["error"]
            etype = str(err.get("errorType") or "Unhandled")
            raise FunctionError(f"{etype}: {err.get('errorMessage')} (request "
                                f"{err.get('requestId')})", etype)
        return record["response"]

    async def _check_claim(self, pending: _Pending) -> None:
        try:
            head = await self.s3.head_object(Bucket=self.layout.bucket, Key=pending.claim_key)
        except Exception as exc:
            if _code(exc) not in ("404", "NoSuchKey", "NotFound"):
                raise
            pending.future.set_exception(HandlerCrashedError(
                f"no S3 notification started the function {self.function!r} for job "
                f"s3://{self.layout.bucket}/{pending.job_key} within {self.grace:.0f} s. "
                "Notifications are usually delivered in seconds; if this keeps happening, "
                f"check the bucket's trigger (`{self.deploy} --trigger`) and the function's "
                "log, or raise lambda.aws.notification-grace."))
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
            f"{int(min(900, self.timeout * 2))}`, or split the task into smaller ones."))
