"""LambdaClient: a ``distributed.Client`` whose tasks run in AWS Lambda."""

from __future__ import annotations

import contextlib
from typing import Any

import dask
from dask._expr import LLGExpr
from distributed import Client

from . import config, gc_tuning, serialize
from .backends.base import Backend
from .batching import BatchedExpr, BatchSettings
from .cluster import LambdaCluster
from .serialize import find_unpicklable
from .while_open import WhileAnyOpen

#: P2P shuffle and rechunk need worker plugins that do not exist in Lambda.
TASK_BASED = {"dataframe.shuffle.method": "tasks", "array.rechunk.method": "tasks"}


def _task_based_on() -> dict[str, Any]:
    saved = {k: dask.config.get(k, None) for k in TASK_BASED}
    dask.config.set(TASK_BASED)
    return saved


def _task_based_off(saved: dict[str, Any]) -> None:
    dask.config.set(saved)


_TASK_BASED = WhileAnyOpen(_task_based_on, _task_based_off)


class LambdaClient(Client):
    """A Dask client whose tasks run in AWS Lambda; the scheduler stays here.

    Parameters
    ----------
    bucket
        ``"s3://bucket/prefix"`` or ``"bucket"``: where job and result objects go.
    backend
        ``"local"`` (default: processes on this machine acting as Lambda, with a
        local S3 server; no AWS account needed) or ``"aws"``; or a `Backend` instance
        made without settings, such as
        ``dask_lambda.backends.simulated.SimulatedBackend()``, which gets this
        client's settings.
    concurrency
        Most tasks running at once.
    memory, timeout
        Memory (MB) and timeout (s) of each function invocation.
    batching
        Run chains and small subtrees of short tasks in one invocation when that is
        faster (default ``lambda.batching.enabled``, true); see `dask_lambda.batching`.
    **kwargs
        Other cluster settings (``inline_max``, ``retries``, ``local_s3_endpoint``,
        ``dashboard_address``) and ``distributed.Client`` arguments
        (``asynchronous``, ``set_as_default``, ...).

    Examples
    --------
    >>> from dask_lambda import LambdaClient
    >>> with LambdaClient("s3://my-bucket/dask", backend="local") as client:  # doctest: +SKIP
    ...     df.groupby("name").x.mean().compute()
    """

    _CLUSTER_ARGS = ("inline_max", "retries", "locality", "max_output", "oom_retry_memory",
                     "cost_budget", "stale_after", "local_faults", "local_s3_endpoint",
                     "dashboard_address", "function", "region", "mode", "loop")

    def __init__(self, bucket: str | None = None, *, backend: str | Backend | None = None,
                 concurrency: int | None = None, memory: int | None = None,
                 timeout: float | None = None, batching: bool | None = None,
                 asynchronous: bool = False, **kwargs: Any):
        if batching is None:
            batching = dask.config.get("lambda.batching.enabled")
        if not isinstance(batching, bool):
            raise TypeError(f"batching must be True or False, not {batching!r}: e.g. "
                            "LambdaClient(..., batching=False)")
        self.batching = batching
        if batching:  # bad settings fail here, not at the first compute
            BatchSettings.from_config(float(config.get("timeout", timeout)), {})
        cluster_args = {k: kwargs.pop(k) for k in self._CLUSTER_ARGS if k in kwargs}
        cluster = LambdaCluster(bucket, backend=backend, concurrency=concurrency,
                                memory=memory, timeout=timeout, asynchronous=asynchronous,
                                **cluster_args)
        # Process-wide settings while the client is open (undone by close).
        while_open = contextlib.ExitStack()
        while_open.enter_context(_TASK_BASED.held())
        while_open.enter_context(gc_tuning.collect_less_often())
        self._while_open: contextlib.ExitStack | None = while_open
        try:
            super().__init__(cluster, asynchronous=asynchronous, **kwargs)
        except BaseException:
            while_open.close()
            cluster.close()
            raise

    def _graph_to_futures(self, expr: Any, keys: Any, *args: Any, **kwargs: Any) -> Any:
        serialize.new_submission()  # functions are pickled again: globals may have changed
        submitted = self._batched(expr, keys) if self.batching else expr
        try:
            return super()._graph_to_futures(submitted, keys, *args, **kwargs)
        except TypeError as exc:
            # distributed says "Could not serialize object of type HLGExpr": name the task.
            error = find_unpicklable(expr) if "serialize" in str(exc) else None
            if error is None:
                raise
            raise error from exc

    def _batched(self, expr: Any, keys: Any) -> Any:
        """The graph with chains and subtrees fused (done by the scheduler as it reads it)."""
        if isinstance(expr, LLGExpr) and len(expr.operand("dsk")) < 2:
            return expr  # submit(): nothing to fuse
        executor = self.cluster.executor
        measured = executor.duration_estimates() if executor is not None else {}
        settings = BatchSettings.from_config(self.cluster.settings.timeout, measured)
        return BatchedExpr(expr, keys, settings, cull_graph=isinstance(expr, LLGExpr),
                           scheduler=self.scheduler.address)

    async def _close(self, fast: bool = False) -> None:
        try:
            await super()._close(fast=fast)
        finally:
            cluster = getattr(self, "cluster", None)
            if cluster is not None:
                await cluster.close()
            while_open = getattr(self, "_while_open", None)
            if while_open is not None:
                self._while_open = None
                while_open.close()

    def get_task_logs(self, key: Any) -> list[dict]:
        """What a task printed or logged inside Lambda, one entry per invocation that printed.

        Each entry has ``text``, the Lambda ``request_id`` (to find the full log in
        CloudWatch) and the ``attempt``. Accepts a key or a future.
        """
        key = getattr(key, "key", key)
        executor = self.cluster.executor
        return list(executor.logs.get(str(key), [])) if executor is not None else []

    def cost_report(self) -> dict:
        """What this client's Lambda work cost so far: invocations, GB-seconds, S3, dollars."""
        return self.cluster.cost_report()

    def lambda_stats(self) -> dict:
        """Counters of this client's Lambda work: tasks, invocations, batches, retries, bytes."""
        return self.cluster.lambda_stats()
