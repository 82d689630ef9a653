"""LambdaClient: a ``distributed.Client`` whose tasks run in AWS Lambda."""

from __future__ import annotations

import contextlib
import difflib
import inspect
from typing import Any

import dask
from dask._expr import LLGExpr
from dask_lambda_handler.protocol import ObjectRef
from distributed import Client

from . import gc_tuning, serialize
from .batching import BatchedExpr, BatchSettings
from .cluster import LambdaCluster
from .errors import SettingTypeError
from .serialize import find_unpicklable
from .settings import NOT_GIVEN, Settings
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
        Local backend: a `dask_lambda.backends.faults.FaultPlan` (for testing).
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
        self.batching = settings.batching
        cluster = LambdaCluster(settings=settings, local_faults=local_faults,
                                asynchronous=asynchronous, loop=kwargs.pop("loop", None))
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
        settings = BatchSettings.from_settings(self.cluster.config, measured)
        return BatchedExpr(expr, keys, settings, cull_graph=isinstance(expr, LLGExpr),
                           scheduler=self.scheduler.address)

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
