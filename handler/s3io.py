"""S3 transfers of the handler: bounded memory, parallel parts, writable buffers.

* `get` reads an object into one preallocated ``bytearray`` (large objects in
  parallel byte ranges), so decoded numpy/pandas buffers are zero-copy views
  of it, and writable.
* `put` uploads a list of buffers without joining them: small objects in one
  request, large ones as a multipart upload whose parts are cut from the
  buffers (a copy of at most one part per thread).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

from . import protocol


def get(client: Any, bucket: str, key: str, concurrency: int = protocol.TRANSFER_CONCURRENCY
        ) -> bytearray:
    """Download an object into a writable buffer (in parallel ranges if ``concurrency`` > 1)."""
    head = client.get_object(Bucket=bucket, Key=key)
    total = head["ContentLength"]
    out = bytearray(total)
    view = memoryview(out)
    if total <= protocol.MULTIPART_THRESHOLD or concurrency <= 1:
        _fill(head["Body"], view)
        return out
    head["Body"].close()
    ranges = protocol.byte_ranges(total, protocol.PART_SIZE)

    def fetch(rng: tuple[int, int]) -> None:
        start, stop = rng
        resp = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{stop - 1}")
        _fill(resp["Body"], view[start:stop])

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(fetch, ranges))
    return out


def _fill(body: Any, view: memoryview) -> None:
    pos = 0
    while pos < len(view):
        chunk = body.read(min(len(view) - pos, 8 * 2**20))
        if not chunk:
            raise IOError(f"S3 object ended after {pos} of {len(view)} bytes")
        view[pos : pos + len(chunk)] = chunk
        pos += len(chunk)
    body.close()


def put(client: Any, bucket: str, key: str, parts: list,
        concurrency: int = protocol.TRANSFER_CONCURRENCY) -> int:
    """Upload buffers as one object (in parallel parts when large); returns its size."""
    total = protocol.parts_size(parts)
    if total <= protocol.MULTIPART_THRESHOLD:
        client.put_object(Bucket=bucket, Key=key, Body=b"".join(parts))
        return total
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    try:
        chunks: Iterable = protocol.iter_chunks(parts, protocol.part_size_for(total))

        def send(item: tuple[int, Any]) -> dict:
            number, chunk = item
            etag = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id,
                                      PartNumber=number, Body=bytes(chunk))["ETag"]
            return {"PartNumber": number, "ETag": etag}

        with ThreadPoolExecutor(max(1, concurrency)) as pool:
            done = list(_bounded_map(pool, send, enumerate(chunks, 1)))
        client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                         MultipartUpload={"Parts": done})
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
