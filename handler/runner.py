"""Run one job: read it, verify it, run it, write its output (`run`).

Anything wrong with the job itself (bad signature, missing object, no permission) raises
out of the handler, which Lambda reports as a function error; ``status == "error"`` in the
response means the *task* raised, and its payload holds the exception and its traceback.
The event and response are `dask_lambda_handler.records`' `InvokeEvent` and `InvokeResponse`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import time
from typing import Any

from . import compat, env, inputs, protocol, records, s3io, s3keys
from .capture import captured_output
from .client_paths import note_client_paths
from .errors import NotAvailableInLambda, OutputTooLargeError  # noqa: F401  (importable here)
from .outcome import exit_error, failed, sizeof

_COLD = True


def execute(func: Any, args: tuple, kwargs: dict, box: dict) -> tuple:
    """Run the task: (status, header, frames, sizeof, type name) of its output or error."""
    try:
        with captured_output(box):
            result = func(*args, **kwargs)
    except Exception as exc:
        return failed(note_client_paths(exc))
    except BaseException as exc:  # the task's outcome too, not a crash of its environment
        return failed(exit_error(exc))
    try:
        frames = protocol.dumps_object(result)
    except Exception as exc:
        return failed(TypeError(
            f"the task's result of type {type(result).__name__} cannot be pickled to send it "
            f"back from Lambda: {exc}"))
    typename = protocol.type_name(result)
    return "ok", {"kind": "result", "type": typename}, frames, sizeof(result), typename


def run(event: records.InvokeEvent, context: Any) -> records.InvokeResponse:
    """Run the job ``event`` names and answer with its outcome (see the module docstring)."""
    global _COLD
    cold, _COLD = _COLD, False
    t0 = time.time()
    counts0 = s3io.COUNTS.copy()
    captured: dict = {}
    bucket = event.bucket
    key = env.run_key(event.job_key)
    raw, job = _read_job(event, key)
    t1 = time.time()

    # modules the job imports; a missing or refused one raises out of the handler
    inputs.install_files(bucket, job.header.get("files") or (), key)
    try:
        func, args, kwargs = job.load(find_class=compat.find_class)
    except Exception as exc:  # e.g. a module the task needs is not installed here
        status, header, frames, size, typename = failed(exc)
    else:
        del raw, job
        # a missing input raises out of the handler: not the task's fault
        args = inputs.resolve(args, key)
        t1 = time.time()
        status, header, frames, size, typename = execute(func, args, kwargs, captured)
        del func, args, kwargs
    t2 = time.time()

    stats = records.RunStats(cold=cold, read_s=t1 - t0, run_s=t2 - t1,
                             request_id=getattr(context, "aws_request_id", None), pid=os.getpid())
    header["stats"] = stats.to_wire()
    at = s3keys.identity(bucket, event.result_key)  # also when it travels inline
    parts = protocol.encode_parts(header, frames, key, at)
    nbytes = protocol.parts_size(parts)
    if status == "ok" and event.max_output is not None and nbytes > event.max_output:
        status, header, frames, size, typename = failed(OutputTooLargeError(
            f"the task's output is {nbytes:,} bytes encoded, more than max-output="
            f"{event.max_output:,}; it was not stored. Return less (e.g. write large data to S3 "
            "inside the task and return its path), or raise the limit: "
            f"LambdaClient(..., max_output={2 * nbytes}) or DASK_LAMBDA__MAX_OUTPUT"))
        header["stats"] = stats.to_wire()
        parts = protocol.encode_parts(header, frames, key, at)
        nbytes = protocol.parts_size(parts)
    response = records.InvokeResponse(status=status, nbytes=nbytes, size=size, type=typename,
                                      log=captured.get("log"))
    # 1024: what the stats and this response's other fields add to the payload
    if nbytes <= event.inline_max and protocol.fits_inline(
            nbytes, len(json.dumps(response.to_wire())) + 1024):
        response = dataclasses.replace(response, result=base64.b64encode(b"".join(parts)).decode())
    else:
        s3keys.refuse_jobs_prefix(event.result_key, event.job_key)
        s3io.put(env.s3(), bucket, event.result_key, parts, env.transfer_concurrency())
        response = dataclasses.replace(response, result_key=event.result_key)
    del parts, frames
    t3 = time.time()
    return response.with_stats(dataclasses.replace(
        stats, write_s=t3 - t2, peak_rss_mb=_peak_rss_mb(), duration_s=t3 - t0,
        s3_gets=s3io.COUNTS["get"] - counts0["get"], s3_puts=s3io.COUNTS["put"] - counts0["put"]))


def _read_job(event: records.InvokeEvent, key: bytes) -> tuple[bytearray, protocol.Payload]:
    """The job's bytes (inline or from S3) and its payload, verified as the job it names."""
    if event.job is not None:
        raw = bytearray(base64.b64decode(event.job))
    else:
        raw = s3io.get(env.s3(), event.bucket, event.job_key, env.transfer_concurrency())
    job = protocol.decode(raw, key, s3keys.identity(event.bucket,
                                                    s3keys.job_identity(event.job_key)))
    if job.header.get("kind") != "job":
        raise protocol.PayloadError(f"expected a job payload, got {job.header.get('kind')!r}")
    return raw, job


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


