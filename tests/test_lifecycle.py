"""Start, configuration errors, default-scheduler behaviour and a clean close."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import dask
import dask.array as da
import numpy as np
import psutil
import pytest
from distributed import default_client

from dask_lambda import LambdaClient
from dask_lambda.errors import ConfigurationError

from .conftest import list_keys


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "aws"}, 'backend="aws" needs an S3 bucket for job and result objects '
         '(only the local backend makes a private one). Setting the bucket (the first '
         'argument; lambda.bucket, DASK_LAMBDA__BUCKET) takes "s3://bucket/prefix" or '
         '"bucket"; e.g. LambdaClient("s3://my-bucket/dask", ...)'),
        ({"bucket": "My_Bucket/data"}, "'My_Bucket' is not a valid S3 bucket name (3-63 "
         "characters: lowercase letters, digits, '-' and '.', starting and ending with a letter "
         "or digit, not an IP address). Setting the bucket (the first argument; lambda.bucket, "
         "DASK_LAMBDA__BUCKET) takes \"s3://bucket/prefix\" or \"bucket\"; did you mean "
         "LambdaClient(\"s3://my-bucket/data\", ...)?"),
        ({"bucket": "s3://"}, "'' is not a valid S3 bucket name"),
        ({"bucket": "gs://bucket/x"}, "'gs://bucket/x' is not an S3 URL: use an s3:// URL or a "
         "bare bucket name. Setting the bucket (the first argument; lambda.bucket, "
         "DASK_LAMBDA__BUCKET) takes \"s3://bucket/prefix\" or \"bucket\"; e.g. "
         "LambdaClient(\"s3://my-bucket/dask\", ...)"),
        ({"bucket": 42}, 'bucket=42 is not valid: a value of type int is not a bucket such as '
         '"s3://my-bucket/dask"'),
        ({"bucket": "s3://ok-bucket", "backend": "lcoal"}, 'backend="lcoal" is not valid: '
         "choose one of 'local', 'aws'. Setting `backend=` (lambda.backend, "
         'DASK_LAMBDA__BACKEND) takes "local" or "aws", or a Backend instance; did you mean '
         'LambdaClient(..., backend="local")?'),
        ({"bucket": "ok-bucket", "concurrency": 0}, "concurrency=0 is not valid: it must be at "
         "least 1. Setting `concurrency=` (lambda.concurrency, DASK_LAMBDA__CONCURRENCY) takes a "
         "whole number of tasks running at once; e.g. LambdaClient(..., concurrency="),
        ({"bucket": "ok-bucket", "memory": 64}, "memory=64 is not valid: 64 MB is outside "
         "Lambda's 128-10240 MB. Setting `memory=` (lambda.memory, DASK_LAMBDA__MEMORY) takes a "
         "number of MB or a size such as \"4 GiB\"; e.g. LambdaClient(..., memory=2048)"),
        ({"bucket": "ok-bucket", "function_timeout": 1000}, "function_timeout=1000 is not "
         "valid: 1000 s is outside Lambda's (0, 900] seconds. Setting `function_timeout=` "
         "(lambda.timeout, DASK_LAMBDA__TIMEOUT) takes seconds (at most 900) or a duration such "
         "as \"5 minutes\"; e.g. LambdaClient(..., function_timeout=900)"),
    ],
)
def test_bad_input_is_a_clear_error_at_once(kwargs, message):
    children = psutil.Process().children(recursive=True)
    with pytest.raises(ConfigurationError) as info:
        LambdaClient(**kwargs)
    assert message in str(info.value)
    assert psutil.Process().children(recursive=True) == children  # nothing was started


def test_settings_come_from_dask_config_with_arguments_first(s3_endpoint):
    with dask.config.set({"lambda.bucket": "s3://cfg-bucket/pfx", "lambda.concurrency": 1}):
        with LambdaClient(local_s3_endpoint=s3_endpoint, dashboard_address=None,
                          timeout=30) as client:
            cluster = client.cluster
            assert (cluster.bucket, cluster.prefix) == ("cfg-bucket", "pfx")
            assert cluster.settings.concurrency == 1
            assert cluster.settings.timeout == 30.0
            assert cluster.settings.memory == 2048  # the packaged default


def test_environment_variables_configure_the_client(s3_endpoint):
    script = textwrap.dedent(f"""
        from dask_lambda import LambdaClient
        with LambdaClient(local_s3_endpoint={s3_endpoint!r}, dashboard_address=None) as c:
            print(c.cluster.bucket, c.cluster.settings.concurrency, c.submit(sum, [1, 2]).result())
    """)
    env = dict(os.environ, DASK_LAMBDA__BUCKET="env-bucket", DASK_LAMBDA__CONCURRENCY="1")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.split() == ["env-bucket", "1", "3"], out.stderr[-2000:]


def test_close_removes_every_object_the_run_made(s3_endpoint, s3):
    bucket = "t-close-cleanup"
    # inline_max=0: every job and output travels as an S3 object
    with LambdaClient(f"s3://{bucket}/p", local_s3_endpoint=s3_endpoint, inline_max=0,
                      concurrency=2, dashboard_address=None) as client:
        run = client.cluster.layout.run
        x = da.ones((200, 200), chunks=50)
        assert (x + x.T).sum().compute() == 80_000
        stats = client.lambda_stats()
        assert stats["s3_jobs"] == stats["tasks"] > 0
        seen_during_run = list_keys(s3, bucket, "p/")
        persisted = (x * 2).persist()
        client.gather(persisted.to_delayed().flatten().tolist())
    assert client.status == "closed"
    assert list_keys(s3, bucket, f"p/jobs/{run}/") == []
    assert list_keys(s3, bucket, f"p/results/{run}/") == []
    assert list_keys(s3, bucket) == []
    assert isinstance(seen_during_run, list)


def test_close_stops_every_process_and_the_s3_server():
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    env_before = os.environ.get("AWS_ENDPOINT_URL_S3")
    client = LambdaClient("s3://own-server", concurrency=2, dashboard_address=None)
    endpoint = client.cluster.backend.s3.endpoint
    port = int(endpoint.rsplit(":", 1)[1])
    assert os.environ["AWS_ENDPOINT_URL_S3"] == endpoint  # s3:// works in the client meanwhile
    assert client.submit(np.arange(5).sum).result() == 10
    started = {p.pid for p in me.children(recursive=True)} - before
    assert len(started) >= 2  # the S3 server and at least one execution environment
    client.close()
    assert {p.pid for p in me.children(recursive=True)} - before == set()
    for pid in started:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert os.environ.get("AWS_ENDPOINT_URL_S3") == env_before
    assert dask.config.get("dataframe.shuffle.method") is None  # restored


def test_context_manager_sets_default_scheduler(s3_endpoint):
    with LambdaClient("s3://t-default", local_s3_endpoint=s3_endpoint,
                      dashboard_address=None) as client:
        assert default_client() is client
        assert dask.config.get("dataframe.shuffle.method") == "tasks"
        assert dask.config.get("array.rechunk.method") == "tasks"
        before = client.lambda_stats()["tasks"]
        assert da.arange(10, chunks=5).sum().compute() == 45
        assert client.lambda_stats()["tasks"] > before
    with pytest.raises(ValueError):
        default_client()


def test_user_script_without_main_guard(tmp_path, s3_endpoint):
    """A plain script works, as with a threaded Client: the handler processes never re-run it."""
    script = tmp_path / "analysis.py"
    script.write_text(textwrap.dedent(f"""
        import dask.array as da
        from dask_lambda import LambdaClient

        print("script body ran")
        client = LambdaClient("s3://t-script", local_s3_endpoint={s3_endpoint!r},
                              dashboard_address=None, concurrency=2)
        print("total", da.ones((100, 100), chunks=25).sum().compute())
        client.close()
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:2] == ["script body ran", "total 10000.0"]


def test_settings_are_restored_when_clients_close_out_of_order(s3_endpoint):
    assert dask.config.get("dataframe.shuffle.method", None) is None
    first = LambdaClient("s3://t-order-a", local_s3_endpoint=s3_endpoint, concurrency=1,
                         dashboard_address=None, set_as_default=False)
    second = LambdaClient("s3://t-order-b", local_s3_endpoint=s3_endpoint, concurrency=1,
                          dashboard_address=None, set_as_default=False)
    first.close()
    assert dask.config.get("dataframe.shuffle.method") == "tasks"  # second is still open
    second.close()
    assert dask.config.get("dataframe.shuffle.method", None) is None
    assert dask.config.get("array.rechunk.method", None) is None
