"""What a first run on real AWS meets on the invoke path that an emulator is kinder about.

Three layers: the handler's own pieces in other processes against local fakes (a fake S3
that answers 409 ConditionalRequestConflict, Lambda's runtime client's logging set-up);
the local backend, whose executor is given an ``inline-max`` above what fits in Lambda's
6 MB; and ministack (a function deployed with the project's own deploy), for trigger mode
under a reserved concurrency, the handler's refusal of late jobs, S3 request counts, and
the log of a task that crashes.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time

import dask
import numpy as np
import pytest

from dask_lambda import LambdaClient
from dask_lambda.deploy import Target, deploy, permissions
from dask_lambda.deployment import names
from dask_lambda.errors import HandlerCrashedError

from .aws_fixtures import (
    LOCAL_GLIBC,
    REGION,
    aws_environment,
    boto,
    environment,
    iam_user,
    ministack,
)

ACCOUNT = "000000000000"  # ministack's

# -- the handler's pieces, in other processes ---------------------------------------------------


def _python(script: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env})


class _ConditionalPuts(http.server.BaseHTTPRequestHandler):
    """S3's PutObject, answering each conditional PUT with the next scripted status."""

    def do_PUT(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length") or 0))
        status, code = self.server.answers.pop(0)  # type: ignore[attr-defined]
        self.server.seen.append(self.headers.get("if-none-match"))  # type: ignore[attr-defined]
        body = b"" if status == 200 else (
            f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>"
            "conflict</Message></Error>").encode()
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        if status == 200:
            self.send_header("etag", '"abc"')
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _claim_against(answers: list) -> tuple[str, list]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ConditionalPuts)
    server.answers, server.seen = list(answers), []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = _python(f"""
            import boto3
            from botocore.config import Config
            from dask_lambda_handler import trigger
            trigger._CLAIM_BACKOFF = 0.01
            s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:{server.server_port}",
                              region_name="us-east-1", aws_access_key_id="x",
                              aws_secret_access_key="x",
                              config=Config(retries={{"mode": "standard", "max_attempts": 5}}))
            print(trigger._claim(s3, "b", "run/results/r/_claims/t-a0.out", b"{{}}"))
            """)
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr
    return done.stdout.strip(), server.seen  # type: ignore[attr-defined]


def test_a_claim_that_meets_a_conflicting_write_is_retried_and_only_412_means_claimed():
    """S3 answers 409 ConditionalRequestConflict while a conflicting write is in progress, and
    says to retry; the job is someone else's only on 412 PreconditionFailed."""
    conflict, claimed = (409, "ConditionalRequestConflict"), (412, "PreconditionFailed")
    assert _claim_against([conflict, conflict, (200, "")]) == ("True", ["*", "*", "*"])
    assert _claim_against([conflict, claimed]) == ("False", ["*", "*"])


_LOGGING_TASK = """
    import logging, os, sys, time
    from dask_lambda_handler import capture
    if sys.argv[1] == "lambda":  # as awslambdaric's _setup_logging: the root logger writes to
        read, write = os.pipe()  # its telemetry descriptor, not to fds 1 or 2
        logging.getLogger().addHandler(logging.StreamHandler(os.fdopen(write, "w")))
    box = {}
    with capture.captured_output(box):
        print("printed by the task")
        sys.stdout.buffer.write(b"written as bytes\\n")
        logging.getLogger("user").warning("logged by the task")
        os.write(1, b"written by C code\\n")
        if sys.argv[2] == "crash":
            time.sleep(0.5)  # what C code writes is copied on by a thread
            print("last words")  # what Python writes is in the log when write() returns
            os._exit(3)
    print("CAPTURED", repr(box.get("log")), file=sys.stderr)
"""


def _logging_task(root: str, end: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(_LOGGING_TASK), root, end],
                          capture_output=True, text=True, timeout=60)


def test_logging_from_a_task_reaches_the_client_where_lambdas_runtime_sends_it_elsewhere():
    done = _logging_task("lambda", "return")
    captured = done.stderr.split("CAPTURED ")[-1]
    assert "[WARNING] user: logged by the task" in captured
    for text in ("printed by the task", "written as bytes", "written by C code"):
        assert text in captured


def test_a_tasks_output_is_in_the_log_before_it_crashes():
    done = _logging_task("plain", "crash")
    assert done.returncode == 3
    for text in ("printed by the task", "written as bytes", "logged by the task",
                 "written by C code", "last words"):
        assert text in done.stderr  # the function's log: its stderr


def test_the_handlers_s3_pool_holds_all_of_its_parallel_reads():
    done = _python("""
        from dask_lambda_handler import env
        print(env.s3().meta.config.max_pool_connections, env.LOADERS,
              env.transfer_concurrency())
        """, DASK_LAMBDA_TRANSFER_CONCURRENCY="8", AWS_REGION="us-east-1")
    pool, loaders, ranges = map(int, done.stdout.split())
    assert pool >= loaders * ranges == 16 * 8


# -- the local backend ----------------------------------------------------------------------------


def test_no_inline_payload_passes_lambdas_6_mb_whatever_inline_max_allows(client):
    executor = client.cluster.executor.dispatch
    allowed, executor.inline_max = executor.inline_max, 10_000_000
    try:
        before = client.lambda_stats()
        data = np.arange(600_000, dtype="f8")  # 4.8 MB: 6.4 MB as base64, over Lambda's 6 MB
        result = client.submit(lambda a: a + 1, data, pure=False).result()
        after = client.lambda_stats()
    finally:
        executor.inline_max = allowed
    np.testing.assert_array_equal(result, data + 1)
    assert after["inline_jobs"] == before["inline_jobs"]
    assert after["s3_jobs"] == before["s3_jobs"] + 1  # the job went through S3
    assert after["outputs_in_s3"] == before["outputs_in_s3"] + 1  # and so did the output


# -- ministack ------------------------------------------------------------------------------------

BUCKET = "dl-invoke"
FUNCTION = "dl-invoke"


@pytest.fixture(scope="module")
def aws(request, tmp_path_factory):
    """ministack (IAM enforced) with the function deployed (trigger on) at s3://dl-invoke/run
    by a user with exactly the deployer's policy; the tests' clients run as a user with
    exactly a user's. Yields the emulator's admin environment (for what only an
    administrator does: reserved concurrency, reading the logs)."""
    home = tmp_path_factory.mktemp("aws-home")
    with ministack(request.config, home) as endpoint:
        values = aws_environment(endpoint, request.config, home)
        with environment(values):
            deployer = iam_user("invoke-deployer", [permissions.deployer_policy(
                BUCKET, "run", FUNCTION, REGION, ACCOUNT)], deployer=True)
            user = iam_user("invoke-user", [permissions.user_policy(
                BUCKET, "run", FUNCTION, REGION, ACCOUNT)])
            with environment(deployer):
                deploy(Target(BUCKET, "run", FUNCTION, REGION), timeout=60, memory=1024,
                       trigger=True, glibc=LOCAL_GLIBC, out=lambda line: None)
            with environment(user):
                yield values


def _client(mode: str, **options) -> LambdaClient:
    return LambdaClient(f"s3://{BUCKET}/run", backend="aws", function=FUNCTION, mode=mode,
                        dashboard_address=None, **{"concurrency": 2, **options})


def _logged(aws: dict, text: str, timeout: float = 60.0) -> list[str]:
    """The function's log events that contain ``text`` (waiting up to ``timeout`` for one)."""
    with environment(aws):
        logs = boto("logs")
        deadline = time.monotonic() + timeout
        while True:
            found = [e["message"] for e in logs.filter_log_events(
                logGroupName=names.log_group(FUNCTION))["events"] if text in e["message"]]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.3)


def test_a_crashed_tasks_output_and_logging_are_in_the_functions_log(aws):
    def crash() -> None:
        import logging
        import os

        print("dl-marker: printed before the crash", flush=True)
        logging.getLogger("user").warning("dl-marker: logged before the crash")
        os._exit(3)

    with _client("invoke", retries=0) as c, \
            pytest.raises(HandlerCrashedError, match="while running the task"):
        c.submit(crash, key="crasher").result()
    assert _logged(aws, "dl-marker: printed before the crash")
    assert _logged(aws, "dl-marker: logged before the crash")


def test_trigger_mode_sends_no_more_jobs_than_the_function_may_run(aws, caplog):
    """Lambda queues asynchronous invocations it cannot run yet instead of refusing them
    (ministack drops them): jobs beyond the function's reserved concurrency would wait out the
    notification grace and be sent again."""
    with environment(aws):
        boto("lambda").put_function_concurrency(FunctionName=FUNCTION,
                                                ReservedConcurrentExecutions=1)
    try:
        with caplog.at_level(logging.WARNING, logger="dask_lambda"), \
                dask.config.set({"lambda.aws.notification-grace": 15}), \
                _client("trigger", concurrency=3, retries=1) as c:
            futures = c.map(lambda i: (time.sleep(1.0), i * 10)[1], range(3), pure=False)
            assert c.gather(futures) == [0, 10, 20]
    finally:
        with environment(aws):
            boto("lambda").delete_function_concurrency(FunctionName=FUNCTION)
    assert ("mode=\"trigger\": at most 1 jobs at once, the function's reserved concurrency "
            "(concurrency=3 asked for more)") in caplog.text


def test_a_function_switched_off_is_refused_at_start_with_how_to_switch_it_on(aws):
    """Reserved concurrency 0 (the console's Throttle button): every invoke is a 429 that never
    clears, and trigger jobs would wait in Lambda's queue."""
    from dask_lambda.errors import ConfigurationError

    with environment(aws):
        boto("lambda").put_function_concurrency(FunctionName=FUNCTION,
                                                ReservedConcurrentExecutions=0)
    try:
        with pytest.raises(ConfigurationError) as info:
            _client("invoke")
    finally:
        with environment(aws):
            boto("lambda").delete_function_concurrency(FunctionName=FUNCTION)
    assert str(info.value).startswith(
        "Lambda runs no invocations of 'dl-invoke': its reserved concurrency is 0")
    assert "`aws lambda delete-function-concurrency --function-name dl-invoke`" in str(info.value)


def test_the_function_refuses_a_trigger_job_it_can_no_longer_start_in_time(aws):
    """The client wrote: start within -1 s of being written (it has given up on the job)."""
    key = "run/jobs/0123456789ab/00/t-0123-a0" + names.TRIGGER_SUFFIX  # a run given up on
    with environment(aws):
        s3 = boto("s3")
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"not even a job", Metadata={
            "dask-lambda-options": json.dumps({"start_within": -1})})
        try:
            skipped = _logged(aws, f"skipped s3 key {key}: the job is ")
            claims = s3.list_objects_v2(Bucket=BUCKET, Prefix="run/results/0123456789ab/")
        finally:
            s3.delete_object(Bucket=BUCKET, Key=key)
        config = boto("lambda").get_function_event_invoke_config(FunctionName=FUNCTION)
    assert skipped and "had to start within -1 s: the client no longer waits for it" in skipped[0]
    assert claims.get("KeyCount", 0) == 0  # not claimed, not run
    # and Lambda drops the events the client no longer waits for (the grace, 120 s)
    assert (config["MaximumRetryAttempts"], config["MaximumEventAgeInSeconds"]) == (0, 120)


def test_trigger_modes_s3_requests_are_counted_in_the_cost(aws):
    with _client("trigger") as c:
        before = c.cost_report()
        assert c.gather(c.map(lambda i: i, range(3), pure=False)) == [0, 1, 2]
        report = c.cost_report()
        polls = c.cluster.backend.invoker.polls
    puts, gets = report["s3_puts"] - before["s3_puts"], report["s3_gets"] - before["s3_gets"]
    # each job: its PUT, the claim, the output and the completion record; and every LIST
    assert puts >= 4 * 3 + polls - 1  # (LISTs after the last record are not counted yet)
    # each job: its GET and HEAD by the handler, the record's GET by the client
    assert gets >= 3 * 3
