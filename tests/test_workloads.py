"""Dask workloads give the synchronous scheduler's results, through every way a user reaches
the cluster (`LambdaClient`, ``Client(LambdaCluster(...))``, ``cluster.get_client()``, a
cluster scaled while it works) on the local backend, and through the aws backend, in both
of its modes, against ministack running the function ``dask-lambda deploy`` deployed.

Every task here runs in a separate handler process (checked in
``test_tasks_run_in_other_processes``), reading its job and writing its output
through S3 over HTTP (moto's server; ministack's for the aws backend).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator

import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from distributed import as_completed, wait

from dask_lambda import LambdaClient, LambdaCluster

from .aws_fixtures import E2E_BUCKET, environment
from .conftest import bucket_for, list_keys

AWS_SHAPES = ("aws backend, invoke mode", "aws backend, trigger mode")
SHAPES = ("LambdaClient", "Client(LambdaCluster)", "cluster.get_client()",
          "Client(LambdaCluster), scaled while it works", *AWS_SHAPES)


@pytest.fixture(scope="module", params=SHAPES)
def client(request, s3_endpoint):
    """The module's client, reached in each way users reach a cluster (each is the default
    client while its tests run); the last one has its cluster scaled and adapted, between 1
    and 3 tasks at once, every half second while the workloads run."""
    from distributed import Client

    if request.param in AWS_SHAPES:
        aws = request.getfixturevalue("aws")  # (tests/conftest.py: one ministack per session)
        mode = request.param.rsplit(" ", 2)[-2]
        with environment(aws["env"]), LambdaClient(
                f"s3://{E2E_BUCKET}/run", backend="aws", function="dl-e2e", mode=mode,
                concurrency=2, dashboard_address=None) as c:
            if mode == "trigger":  # asynchronous events: an environment that has just answered
                c.most_at_once = 8  # may not be free for the next event yet, in Lambda too
            yield c
        return
    options = {"local_s3_endpoint": s3_endpoint, "dashboard_address": None, "concurrency": 2}
    bucket = f"s3://{bucket_for(request)}/run"
    if request.param == "LambdaClient":
        with LambdaClient(bucket, **options) as c:
            yield c
        return
    with LambdaCluster(bucket, **options) as cluster:
        with (cluster.get_client() if request.param == "cluster.get_client()"
              else Client(cluster)) as c:
            if not request.param.endswith("while it works"):
                yield c
                return
            stop = threading.Event()

            def rescale() -> None:
                for step in itertools.cycle([lambda: cluster.scale(1), lambda: cluster.scale(3),
                                             lambda: cluster.adapt(maximum=2)]):
                    if stop.wait(0.5):
                        return
                    step()

            c.most_at_once = 3  # (what test_tasks_run_in_other_processes allows)
            thread = threading.Thread(target=rescale, daemon=True)
            thread.start()
            try:
                yield c
            finally:
                stop.set()
                thread.join()


def local_only(client, why: str) -> None:
    """Skip a test that checks something of the local backend only."""
    if client.cluster.backend.name != "local":
        pytest.skip(f"local backend only: {why}")


def stats(client) -> dict:
    return client.cluster.lambda_stats()


def sync(*collections):
    return dask.compute(*collections, scheduler="sync")


def lam(*collections):
    return dask.compute(*collections)  # the module's LambdaClient is the default scheduler


def test_tasks_run_in_other_processes(client):
    before = stats(client)["invocations"]
    pids = set(client.gather(client.map(lambda i: os.getpid(), range(8), pure=False)))
    assert os.getpid() not in pids
    # concurrency=2 environments (3 where it is scaled meanwhile), reused warm
    assert 1 <= len(pids) <= getattr(client, "most_at_once", 2)
    assert stats(client)["invocations"] - before == 8


def test_handler_has_its_own_working_directory(client):
    local_only(client, "the local environments' working directories")
    cwd = client.submit(os.getcwd, pure=False).result()
    assert cwd != os.getcwd()
    assert "dask-lambda-local-" in cwd


# -- dask.array ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def x():
    return da.random.default_rng(1).standard_normal((300, 300), chunks=(100, 100))


def test_array_elementwise_and_reductions(client, x):
    exprs = [(x * 2 + 1).sum(), np.sin(x).mean(axis=0), x.max(), x.std(), (x > 0).sum(axis=1),
             (x @ x.T).trace()]
    before = stats(client)["invocations"]
    for got, want in zip(lam(*exprs), sync(*exprs), strict=True):
        np.testing.assert_allclose(got, want)
    assert stats(client)["invocations"] - before >= 9  # at least one per block, in Lambda


def test_array_transpose_matmul_rechunk(client, x):
    exprs = [x + x.T, x @ x.T, x.rechunk((150, 50)), x.rechunk((300, 30)).sum(axis=0)]
    for got, want in zip(lam(*exprs), sync(*exprs), strict=True):
        np.testing.assert_allclose(got, want)


def test_array_svd(client):
    a = da.random.default_rng(2).standard_normal((400, 40), chunks=(100, 40))
    u, s, v = lam(*da.linalg.svd(a))
    s_sync = sync(da.linalg.svd(a)[1])[0]
    np.testing.assert_allclose(s, s_sync)
    np.testing.assert_allclose((u * s) @ v, a.compute(scheduler="sync"), atol=1e-10)


# -- dask.dataframe --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ts():
    return dask.datasets.timeseries(start="2000-01-01", end="2000-01-05", freq="60s",
                                    partition_freq="1D", seed=3)


def test_dataframe_map_partitions_groupby(client, ts):
    def positive(p):
        return p[p.x > 0]

    q = ts.map_partitions(positive).groupby("name").agg({"y": ["mean", "sum"], "x": "count"})
    pd.testing.assert_frame_equal(lam(q)[0].sort_index(), sync(q)[0].sort_index())


def test_dataframe_merge_and_set_index_shuffle(client):
    left = dd.from_pandas(pd.DataFrame({"k": np.arange(400) % 37, "a": np.arange(400)}),
                          npartitions=4)
    right = dd.from_pandas(pd.DataFrame({"k": np.arange(37), "b": np.arange(37) ** 2}),
                           npartitions=3)
    merged = left.merge(right, on="k", how="inner", shuffle_method="tasks")
    merged_default = left.merge(right, on="k")  # the client switched the default to tasks
    indexed = left.set_index("a", npartitions=3)

    def norm(df):
        return df.sort_values(list(df.columns)).reset_index(drop=True)

    got = lam(merged, merged_default, indexed)
    want = sync(merged, merged_default, indexed)
    pd.testing.assert_frame_equal(norm(got[0]), norm(want[0]))
    pd.testing.assert_frame_equal(norm(got[1]), norm(want[1]))
    pd.testing.assert_frame_equal(got[2], want[2])
    assert dask.config.get("dataframe.shuffle.method") == "tasks"


def test_dataframe_resample(client, ts):
    q = ts.x.resample("6h").mean()
    pd.testing.assert_series_equal(lam(q)[0], sync(q)[0])


# -- S3 I/O inside tasks -------------------------------------------------------------------


def test_parquet_roundtrip_on_s3(client, ts):
    local_only(client, "the deployed role may not write outside jobs/ and results/")
    bucket = client.cluster.bucket
    path = f"s3://{bucket}/data/ts.parquet"
    ts.to_parquet(path)  # written by tasks in the handler processes
    back = dd.read_parquet(path)
    pd.testing.assert_frame_equal(back.compute(), ts.compute(scheduler="sync"),
                                  check_freq=False)


def test_text_roundtrip_and_bag_ops(client, s3):
    local_only(client, "the deployed role may not write outside jobs/ and results/")
    bucket = client.cluster.bucket
    lines = [f"{w} {i}" for i, w in enumerate(["apple", "pear", "fig", "apple", "kiwi"] * 40)]
    db.from_sequence(lines, npartitions=4).to_textfiles(f"s3://{bucket}/text/*.txt")
    assert len(list_keys(s3, bucket, "text/")) == 4

    bag = db.read_text(f"s3://{bucket}/text/*.txt").map(str.strip)
    words = bag.map(str.split).map(lambda t: (t[0], int(t[1])))
    exprs = [
        bag.filter(lambda s: s.startswith("a")).count(),
        words.pluck(0).frequencies(sort=True),
        words.foldby(lambda t: t[0], lambda acc, t: acc + t[1], 0, lambda a, b: a + b, 0),
    ]
    got, want = lam(*exprs), sync(*exprs)
    assert got[0] == want[0] == 80
    assert got[1] == want[1]
    assert sorted(got[2]) == sorted(want[2])
    frame = words.to_dataframe(columns=["word", "n"])
    pd.testing.assert_frame_equal(lam(frame)[0], sync(frame)[0])


# -- delayed, futures, persist -----------------------------------------------------------------


def test_delayed_nested_lists_and_dicts(client):
    @dask.delayed
    def inc(i):
        return i + 1

    @dask.delayed
    def combine(d):
        return {k: sum(v) for k, v in d.items()}

    nested = {"a": [inc(i) for i in range(5)], "b": [inc(inc(i)) for i in range(3)],
              "c": {"x": [inc(10), (inc(20), 5)]}}
    total = combine({"a": nested["a"], "b": nested["b"]})
    assert lam(nested, total) == sync(nested, total)
    assert lam(total)[0] == {"a": 15, "b": 9}


def test_futures_submit_map_gather_scatter_as_completed(client):
    def add(a, b=0):
        return a + b

    fut = client.submit(add, 1, b=2)
    assert fut.result() == 3
    futs = client.map(add, range(10), b=100)
    assert client.gather(futs) == [i + 100 for i in range(10)]

    [big] = client.scatter([np.arange(100_000)])
    total = client.submit(np.sum, big)
    assert total.result() == np.arange(100_000).sum()

    chained = client.submit(add, fut, b=fut)
    assert chained.result() == 6
    seen = sorted(f.result() for f in as_completed(client.map(add, range(20), b=1)))
    assert seen == list(range(1, 21))


def test_persist_then_reuse(client, x):
    invocations = client.cluster.executor.dispatch.invocations
    y = (x + 1).persist()
    wait(y)
    assert stats(client)["tasks"] >= 9  # the 9 blocks ran now, in Lambda
    seen = len(invocations)
    np.testing.assert_allclose(y.sum().compute(), (x + 1).sum().compute(scheduler="sync"))
    later = [i["key"] for i in list(invocations)[seen:]]
    assert later  # the reduction ran in Lambda...
    assert not [k for k in later if "add" in k]  # ...on the persisted blocks, not recomputed


def test_generator_result_and_large_array_through_s3(client):
    """Outputs above inline-max travel as S3 objects and are removed after reading."""
    def make(n):
        return np.arange(n, dtype="f8")

    before = stats(client)
    arr = client.submit(make, 2_000_000).result()  # 16 MB: an S3 result object
    np.testing.assert_array_equal(arr, np.arange(2_000_000, dtype="f8"))
    back = client.submit(np.sum, arr).result()  # a 16 MB argument: an S3 job object
    # (scattered, it would go to S3 as a value of its own: tests/test_shared.py)
    assert back == arr.sum()
    after = stats(client)
    assert after["s3_jobs"] == before["s3_jobs"] + 1
    assert after["bytes_received"] - before["bytes_received"] > 16_000_000

    def gen() -> Iterator[int]:
        yield from range(3)

    assert client.submit(lambda: list(gen())).result() == [0, 1, 2]


THRESHOLD = 10


def above_threshold(x):
    return x > THRESHOLD


def test_a_changed_global_reaches_the_next_submission(client):
    # Functions pickled by value are pickled once per submission (the scheduler's copy), not
    # once per task: a global the user changes between submissions must still be seen.
    global THRESHOLD
    assert client.gather(client.map(above_threshold, [5, 15], pure=False)) == [False, True]
    THRESHOLD = 3
    try:
        assert client.gather(client.map(above_threshold, [5, 15], pure=False)) == [True, True]
    finally:
        THRESHOLD = 10
