"""What a client shares with others: live runs on one prefix, S3 that hangs or goes away,
and the process-wide environment of several clients open at once."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import socket
import threading
import time
import types

import dask
import dask.array as da
import numpy as np
import psutil
import pytest
from dask_lambda_handler import s3keys
from distributed import wait

from dask_lambda import LambdaClient, runs
from dask_lambda.errors import ConfigurationError

from .conftest import list_keys

# -- live runs on one prefix ---------------------------------------------------------------


def test_a_second_client_whose_clock_is_hours_ahead_keeps_a_live_run(
        s3_endpoint, s3, monkeypatch):
    bucket = "t-live-runs"
    with LambdaClient(f"s3://{bucket}/p", local_s3_endpoint=s3_endpoint, inline_max=0,
                      concurrency=1, dashboard_address=None) as first:
        kept = first.persist(da.ones(100, chunks=25) + 1)
        wait(kept)
        run = first.cluster.layout.run
        before = list_keys(s3, bucket, f"p/results/{run}/")
        assert before

        real_datetime = datetime.datetime

        class Ahead(real_datetime):  # this machine's clock, two hours fast
            @classmethod
            def now(cls, tz=None):
                return real_datetime.now(tz) + datetime.timedelta(hours=2)

        monkeypatch.setattr(runs, "_dt", types.SimpleNamespace(
            datetime=Ahead, timezone=datetime.timezone, timedelta=datetime.timedelta))
        real_time = time.time
        monkeypatch.setattr(runs.time, "time", lambda: real_time() + 7200)
        with LambdaClient(f"s3://{bucket}/p", local_s3_endpoint=s3_endpoint, concurrency=1,
                          dashboard_address=None, set_as_default=False) as second:
            assert second.cluster.stale_runs_removed == {}
        monkeypatch.undo()
        assert list_keys(s3, bucket, f"p/results/{run}/") == before
        assert (kept.sum().compute(scheduler=first) == 200)


def test_clean_up_refuses_an_age_that_live_runs_reach(s3_endpoint):
    from dask_lambda.store import S3Store

    async def go():
        store = S3Store("t-live-runs", endpoint_url=s3_endpoint, region="us-east-1",
                        credentials={"aws_access_key_id": "testing",
                                     "aws_secret_access_key": "testing"})
        await store.start()
        try:
            for older_than in (0, -5, 10, 179):
                with pytest.raises(ValueError) as info:
                    await runs.cleanup_stale_runs(store, s3keys.Layout("t-live-runs", "p", "x"),
                                                  older_than, heartbeat=60)
                assert (f"stale runs are runs idle for at least 3 heartbeats (180 s), not "
                        f"{older_than!r} s" in str(info.value))
        finally:
            await store.close()

    asyncio.run(go())


def test_a_heartbeat_that_cannot_reach_s3_is_reported(s3_endpoint, caplog):
    with dask.config.set({"lambda.heartbeat": 1}):
        client = LambdaClient("s3://t-heartbeat", local_s3_endpoint=s3_endpoint, concurrency=1,
                              dashboard_address=None, set_as_default=False)
    try:
        store = client.cluster.store
        put = store.put

        async def failing_put(key, parts):
            if key.endswith(".json"):
                raise ConnectionError("S3 is unreachable (injected)")
            return await put(key, parts)

        store.put = failing_put
        with caplog.at_level(logging.WARNING, logger="dask_lambda"):
            time.sleep(3.5)
        warnings = [r.getMessage() for r in caplog.records if "run marker" in r.getMessage()]
        assert len(warnings) == 1  # once per outage, not once per beat
        assert (f"could not rewrite this client's run marker s3://t-heartbeat/"
                f"{client.cluster.layout.run_marker} (ConnectionError: S3 is unreachable "
                "(injected)); it tries again every 1 s. If S3 stays unreachable for "
                "lambda.stale-after (3600 s), another client on this prefix will take this run "
                "for dead and delete its objects." in warnings[0])
    finally:
        client.close()


# -- S3 that hangs or goes away ----------------------------------------------------------------


@pytest.fixture
def silent_endpoint():
    """A TCP port that accepts connections and never answers (a hung proxy)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("endpoint", ["silent", "closed", "unresolvable"])
def test_an_s3_endpoint_that_does_not_answer_fails_the_start_quickly(endpoint, request):
    url = {"silent": lambda: request.getfixturevalue("silent_endpoint"),
           "closed": _closed_port,
           "unresolvable": lambda: "http://no-such-host.invalid:9000"}[endpoint]()
    children = psutil.Process().children(recursive=True)
    start = time.monotonic()
    with pytest.raises(ConfigurationError) as info:
        LambdaClient("s3://t-unreachable", local_s3_endpoint=url, dashboard_address=None)
    assert time.monotonic() - start < 60  # botocore's defaults: 12.6 minutes
    assert str(info.value).startswith(
        f"cannot reach the S3 endpoint {url} (the local backend's local_s3_endpoint= / "
        "lambda.local.s3-endpoint, or AWS_ENDPOINT_URL_S3): ")
    assert str(info.value).endswith(
        "Gave up after 5 s per attempt: start that server, or leave local_s3_endpoint unset "
        "to let the local backend start its own.")
    assert psutil.Process().children(recursive=True) == children
    assert "AWS_ENDPOINT_URL_S3" not in os.environ or os.environ["AWS_ENDPOINT_URL_S3"] != url


def test_s3_gone_mid_run_fails_the_compute_and_close_still_cleans_up(caplog):
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    endpoint_before = os.environ.get("AWS_ENDPOINT_URL_S3")
    client = LambdaClient("s3://t-gone", concurrency=2, dashboard_address=None, inline_max=0)
    x = client.persist(da.ones((200, 200), chunks=100) + 1)
    wait(x)
    run = client.cluster.layout.run
    client.cluster.backend.s3._own_s3.kill()  # the client's own S3 server dies
    with pytest.raises(Exception, match="Could not connect to the endpoint URL"):
        client.compute((x * 2).sum()).result()
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="dask_lambda"):
        client.close()
    assert time.monotonic() - start < 20
    assert client.status == "closed"
    left = [r.getMessage() for r in caplog.records if "could not delete this run's objects"
            in r.getMessage()]
    assert len(left) == 1
    assert (f"the objects under s3://t-gone/jobs/{run}/ and s3://t-gone/results/{run}/ stay "
            "until a later client on this prefix finds them stale (lambda.stale-after), "
            "`dask-lambda cleanup --bucket s3://t-gone` removes them, or the bucket's lifecycle "
            "rule expires them" in left[0])
    gone, alive = psutil.wait_procs(
        [psutil.Process(p) for p in {c.pid for c in me.children(recursive=True)} - before],
        timeout=10)
    assert alive == []
    assert os.environ.get("AWS_ENDPOINT_URL_S3") == endpoint_before


# -- several clients open at once --------------------------------------------------------------


def _read_back(path: str) -> float:
    """Write then read ``path`` on the S3 the process-wide environment points at."""
    import s3fs

    fs = s3fs.S3FileSystem()  # the process-wide endpoint and credentials of the open client
    fs.pipe(path, b"123")
    return float(fs.cat(path))


def test_two_clients_open_at_once_each_keep_their_s3_and_close_in_any_order():
    env_before = {k: os.environ.get(k) for k in
                  ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_PROFILE")}
    first = LambdaClient("s3://t-layers-a", concurrency=1, dashboard_address=None,
                         set_as_default=False)
    second = LambdaClient("s3://t-layers-b", concurrency=1, dashboard_address=None,
                          set_as_default=False)
    try:
        assert os.environ["AWS_ENDPOINT_URL_S3"] == second.cluster.backend.s3.endpoint
        first.close()  # the older one closes first: the newer keeps its S3
        assert os.environ["AWS_ENDPOINT_URL_S3"] == second.cluster.backend.s3.endpoint
        assert _read_back("s3://t-layers-b/x") == 123.0
        f = second.submit(np.add, 1, 2)
        assert f.result() == 3
    finally:
        first.close()
        second.close()
    assert {k: os.environ.get(k) for k in env_before} == env_before

    first = LambdaClient("s3://t-layers-a", concurrency=1, dashboard_address=None,
                         set_as_default=False)
    second = LambdaClient("s3://t-layers-b", concurrency=1, dashboard_address=None,
                          set_as_default=False)
    second.close()  # the newer one closes first: the older one's S3 comes back
    try:
        assert os.environ["AWS_ENDPOINT_URL_S3"] == first.cluster.backend.s3.endpoint
        assert _read_back("s3://t-layers-a/x") == 123.0
    finally:
        first.close()
    assert {k: os.environ.get(k) for k in env_before} == env_before
