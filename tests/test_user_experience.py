"""Around a compute: logs, routing, dashboard metrics, progress, cost, joblib."""

from __future__ import annotations

import logging
import os
import time

import dask
import numpy as np
import pytest
from distributed import progress, wait

from dask_lambda.cost import CostMeter
from dask_lambda.pricing import US_EAST_1

CLIENT_OPTIONS = {"inline_max": 10_000}


def chatty(x):
    print(f"hello from lambda, x={x}")
    logging.getLogger("user.code").warning("a warning from inside the task")
    os.write(2, b"straight to fd 2\n")
    return x * 2


def test_what_a_task_prints_reaches_the_client(client, caplog):
    with caplog.at_level(logging.INFO, logger="dask_lambda.task_output"):
        fut = client.submit(chatty, 21, key="chatty-task")
        assert fut.result() == 42
    [entry] = client.get_task_logs(fut)
    assert "hello from lambda, x=21" in entry["text"]
    assert "a warning from inside the task" in entry["text"]
    assert "straight to fd 2" in entry["text"]
    assert entry["request_id"] and entry["attempt"] == "0"
    assert client.get_task_logs("chatty-task") == [entry]
    assert any("hello from lambda, x=21" in r.getMessage() and "chatty-task" in r.getMessage()
               for r in caplog.records)
    assert client.get_task_logs("never-ran") == []


def test_annotated_tasks_run_locally_and_read_inputs_from_s3(client):
    def make():
        return np.arange(100_000, dtype="f8")  # 800 KB: kept in S3

    def where(a):
        return os.getpid(), float(a.sum())

    big = dask.delayed(make)()
    with dask.annotate(executor="local"):
        here = dask.delayed(where)(big)
    there = dask.delayed(where)(big)
    before = client.cluster.local_executor.tasks
    (pid_here, s1), (pid_there, s2) = dask.compute(here, there)
    assert pid_here == os.getpid() != pid_there
    assert s1 == s2 == np.arange(100_000).sum()
    assert client.cluster.local_executor.tasks == before + 1


def test_dashboard_worker_table_shows_the_lambda_side(client):
    wait(client.map(lambda i: i, range(5)))
    deadline = time.monotonic() + 20
    metrics: dict = {}
    while time.monotonic() < deadline:
        [info] = client.scheduler_info()["workers"].values()
        metrics = info["metrics"]
        if metrics.get("lambda_invocations", 0) >= 5:
            break
        time.sleep(0.2)
    assert metrics["lambda_invocations"] >= 5
    for name in ("lambda_in_flight", "lambda_cold_starts", "lambda_retries", "lambda_throttled",
                 "lambda_bytes_sent", "lambda_bytes_received", "lambda_cost_usd"):
        assert name in metrics
    assert metrics["lambda_cold_starts"] >= 1 and metrics["lambda_cost_usd"] > 0


def test_progress_bar_works(client, capsys):
    futures = client.map(lambda i: i + 1, range(30), pure=False)
    progress(futures, notebook=False)
    out = capsys.readouterr().out
    assert "100% Completed" in out
    assert client.gather(futures) == list(range(1, 31))


def test_cost_estimate_equals_a_hand_computation():
    meter = CostMeter(memory_mb=2048)
    meter.settle(1500, s3_puts=1, s3_gets=2)
    meter.settle(1500, s3_puts=2, s3_gets=2)
    # 2 requests x $0.20/M + 3 s x 2 GB x $0.0000166667 + 3 PUT x $0.005/1000
    # + 4 GET x $0.0004/1000
    assert meter.gb_seconds == 6.0
    assert meter.dollars() == pytest.approx(0.0000004 + 0.0001000002 + 0.000015 + 0.0000016,
                                            rel=1e-12)


def test_cost_report_of_a_real_run(client):
    start = client.cost_report()
    n0 = len(client.cluster.executor.dispatch.invocations)
    client.gather(client.map(lambda i: np.ones(50_000) * i, range(12), pure=False))
    report = client.cost_report()
    runs = list(client.cluster.executor.dispatch.invocations)[n0:]
    assert report["invocations"] - start["invocations"] == len(runs) == 12
    ms = sum(max(1, int(np.ceil(r["duration_s"] * 1000))) for r in runs)
    assert report["billed_ms"] - start["billed_ms"] == ms
    puts = sum(r["s3_puts"] for r in runs)
    gets = sum(r["s3_gets"] for r in runs)
    assert puts == 12  # each 400 KB output was written to S3 by its handler
    by_hand = (12 * US_EAST_1.request + ms / 1000 * 2048 / 1024 * US_EAST_1.gb_second_x86
               + puts * US_EAST_1.s3_put + gets * US_EAST_1.s3_get)
    assert report["dollars"] - start["dollars"] == pytest.approx(by_hand, rel=1e-9)


def test_gridsearchcv_through_joblib_runs_on_lambda(client):
    joblib = pytest.importorskip("joblib")
    from sklearn.datasets import make_classification
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = make_classification(n_samples=200, n_features=8, random_state=0)
    grid = {"C": [0.1, 1, 10], "gamma": ["scale", 0.01]}
    local = GridSearchCV(SVC(), grid, cv=3).fit(X, y)
    before = client.lambda_stats()["invocations"]
    with joblib.parallel_backend("dask"):
        remote = GridSearchCV(SVC(), grid, cv=3).fit(X, y)
    assert remote.best_params_ == local.best_params_
    assert remote.best_score_ == pytest.approx(local.best_score_)
    assert client.lambda_stats()["invocations"] - before >= 6  # the fits ran in Lambda
