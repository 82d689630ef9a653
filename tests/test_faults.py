"""Fault injection: every fault is survived with the fault-free result, or fails with the
documented error in bounded time; never a hang, a wrong result or a leftover object.

Each test runs a graph of 200+ tasks on the local backend (handler processes, S3 over HTTP)
with faults injected into a share of them: environment kills, duplicate deliveries and
throttling by the backend's `FaultPlan`; S3 503/500 answers and lost objects by the S3
server's fault injector; timeouts and out-of-memory by the tasks themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

import dask
import dask.array as da
import numpy as np
import psutil
import pytest
from dask_lambda_handler import s3keys
from distributed import wait

from dask_lambda import LambdaClient, scratch
from dask_lambda.backends.local.faults import FaultPlan
from dask_lambda.errors import (
    FunctionError,
    HandlerCrashedError,
    LambdaOutOfMemoryError,
    LambdaTimeoutError,
    PermissionDeniedError,
    ResultLostError,
)

from .conftest import list_keys, s3_server

CHUNKS = 200


def graph():
    """~270 tasks: 200 fused blocks (random, *2, +1, partial sums) and a tree reduction."""
    x = da.random.default_rng(7).random(CHUNKS * 500, chunks=500)
    return (x * 2 + 1).sum(), (x**2).mean(axis=0)


EXPECTED = dask.compute(*graph(), scheduler="sync")


def run(endpoint, s3, bucket, *, expect=None, check_leftovers=True, **options):
    """Run the graph with a fresh client; return its stats. Afterwards the bucket is empty."""
    options = {"concurrency": 2, "inline_max": 0, "dashboard_address": None, **options}
    t0 = time.monotonic()
    with LambdaClient(f"s3://{bucket}/f", local_s3_endpoint=endpoint, **options) as client:
        if expect is None:
            got = dask.compute(*graph())
            np.testing.assert_allclose(got, EXPECTED)
        else:
            with pytest.raises(expect[0], match=expect[1]):
                dask.compute(*graph())
        stats = client.lambda_stats()
    assert time.monotonic() - t0 < 240  # bounded: no hang (2 noisy cores, cold starts)
    if expect is None:
        assert stats["tasks"] >= 200
    if check_leftovers:
        assert list_keys(s3, bucket) == []
    return stats


def fired(endpoint) -> dict:
    return json.loads(urllib.request.urlopen(endpoint + "/__faults__").read())


def s3_client(endpoint):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


# -- the execution environment ----------------------------------------------------------


def test_killed_environments_are_retried(s3_endpoint, s3):
    stats = run(s3_endpoint, s3, "f-kill", local_faults=FaultPlan(kill=0.03, seed=1))
    assert stats["retries"] >= 4  # ~3% of ~270 first attempts were killed
    assert stats["errors"] == 0


def test_environments_killed_every_attempt_fail_with_the_documented_error(s3_endpoint, s3):
    run(s3_endpoint, s3, "f-kill-all", retries=1,
        local_faults=FaultPlan(kill=0.02, seed=2, every_attempt=True),
        expect=(HandlerCrashedError, r"Runtime exited with code -9 .* Gave up after 2 attempts "
                                     r"\(retries=1\)"))


def test_duplicate_deliveries_change_nothing(s3_endpoint, s3):
    stats = run(s3_endpoint, s3, "f-dup", local_faults=FaultPlan(duplicate=0.15, seed=3))
    assert stats["invocations"] > stats["tasks"] + 20  # the duplicates really ran


def test_throttling_is_backed_off_and_retried(s3_endpoint, s3):
    stats = run(s3_endpoint, s3, "f-throttle", local_faults=FaultPlan(throttle=0.15, seed=4))
    assert stats["throttled"] >= 20
    assert stats["invocations"] == stats["tasks"]  # throttled calls never ran


def slow_block(block, block_info=None):
    if block_info is not None and block_info[0]["chunk-location"][0] % 50 == 7:
        time.sleep(30)
    return block


def test_tasks_past_the_timeout_fail_in_bounded_time(s3_endpoint, s3):
    def timed_graph():
        x = da.random.default_rng(7).random(CHUNKS * 500, chunks=500)
        return x.map_blocks(slow_block, dtype=float).sum()

    with LambdaClient("s3://f-timeout/f", local_s3_endpoint=s3_endpoint, concurrency=2,
                      function_timeout=3, dashboard_address=None) as client:
        t0 = time.monotonic()
        with pytest.raises(LambdaTimeoutError, match=r"Task timed out after 3.00 seconds"):
            timed_graph().compute()
        assert time.monotonic() - t0 < 60
        assert client.lambda_stats()["retries"] == 0  # a timeout is never re-run
    assert list_keys(s3, "f-timeout") == []


def hungry_block(block, block_info=None):
    if block_info is not None and block_info[0]["chunk-location"][0] % 40 == 3:
        np.ones(120_000_000).sum()  # ~960 MB, touched
    return block


def _hungry_graph():
    x = da.random.default_rng(7).random(CHUNKS * 500, chunks=500)
    return x.map_blocks(hungry_block, dtype=float).sum()


def test_out_of_memory_fails_with_the_documented_error(s3_endpoint, s3):
    with LambdaClient("s3://f-oom/f", local_s3_endpoint=s3_endpoint, concurrency=2,
                      memory=600, dashboard_address=None) as client:
        with pytest.raises(LambdaOutOfMemoryError,
                           match=r"The task used \d+ MB, the function's 600 MB"):
            _hungry_graph().compute()
        assert client.lambda_stats()["retries"] == 0
    assert list_keys(s3, "f-oom") == []


def test_out_of_memory_is_retried_with_more_memory_when_asked(s3_endpoint, s3):
    with LambdaClient("s3://f-oom-retry/f", local_s3_endpoint=s3_endpoint, concurrency=2,
                      memory=600, oom_retry_memory=2048, dashboard_address=None) as client:
        got = _hungry_graph().compute()
        want = da.random.default_rng(7).random(CHUNKS * 500, chunks=500).sum()
        np.testing.assert_allclose(got, want.compute(scheduler="sync"))
        assert client.lambda_stats()["retries"] == 5  # chunks 3, 43, 83, 123, 163
    assert list_keys(s3, "f-oom-retry") == []


# -- S3 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 500])
def test_s3_errors_on_put_and_get_are_retried(status):
    plan = {"seed": 5, "rules": [{"status": status, "methods": ["PUT", "GET"],
                                  "prefix": "f/", "share": 0.03, "times": 1}]}
    with s3_server(plan) as endpoint:
        stats = run(endpoint, s3_client(endpoint), f"f-s3-{status}")
        assert fired(endpoint)["0"] >= 10  # jobs and results of ~3% of the tasks
    assert stats["errors"] == 0


def test_persistent_s3_errors_fail_in_bounded_time():
    plan = {"seed": 6, "rules": [{"status": 500, "methods": ["PUT"], "prefix": "f/results/",
                                  "share": 0.02}]}
    with s3_server(plan) as endpoint:
        run(endpoint, s3_client(endpoint), "f-s3-down", check_leftovers=False,
            expect=(Exception, r"InternalError"))
        assert list_keys(s3_client(endpoint), "f-s3-down") == []


def test_lost_outputs_read_by_the_gateway_are_recomputed():
    # first attempts only: a lost output is lost once (what a retry writes is a new object)
    plan = {"seed": 8, "rules": [{"lose": True, "prefix": "f/results/", "suffix": "-a0.out",
                                  "share": 0.2}]}
    with s3_server(plan) as endpoint:
        stats = run(endpoint, s3_client(endpoint), "f-lost", locality=False)
        assert fired(endpoint)["0"] >= 20
    assert stats["retries"] >= 20


def test_lost_outputs_kept_in_s3_fail_with_the_documented_error():
    plan = {"seed": 9, "rules": [{"lose": True, "prefix": "f/results/", "share": 0.05}]}
    with s3_server(plan) as endpoint:
        run(endpoint, s3_client(endpoint), "f-lost-kept",
            expect=(ResultLostError, r"was deleted before it was read"))


# -- S3 refusing an action (403 AccessDenied) -----------------------------------------------

#: Each bucket refuses one kind of request (403 with S3's AccessDenied XML body): {bucket:
#: (HTTP method, key prefix)}. Only one side makes each kind, so the refusal hits that side.
DENIALS = {
    "f-deny-job-put": ("PUT", "f/jobs/"),  # the client uploads a job
    "f-deny-result-get": ("GET", "f/results/"),  # the client downloads an output (gather)
    "f-deny-job-get": ("GET", "f/jobs/"),  # the function reads its job
    "f-deny-input-get": ("GET", "f/results/"),  # the function reads another task's output
    "f-deny-output-put": ("PUT", "f/results/"),  # the function writes its output
}
DEPLOY_HINT = ("`dask-lambda deploy --bucket s3://{b}/f --function dask-lambda-local --region "
               "us-east-1` again, which gives the role s3:GetObject on f/jobs/* and f/results/* "
               "and s3:PutObject on f/results/*")


@pytest.fixture(scope="module")
def denying_s3():
    plan = {"rules": [{"status": 403, "bucket": bucket, "methods": [method], "prefix": prefix}
                      for bucket, (method, prefix) in DENIALS.items()]}
    with s3_server(plan) as endpoint:
        yield endpoint


@contextlib.contextmanager
def refusing(endpoint, bucket):
    """A client whose bucket refuses one kind of request. Afterwards: it was refused exactly
    once (a 403 is not retried), nothing hung, and the bucket is empty."""
    t0 = time.monotonic()
    with LambdaClient(f"s3://{bucket}/f", local_s3_endpoint=endpoint, concurrency=1,
                      inline_max=0, dashboard_address=None) as client:
        yield client
    assert time.monotonic() - t0 < 90
    assert fired(endpoint).get(str(list(DENIALS).index(bucket))) == 1
    assert list_keys(s3_client(endpoint), bucket) == []


def assert_message(message, expected, key_start, key_end):
    """``message == expected`` where ``{key}`` in ``expected`` stands for one object key
    (random run id and attempt token) that starts with ``key_start``, ends with ``key_end``,
    and a trailing ``{request}`` for the invocation's request id."""
    if expected.endswith(" (request {request})"):
        expected = expected[:-len(" (request {request})")]
        found = re.search(r" \(request [0-9a-f-]{36}\)$", message)
        assert found, message
        message = message[:found.start()]
    before, after = expected.split("{key}")
    assert message.startswith(before), message
    assert message.endswith(after), message
    key = message[len(before):len(message) - len(after)]
    assert key.startswith(key_start) and key.endswith(key_end) and " " not in key, message


def test_s3_refusing_the_clients_job_upload_names_the_permission(denying_s3):
    bucket = "f-deny-job-put"
    with refusing(denying_s3, bucket) as client:
        with pytest.raises(PermissionDeniedError) as info:
            client.submit(np.ones, 10, key="up").result()
        run = client.cluster.layout.run
        assert client.lambda_stats()["invocations"] == 0  # nothing was invoked
    assert_message(str(info.value), (
        f"task 'up': AWS refused s3:PutObject on s3://{bucket}/{{key}} (AccessDenied): allow "
        f"s3:PutObject on arn:aws:s3:::{bucket}/f/jobs/* for the credentials this client uses "
        "(`aws sts get-caller-identity` shows whose they are). A client needs s3:GetObject, "
        f"s3:PutObject and s3:DeleteObject on arn:aws:s3:::{bucket}/f/* and s3:ListBucket on "
        f"arn:aws:s3:::{bucket} (README, Run on AWS: Permissions)."),
        f"f/jobs/{run}/{s3keys.task_token('up')}-", ".job")


def test_s3_refusing_the_clients_result_download_names_the_permission(denying_s3):
    bucket = "f-deny-result-get"
    with refusing(denying_s3, bucket) as client:
        future = client.submit(np.ones, 10, key="down")
        wait(future)  # it ran: its output is in S3 until it is gathered
        assert future.status == "finished"
        with pytest.raises(PermissionDeniedError) as info:
            future.result()
        run = client.cluster.layout.run
    assert_message(str(info.value), (
        f"AWS refused s3:GetObject on s3://{bucket}/{{key}} (AccessDenied): allow s3:GetObject "
        f"on arn:aws:s3:::{bucket}/f/results/* for the credentials this client uses (`aws sts "
        "get-caller-identity` shows whose they are). A client needs s3:GetObject, s3:PutObject "
        f"and s3:DeleteObject on arn:aws:s3:::{bucket}/f/* and s3:ListBucket on "
        f"arn:aws:s3:::{bucket} (README, Run on AWS: Permissions)."),
        f"f/results/{run}/{s3keys.task_token('down')}-", "-a0.out")


def handler_refusal(task: str, action: str, bucket: str, area: str) -> str:
    """The message for the function's role refused ``action`` under ``f/<area>/``."""
    return (f"task '{task}': S3PermissionError: the function's role may not {action} on "
            f"s3://{bucket}/{{key}} (AccessDenied): allow {action} on "
            f"arn:aws:s3:::{bucket}/f/{area}/* in the role's policy, or run "
            + DEPLOY_HINT.format(b=bucket) + " (request {request})")


def test_s3_refusing_the_functions_job_read_names_the_permission(denying_s3):
    bucket = "f-deny-job-get"
    with refusing(denying_s3, bucket) as client:
        with pytest.raises(FunctionError) as info:
            client.submit(np.ones, 10, key="job").result()
        run = client.cluster.layout.run
        assert client.lambda_stats()["retries"] == 0  # not the environment's fault: no retry
    assert info.value.error_type == "S3PermissionError"  # the handler's type, for code to test
    assert_message(str(info.value), handler_refusal("job", "s3:GetObject", bucket, "jobs"),
                   f"f/jobs/{run}/{s3keys.task_token('job')}-", "-a0.job")


def test_s3_refusing_the_functions_input_read_names_the_permission(denying_s3):
    bucket = "f-deny-input-get"
    with refusing(denying_s3, bucket) as client:
        first = client.submit(np.ones, 10, key="first")
        wait(first)  # its output stays in S3 (never gathered here): the next task reads it
        with pytest.raises(FunctionError) as info:
            client.submit(np.sum, first, key="second").result()
        run = client.cluster.layout.run
    assert_message(str(info.value),
                   handler_refusal("second", "s3:GetObject", bucket, "results"),
                   f"f/results/{run}/{s3keys.task_token('first')}-", "-a0.out")


def test_s3_refusing_the_functions_output_write_names_the_permission(denying_s3):
    bucket = "f-deny-output-put"
    with refusing(denying_s3, bucket) as client:
        with pytest.raises(FunctionError) as info:
            client.submit(np.ones, 10, key="out").result()
        run = client.cluster.layout.run
    assert_message(str(info.value), handler_refusal("out", "s3:PutObject", bucket, "results"),
                   f"f/results/{run}/{s3keys.task_token('out')}-", "-a0.out")


# -- the client --------------------------------------------------------------------------


def test_client_killed_mid_run_leaves_nothing_running_and_next_client_cleans_up(
        s3_endpoint, s3, tmp_path):
    bucket = "f-killed-client"
    script = textwrap.dedent(f"""
        import time, dask.array as da
        from dask_lambda import LambdaClient

        def slow(block):
            time.sleep(0.2)
            return block

        client = LambdaClient("s3://{bucket}/f", local_s3_endpoint={s3_endpoint!r},
                              concurrency=2, inline_max=0, dashboard_address=None)
        print("started", client.cluster.backend.directory, client.cluster._local_directory,
              flush=True)
        da.ones(10_000, chunks=10).map_blocks(slow).sum().compute()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    started, *directories = proc.stdout.readline().split()
    assert started == "started" and len(directories) == 2
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list_keys(s3, bucket, "f/jobs/")) < 4:
        time.sleep(0.2)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children  # execution environments were running
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    gone, alive = psutil.wait_procs(children, timeout=15)
    assert alive == []  # the environments exit when their client dies: no runaway work
    left = list_keys(s3, bucket)
    assert any("/jobs/" in k for k in left) and any(k.startswith("f/runs/") for k in left)
    assert all(os.path.isdir(d) for d in directories)  # nothing could remove them

    # A later client removes what the dead one left once it is stale: here after three missed
    # heartbeats of a second (ages are measured on S3's clock, in whole seconds).
    time.sleep(4.5)
    with LambdaClient(f"s3://{bucket}/f", local_s3_endpoint=s3_endpoint, concurrency=1,
                      heartbeat=1, stale_after=3, dashboard_address=None) as client:
        assert sum(client.cluster.stale_runs_removed.values()) == len(left)
        assert client.submit(sum, [1, 2]).result() == 3
        # ... and the temporary directories the dead one left on this machine
        assert not any(os.path.exists(d) for d in directories)
    assert list_keys(s3, bucket) == []


def test_only_the_temporary_directories_of_ended_clients_are_swept(tmp_path):
    def made(kind: str, owner: str | None) -> str:
        path = tmp_path / f"{scratch.PREFIX}{kind}-x"
        path.mkdir()
        if owner is not None:
            (path / scratch.OWNER_FILE).write_text(owner)
        return str(path)

    here = scratch._machine()
    me = scratch._identity(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid that no longer runs
    dead = made("dead", f"{here} {child.pid} 1.000")
    reused = made("reused", f"{here} {os.getpid()} 1.000")  # this pid, another process
    alive = made("alive", f"{here} {me}")
    elsewhere = made("elsewhere", f"another-host|pid:[1] {child.pid} 1.000")
    unowned = made("unowned", None)
    other = tmp_path / "not-ours"
    other.mkdir()
    assert sorted(scratch.sweep(str(tmp_path))) == sorted([dead, reused])
    assert all(os.path.isdir(p) for p in (alive, elsewhere, unowned, other))
