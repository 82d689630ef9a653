"""LambdaCluster: a local scheduler plus one gateway worker whose tasks run in Lambda.

Built on ``distributed.deploy.SpecCluster``: the scheduler and the gateway
worker run in this process (as ``LocalCluster(processes=False)``); the
worker's executor is a :class:`~dask_lambda.gateway.LambdaExecutor`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import secrets
import tempfile
import time
import uuid
from typing import Any

from dask_lambda_handler import protocol
from distributed.deploy.spec import SpecCluster
from distributed.worker import DEFAULT_METRICS

from . import _compat, card, gc_tuning, runs
from ._compat import NoOpAwaitable
from .backends.base import Backend, FunctionSettings
from .batching import BatchSettings
from .cost import CostMeter
from .deployment.names import bucket_url
from .errors import ConfigurationError
from .gateway import (
    GatewayScheduler,
    GatewayWorker,
    LambdaExecutor,
    LocalTaskExecutor,
    gateway_metrics,
)
from .settings import NOT_GIVEN, Settings, parse_bucket  # noqa: F401  (parse_bucket: cli's)
from .store import S3Store
from .while_open import EnvironmentLayers, WhileAnyOpen

BACKENDS = ("local", "aws")
#: The name of the one worker: the gateway whose tasks run in Lambda.
GATEWAY = "lambda-gateway"
#: P2P shuffle and rechunk need worker plugins that do not exist in Lambda.
TASK_BASED_METHODS = {"dataframe.shuffle.method": "tasks", "array.rechunk.method": "tasks"}
logger = logging.getLogger("dask_lambda")
#: Seconds a clean-up step of `LambdaCluster.close` may take (S3 unreachable: botocore's
#: retries would take minutes); and a stop of processes or connections.
_CLEANUP_TIMEOUT = 30.0
_STOP_TIMEOUT = 15.0
class LambdaCluster(SpecCluster):
    """A Dask cluster whose tasks run in AWS Lambda (or the local stand-in).

    Most users want :class:`dask_lambda.LambdaClient`, which makes one of these.

    Parameters
    ----------
    bucket
        ``"s3://bucket/prefix"`` or ``"bucket"``; default ``lambda.bucket``, and on the local
        backend none is needed.
    settings
        A `dask_lambda.settings.Settings` made already (as `LambdaClient` does), instead of
        the settings as arguments.
    local_faults
        Local backend: a `dask_lambda.backends.local.faults.FaultPlan` (for testing).
    asynchronous, loop
        As for any ``SpecCluster``.
    **options
        The settings, named in `Settings.arguments() <dask_lambda.settings.Settings>`:
        ``backend``, ``concurrency``, ``memory``, ``function_timeout``, ``inline_max``,
        ``dashboard_address``... (see the ``lambda`` configuration schema). Any not given
        come from ``dask.config``. ``backend`` may be a `Backend` made without settings (e.g.
        ``SimulatedBackend()``): the cluster gives it its settings through
        `Backend.configure`.
    """

    def __init__(self, bucket: Any = NOT_GIVEN, *, settings: Settings | None = None,
                 local_faults: Any = None, asynchronous: bool = False, loop: Any = None,
                 **options: Any):
        # Every setting is checked (by Settings) before anything, a directory or a process, exists.
        if settings is None:
            settings = Settings.from_arguments(bucket, **options)
        elif bucket is not NOT_GIVEN or options:
            raise ConfigurationError(
                "give LambdaCluster its settings either as settings= or as arguments, not both: "
                "e.g. LambdaCluster(settings=Settings.from_arguments(memory=4096))")
        #: The checked settings this cluster was made with.
        self.config = settings
        self.bucket, self.prefix = settings.bucket, settings.prefix
        self.settings = FunctionSettings(
            concurrency=settings.concurrency, memory=settings.memory,
            timeout=settings.function_timeout, signing_key=secrets.token_bytes(32))
        self.layout = protocol.Layout(self.bucket, self.prefix, uuid.uuid4().hex[:12])

        self.backend: Backend
        if isinstance(settings.backend, Backend):  # injected: it takes the settings built here
            settings.backend.configure(self.settings)
            self.backend = settings.backend
        elif settings.backend == "aws":
            from .backends.aws import AwsBackend
            from .deploy import keys
            from .deployment import names

            deploy = names.deploy_command(self.bucket, self.prefix, settings.function,
                                          settings.region)
            self.settings = dataclasses.replace(  # the key deploy stored, not a new one
                self.settings,
                signing_key=settings.signing_key or keys.load(settings.function, deploy))
            self.backend = AwsBackend(
                self.settings, layout=self.layout, function=settings.function,
                region=settings.region, mode=settings.mode,
                notification_grace=settings.notification_grace, invoker=settings.invoker)
        else:
            from .backends.local import LocalBackend

            self.backend = LocalBackend(
                self.settings, s3_endpoint=settings.local_s3_endpoint,
                python=settings.local_python, faults=local_faults)
        self.store: S3Store | None = None
        self.executor: LambdaExecutor | None = None
        self._final_stats: Any = None
        self._inline_max = settings.inline_max
        self._retries = settings.retries
        self._locality = settings.locality
        self._max_output = settings.max_output
        self._oom_retry_memory = settings.oom_retry_memory
        self.cost = CostMeter(settings.memory, settings.cost_budget)
        self._stale_after = settings.stale_after
        self._heartbeat_task: Any = None
        self.stale_runs_removed: dict[str, int] = {}
        self._env_layer: int | None = None
        self._marker_written = False
        self._configured_concurrency = settings.concurrency
        #: Whether chains and small subtrees of short tasks run in one invocation.
        self.batching = settings.batching
        self._while_open: contextlib.ExitStack | None = None
        self._local_directory = tempfile.mkdtemp(prefix="dask-lambda-gateway-")

        dashboard = settings.dashboard_address
        scheduler = {"cls": GatewayScheduler, "options": {
            "protocol": "inproc://", "dashboard": dashboard is not None,
            "dashboard_address": dashboard, "worker_saturation": settings.worker_saturation,
            "plan_batches": self._plan_batches}}
        super().__init__(scheduler=scheduler, workers={}, asynchronous=asynchronous,
                         loop=loop, silence_logs=logging.WARNING,
                         name=f"LambdaCluster-{self.layout.run}")

    async def _start(self) -> None:
        if self.status.name == "running":
            return
        try:
            await self.backend.start()
            # Price GB-seconds at what Lambda bills: the deployed function's memory and
            # architecture where the backend has read them (aws), else the settings.
            self.cost.memory_mb = self.backend.billed_memory_mb
            self.cost.arch = self.backend.billed_architecture
            self.store = S3Store(self.bucket, **self.backend.s3_options)
            await self.store.start()
            await self.store.check_bucket(create=self.backend.creates_bucket)
            await runs.write_marker(self.store, self.layout, time.time())
            self._marker_written = True
            self.stale_runs_removed = await runs.cleanup_stale_runs(
                self.store, self.layout, self._stale_after, self.config.heartbeat)
            self._heartbeat_task = asyncio.ensure_future(self._heartbeat())
            self._set_environment(self.backend.client_environment())
            self.executor = LambdaExecutor(
                self.backend, self.store, self.layout,
                signing_key=protocol.run_key(self.settings.signing_key, self.layout.run),
                inline_max=self._inline_max, retries=self._retries, locality=self._locality,
                max_output=self._max_output, oom_retry_memory=self._oom_retry_memory,
                cost=self.cost, share_min=self.config.share_min)
            self.worker_spec = self._gateway_spec()
            await super()._start()
            self.scheduler.restart_gateway = self._restart_gateway
            self._hold_process_settings()
        except BaseException:
            await self._release()
            raise

    def _gateway_spec(self) -> dict:
        """The spec of the one gateway worker (a fresh one after ``client.restart()``)."""
        assert self.executor is not None
        self.local_executor = LocalTaskExecutor(self.executor, os.cpu_count() or 1)
        return {GATEWAY: {"cls": GatewayWorker, "options": {
            "lambda_executor": self.executor,
            "nthreads": self.settings.concurrency,
            "executor": {"default": self.executor, "local": self.local_executor},
            "metrics": {**DEFAULT_METRICS, **gateway_metrics(self.executor)},
            "memory_limit": 0, "data": self.executor.data,
            "local_directory": self._local_directory,
            "name": GATEWAY}}}

    # -- what any Dask cluster offers, as it applies to Lambda ------------------------------

    def scale(self, n: int = 0, memory: str | int | None = None,  # type: ignore[override]
              cores: int | None = None) -> Any:
        """Set how many tasks run in Lambda at once (the concurrency cap).

        Lambda already starts functions as tasks arrive and bills nothing while idle, so
        ``scale`` bounds that: ``scale(10)`` (ten workers, as on any cluster: each function
        is a one-thread worker), ``scale(cores=40)``, ``scale(memory="100 GiB")`` (divided
        by each function's memory). ``scale(0)`` releases nothing (nothing stands idle) and
        keeps the cap. The gateway worker is never removed.
        """
        cap = self._cap(n, memory, cores, "scale")
        if cap is None:
            logger.info("scale(0): a Lambda cluster has no idle workers to release; the "
                        "concurrency cap stays %d", self.settings.concurrency)
            return NoOpAwaitable() if self.asynchronous else None
        return self.sync(self._set_concurrency, cap)

    def adapt(self, Adaptive: Any = None, minimum: float = 0,  # type: ignore[override]
              maximum: float = math.inf, minimum_cores: int | None = None,
              maximum_cores: int | None = None, minimum_memory: str | None = None,
              maximum_memory: str | None = None, **kwargs: Any) -> LambdaAdaptive:
        """Let Lambda scale with demand, at most ``maximum`` tasks at once (or
        ``maximum_cores`` / ``maximum_memory``); without a maximum, the configured
        concurrency. Lambda does the adapting itself: nothing runs or bills between bursts,
        and ``minimum`` has nothing to keep warm, so it is accepted and ignored."""
        if kwargs:
            logger.info("adapt(): %s do not apply to Lambda and are ignored",
                        ", ".join(sorted(kwargs)))
        cap = None
        if maximum != math.inf or maximum_cores is not None or maximum_memory is not None:
            cap = self._cap(0 if maximum == math.inf else maximum, maximum_memory,
                            maximum_cores, "adapt")
        cap = cap or self._configured_concurrency
        adaptive = LambdaAdaptive(self, minimum=minimum, maximum=cap)
        self._adaptive = adaptive
        assert self.loop is not None
        self.loop.add_callback(self._set_concurrency, cap)
        return adaptive

    def _cap(self, n: Any, memory: Any, cores: Any, method: str) -> int | None:
        """The concurrency that ``scale(n, memory, cores)`` asks for (None for 0)."""
        from dask.utils import parse_bytes

        wanted = 0
        try:
            if n is not None and n != 0:
                wanted = max(wanted, int(n))
                if wanted != n or wanted < 0:
                    raise ValueError
            if cores is not None:
                wanted = max(wanted, int(cores))
            if memory is not None:
                per = self.settings.memory * 2**20
                wanted = max(wanted, -(-parse_bytes(memory) // per))
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"{method}() takes a whole number of workers (Lambda functions running at "
                f"once), cores, or memory, not n={n!r}, cores={cores!r}, memory={memory!r}: "
                f"e.g. cluster.{method}({max(1, self.settings.concurrency)})") from None
        if wanted <= 0:
            return None
        limit = self.backend.max_concurrency
        if limit is not None and wanted > limit:
            logger.warning("%s(%d): the %s backend runs at most %d tasks at once on this "
                           "machine; the cap is %d", method, wanted, self.backend.name or
                           type(self.backend).__name__, limit, limit)
            wanted = limit
        return wanted

    async def _set_concurrency(self, concurrency: int) -> None:
        if self.executor is None or concurrency == self.settings.concurrency:
            return
        self.settings = dataclasses.replace(self.settings, concurrency=concurrency)
        self.executor.dispatch.governor.set_concurrency(concurrency)
        await self.backend.set_concurrency(concurrency)
        spec = self.worker_spec.get(GATEWAY)
        if spec is not None:
            spec["options"]["nthreads"] = concurrency
        worker = self.workers.get(GATEWAY)
        if worker is not None and self.scheduler is not None:
            _compat.set_worker_threads(self.scheduler, worker, concurrency)

    async def _restart_gateway(self) -> None:
        """``client.restart()``: a fresh gateway worker (the scheduler already forgot every
        task); running invocations are stopped, kept outputs deleted, and the local
        backend's execution environments replaced, as LocalCluster restarts its workers."""
        worker = self.workers.pop(GATEWAY, None)
        if worker is not None:
            await worker.close(reason="client.restart()")
        if self.executor is not None:
            self.executor.reset()
        recycle = getattr(self.backend, "recycle", None)
        if recycle is not None:
            await recycle()
        self.worker_spec = self._gateway_spec()
        await self._correct_state()

    def _hold_process_settings(self) -> None:
        """Process-wide settings every client of this cluster needs while it is open (undone
        by close, in whatever order clusters close): task-based shuffles and rechunks (P2P
        needs worker plugins that do not exist in Lambda) and a calmer garbage collector."""
        if self._while_open is None:
            stack = contextlib.ExitStack()
            stack.enter_context(TASK_BASED.held())
            stack.enter_context(gc_tuning.collect_less_often())
            self._while_open = stack

    def _plan_batches(self) -> BatchSettings | None:
        """The batching limits for the graph being submitted now, or None (batching off)."""
        executor = self.executor
        if not self.batching or executor is None:
            return None
        return BatchSettings.from_settings(self.config, executor.duration_estimates())

    async def _close(self) -> None:
        try:
            await super()._close()
        finally:
            await self._release()

    async def _heartbeat(self) -> None:
        started = time.time()
        interval = self.config.heartbeat
        failing = False
        while True:
            await asyncio.sleep(interval)
            if self.store is None:
                continue
            try:
                await runs.write_marker(self.store, self.layout, started)
            except Exception as exc:  # the next beat may succeed; say so once per outage
                if not failing:
                    logger.warning(
                        "dask-lambda could not rewrite this client's run marker s3://%s/%s "
                        "(%s: %s); it tries again every %g s. If S3 stays unreachable for "
                        "lambda.stale-after (%g s), another client on this prefix will take "
                        "this run for dead and delete its objects.", self.bucket,
                        self.layout.run_marker, type(exc).__name__, exc, interval,
                        self._stale_after)
                failing = True
            else:
                if failing:
                    logger.warning("dask-lambda rewrote its run marker again")
                failing = False

    async def _release(self) -> None:
        """Delete the run's objects and stop what the backend started (idempotent).

        Every step runs, whatever failed before it, within a bounded time; a step that
        fails is logged with what it left behind.
        """
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            self._heartbeat_task = None
        where = " and ".join(f"s3://{self.bucket}/{p}" for p in self.layout.run_prefixes)
        left = (f"the objects under {where} stay until a later client on this prefix finds "
                "them stale (lambda.stale-after), `dask-lambda cleanup --bucket "
                f"{bucket_url(self.bucket, self.prefix)}` removes them, or the bucket's "
                "lifecycle rule expires them")
        # nothing may write after the run's objects are deleted
        await _step("stop the running invocations", self.backend.stop(), _STOP_TIMEOUT)
        s3_ok = True
        if self.executor is not None:
            executor, self.executor = self.executor, None
            self._final_stats = executor.stats
            s3_ok = await _step("delete this run's objects", executor.close(),
                                _CLEANUP_TIMEOUT, left)
        if self.store is not None:
            store, self.store = self.store, None
            if s3_ok and self._marker_written:
                marker = self.layout.run_marker
                await _step("delete this run's marker", store.delete([marker], quick=True),
                            _CLEANUP_TIMEOUT, f"s3://{self.bucket}/{marker} stays until a "
                            "later client finds it stale")
            await _step("close the S3 client", store.close(), _STOP_TIMEOUT)
        await _step("stop the backend", self.backend.close(), _STOP_TIMEOUT)
        self._restore_environment()
        if self._while_open is not None:
            stack, self._while_open = self._while_open, None
            stack.close()
        import shutil

        shutil.rmtree(self._local_directory, ignore_errors=True)

    # While open, the client process sees the backend's S3 (so s3:// paths work in graphs
    # built or read here, e.g. dd.read_parquet("s3://...") metadata). The newest open
    # cluster's S3 wins; closing it brings back the one beneath (`EnvironmentLayers`).
    def _set_environment(self, env: dict[str, str]) -> None:
        layer: dict[str, str | None] = {"AWS_PROFILE": None, "AWS_SESSION_TOKEN": None}
        layer.update(env)
        self._env_layer = _ENVIRONMENT.push(layer)

    def _restore_environment(self) -> None:
        if self._env_layer is not None:
            token, self._env_layer = self._env_layer, None
            _ENVIRONMENT.pop(token)

    def __repr__(self) -> str:
        return card.text(self)

    def _repr_html_(self, cluster_status: Any = None) -> str:
        return card.html_card(self)

    async def _get_logs(self, cluster: bool = True, scheduler: bool = True,
                        workers: Any = True) -> Any:
        """distributed's logs of the cluster, scheduler and gateway worker, and what the
        tasks printed in Lambda (most recent last, each with its Lambda request id)."""
        from distributed.utils import Log

        logs = await super()._get_logs(cluster=cluster, scheduler=scheduler, workers=workers)
        executor = self.executor
        if workers and executor is not None:
            logs["Lambda tasks"] = Log("\n".join(
                f"{key} (attempt {entry['attempt']}, request {entry['request_id']}):\n"
                f"{entry['text'].rstrip()}"
                for key, entries in executor.logs.items() for entry in entries))
        return logs

    def lambda_stats(self) -> dict:
        """Counters of this cluster's Lambda work (tasks, invocations, cold starts, bytes...)."""
        from dataclasses import asdict

        stats = self.executor.stats if self.executor is not None else self._final_stats
        out = asdict(stats) if stats is not None else {}
        out.update(invocations=self.backend.invocations, cold_starts=self.backend.cold_starts)
        return out

    def cost_report(self) -> dict:
        """Invocations, billed GB-seconds, S3 requests and the dollar estimate so far."""
        report = self.cost.report()
        store = self.store
        report["client_s3_requests"] = store.requests if store is not None else None
        stats = self.lambda_stats()  # what uploading client-held values once saved
        report["shared_bytes"] = stats.get("shared_bytes", 0)
        report["shared_bytes_saved"] = stats.get("shared_bytes_saved", 0)
        return report


async def _step(what: str, work: Any, timeout: float, left: str = "") -> bool:
    """Await one clean-up step within ``timeout`` s; log (never raise) a failure and what it
    left behind. Returns whether it succeeded."""
    try:
        await asyncio.wait_for(work, timeout)
        return True
    except Exception as exc:
        why = "it took too long" if isinstance(exc, asyncio.TimeoutError) else (
            f"{type(exc).__name__}: {exc}")
        logger.warning("dask-lambda could not %s while closing (%s)%s", what, why,
                       f": {left}" if left else "")
        return False


def _clear_fs_caches() -> None:
    """Forget cached s3fs filesystems (they keep the endpoint and credentials they were made
    with)."""
    import sys

    if "s3fs" in sys.modules:
        sys.modules["s3fs"].S3FileSystem.clear_instance_cache()


_ENVIRONMENT = EnvironmentLayers(on_change=_clear_fs_caches)


def _task_based_on() -> dict[str, Any]:
    import dask

    saved = {k: dask.config.get(k, None) for k in TASK_BASED_METHODS}
    dask.config.set(TASK_BASED_METHODS)
    return saved


def _task_based_off(saved: dict[str, Any]) -> None:
    import dask

    dask.config.set(saved)


TASK_BASED = WhileAnyOpen(_task_based_on, _task_based_off)


class LambdaAdaptive:
    """What ``LambdaCluster.adapt`` returns: Lambda adapts by itself, within ``maximum``.

    Attributes
    ----------
    minimum, maximum
        As given to ``adapt`` (``maximum``: the concurrency cap it set).
    """

    def __init__(self, cluster: LambdaCluster, *, minimum: float, maximum: int):
        self.cluster = cluster
        self.minimum = minimum
        self.maximum = maximum

    def stop(self) -> None:
        """Stop "adapting": the cap stays where it is, as distributed's Adaptive leaves the
        workers it has."""
        if self.cluster._adaptive is self:
            self.cluster._adaptive = None

    def __repr__(self) -> str:
        return f"<LambdaAdaptive: minimum={self.minimum} maximum={self.maximum}>"
