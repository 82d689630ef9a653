"""Task batching: chains and subtrees of short tasks run in one invocation.

The graph rewrite (`dask_lambda.batching.fuse_graph`) is a pure function and is
checked here on graphs executed by dask's own ``execute_graph``; everything that
runs in "Lambda" runs in the local backend's handler processes.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time

import dask
import pytest
from dask import delayed
from dask._task_spec import Alias, DataNode, Task, TaskRef, execute_graph
from distributed import wait

from dask_lambda import LambdaClient
from dask_lambda.batching import BatchSettings, fuse_graph, group_prefixes
from dask_lambda.errors import ConfigurationError, LambdaTimeoutError, TaskSerializationError

from .conftest import bucket_for, list_keys

CLIENT_OPTIONS = {"concurrency": 2}


def add(*xs):
    return sum(xs)


def inc(x):
    return x + 1


def chain(n: int, start: int = 0) -> dict:
    dsk = {"c-0": Task("c-0", inc, start)}
    for i in range(1, n):
        dsk[f"c-{i}"] = Task(f"c-{i}", inc, TaskRef(f"c-{i - 1}"))
    return dsk


def binary_tree(leaves: int) -> tuple[dict, str]:
    dsk = {f"leaf-{i}": Task(f"leaf-{i}", inc, i) for i in range(leaves)}
    level = list(dsk)
    depth = 0
    while len(level) > 1:
        depth += 1
        nxt = []
        for j in range(0, len(level), 2):
            key = f"add{depth}-{j // 2}"
            dsk[key] = Task(key, add, TaskRef(level[j]), TaskRef(level[j + 1]))
            nxt.append(key)
        level = nxt
    return dsk, level[0]


FAST = BatchSettings(durations={"c": 0.001, "leaf": 0.001,
                                **{f"add{i}": 0.001 for i in range(1, 10)}})


def test_a_chain_becomes_one_task_under_the_last_key():
    dsk = chain(10)
    fused, _ = fuse_graph(dsk, ["c-9"], {}, BatchSettings())  # durations unknown: chains still fuse
    assert list(fused) == ["c-9"]
    assert group_prefixes(fused["c-9"]) == ("c",) * 10
    assert execute_graph(fused, keys=["c-9"])["c-9"] == 10


def test_requested_and_shared_keys_are_not_absorbed():
    dsk = chain(6)
    dsk["other"] = Task("other", inc, TaskRef("c-2"))  # c-2 has two dependents
    fused, _ = fuse_graph(dsk, ["c-5", "other", "c-4"], {}, BatchSettings())
    assert set(fused) == {"c-2", "c-4", "c-5", "other"}
    out = execute_graph(fused, keys=list(fused))
    assert (out["c-2"], out["c-4"], out["c-5"], out["other"]) == (3, 5, 6, 4)


def test_max_tasks_caps_a_group():
    fused, _ = fuse_graph(chain(100), ["c-99"], {}, BatchSettings(max_tasks=30))
    sizes = sorted(len(group_prefixes(t) or (1,)) for t in fused.values())
    assert sizes == [10, 30, 30, 30]
    assert execute_graph(fused, keys=["c-99"])["c-99"] == 100


def test_max_tasks_caps_a_subtree():
    dsk, root = binary_tree(256)
    fused, _ = fuse_graph(dsk, [root], {}, dataclasses.replace(FAST, max_tasks=20))
    sizes = [len(group_prefixes(t) or (1,)) for t in fused.values()]
    assert max(sizes) <= 20 and sum(sizes) == len(dsk)
    assert execute_graph(fused, keys=[root])[root] == sum(range(1, 257))


def test_max_duration_caps_a_group():
    settings = BatchSettings(durations={"c": 2.0}, max_duration=5.0)
    fused, _ = fuse_graph(chain(6), ["c-5"], {}, settings)
    assert sorted(len(group_prefixes(t) or (1,)) for t in fused.values()) == [2, 2, 2]


def test_siblings_fuse_only_when_that_is_faster():
    dsk, root = binary_tree(64)
    # Unknown durations (0.5 s each, more than the 0.1 s overhead): a tree has no chains,
    # and running two 0.5 s siblings one after the other would be slower: nothing fused.
    fused, _ = fuse_graph(dsk, [root], {}, BatchSettings())
    assert fused.keys() == dsk.keys()
    # 1 ms tasks: whole subtrees fuse, up to max-tasks.
    fused, _ = fuse_graph(dsk, [root], {}, FAST)
    assert len(fused) < len(dsk) / 10
    assert all(len(group_prefixes(t) or (1,)) <= 64 for t in fused.values())
    assert execute_graph(fused, keys=[root])[root] == sum(range(1, 65))


def test_a_task_waiting_for_others_absorbs_only_what_costs_less_than_the_overhead():
    # r = add(a, big): big is shared, so r can only absorb a; absorbing it delays a until
    # big is done, which is worth it only if a is shorter than the invocation overhead.
    dsk = {"a": Task("a", inc, 1), "big": Task("big", inc, 2),
           "r": Task("r", add, TaskRef("a"), TaskRef("big")),
           "s": Task("s", inc, TaskRef("big"))}
    slow_a = BatchSettings(durations={"a": 1.0, "big": 1.0, "r": 0.001})
    assert set(fuse_graph(dsk, ["r", "s"], {}, slow_a)[0]) == {"a", "big", "r", "s"}
    fast_a = BatchSettings(durations={"a": 0.01, "big": 1.0, "r": 0.001})
    assert set(fuse_graph(dsk, ["r", "s"], {}, fast_a)[0]) == {"big", "r", "s"}


def test_annotations_separate_groups_and_executor_annotated_tasks_stay_alone():
    dsk = chain(6)
    annotations = {"retries": {"c-0": 3, "c-1": 3, "c-2": 3}, "executor": {"c-4": "local"}}
    fused, kept = fuse_graph(dsk, ["c-5"], annotations, BatchSettings())
    assert set(fused) == {"c-2", "c-3", "c-4", "c-5"}
    assert group_prefixes(fused["c-2"]) == ("c",) * 3
    assert kept == {"retries": {"c-2": 3}, "executor": {"c-4": "local"}}
    assert execute_graph(fused, keys=["c-5"])["c-5"] == 6


def test_literals_and_aliases_are_absorbed():
    dsk = {"d": DataNode("d", 41), "c-0": Task("c-0", inc, TaskRef("d")),
           "a": Alias("a", "c-0"), "c-1": Task("c-1", inc, TaskRef("a"))}
    fused, _ = fuse_graph(dsk, ["c-1"], {}, BatchSettings())
    assert list(fused) == ["c-1"]
    assert execute_graph(fused, keys=["c-1"])["c-1"] == 43


def test_random_graphs_give_the_same_results_fused():
    rng = random.Random(7)
    for trial in range(30):
        n = rng.randint(2, 60)
        dsk: dict = {}
        for i in range(n):
            deps = rng.sample(range(i), k=min(i, rng.choice([0, 1, 1, 1, 2, 3])))
            dsk[f"t{i % 3}-{i}"] = Task(f"t{i % 3}-{i}", add, i,
                                        *(TaskRef(next(k for k in dsk if k.endswith(f"-{d}")))
                                          for d in deps))
        keys = rng.sample(list(dsk), k=rng.randint(1, 4))
        settings = BatchSettings(max_tasks=rng.randint(2, 20), durations={
            "t0": 0.001, "t1": 0.01, "t2": rng.choice([0.001, 1.0])})
        fused, _ = fuse_graph(dsk, keys, {}, settings)
        assert set(keys) <= set(fused)
        assert max(len(group_prefixes(t) or (1,)) for t in fused.values()) <= settings.max_tasks
        got, want = execute_graph(fused, keys=keys), execute_graph(dsk, keys=keys)
        assert {k: got[k] for k in keys} == {k: want[k] for k in keys}, trial


# -- in the local backend's Lambda processes --------------------------------------------

def delayed_tree(leaves: int, f=inc):
    level = [delayed(f, pure=False)(i) for i in range(leaves)]
    while len(level) > 1:
        level = [delayed(add)(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def delayed_chain(n: int):
    x = delayed(inc, pure=False)(0)
    for _ in range(n - 1):
        x = delayed(inc, pure=False)(x)
    return x


def test_chain_runs_in_one_invocation_and_tree_in_few(client):
    before = client.lambda_stats()
    assert client.compute(delayed_chain(50)).result() == 50
    after = client.lambda_stats()
    assert after["invocations"] - before["invocations"] == 1
    assert (after["batches"] - before["batches"], after["batched_tasks"] -
            before["batched_tasks"]) == (1, 50)
    # The chain measured 'inc' (well under the 0.1 s overhead), 'add' is unknown (0.5 s):
    # the first tree fuses each pair of leaves into its 'add' and runs the other 'add's
    # one by one; the second, with both measured, runs as a few subtrees of <= 64 tasks.
    tree = delayed_tree(128)
    expected = dask.compute(tree, scheduler="sync")[0]
    assert client.compute(tree).result() == expected == sum(range(1, 129))
    first = client.lambda_stats()["invocations"] - after["invocations"]
    assert client.compute(delayed_tree(128)).result() == expected
    second = client.lambda_stats()["invocations"] - after["invocations"] - first
    assert first == 64 + 63
    assert second <= 10
    assert set(client.cluster.executor.dispatch.durations) >= {"inc", "add"}


def test_computing_the_same_collection_again_keeps_the_schedulers_plan(client):
    """Back-to-back computations of one collection: the second may arrive while the scheduler
    still has the first's tasks, and batching (now with measured durations) would plan them
    differently; distributed then keeps the old definitions and warns. Known keys keep theirs."""
    import io
    import logging

    import dask.bag as db

    seen = io.StringIO()
    handler = logging.StreamHandler(seen)  # distributed's loggers do not propagate to pytest's
    logging.getLogger("distributed.scheduler").addHandler(handler)
    try:
        total = db.range(2000, npartitions=100).map(inc).sum()
        results = [total.compute() for _ in range(4)]
    finally:
        logging.getLogger("distributed.scheduler").removeHandler(handler)
    assert results == [sum(range(1, 2001))] * 4
    assert "Detected different `run_spec`" not in seen.getvalue()


def test_batching_false_runs_one_invocation_per_task(s3_endpoint, request):
    with LambdaClient(f"s3://{bucket_for(request)}-off/run", local_s3_endpoint=s3_endpoint,
                      dashboard_address=None, concurrency=2, batching=False) as c:
        assert c.compute(delayed_chain(20)).result() == 20
        stats = c.lambda_stats()
        assert (stats["invocations"], stats["batches"]) == (20, 0)


def test_batching_must_be_a_bool():
    with pytest.raises(TypeError) as info:
        LambdaClient("s3://some-bucket", batching="no")
    assert str(info.value) == (
        "batching=\"no\" is not valid: 'no' is not True or False. Setting `batching=` "
        "(lambda.batching.enabled, DASK_LAMBDA__BATCHING__ENABLED) takes True or False; e.g. "
        "LambdaClient(..., batching=False)")


def shout(x):
    print(f"step {x}")
    return x + 1


def fail_at(x, at):
    if x == at:
        raise ValueError(f"bad value {x}")
    return x + 1


def test_inner_output_and_errors_come_back_under_the_group_key(client):
    x = delayed(shout, pure=False)(0)
    for _ in range(4):
        x = delayed(shout, pure=False)(x)
    future = client.compute(x)
    assert future.result() == 5
    text = "".join(e["text"] for e in client.get_task_logs(future))
    assert [f"step {i}" in text for i in range(5)] == [True] * 5

    y = delayed(fail_at, pure=False)(0, 2)
    for _ in range(4):
        y = delayed(fail_at, pure=False)(y, 2)
    future = client.compute(y)
    wait(future)
    with pytest.raises(ValueError, match="bad value 2"):
        future.result()


def nap(x, seconds):
    time.sleep(seconds)
    return x + 1


def test_a_fused_group_that_times_out_says_how_to_turn_batching_off(s3_endpoint, request, s3):
    bucket = f"{bucket_for(request)}-to"
    # The durations say 0.2 s (so the chain fits in max-duration, here the most it may be: the
    # function timeout); the tasks take 1.5 s.
    with dask.config.set({"distributed.scheduler.default-task-durations": {"nap": "200ms"},
                          "lambda.batching.max-duration": 3}), \
            LambdaClient(f"s3://{bucket}/run", local_s3_endpoint=s3_endpoint,
                         dashboard_address=None, concurrency=1, function_timeout=3) as c:
        x = delayed(nap, pure=False)(0, 1.5)
        for _ in range(3):
            x = delayed(nap, pure=False)(x, 1.5)
        future = c.compute(x)
        wait(future)
        with pytest.raises(LambdaTimeoutError) as info:
            future.result()
        assert "This invocation ran 4 graph tasks fused by batching: LambdaClient(..., " \
               "batching=False) runs one task per invocation." in str(info.value)
    assert list_keys(s3, bucket) == []


def test_an_unpicklable_task_inside_a_chain_is_named(client):
    lock = threading.Lock()
    x = delayed(inc, pure=False)(0, dask_key_name="first")
    y = delayed(lambda v: (lock, v)[1] + 1)(x, dask_key_name="holds-a-lock")
    z = delayed(inc)(y, dask_key_name="last")
    with pytest.raises(TaskSerializationError, match="task 'holds-a-lock' cannot be sent to "
                                                     "Lambda because it cannot be pickled"):
        client.compute(z).result()


def test_bad_batching_settings_fail_when_the_client_is_made():
    with dask.config.set({"lambda.batching.max-tasks": 0}), pytest.raises(
            ConfigurationError) as info:
        LambdaClient("s3://some-bucket")
    assert str(info.value) == (
        "lambda.batching.max-tasks=0 is not valid: it must be at least 1. Setting "
        "lambda.batching.max-tasks (DASK_LAMBDA__BATCHING__MAX_TASKS) takes a whole number, at "
        "least 1; e.g. dask.config.set({\"lambda.batching.max-tasks\": 64})")
    with dask.config.set({"lambda.batching.overhead": "soon"}), pytest.raises(
            ConfigurationError) as info:
        LambdaClient("s3://some-bucket")
    assert str(info.value) == (
        "lambda.batching.overhead=\"soon\" is not valid: 'soon' is not a duration. Setting "
        "lambda.batching.overhead (DASK_LAMBDA__BATCHING__OVERHEAD) takes seconds or a duration "
        "such as \"100ms\"; e.g. dask.config.set({\"lambda.batching.overhead\": \"100ms\"})")
    with dask.config.set({"lambda.batching.max-tasks": 0}):  # not checked when turned off
        LambdaClient("s3://some-bucket", batching=False, dashboard_address=None).close()
