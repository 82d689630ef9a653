"""Asynchronous S3 access for the client side: one place for every S3 call.

Uses aiobotocore (pooled connections on the scheduler's event loop, no
thread per request) with botocore's ``standard`` retry mode, so transient
errors and 503 SlowDown are retried a bounded number of times with backoff.
AWS error codes become typed errors here, keeping the request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
from collections.abc import Iterable, Iterator
from typing import Any

from dask_lambda_handler import protocol, s3errors, transfer

from .errors import ConfigurationError, PermissionDeniedError

_MAX_POOL = 256
_QUICK_TIMEOUT = 5


async def _fill(body: Any, view: memoryview) -> None:
    pos = 0
    async with body:  # what `as` gives differs across aiobotocore releases; the body reads
        while pos < len(view):
            chunk = await body.read(min(len(view) - pos, 8 * 2**20))
            if not chunk:
                raise OSError(f"S3 object ended after {pos} of {len(view)} bytes")
            view[pos : pos + len(chunk)] = chunk
            pos += len(chunk)


_code = s3errors.error_code


@contextlib.contextmanager
def _mapped(action: str, bucket: str, key: str) -> Iterator[None]:
    """Turn S3's missing objects and refusals into FileNotFoundError and PermissionDeniedError
    (codes mapped by `dask_lambda_handler.s3errors`, as in the handler)."""
    try:
        yield
    except Exception as exc:
        code = _code(exc)
        kind = s3errors.s3_error_kind(code)
        if kind == s3errors.MISSING:
            raise FileNotFoundError(f"s3://{bucket}/{key} does not exist") from None
        if kind == s3errors.DENIED:
            raise PermissionDeniedError(denied_message(action, bucket, key, code)) from None
        raise


def denied_message(action: str, bucket: str, key: str, code: str) -> str:
    """What the user reads when S3 refuses this client ``action`` on ``s3://bucket/key``."""
    narrow, wide = s3errors.grant_scope(bucket, key)
    return (f"AWS refused {action} on s3://{bucket}/{key} ({code}): allow {action} on "
            f"{narrow} for the credentials this client uses (`aws sts get-caller-identity` "
            "shows whose they are). A client needs s3:GetObject, s3:PutObject and "
            f"s3:DeleteObject on {wide} and s3:ListBucket on arn:aws:s3:::{bucket} "
            "(README, Run on AWS: Permissions).")


class S3Store:
    """S3 client bound to one bucket.

    Parameters
    ----------
    bucket
        Bucket name.
    endpoint_url, region, credentials
        Passed to the client; ``None`` means boto's normal resolution
        (environment, profile, ``AWS_ENDPOINT_URL``).
    transfer_concurrency
        Parts or ranges of one large object moved at once.
    """

    def __init__(self, bucket: str, *, endpoint_url: str | None = None,
                 region: str | None = None, credentials: dict | None = None,
                 transfer_concurrency: int = transfer.TRANSFER_CONCURRENCY):
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self.credentials = credentials or {}
        self.transfer_concurrency = max(1, transfer_concurrency)
        self._stack: contextlib.AsyncExitStack | None = None
        self.client: Any = None
        self.quick_client: Any = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.requests = 0
        #: S3's clock: the ``Date`` of the last listing (`list_objects`), or None.
        self.server_time: datetime.datetime | None = None

    async def start(self) -> None:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        self._stack = contextlib.AsyncExitStack()
        session = get_session()
        cfg = AioConfig(retries={"mode": "standard", "max_attempts": 5},
                        max_pool_connections=_MAX_POOL)
        self.client = await self._stack.enter_async_context(
            session.create_client("s3", endpoint_url=self.endpoint_url,
                                  region_name=self.region, config=cfg, **self.credentials))
        # Short timeouts and few attempts where waiting helps nobody: the start-up check (an
        # endpoint that never answers would take botocore's 60 s x 5 attempts) and clean-up.
        quick = AioConfig(retries={"mode": "standard", "max_attempts": 2},
                          connect_timeout=_QUICK_TIMEOUT, read_timeout=_QUICK_TIMEOUT,
                          max_pool_connections=4)
        self.quick_client = await self._stack.enter_async_context(
            session.create_client("s3", endpoint_url=self.endpoint_url,
                                  region_name=self.region, config=quick, **self.credentials))

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None
            self.client = self.quick_client = None

    async def check_bucket(self, *, create: bool = False) -> None:
        """Fail with a clear error if the bucket is missing, not ours, in another region than
        this client's, or unreachable with these credentials; create it if asked."""
        from botocore.exceptions import (
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        bucket = self.bucket
        client = self.quick_client
        try:
            answer = await client.head_bucket(Bucket=bucket)
        except NoCredentialsError:
            raise ConfigurationError(
                "no AWS credentials found. Configure them as for the AWS CLI: `aws configure`, "
                "or AWS_PROFILE=name, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; or try "
                "without AWS: LambdaClient(\"s3://my-bucket\", backend=\"local\")") from None
        except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as exc:
            raise ConfigurationError(self._unreachable(exc)) from None
        except Exception as exc:
            code = _code(exc)
            headers = (getattr(exc, "response", None) or {}).get("ResponseMetadata", {}).get(
                "HTTPHeaders", {})
            if code in ("400", "403"):  # a HEAD answer has no body: ask again for S3's code
                try:
                    await client.list_objects_v2(Bucket=bucket, MaxKeys=1)
                except Exception as again:
                    code = _code(again) or code
            actual = headers.get("x-amz-bucket-region")
            if actual and code in ("301", "400", "PermanentRedirect",
                                   "AuthorizationHeaderMalformed") and actual != self.region:
                raise ConfigurationError(self._region_message(actual)) from None
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                        "ExpiredToken"):
                raise ConfigurationError(
                    f"AWS rejected the credentials ({code}): they are wrong or expired. Check "
                    "`aws sts get-caller-identity`, refresh them (`aws sso login`), or select "
                    "another profile with AWS_PROFILE=name") from None
            kind = s3errors.s3_error_kind(code)
            if kind in (s3errors.MISSING, s3errors.NO_BUCKET) and create:
                await client.create_bucket(Bucket=bucket)
                return
            if kind in (s3errors.MISSING, s3errors.NO_BUCKET):
                raise ConfigurationError(
                    f"S3 bucket {bucket!r} does not exist. Create it first "
                    f"(`dask-lambda deploy --bucket {bucket}` or `aws s3 mb s3://{bucket}`), "
                    "or name an existing bucket: LambdaClient(\"s3://my-bucket/dask\").") from None
            if kind == s3errors.DENIED:
                raise ConfigurationError(
                    f"no access to S3 bucket {bucket!r} (HTTP 403): it belongs to another "
                    "account or your credentials lack s3:ListBucket/GetObject/PutObject on it "
                    f"(the check needs s3:ListBucket on arn:aws:s3:::{bucket} without a prefix "
                    "condition). Use a bucket you own, or check `aws sts get-caller-identity`."
                ) from None
            raise
        # botocore's S3 region redirector follows a bucket into its region, so the call
        # succeeds wherever the bucket is; S3 names the bucket's region in every HeadBucket
        # answer (HeadBucket API: x-amz-bucket-region).
        actual = answer.get("BucketRegion") or answer.get("ResponseMetadata", {}).get(
            "HTTPHeaders", {}).get("x-amz-bucket-region")
        if self.region and actual and actual != self.region:
            raise ConfigurationError(self._region_message(actual))

    def _region_message(self, actual: str) -> str:
        return (f"S3 bucket {self.bucket!r} is in region {actual!r}, not {self.region!r}: "
                f"LambdaClient(\"s3://{self.bucket}\", region=\"{actual}\") or "
                f"AWS_DEFAULT_REGION={actual}")

    def _unreachable(self, exc: BaseException) -> str:
        """What the user reads when S3 does not answer the start-up check."""
        if self.endpoint_url:
            where = (f"the S3 endpoint {self.endpoint_url} (the local backend's "
                     "local_s3_endpoint= / lambda.local.s3-endpoint, or AWS_ENDPOINT_URL_S3)")
            fix = ("start that server, or leave local_s3_endpoint unset to let the local "
                   "backend start its own")
        else:
            where = f"S3 in region {self.region!r}"
            fix = ("check the network, a proxy (HTTPS_PROXY) or firewall in the way, and "
                   "AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL if you set one")
        return (f"cannot reach {where}: {type(exc).__name__}: {exc}. Gave up after "
                f"{_QUICK_TIMEOUT} s per attempt: {fix}.")

    async def put(self, key: str, parts: list) -> int:
        """Upload buffers as one object without joining them; large ones in parallel parts."""
        total = protocol.parts_size(parts)
        self.bytes_up += total
        if total <= transfer.MULTIPART_THRESHOLD:
            self.requests += 1
            with _mapped("s3:PutObject", self.bucket, key):
                await self.client.put_object(Bucket=self.bucket, Key=key, Body=b"".join(parts))
            return total
        self.requests += 2
        with _mapped("s3:PutObject", self.bucket, key):  # as the handler's s3io.put
            return await self._put_parts(key, parts, total)

    async def _put_parts(self, key: str, parts: list, total: int) -> int:
        upload = await self.client.create_multipart_upload(Bucket=self.bucket, Key=key)
        upload_id = upload["UploadId"]
        slots = asyncio.Semaphore(self.transfer_concurrency)

        async def send(number: int, chunk: Any) -> dict:
            try:
                self.requests += 1
                resp = await self.client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                    Body=bytes(chunk))
                return {"PartNumber": number, "ETag": resp["ETag"]}
            finally:
                slots.release()

        try:
            pending = []
            for number, chunk in enumerate(
                    transfer.iter_chunks(parts, transfer.part_size_for(total)), 1):
                await slots.acquire()  # at most transfer_concurrency parts in memory
                pending.append(asyncio.ensure_future(send(number, chunk)))
            done = await asyncio.gather(*pending)
            await self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": list(done)})
        except BaseException:
            await self.client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                     UploadId=upload_id)
            raise
        return total

    async def get(self, key: str, bucket: str | None = None) -> bytearray:
        """Download an object into a writable buffer; large ones in parallel byte ranges."""
        bucket = bucket or self.bucket
        self.requests += 1
        with _mapped("s3:GetObject", bucket, key):
            head = await self.client.get_object(Bucket=bucket, Key=key)
        total = head["ContentLength"]
        out = bytearray(total)
        view = memoryview(out)
        if total <= transfer.MULTIPART_THRESHOLD or self.transfer_concurrency == 1:
            await _fill(head["Body"], view)
        else:
            head["Body"].close()
            slots = asyncio.Semaphore(self.transfer_concurrency)

            async def fetch(start: int, stop: int) -> None:
                async with slots:
                    self.requests += 1
                    with _mapped("s3:GetObject", bucket, key):
                        resp = await self.client.get_object(Bucket=bucket, Key=key,
                                                            Range=f"bytes={start}-{stop - 1}")
                    await _fill(resp["Body"], view[start:stop])

            await asyncio.gather(*(fetch(a, b) for a, b in
                                   transfer.byte_ranges(total, transfer.PART_SIZE)))
        self.bytes_down += total
        return out

    async def list_objects(self, prefix: str, *, quick: bool = False) -> list[dict]:
        """Every object under ``prefix`` (``Key``, ``LastModified``, ``Size``...).

        ``quick``: few attempts, short timeouts (clean-up: S3 may be gone).
        """
        found: list[dict] = []
        client = self.quick_client if quick else self.client
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            self.requests += 1
            date = page.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
            if date:
                self.server_time = email.utils.parsedate_to_datetime(date)
            found.extend(page.get("Contents", ()))
        return found

    async def list_keys(self, prefix: str, *, quick: bool = False) -> list[str]:
        return [o["Key"] for o in await self.list_objects(prefix, quick=quick)]

    async def delete(self, keys: Iterable[str], *, quick: bool = False) -> None:
        """Delete keys, 1,000 per request (S3's limit); ``quick`` as in `list_objects`."""
        keys = list(keys)
        client = self.quick_client if quick else self.client
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            self.requests += 1
            await client.delete_objects(Bucket=self.bucket,
                                        Delete={"Objects": batch, "Quiet": True})

    async def delete_prefixes(self, prefixes: Iterable[str], *, quick: bool = False) -> int:
        """Delete every object under ``prefixes``; returns how many there were."""
        n = 0
        for prefix in prefixes:
            keys = await self.list_keys(prefix, quick=quick)
            await self.delete(keys, quick=quick)
            n += len(keys)
        return n
