"""Runs in a bucket: markers with a heartbeat, and removal of what dead clients left.

Each client writes ``P/runs/<run>.json`` when it starts and rewrites it every
``heartbeat`` seconds. A run whose marker (or, without a marker, whose newest
object) is older than ``older_than`` seconds belongs to a client that died:
`cleanup_stale_runs` deletes its job and result objects. The next client does this
on start, and ``dask-lambda cleanup`` does it on demand; the bucket's lifecycle
rule (``dask-lambda deploy``) is the last line of defence.

Ages are measured on S3's clock only: an object's ``LastModified`` against the ``Date``
of the listing that found it, so a client whose clock is hours off cannot take a live
run for a dead one. ``older_than`` must be at least `MIN_STALE_BEATS` heartbeats, so
that a live client's marker is always newer.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import logging
import os
import socket
import time

from dask_lambda_handler import s3keys

from .store import S3Store

#: A run is stale after at least this many missed heartbeats (a live client rewrites its
#: marker every heartbeat; allow for a slow request or a busy event loop).
MIN_STALE_BEATS = 3
logger = logging.getLogger("dask_lambda")


async def write_marker(store: S3Store, layout: s3keys.Layout, started: float) -> None:
    body = json.dumps({"run": layout.run, "started": started, "heartbeat": time.time(),
                       "host": socket.gethostname(), "pid": os.getpid()}).encode()
    await store.put(layout.run_marker, [body])


async def heartbeat(store: S3Store, layout: s3keys.Layout, interval: float,
                    stale_after: float) -> None:
    """Rewrite the run's marker every ``interval`` s, forever (cancel it to stop); an outage is
    logged once, with what happens if it lasts ``stale_after`` s."""
    started = time.time()
    failing = False
    while True:
        await asyncio.sleep(interval)
        try:
            await write_marker(store, layout, started)
        except Exception as exc:  # the next beat may succeed; say so once per outage
            if not failing:
                logger.warning(
                    "dask-lambda could not rewrite this client's run marker s3://%s/%s "
                    "(%s: %s); it tries again every %g s. If S3 stays unreachable for "
                    "lambda.stale-after (%g s), another client on this prefix will take "
                    "this run for dead and delete its objects.", layout.bucket,
                    layout.run_marker, type(exc).__name__, exc, interval, stale_after)
            failing = True
        else:
            if failing:
                logger.warning("dask-lambda rewrote its run marker again")
            failing = False


def _run_of(key: str, root: str) -> str:
    return key[len(root):].split("/", 1)[0].removesuffix(".json")


async def cleanup_stale_runs(store: S3Store, layout: s3keys.Layout, older_than: float,
                             heartbeat: float) -> dict[str, int]:
    """Delete the objects of runs (other than ``layout.run``) idle for ``older_than`` seconds
    by S3's clock.

    Returns ``{run id: objects deleted}``.

    Raises
    ------
    ValueError
        ``older_than`` is below `MIN_STALE_BEATS` times ``heartbeat``: live runs could go.
    """
    if not older_than >= MIN_STALE_BEATS * heartbeat > 0:
        raise ValueError(
            f"stale runs are runs idle for at least {MIN_STALE_BEATS} heartbeats "
            f"({MIN_STALE_BEATS * heartbeat:g} s), not {older_than!r} s: a shorter time would "
            "delete the objects of clients that are still running")
    newest: dict[str, _dt.datetime] = {}
    keys: dict[str, list[str]] = {}
    markers: dict[str, _dt.datetime] = {}
    for obj in await store.list_objects(layout.runs_root):
        markers[_run_of(obj["Key"], layout.runs_root)] = obj["LastModified"]
        keys.setdefault(_run_of(obj["Key"], layout.runs_root), []).append(obj["Key"])
    for root in (layout.jobs_root, layout.results_root):
        for obj in await store.list_objects(root):
            run = _run_of(obj["Key"], root)
            keys.setdefault(run, []).append(obj["Key"])
            if run not in newest or obj["LastModified"] > newest[run]:
                newest[run] = obj["LastModified"]
    now = store.server_time  # the Date of the listings above, S3's clock
    if now is None:
        return {}  # nothing was listed: nothing to judge by
    removed: dict[str, int] = {}
    for run, run_keys in keys.items():
        if run == layout.run:
            continue
        last = markers.get(run, newest.get(run))
        if last is not None and (now - last).total_seconds() >= older_than:
            await store.delete(run_keys)
            removed[run] = len(run_keys)
    return removed
