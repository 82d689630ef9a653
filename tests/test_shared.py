"""Every byte leaves the client once: values the client holds go to S3 once, and jobs carry
references to them (``share-min``), counted on the S3 server itself."""

from __future__ import annotations

import json
import time
import urllib.request

import dask
import numpy as np
import pytest
from dask_lambda_handler import protocol

from dask_lambda import LambdaClient
from dask_lambda.backends.local.faults import FaultPlan
from dask_lambda.errors import FunctionError

from .conftest import list_keys, s3_server

BUCKET = "t-shared"
VALUE = np.arange(250_000, dtype="f8")  # 2 MB: far above share-min (16 KiB)


@pytest.fixture(scope="module")
def counted_s3():
    """An S3 server that counts the requests it serves (``GET /__requests__``)."""
    with s3_server({"rules": []}) as url:
        yield url


@pytest.fixture(scope="module")
def counted(counted_s3):
    """A plain S3 client on that server, to look at what a run left."""
    import boto3

    return boto3.client("s3", endpoint_url=counted_s3, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def requests(url: str, method: str, key_part: str) -> int:
    with urllib.request.urlopen(f"{url}/__requests__") as answer:
        counts = json.load(answer)
    return sum(n for m, key, n in counts if m == method and key_part in key)


def _part(array, i: int) -> float:
    return float(array[i::6].sum())


def test_a_value_used_by_many_tasks_is_uploaded_once_and_released_after(counted_s3, counted):
    with LambdaClient(f"s3://{BUCKET}/once", local_s3_endpoint=counted_s3, concurrency=2,
                      batching=False, dashboard_address=None) as client:
        literal = dask.delayed(VALUE, name="the-literal")  # a literal in the graph
        parts = [dask.delayed(_part)(literal, i) for i in range(6)]
        assert sum(dask.compute(*parts)) == VALUE.sum()
        run = client.cluster.layout.run
        stats = client.lambda_stats()
        assert requests(counted_s3, "PUT", f"{BUCKET}/once/results/{run}/") == 1  # one upload
        assert stats["shared_values"] == 1
        encoded = stats["shared_bytes"]
        assert VALUE.nbytes <= encoded < 1.01 * VALUE.nbytes
        assert stats["shared_bytes_saved"] == 5 * encoded  # the five later readers' copies
        assert stats["bytes_sent"] < VALUE.nbytes + 200_000  # the value, once, and small jobs
        # with the computation done, nothing holds it: it is deleted
        deadline = time.monotonic() + 15
        while list_keys(counted, BUCKET, f"once/results/{run}/"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert list_keys(counted, BUCKET, "once/") == []


def test_a_value_held_under_two_keys_is_uploaded_once(counted_s3, counted):
    """``x.blocks[i, j]`` and the chunk it aliases are one object under two keys: one upload,
    and the object stays until neither key holds it."""
    import dask.array as da

    image = np.random.default_rng(0).random((512, 512))  # 4 chunks of 512 KiB
    with LambdaClient(f"s3://{BUCKET}/alias", local_s3_endpoint=counted_s3, concurrency=2,
                      batching=False, dashboard_address=None) as client:
        x = da.from_array(image, chunks=256)
        smoothed = x.map_blocks(lambda b: b * 2)
        sums = [da.map_blocks(lambda s, o: np.array([(s - o).sum()]), smoothed.blocks[i, j],
                              x.blocks[i, j], dtype=float, drop_axis=1, chunks=(1,))
                for i in range(2) for j in range(2)]
        got = np.concatenate(dask.compute(*sums))
        np.testing.assert_allclose(np.sort(got), np.sort(
            [image[i:i + 256, j:j + 256].sum() for i in (0, 256) for j in (0, 256)]))
        run = client.cluster.layout.run
        stats = client.lambda_stats()
        assert stats["shared_values"] == 4  # the four chunks, though eight keys held them
        assert stats["bytes_sent"] < 1.1 * image.nbytes
        deadline = time.monotonic() + 15
        while list_keys(counted, BUCKET, f"alias/results/{run}/"):
            assert time.monotonic() < deadline
            time.sleep(0.2)


def test_a_warm_environment_reads_a_shared_value_once(counted_s3):
    with LambdaClient(f"s3://{BUCKET}/warm", local_s3_endpoint=counted_s3, concurrency=1,
                      batching=False, dashboard_address=None) as client:
        [future] = client.scatter([VALUE])
        parts = client.gather([client.submit(_part, future, i) for i in range(6)])
        assert sum(parts) == VALUE.sum()
        run = client.cluster.layout.run
        # one environment ran the six tasks: it fetched the scattered value once
        assert requests(counted_s3, "GET", f"{BUCKET}/warm/results/{run}/") == 1


def test_a_retried_task_still_finds_the_shared_value(s3_endpoint):
    with LambdaClient(f"s3://{BUCKET}/retried", local_s3_endpoint=s3_endpoint, concurrency=2,
                      batching=False, dashboard_address=None,
                      local_faults=FaultPlan(kill=1.0, seed=5)) as client:
        literal = dask.delayed(VALUE, name="retried-literal")
        parts = [dask.delayed(_part)(literal, i) for i in range(6)]
        assert sum(dask.compute(*parts)) == VALUE.sum()  # every first attempt was killed
        stats = client.lambda_stats()
        assert stats["retries"] >= 6 and stats["shared_values"] == 1


def test_scattered_data_lives_in_s3_and_gathers_back_equal(s3_endpoint, s3):
    with LambdaClient(f"s3://{BUCKET}/scatter", local_s3_endpoint=s3_endpoint, concurrency=2,
                      dashboard_address=None) as client:
        [future] = client.scatter([VALUE], broadcast=True)
        deadline = time.monotonic() + 15  # it goes to S3 at once, not at the first task
        while not isinstance(client.cluster.executor.data.peek(future.key), protocol.ObjectRef):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        np.testing.assert_array_equal(future.result(), VALUE)
        assert client.submit(_part, future, 2).result() == _part(VALUE, 2)
        small = client.scatter(list(range(10)))  # small values stay where they are
        assert client.gather(small) == list(range(10))
        assert not any(isinstance(client.cluster.executor.data.peek(f.key), protocol.ObjectRef)
                       for f in small)
    assert list_keys(s3, BUCKET, "scatter/") == []  # nothing stays after close


def test_a_tampered_shared_value_is_refused(s3_endpoint, s3):
    with LambdaClient(f"s3://{BUCKET}/tamper", local_s3_endpoint=s3_endpoint, concurrency=2,
                      dashboard_address=None) as client:
        first, second = client.scatter([VALUE, VALUE + 1])
        executor = client.cluster.executor
        deadline = time.monotonic() + 15
        while not all(isinstance(executor.data.peek(f.key), protocol.ObjectRef)
                      for f in (first, second)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        victim, donor = executor.data.peek(first.key).key, executor.data.peek(second.key).key
        s3.copy_object(Bucket=BUCKET, Key=victim, CopySource={"Bucket": BUCKET, "Key": donor})
        with pytest.raises(FunctionError) as info:
            client.submit(_part, first, 0).result()
        assert info.value.error_type == "MisplacedPayloadError"
        assert (f"refused s3://{BUCKET}/{victim}: it holds a correctly signed payload that "
                f"belongs to 's3://{BUCKET}/{donor}'") in str(info.value)


def test_share_min_none_sends_every_copy(s3_endpoint):
    with LambdaClient(f"s3://{BUCKET}/never", local_s3_endpoint=s3_endpoint, concurrency=2,
                      batching=False, share_min=None, dashboard_address=None) as client:
        literal = dask.delayed(VALUE, name="never-literal")
        parts = [dask.delayed(_part)(literal, i) for i in range(6)]
        assert sum(dask.compute(*parts)) == VALUE.sum()
        stats = client.lambda_stats()
        assert stats["shared_values"] == 0 and stats["bytes_sent"] > 3 * VALUE.nbytes
