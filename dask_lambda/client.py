"""LambdaClient: a ``distributed.Client`` whose tasks run in AWS Lambda."""

from __future__ import annotations

from typing import Any

from distributed import Client

from .backends.base import Backend
from .cluster import LambdaCluster
from .serialize import find_unpicklable


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
        cluster_args = {k: kwargs.pop(k) for k in self._CLUSTER_ARGS if k in kwargs}
        cluster = LambdaCluster(bucket, backend=backend, concurrency=concurrency,
                                memory=memory, timeout=timeout, batching=batching,
                                asynchronous=asynchronous, **cluster_args)
        try:
            super().__init__(cluster, asynchronous=asynchronous, **kwargs)
        except BaseException:
            cluster.close()
            raise

    def _graph_to_futures(self, expr: Any, keys: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._graph_to_futures(expr, keys, *args, **kwargs)
        except TypeError as exc:
            # distributed says "Could not serialize object of type HLGExpr": name the task.
            error = find_unpicklable(expr) if "serialize" in str(exc) else None
            if error is None:
                raise
            raise error from exc

    @property
    def batching(self) -> bool:
        """Whether chains and small subtrees of short tasks run in one invocation."""
        return bool(self.cluster.batching)

    async def _close(self, fast: bool = False) -> None:
        try:
            await super()._close(fast=fast)
        finally:
            cluster = getattr(self, "cluster", None)
            if cluster is not None:
                await cluster.close()

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
