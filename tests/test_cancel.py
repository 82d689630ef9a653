"""A task nobody wants any more stops running: cancelled, or its last future released."""

from __future__ import annotations

import time

import numpy as np
import psutil
from distributed import wait

from dask_lambda import LambdaClient
from dask_lambda.backends.simulated import LambdaModel, SimulatedBackend

from .conftest import list_keys

CLIENT_OPTIONS = {"inline_max": 1000}


def _sleep_then(seconds: float, value=None):
    import os
    import time

    start = time.time()
    time.sleep(seconds)
    return value if value is not None else (os.getpid(), start, time.time())


def _running(client, key, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while key not in client.cluster.executor._by_key:
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.05)


def _environment_pids(client) -> set[int]:
    return {env.proc.pid for env in client.cluster.backend.invoker.environments}


def test_cancelling_a_running_task_stops_it_and_frees_its_slot(client):
    long = client.submit(_sleep_then, 20, key="long-task")
    _running(client, long.key)
    time.sleep(1.0)  # it is in its execution environment now
    busy = _environment_pids(client)
    before = client.lambda_stats()["cancelled"]
    long.cancel()
    start = time.monotonic()
    # with concurrency=2, two 2 s tasks run side by side: the slot came back
    shorts = [client.submit(_sleep_then, 2, key=f"short-{n}") for n in "ab"]
    (pid_a, start_a, end_a), (pid_b, start_b, end_b) = client.gather(shorts)
    assert max(start_a, start_b) < min(end_a, end_b)  # they overlapped
    assert time.monotonic() - start < 15  # not after the 20 s task
    assert client.lambda_stats()["cancelled"] == before + 1
    gone = busy - _environment_pids(client)
    assert gone and all(not psutil.pid_exists(p) or psutil.Process(p).status()
                        == psutil.STATUS_ZOMBIE for p in gone)  # its environment was killed
    assert long.status == "cancelled"


def test_an_output_whose_last_future_is_released_mid_run_does_not_stay(client, s3):
    run = client.cluster.layout.run
    bucket = client.cluster.bucket
    future = client.submit(_sleep_then, 3, np.ones(10_000), key="dropped-mid-run")
    _running(client, future.key)
    del future
    time.sleep(5)  # past the task's end
    assert list_keys(s3, bucket, f"run/results/{run}/") == []
    kept = client.submit(np.ones, 10_000, key="kept-output")  # a kept output does stay
    wait(kept)
    assert len(list_keys(s3, bucket, f"run/results/{run}/")) == 1


def test_a_cancelled_key_computes_again_when_submitted_anew(client):
    first = client.submit(_sleep_then, 3, 41, key="asked-again")
    _running(client, first.key)
    first.cancel()
    deadline = time.monotonic() + 30
    while client.cluster.scheduler.tasks.get("asked-again") is not None or (
            "asked-again" in client.cluster.executor._by_key):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert first.status == "cancelled"
    del first
    # (resubmitting a key at once races with its cancellation inside distributed's client,
    # with LocalCluster as here: wait until the scheduler and the gateway forgot it)
    assert client.submit(_sleep_then, 0.1, 42, key="asked-again").result(timeout=60) == 42


def _slow_if_named_slow(event: dict) -> float:
    return 30.0 if "slow" in event.get("job_key", "") else 0.1


def test_cancelling_on_the_aws_invoke_path_stops_waiting_and_frees_the_slot(s3_endpoint):
    # (the abandoned invocation runs on in Lambda, holding one of the account's slots)
    model = LambdaModel(invoke_latency=0.01, cold_start=0.01, duration=_slow_if_named_slow,
                        account_concurrency=10)
    backend = SimulatedBackend(model, s3_endpoint=s3_endpoint)
    with LambdaClient("s3://t-cancel-sim/run", backend=backend, concurrency=1, function_timeout=60,
                      dashboard_address=None) as client:
        slow = client.submit(str, 1, key="slow-sim")
        _running(client, slow.key)
        time.sleep(0.5)
        slow.cancel()
        start = time.monotonic()
        assert client.submit(str, 2, key="fast-sim").result(timeout=20) is None  # the model's
        assert time.monotonic() - start < 10  # not after the 30 s invocation
        assert client.lambda_stats()["cancelled"] == 1
