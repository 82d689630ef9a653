"""S3 transfers of the handler: bounded memory, parallel parts, writable buffers.

* `get` reads an object into one preallocated ``bytearray`` (large objects in
  parallel byte ranges), so decoded numpy/pandas buffers are zero-copy views
  of it, and writable.
* `put` uploads a list of buffers without joining them: small objects in one
  request, large ones as a multipart upload whose parts are cut from the
  buffers (a copy of at most one part per thread).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import protocol, s3errors, s3keys, transfer
from .errors import S3PermissionError

#: Requests made by this process, by kind ("get", "put"), for cost accounting.
COUNTS: Counter = Counter()


def _checked(action: str, bucket: str, key: str, call: Any, **kwargs: Any) -> Any:
    """Run one S3 call, mapping missing objects and refusals to clear errors (codes mapped by
    `s3errors`, as in the client)."""
    COUNTS["get" if action == "s3:GetObject" else "put"] += 1
    try:
        return call(Bucket=bucket, Key=key, **kwargs)
    except Exception as exc:
        code = s3errors.error_code(exc)
        kind = s3errors.s3_error_kind(code)
        if kind == s3errors.MISSING:
            raise FileNotFoundError(f"s3://{bucket}/{key} does not exist") from None
        if kind == s3errors.DENIED:
            raise S3PermissionError(denied_message(action, bucket, key, code)) from None
        raise


def denied_message(action: str, bucket: str, key: str, code: str) -> str:
    """What the user reads when S3 refuses the function ``action`` on ``s3://bucket/key``."""
    user, _ = s3errors.layout_prefixes(key)
    narrow, _ = s3errors.grant_scope(bucket, key)
    function = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
    deploy = f"dask-lambda deploy --bucket s3://{bucket}/{user}".rstrip("/")
    if function and function != "dask-lambda":
        deploy += f" --function {function}"
    if os.environ.get("AWS_REGION"):
        deploy += f" --region {os.environ['AWS_REGION']}"
    return (f"the function's role may not {action} on s3://{bucket}/{key} ({code}): allow "
            f"{action} on {narrow} in the role's policy, or run `{deploy}` again, which gives "
            f"the role s3:GetObject on {user}{s3keys.JOBS}/* and {user}{s3keys.RESULTS}/* and "
            f"s3:PutObject on {user}{s3keys.RESULTS}/*")


def get(client: Any, bucket: str, key: str, concurrency: int = transfer.TRANSFER_CONCURRENCY
        ) -> bytearray:
    """Download an object into a writable buffer (in parallel ranges if ``concurrency`` > 1)."""
    head = _checked("s3:GetObject", bucket, key, client.get_object)
    total = head["ContentLength"]
    out = bytearray(total)
    view = memoryview(out)
    if total <= transfer.MULTIPART_THRESHOLD or concurrency <= 1:
        _fill(head["Body"], view)
        return out
    head["Body"].close()
    ranges = transfer.byte_ranges(total, transfer.PART_SIZE)

    def fetch(rng: tuple[int, int]) -> None:
        start, stop = rng
        resp = _checked("s3:GetObject", bucket, key, client.get_object,
                        Range=f"bytes={start}-{stop - 1}")
        _fill(resp["Body"], view[start:stop])

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(fetch, ranges))
    return out


def _fill(body: Any, view: memoryview) -> None:
    pos = 0
    while pos < len(view):
        chunk = body.read(min(len(view) - pos, 8 * 2**20))
        if not chunk:
            raise OSError(f"S3 object ended after {pos} of {len(view)} bytes")
        view[pos : pos + len(chunk)] = chunk
        pos += len(chunk)
    body.close()


def put(client: Any, bucket: str, key: str, parts: list,
        concurrency: int = transfer.TRANSFER_CONCURRENCY) -> int:
    """Upload buffers as one object (in parallel parts when large); returns its size."""
    total = protocol.parts_size(parts)
    if total <= transfer.MULTIPART_THRESHOLD:
        _checked("s3:PutObject", bucket, key, client.put_object, Body=b"".join(parts))
        return total
    upload_id = _checked("s3:PutObject", bucket, key, client.create_multipart_upload)["UploadId"]
    try:
        chunks: Iterable = transfer.iter_chunks(parts, transfer.part_size_for(total))

        def send(item: tuple[int, Any]) -> dict:
            number, chunk = item
            etag = _checked("s3:PutObject", bucket, key, client.upload_part, UploadId=upload_id,
                            PartNumber=number, Body=bytes(chunk))["ETag"]
            return {"PartNumber": number, "ETag": etag}

        with ThreadPoolExecutor(max(1, concurrency)) as pool:
            done = list(_bounded_map(pool, send, enumerate(chunks, 1)))
        _checked("s3:PutObject", bucket, key, client.complete_multipart_upload,
                 UploadId=upload_id, MultipartUpload={"Parts": done})
    except BaseException:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise
    return total


def _bounded_map(pool: ThreadPoolExecutor, func: Any, items: Iterable) -> list:
    """``pool.map`` that keeps at most the pool's width of items in flight (bounded memory)."""
    from collections import deque

    width = pool._max_workers  # type: ignore[attr-defined]
    queue: deque = deque()
    results = []
    for item in items:
        queue.append(pool.submit(func, item))
        if len(queue) >= width:
            results.append(queue.popleft().result())
    results.extend(f.result() for f in queue)
    return results
