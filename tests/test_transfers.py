"""Large-object transfers over HTTP to the S3 server: parts, ranges, chunking."""

from __future__ import annotations

import asyncio

import boto3
import numpy as np
import pytest
from dask_lambda_handler import protocol, s3io, transfer

from dask_lambda.backends.local.s3server import TEST_CREDENTIALS
from dask_lambda.errors import PermissionDeniedError, S3PermissionError
from dask_lambda.store import S3Store

from .conftest import s3_server

BUCKET = "t-transfers"


@pytest.fixture(scope="module")
def bucket(s3):
    s3.create_bucket(Bucket=BUCKET)
    return BUCKET


def _buffers(total: int, pieces: int) -> list:
    data = np.random.default_rng(0).integers(0, 255, total, dtype="u1")
    cuts = np.linspace(0, total, pieces + 1).astype(int)
    return [memoryview(data[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


@pytest.mark.parametrize("sizes", [[0], [5], [3, 4, 9], [16], [1, 1, 1, 1, 1, 1, 1, 1, 1, 20]])
def test_iter_chunks_recuts_buffers_exactly(sizes):
    parts = [bytes(range(i, i + n)) for i, n in enumerate(sizes)]
    chunks = list(transfer.iter_chunks(parts, 4))
    assert b"".join(bytes(c) for c in chunks) == b"".join(parts)
    assert all(len(c) == 4 for c in chunks[:-1])
    assert not chunks or 0 < len(chunks[-1]) <= 4


def test_part_size_keeps_within_ten_thousand_parts():
    assert transfer.part_size_for(10) == transfer.PART_SIZE
    big = 5 * 2**40  # 5 TiB, S3's largest object
    assert big / transfer.part_size_for(big) <= 10_000


@pytest.mark.parametrize("concurrency", [1, 8])
def test_handler_side_multipart_put_and_ranged_get(s3, bucket, concurrency):
    parts = _buffers(transfer.MULTIPART_THRESHOLD + 5 * 2**20 + 123, 7)
    assert s3io.put(s3, bucket, f"h{concurrency}", parts, concurrency) == protocol.parts_size(parts)
    back = s3io.get(s3, bucket, f"h{concurrency}", concurrency)
    assert isinstance(back, bytearray) and back == b"".join(bytes(p) for p in parts)


@pytest.mark.parametrize("concurrency", [1, 8])
def test_client_side_multipart_put_and_ranged_get(s3_endpoint, bucket, concurrency):
    parts = _buffers(transfer.MULTIPART_THRESHOLD + 3 * 2**20 + 7, 3)

    async def roundtrip():
        store = S3Store(bucket, endpoint_url=s3_endpoint, region="us-east-1",
                        credentials=dict(TEST_CREDENTIALS),
                        transfer_concurrency=concurrency)
        await store.start()
        try:
            await store.put(f"c{concurrency}", parts)
            return await store.get(f"c{concurrency}")
        finally:
            await store.close()

    back = asyncio.run(roundtrip())
    assert isinstance(back, bytearray) and back == b"".join(bytes(p) for p in parts)


def _store_call(endpoint, bucket, method, *args):
    async def call():
        store = S3Store(bucket, endpoint_url=endpoint, region="us-east-1",
                        credentials=dict(TEST_CREDENTIALS),
                        transfer_concurrency=1)
        await store.start()
        try:
            return await getattr(store, method)(*args)
        finally:
            await store.close()

    return asyncio.run(call())


def test_both_sides_report_a_missing_object_alike(s3, s3_endpoint, bucket):
    with pytest.raises(FileNotFoundError) as handler:
        s3io.get(s3, bucket, "run/results/r/gone-a0.out")
    with pytest.raises(FileNotFoundError) as client:
        _store_call(s3_endpoint, bucket, "get", "run/results/r/gone-a0.out")
    assert str(handler.value) == str(client.value) == \
        f"s3://{bucket}/run/results/r/gone-a0.out does not exist"


@pytest.mark.parametrize("size", [10, transfer.MULTIPART_THRESHOLD + 1])
def test_both_sides_turn_a_refusal_into_a_permission_error_naming_the_prefix(size):
    """403 AccessDenied on small and multipart uploads and on downloads, mapped alike."""
    with s3_server({"rules": [{"status": 403, "prefix": "run/results/"}]}) as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket="t-refused")
        key = "run/results/r/t-a0.out"
        parts = _buffers(size, 2)
        for action, handler_call, client_call in [
                ("s3:PutObject", lambda: s3io.put(s3, "t-refused", key, parts, 1),
                 lambda: _store_call(endpoint, "t-refused", "put", key, parts)),
                ("s3:GetObject", lambda: s3io.get(s3, "t-refused", key, 1),
                 lambda: _store_call(endpoint, "t-refused", "get", key))]:
            with pytest.raises(S3PermissionError) as handler:
                handler_call()
            with pytest.raises(PermissionDeniedError) as client:
                client_call()
            grant = f"allow {action} on arn:aws:s3:::t-refused/run/results/* "
            for error in (handler.value, client.value):
                assert isinstance(error, PermissionError)
                assert f"{action} on s3://t-refused/{key} (AccessDenied): {grant}" in str(error)
        assert s3.list_objects_v2(Bucket="t-refused").get("KeyCount", 0) == 0
        assert s3.list_multipart_uploads(Bucket="t-refused").get("Uploads", []) == []
