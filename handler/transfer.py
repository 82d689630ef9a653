"""How objects move through S3: part and range sizes, and re-cutting buffers into parts
(standard library only; the client's store and the handler's transfers share it)."""

from __future__ import annotations

from collections.abc import Iterable

from . import limits


def iter_chunks(parts: Iterable, size: int) -> Iterable:
    """Re-cut buffers into chunks of ``size`` bytes (the last may be shorter).

    A chunk inside one buffer is a zero-copy view; only chunks that straddle buffers are
    copied, so memory stays bounded by one chunk.
    """
    pending: list = []
    have = 0
    for part in parts:
        view = memoryview(part).cast("B")
        while len(view):
            if not pending and len(view) >= size:
                yield view[:size]
                view = view[size:]
                continue
            take = view[: size - have]
            pending.append(take)
            have += len(take)
            view = view[len(take):]
            if have == size:
                yield b"".join(pending)
                pending, have = [], 0
    if pending:
        yield b"".join(pending)


def byte_ranges(total: int, size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` cutting ``total`` bytes into ranges of ``size``."""
    return [(i, min(total, i + size)) for i in range(0, total, size)] or [(0, 0)]


#: Objects above this size are uploaded in parts and downloaded in ranges, in parallel.
MULTIPART_THRESHOLD = 32 * 2**20
#: Part and range size (at least S3's smallest part; `part_size_for` keeps within its
#: most parts).
PART_SIZE = max(16 * 2**20, limits.S3_MIN_PART_BYTES)
#: Parts moved at once per object. A local S3 server gains nothing from parallel parts, and
#: moto reads a whole object for each ranged GET: the local backend sets 1 through this variable.
TRANSFER_CONCURRENCY = 8
TRANSFER_CONCURRENCY_ENV = "DASK_LAMBDA_TRANSFER_CONCURRENCY"


def part_size_for(total: int) -> int:
    """A part size that keeps ``total`` within S3's most parts."""
    return max(PART_SIZE, -(-total // limits.S3_MAX_PARTS))
