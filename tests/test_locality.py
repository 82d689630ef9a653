"""Outputs stay in S3 between tasks; the client downloads only what it gathers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import dask.array as da
import numpy as np
import pytest
from distributed import wait

from .conftest import list_keys

CLIENT_OPTIONS = {"inline_max": 10_000}  # small, so that block-sized outputs go to S3

BLOCK = 100_000  # float64 -> 800 KB per block: an S3 output


def _results(s3, client):
    layout = client.cluster.layout
    return list_keys(s3, layout.bucket, layout.run_prefixes[1])


def test_persisted_data_stays_in_s3_and_is_not_downloaded(client, s3):
    x = da.random.default_rng(0).random(8 * BLOCK, chunks=BLOCK)
    before = client.lambda_stats()
    y = (x * 2).persist()
    wait(y)
    after = client.lambda_stats()
    assert after["outputs_in_s3"] - before["outputs_in_s3"] >= 8
    assert after["output_bytes_in_s3"] - before["output_bytes_in_s3"] > 8 * 8 * BLOCK
    assert after["bytes_received"] - before["bytes_received"] < 20_000  # nothing big came back
    assert len(_results(s3, client)) >= 8

    # a reduction reads the blocks from S3 inside Lambda: only the scalar comes back
    total = y.sum().compute()
    final = client.lambda_stats()
    np.testing.assert_allclose(total, 2 * x.sum().compute(scheduler="sync"))
    assert final["bytes_received"] - after["bytes_received"] < 20_000
    assert final["bytes_sent"] - after["bytes_sent"] < 50_000  # jobs carry references, not data


def test_gathered_result_is_downloaded_once_and_correct(client):
    x = da.arange(4 * BLOCK, chunks=BLOCK, dtype="f8")
    before = client.lambda_stats()["bytes_received"]
    got = (x + 1).compute()
    np.testing.assert_array_equal(got, np.arange(4 * BLOCK, dtype="f8") + 1)
    got[:] = 0  # gathered arrays are writable
    moved = client.lambda_stats()["bytes_received"] - before
    assert 4 * 8 * BLOCK <= moved < 1.05 * 4 * 8 * BLOCK + 10_000


def test_task_inputs_from_s3_are_writable(client):
    def make():
        return np.zeros(BLOCK)

    def bump(a):
        a += 1  # in place, on an input that came from S3
        return a

    assert client.submit(bump, client.submit(make)).result().sum() == BLOCK


def test_shared_output_lives_until_its_last_dependent_then_goes(client, s3):
    def make():
        return np.ones(BLOCK)

    shared = client.submit(make, key="shared-output")
    first = client.submit(np.sum, shared)
    assert first.result() == BLOCK
    keys = [k for k in _results(s3, client) if "shared-output" in k]
    assert len(keys) == 1
    # a dependent submitted later still finds it
    second = client.submit(lambda a: a.mean(), shared)
    assert second.result() == 1.0
    assert s3.head_object(Bucket=client.cluster.bucket, Key=keys[0])["ContentLength"] > 8 * BLOCK
    del shared, first, second  # the scheduler releases the key: its object goes
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any("shared-output" in k for k in _results(s3, client)):
        time.sleep(0.2)
    assert not any("shared-output" in k for k in _results(s3, client))


def test_locality_off_downloads_every_output(s3_endpoint):
    from dask_lambda import LambdaClient

    with LambdaClient("s3://t-locality-off", local_s3_endpoint=s3_endpoint, inline_max=10_000,
                      locality=False, concurrency=2, dashboard_address=None) as client:
        y = (da.ones(4 * BLOCK, chunks=BLOCK) * 2).persist()
        assert y.sum().compute() == 8 * BLOCK
        stats = client.lambda_stats()
        assert stats["outputs_in_s3"] == 0
        assert stats["bytes_received"] > 4 * 8 * BLOCK  # the blocks came through the client
        assert stats["bytes_sent"] > 4 * 8 * BLOCK  # and went back out in the next jobs


@pytest.mark.timeout(600)
def test_one_gigabyte_array_passes_through_a_task_in_bounded_memory(s3_endpoint, tmp_path):
    """Handler and gateway peak memory stay well under twice the array's size."""
    script = textwrap.dedent(f"""
        import json, resource
        import numpy as np
        from dask_lambda import LambdaClient

        N = 2**27  # float64: 1 GiB
        def make():
            return np.ones(N)
        def bump(a):
            a += 1
            return a

        def peak_mb():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        with LambdaClient("s3://t-one-gb", local_s3_endpoint={s3_endpoint!r}, concurrency=1,
                          memory=2048, dashboard_address=None) as client:
            base = peak_mb()
            out = client.submit(bump, client.submit(make)).result()
            ok = bool(out[0] == 2.0 and out[-1] == 2.0 and out.size == N)
            gateway = peak_mb() - base
            handler = [i["peak_rss_mb"] for i in client.cluster.executor.dispatch.invocations]
            stats = client.lambda_stats()
        print(json.dumps(dict(ok=ok, gateway=gateway, handler=handler, stats=stats)))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=580, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    res = json.loads(out.stdout.strip().splitlines()[-1])
    gib = 1024
    assert res["ok"]
    assert res["gateway"] < 1.5 * gib, res  # the gathered GiB itself, not two copies
    assert len(res["handler"]) == 2 and max(res["handler"]) < 1.5 * gib, res
    assert res["stats"]["bytes_sent"] < 10_000  # the GiB never went up from the client
    assert gib * 2**20 <= res["stats"]["bytes_received"] < 1.01 * gib * 2**20


def test_aliases_of_persisted_partitions_are_not_copied_through_lambda(client):
    import dask.dataframe as dd
    import pandas as pd

    def make(i):
        return pd.DataFrame({"x": np.arange(BLOCK, dtype="f8") + i})

    df = client.persist(dd.from_map(make, range(4)).optimize())
    wait(df)
    try:
        for batching in (False, True):
            client.batching = batching
            before = client.lambda_stats()
            assert client.compute(df.x.sum().optimize()).result() == sum(
                make(i).x.sum() for i in range(4))
            after = client.lambda_stats()
            # Only the reduction ran in Lambda and no partition was copied into a new S3
            # object: the renames of the persisted partitions ran here (batching off) or
            # inside the invocation of the task that reads them (batching on).
            if not batching:
                assert after["local_tasks"] - before["local_tasks"] >= 4
            assert after["output_bytes_in_s3"] == before["output_bytes_in_s3"]
            assert after["invocations"] - before["invocations"] <= 5
    finally:
        client.batching = True


def test_an_object_held_by_two_keys_goes_only_with_the_last():
    from dask_lambda_handler.protocol import ObjectRef

    from dask_lambda.outputs import LambdaData

    released = []
    data = LambdaData(released.append)
    ref = ObjectRef("b", "k", 10, 10, "int")
    data["a"] = ref
    data["alias"] = ref
    del data["a"]
    assert released == [] and data["alias"] is ref
    data["alias"] = 5  # replaced by a plain value: the last holder is gone
    assert released == [ref]
    data["x"] = ref
    data["x"] = ref  # the same key set twice holds it once
    del data["x"]
    assert released == [ref, ref]
