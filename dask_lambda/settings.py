"""Every dask-lambda setting, read and checked once: `Settings`.

`Settings.from_arguments` is the only reader. One precedence for every setting: the
argument (``LambdaClient(..., memory=4096)``), then ``dask.config`` (yaml files,
``dask.config.set``, ``DASK_LAMBDA__<KEY>`` environment variables), then the packaged
default (``lambda.yaml``, documented in ``lambda-schema.yaml``). Each value is parsed and
checked in dependency order before anything is created, and a refused one raises a
`ConfigurationError` that names the setting (argument, config key, environment variable)
and shows a corrected call that is itself valid.

Values are what Dask users write: sizes as bytes or strings (``"256 KiB"``,
`dask.utils.parse_bytes`), memory as MB or a size (``"4 GiB"`` is 4096 MB), durations as
seconds or strings (``"5 minutes"``, `dask.utils.parse_timedelta`). For the settings whose
``None`` means something (no limit, no dashboard, the default), an explicit ``None``
argument overrides a configured value; for the others ``None`` means "not given".
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
import shlex
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import dask.config
from dask.utils import parse_bytes, parse_timedelta

from . import config, limits
from .backends.base import Backend
from .errors import ConfigurationError, SettingTypeError

__all__ = ["NOT_GIVEN", "Settings", "parse_bucket"]


class _NotGiven(enum.Enum):
    NOT_GIVEN = "NOT_GIVEN"

    def __repr__(self) -> str:
        return "NOT_GIVEN"


#: Default of every setting argument: "not given", so that ``None`` can mean "off".
NOT_GIVEN = _NotGiven.NOT_GIVEN

BACKENDS = ("local", "aws")
MODES = ("invoke", "trigger")
INVOKERS = ("auto", "direct", "sdk")
#: The bucket name used when none is given and the local backend starts its own S3 server
#: (private to the client, so any name is free; a random suffix keeps two clients on one
#: given endpoint apart only where it matters, see `_bucket`).
LOCAL_BUCKET = "dask-lambda-local"
_ALIASES = {"timeout": "function_timeout"}  # deprecated argument -> its new name
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


class _Code(str):
    """Python source shown as it is in a corrected call (``SimulatedBackend()``)."""


class _Refused(Exception):
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
class _Context:
    done: Mapping[str, Any]  # the settings checked so far, by field name
    from_argument: bool


Parser = Callable[[Any, _Context], Any]


@dataclasses.dataclass(frozen=True)
class _Spec:
    key: str  # under ``lambda.``
    arg: str | None  # the argument of LambdaClient/LambdaCluster; None: config only
    expects: str  # what the setting takes, for messages
    parse: Parser
    example: Callable[[Mapping[str, Any]], Any]  # a value that is valid given ``done``
    nullable: bool = False  # whether None has a meaning (else a None argument = not given)
    applies: Callable[[Mapping[str, Any]], bool] = lambda done: True
    secret: bool = False
    derived: str | None = None  # the parser also gives this field (bucket -> prefix)

    @property
    def env(self) -> str:
        return "DASK_LAMBDA__" + self.key.upper().replace("-", "_").replace(".", "__")

    @property
    def names(self) -> str:
        where = f"lambda.{self.key}, {self.env}"
        if self.arg == "bucket":
            return f"the bucket (the first argument; {where})"
        return f"`{self.arg}=` ({where})" if self.arg else f"lambda.{self.key} ({self.env})"


def _spec(*args: Any, **kwargs: Any) -> dict[str, _Spec]:
    """A field's metadata: its `_Spec`."""
    return {"spec": _Spec(*args, **kwargs)}


# -- value parsers: each returns the checked value or raises _Refused ----------------------

def _kind(value: Any, what: str) -> _Refused:
    return _Refused(f"a value of type {type(value).__name__} is not {what}", type_error=True)


def _text_ok(value: Any, ctx: _Context) -> bool:
    """Strings stand for booleans only where text is all there is (environment variables,
    quoted yaml): an argument must be True or False."""
    return isinstance(value, str) and not ctx.from_argument


def _whole(value: Any, ctx: _Context, what: str = "a whole number") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _kind(value, what)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise _Refused(f"{value!r} is not {what}") from None
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise _Refused(f"{value!r} is not {what}")
    return int(value)


def _number(value: Any, ctx: _Context, what: str, *, infinite: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _kind(value, what)
    try:
        number = float(value.strip().lstrip("$") if isinstance(value, str) else value)
    except ValueError:
        raise _Refused(f"{value!r} is not {what}") from None
    if math.isnan(number) or (math.isinf(number) and not infinite):
        raise _Refused(f"{value!r} is not {what}")
    return number


def _bytes(value: Any, what: str = "a size") -> int:
    """Bytes from a number or a size string (``"256 KiB"``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _kind(value, what)
    if isinstance(value, str):
        try:
            value = parse_bytes(value)
        except (ValueError, OverflowError):
            raise _Refused(f"{value!r} is not {what}") from None
    if not (math.isfinite(value) and float(value).is_integer()):
        raise _Refused(f"{value!r} is not a whole number of bytes")
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
            raise _Refused(f"{value!r} is not {what}") from None
    number = float(value)
    if not math.isfinite(number):
        raise _Refused(f"{value!r} is not a finite duration")
    return number


def _megabytes(value: Any, ctx: _Context) -> int:
    """MB from a number (MB) or a size string (rounded to whole MiB, Lambda's "MB")."""
    if isinstance(value, str) and not _PLAIN_NUMBER.match(value):
        return round(_bytes(value, "a size") / 2**20)
    if isinstance(value, str):  # "2048" is MB, as the number is
        return round(float(value))
    return _whole(value, ctx, "a whole number of MB")


def _boolean(value: Any, ctx: _Context) -> bool:
    if isinstance(value, bool):
        return value
    if _text_ok(value, ctx) and value.strip().lower() in ("true", "yes", "on", "1"):
        return True
    if _text_ok(value, ctx) and value.strip().lower() in ("false", "no", "off", "0"):
        return False
    raise _Refused(f"{value!r} is not True or False", type_error=not isinstance(value, str)
                   or ctx.from_argument)


def _choice(choices: tuple[str, ...]) -> Parser:
    def parse(value: Any, ctx: _Context) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        near = difflib.get_close_matches(str(value).lower(), choices, n=1, cutoff=0.6)
        raise _Refused(f"choose one of {', '.join(map(repr, choices))}",
                       near[0] if near else choices[0], did_you_mean=bool(near),
                       type_error=not isinstance(value, str))
    return parse


# -- the settings, in the order they are checked -------------------------------------------

def _backend(value: Any, ctx: _Context) -> str | Backend:
    if isinstance(value, Backend):
        return value
    if isinstance(value, type) and issubclass(value, Backend):
        raise _Refused(f"{value.__name__} is a class: pass an instance",
                       _Code(f"{value.__name__}()"), type_error=True)
    return _choice(BACKENDS)(value, ctx)


def _s3_endpoint(value: Any, ctx: _Context) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _kind(value, "a URL")
    parts = urlsplit(value.strip())
    try:
        parts.port  # noqa: B018  (raises for a port that is not a number)
    except ValueError:
        raise _Refused(f"{value!r} has a port that is not a number") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Refused(f"{value!r} is not an http:// or https:// URL")
    return value.strip().rstrip("/")


def _creates_bucket(backend: Any) -> bool:
    if isinstance(backend, Backend):
        return backend.creates_bucket
    return backend == "local"


def _bucket(value: Any, ctx: _Context) -> tuple[str, str]:
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
        raise _Refused(f"backend={_py(name)} needs an S3 bucket for job and result objects "
                       "(only the local backend makes a private one)", "s3://my-bucket/dask",
                       whole=True)
    return _parse_bucket(value)


def _parse_bucket(url: Any) -> tuple[str, str]:
    if not isinstance(url, str):
        raise _kind(url, 'a bucket such as "s3://my-bucket/dask"')
    text = url.strip()
    if "://" in text:
        scheme, _, text = text.partition("://")
        if scheme != "s3":
            raise _Refused(f"{url!r} is not an S3 URL: use an s3:// URL or a bare bucket name",
                           "s3://my-bucket/dask")
    bucket, _, prefix = text.partition("/")
    prefix = prefix.strip("/")
    if not _valid_bucket(bucket):
        fixed = _bucket_like(bucket)
        where = f"s3://{fixed}/{prefix}" if prefix else f"s3://{fixed}"
        raise _Refused(f"{bucket!r} is not a valid S3 bucket name (3-63 characters: lowercase "
                       "letters, digits, '-' and '.', starting and ending with a letter or "
                       "digit, not an IP address)", where, did_you_mean=True)
    return bucket, prefix


def parse_bucket(url: Any) -> tuple[str, str]:
    """Split ``"s3://bucket/prefix"`` or ``"bucket"`` into (bucket, prefix), checking the name.

    Raises
    ------
    ConfigurationError
        Not an S3 URL or not a valid bucket name; the message suggests a valid one.

    Examples
    --------
    >>> parse_bucket("s3://my-bucket/dask/")
    ('my-bucket', 'dask')
    """
    try:
        return _parse_bucket(url)
    except _Refused as exc:
        spec = dict(_specs())["bucket"]
        raise _error(spec, url, "argument", exc, {}, "bucket") from None


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


def _memory(value: Any, ctx: _Context) -> int:
    mb = _megabytes(value, ctx)
    lo, hi = limits.MEMORY_MB
    if not lo <= mb <= hi:
        raise _Refused(f"{mb} MB is outside Lambda's {lo}-{hi} MB",
                       min(max(mb, lo), hi) if _is_size_string(value) else 2048)
    return mb


def _is_size_string(value: Any) -> bool:
    return isinstance(value, str) and not _PLAIN_NUMBER.match(value)


def _function_timeout(value: Any, ctx: _Context) -> float:
    seconds = _seconds(value)
    if not 0 < seconds <= limits.MAX_TIMEOUT_S:
        raise _Refused(f"{seconds:g} s is outside Lambda's (0, {limits.MAX_TIMEOUT_S}] seconds",
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


def _concurrency_limit(backend: Any) -> tuple[int, str]:
    if backend == "local":
        return local_concurrency_limit()
    return limits.MAX_AWS_CONCURRENCY, (
        f"at most {limits.MAX_AWS_CONCURRENCY:,} per client (Lambda's default quota is "
        f"{limits.DEFAULT_ACCOUNT_CONCURRENCY:,} per Region; one client cannot dispatch to "
        "more slots than that)")


def _concurrency(value: Any, ctx: _Context) -> int:
    backend = ctx.done["backend"]
    bound, why = _concurrency_limit(backend)
    if value is None:  # the default: Lambda's quota on aws, the cores here
        if backend == "aws":
            return limits.DEFAULT_ACCOUNT_CONCURRENCY
        return min(os.cpu_count() or 1, bound)
    slots = _whole(value, ctx)
    if slots < 1:
        raise _Refused("it must be at least 1", min(8, bound))
    if slots > bound:
        raise _Refused(why, bound)
    return slots


def _inline_max(value: Any, ctx: _Context) -> int:
    size = _bytes(value)
    if not 0 <= size <= limits.MAX_INLINE_BYTES:
        raise _Refused(
            f"{size:,} bytes is outside 0-{limits.MAX_INLINE_BYTES:,}: an inline job or output "
            f"travels base64-encoded in a JSON payload, which Lambda limits to "
            f"{limits.SYNC_PAYLOAD_BYTES:,} bytes for a synchronous invoke",
            "4 MB" if size > limits.MAX_INLINE_BYTES else "256 KiB")
    return size


def _max_output(value: Any, ctx: _Context) -> int | None:
    if value is None:
        return None
    size = _bytes(value)
    if not 1 <= size <= limits.MAX_OBJECT_BYTES:
        raise _Refused(f"{size:,} bytes is outside 1 byte to S3's largest object "
                       f"({limits.MAX_OBJECT_BYTES:,} bytes)", "5 GiB")
    return size


def _oom_retry_memory(value: Any, ctx: _Context) -> int | None:
    if value is None:
        return None
    mb = _megabytes(value, ctx)
    memory, hi = ctx.done["memory"], limits.MEMORY_MB[1]
    if not memory < mb <= hi:
        raise _Refused(f"{mb} MB must be more than memory={memory} and at most {hi} MB",
                       min(hi, memory * 2) if memory < hi else None)
    return mb


def _cost_budget(value: Any, ctx: _Context) -> float | None:
    if value is None:
        return None
    dollars = _number(value, ctx, "a number of dollars")
    if not dollars > 0:
        raise _Refused("it must be more than $0")
    return dollars


def _retries(value: Any, ctx: _Context) -> int:
    count = _whole(value, ctx)
    if not 0 <= count <= limits.MAX_RETRIES:
        raise _Refused(f"{count} is outside 0-{limits.MAX_RETRIES}")
    return count


def _heartbeat(value: Any, ctx: _Context) -> float:
    seconds = _seconds(value)
    if not seconds >= limits.MIN_HEARTBEAT_S:
        raise _Refused(f"{seconds:g} s is less than {limits.MIN_HEARTBEAT_S:g} s: each beat "
                       "rewrites this client's run marker in S3")
    return seconds


def _stale_after(value: Any, ctx: _Context) -> float:
    seconds = _seconds(value)
    heartbeat = ctx.done.get("heartbeat") or 0.0
    least = limits.STALE_HEARTBEATS * heartbeat
    if not seconds > 0:
        raise _Refused(f"{seconds:g} s would take every other client's run for a dead one "
                       "and delete its objects", _stale_example(ctx.done))
    if seconds < least:
        raise _Refused(f"{seconds:g} s is less than {limits.STALE_HEARTBEATS} heartbeats "
                       f"({limits.STALE_HEARTBEATS} x {heartbeat:g} s): a live client's run "
                       "would be taken for a dead one and its objects deleted",
                       _stale_example(ctx.done))
    return seconds


def _stale_example(done: Mapping[str, Any]) -> float:
    return max(3600, limits.STALE_HEARTBEATS * (done.get("heartbeat") or 0.0))


def _dashboard_address(value: Any, ctx: _Context) -> str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = f":{value}"
    if not isinstance(value, str):
        raise _kind(value, "an address")
    host, colon, port = value.strip().rpartition(":")
    if not colon:
        raise _Refused(f"{value!r} has no port")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise _Refused(f"{port!r} is not a port (0-65535)")
    if not _HOST.match(host):
        raise _Refused(f"{host!r} is not a host name or address")
    return value.strip()


def _worker_saturation(value: Any, ctx: _Context) -> float | None:
    if value is None:
        return None
    ratio = _number(value, ctx, "a number", infinite=True)
    if not ratio > 0:
        raise _Refused("it must be more than 0")
    return ratio


def _batching_on(done: Mapping[str, Any]) -> bool:
    return bool(done.get("batching"))


def _max_tasks(value: Any, ctx: _Context) -> int:
    count = _whole(value, ctx)
    if count < 1:
        raise _Refused("it must be at least 1")
    return count


def _max_duration(value: Any, ctx: _Context) -> float:
    timeout = ctx.done["function_timeout"]
    if value is None:
        return timeout / 10
    seconds = _seconds(value)
    if not 0 < seconds <= timeout:
        raise _Refused(f"{seconds:g} s is outside (0, function_timeout={timeout:g}] seconds: a "
                       "group estimated to run longer would run into the timeout")
    return seconds


def _overhead(value: Any, ctx: _Context) -> float:
    seconds = _seconds(value)
    if seconds < 0:
        raise _Refused("it must not be negative")
    return seconds


def _unknown_duration(value: Any, ctx: _Context) -> float:
    if value is None:
        import distributed  # noqa: F401  (registers distributed's configuration)

        fallback = dask.config.get("distributed.scheduler.unknown-task-duration")
        try:
            return _overhead(fallback, ctx)
        except _Refused as exc:
            raise _Refused(f"it is null, and distributed.scheduler.unknown-task-duration="
                           f"{fallback!r} (which it then uses) is not valid: {exc.problem}",
                           "500ms", whole=True) from None
    return _overhead(value, ctx)


def _function(value: Any, ctx: _Context) -> str:
    if not isinstance(value, str):
        raise _kind(value, "a function name")
    if not _FUNCTION_NAME.match(value):
        raise _Refused(f"{value!r} is not a Lambda function name (letters, digits, '-' and "
                       "'_', at most 64) or ARN")
    return value


def _region(value: Any, ctx: _Context) -> str | None:
    if value is not None and (not isinstance(value, str) or not _REGION.match(value)):
        raise _Refused(f"{value!r} is not an AWS region name", type_error=not isinstance(
            value, str))
    if value is None and ctx.done["backend"] == "aws":
        from .backends.aws import default_region

        if not default_region():  # None stays None: the backend uses boto's region
            raise _Refused("the aws backend needs an AWS region and boto has none "
                           "(AWS_REGION, AWS_DEFAULT_REGION or the profile's)", whole=True)
    return value


def _signing_key(value: Any, ctx: _Context) -> bytes | None:
    if value is None:
        return None
    try:
        key = bytes.fromhex(str(value).strip())
    except ValueError:
        key = b""
    if len(key) < 16:
        raise _Refused("it is not a hex string of at least 32 characters (run `dask-lambda "
                       "deploy` again to write a new key file)")
    return key


def _grace(value: Any, ctx: _Context) -> float:
    seconds = _seconds(value)
    if not seconds > 0:
        raise _Refused("it must be more than 0 s")
    return seconds


def _python(value: Any, ctx: _Context) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _kind(value, "a path")
    found = shutil.which(os.path.expanduser(value))
    if found is None:
        raise _Refused(f"{value!r} is not an executable file", sys.executable)
    return found


# -- Settings --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Settings:
    """dask-lambda's settings, checked: build with `Settings.from_arguments`.

    Each field is one key of ``lambda-schema.yaml`` (``memory`` is ``lambda.memory``, set by
    ``LambdaClient(memory=...)``, ``dask.config.set({"lambda.memory": ...})`` or
    ``DASK_LAMBDA__MEMORY``), except ``prefix``, which comes with the bucket.
    """

    backend: str | Backend = dataclasses.field(metadata=_spec(
        "backend", "backend", '"local" or "aws", or a Backend instance', _backend,
        lambda done: "local"))
    """``"local"`` (processes on this machine act as Lambda, with a private S3), ``"aws"``,
    or a `Backend` instance made without settings."""
    local_s3_endpoint: str | None = dataclasses.field(metadata=_spec(
        "local.s3-endpoint", "local_s3_endpoint", "an http:// URL, or None for a private server",
        _s3_endpoint, lambda done: None, nullable=True))
    """Local backend: an S3 endpoint to use instead of starting a private moto server."""
    bucket: str = dataclasses.field(metadata=_spec(
        "bucket", "bucket", '"s3://bucket/prefix" or "bucket"', _bucket,
        lambda done: "s3://my-bucket/dask", nullable=True, derived="prefix"))
    """The S3 bucket of job and result objects. None: on the local backend a private one
    (``dask-lambda-local-<random>``, or ``dask-lambda-local`` on a given endpoint)."""
    prefix: str = dataclasses.field(metadata={"from": "bucket"})
    """The key prefix inside the bucket (``"dask"`` in ``"s3://bucket/dask"``)."""
    memory: int = dataclasses.field(metadata=_spec(
        "memory", "memory", 'a number of MB or a size such as "4 GiB"', _memory,
        lambda done: 2048))
    """MB of memory per function (execution environment): 128-10240."""
    function_timeout: float = dataclasses.field(metadata=_spec(
        "timeout", "function_timeout",
        f'seconds (at most {limits.MAX_TIMEOUT_S}) or a duration such as "5 minutes"',
        _function_timeout, lambda done: 300))
    """Seconds a task may run in Lambda before it is stopped (the function timeout)."""
    concurrency: int = dataclasses.field(metadata=_spec(
        "concurrency", "concurrency", "a whole number of tasks running at once", _concurrency,
        lambda done: min(8, _concurrency_limit(done["backend"])[0]), nullable=True))
    """Most tasks running at once. None: 1000 on aws, the number of cores locally."""
    inline_max: int = dataclasses.field(metadata=_spec(
        "inline-max", "inline_max", 'bytes or a size such as "256 KiB"', _inline_max,
        lambda done: "256 KiB"))
    """Jobs and outputs up to this many bytes travel inside the invoke request and response."""
    locality: bool = dataclasses.field(metadata=_spec(
        "locality", "locality", "True or False", _boolean, lambda done: True))
    """Keep outputs in S3 between tasks (False downloads every output to the client)."""
    max_output: int | None = dataclasses.field(metadata=_spec(
        "max-output", "max_output", 'bytes or a size such as "1 GiB", or None for no limit',
        _max_output, lambda done: "5 GiB", nullable=True))
    """Largest encoded output a task may return, bytes. None: no limit."""
    oom_retry_memory: int | None = dataclasses.field(metadata=_spec(
        "oom-retry-memory", "oom_retry_memory",
        "MB (or a size) above memory, or None for no retry", _oom_retry_memory,
        lambda done: min(limits.MEMORY_MB[1], done["memory"] * 2)
        if done["memory"] < limits.MEMORY_MB[1] else None, nullable=True))
    """MB to retry a task killed for memory with, once (local backend). None: no retry."""
    cost_budget: float | None = dataclasses.field(metadata=_spec(
        "cost-budget", "cost_budget", "a positive number of dollars, or None for no budget",
        _cost_budget, lambda done: 5.0, nullable=True))
    """Dollars this client may spend; dispatching stops before the estimate passes it."""
    retries: int = dataclasses.field(metadata=_spec(
        "retries", "retries", f"a whole number from 0 to {limits.MAX_RETRIES}", _retries,
        lambda done: 2))
    """Further attempts for a task whose execution environment crashed."""
    heartbeat: float = dataclasses.field(metadata=_spec(
        "heartbeat", "heartbeat",
        f'seconds (at least {limits.MIN_HEARTBEAT_S:g}) or a duration such as "1 minute"',
        _heartbeat, lambda done: 60))
    """Seconds between rewrites of this client's run marker."""
    stale_after: float = dataclasses.field(metadata=_spec(
        "stale-after", "stale_after",
        f'seconds or a duration such as "1 hour", at least {limits.STALE_HEARTBEATS} '
        "heartbeats", _stale_after, _stale_example))
    """Seconds after which a run whose marker was not rewritten belongs to a dead client,
    whose objects the next client deletes."""
    dashboard_address: str | None = dataclasses.field(metadata=_spec(
        "dashboard-address", "dashboard_address",
        'an address such as ":8787" or "127.0.0.1:0", or None for no dashboard',
        _dashboard_address, lambda done: ":0", nullable=True))
    """The scheduler dashboard's address. None: no dashboard (and no HTTP server)."""
    worker_saturation: float | None = dataclasses.field(metadata=_spec(
        "worker-saturation", None,
        "a number above 0 (inf: no queuing), or null for distributed.scheduler.worker-saturation",
        _worker_saturation, lambda done: 2.0, nullable=True))
    """Tasks the scheduler gives the gateway per function slot. None: distributed's setting."""
    batching: bool = dataclasses.field(metadata=_spec(
        "batching.enabled", "batching", "True or False", _boolean, lambda done: False))
    """Run chains and subtrees of short tasks in one invocation."""
    batching_max_tasks: int | None = dataclasses.field(metadata=_spec(
        "batching.max-tasks", None, "a whole number, at least 1", _max_tasks, lambda done: 64,
        applies=_batching_on))
    """Most tasks in one batched invocation (None when batching is off)."""
    batching_max_duration: float | None = dataclasses.field(metadata=_spec(
        "batching.max-duration", None,
        'seconds or a duration such as "30s", at most the function timeout; null: a tenth of it',
        _max_duration, lambda done: done["function_timeout"] / 10, nullable=True,
        applies=_batching_on))
    """Most estimated seconds of work in one batched invocation (None when batching is off)."""
    batching_overhead: float | None = dataclasses.field(metadata=_spec(
        "batching.overhead", None, 'seconds or a duration such as "100ms"', _overhead,
        lambda done: "100ms", applies=_batching_on))
    """Seconds one invocation costs beyond its work (None when batching is off)."""
    batching_unknown_duration: float | None = dataclasses.field(metadata=_spec(
        "batching.unknown-duration", None,
        'seconds or a duration such as "500ms"; null: distributed.scheduler.unknown-task-duration',
        _unknown_duration, lambda done: "500ms", nullable=True, applies=_batching_on))
    """Seconds assumed for a task not measured yet (None when batching is off)."""
    function: str = dataclasses.field(metadata=_spec(
        "aws.function", "function", "a Lambda function name or ARN", _function,
        lambda done: "dask-lambda"))
    """aws: the function ``dask-lambda deploy`` made."""
    region: str | None = dataclasses.field(metadata=_spec(
        "aws.region", "region", 'an AWS region such as "us-east-1", or None for boto\'s',
        _region, lambda done: "us-east-1", nullable=True))
    """aws: the function's and bucket's region. None: boto's (which must have one on aws)."""
    mode: str = dataclasses.field(metadata=_spec(
        "aws.mode", "mode", '"invoke" or "trigger"', _choice(MODES), lambda done: "invoke"))
    """aws: how jobs reach the function, one synchronous invoke each or an S3 notification."""
    signing_key: bytes | None = dataclasses.field(repr=False, metadata=_spec(
        "aws.signing-key", None,
        "the function's key as hex, or null to read ~/.config/dask-lambda/<function>.key",
        _signing_key, lambda done: None, nullable=True, secret=True))
    """aws: the key jobs and results are signed with. None: the key file deploy wrote."""
    notification_grace: float = dataclasses.field(metadata=_spec(
        "aws.notification-grace", None, 'seconds or a duration such as "2 minutes"', _grace,
        lambda done: 120))
    """aws, trigger mode: seconds an S3 notification may take to start the function."""
    invoker: str = dataclasses.field(metadata=_spec(
        "aws.invoker", None, '"auto", "direct" or "sdk"', _choice(INVOKERS),
        lambda done: "auto"))
    """aws: how invokes are sent (``"direct"``, ``"sdk"``, or ``"auto"``)."""
    local_python: str | None = dataclasses.field(metadata=_spec(
        "local.python", None, "an executable Python, or null for this one", _python,
        lambda done: None, nullable=True))
    """Local backend: the interpreter of the execution environments. None: this one."""

    @classmethod
    def from_arguments(cls, bucket: Any = NOT_GIVEN, **arguments: Any) -> Settings:
        """Every setting from ``arguments``, else ``dask.config``, else the packaged default.

        Parameters
        ----------
        bucket, **arguments
            Arguments of `LambdaClient` / `LambdaCluster` named in `arguments` (``timeout``
            is the deprecated spelling of ``function_timeout``). `NOT_GIVEN` (the default)
            reads the configuration.

        Raises
        ------
        ConfigurationError
            A value is not valid, or an argument or configuration key is not a setting.
        """
        arguments = {"bucket": bucket, **arguments}
        _check_names(arguments)
        deprecated = []
        for old, new in _ALIASES.items():
            if arguments.get(old) in (NOT_GIVEN, None):  # None: not given, as for the new name
                arguments.pop(old, None)
                continue
            if arguments.get(new) not in (NOT_GIVEN, None):
                raise ConfigurationError(
                    f"{old}= and {new}= are the same setting: give only "
                    f"LambdaClient(..., {new}={_py(arguments[new])})")
            value = arguments.pop(old)
            deprecated.append(
                f"LambdaClient/LambdaCluster({old}=...) is now spelled {new}=, so that "
                f"{old}= can keep its meaning in distributed (Client's connect timeout); "
                f"{old}= will stop being the function timeout in a future release: "
                f"LambdaClient(..., {new}={_py(value)})")
            arguments[new] = value
            arguments[f"_as_{new}"] = old  # for messages: the spelling the user wrote
        done: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            spec = field.metadata.get("spec")
            if spec is None:
                continue
            if not spec.applies(done):
                done[field.name] = None
                continue
            given = arguments.get(field.name, NOT_GIVEN) if spec.arg else NOT_GIVEN
            if given is None and not spec.nullable:
                given = NOT_GIVEN  # a None argument of a setting without "off": not given
            value = given if given is not NOT_GIVEN else _configured(spec)
            source = "argument" if given is not NOT_GIVEN else _source(spec, value)
            if (source != "argument" and isinstance(value, str) and spec.nullable
                    and value.strip().lower() in ("none", "null")):
                value = None
            ctx = _Context(done, from_argument=source == "argument")
            try:
                if value is None and not spec.nullable:
                    raise _Refused("it must be set (it has no null value)")
                parsed = spec.parse(value, ctx)
            except _Refused as exc:
                written = arguments.get(f"_as_{field.name}", spec.arg)
                raise _error(spec, value, source, exc, done, written) from None
            if spec.derived:
                done[field.name], done[spec.derived] = parsed
            else:
                done[field.name] = parsed
        for message in deprecated:  # after the checks: a refused value gets the error alone
            warnings.warn(message, FutureWarning, stacklevel=_user_stacklevel())
        return cls(**done)

    @classmethod
    def arguments(cls) -> tuple[str, ...]:
        """Names of the setting arguments of `LambdaClient` and `LambdaCluster`."""
        names = [f.metadata["spec"].arg for f in dataclasses.fields(cls)
                 if "spec" in f.metadata and f.metadata["spec"].arg]
        return (*names, *_ALIASES)

    @classmethod
    def keys(cls) -> dict[str, str]:
        """``{config key under lambda.: field name}`` for every setting."""
        return {f.metadata["spec"].key: f.name for f in dataclasses.fields(cls)
                if "spec" in f.metadata}

    @property
    def url(self) -> str:
        """``s3://bucket/prefix``."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def read(name: str, value: Any = NOT_GIVEN) -> Any:
    """One setting on its own (``value``, else its configured value), checked as far as it
    can be without the others: for tools that need one setting, not a client
    (``dask-lambda cleanup`` reads ``stale_after``)."""
    spec = dict(_specs())[name]
    given = NOT_GIVEN if value is None and not spec.nullable else value
    value = given if given is not NOT_GIVEN else _configured(spec)
    source = "argument" if given is not NOT_GIVEN else _source(spec, value)
    try:
        return spec.parse(value, _Context({}, from_argument=source == "argument"))
    except _Refused as exc:
        raise _error(spec, value, source, exc, {}, spec.arg) from None


def _specs() -> Iterator[tuple[str, _Spec]]:
    for field in dataclasses.fields(Settings):
        if "spec" in field.metadata:
            yield field.name, field.metadata["spec"]


_MISSING = object()


def _configured(spec: _Spec) -> Any:
    """The setting's value in dask.config (which holds the packaged defaults too)."""
    try:
        value = dask.config.get(f"lambda.{spec.key}", _MISSING)
    except (TypeError, AttributeError):  # e.g. lambda.batching set to a value, not a mapping
        value = _MISSING
    if value is _MISSING:
        value = _packaged_default(spec.key)
    return value


def _packaged_default(key: str) -> Any:
    node: Any = config.defaults()["lambda"]
    for part in key.split("."):
        node = node[part]
    return node


def _source(spec: _Spec, value: Any) -> str:
    """``"env"`` if the value is the one its environment variable gives, else ``"config"``."""
    raw = os.environ.get(spec.env)
    if raw is None:
        return "config"
    node: Any = dask.config.collect_env({spec.env: raw})
    for part in ["lambda", *spec.key.replace("-", "_").split(".")]:
        node = node.get(part, node.get(part.replace("_", "-"))) if isinstance(node, dict) else None
    return "env" if node == value else "config"


def _py(value: Any) -> str:
    """``value`` as Python source, strings in double quotes."""
    if isinstance(value, _Code):
        return str(value)
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _env_text(value: Any) -> str:
    return shlex.quote(value) if isinstance(value, str) else repr(value)


def _error(spec: _Spec, value: Any, source: str, refused: _Refused, done: Mapping[str, Any],
           written: str | None) -> ConfigurationError:
    """The one message builder: what was given, why it is refused, the setting's names and
    what it takes, and a corrected call that is valid."""
    shown = "<hidden>" if spec.secret and value is not None else _py(value)
    if source == "argument":
        given = f"{written}={shown}"
    elif source == "env":
        given = f"{spec.env}={'<hidden>' if spec.secret else os.environ[spec.env]}"
    else:
        given = f"lambda.{spec.key}={shown}"
    example = refused.example if refused.example is not NOT_GIVEN else spec.example(done)
    if spec.arg == "bucket":
        fix = f"LambdaClient({_py(example)}, ...)"
    elif spec.arg:
        fix = f"LambdaClient(..., {spec.arg}={_py(example)})"
    else:
        fix = f"dask.config.set({{{_py('lambda.' + spec.key)}: {_py(example)}}})"
    if source == "env":
        fix += f", or {spec.env}={_env_text(example)}"
    lead = refused.problem if refused.whole else f"{given} is not valid: {refused.problem}"
    advice = "did you mean" if refused.did_you_mean else "e.g."
    message = f"{lead}. Setting {spec.names} takes {spec.expects}; {advice} {fix}"
    if refused.did_you_mean:
        message += "?"
    return (SettingTypeError if refused.type_error else ConfigurationError)(message)


def _check_names(arguments: Mapping[str, Any]) -> None:
    """Refuse an argument or a ``lambda.*`` configuration key that is not a setting (a typo
    would otherwise be ignored), naming the closest one."""
    known = Settings.arguments()
    for name in arguments:
        if name not in known:
            near = difflib.get_close_matches(name, known, n=1)
            hint = f": did you mean {near[0]}=?" if near else \
                f"; the settings are {', '.join(known)}"
            raise SettingTypeError(f"{name}= is not a dask-lambda setting{hint}")
    keys = set(Settings.keys())
    for key in _config_keys(dask.config.get("lambda", {}), ""):
        if key not in keys:
            env = "DASK_LAMBDA__" + key.upper().replace("-", "_").replace(".", "__")
            near = difflib.get_close_matches(key, keys, n=1)
            hint = f"; did you mean lambda.{near[0]}?" if near else ""
            raise ConfigurationError(
                f"lambda.{key} (in the dask config, or {env}) is not a dask-lambda setting "
                f"(`dask-lambda config` lists them){hint}")


def _config_keys(node: Any, path: str) -> Iterator[str]:
    if not isinstance(node, Mapping):
        return
    for name, value in node.items():
        key = f"{path}{str(name).replace('_', '-')}"
        if key in ("batching", "aws", "local"):
            yield from _config_keys(value, key + ".")
        else:
            yield key


def _user_stacklevel() -> int:
    """The ``stacklevel`` of the first caller outside this package (for warnings)."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(here):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level
