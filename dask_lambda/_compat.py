"""Private APIs of distributed that dask-lambda needs, in one place.

distributed has no public way to do these; each function says what it relies on, so that a
release that changes it breaks here, in one file, with a test (tests/test_cluster_api.py)
that names it.
"""

from __future__ import annotations

from time import time
from typing import Any


def set_worker_threads(scheduler: Any, worker: Any, nthreads: int) -> None:
    """Give a running, registered worker ``nthreads`` threads, as seen by the scheduler
    (``WorkerState.nthreads``, ``total_nthreads``, ``host_info``) and by the worker's state
    machine (``WorkerState.nthreads``), then let both fill what opened.

    Must run on the event loop of both (they share one in a Lambda cluster).
    """
    from distributed.worker_state_machine import UnpauseEvent

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
