"""LambdaClient: a ``distributed.Client`` whose tasks run in AWS Lambda."""

from __future__ import annotations

from typing import Any

import dask
from distributed import Client

from dask_lambda_handler.protocol import ObjectRef

from .cluster import LambdaCluster
from .serialize import find_unpicklable

#: P2P shuffle and rechunk need worker plugins that do not exist in Lambda.
TASK_BASED = {"dataframe.shuffle.method": "tasks", "array.rechunk.method": "tasks"}


class LambdaClient(Client):
    """A Dask client whose tasks run in AWS Lambda; the scheduler stays here.

    Parameters
    ----------
    bucket
        ``"s3://bucket/prefix"`` or ``"bucket"``: where job and result objects go.
    backend
        ``"local"`` (default: processes on this machine acting as Lambda, with a
        local S3 server; no AWS account needed) or ``"aws"``.
    concurrency
        Most tasks running at once.
    memory, timeout
        Memory (MB) and timeout (s) of each function invocation.
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
                     "cost_budget", "local_faults", "local_s3_endpoint", "dashboard_address",
                     "loop")

    def __init__(self, bucket: str | None = None, *, backend: str | None = None,
                 concurrency: int | None = None, memory: int | None = None,
                 timeout: float | None = None, asynchronous: bool = False, **kwargs: Any):
        cluster_args = {k: kwargs.pop(k) for k in self._CLUSTER_ARGS if k in kwargs}
        cluster = LambdaCluster(bucket, backend=backend, concurrency=concurrency,
                                memory=memory, timeout=timeout, asynchronous=asynchronous,
                                **cluster_args)
        self._task_based = dask.config.set(TASK_BASED)
        try:
            super().__init__(cluster, asynchronous=asynchronous, **kwargs)
        except BaseException:
            self._task_based.__exit__(None, None, None)
            cluster.close()
            raise

    def _graph_to_futures(self, expr: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._graph_to_futures(expr, *args, **kwargs)
        except TypeError as exc:
            # distributed says "Could not serialize object of type HLGExpr": name the task.
            error = find_unpicklable(expr) if "serialize" in str(exc) else None
            if error is None:
                raise
            raise error from exc

    async def _gather(self, futures: Any, *args: Any, **kwargs: Any) -> Any:
        # Outputs kept in S3 reach the client as references: download only what is gathered.
        result = await super()._gather(futures, *args, **kwargs)
        refs = _find_refs(result)
        if not refs:
            return result
        executor = self.cluster.executor
        values = await executor.load(refs)
        return _replace_refs(result, values)

    async def _close(self, fast: bool = False) -> None:
        try:
            await super()._close(fast=fast)
        finally:
            cluster = getattr(self, "cluster", None)
            if cluster is not None:
                await cluster.close()
            if getattr(self, "_task_based", None) is not None:
                self._task_based.__exit__(None, None, None)
                self._task_based = None

    def cost_report(self) -> dict:
        """What this client's Lambda work cost so far: invocations, GB-seconds, S3, dollars."""
        return self.cluster.cost_report()

    def lambda_stats(self) -> dict:
        """Counters of this client's Lambda work: tasks, invocations, cold starts, retries, bytes."""
        return self.cluster.lambda_stats()


def _find_refs(obj: Any, found: list | None = None) -> list:
    found = [] if found is None else found
    if isinstance(obj, ObjectRef):
        found.append(obj)
    elif isinstance(obj, (list, tuple, set)):
        for item in obj:
            _find_refs(item, found)
    elif isinstance(obj, dict):
        for item in obj.values():
            _find_refs(item, found)
    return found


def _replace_refs(obj: Any, values: dict) -> Any:
    if isinstance(obj, ObjectRef):
        return values[obj]
    if isinstance(obj, (list, tuple, set)):
        return type(obj)(_replace_refs(item, values) for item in obj)
    if isinstance(obj, dict):
        return {k: _replace_refs(v, values) for k, v in obj.items()}
    return obj
