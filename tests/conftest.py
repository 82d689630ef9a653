"""Shared fixtures: one moto S3 server process per session, a LambdaClient per module.

Everything talks to S3 over HTTP (moto's server in its own process); task
execution happens in the local backend's separate handler processes.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys

import boto3
import pytest

from dask_lambda import LambdaClient


@contextlib.contextmanager
def s3_server(faults: dict | None = None):
    """A moto S3 server process on 127.0.0.1 (optionally injecting faults); yields its URL."""
    extra = ["--faults", json.dumps(faults)] if faults else []
    proc = subprocess.Popen([sys.executable, "-m", "dask_lambda.backends.local.s3server", *extra],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        line = proc.stdout.readline().decode()
        assert line.startswith("PORT "), line
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def s3_endpoint():
    with s3_server() as url:
        yield url


@pytest.fixture(scope="session")
def aws(request, tmp_path_factory):
    """ministack with the function deployed at s3://dl-e2e/run, shared by the aws backend's
    tests and the workloads (`tests.aws_fixtures.deployed`); started by the first test that
    asks for it."""
    from .aws_fixtures import deployed

    with deployed(request.config, tmp_path_factory.mktemp("aws-home")) as aws:
        yield aws


@pytest.fixture(scope="session")
def s3(s3_endpoint):
    """A plain boto3 S3 client on the test server, to look at what a run left."""
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def list_keys(s3, bucket: str, prefix: str = "") -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", ())]


def bucket_for(request) -> str:
    return "t-" + re.sub(r"[^a-z0-9]+", "-", request.module.__name__.lower()).strip("-")[-50:]


@pytest.fixture(scope="module")
def client(request, s3_endpoint):
    """A LambdaClient on the local backend, shared by a test module."""
    options = getattr(request.module, "CLIENT_OPTIONS", {})
    with LambdaClient(f"s3://{bucket_for(request)}/run", local_s3_endpoint=s3_endpoint,
                      dashboard_address=None, **{"concurrency": 2, **options}) as c:
        yield c
