"""The gateway worker: the one ``distributed.Worker`` of a Lambda cluster.

It is a normal worker whose default executor, `~dask_lambda.executor.LambdaExecutor`, runs
each task in Lambda, with two additions that make it answer as any cluster's workers do,
for every client that reaches it (``Client(cluster)`` as well as `LambdaClient`):

* a gather gets values: outputs kept in S3 are held as `ObjectRef` s, and `get_data`
  downloads (and verifies) the ones asked for, so ``future.result()`` is the value;
  an output that cannot be read is computed again, a bounded number of times, then fails
  with its typed error;
* a task the scheduler no longer wants while it runs (cancelled, or its last future
  released) is stopped: its invocation is abandoned, its concurrency slot freed, and an
  output that arrives for it anyway is deleted at once, not at ``close()``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from time import time
from typing import Any

from dask._expr import LLGExpr
from dask_lambda_handler import protocol
from distributed import Scheduler, Worker
from distributed.protocol.serialize import (
    Serialized,
    deserialize,
    register_serialization_family,
)
from distributed.worker_state_machine import (
    CancelComputeEvent,
    ExecuteSuccessEvent,
    FreeKeysEvent,
    RemoveReplicasEvent,
)

from . import serialize
from .batching import BatchedExpr, BatchSettings
from .errors import NotAvailableInLambda
from .executor import RESOLVED, LambdaExecutor

logger = logging.getLogger("dask_lambda")


class GatewayWorker(Worker):
    """A worker whose tasks run in Lambda (see the module docstring).

    Parameters
    ----------
    lambda_executor
        The executor that runs its tasks in Lambda (also given as its default executor).
    **kwargs
        As for ``distributed.Worker``.
    """

    def __init__(self, *args: Any, lambda_executor: LambdaExecutor, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lambda_executor = lambda_executor
        lambda_executor.worker = self

    async def get_data(self, comm: Any, keys: Any, who: str | None = None,
                       serializers: list[str] | None = None) -> Any:
        data = self.lambda_executor.data
        refs = {k: v for k in keys if isinstance(v := data.peek(k), protocol.ObjectRef)}
        if not refs:
            return await super().get_data(comm, keys, who, serializers)
        values, failed = await self.lambda_executor.load_values(refs)
        for key, exc in failed.items():
            self._unreadable(key, refs[key], exc)
        token = RESOLVED.set(values)
        try:
            return await super().get_data(comm, [k for k in keys if k not in failed], who,
                                          serializers)
        finally:
            RESOLVED.reset(token)

    def _unreadable(self, key: Any, ref: protocol.ObjectRef, exc: BaseException) -> None:
        """The output of ``key`` cannot be read: drop it so that the scheduler computes it
        again (the executor fails the recomputation once this happened `retries` times)."""
        ts = self.state.tasks.get(key)
        if ts is None or any(d.state in ("executing", "long-running") for d in ts.dependents):
            return  # a running task reads it too: it reports the loss itself
        attempt = self.lambda_executor.unreadable(key, exc)
        logger.warning("dask-lambda could not read the output of %r at s3://%s/%s (%s: %s); "
                       "computing it again (%d of at most %d)", key, ref.bucket, ref.key,
                       type(exc).__name__, exc, attempt, self.lambda_executor.retries)
        self.handle_stimulus(RemoveReplicasEvent(
            keys=[key], stimulus_id=f"dask-lambda-unreadable-{time()}"))

    def update_data(self, data: dict, stimulus_id: str | None = None) -> dict[str, Any]:
        """``client.scatter(...)``: held here as on any worker, and each value of at least
        ``share-min`` bytes goes to S3 at once, where tasks read it (every reader the same
        object: ``broadcast=True`` needs nothing more); the worker then holds a reference."""
        result = super().update_data(data, stimulus_id)
        for key, value in data.items():
            self.lambda_executor.share_soon(key, value)
        return result

    # -- what distributed would run on its workers, here -----------------------------------

    async def upload_file(self, filename: str, data: str | bytes, load: bool = True
                          ) -> dict[str, Any]:
        """``client.upload_file(path)``: importable here (as on any worker) and shipped with
        every later job, so that tasks in Lambda import it too."""
        result = await super().upload_file(filename, data, load)
        self.lambda_executor.upload_file(
            filename, data.encode() if isinstance(data, str) else data)
        return result

    async def run(self, comm: Any, function: Any, args: Any = (), wait: bool = True,
                  kwargs: Any = None) -> Any:
        from distributed.core import error_message

        return error_message(NotAvailableInLambda(
            "client.run(f) runs f on each worker, and this cluster's one worker is the gateway "
            "in your own process: its tasks run in Lambda functions, which client.run cannot "
            "reach. To run f in Lambda, submit it (client.submit(f, pure=False), or "
            "client.map over the inputs); to run it here, call f() directly."))

    async def run_coroutine(self, comm: Any, function: Any, args: Any = (),
                            kwargs: Any = None, wait: bool = True) -> Any:
        return await self.run(comm, function, args, wait, kwargs)

    async def plugin_add(self, plugin: Any, name: str | None = None,
                         catch_errors: bool = True) -> Any:
        """distributed's own machinery is set up here as on any worker; a plugin meant to
        prepare the workers that run tasks is refused with what to do instead: nothing
        silently runs only in this process."""
        import pickle

        from distributed.core import error_message

        if isinstance(plugin, bytes):
            plugin = pickle.loads(plugin)
        kind = type(plugin).__name__
        advice = _PLUGIN_ADVICE.get(kind)
        if kind == "_InstallWorkerPlugin" and self.lambda_executor.backend.name == "local":
            advice = None  # (PipInstall) the local backend's tasks run in this environment
        if advice is None and type(plugin).__module__.partition(".")[0] == "distributed":
            return await super().plugin_add(plugin, name, catch_errors)
        error = NotAvailableInLambda(
            f"worker plugin {type(plugin).__name__} would run only on the gateway worker in "
            "this process, not where tasks run (Lambda functions have no Dask worker): "
            + (advice or "do the setup inside the task function, or once per execution "
               "environment in a module the task imports (modules beside your script travel "
               "with the jobs; client.upload_file(path) sends others)."))
        if not catch_errors:
            raise error
        return error_message(error)

    def handle_stimulus(self, *stims: Any) -> None:
        super().handle_stimulus(*stims)
        executor = self.lambda_executor
        for ev in stims:
            if isinstance(ev, ExecuteSuccessEvent):
                value = ev.value
                if (isinstance(value, protocol.ObjectRef)
                        and executor.data.peek(ev.key) is not value):
                    executor.release(value)  # the worker discarded it (a cancelled task)
            elif isinstance(ev, FreeKeysEvent):
                for key in ev.keys:
                    self._cancel_if_unwanted(key)
            elif isinstance(ev, CancelComputeEvent):
                self._cancel_if_unwanted(ev.key)

    def _cancel_if_unwanted(self, key: Any) -> None:
        ts = self.state.tasks.get(key)
        if ts is None or ts.state == "cancelled":
            self.lambda_executor.cancel(key)


class _ProgressFeedClosed(logging.Filter):
    """Drop the traceback distributed logs when a progress bar's feed ends.

    ``distributed.progress(...)`` streams from the scheduler's ``feed`` handler; when the bar
    finishes, that coroutine is cancelled mid-``sleep`` and distributed logs the
    ``CancelledError`` at ERROR, a scary traceback after every progress bar. Nothing failed.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, asyncio.CancelledError):
            return True
        tb = exc.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            if code.co_name == "feed" and "scheduler" in code.co_filename:
                return False
            tb = tb.tb_next
        return True


_FEED_FILTER = _ProgressFeedClosed()
logging.getLogger("distributed.scheduler").addFilter(_FEED_FILTER)


class GatewayScheduler(Scheduler):
    """distributed's scheduler, with task batching, the gateway's own ``worker_saturation``
    and no work stealing.

    Batching: each graph a client submits (any client: ``Client(cluster)`` as well as
    `LambdaClient`) is wrapped in a `~dask_lambda.batching.BatchedExpr` before distributed
    materializes it, in its offload thread, when ``plan_batches()`` returns settings (it
    returns None when batching is off).

    With one gateway worker whose slots are Lambda functions, holding twice as many tasks as
    slots lets a finished function be refilled from the worker's own queue instead of waiting
    for the scheduler (benchmarks/README.md, scale.py: 10,000 x 1 s at 1,000 finished ~5 %
    sooner). ``None`` keeps ``distributed.scheduler.worker-saturation``.

    Work stealing moves tasks between workers; with one worker it has nothing to do, but its
    hook runs on every transition (about 5 % of the client's CPU in a 10,000-task map).

    ``dashboard_address=None`` means no dashboard; distributed's scheduler would still listen
    on port 8787 (or another) for its HTTP routes (health, metrics), which nobody here reads.
    """

    def __init__(self, *args: Any, worker_saturation: float | None = None,
                 plan_batches: Callable[[], BatchSettings | None] | None = None,
                 **kwargs: Any):
        from distributed.scheduler import DEFAULT_EXTENSIONS

        self._http = kwargs.get("dashboard") is not False
        kwargs.setdefault("extensions", {name: ext for name, ext in DEFAULT_EXTENSIONS.items()
                                         if name != "stealing"})
        super().__init__(*args, **kwargs)
        if worker_saturation is not None:
            self.WORKER_SATURATION = float(worker_saturation)
        self.plan_batches = plan_batches
        #: Replaces the gateway worker by a fresh one (set by the cluster).
        self.restart_gateway: Callable[[], Awaitable[None]] | None = None

    async def restart_workers(self, workers: Any = None, *, client: str | None = None,
                              timeout: float = 30, wait_for_workers: bool = True,
                              on_error: str = "raise", stimulus_id: str) -> dict:
        """``client.restart()``: the gateway has no nanny, and distributed would remove it
        and wait for a deployment system to bring it back; instead the cluster replaces it
        with a fresh one (its running invocations stopped, its outputs deleted, the local
        backend's execution environments recycled)."""
        if self.restart_gateway is None:
            return await super().restart_workers(
                workers, client=client, timeout=timeout, wait_for_workers=wait_for_workers,
                on_error=on_error, stimulus_id=stimulus_id)  # type: ignore[arg-type]
        old = list(self.workers)
        await asyncio.wait_for(self.restart_gateway(), timeout)
        self.log_event("all", {"action": "restart-workers", "workers": old, "client": client})
        return {addr: "OK" for addr in old}

    def start_http_server(self, *args: Any, **kwargs: Any) -> None:
        if self._http:
            super().start_http_server(*args, **kwargs)

    async def update_graph(self, client: str, expr_ser: Any, keys: Any, *args: Any,
                           **kwargs: Any) -> None:
        serialize.new_submission()  # its functions are pickled again: globals may have changed
        settings = self.plan_batches() if self.plan_batches is not None else None
        if settings is not None:
            try:
                expr = deserialize(expr_ser.header, expr_ser.frames)
            except Exception:  # distributed reports it to the client as it does for any graph
                pass
            else:
                if not (isinstance(expr, LLGExpr) and len(expr.operand("dsk")) < 2):  # submit()
                    expr = BatchedExpr(expr, keys, settings, cull_graph=isinstance(expr, LLGExpr),
                                       scheduler=self)
                expr_ser = _handed_over(expr)
        return await super().update_graph(client, expr_ser, keys, *args, **kwargs)


    async def register_nanny_plugin(self, comm: Any, plugin: Any, name: str,
                                    idempotent: bool | None = None) -> dict:
        """Nanny plugins prepare worker processes; here there are none (tasks run in Lambda
        functions): refuse them with what to do instead, rather than do nothing."""
        import pickle

        try:
            kind = type(pickle.loads(plugin) if isinstance(plugin, bytes) else plugin).__name__
        except Exception:
            kind = "this plugin"
        raise NotAvailableInLambda(
            f"nanny plugin {kind} prepares Dask worker processes, and a Lambda cluster has "
            "none (its tasks run in Lambda functions): "
            + _PLUGIN_ADVICE.get(kind.lstrip("_").replace("NannyPlugin", ""),
                                 "do the setup inside the task function instead."))


#: Objects handed to distributed in this process as if they had been serialized (a graph the
#: scheduler rewrote), so that nothing is pickled twice.
_HANDED: dict[int, Any] = {}
_HANDED_IDS = itertools.count()
_IN_PROCESS = "dask-lambda-in-process"


def _handed_over(obj: Any) -> Serialized:
    token = next(_HANDED_IDS)
    _HANDED[token] = obj
    return Serialized({"serializer": _IN_PROCESS, "token": token}, [])


register_serialization_family(_IN_PROCESS, None,
                              lambda header, frames: _HANDED.pop(header["token"]))


#: What to do instead of distributed's plugins that prepare workers.
_PLUGIN_ADVICE = {
    "_InstallWorkerPlugin": "a Lambda function has the packages it was deployed with: add "
                            "them with `dask-lambda deploy --extra-packages NAME,...`.",
    "PipInstall": "a Lambda function has the packages it was deployed with: add them with "
                  "`dask-lambda deploy --extra-packages NAME,...` (the local backend uses "
                  "this environment: pip install them here).",
    "CondaInstall": "a Lambda function has the packages it was deployed with: add them with "
                    "`dask-lambda deploy --extra-packages NAME,...`.",
    "Environ": "set the variables inside the task function (os.environ[...] = ...), or pass "
               "the values as arguments.",
    "UploadDirectory": "put the files in S3 and read them from there inside the task, or "
                       "client.upload_file(path) for a module or a .zip of modules.",
}
