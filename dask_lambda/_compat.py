"""Every private API of dask, distributed and cloudpickle that dask-lambda uses, in one place.

None of these is public; each has a reason beside it, so that a release that changes one
breaks here, in one file (and in the tests that exercise it: tests/test_cluster_api.py,
test_batching.py, test_workloads.py). The other modules import them from here. Besides
these, the gateway subclasses distributed's ``Scheduler`` and ``Worker`` and overrides
``update_graph``, ``restart_workers``, ``register_nanny_plugin``, ``get_data``,
``update_data``, ``upload_file``, ``run``, ``plugin_add`` and ``handle_stimulus``
(dask_lambda/gateway/), and `LambdaClient` overrides ``Client._graph_to_futures`` to name an
unpicklable task; those signatures are distributed's, checked by the same tests.
"""

from __future__ import annotations

from time import time
from typing import Any

import cloudpickle
from dask._expr import LLGExpr  # the expression of a plain task graph (submit, map)
from dask._task_spec import (  # dask's task specs: what batching fuses and the gateway runs
    Alias,
    DataNode,
    GraphNode,
    Task,
    TaskRef,
    convert_legacy_graph,
    cull,
)
from distributed.deploy.spec import NoOpAwaitable  # what SpecCluster.scale returns when async
from distributed.worker import _run_task_simple  # what a Worker hands its executor per task
from distributed.worker_state_machine import (  # the worker's events the gateway reacts to
    CancelComputeEvent,
    ExecuteSuccessEvent,
    FreeKeysEvent,
    RemoveReplicasEvent,
    UnpauseEvent,
)

__all__ = ["Alias", "CancelComputeEvent", "DataNode", "ExecuteSuccessEvent", "FreeKeysEvent",
           "GraphNode", "LLGExpr", "NoOpAwaitable", "RemoveReplicasEvent", "Task", "TaskRef",
           "UnpauseEvent", "code_reduce", "convert_legacy_graph", "cull",
           "pickled_by_reference", "run_task_simple", "set_worker_threads"]

#: ``distributed.worker._run_task_simple``: the function the worker asks its executor to run.
run_task_simple = _run_task_simple


def code_reduce(code: Any) -> Any:
    """cloudpickle's reduction of a code object (``cloudpickle.cloudpickle._code_reduce``),
    which dask-lambda wraps to keep the real file name in remote tracebacks."""
    return cloudpickle.cloudpickle._code_reduce(code)


def pickled_by_reference(func: Any) -> bool:
    """Whether cloudpickle pickles ``func`` by reference (module and name) rather than by value
    (``cloudpickle.cloudpickle._should_pickle_by_reference``)."""
    return bool(cloudpickle.cloudpickle._should_pickle_by_reference(func))


def set_worker_threads(scheduler: Any, worker: Any, nthreads: int) -> None:
    """Give a running, registered worker ``nthreads`` threads, as seen by the scheduler
    (``WorkerState.nthreads``, ``total_nthreads``, ``host_info``) and by the worker's state
    machine (``WorkerState.nthreads``), then let both fill what opened.

    Must run on the event loop of both (they share one in a Lambda cluster).
    """
    stimulus = f"dask-lambda-concurrency-{time()}"
    ws = scheduler.workers.get(worker.address)
    if ws is not None:
        delta = nthreads - ws.nthreads
        ws.nthreads = nthreads
        scheduler.total_nthreads += delta
        scheduler.total_nthreads_history.append((time(), scheduler.total_nthreads))
        host = scheduler.host_info.get(ws.host)
        if host is not None:
            host["nthreads"] += delta
        scheduler.check_idle_saturated(ws)
        scheduler.stimulus_queue_slots_maybe_opened(stimulus_id=stimulus)
    worker.state.nthreads = nthreads
    # (the state machine starts ready tasks up to nthreads when it "unpauses"; the gateway
    # never pauses: it has no memory limit)
    worker.handle_stimulus(UnpauseEvent(stimulus_id=stimulus))
