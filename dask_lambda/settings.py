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

The parts: :mod:`.setting_values` (one parser per setting) made of :mod:`.setting_kinds`
(sizes, durations, numbers, choices), :mod:`.bucket_names` (S3 bucket URLs), and
:mod:`.setting_spec` (a setting's record, its sources, and the message that refuses a value).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import dask.config

from . import limits, setting_spec
from . import setting_values as v
from .backends.base import Backend
from .bucket_names import split_bucket
from .errors import ConfigurationError, SettingTypeError
from .setting_spec import spec as _spec
from .setting_values import NOT_GIVEN, Context, Refused, py_literal

__all__ = ["NOT_GIVEN", "Settings", "parse_bucket"]

_ALIASES = {"timeout": "function_timeout"}  # deprecated argument -> its new name


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
        return split_bucket(url)
    except Refused as exc:
        spec = dict(_specs())["bucket"]
        raise setting_spec.error(spec, url, "argument", exc, {}, "bucket") from None


# -- Settings --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Settings:
    """dask-lambda's settings, checked: build with `Settings.from_arguments`.

    Each field is one key of ``lambda-schema.yaml`` (``memory`` is ``lambda.memory``, set by
    ``LambdaClient(memory=...)``, ``dask.config.set({"lambda.memory": ...})`` or
    ``DASK_LAMBDA__MEMORY``), except ``prefix``, which comes with the bucket.
    """

    backend: str | Backend = dataclasses.field(metadata=_spec(
        "backend", "backend", '"local" or "aws", or a Backend instance', v.backend,
        lambda done: "local"))
    """``"local"`` (processes on this machine act as Lambda, with a private S3), ``"aws"``,
    or a `Backend` instance made without settings."""
    local_s3_endpoint: str | None = dataclasses.field(metadata=_spec(
        "local.s3-endpoint", "local_s3_endpoint", "an http:// URL, or None for a private server",
        v.s3_endpoint, lambda done: None, nullable=True))
    """Local backend: an S3 endpoint to use instead of starting a private moto server."""
    bucket: str = dataclasses.field(metadata=_spec(
        "bucket", "bucket", '"s3://bucket/prefix" or "bucket"', v.bucket,
        lambda done: "s3://my-bucket/dask", nullable=True, derived="prefix"))
    """The S3 bucket of job and result objects. None: on the local backend a private one
    (``dask-lambda-local-<random>``, or ``dask-lambda-local`` on a given endpoint)."""
    prefix: str = dataclasses.field(metadata={"from": "bucket"})
    """The key prefix inside the bucket (``"dask"`` in ``"s3://bucket/dask"``)."""
    memory: int = dataclasses.field(metadata=_spec(
        "memory", "memory", 'a number of MB or a size such as "4 GiB"', v.memory,
        lambda done: 2048))
    """MB of memory per function (execution environment): 128-10240."""
    function_timeout: float = dataclasses.field(metadata=_spec(
        "timeout", "function_timeout",
        f'seconds (at most {limits.MAX_TIMEOUT_S}) or a duration such as "5 minutes"',
        v.function_timeout, lambda done: 300))
    """Seconds a task may run in Lambda before it is stopped (the function timeout)."""
    concurrency: int = dataclasses.field(metadata=_spec(
        "concurrency", "concurrency", "a whole number of tasks running at once", v.concurrency,
        lambda done: min(8, v.concurrency_limit(done["backend"])[0]), nullable=True))
    """Most tasks running at once. None: 1000 on aws, the number of cores locally."""
    inline_max: int = dataclasses.field(metadata=_spec(
        "inline-max", "inline_max", 'bytes or a size such as "256 KiB"', v.inline_max,
        lambda done: "256 KiB"))
    """Jobs and outputs up to this many bytes travel inside the invoke request and response."""
    share_min: int | None = dataclasses.field(metadata=_spec(
        "share-min", "share_min", 'bytes or a size such as "16 KiB", or None to never share',
        v.share_min, lambda done: "16 KiB", nullable=True))
    """Values held here (literals in a graph, scattered data, small outputs) at least this
    large go to S3 once, and jobs carry a reference instead of a copy. None: never."""
    locality: bool = dataclasses.field(metadata=_spec(
        "locality", "locality", "True or False", v.boolean, lambda done: True))
    """Keep outputs in S3 between tasks (False downloads every output to the client)."""
    max_output: int | None = dataclasses.field(metadata=_spec(
        "max-output", "max_output", 'bytes or a size such as "1 GiB", or None for no limit',
        v.max_output, lambda done: "5 GiB", nullable=True))
    """Largest encoded output a task may return, bytes. None: no limit."""
    oom_retry_memory: int | None = dataclasses.field(metadata=_spec(
        "oom-retry-memory", "oom_retry_memory",
        "MB (or a size) above memory, or None for no retry", v.oom_retry_memory,
        lambda done: min(limits.MEMORY_MB[1], done["memory"] * 2)
        if done["memory"] < limits.MEMORY_MB[1] else None, nullable=True))
    """MB to retry a task killed for memory with, once (local backend). None: no retry."""
    cost_budget: float | None = dataclasses.field(metadata=_spec(
        "cost-budget", "cost_budget", "a positive number of dollars, or None for no budget",
        v.cost_budget, lambda done: 5.0, nullable=True))
    """Dollars this client may spend; dispatching stops before the estimate passes it."""
    retries: int = dataclasses.field(metadata=_spec(
        "retries", "retries", f"a whole number from 0 to {limits.MAX_RETRIES}", v.retries,
        lambda done: 2))
    """Further attempts for a task whose execution environment crashed."""
    heartbeat: float = dataclasses.field(metadata=_spec(
        "heartbeat", "heartbeat",
        f'seconds (at least {limits.MIN_HEARTBEAT_S:g}) or a duration such as "1 minute"',
        v.heartbeat, lambda done: 60))
    """Seconds between rewrites of this client's run marker."""
    stale_after: float = dataclasses.field(metadata=_spec(
        "stale-after", "stale_after",
        f'seconds or a duration such as "1 hour", at least {limits.STALE_HEARTBEATS} '
        "heartbeats", v.stale_after, v.stale_example))
    """Seconds after which a run whose marker was not rewritten belongs to a dead client,
    whose objects the next client deletes."""
    dashboard_address: str | None = dataclasses.field(metadata=_spec(
        "dashboard-address", "dashboard_address",
        'an address such as ":8787" or "127.0.0.1:0", or None for no dashboard',
        v.dashboard_address, lambda done: ":0", nullable=True))
    """The scheduler dashboard's address. None: no dashboard (and no HTTP server)."""
    worker_saturation: float | None = dataclasses.field(metadata=_spec(
        "worker-saturation", None,
        "a number above 0 (inf: no queuing), or null for distributed.scheduler.worker-saturation",
        v.worker_saturation, lambda done: 2.0, nullable=True))
    """Tasks the scheduler gives the gateway per function slot. None: distributed's setting."""
    batching: bool = dataclasses.field(metadata=_spec(
        "batching.enabled", "batching", "True or False", v.boolean, lambda done: False))
    """Run chains and subtrees of short tasks in one invocation."""
    batching_max_tasks: int | None = dataclasses.field(metadata=_spec(
        "batching.max-tasks", None, "a whole number, at least 1", v.max_tasks, lambda done: 64,
        applies=v.batching_on))
    """Most tasks in one batched invocation (None when batching is off)."""
    batching_max_duration: float | None = dataclasses.field(metadata=_spec(
        "batching.max-duration", None,
        'seconds or a duration such as "30s", at most the function timeout; null: a tenth of it',
        v.max_duration, lambda done: done["function_timeout"] / 10, nullable=True,
        applies=v.batching_on))
    """Most estimated seconds of work in one batched invocation (None when batching is off)."""
    batching_overhead: float | None = dataclasses.field(metadata=_spec(
        "batching.overhead", None, 'seconds or a duration such as "100ms"', v.overhead,
        lambda done: "100ms", applies=v.batching_on))
    """Seconds one invocation costs beyond its work (None when batching is off)."""
    batching_unknown_duration: float | None = dataclasses.field(metadata=_spec(
        "batching.unknown-duration", None,
        'seconds or a duration such as "500ms"; null: distributed.scheduler.unknown-task-duration',
        v.unknown_duration, lambda done: "500ms", nullable=True, applies=v.batching_on))
    """Seconds assumed for a task not measured yet (None when batching is off)."""
    function: str = dataclasses.field(metadata=_spec(
        "aws.function", "function", "a Lambda function name or ARN", v.function,
        lambda done: "dask-lambda"))
    """aws: the function ``dask-lambda deploy`` made."""
    region: str | None = dataclasses.field(metadata=_spec(
        "aws.region", "region", 'an AWS region such as "us-east-1", or None for boto\'s',
        v.region, lambda done: "us-east-1", nullable=True))
    """aws: the function's and bucket's region. None: boto's (which must have one on aws)."""
    mode: str = dataclasses.field(metadata=_spec(
        "aws.mode", "mode", '"invoke" or "trigger"', v.choice(v.MODES), lambda done: "invoke"))
    """aws: how jobs reach the function, one synchronous invoke each or an S3 notification."""
    signing_key: bytes | None = dataclasses.field(repr=False, metadata=_spec(
        "aws.signing-key", None,
        "the function's key as hex, or null to read ~/.config/dask-lambda/<function>.key",
        v.signing_key, lambda done: None, nullable=True, secret=True))
    """aws: the key jobs and results are signed with. None: the key file deploy wrote."""
    notification_grace: float = dataclasses.field(metadata=_spec(
        "aws.notification-grace", None, 'seconds or a duration such as "2 minutes"', v.grace,
        lambda done: 120))
    """aws, trigger mode: seconds an S3 notification may take to start the function."""
    invoker: str = dataclasses.field(metadata=_spec(
        "aws.invoker", None, '"auto", "direct" or "sdk"', v.choice(v.INVOKERS),
        lambda done: "auto"))
    """aws: how invokes are sent (``"direct"``, ``"sdk"``, or ``"auto"``)."""
    local_python: str | None = dataclasses.field(metadata=_spec(
        "local.python", None, "an executable Python, or null for this one", v.python,
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
        deprecated = _resolve_aliases(arguments)
        done: dict[str, Any] = {}
        for name, spec in _specs():  # in dependency order: each parser sees those before it
            if not spec.applies(done):
                done[name] = None
                continue
            parsed = _read_one(name, spec, arguments, done)
            if spec.derived:
                done[name], done[spec.derived] = parsed
            else:
                done[name] = parsed
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
    value = given if given is not NOT_GIVEN else setting_spec.configured(spec)
    source = "argument" if given is not NOT_GIVEN else setting_spec.source(spec, value)
    try:
        return spec.parse(value, Context({}, from_argument=source == "argument"))
    except Refused as exc:
        raise setting_spec.error(spec, value, source, exc, {}, spec.arg) from None


def _resolve_aliases(arguments: dict[str, Any]) -> list[str]:
    """Replace each deprecated argument in ``arguments`` by its new name (refusing both at
    once); returns the warnings to give once every setting is checked."""
    deprecated = []
    for old, new in _ALIASES.items():
        if arguments.get(old) in (NOT_GIVEN, None):  # None: not given, as for the new name
            arguments.pop(old, None)
            continue
        if arguments.get(new) not in (NOT_GIVEN, None):
            raise ConfigurationError(
                f"{old}= and {new}= are the same setting: give only "
                f"LambdaClient(..., {new}={py_literal(arguments[new])})")
        value = arguments.pop(old)
        deprecated.append(
            f"LambdaClient/LambdaCluster({old}=...) is now spelled {new}=, so that "
            f"{old}= can keep its meaning in distributed (Client's connect timeout); "
            f"{old}= will stop being the function timeout in a future release: "
            f"LambdaClient(..., {new}={py_literal(value)})")
        arguments[new] = value
        arguments[f"_as_{new}"] = old  # for messages: the spelling the user wrote
    return deprecated


def _read_one(name: str, spec: setting_spec.Spec, arguments: Mapping[str, Any],
              done: Mapping[str, Any]) -> Any:
    """One setting: its argument, else its configured value, parsed given the settings
    ``done`` before it; refused with the one message of `setting_spec.error`."""
    given = arguments.get(name, NOT_GIVEN) if spec.arg else NOT_GIVEN
    if given is None and not spec.nullable:
        given = NOT_GIVEN  # a None argument of a setting without "off": not given
    value = given if given is not NOT_GIVEN else setting_spec.configured(spec)
    source = "argument" if given is not NOT_GIVEN else setting_spec.source(spec, value)
    if (source != "argument" and isinstance(value, str) and spec.nullable
            and value.strip().lower() in ("none", "null")):
        value = None
    ctx = Context(done, from_argument=source == "argument")
    try:
        if value is None and not spec.nullable:
            raise Refused("it must be set (it has no null value)")
        return spec.parse(value, ctx)
    except Refused as exc:
        written = arguments.get(f"_as_{name}", spec.arg)
        raise setting_spec.error(spec, value, source, exc, done, written) from None


def _specs() -> Iterator[tuple[str, setting_spec.Spec]]:
    for field in dataclasses.fields(Settings):
        if "spec" in field.metadata:
            yield field.name, field.metadata["spec"]


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
