"""Settings: every key read and checked once, with a message that names it and a fix that works.

Most tests build `Settings` alone (no cluster); a few start a client through the shared
fixtures to show what a user sees.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import shlex
import subprocess
import sys
import tempfile
import warnings

import dask
import psutil
import pytest

from dask_lambda import LambdaClient, config, limits
from dask_lambda.backends.base import FunctionSettings
from dask_lambda.backends.simulated import SimulatedBackend
from dask_lambda.deployment import names
from dask_lambda.errors import ConfigurationError
from dask_lambda.settings import NOT_GIVEN, Settings, parse_bucket

from .conftest import s3_server

AWS = {"backend": "aws", "bucket": "s3://t-settings/p"}
SPECS = {f.name: f.metadata["spec"] for f in dataclasses.fields(Settings) if "spec" in f.metadata}
BY_KEY = {spec.key: (name, spec) for name, spec in SPECS.items()}

# (config key, bad value, base arguments). Every key of lambda-schema.yaml, each with values
# of the wrong type, unparseable text, zero, negative, huge or outside its choices, as fits.
BAD = [
    ("backend", "lcoal", {}), ("backend", 5, {}), ("backend", SimulatedBackend, {}),
    ("bucket", "s3://b/p", {}), ("bucket", "My_Bucket", {}), ("bucket", "gs://x/y", {}),
    ("bucket", 42, {}), ("bucket", "s3://1.2.3.4/x", {}), ("bucket", "s3://", {}),
    ("bucket", "xn--abc", {}), ("bucket", "a" * 70, {}), ("bucket", None, {"backend": "aws"}),
    ("memory", 64, {}), ("memory", 0, {}), ("memory", -1, {}), ("memory", 10**9, {}),
    ("memory", "abc", {}), ("memory", "4 PiB", {}), ("memory", 2048.5, {}),
    ("memory", True, {}), ("memory", [2048], {}),
    ("timeout", 0, {}), ("timeout", -5, {}), ("timeout", 901, {}), ("timeout", "abc", {}),
    ("timeout", "1 fortnight", {}), ("timeout", float("nan"), {}),
    ("timeout", float("inf"), {}), ("timeout", True, {}),
    ("concurrency", 0, {}), ("concurrency", -1, {}), ("concurrency", 10**9, {}),
    ("concurrency", 10**9, AWS), ("concurrency", "abc", {}), ("concurrency", 2.5, {}),
    ("concurrency", True, {}),
    ("inline-max", -1, {}), ("inline-max", "abc", {}), ("inline-max", "1 GiB", {}),
    ("inline-max", limits.MAX_INLINE_BYTES + 1, {}), ("inline-max", 1.5, {}),
    ("locality", "yes", {}), ("locality", 2, {}),
    ("max-output", 0, {}), ("max-output", -1, {}), ("max-output", "abc", {}),
    ("max-output", "10 TiB", {}),
    ("oom-retry-memory", 1024, {}), ("oom-retry-memory", 2048, {}),
    ("oom-retry-memory", 20000, {}), ("oom-retry-memory", "abc", {}),
    ("oom-retry-memory", 4096, {"memory": 10240}),
    ("cost-budget", 0, {}), ("cost-budget", -1, {}), ("cost-budget", "abc", {}),
    ("cost-budget", float("nan"), {}), ("cost-budget", float("inf"), {}),
    ("retries", -1, {}), ("retries", 11, {}), ("retries", "abc", {}), ("retries", 1.5, {}),
    ("retries", 10**9, {}),
    ("heartbeat", 0, {}), ("heartbeat", 0.5, {}), ("heartbeat", -1, {}),
    ("heartbeat", "abc", {}), ("heartbeat", float("inf"), {}),
    ("stale-after", 0, {}), ("stale-after", -1, {}), ("stale-after", "abc", {}),
    ("stale-after", 100, {}), ("stale-after", 20, {"heartbeat": 10}),
    ("dashboard-address", "abc", {}), ("dashboard-address", ":99999", {}),
    ("dashboard-address", "a b:80", {}), ("dashboard-address", 70000, {}),
    ("dashboard-address", 1.5, {}),
    ("worker-saturation", 0, {}), ("worker-saturation", -1, {}),
    ("worker-saturation", "abc", {}), ("worker-saturation", float("nan"), {}),
    ("batching.enabled", "no", {}), ("batching.enabled", 1, {}),
    ("batching.max-tasks", 0, {}), ("batching.max-tasks", -1, {}),
    ("batching.max-tasks", "abc", {}), ("batching.max-tasks", 1.5, {}),
    ("batching.max-duration", 0, {}), ("batching.max-duration", -1, {}),
    ("batching.max-duration", "abc", {}), ("batching.max-duration", 10**6, {}),
    ("batching.overhead", -1, {}), ("batching.overhead", "soon", {}),
    ("batching.unknown-duration", -1, {}), ("batching.unknown-duration", "abc", {}),
    ("aws.function", "bad name!", AWS), ("aws.function", "", AWS), ("aws.function", 5, AWS),
    ("aws.function", "x" * 65, AWS),
    ("aws.region", "mars", AWS), ("aws.region", 5, AWS), ("aws.region", "US-EAST-1", AWS),
    ("aws.mode", "trigga", AWS), ("aws.mode", 5, AWS),
    ("aws.signing-key", "zz" * 20, AWS), ("aws.signing-key", "abcd", AWS),
    ("aws.signing-key", 5, AWS),
    ("aws.notification-grace", 0, AWS), ("aws.notification-grace", -1, AWS),
    ("aws.notification-grace", "abc", AWS),
    ("aws.invoker", "fast", AWS), ("aws.invoker", 5, AWS),
    ("local.s3-endpoint", "ftp://x", {}), ("local.s3-endpoint", "abc", {}),
    ("local.s3-endpoint", "http://", {}), ("local.s3-endpoint", 5, {}),
    ("local.s3-endpoint", "http://host:notaport", {}),
    ("local.python", "/no/such/python", {}), ("local.python", 5, {}),
]


@pytest.fixture(autouse=True)
def aws_region(monkeypatch):
    """boto finds a region (the aws backend needs one), and no DASK_LAMBDA__ variable leaks in."""
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in list(os.environ):
        if name.startswith("DASK_LAMBDA__"):
            monkeypatch.delenv(name)


def _build(bucket=NOT_GIVEN, **arguments):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return Settings.from_arguments(bucket, **arguments)


def _corrected_call(message: str) -> tuple[str, object]:
    """The fix a message shows: ``("call", (positional, keywords))`` for ``LambdaClient(...)``,
    ``("config", {...})`` for ``dask.config.set({...})``."""
    marker = max(message.rfind("e.g. "), message.rfind("did you mean "))
    assert marker >= 0, message
    text = message[marker:].split(" ", 1 if message[marker] == "e" else 3)[-1]
    prefix = "dask.config.set(" if text.startswith("dask.config.set(") else "LambdaClient("
    assert text.startswith(prefix), message
    for end in range(len(prefix), len(text) + 1):  # the shortest text that parses as the call
        if text[end - 1] != ")":
            continue
        try:
            call = ast.parse(text[:end], mode="eval").body
        except SyntaxError:
            continue
        assert isinstance(call, ast.Call)
        if prefix.startswith("dask"):
            return "config", ast.literal_eval(call.args[0])
        namespace = {"SimulatedBackend": SimulatedBackend}
        positional = [eval(compile(ast.Expression(a), "fix", "eval"), namespace)  # noqa: S307
                      for a in call.args if not (isinstance(a, ast.Constant) and a.value is ...)]
        keywords = {k.arg: eval(compile(ast.Expression(k.value), "fix", "eval"),  # noqa: S307
                                namespace) for k in call.keywords}
        return "call", (positional, keywords)
    raise AssertionError(f"no corrected call in {message!r}")


@pytest.mark.parametrize(("key", "bad", "base"), BAD,
                         ids=[f"{k}={b!r}"[:40] for k, b, _ in BAD])
def test_every_setting_refuses_bad_values_naming_it_with_a_valid_fix(key, bad, base):
    name, spec = BY_KEY[key]
    arguments = dict(base)
    if spec.arg:
        arguments[spec.arg] = bad
        configured: dict = {}
    else:
        configured = {f"lambda.{key}": bad}
    bucket = arguments.pop("bucket", NOT_GIVEN)
    with dask.config.set(configured), pytest.raises(ConfigurationError) as info:
        _build(bucket, **arguments)
    message = str(info.value)
    # It names the setting: argument, config key and environment variable.
    assert f"lambda.{key}" in message and spec.env in message, message
    if spec.arg and spec.arg != "bucket":
        assert f"`{spec.arg}=`" in message, message
    if spec.secret and isinstance(bad, str):
        assert bad not in message  # a key, even a wrong one, is never shown
    # The corrected call it shows is valid: apply it to the same call and config.
    kind, fix = _corrected_call(message)
    with dask.config.set(configured):
        if kind == "config":
            with dask.config.set(fix):
                settings = _build(bucket, **arguments)
        else:
            positional, keywords = fix
            fixed = {k: v for k, v in arguments.items() if k != spec.arg}
            settings = _build(*(positional or [bucket]), **{**fixed, **keywords})
    assert isinstance(settings, Settings)


@pytest.mark.parametrize(("env", "raw", "names"), [
    ("DASK_LAMBDA__TIMEOUT", "abc", "`function_timeout=` (lambda.timeout"),
    ("DASK_LAMBDA__STALE_AFTER", "abc", "`stale_after=` (lambda.stale-after"),
    ("DASK_LAMBDA__MEMORY", "8", "`memory=` (lambda.memory"),
    ("DASK_LAMBDA__LOCALITY", "maybe", "`locality=` (lambda.locality"),
    ("DASK_LAMBDA__AWS__INVOKER", "fast", "lambda.aws.invoker (DASK_LAMBDA__AWS__INVOKER)"),
])
def test_environment_variables_are_named_with_their_own_spelling(monkeypatch, env, raw, names):
    def from_env(value: str) -> dict:
        monkeypatch.setenv(env, value)
        return dask.config.collect_env({env: value})  # as dask reads it at import

    with dask.config.set(from_env(raw)), pytest.raises(ConfigurationError) as info:
        _build()
    message = str(info.value)
    assert message.startswith(f"{env}={raw} is not valid: "), message
    assert names in message
    fixed_env = message.rsplit(f", or {env}=", 1)[1]  # "..., or DASK_LAMBDA__TIMEOUT=300"
    with dask.config.set(from_env(shlex.split(fixed_env)[0])):
        assert isinstance(_build(), Settings)


def test_a_bad_environment_variable_stops_a_real_client_before_it_starts(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_LAMBDA__")}
    env.update(DASK_LAMBDA__TIMEOUT="abc")
    out = subprocess.run([sys.executable, "-c", "from dask_lambda import LambdaClient\n"
                          "LambdaClient()"], env=env, capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 1
    assert ("dask_lambda.errors.ConfigurationError: DASK_LAMBDA__TIMEOUT=abc is not valid: 'abc' "
            "is not a duration. Setting `function_timeout=` (lambda.timeout, "
            "DASK_LAMBDA__TIMEOUT) takes seconds (at most 900) or a duration such as \"5 "
            "minutes\"; e.g. LambdaClient(..., function_timeout=300), or "
            "DASK_LAMBDA__TIMEOUT=300") in out.stderr


def test_a_misspelt_key_or_argument_is_refused_with_the_closest_name(monkeypatch):
    with dask.config.set({"lambda.memroy": 4096}), pytest.raises(ConfigurationError) as info:
        _build()
    assert str(info.value) == (
        "lambda.memroy (in the dask config, or DASK_LAMBDA__MEMROY) is not a dask-lambda "
        "setting (`dask-lambda config` lists them); did you mean lambda.memory?")
    children = psutil.Process().children(recursive=True)
    with pytest.raises(TypeError, match=r"^LambdaClient got memroy=, which is neither a "
                                        r"dask-lambda setting nor a distributed\.Client "
                                        r"argument: did you mean memory=\?$"):
        LambdaClient(memroy=4096)
    assert psutil.Process().children(recursive=True) == children


def test_sizes_and_durations_are_dask_strings_everywhere(monkeypatch):
    s = _build(memory="4 GiB", inline_max="256 KiB", max_output="1 GiB",
               function_timeout="5 minutes", heartbeat="30s", stale_after="2 hours",
               oom_retry_memory="8 GiB")
    assert (s.memory, s.inline_max, s.max_output) == (4096, 262144, 2**30)
    assert (s.function_timeout, s.heartbeat, s.stale_after) == (300, 30, 7200)
    assert s.oom_retry_memory == 8192
    assert s.batching_max_duration == 30  # a tenth of the function timeout
    with dask.config.set({"lambda.memory": "3 GiB", "lambda.timeout": "90s",
                          "lambda.batching.max-duration": "10s"}):
        s = _build()
    assert (s.memory, s.function_timeout, s.batching_max_duration) == (3072, 90, 10)
    monkeypatch.setenv("DASK_LAMBDA__MEMORY", "1 GiB")
    with dask.config.set(dask.config.collect_env({"DASK_LAMBDA__MEMORY": "1 GiB"})):
        assert _build().memory == 1024
    assert _build(memory="4 GB").memory == 3815  # decimal units: rounded to whole MiB
    with pytest.raises(ConfigurationError, match=r"^memory=\"8 MiB\" is not valid: 8 MB is "
                                                 r"outside Lambda's 128-10240 MB\..*e\.g\. "
                                                 r"LambdaClient\(\.\.\., memory=128\)$"):
        _build(memory="8 MiB")


def test_none_turns_off_what_has_an_off_even_when_configured():
    configured = {"lambda.cost-budget": 5, "lambda.max-output": "1 GiB",
                  "lambda.oom-retry-memory": 4096, "lambda.dashboard-address": ":8787",
                  "lambda.memory": 1024}
    with dask.config.set(configured):
        on = _build()
        off = _build(cost_budget=None, max_output=None, oom_retry_memory=None,
                     dashboard_address=None, memory=None)
    assert (on.cost_budget, on.max_output, on.oom_retry_memory, on.dashboard_address) == \
        (5.0, 2**30, 4096, ":8787")
    assert (off.cost_budget, off.max_output, off.oom_retry_memory, off.dashboard_address) == \
        (None, None, None, None)
    assert off.memory == 1024  # memory has no "off": None means "not given"


def test_timeout_is_now_function_timeout_with_a_warning_that_shows_it():
    with pytest.warns(FutureWarning) as caught:
        s = Settings.from_arguments(timeout=30)
    assert s.function_timeout == 30
    [warning] = caught
    assert warning.filename == __file__  # it points at the caller's line
    assert str(warning.message).endswith(
        "will stop being the function timeout in a future release: "
        "LambdaClient(..., function_timeout=30)")
    with pytest.raises(ConfigurationError, match=r"^timeout= and function_timeout= are the same "
                                                 r"setting: give only LambdaClient\(\.\.\., "
                                                 r"function_timeout=60\)$"):
        Settings.from_arguments(timeout=30, function_timeout=60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new spelling does not warn
        assert Settings.from_arguments(function_timeout="1 minute").function_timeout == 60


def test_checks_run_in_dependency_order():
    # A zero timeout is the timeout's fault, not batching's (whose default is a tenth of it).
    with pytest.raises(ConfigurationError) as info:
        _build(function_timeout=0)
    assert str(info.value).startswith("function_timeout=0 is not valid: 0 s is outside "
                                      "Lambda's (0, 900] seconds.")
    assert "batching" not in str(info.value)
    # stale-after is checked against this client's heartbeat, which comes first.
    with pytest.raises(ConfigurationError) as info:
        _build(heartbeat=10, stale_after=20)
    assert str(info.value).startswith(
        "stale_after=20 is not valid: 20 s is less than 3 heartbeats (3 x 10 s): a live "
        "client's run would be taken for a dead one and its objects deleted.")
    assert str(info.value).endswith("e.g. LambdaClient(..., stale_after=3600)")
    assert _build(heartbeat=1, stale_after=3).stale_after == 3
    # batching's own keys are not read when batching is off.
    with dask.config.set({"lambda.batching.max-tasks": 0}):
        assert _build(batching=False).batching_max_tasks is None


def test_concurrency_is_bounded_by_what_runs_it():
    cores = os.cpu_count() or 1
    bound = min(cores * limits.LOCAL_SLOTS_PER_CORE,
                psutil.virtual_memory().total // 2**20 // limits.LOCAL_SLOT_MB)
    with pytest.raises(ConfigurationError) as info:
        _build(concurrency=10**9)
    assert (f"concurrency=1000000000 is not valid: the local backend runs one Python "
            f"interpreter per slot, and this machine ({cores} cores, ") in str(info.value)
    assert str(info.value).endswith(f"e.g. LambdaClient(..., concurrency={bound})")
    assert _build(concurrency=bound).concurrency == bound
    assert _build().concurrency == min(cores, bound)
    with pytest.raises(ConfigurationError, match=r"at most 10,000 per client"):
        _build("s3://t-settings", backend="aws", concurrency=10**9)
    assert _build("s3://t-settings", backend="aws").concurrency == 1000
    assert _build(backend=SimulatedBackend(), concurrency=5000).concurrency == 5000


def test_the_bucket_hint_suggests_a_valid_name():
    for url, suggested in [("s3://b/p", "s3://b-bucket/p"), ("s3://My_Bucket/data",
                                                            "s3://my-bucket/data"),
                           ("s3://1.2.3.4", "s3://bucket-1-2-3-4"), ("x", "s3://x-bucket")]:
        with pytest.raises(ConfigurationError) as info:
            parse_bucket(url)
        assert f'did you mean LambdaClient("{suggested}", ...)?' in str(info.value)
        assert parse_bucket(suggested)  # valid
    with pytest.raises(ConfigurationError) as info:
        _build(backend="aws")
    assert str(info.value).startswith('backend="aws" needs an S3 bucket for job and result '
                                      "objects (only the local backend makes a private one). "
                                      "Setting the bucket (the first argument; lambda.bucket, "
                                      "DASK_LAMBDA__BUCKET)")
    local = _build()
    assert local.bucket.startswith("dask-lambda-local-") and local.prefix == ""
    assert _build().bucket != local.bucket  # private to each client
    assert _build(local_s3_endpoint="http://127.0.0.1:1").bucket == "dask-lambda-local"


def test_schema_defaults_and_settings_agree():
    def flat(node: dict, path: str = "") -> dict:
        out = {}
        for key, spec in node["properties"].items():
            if spec.get("type") == "object":
                out.update(flat(spec, f"{path}{key}."))
            else:
                out[f"{path}{key}"] = spec
        return out

    schema = flat(config.schema()["properties"]["lambda"])
    assert set(schema) == set(Settings.keys())
    def keys(node: dict, path: str = "") -> set[str]:
        return {k for name, value in node.items() for k in (
            keys(value, f"{path}{name}.") if isinstance(value, dict) else {f"{path}{name}"})}

    assert keys(config.defaults()["lambda"]) == set(Settings.keys())
    assert [f.name for f in dataclasses.fields(Settings) if f.name not in SPECS] == ["prefix"]
    # Lambda's limits have one owner; the schema, deploy and Settings say the same.
    assert (schema["memory"]["minimum"], schema["memory"]["maximum"]) == limits.MEMORY_MB
    assert schema["timeout"]["maximum"] == limits.MAX_TIMEOUT_S == names.MAX_TIMEOUT
    assert names.MEMORY_RANGE is limits.MEMORY_MB
    assert schema["inline-max"]["maximum"] == limits.MAX_INLINE_BYTES
    assert schema["max-output"]["maximum"] == limits.MAX_OBJECT_BYTES
    assert schema["retries"]["maximum"] == limits.MAX_RETRIES
    assert schema["concurrency"]["maximum"] == limits.MAX_AWS_CONCURRENCY
    assert schema["heartbeat"]["minimum"] == limits.MIN_HEARTBEAT_S
    # An inline job or output, base64 in JSON, fits Lambda's synchronous payload.
    assert 4 * -(-limits.MAX_INLINE_BYTES // 3) + limits.PAYLOAD_ENVELOPE_BYTES \
        <= limits.SYNC_PAYLOAD_BYTES
    from dask_lambda_handler.capture import LOG_LIMIT

    assert 6 * LOG_LIMIT < limits.PAYLOAD_ENVELOPE_BYTES  # the log, each byte JSON-escaped


def test_no_dashboard_means_no_http_server(client):
    assert client.cluster.config.dashboard_address is None  # conftest's dashboard_address=None
    assert not client.dashboard_link
    assert not hasattr(client.cluster.scheduler, "http_server")
    assert "dashboard" not in client.scheduler_info()["services"]


def test_a_client_needs_no_bucket_on_the_local_backend():
    with LambdaClient(concurrency=1) as client:  # the default dashboard address: one starts
        assert client.cluster.bucket.startswith("dask-lambda-local-")
        assert client.submit(sum, [1, 2]).result() == 3
        assert client.dashboard_link.startswith("http://")


def _leftovers() -> tuple[list[str], set[int]]:
    here = tempfile.gettempdir()
    return (sorted(n for n in os.listdir(here) if n.startswith("dask-lambda-")),
            {p.pid for p in psutil.Process().children(recursive=True)})


def test_a_refused_start_leaves_no_directory_and_no_process(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # count only this test's dirs
    before = _leftovers()
    assert before[0] == []
    with dask.config.set({"lambda.worker-saturation": 0}), pytest.raises(ConfigurationError):
        LambdaClient()  # refused by Settings (it used to leave the gateway's directory)
    assert _leftovers() == before
    used = SimulatedBackend(settings=FunctionSettings(concurrency=1, memory=1024, timeout=60,
                                                      signing_key=b"k" * 32))
    with pytest.raises(ConfigurationError, match="already has its settings"):
        LambdaClient(backend=used)  # refused by the cluster, before it makes anything
    assert _leftovers() == before
    # Refused once processes exist: the S3 bucket is not this client's.
    with s3_server({"rules": [{"status": 403, "bucket": "t-refused"}]}) as endpoint:
        server = _leftovers()
        with pytest.raises(ConfigurationError, match="no access to S3 bucket 't-refused'"):
            LambdaClient("s3://t-refused", local_s3_endpoint=endpoint, dashboard_address=None)
        assert _leftovers() == server
    assert _leftovers() == before


def test_one_setting_can_be_read_alone_for_tools():
    from dask_lambda import settings

    assert settings.read("stale_after") == 3600  # the packaged "1 hour"
    with dask.config.set({"lambda.stale-after": "2 hours"}):
        assert settings.read("stale_after") == 7200
    with dask.config.set({"lambda.stale-after": "abc"}), pytest.raises(ConfigurationError) as info:
        settings.read("stale_after")
    assert str(info.value).startswith('lambda.stale-after="abc" is not valid: \'abc\' is not a '
                                      "duration. Setting `stale_after=` (lambda.stale-after, "
                                      "DASK_LAMBDA__STALE_AFTER)")
