"""The aws backend end to end, against a real Lambda Invoke API and S3 API served locally.

ministack runs the function that ``dask-lambda deploy`` (the project's own code) built
and deployed: the handler and this environment's libraries, in ministack's own
interpreter, in other processes, under the role deploy made (ministack enforces IAM).
Jobs reach it by synchronous invokes (``mode="invoke"``) or by S3 ObjectCreated
notifications (``mode="trigger"``). The Dask workloads run through both modes in
tests/test_workloads.py, on the same deployment (tests/conftest.py's ``aws``). Deploy
runs as an IAM user with exactly the deployer's documented permissions, and the clients as
one with exactly a user's.
"""

from __future__ import annotations

import os
import socket
import time
import zipfile
from pathlib import Path

import dask
import numpy as np
import pytest

from dask_lambda import LambdaClient
from dask_lambda.deploy import Target, deploy
from dask_lambda.deployment import names, states
from dask_lambda.errors import (
    ConfigurationError,
    LambdaTimeoutError,
    VersionMismatchError,
)

from .aws_fixtures import (
    E2E_BUCKET,
    LOCAL_GLIBC,
    LambdaFake,
    boto,
    environment,
)

BUCKET = E2E_BUCKET
LONG_TASK_S = 65  # longer than boto's default 60 s read timeout


@pytest.fixture(scope="module", autouse=True)
def _as_the_user(aws):
    """The module's tests run with a user's credentials (``aws["deployer"]``: the deployer's)."""
    with environment(aws["env"]):
        yield


def _client(mode: str, prefix: str = "run", function: str = "dl-e2e", **options):
    return LambdaClient(f"s3://{BUCKET}/{prefix}", backend="aws", function=function,
                        mode=mode, concurrency=2, dashboard_address=None, **options)


@pytest.fixture(scope="module")
def long_task(aws, tmp_path_factory):
    """A task longer than boto's default read timeout, started on an invoke-mode client.

    It runs while the other tests do; `test_long_task_is_invoked_once` checks it at the end.
    """
    marker = tmp_path_factory.mktemp("long") / "runs.txt"

    def sleepy(path: str, seconds: float) -> int:
        with open(path, "a") as f:
            f.write("started\n")
        time.sleep(seconds)
        with open(path) as f:
            return len(f.readlines())

    with _client("invoke") as client:
        future = client.submit(sleepy, str(marker), LONG_TASK_S, pure=False)
        yield {"future": future, "marker": marker, "started": time.monotonic()}


@pytest.fixture(scope="module", params=["invoke", "trigger"])
def client(request, aws, long_task):
    # opened after (and closed before) the long task's client: clients must close in reverse
    # order of opening, or the dask settings they switch are not restored
    with _client(request.param) as c:
        yield c


def test_task_error_reaches_the_client(client):
    def failing(x):
        raise ValueError(f"x is too big: {x}")

    with pytest.raises(ValueError, match="x is too big: 3"):
        client.submit(failing, 3).result()
    assert client.submit(lambda: 42).result() == 42  # the function still works after it


def test_closing_the_client_removes_its_objects(aws):
    with _client("trigger") as c:
        run = c.cluster.layout.run
        assert c.submit(np.ones, 100_000).result().sum() == 100_000  # an output in S3
    with environment(aws["env"]):
        keys = [o["Key"] for o in boto("s3").list_objects_v2(
            Bucket=BUCKET, Prefix="run/").get("Contents", [])]
    assert [k for k in keys if run in k] == []
    assert "run/deploy/dl-e2e.zip" in keys


def test_cost_is_priced_at_the_deployed_functions_memory(aws):
    # the client's memory setting is not what Lambda bills: the deployed function's 2048 MB is
    with _client("invoke", memory=512) as c:
        assert c.submit(lambda: 1).result() == 1
        report = c.cost_report()
    assert report["memory_mb"] == 2048 and report["arch"] == "x86_64"
    assert report["invocations"] >= 1
    assert report["gb_seconds"] == pytest.approx(report["billed_ms"] / 1000 * 2048 / 1024)


def test_duplicate_notification_runs_the_task_once(aws, tmp_path):
    """S3 may deliver a notification twice (and Lambda retries async invokes): the job's claim
    makes the second delivery a no-op, so the task neither runs again nor replaces its output."""
    marker, release = tmp_path / "runs.txt", tmp_path / "release"

    def count_runs(path: str, release: str) -> int:
        with open(path, "a") as f:
            f.write("run\n")
        deadline = time.monotonic() + 120
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.05)  # still running while the second delivery comes
        with open(path) as f:
            return len(f.readlines())

    with _client("trigger") as c, environment(aws["env"]):
        s3, logs = boto("s3"), boto("logs")
        future = c.submit(count_runs, str(marker), str(release), pure=False)
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert time.monotonic() < deadline, "the task never started"
            time.sleep(0.05)
        jobs = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="run/jobs/")
                .get("Contents", []) if o["Key"].endswith(names.TRIGGER_SUFFIX)]
        assert len(jobs) == 1
        meta = s3.head_object(Bucket=BUCKET, Key=jobs[0])["Metadata"]
        s3.copy_object(Bucket=BUCKET, Key=jobs[0], CopySource={"Bucket": BUCKET, "Key": jobs[0]},
                       MetadataDirective="REPLACE", Metadata=meta)  # a second ObjectCreated
        deadline, skipped = time.monotonic() + 90, []
        while not skipped and marker.read_text() == "run\n" and time.monotonic() < deadline:
            skipped = [e["message"] for e in logs.filter_log_events(
                logGroupName=names.log_group("dl-e2e"), filterPattern="duplicate")["events"]
                if f"skipped s3 key {jobs[0]}: duplicate delivery" in e["message"]]
            time.sleep(0.2)
        release.write_text("go")
        assert marker.read_text() == "run\n", "the second delivery ran the task again"
        assert skipped, "the second delivery never reached the function"
        assert future.result() == 1


def test_trigger_mode_without_the_notification_says_how_to_set_it_up(aws):
    with pytest.raises(ConfigurationError) as info:
        _client("trigger", prefix="elsewhere")
    message = str(info.value)
    assert "mode=\"trigger\" needs an S3 notification from s3://dl-e2e/elsewhere/jobs/" in message
    assert "`dask-lambda deploy --bucket s3://dl-e2e/elsewhere --function dl-e2e --trigger`" \
        in message


def test_timeout_is_a_clear_error(aws):
    with environment(aws["deployer"]):
        deploy(Target(BUCKET, "short", "dl-short", "us-east-1"), timeout=5, memory=1024,
               glibc=LOCAL_GLIBC, out=lambda line: None)
    with _client("invoke", prefix="short", function="dl-short") as c:
        assert c.submit(lambda: 1).result() == 1  # warm: the cold start is not in the way
        with pytest.raises(LambdaTimeoutError) as info:
            c.submit(time.sleep, 30, key="sleepy").result()
    message = str(info.value)
    assert message.startswith("task 'sleepy': Task timed out after 5.00 seconds")
    assert "`dask-lambda deploy --bucket s3://dl-e2e/short --function dl-short --timeout 10`" \
        in message


def test_throttled_invokes_are_retried(aws):
    with environment(aws["env"]):
        boto("lambda").put_function_concurrency(FunctionName="dl-short",
                                                ReservedConcurrentExecutions=1)
    try:
        with _client("invoke", prefix="short", function="dl-short") as c:
            futures = c.map(lambda i: (time.sleep(0.5), i)[1], range(4), pure=False)
            assert c.gather(futures) == [0, 1, 2, 3]
            assert c.lambda_stats()["throttled"] >= 1
    finally:
        with environment(aws["env"]):
            boto("lambda").delete_function_concurrency(FunctionName="dl-short")


@pytest.mark.parametrize("invoker", ["auto", "sdk"])
def test_direct_and_sdk_invokers_give_the_same_results(aws, invoker):
    """auto sends invokes with dask-lambda's own client (no proxy here); sdk with aiobotocore."""
    with dask.config.set({"lambda.aws.invoker": invoker}), _client("invoke") as c:
        used = c.cluster.backend.invoker
        assert (used.direct is not None) == (invoker == "auto")
        assert (used.sdk is not None) == (invoker == "sdk")
        assert c.gather(c.map(lambda i: i * i, range(5))) == [0, 1, 4, 9, 16]
        with pytest.raises(ZeroDivisionError):
            c.submit(lambda: 1 / 0).result()
        assert c.lambda_stats()["invocations"] == 6


def test_version_mismatch_names_the_fix(aws, tmp_path):
    """A function whose handler reports other versions is refused on start."""
    import dask_lambda_handler

    zpath = tmp_path / "old.zip"
    source = Path(dask_lambda_handler.__file__).parent
    with zipfile.ZipFile(zpath, "w") as zf:
        for path in source.glob("*.py"):
            zf.write(path, f"dask_lambda_handler/{path.name}")
        zf.writestr("dask_lambda-0.0.1.dist-info/METADATA",
                    "Metadata-Version: 2.1\nName: dask-lambda\nVersion: 0.0.1\n")
    with environment(aws["deployer"]):
        _deploy_unchecked("dl-old", "old", zpath)
    with pytest.raises(VersionMismatchError) as info:
        _client("invoke", prefix="old", function="dl-old")
    message = str(info.value)
    assert "the Lambda function 'dl-old' does not match this environment" in message
    assert "dask-lambda 0.0.1 there, 0.1.0 here" in message
    assert message.endswith("Redeploy it from this environment: "
                            "`dask-lambda deploy --bucket s3://dl-e2e/old --function dl-old`")


def _deploy_unchecked(function: str, prefix: str, package: Path) -> None:
    """Deploy ``package`` with deploy's own code; its final version check is expected to fail."""
    with pytest.raises(VersionMismatchError, match="does not match this environment"):
        deploy(Target(BUCKET, prefix, function, "us-east-1"), package=package,
               out=lambda line: None)


def test_an_inactive_function_is_woken_by_the_client(aws, monkeypatch):
    """A function idle for weeks is Inactive; the first invoke fails and wakes it (Lambda
    function states). The client wakes it and waits, instead of advising a redeploy."""
    monkeypatch.setattr(states, "_POLL", 0.2)
    with LambdaFake(aws["endpoint"]) as fake, environment({"AWS_ENDPOINT_URL_LAMBDA": fake.url}):
        fake.inactive("dl-e2e")
        with _client("invoke") as c:
            assert c.submit(lambda: 7).result() == 7
    assert fake.refused == {("Invoke", "dl-e2e"): 1}


def test_the_client_checks_the_buckets_region(aws):
    """botocore's region redirector follows a bucket into its region, so HeadBucket
    succeeds: the answer's BucketRegion shows the bucket is elsewhere."""
    boto("s3").create_bucket(Bucket="dl-far-e2e",
                             CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    with pytest.raises(ConfigurationError) as info:
        LambdaClient("s3://dl-far-e2e/run", backend="aws", function="dl-e2e",
                     dashboard_address=None)
    assert str(info.value) == (
        "S3 bucket 'dl-far-e2e' is in region 'eu-west-1', not 'us-east-1': "
        "LambdaClient(\"s3://dl-far-e2e\", region=\"eu-west-1\") or AWS_DEFAULT_REGION=eu-west-1")


def test_the_signing_key_is_not_in_the_functions_configuration(aws):
    """A user may read the configuration (the version check needs it): the key is not in it,
    and the user may not read the secret that holds it; the function's role may."""
    key = (Path(aws["home"]) / "config" / "dask-lambda" / "dl-e2e.key").read_text().strip()
    conf = boto("lambda", aws["env"]).get_function_configuration(FunctionName="dl-e2e")
    assert key not in str(conf)
    secret = conf["Environment"]["Variables"]["DASK_LAMBDA_KEY_SECRET"]
    sm = boto("secretsmanager", aws["env"])
    with pytest.raises(sm.exceptions.ClientError, match="AccessDenied"):
        sm.get_secret_value(SecretId=secret)


@pytest.mark.parametrize("broken", ["loop", "directory"])
def test_an_unreadable_key_file_names_the_file_and_the_fix(tmp_path, monkeypatch, broken):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    path = tmp_path / "dask-lambda" / "dask-lambda.key"
    path.parent.mkdir()
    if broken == "loop":
        path.symlink_to(path)  # reading it: "Too many levels of symbolic links" (ELOOP)
    else:
        path.mkdir()
    with pytest.raises(ConfigurationError) as info:
        LambdaClient("s3://some-bucket/x", backend="aws")
    message = str(info.value)
    assert message.startswith(f"cannot read the signing key file {path} (")
    assert f"If it is broken, remove it (`rm -rf {path}`) and copy the file again" in message
    assert "or run `dask-lambda deploy` here" in message


def test_missing_signing_key_names_deploy(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    with pytest.raises(ConfigurationError) as info:
        LambdaClient("s3://some-bucket/x", backend="aws", function="nokey")
    message = str(info.value)
    assert f"no signing key for the Lambda function 'nokey': neither {tmp_path}" in message
    assert "`dask-lambda deploy --bucket s3://some-bucket/x --function nokey`" in message


def test_unreachable_lambda_is_a_clear_error(monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    for name, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                        "AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(name, value)
    with dask.config.set({"lambda.aws.signing-key": "ab" * 32}), \
            pytest.raises(ConfigurationError) as info:
        LambdaClient("s3://some-bucket", backend="aws", dashboard_address=None)
    assert str(info.value).startswith("cannot reach AWS Lambda in eu-west-1 (")
    assert "check the network, the region and AWS_ENDPOINT_URL" in str(info.value)


def test_long_task_is_invoked_once(long_task):
    """boto's default 60 s read timeout would re-send this invoke and run the task twice."""
    try:
        result = long_task["future"].result(timeout=LONG_TASK_S + 60)
    except TimeoutError:
        result = None
    runs = long_task["marker"].read_text().count("started")
    assert runs == 1, f"the invoke was re-sent: the task started {runs} times"
    assert result == 1
    assert time.monotonic() - long_task["started"] >= LONG_TASK_S - 1
