"""Job objects are signed: the handler (in its own process) refuses anything else."""

from __future__ import annotations

import asyncio
import base64
import os

import cloudpickle
import pytest
from dask_lambda_handler import protocol, s3keys

from dask_lambda.backends.base import FunctionSettings
from dask_lambda.backends.local import LocalBackend
from dask_lambda.errors import FunctionError
from dask_lambda.serialize import dumps

KEY = bytes(range(32))
RUN = "0123456789ab"
RUN_KEY = protocol.run_key(KEY, RUN)


def _job(func, *args, key=RUN_KEY, at="jobs/0123456789ab/00/t-a0.job", bucket="t-security"):
    frames = dumps((func, args, {}))  # the client's serializer: this test module goes by value
    return protocol.encode({"kind": "job", "key": "t"}, frames, key,
                           s3keys.identity(bucket, at))


def _touch(path):
    open(path, "w").close()
    return "ran"


async def _invoke_all(s3_endpoint, s3, events):
    settings = FunctionSettings(concurrency=1, memory=1024, timeout=30, signing_key=KEY)
    backend = LocalBackend(settings, s3_endpoint=s3_endpoint)
    await backend.start()
    try:
        out = []
        for event in events:
            try:
                out.append(await backend.invoke(event))
            except FunctionError as exc:
                out.append(exc)
        return out
    finally:
        await backend.close()


@pytest.fixture
def bucket(s3):
    name = "t-security"
    s3.create_bucket(Bucket=name)
    return name


def test_tampered_or_foreign_jobs_are_rejected_and_not_run(s3_endpoint, s3, bucket, tmp_path):
    marker = str(tmp_path / "ran")
    good = _job(_touch, marker)
    tampered = bytearray(good)
    tampered[-5] ^= 0xFF  # one flipped bit in the pickle
    jobs = f"jobs/{RUN}/00"
    s3.put_object(Bucket=bucket, Key=f"{jobs}/tampered.job", Body=bytes(tampered))
    s3.put_object(Bucket=bucket, Key=f"{jobs}/foreign.job",
                  Body=_job(_touch, marker, key=b"x" * 32, at=f"{jobs}/foreign.job"))
    s3.put_object(Bucket=bucket, Key=f"{jobs}/raw.job",
                  Body=cloudpickle.dumps((_touch, (marker,), {})))
    base = {"op": "run", "bucket": bucket, "inline_max": 10_000}
    events = [dict(base, job_key=f"{jobs}/{n}.job", result_key=f"results/{RUN}/00/{n}.out")
              for n in ("tampered", "foreign", "raw")]
    events.append(dict(base, job_key=f"{jobs}/inline.job",
                       result_key=f"results/{RUN}/00/inline.out",
                       job=base64.b64encode(bytes(tampered)).decode()))
    results = asyncio.run(_invoke_all(s3_endpoint, s3, events))

    for exc, name in zip(results[:2] + results[3:], ("tampered", "foreign", "inline"),
                         strict=True):
        assert isinstance(exc, FunctionError)
        assert exc.error_type == "PayloadError"
        assert (f"PayloadError: refused s3://{bucket}/{jobs}/{name}.job: its signature does "
                "not verify: it was altered, truncated or signed with another key. Nothing was "
                "unpickled." in str(exc))
    assert isinstance(results[2], FunctionError)
    assert "not a dask-lambda payload (bad magic bytes)" in str(results[2])
    assert not os.path.exists(marker)  # nothing was unpickled, nothing ran


def test_signed_job_runs_and_result_is_signed(s3_endpoint, s3, bucket, tmp_path):
    marker = str(tmp_path / "ran")
    job_key, result_key = f"jobs/{RUN}/00/ok.job", f"results/{RUN}/00/ok.out"
    event = {"op": "run", "bucket": bucket, "job_key": job_key, "result_key": result_key,
             "inline_max": 0, "job": base64.b64encode(_job(_touch, marker, at=job_key)).decode()}
    [response] = asyncio.run(_invoke_all(s3_endpoint, s3, [event]))
    assert response["status"] == "ok" and response["result_key"] == result_key
    assert os.path.exists(marker)
    blob = s3.get_object(Bucket=bucket, Key=result_key)["Body"].read()
    at = s3keys.identity(bucket, result_key)
    assert protocol.decode(blob, RUN_KEY, at).load() == "ran"
    with pytest.raises(protocol.PayloadError, match="signature does not verify"):
        protocol.decode(blob, b"y" * 32, at)
    with pytest.raises(protocol.PayloadError, match="signature does not verify"):
        protocol.decode(blob, KEY, at)  # the deployment key itself signs nothing
    assert response["stats"]["pid"] != os.getpid()


def test_ping_reports_versions(s3_endpoint, s3):
    [response] = asyncio.run(_invoke_all(s3_endpoint, s3, [{"op": "ping"}]))
    import sys
    from importlib.metadata import version

    assert response["versions"]["python"] == "{}.{}".format(*sys.version_info[:2])
    assert response["versions"]["cloudpickle"] == version("cloudpickle")
    assert response["versions"]["dask-lambda"] == version("dask-lambda")


def test_no_secret_goes_into_events_or_objects(s3_endpoint, monkeypatch):
    """Neither the signing key nor AWS credentials appear in what the client sends."""
    import json

    import dask.array as da

    from dask_lambda import LambdaClient

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-key-material")
    sent: list[bytes] = []
    with LambdaClient("s3://t-secrets", local_s3_endpoint=s3_endpoint, inline_max=1000,
                      concurrency=2, dashboard_address=None) as client:
        backend, store = client.cluster.backend, client.cluster.store
        invoke, put = backend.invoke, store.put

        async def recording_invoke(event, **kw):
            sent.append(json.dumps(event).encode())
            return await invoke(event, **kw)

        async def recording_put(key, parts):
            sent.append(b"".join(bytes(p) for p in parts))
            return await put(key, parts)

        monkeypatch.setattr(backend, "invoke", recording_invoke)
        monkeypatch.setattr(store, "put", recording_put)
        assert (da.ones((300, 300), chunks=100) + 1).sum().compute() == 180_000
        key_hex = client.cluster.settings.signing_key.hex().encode()
    assert len(sent) > 9
    for blob in sent:
        assert key_hex not in blob
        assert b"very-secret-key-material" not in blob and b"testing" not in blob
