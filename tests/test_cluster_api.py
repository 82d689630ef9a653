"""A Lambda cluster answers what Dask users ask any cluster: scale, adapt, restart, its card
and logs, upload_file, plugins and client.run, the async shape and dask.config's scheduler.
(Also the test of dask_lambda._compat's use of distributed's private state.)"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import time

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, wait

from dask_lambda import LambdaCluster
from dask_lambda.errors import ConfigurationError, NotAvailableInLambda

from .conftest import list_keys


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    with LambdaCluster("s3://t-cluster-api/run", local_s3_endpoint=s3_endpoint,
                       concurrency=2, dashboard_address=None) as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster):
    with Client(cluster) as c:
        yield c


def _window(seconds: float) -> tuple[float, float]:
    import time

    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def _most_at_once(windows) -> int:
    events = sorted([(a, 1) for a, _ in windows] + [(b, -1) for _, b in windows])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def _threads(client) -> int:
    (worker,) = client.scheduler_info()["workers"].values()
    return worker["nthreads"]


def test_scale_sets_how_many_tasks_run_at_once(cluster, client, caplog):
    try:
        cluster.scale(4)
        assert cluster.settings.concurrency == 4 and _threads(client) == 4
        deadline = time.monotonic() + 30  # (metrics come with the worker's next heartbeat)
        while True:  # on the dashboard's worker table
            (worker,) = client.scheduler_info()["workers"].values()
            if worker["metrics"]["lambda_concurrency"] == 4:
                break
            assert time.monotonic() < deadline, worker["metrics"]
            time.sleep(0.2)
        # four environments started (cold starts would blur the count below)
        client.gather(client.map(_window, [3.0] * 4, pure=False))
        windows = client.gather(client.map(_window, [1.5] * 8, pure=False))
        assert _most_at_once(windows) == 4
        cluster.scale(1)
        windows = client.gather(client.map(_window, [0.5] * 3, pure=False))
        assert _most_at_once(windows) == 1
        with caplog.at_level(logging.INFO, logger="dask_lambda"):
            cluster.scale(0)  # nothing idles on Lambda: nothing to release, nothing removed
        assert cluster.settings.concurrency == 1 and len(client.scheduler_info()["workers"]) == 1
        assert "scale(0): a Lambda cluster has no idle workers to release" in caplog.text
        assert client.submit(sum, [1, 2]).result() == 3
        cluster.scale(cores=3)
        assert cluster.settings.concurrency == 3
        cluster.scale(memory="4 GiB")  # two 2,048 MB functions
        assert cluster.settings.concurrency == 2
    finally:
        cluster.scale(2)


@pytest.mark.parametrize("bad", [-1, 2.5, "many"])
def test_scale_with_a_bad_number_says_what_it_takes(cluster, bad):
    with pytest.raises(ConfigurationError) as info:
        cluster.scale(bad)
    assert str(info.value) == (
        "scale() takes a whole number of workers (Lambda functions running at once), cores, "
        f"or memory, not n={bad!r}, cores=None, memory=None: e.g. cluster.scale(2)")


def test_scale_beyond_what_this_machine_runs_is_capped(cluster, caplog):
    limit = cluster.backend.max_concurrency
    try:
        with caplog.at_level(logging.WARNING, logger="dask_lambda"):
            cluster.scale(10**6)
        assert cluster.settings.concurrency == limit
        assert (f"scale(1000000): the local backend runs at most {limit} tasks at once on "
                f"this machine; the cap is {limit}") in caplog.text
    finally:
        cluster.scale(2)


def test_adapt_bounds_the_concurrency_and_never_removes_the_gateway(cluster, client):
    try:
        adaptive = cluster.adapt(minimum=0, maximum=3)
        deadline = time.monotonic() + 10
        while cluster.settings.concurrency != 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert repr(adaptive) == "<LambdaAdaptive: minimum=0 maximum=3>"
        time.sleep(2)  # distributed's Adaptive would have scaled the gateway away by now
        assert len(client.scheduler_info()["workers"]) == 1
        windows = client.gather(client.map(_window, [1.0] * 6, pure=False))
        assert _most_at_once(windows) == 3
        adaptive.stop()
        assert cluster._adaptive is None and cluster.settings.concurrency == 3
    finally:
        cluster.scale(2)


def _slow_inc(x):
    import time

    time.sleep(0.05)
    return x + 1


def test_scale_adapt_and_restart_while_work_runs(cluster, client, s3):
    x = da.arange(2000, chunks=20)
    expected = (x.map_blocks(_slow_inc) * 2).sum().compute(scheduler="sync")
    future = client.compute((x.map_blocks(_slow_inc) * 2).sum())
    cluster.scale(3)
    cluster.adapt(maximum=4)
    assert future.result(timeout=300) == expected
    cluster.scale(2)

    pids = {p for p in (env.proc.pid for env in cluster.backend.invoker.environments)}
    running = client.compute((x.map_blocks(_slow_inc) + 1).sum())
    kept = client.persist(da.ones(1000, chunks=100) + 1)
    wait(kept)
    time.sleep(0.3)
    client.restart()  # as with LocalCluster: a clean scheduler, a working client
    assert running.status in ("cancelled", "lost", "pending") or running.cancelled()
    assert client.submit(sum, [1, 2]).result() == 3
    assert (x.map_blocks(_slow_inc) * 2).sum().compute() == expected
    assert len(client.scheduler_info()["workers"]) == 1
    # fresh environments
    assert not pids & {env.proc.pid for env in cluster.backend.invoker.environments}
    run = cluster.layout.run
    deadline = time.monotonic() + 15  # the outputs kept before the restart are deleted
    while list_keys(s3, "t-cluster-api", f"run/results/{run}/"):
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_the_card_and_repr_say_what_the_cluster_is(cluster, client):
    client.submit(print, "card", pure=False).result()
    text = repr(cluster)
    assert text.startswith(f"LambdaCluster({cluster.name}, backend=local, "
                           "bucket=s3://t-cluster-api/run, region=us-east-1, "
                           "memory=2,048 MB per task, timeout=300 s, concurrency=2 tasks at once, "
                           "in flight=0, invocations=")
    assert "cold starts), cost so far=$" in text
    html = cluster._repr_html_()
    for label in ("Backend:</strong> local", "Bucket:</strong> s3://t-cluster-api/run",
                  "Memory:</strong> 2,048 MB per task", "Timeout:</strong> 300 s",
                  "Concurrency:</strong> 2 tasks at once", "In flight:</strong>",
                  "Invocations:</strong>", "Cost so far:</strong> $", "Scheduler Info"):
        assert label in html
    assert "Concurrency:</strong> 2 tasks at once" in client._repr_html_()


def test_get_logs_has_what_tasks_printed_with_their_request_ids(cluster, client):
    future = client.submit(print, "a line printed in Lambda", key="printer")
    future.result()
    logs = cluster.get_logs()
    tasks = logs["Lambda tasks"]
    assert "printer (attempt 0, request " in tasks
    assert "a line printed in Lambda" in tasks
    entry = cluster.executor.logs["printer"][0]
    assert entry["request_id"] in tasks


def test_client_run_and_worker_plugins_say_what_to_do_instead(client):
    with pytest.raises(NotAvailableInLambda) as info:
        client.run(os.getpid)
    assert str(info.value).startswith(
        "client.run(f) runs f on each worker, and this cluster's one worker is the gateway in "
        "your own process: its tasks run in Lambda functions, which client.run cannot reach.")

    from distributed.diagnostics.plugin import Environ, WorkerPlugin

    class Setup(WorkerPlugin):
        def setup(self, worker):
            pass

    with pytest.raises(NotAvailableInLambda) as info:
        client.register_plugin(Setup())
    assert str(info.value).startswith(
        "worker plugin Setup would run only on the gateway worker in this process, not where "
        "tasks run (Lambda functions have no Dask worker): do the setup inside the task "
        "function")
    with pytest.raises(NotAvailableInLambda) as info:
        client.register_plugin(Environ({"A": "1"}))
    assert str(info.value) == (
        "nanny plugin Environ prepares Dask worker processes, and a Lambda cluster has none "
        "(its tasks run in Lambda functions): set the variables inside the task function "
        "(os.environ[...] = ...), or pass the values as arguments.")


def test_modules_beside_the_script_and_uploaded_files_reach_tasks(tmp_path, s3_endpoint):
    """``import helpers`` inside a task, ``from . import x`` in a local package, and a file
    sent with ``upload_file``: as the README promises, they travel with the jobs."""
    (tmp_path / "helpers.py").write_text("def double(x):\n    return 2 * x\n")
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "a.py").write_text("def f(x):\n    from . import b\n"
                                             "    return b.g(x)\n")
    (tmp_path / "mypkg" / "b.py").write_text("def g(x):\n    return x + 100\n")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "extra.py").write_text("VALUE = 7\n")
    (tmp_path / "analysis.py").write_text(textwrap.dedent(f"""
        from distributed import Client
        from dask_lambda import LambdaCluster

        def uses_helper(x):
            import helpers
            return helpers.double(x)

        def uses_extra():
            import extra
            return extra.VALUE

        if __name__ == "__main__":
            import mypkg.a
            with LambdaCluster("s3://t-shipping", local_s3_endpoint={s3_endpoint!r},
                               concurrency=1, dashboard_address=None) as cluster:
                with Client(cluster) as client:
                    print(client.submit(uses_helper, 21).result())
                    print(client.submit(mypkg.a.f, 1).result())
                    client.upload_file("elsewhere/extra.py")
                    print(client.submit(uses_extra, pure=False).result())
    """))
    out = subprocess.run([sys.executable, "analysis.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["42", "101", "7"]


def test_the_async_shape_and_dask_config_scheduler(s3_endpoint):
    async def go():
        async with LambdaCluster("s3://t-async", local_s3_endpoint=s3_endpoint, concurrency=2,
                                 dashboard_address=None, asynchronous=True) as cluster:
            async with Client(cluster, asynchronous=True) as client:
                big = await client.submit(np.ones, 200_000)  # kept in S3: still a value here
                assert isinstance(big, np.ndarray) and big.sum() == 200_000
                await cluster.scale(3)
                assert cluster.settings.concurrency == 3
                return await client.compute(da.ones(100, chunks=10).sum())

    assert asyncio.run(go()) == 100

    with LambdaCluster("s3://t-config-scheduler", local_s3_endpoint=s3_endpoint,
                       concurrency=2, dashboard_address=None) as cluster:
        with Client(cluster, set_as_default=False) as client:
            with dask.config.set(scheduler=client):
                value = (da.ones((300, 300), chunks=100) @ da.ones((300, 300), chunks=100)).sum()
                assert value.compute() == 300 * 300 * 300
            assert cluster.lambda_stats()["tasks"] > 0
