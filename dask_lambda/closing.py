"""Closing a LambdaCluster's run: each clean-up step bounded in time, logged (never raised)
when it fails, with what it left behind."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .deployment.names import bucket_url

if TYPE_CHECKING:
    from dask_lambda_handler import s3keys

    from .gateway import LambdaExecutor
    from .store import S3Store

logger = logging.getLogger("dask_lambda")

#: Seconds a clean-up step of `LambdaCluster.close` may take (S3 unreachable: botocore's
#: retries would take minutes); and a stop of processes or connections.
CLEANUP_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


async def step(what: str, work: Any, timeout: float, left: str = "") -> bool:
    """Await one clean-up step within ``timeout`` s; log (never raise) a failure and what it
    left behind. Returns whether it succeeded."""
    try:
        await asyncio.wait_for(work, timeout)
        return True
    except Exception as exc:
        why = "it took too long" if isinstance(exc, asyncio.TimeoutError) else (
            f"{type(exc).__name__}: {exc}")
        logger.warning("dask-lambda could not %s while closing (%s)%s", what, why,
                       f": {left}" if left else "")
        return False


async def delete_run(executor: LambdaExecutor | None, store: S3Store | None,
                     layout: s3keys.Layout, *, marker_written: bool) -> None:
    """Delete the run's objects (through ``executor``), then its marker (if the objects went),
    and close the S3 client; each step runs whatever failed before it."""
    where = " and ".join(f"s3://{layout.bucket}/{p}" for p in layout.run_prefixes)
    left = (f"the objects under {where} stay until a later client on this prefix finds "
            "them stale (lambda.stale-after), `dask-lambda cleanup --bucket "
            f"{bucket_url(layout.bucket, layout.prefix)}` removes them, or the bucket's "
            "lifecycle rule expires them")
    s3_ok = True
    if executor is not None:
        s3_ok = await step("delete this run's objects", executor.close(), CLEANUP_TIMEOUT, left)
    if store is not None:
        if s3_ok and marker_written:
            marker = layout.run_marker
            await step("delete this run's marker", store.delete([marker], quick=True),
                       CLEANUP_TIMEOUT, f"s3://{layout.bucket}/{marker} stays until a "
                       "later client finds it stale")
        await step("close the S3 client", store.close(), STOP_TIMEOUT)
