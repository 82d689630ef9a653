"""Bad input and bad environments: each gives the exact, actionable error a user sees."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from dask_lambda import LambdaClient
from dask_lambda.cost import CostMeter, billed_ms
from dask_lambda.errors import BudgetExceededError, ConfigurationError, OutputTooLargeError
from dask_lambda.store import S3Store

from .conftest import list_keys, s3_server

CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def check(endpoint, bucket, *, create=False, region="us-east-1", credentials=CREDS):
    async def go():
        store = S3Store(bucket, endpoint_url=endpoint, region=region, credentials=credentials)
        await store.start()
        try:
            await store.check_bucket(create=create)
        finally:
            await store.close()

    asyncio.run(go())


def test_bucket_that_does_not_exist(s3_endpoint):
    with pytest.raises(ConfigurationError) as info:
        check(s3_endpoint, "no-such-bucket-here")
    assert str(info.value) == (
        "S3 bucket 'no-such-bucket-here' does not exist. Create it first (`dask-lambda deploy "
        "--bucket no-such-bucket-here` or `aws s3 mb s3://no-such-bucket-here`), or name an "
        "existing bucket: LambdaClient(\"s3://my-bucket/dask\").")


def test_missing_credentials(s3_endpoint, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ConfigurationError, match=r"^no AWS credentials found. Configure them as "
                                                 r"for the AWS CLI: `aws configure`"):
        check(s3_endpoint, "any-bucket", credentials={})


@pytest.fixture(scope="module")
def hostile_s3():
    """An S3 that refuses one bucket, rejects one key pair, and keeps one bucket elsewhere."""
    plan = {"rules": [
        {"status": 403, "bucket": "not-ours"},
        {"status": 403, "bucket": "bad-keys", "code": "InvalidAccessKeyId"},
        {"status": 301, "bucket": "far-away", "region": "eu-west-1"},
    ]}
    with s3_server(plan) as endpoint:
        yield endpoint


def test_bucket_that_is_not_ours(hostile_s3):
    with pytest.raises(ConfigurationError) as info:
        LambdaClient("s3://not-ours/x", local_s3_endpoint=hostile_s3, dashboard_address=None)
    assert str(info.value) == (
        "no access to S3 bucket 'not-ours' (HTTP 403): it belongs to another account or your "
        "credentials lack s3:ListBucket/GetObject/PutObject on it (the check needs "
        "s3:ListBucket on arn:aws:s3:::not-ours without a prefix condition). Use a bucket you "
        "own, or check `aws sts get-caller-identity`.")


def test_wrong_credentials(hostile_s3):
    with pytest.raises(ConfigurationError, match=r"^AWS rejected the credentials "
                                                 r"\(InvalidAccessKeyId\): they are wrong or "
                                                 r"expired\. Check `aws sts get-caller-identity`"):
        check(hostile_s3, "bad-keys")


def test_wrong_region(hostile_s3):
    with pytest.raises(ConfigurationError) as info:
        check(hostile_s3, "far-away")
    assert str(info.value) == (
        "S3 bucket 'far-away' is in region 'eu-west-1', not 'us-east-1': "
        "LambdaClient(\"s3://far-away\", region=\"eu-west-1\") or AWS_DEFAULT_REGION=eu-west-1")


def test_output_larger_than_the_maximum(s3_endpoint, s3):
    with LambdaClient("s3://t-max-output", local_s3_endpoint=s3_endpoint, concurrency=1,
                      max_output=1_000_000, dashboard_address=None) as client:
        with pytest.raises(OutputTooLargeError) as info:
            client.submit(np.ones, 500_000, key="big-output").result()  # 4 MB
        assert client.submit(np.ones, 1000).result().sum() == 1000  # small ones still work
    message = str(info.value)
    assert message.startswith("the task's output is 4,000,")
    assert message.endswith("bytes encoded, more than max-output=1,000,000; it was not stored. "
                            "Return less (e.g. write large data to S3 inside the task and return "
                            "its path), or raise the limit: LambdaClient(..., max_output="
                            + message.split("max_output=")[1])
    assert list_keys(s3, "t-max-output") == []


def test_cost_budget_stops_dispatching(s3_endpoint):
    with LambdaClient("s3://t-budget", local_s3_endpoint=s3_endpoint, concurrency=1,
                      cost_budget=0.00002, dashboard_address=None) as client:
        # $0.00002 buys a few dozen invocations of a 2 GB function at ~5 ms each, not 100
        with pytest.raises(BudgetExceededError) as info:
            client.gather(client.map(lambda i: i, range(100)))
        report = client.cost_report()
        longest = max(i["duration_s"] for i in client.cluster.executor.dispatch.invocations)
    assert 1 <= report["invocations"] < 100
    # The projection uses the mean invocation so far, so the one invocation running when it
    # stops (concurrency 1) can take the total past the budget by at most its own cost.
    one = CostMeter(2048)
    one.settle(billed_ms(longest))
    assert report["dollars"] <= 0.00002 + one.dollars()
    assert "the estimated cost would pass the budget of $0.0000" in str(info.value)
    assert "LambdaClient(..., cost_budget=0.01), or DASK_LAMBDA__COST_BUDGET." in str(info.value)


def test_worker_saturation_is_the_gateways_own_setting(s3_endpoint):
    import dask

    with pytest.raises(ConfigurationError) as info:
        with dask.config.set({"lambda.worker-saturation": 0}):
            LambdaClient("s3://t-saturation", local_s3_endpoint=s3_endpoint)
    assert str(info.value) == (
        "lambda.worker-saturation=0 is not valid: it must be more than 0. Setting "
        "lambda.worker-saturation (DASK_LAMBDA__WORKER_SATURATION) takes a number above 0 (inf: "
        "no queuing), or null for distributed.scheduler.worker-saturation; e.g. "
        "dask.config.set({\"lambda.worker-saturation\": 2.0})")
    with LambdaClient("s3://t-saturation", local_s3_endpoint=s3_endpoint,
                      dashboard_address=None) as client:
        assert client.cluster.scheduler.WORKER_SATURATION == 2.0
        assert "stealing" not in client.cluster.scheduler.extensions  # one worker: no use
    with dask.config.set({"lambda.worker-saturation": None,
                          "distributed.scheduler.worker-saturation": 1.5}), \
            LambdaClient("s3://t-saturation", local_s3_endpoint=s3_endpoint,
                         dashboard_address=None) as client:
        assert client.cluster.scheduler.WORKER_SATURATION == 1.5
