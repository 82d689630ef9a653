"""LambdaCluster: a local scheduler plus one gateway worker whose tasks run in Lambda.

Built on ``distributed.deploy.SpecCluster``: the scheduler and the gateway
worker run in this process (as ``LocalCluster(processes=False)``); the
worker's executor is a :class:`~dask_lambda.gateway.LambdaExecutor`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import secrets
import shutil
import time
import uuid
from typing import Any

from dask_lambda_handler import protocol, s3keys
from distributed.deploy.spec import SpecCluster
from distributed.worker import DEFAULT_METRICS

from . import _compat, card, closing, runs, scratch
from ._compat import NoOpAwaitable
from .adaptive import LambdaAdaptive, concurrency_cap
from .backends.base import Backend, FunctionSettings
from .batching import BatchSettings
from .cost import CostMeter
from .errors import ConfigurationError
from .gateway import (
    GatewayScheduler,
    GatewayWorker,
    LambdaExecutor,
    LocalTaskExecutor,
    gateway_metrics,
)
from .process_settings import TASK_BASED_METHODS, WhileOpen
from .settings import NOT_GIVEN, Settings, parse_bucket  # noqa: F401  (parse_bucket: cli's)
from .store import S3Store

BACKENDS = ("local", "aws")
#: The name of the one worker: the gateway whose tasks run in Lambda.
GATEWAY = "lambda-gateway"
logger = logging.getLogger("dask_lambda")

__all__ = ["BACKENDS", "GATEWAY", "TASK_BASED_METHODS", "LambdaAdaptive", "LambdaCluster",
           "parse_bucket"]


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
        self.layout = s3keys.Layout(self.bucket, self.prefix, uuid.uuid4().hex[:12])
        self.backend: Backend
        self.settings, self.backend = _make_backend(settings, self.settings, self.layout,
                                                    local_faults)
        self.store: S3Store | None = None
        self.executor: LambdaExecutor | None = None
        self._final_stats: Any = None
        self.cost = CostMeter(settings.memory, settings.cost_budget)
        self._heartbeat_task: Any = None
        self.stale_runs_removed: dict[str, int] = {}
        self._marker_written = False
        self._configured_concurrency = settings.concurrency
        #: Whether chains and small subtrees of short tasks run in one invocation.
        self.batching = settings.batching
        self._while_open = WhileOpen()
        scratch.sweep()  # what clients killed on this machine left
        self._local_directory = scratch.make("gateway")

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
                self.store, self.layout, self.config.stale_after, self.config.heartbeat)
            self._heartbeat_task = asyncio.ensure_future(runs.heartbeat(
                self.store, self.layout, self.config.heartbeat, self.config.stale_after))
            self._while_open.set_environment(self.backend.client_environment())
            self.executor = LambdaExecutor(
                self.backend, self.store, self.layout,
                signing_key=protocol.run_key(self.settings.signing_key, self.layout.run),
                inline_max=self.config.inline_max, retries=self.config.retries,
                locality=self.config.locality, max_output=self.config.max_output,
                oom_retry_memory=self.config.oom_retry_memory, cost=self.cost,
                share_min=self.config.share_min)
            self.worker_spec = self._gateway_spec()
            await super()._start()
            self.scheduler.restart_gateway = self._restart_gateway
            self._while_open.hold_settings()
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
        return concurrency_cap(
            n, memory, cores, method, function_memory=self.settings.memory,
            concurrency=self.settings.concurrency, limit=self.backend.max_concurrency,
            backend_name=self.backend.name or type(self.backend).__name__)

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

    async def _release(self) -> None:
        """Delete the run's objects and stop what the backend started (idempotent).

        Every step runs, whatever failed before it, within a bounded time; a step that
        fails is logged with what it left behind.
        """
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            self._heartbeat_task = None
        # nothing may write after the run's objects are deleted
        await closing.step("stop the running invocations", self.backend.stop(),
                           closing.STOP_TIMEOUT)
        executor, self.executor = self.executor, None
        if executor is not None:
            self._final_stats = executor.stats
        await closing.delete_run(executor, self.store, self.layout,
                                 marker_written=self._marker_written)
        self.store = None
        await closing.step("stop the backend", self.backend.close(), closing.STOP_TIMEOUT)
        self._while_open.release()
        shutil.rmtree(self._local_directory, ignore_errors=True)

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
        if workers and self.executor is not None:
            logs["Lambda tasks"] = Log(_task_logs(self.executor))
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


def _task_logs(executor: LambdaExecutor) -> str:
    """What the tasks printed in Lambda, each with its attempt and Lambda request id."""
    return "\n".join(f"{key} (attempt {entry['attempt']}, request {entry['request_id']}):\n"
                     f"{entry['text'].rstrip()}"
                     for key, entries in executor.logs.items() for entry in entries)


def _make_backend(settings: Settings, function: FunctionSettings, layout: s3keys.Layout,
                  local_faults: Any) -> tuple[FunctionSettings, Backend]:
    """The backend ``settings`` name, given the function settings (with, on aws, the signing
    key deploy stored instead of a new one); returns both."""
    if isinstance(settings.backend, Backend):  # injected: it takes the settings built here
        settings.backend.configure(function)
        return function, settings.backend
    if settings.backend == "aws":
        from .backends.aws import AwsBackend
        from .deploy import keys
        from .deployment import names

        deploy = names.deploy_command(layout.bucket, layout.prefix, settings.function,
                                      settings.region)
        function = dataclasses.replace(  # the key deploy stored, not a new one
            function, signing_key=settings.signing_key or keys.load(settings.function, deploy))
        return function, AwsBackend(
            function, layout=layout, function=settings.function,
            region=settings.region, mode=settings.mode,
            notification_grace=settings.notification_grace, invoker=settings.invoker)
    from .backends.local import LocalBackend

    return function, LocalBackend(function, s3_endpoint=settings.local_s3_endpoint,
                                  python=settings.local_python, faults=local_faults)
