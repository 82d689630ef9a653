"""How each setting's value is parsed and checked (used by :mod:`dask_lambda.settings`): one
parser per setting, made of the kinds of values in :mod:`dask_lambda.setting_kinds`, with
Lambda's limits from :mod:`dask_lambda.limits`.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import dask.config

from . import limits
from .backends.base import Backend
from .bucket_names import split_bucket
from .setting_kinds import (
    NOT_GIVEN,
    Code,
    Context,
    Parser,
    Refused,
    boolean,
    choice,
    duration_seconds,
    is_size_string,
    megabytes,
    py_literal,
    real_number,
    size_bytes,
    whole_number,
    wrong_kind,
)

__all__ = ["NOT_GIVEN", "Code", "Context", "Parser", "Refused", "boolean", "choice",
           "py_literal", "split_bucket"]

BACKENDS = ("local", "aws")
MODES = ("invoke", "trigger")
INVOKERS = ("auto", "direct", "sdk")
#: The bucket of a local backend given none (``-<random>`` added on its private S3 server).
LOCAL_BUCKET = "dask-lambda-local"
# Lambda function names (https://docs.aws.amazon.com/lambda/latest/api/API_CreateFunction.html).
_FUNCTION_NAME = re.compile(r"^(arn:aws[\w-]*:lambda:[\w-]+:\d{12}:function:)?[A-Za-z0-9_-]{1,64}$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z0-9]+)+-\d+$")
_HOST = re.compile(r"^([A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\])$")


# -- one parser per setting, in the order they are checked ---------------------------------

def backend(value: Any, ctx: Context) -> str | Backend:
    if isinstance(value, Backend):
        return value
    if isinstance(value, type) and issubclass(value, Backend):
        raise Refused(f"{value.__name__} is a class: pass an instance",
                      Code(f"{value.__name__}()"), type_error=True)
    return choice(BACKENDS)(value, ctx)


def s3_endpoint(value: Any, ctx: Context) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise wrong_kind(value, "a URL")
    parts = urlsplit(value.strip())
    try:
        parts.port  # noqa: B018  (raises for a port that is not a number)
    except ValueError:
        raise Refused(f"{value!r} has a port that is not a number") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused(f"{value!r} is not an http:// or https:// URL")
    return value.strip().rstrip("/")


def _creates_bucket(backend: Any) -> bool:
    if isinstance(backend, Backend):
        return backend.creates_bucket
    return backend == "local"


def bucket(value: Any, ctx: Context) -> tuple[str, str]:
    if value is None or value == "":
        if _creates_bucket(ctx.done["backend"]):
            # The private S3 server dies with the client: any name is free. An endpoint
            # given by the user is shared, so use one bucket there (created if missing,
            # kept, as any bucket on it) instead of leaving a new one per client.
            if ctx.done.get("local_s3_endpoint") is not None:
                return LOCAL_BUCKET, ""
            return f"{LOCAL_BUCKET}-{secrets.token_hex(4)}", ""
        backend = ctx.done["backend"]
        name = backend if isinstance(backend, str) else type(backend).__name__
        raise Refused(f"backend={py_literal(name)} needs an S3 bucket for job and result objects "
                      "(only the local backend makes a private one)", "s3://my-bucket/dask",
                      whole=True)
    return split_bucket(value)


def memory(value: Any, ctx: Context) -> int:
    mb = megabytes(value, ctx)
    lo, hi = limits.MEMORY_MB
    if not lo <= mb <= hi:
        raise Refused(f"{mb} MB is outside Lambda's {lo}-{hi} MB",
                      min(max(mb, lo), hi) if is_size_string(value) else 2048)
    return mb


def function_timeout(value: Any, ctx: Context) -> float:
    seconds = duration_seconds(value)
    if not 0 < seconds <= limits.MAX_TIMEOUT_S:
        raise Refused(f"{seconds:g} s is outside Lambda's (0, {limits.MAX_TIMEOUT_S}] seconds",
                      limits.MAX_TIMEOUT_S if seconds > limits.MAX_TIMEOUT_S else 300)
    return seconds


def local_concurrency_limit() -> tuple[int, str]:
    """Most concurrency the local backend accepts on this machine, and why (for messages).

    Each slot is an interpreter of its own (an execution environment): at most
    `limits.LOCAL_SLOTS_PER_CORE` per core and `limits.LOCAL_SLOT_MB` of this machine's
    memory each.
    """
    import psutil

    cores = os.cpu_count() or 1
    memory_mb = psutil.virtual_memory().total // 2**20
    bound = max(1, min(cores * limits.LOCAL_SLOTS_PER_CORE, memory_mb // limits.LOCAL_SLOT_MB))
    return bound, (f"the local backend runs one Python interpreter per slot, and this machine "
                   f"({cores} cores, {memory_mb / 1024:.1f} GiB) holds at most {bound} "
                   f"({limits.LOCAL_SLOTS_PER_CORE} per core, {limits.LOCAL_SLOT_MB} MB each)")


def concurrency_limit(backend: Any) -> tuple[int, str]:
    if backend == "local":
        return local_concurrency_limit()
    return limits.MAX_AWS_CONCURRENCY, (
        f"at most {limits.MAX_AWS_CONCURRENCY:,} per client (Lambda's default quota is "
        f"{limits.DEFAULT_ACCOUNT_CONCURRENCY:,} per Region; one client cannot dispatch to "
        "more slots than that)")


def concurrency(value: Any, ctx: Context) -> int:
    backend = ctx.done["backend"]
    bound, why = concurrency_limit(backend)
    if value is None:  # the default: Lambda's quota on aws, the cores here
        if backend == "aws":
            return limits.DEFAULT_ACCOUNT_CONCURRENCY
        return min(os.cpu_count() or 1, bound)
    slots = whole_number(value, ctx)
    if slots < 1:
        raise Refused("it must be at least 1", min(8, bound))
    if slots > bound:
        raise Refused(why, bound)
    return slots


def inline_max(value: Any, ctx: Context) -> int:
    size = size_bytes(value)
    if not 0 <= size <= limits.MAX_INLINE_BYTES:
        raise Refused(
            f"{size:,} bytes is outside 0-{limits.MAX_INLINE_BYTES:,}: an inline job or output "
            f"travels base64-encoded in a JSON payload, which Lambda limits to "
            f"{limits.SYNC_PAYLOAD_BYTES:,} bytes for a synchronous invoke",
            "4 MB" if size > limits.MAX_INLINE_BYTES else "256 KiB")
    return size


def share_min(value: Any, ctx: Context) -> int | None:
    if value is None:
        return None
    size = size_bytes(value)
    if size < 1:
        raise Refused("it must be at least 1 byte (None: never share)", "16 KiB")
    return size


def max_output(value: Any, ctx: Context) -> int | None:
    if value is None:
        return None
    size = size_bytes(value)
    if not 1 <= size <= limits.MAX_OBJECT_BYTES:
        raise Refused(f"{size:,} bytes is outside 1 byte to S3's largest object "
                      f"({limits.MAX_OBJECT_BYTES:,} bytes)", "5 GiB")
    return size


def oom_retry_memory(value: Any, ctx: Context) -> int | None:
    if value is None:
        return None
    mb = megabytes(value, ctx)
    memory, hi = ctx.done["memory"], limits.MEMORY_MB[1]
    if not memory < mb <= hi:
        raise Refused(f"{mb} MB must be more than memory={memory} and at most {hi} MB",
                      min(hi, memory * 2) if memory < hi else None)
    return mb


def cost_budget(value: Any, ctx: Context) -> float | None:
    if value is None:
        return None
    dollars = real_number(value, ctx, "a number of dollars")
    if not dollars > 0:
        raise Refused("it must be more than $0")
    return dollars


def retries(value: Any, ctx: Context) -> int:
    count = whole_number(value, ctx)
    if not 0 <= count <= limits.MAX_RETRIES:
        raise Refused(f"{count} is outside 0-{limits.MAX_RETRIES}")
    return count


def heartbeat(value: Any, ctx: Context) -> float:
    seconds = duration_seconds(value)
    if not seconds >= limits.MIN_HEARTBEAT_S:
        raise Refused(f"{seconds:g} s is less than {limits.MIN_HEARTBEAT_S:g} s: each beat "
                      "rewrites this client's run marker in S3")
    return seconds


def stale_after(value: Any, ctx: Context) -> float:
    seconds = duration_seconds(value)
    heartbeat = ctx.done.get("heartbeat") or 0.0
    least = limits.STALE_HEARTBEATS * heartbeat
    if not seconds > 0:
        raise Refused(f"{seconds:g} s would take every other client's run for a dead one "
                      "and delete its objects", stale_example(ctx.done))
    if seconds < least:
        raise Refused(f"{seconds:g} s is less than {limits.STALE_HEARTBEATS} heartbeats "
                      f"({limits.STALE_HEARTBEATS} x {heartbeat:g} s): a live client's run "
                      "would be taken for a dead one and its objects deleted",
                      stale_example(ctx.done))
    return seconds


def stale_example(done: Mapping[str, Any]) -> float:
    return max(3600, limits.STALE_HEARTBEATS * (done.get("heartbeat") or 0.0))


def dashboard_address(value: Any, ctx: Context) -> str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = f":{value}"
    if not isinstance(value, str):
        raise wrong_kind(value, "an address")
    host, colon, port = value.strip().rpartition(":")
    if not colon:
        raise Refused(f"{value!r} has no port")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise Refused(f"{port!r} is not a port (0-65535)")
    if not _HOST.match(host):
        raise Refused(f"{host!r} is not a host name or address")
    return value.strip()


def worker_saturation(value: Any, ctx: Context) -> float | None:
    if value is None:
        return None
    ratio = real_number(value, ctx, "a number", infinite=True)
    if not ratio > 0:
        raise Refused("it must be more than 0")
    return ratio


def batching_on(done: Mapping[str, Any]) -> bool:
    return bool(done.get("batching"))


def max_tasks(value: Any, ctx: Context) -> int:
    count = whole_number(value, ctx)
    if count < 1:
        raise Refused("it must be at least 1")
    return count


def max_duration(value: Any, ctx: Context) -> float:
    timeout = ctx.done["function_timeout"]
    if value is None:
        return timeout / 10
    seconds = duration_seconds(value)
    if not 0 < seconds <= timeout:
        raise Refused(f"{seconds:g} s is outside (0, function_timeout={timeout:g}] seconds: a "
                      "group estimated to run longer would run into the timeout")
    return seconds


def overhead(value: Any, ctx: Context) -> float:
    seconds = duration_seconds(value)
    if seconds < 0:
        raise Refused("it must not be negative")
    return seconds


def unknown_duration(value: Any, ctx: Context) -> float:
    if value is None:
        import distributed  # noqa: F401  (registers distributed's configuration)

        fallback = dask.config.get("distributed.scheduler.unknown-task-duration")
        try:
            return overhead(fallback, ctx)
        except Refused as exc:
            raise Refused(f"it is null, and distributed.scheduler.unknown-task-duration="
                          f"{fallback!r} (which it then uses) is not valid: {exc.problem}",
                          "500ms", whole=True) from None
    return overhead(value, ctx)


def function(value: Any, ctx: Context) -> str:
    if not isinstance(value, str):
        raise wrong_kind(value, "a function name")
    if not _FUNCTION_NAME.match(value):
        raise Refused(f"{value!r} is not a Lambda function name (letters, digits, '-' and "
                      "'_', at most 64) or ARN")
    return value


def region(value: Any, ctx: Context) -> str | None:
    if value is not None and (not isinstance(value, str) or not _REGION.match(value)):
        raise Refused(f"{value!r} is not an AWS region name", type_error=not isinstance(
            value, str))
    if value is None and ctx.done["backend"] == "aws":
        from .deployment.region import default_region

        if not default_region():  # None stays None: the backend uses boto's region
            raise Refused("the aws backend needs an AWS region and boto has none "
                          "(AWS_REGION, AWS_DEFAULT_REGION or the profile's)", whole=True)
    return value


def signing_key(value: Any, ctx: Context) -> bytes | None:
    if value is None:
        return None
    try:
        key = bytes.fromhex(str(value).strip())
    except ValueError:
        key = b""
    if len(key) < 16:
        raise Refused("it is not a hex string of at least 32 characters (run `dask-lambda "
                      "deploy` again to write a new key file)")
    return key


def grace(value: Any, ctx: Context) -> float:
    seconds = duration_seconds(value)
    if not seconds > 0:
        raise Refused("it must be more than 0 s")
    return seconds


def python(value: Any, ctx: Context) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise wrong_kind(value, "a path")
    found = shutil.which(os.path.expanduser(value))
    if found is None:
        raise Refused(f"{value!r} is not an executable file", sys.executable)
    return found
