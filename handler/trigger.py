"""S3-trigger mode: run the job objects that S3 ObjectCreated notifications name.

In this mode (doLambda's design) the client never invokes the function: it writes
a job object under ``P/jobs/`` whose name ends in ``.trigger.job``, and the
bucket's notification invokes the function with an S3 event.  For each record
the handler

1. derives the result key with :func:`s3keys.result_key_for_job`;
2. refuses a job older than the client waits for its claim (``start_within``
   seconds after the job object was written, the client's notification grace
   less a margin): Lambda keeps throttled asynchronous events and delivers them
   late (up to the function's MaximumEventAgeInSeconds), and by then the client
   has sent the job again under a new attempt key;
3. claims the job by creating ``P/results/<run>/_claims/<hh>/<name>`` with
   ``If-None-Match: *``: S3 delivers notifications at least once and Lambda
   retries asynchronous invocations, so a second delivery of the same job finds
   the claim (412 PreconditionFailed) and does nothing (a job runs at most once
   per attempt key). A 409 ConditionalRequestConflict means a conflicting write
   was in progress, and S3's API reference says to retry it;
4. runs it like an ``op: run`` event (the output always goes to S3);
5. writes a signed completion record ``P/results/<run>/_done/<hh>/<name>.json``
   holding the run's response (or the handler's error), which the client lists.

The handler never writes under the jobs prefix (`s3keys.refuse_jobs_prefix` checks
every key it writes), so its own writes can never trigger it again; the role
that ``dask-lambda deploy`` creates also denies ``s3:PutObject`` there, so a
task cannot either.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import Any

from . import env, protocol, records, runner, s3errors, s3keys

state_keys = s3keys.state_keys


def handle_records(event: dict, context: Any) -> dict:
    """Run the job object of each S3 record; never raises for one job's failure."""
    jobs = []
    for record in event.get("Records") or ():
        s3 = record.get("s3") or {}
        bucket = (s3.get("bucket") or {}).get("name", "")
        key = urllib.parse.unquote_plus((s3.get("object") or {}).get("key", ""))
        jobs.append(_run_job_object(bucket, key, context))
    return {"status": "ok", "jobs": jobs}


#: Attempts at a claim that S3 answers 409 ConditionalRequestConflict, and the first wait.
CLAIM_ATTEMPTS = 6
_CLAIM_BACKOFF = 0.1
#: The options (object metadata) the client may set on a trigger job: the job's max-output,
#: and the seconds after its writing within which it must start.
MAX_OUTPUT, START_WITHIN = "max_output", "start_within"
OPTIONS = (MAX_OUTPUT, START_WITHIN)
#: S3 requests this module makes per job (the job's HEAD, the claim, the completion record),
#: counted in the response's stats with the run's own.
_GETS, _PUTS = 1, 2


def _claim(client: Any, bucket: str, claim: str, body: bytes) -> bool:
    """Create the claim object; False if it exists (another delivery has the job)."""
    for attempt in range(CLAIM_ATTEMPTS):
        try:
            client.put_object(Bucket=bucket, Key=claim, IfNoneMatch="*", Body=body)
            return True
        except Exception as exc:
            kind = s3errors.kind(exc)
            if kind == s3errors.EXISTS:
                return False
            if kind != s3errors.CONFLICT or attempt == CLAIM_ATTEMPTS - 1:
                raise
            time.sleep(_CLAIM_BACKOFF * 2**attempt)  # another write of it is under way
    raise AssertionError("unreachable")


def _age(head: dict) -> float:
    """Seconds since the object of ``head`` (a HeadObject answer) was written, by S3's clock."""
    import email.utils

    date = (head.get("ResponseMetadata") or {}).get("HTTPHeaders", {}).get("date")
    now = email.utils.parsedate_to_datetime(date).timestamp() if date else time.time()
    return now - head["LastModified"].timestamp()


def _run_job_object(bucket: str, key: str, context: Any) -> dict:
    try:
        result_key = s3keys.result_key_for_job(key)
    except protocol.PayloadError:
        return _skipped(key, "not a dask-lambda job key")
    claim, done = state_keys(result_key)
    for written in (result_key, claim, done):
        s3keys.refuse_jobs_prefix(written, key)
    client = env.s3()
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if s3errors.kind(exc) == s3errors.MISSING:  # its run finished: nothing to do
            return _skipped(key, "the job object is gone")
        raise
    request_id = getattr(context, "aws_request_id", None)
    raw = (head.get("Metadata") or {}).get("dask-lambda-options")
    options = {k: v for k, v in json.loads(raw).items() if k in OPTIONS} if raw else {}
    start_within = options.pop(START_WITHIN, None)
    age = _age(head)
    if start_within is not None and age > float(start_within):
        return _skipped(key, f"the job is {age:.0f} s old and had to start within "
                             f"{float(start_within):.0f} s: the client no longer waits for it")
    if not _claim(client, bucket, claim, json.dumps(
            {"request_id": request_id, "time": time.time()}).encode()):
        return _skipped(key, "duplicate delivery: the job was already claimed")
    max_output = options.get(MAX_OUTPUT)
    event = records.InvokeEvent(bucket=bucket, job_key=key, result_key=result_key,
                                max_output=None if max_output is None else int(max_output))
    try:
        response = runner.run(event, context)
        response = response.with_stats(response.stats.requests(_GETS, _PUTS))
        record: dict = {"kind": "done", "response": response.to_wire()}
    except Exception as exc:  # the handler failed (not the task): tell the client
        record = {"kind": "done", "error": {"errorType": type(exc).__name__,
                                            "errorMessage": str(exc),
                                            "requestId": request_id}}
    _write_done(client, bucket, done, record)
    return {"job_key": key, "result_key": result_key, "done": done}


def _skipped(key: str, why: str) -> dict:
    print(f"dask-lambda: skipped s3 key {key}: {why}", flush=True)  # to the function's log
    return {"job_key": key, "skipped": why}


def _write_done(client: Any, bucket: str, key: str, record: dict) -> None:
    try:
        body = protocol.encode(record, [], env.run_key(key), s3keys.identity(bucket, key))
    except protocol.PayloadError:  # no signing key: an unsigned record can only report an error
        body = json.dumps({"kind": "done", "error": record.get("error") or {
            "errorType": "PayloadError", "errorMessage": "the function has no signing key"}}
                          ).encode()
    client.put_object(Bucket=bucket, Key=key, Body=body)
