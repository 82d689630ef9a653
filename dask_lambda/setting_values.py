"""How each setting's value is parsed and checked (used by :mod:`dask_lambda.settings`).

A parser takes the value as given (argument, config or environment text) and a `Context`
(the settings checked before it), and returns the checked value or raises `Refused`: why,
and optionally a corrected value; `dask_lambda.settings` turns that into the message. Sizes
go through `dask.utils.parse_bytes`, durations through `dask.utils.parse_timedelta`, and
Lambda's limits come from :mod:`dask_lambda.limits`.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import enum
import ipaddress
import json
import math
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import dask.config
from dask.utils import parse_bytes, parse_timedelta

from . import limits
from .backends.base import Backend


class _NotGiven(enum.Enum):
    NOT_GIVEN = "NOT_GIVEN"

    def __repr__(self) -> str:
        return "NOT_GIVEN"


#: Default of every setting argument: "not given", so that ``None`` can mean "off".
NOT_GIVEN = _NotGiven.NOT_GIVEN

BACKENDS = ("local", "aws")
MODES = ("invoke", "trigger")
INVOKERS = ("auto", "direct", "sdk")
#: The bucket of a local backend given none (``-<random>`` added on its private S3 server).
LOCAL_BUCKET = "dask-lambda-local"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# S3's naming rules beyond the characters
# (https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html).
_BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
# Lambda function names (https://docs.aws.amazon.com/lambda/latest/api/API_CreateFunction.html).
_FUNCTION_NAME = re.compile(r"^(arn:aws[\w-]*:lambda:[\w-]+:\d{12}:function:)?[A-Za-z0-9_-]{1,64}$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z0-9]+)+-\d+$")
_HOST = re.compile(r"^([A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\])$")
_PLAIN_NUMBER = re.compile(r"^\s*[0-9]+(\.[0-9]*)?\s*$")


class Code(str):
    """Python source shown as it is in a corrected call (``SimulatedBackend()``)."""


class Refused(Exception):
    """A value a parser refuses: why, and optionally a corrected value that fits."""

    def __init__(self, problem: str, example: Any = NOT_GIVEN, *, type_error: bool = False,
                 whole: bool = False, did_you_mean: bool = False):
        super().__init__(problem)
        self.problem = problem
        self.example = example
        self.type_error = type_error
        self.whole = whole  # the problem replaces "<given> is not valid"
        self.did_you_mean = did_you_mean


@dataclasses.dataclass(frozen=True)
class Context:
    """What a parser knows besides the value."""

    done: Mapping[str, Any]  # the settings checked so far, by field name
    from_argument: bool


Parser = Callable[[Any, Context], Any]


def py_literal(value: Any) -> str:
    """``value`` as Python source, strings in double quotes."""
    if isinstance(value, Code):
        return str(value)
    return json.dumps(value) if isinstance(value, str) else repr(value)


# -- kinds of values ------------------------------------------------------------------------

def _kind(value: Any, what: str) -> Refused:
    return Refused(f"a value of type {type(value).__name__} is not {what}", type_error=True)


def _text_ok(value: Any, ctx: Context) -> bool:
    """Strings stand for booleans only where text is all there is (environment variables,
    quoted yaml): an argument must be True or False."""
    return isinstance(value, str) and not ctx.from_argument


def _whole(value: Any, ctx: Context, what: str = "a whole number") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _kind(value, what)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise Refused(f"{value!r} is not {what}") from None
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise Refused(f"{value!r} is not {what}")
    return int(value)


def _number(value: Any, ctx: Context, what: str, *, infinite: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _kind(value, what)
    try:
        number = float(value.strip().lstrip("$") if isinstance(value, str) else value)
    except ValueError:
        raise Refused(f"{value!r} is not {what}") from None
    if math.isnan(number) or (math.isinf(number) and not infinite):
        raise Refused(f"{value!r} is not {what}")
    return number


def _bytes(value: Any, what: str = "a size") -> int:
    """Bytes from a number or a size string (``"256 KiB"``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _kind(value, what)
    if isinstance(value, str):
        try:
            value = parse_bytes(value)
        except (ValueError, OverflowError):
            raise Refused(f"{value!r} is not {what}") from None
    if not (math.isfinite(value) and float(value).is_integer()):
        raise Refused(f"{value!r} is not a whole number of bytes")
    return int(value)


def _seconds(value: Any, what: str = "a duration") -> float:
    """Seconds from a number, a `datetime.timedelta` or a duration string (``"5 minutes"``)."""
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _kind(value, what)
    if isinstance(value, str):
        try:
            value = parse_timedelta(value)
        except (ValueError, KeyError, OverflowError, TypeError):
            raise Refused(f"{value!r} is not {what}") from None
    number = float(value)
    if not math.isfinite(number):
        raise Refused(f"{value!r} is not a finite duration")
    return number


def _megabytes(value: Any, ctx: Context) -> int:
    """MB from a number (MB) or a size string (rounded to whole MiB, Lambda's "MB")."""
    if isinstance(value, str) and not _PLAIN_NUMBER.match(value):
        return round(_bytes(value, "a size") / 2**20)
    if isinstance(value, str):  # "2048" is MB, as the number is
        return round(float(value))
    return _whole(value, ctx, "a whole number of MB")


def boolean(value: Any, ctx: Context) -> bool:
    if isinstance(value, bool):
        return value
    if _text_ok(value, ctx) and value.strip().lower() in ("true", "yes", "on", "1"):
        return True
    if _text_ok(value, ctx) and value.strip().lower() in ("false", "no", "off", "0"):
        return False
    raise Refused(f"{value!r} is not True or False", type_error=not isinstance(value, str)
                  or ctx.from_argument)


def choice(choices: tuple[str, ...]) -> Parser:
    def parse(value: Any, ctx: Context) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        near = difflib.get_close_matches(str(value).lower(), choices, n=1, cutoff=0.6)
        raise Refused(f"choose one of {', '.join(map(repr, choices))}",
                      near[0] if near else choices[0], did_you_mean=bool(near),
                      type_error=not isinstance(value, str))
    return parse


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
        raise _kind(value, "a URL")
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


def split_bucket(url: Any) -> tuple[str, str]:
    if not isinstance(url, str):
        raise _kind(url, 'a bucket such as "s3://my-bucket/dask"')
    text = url.strip()
    if "://" in text:
        scheme, _, text = text.partition("://")
        if scheme != "s3":
            raise Refused(f"{url!r} is not an S3 URL: use an s3:// URL or a bare bucket name",
                          "s3://my-bucket/dask")
    bucket, _, prefix = text.partition("/")
    prefix = prefix.strip("/")
    if not _valid_bucket(bucket):
        fixed = _bucket_like(bucket)
        where = f"s3://{fixed}/{prefix}" if prefix else f"s3://{fixed}"
        raise Refused(f"{bucket!r} is not a valid S3 bucket name (3-63 characters: lowercase "
                      "letters, digits, '-' and '.', starting and ending with a letter or "
                      "digit, not an IP address)", where, did_you_mean=True)
    return bucket, prefix


def _valid_bucket(name: str) -> bool:
    if not _BUCKET.match(name) or ".." in name or name.startswith(_BUCKET_PREFIXES):
        return False
    if name.endswith(_BUCKET_SUFFIXES):
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return True
    return False


def _bucket_like(name: str) -> str:
    """A valid bucket name close to ``name`` (never ``name`` itself, which is not valid)."""
    fixed = re.sub(r"[^a-z0-9.-]+", "-", name.lower())
    fixed = re.sub(r"\.{2,}", ".", fixed)
    for start in _BUCKET_PREFIXES:
        fixed = fixed.removeprefix(start)
    for end in _BUCKET_SUFFIXES:
        fixed = fixed.removesuffix(end)
    fixed = fixed[:63].strip("-.")
    if 0 < len(fixed) < 3:
        fixed = f"{fixed}-bucket"
    if re.fullmatch(r"[0-9.]+", fixed):  # an IP address is not a bucket name
        fixed = "bucket-" + fixed.replace(".", "-")
    return fixed if _valid_bucket(fixed) else "my-bucket"


def memory(value: Any, ctx: Context) -> int:
    mb = _megabytes(value, ctx)
    lo, hi = limits.MEMORY_MB
    if not lo <= mb <= hi:
        raise Refused(f"{mb} MB is outside Lambda's {lo}-{hi} MB",
                      min(max(mb, lo), hi) if _is_size_string(value) else 2048)
    return mb


def _is_size_string(value: Any) -> bool:
    return isinstance(value, str) and not _PLAIN_NUMBER.match(value)


def function_timeout(value: Any, ctx: Context) -> float:
    seconds = _seconds(value)
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
    slots = _whole(value, ctx)
    if slots < 1:
        raise Refused("it must be at least 1", min(8, bound))
    if slots > bound:
        raise Refused(why, bound)
    return slots


def inline_max(value: Any, ctx: Context) -> int:
    size = _bytes(value)
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
    size = _bytes(value)
    if size < 1:
        raise Refused("it must be at least 1 byte (None: never share)", "64 KiB")
    return size


def max_output(value: Any, ctx: Context) -> int | None:
    if value is None:
        return None
    size = _bytes(value)
    if not 1 <= size <= limits.MAX_OBJECT_BYTES:
        raise Refused(f"{size:,} bytes is outside 1 byte to S3's largest object "
                      f"({limits.MAX_OBJECT_BYTES:,} bytes)", "5 GiB")
    return size


def oom_retry_memory(value: Any, ctx: Context) -> int | None:
    if value is None:
        return None
    mb = _megabytes(value, ctx)
    memory, hi = ctx.done["memory"], limits.MEMORY_MB[1]
    if not memory < mb <= hi:
        raise Refused(f"{mb} MB must be more than memory={memory} and at most {hi} MB",
                      min(hi, memory * 2) if memory < hi else None)
    return mb


def cost_budget(value: Any, ctx: Context) -> float | None:
    if value is None:
        return None
    dollars = _number(value, ctx, "a number of dollars")
    if not dollars > 0:
        raise Refused("it must be more than $0")
    return dollars


def retries(value: Any, ctx: Context) -> int:
    count = _whole(value, ctx)
    if not 0 <= count <= limits.MAX_RETRIES:
        raise Refused(f"{count} is outside 0-{limits.MAX_RETRIES}")
    return count


def heartbeat(value: Any, ctx: Context) -> float:
    seconds = _seconds(value)
    if not seconds >= limits.MIN_HEARTBEAT_S:
        raise Refused(f"{seconds:g} s is less than {limits.MIN_HEARTBEAT_S:g} s: each beat "
                      "rewrites this client's run marker in S3")
    return seconds


def stale_after(value: Any, ctx: Context) -> float:
    seconds = _seconds(value)
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
        raise _kind(value, "an address")
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
    ratio = _number(value, ctx, "a number", infinite=True)
    if not ratio > 0:
        raise Refused("it must be more than 0")
    return ratio


def batching_on(done: Mapping[str, Any]) -> bool:
    return bool(done.get("batching"))


def max_tasks(value: Any, ctx: Context) -> int:
    count = _whole(value, ctx)
    if count < 1:
        raise Refused("it must be at least 1")
    return count


def max_duration(value: Any, ctx: Context) -> float:
    timeout = ctx.done["function_timeout"]
    if value is None:
        return timeout / 10
    seconds = _seconds(value)
    if not 0 < seconds <= timeout:
        raise Refused(f"{seconds:g} s is outside (0, function_timeout={timeout:g}] seconds: a "
                      "group estimated to run longer would run into the timeout")
    return seconds


def overhead(value: Any, ctx: Context) -> float:
    seconds = _seconds(value)
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
        raise _kind(value, "a function name")
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
    seconds = _seconds(value)
    if not seconds > 0:
        raise Refused("it must be more than 0 s")
    return seconds


def python(value: Any, ctx: Context) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _kind(value, "a path")
    found = shutil.which(os.path.expanduser(value))
    if found is None:
        raise Refused(f"{value!r} is not an executable file", sys.executable)
    return found
