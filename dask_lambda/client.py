"""LambdaClient: a ``distributed.Client`` whose tasks run in AWS Lambda."""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from distributed import Client

from .cluster import LambdaCluster
from .errors import SettingTypeError
from .serialize import find_unpicklable
from .settings import NOT_GIVEN, Settings


class LambdaClient(Client):
    """A Dask client whose tasks run in AWS Lambda; the scheduler stays here.

    Parameters
    ----------
    bucket
        ``"s3://bucket/prefix"`` or ``"bucket"``: where job and result objects go. The local
        backend needs none (it makes a private one).
    backend
        ``"local"`` (default: processes on this machine acting as Lambda, with a
        local S3 server; no AWS account needed) or ``"aws"``; or a `Backend` instance
        made without settings, such as
        ``dask_lambda.backends.simulated.SimulatedBackend()``, which gets this
        client's settings.
    concurrency
        Most tasks running at once.
    memory, function_timeout
        Memory (MB, or a size such as ``"4 GiB"``) and timeout (seconds, or a duration such
        as ``"5 minutes"``) of each function invocation. ``timeout=`` is the old spelling of
        ``function_timeout=`` (deprecated: it is ``Client``'s connect timeout in distributed).
    batching
        Run chains and small subtrees of short tasks in one invocation when that is
        faster (default ``lambda.batching.enabled``, true); see `dask_lambda.batching`.
    local_faults
        Local backend: a `dask_lambda.backends.local.faults.FaultPlan` (for testing).
    **kwargs
        The other settings (every argument named in
        `dask_lambda.settings.Settings.arguments`: ``inline_max``, ``retries``,
        ``dashboard_address``, ``heartbeat``, ``local_s3_endpoint``, ...) and
        ``distributed.Client`` arguments (``set_as_default``, ``name``, ...). A setting not
        given comes from ``dask.config``; ``None`` turns off the settings that have an "off"
        (``dashboard_address``, ``cost_budget``, ``max_output``, ``oom_retry_memory``).

    Examples
    --------
    >>> from dask_lambda import LambdaClient
    >>> with LambdaClient(memory="4 GiB", function_timeout="5 minutes") as client:  # doctest: +SKIP
    ...     df.groupby("name").x.mean().compute()
    """

    def __init__(self, bucket: Any = NOT_GIVEN, *, asynchronous: bool = False,
                 local_faults: Any = None, **kwargs: Any):
        settings_args = {k: kwargs.pop(k) for k in Settings.arguments() if k in kwargs}
        _refuse_unknown(kwargs)
        # Every setting is checked before anything is made.
        settings = Settings.from_arguments(bucket, **settings_args)
        cluster = LambdaCluster(settings=settings, local_faults=local_faults,
                                asynchronous=asynchronous, loop=kwargs.pop("loop", None))
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
        """Whether chains and small subtrees of short tasks run in one invocation; set it to
        turn batching on or off for the graphs submitted from then on."""
        return bool(self.cluster.batching)

    @batching.setter
    def batching(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise SettingTypeError(f"batching must be True or False, not {value!r}: e.g. "
                                   "client.batching = False")
        self.cluster.batching = value

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


def _client_arguments() -> tuple[str, ...]:
    """The keyword arguments ``distributed.Client`` takes (besides the cluster)."""
    params = inspect.signature(Client.__init__).parameters.values()
    return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY
                 or (p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in ("self", "address")))


def _refuse_unknown(kwargs: dict[str, Any]) -> None:
    """Refuse a keyword that is neither a setting nor a ``Client`` argument: distributed's
    Client would ignore it (its ``**kwargs`` are for a LocalCluster it does not make here)."""
    known = (*Settings.arguments(), *_client_arguments(), "local_faults")
    for name in kwargs:
        if name not in known:
            near = difflib.get_close_matches(name, known, n=1)
            hint = f": did you mean {near[0]}=?" if near else ""
            raise SettingTypeError(
                f"LambdaClient got {name}=, which is neither a dask-lambda setting nor a "
                f"distributed.Client argument{hint}")
