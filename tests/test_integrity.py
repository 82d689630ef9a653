"""Write access to the bucket is not enough to change what a computation returns.

Every signed payload is bound to the object it belongs to (``s3keys.identity``) and
signed with its run's key (``protocol.run_key``): an adversary who can write the bucket
copies a correctly signed job, output or completion record over another, replays one
from another attempt or run, or truncates one; each is refused with a typed error naming
the object, before anything is unpickled, and no task returns the donor's data.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os

import numpy as np
import pytest
from dask_lambda_handler import protocol, s3keys
from distributed import wait

from dask_lambda import LambdaClient
from dask_lambda.backends.base import FunctionSettings
from dask_lambda.backends.local import LocalBackend
from dask_lambda.errors import FunctionError
from dask_lambda.serialize import dumps

BUCKET = "t-integrity"
DEPLOYMENT_KEY = bytes(range(32))


@pytest.fixture(scope="module")
def client(s3_endpoint):
    # outputs above 1,000 bytes stay in S3; jobs above it travel as S3 objects
    with LambdaClient(f"s3://{BUCKET}/run", local_s3_endpoint=s3_endpoint, inline_max=1000,
                      concurrency=2, dashboard_address=None) as c:
        yield c


def _kept(client, future) -> str:
    """The S3 key of a finished task's output kept in S3."""
    wait(future)
    ref = client.cluster.executor.data[future.key]
    assert isinstance(ref, protocol.ObjectRef)
    return ref.key


def test_an_output_copied_over_another_is_refused_by_the_client_and_by_tasks(
        client, s3, caplog):
    alpha = client.submit(np.full, 1000, 1.0, key="alpha")
    beta = client.submit(np.full, 1000, 2.0, key="beta")
    alpha_key, beta_key = _kept(client, alpha), _kept(client, beta)
    s3.copy_object(Bucket=BUCKET, Key=alpha_key, CopySource={"Bucket": BUCKET, "Key": beta_key})

    expected = (f"refused s3://{BUCKET}/{alpha_key}: it holds a correctly signed payload that "
                f"belongs to 's3://{BUCKET}/{beta_key}' (copied over this object, or replayed "
                "from another attempt or run). Nothing was unpickled.")
    reader = client.submit(np.sum, alpha, key="reads-alpha")  # a task reads it in Lambda
    with pytest.raises(FunctionError) as info:
        reader.result()
    assert info.value.error_type == "MisplacedPayloadError"
    assert expected in str(info.value)
    # The client's own read refuses it too, and computes alpha again: never beta's data.
    with caplog.at_level(logging.WARNING, logger="dask_lambda"):
        assert (alpha.result() == 1.0).all()
    assert any(expected in r.getMessage() and "computing it again (1 of at most 2)"
               in r.getMessage() for r in caplog.records)
    assert (beta.result() == 2.0).all()  # the donor itself is untouched


def test_an_output_that_stays_tampered_fails_with_the_typed_error(s3_endpoint, s3, monkeypatch):
    with LambdaClient(f"s3://{BUCKET}/again", local_s3_endpoint=s3_endpoint, inline_max=1000,
                      retries=1, concurrency=2, dashboard_address=None) as client:
        donor = client.submit(np.full, 1000, 9.0, key="donor-out")
        donor_key = _kept(client, donor)
        body = s3.get_object(Bucket=BUCKET, Key=donor_key)["Body"].read()
        outputs = client.cluster.executor.outputs
        fetch = outputs.fetch

        async def tampered_fetch(ref, *, release):  # every output of "victim" is overwritten
            if "victim-out" in ref.key:
                s3.put_object(Bucket=BUCKET, Key=ref.key, Body=body)
            return await fetch(ref, release=release)

        monkeypatch.setattr(outputs, "fetch", tampered_fetch)
        victim = client.submit(np.full, 1000, 1.0, key="victim-out")
        with pytest.raises(protocol.MisplacedPayloadError) as info:
            victim.result(timeout=120)
        assert f"belongs to 's3://{BUCKET}/{donor_key}'" in str(info.value)
        assert ("(the output of task 'victim-out' could not be read 2 times; it was computed "
                "again each time, retries=1)" in str(info.value))


def test_an_output_replayed_from_another_attempt_is_refused(client, s3):
    first = client.submit(np.full, 1000, 3.0, key="first-attempt")
    key = _kept(client, first)
    other_attempt = key.replace("-a0.out", "-a1.out")
    assert other_attempt != key
    s3.copy_object(Bucket=BUCKET, Key=other_attempt, CopySource={"Bucket": BUCKET, "Key": key})
    ref = client.cluster.executor.data[first.key]
    replayed = protocol.ObjectRef(ref.bucket, other_attempt, ref.nbytes, ref.size, ref.type)
    with pytest.raises(protocol.MisplacedPayloadError, match="belongs to"):
        client.sync(client.cluster.executor.outputs.load, [replayed])
    s3.delete_object(Bucket=BUCKET, Key=other_attempt)


def test_a_truncated_output_is_refused(client, s3, caplog):
    future = client.submit(np.full, 1000, 4.0, key="to-truncate")
    key = _kept(client, future)
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    s3.put_object(Bucket=BUCKET, Key=key, Body=body[:-100])
    with caplog.at_level(logging.WARNING, logger="dask_lambda"):
        assert (future.result() == 4.0).all()  # computed again, not the truncated bytes
    assert any(f"refused s3://{BUCKET}/{key}: its signature does not verify" in r.getMessage()
               for r in caplog.records)


def test_a_job_overwritten_with_another_signed_job_runs_neither(client, s3, monkeypatch):
    """Between the client's upload and the handler's read, the victim's job object is
    replaced by the donor's (correctly signed) job: the victim fails, naming its object."""
    store = client.cluster.store
    put = store.put
    donor: dict = {}

    async def swapping_put(key, parts):
        if "donor" in key:
            donor["parts"], donor["key"] = list(parts), key
        elif "victim" in key and donor:
            parts = donor["parts"]  # the adversary's write wins the race
        return await put(key, parts)

    monkeypatch.setattr(store, "put", swapping_put)
    big = np.arange(2000.0)  # > inline_max: the jobs go through S3
    assert client.submit(np.sum, big + 1, key="donor").result() == (big + 1).sum()
    victim = client.submit(np.sum, big, key="victim")
    with pytest.raises(FunctionError) as info:
        victim.result()
    assert info.value.error_type == "MisplacedPayloadError"
    assert f"belongs to 's3://{BUCKET}/{donor['key']}'" in str(info.value)
    assert "task 'victim'" in str(info.value)


def test_an_inline_output_of_another_task_is_refused(client, monkeypatch):
    """An answer carrying another task's (correctly signed) inline output is refused."""
    backend = client.cluster.backend
    invoke = backend.invoke
    answers: dict = {}

    async def crossing_invoke(event, **kw):
        response = await invoke(event, **kw)
        if "small-donor" in event["job_key"]:
            answers["donor"] = response
        elif "small-victim" in event["job_key"]:
            return answers["donor"]
        return response

    monkeypatch.setattr(backend, "invoke", crossing_invoke)
    assert client.submit(int, 7, key="small-donor").result() == 7
    victim = client.submit(int, 8, key="small-victim")
    with pytest.raises(protocol.MisplacedPayloadError) as info:
        victim.result()
    assert "task 'small-victim': refused s3://t-integrity/run/results/" in str(info.value)
    assert "small-donor" in str(info.value)


# -- across runs, with one deployment key (the aws backend's model) ----------------------------


async def _invoke(s3_endpoint, events):
    settings = FunctionSettings(concurrency=1, memory=1024, timeout=30,
                                signing_key=DEPLOYMENT_KEY)
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


def _touch(path):
    open(path, "w").close()
    return "ran"


def _signed_job(run: str, key: str, marker: str) -> bytes:
    frames = dumps((_touch, (marker,), {}))
    return protocol.encode({"kind": "job", "key": "t"}, frames,
                           protocol.run_key(DEPLOYMENT_KEY, run), s3keys.identity(BUCKET, key))


def test_a_job_of_an_earlier_run_is_refused_in_a_later_one(s3_endpoint, s3, tmp_path):
    s3.create_bucket(Bucket=BUCKET)
    marker = str(tmp_path / "ran")
    old_run, new_run = "aaaaaaaaaaaa", "bbbbbbbbbbbb"
    old_key = f"jobs/{old_run}/00/t-a0.job"
    new_key = f"jobs/{new_run}/00/t-a0.job"
    old_job = _signed_job(old_run, old_key, marker)
    s3.put_object(Bucket=BUCKET, Key=new_key, Body=old_job)  # replayed into the new run
    base = {"op": "run", "bucket": BUCKET, "inline_max": 10_000}
    events = [dict(base, job_key=new_key, result_key=f"results/{new_run}/00/t-a0.out"),
              # the same job inline, claiming to be the new run's
              dict(base, job_key=new_key, result_key=f"results/{new_run}/00/t-a1.out",
                   job=base64.b64encode(old_job).decode()),
              # the old job at its own key, but as a job of the new run's event
              dict(base, job_key=old_key.replace(old_run, new_run),
                   result_key=f"results/{new_run}/00/t-a2.out",
                   job=base64.b64encode(_signed_job(new_run, old_key, marker)).decode())]
    results = asyncio.run(_invoke(s3_endpoint, events))
    for exc in results[:2]:
        assert isinstance(exc, FunctionError) and exc.error_type == "PayloadError"
        assert (f"refused s3://{BUCKET}/{new_key}: its signature does not verify"
                in str(exc))
    assert isinstance(results[2], FunctionError)
    assert results[2].error_type == "MisplacedPayloadError"
    assert f"belongs to 's3://{BUCKET}/{old_key}'" in str(results[2])
    assert not os.path.exists(marker)  # nothing was unpickled, nothing ran
    assert protocol.run_key(DEPLOYMENT_KEY, old_run) != protocol.run_key(DEPLOYMENT_KEY, new_run)


# -- S3-trigger completion records ---------------------------------------------------------


def test_a_completion_record_copied_over_another_is_refused():
    from dask_lambda.backends.aws.trigger import TriggerDispatcher

    layout = s3keys.Layout(BUCKET, "p", "cccccccccccc")
    key = protocol.run_key(DEPLOYMENT_KEY, layout.run)
    dispatcher = TriggerDispatcher(None, layout, signing_key=key, timeout=60, grace=60,
                                   function="f", deploy="dask-lambda deploy")
    _, alpha_done = s3keys.state_keys(layout.result_key("00/alpha-1", 0))
    _, beta_done = s3keys.state_keys(layout.result_key("00/beta-1", 0))
    beta_record = protocol.encode({"kind": "done", "response": {"status": "ok"}}, [], key,
                                  s3keys.identity(BUCKET, beta_done))
    assert dispatcher._response(beta_record, beta_done) == {"status": "ok"}
    with pytest.raises(protocol.MisplacedPayloadError) as info:
        dispatcher._response(beta_record, alpha_done)
    assert f"refused s3://{BUCKET}/{alpha_done}" in str(info.value)
    other_run = protocol.encode({"kind": "done", "response": {"status": "ok"}}, [],
                                protocol.run_key(DEPLOYMENT_KEY, "dddddddddddd"),
                                s3keys.identity(BUCKET, alpha_done))
    with pytest.raises(FunctionError, match="signature does not verify"):
        dispatcher._response(other_run, alpha_done)
