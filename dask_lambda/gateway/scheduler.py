"""The gateway's scheduler: distributed's, with task batching for every client, the
gateway's own ``worker_saturation``, no work stealing, and a ``client.restart()`` that
replaces the gateway worker instead of waiting for a nanny."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from distributed import Scheduler
from distributed.protocol.serialize import (
    Serialized,
    deserialize,
    register_serialization_family,
)

from .. import serialize
from .._compat import LLGExpr
from ..batching import BatchedExpr, BatchSettings
from ..errors import NotAvailableInLambda
from .worker import PLUGIN_ADVICE

logger = logging.getLogger("dask_lambda")


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
            + PLUGIN_ADVICE.get(kind.lstrip("_").replace("NannyPlugin", ""),
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
