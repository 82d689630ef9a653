"""LambdaCluster: a local scheduler plus one gateway worker whose tasks run in Lambda.

Built on ``distributed.deploy.SpecCluster``: the scheduler and the gateway
worker run in this process (as ``LocalCluster(processes=False)``); the
worker's executor is a :class:`~dask_lambda.executor.LambdaExecutor`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import tempfile
import time
import uuid
from typing import Any

from dask_lambda_handler import protocol
from distributed import Scheduler, Worker
from distributed.deploy.spec import SpecCluster
from distributed.worker import DEFAULT_METRICS

from . import runs
from .backends.base import Backend, FunctionSettings
from .cost import CostMeter
from .errors import ConfigurationError
from .executor import LambdaExecutor, LocalTaskExecutor, gateway_metrics
from .settings import NOT_GIVEN, Settings, parse_bucket  # noqa: F401  (parse_bucket: cli's)
from .store import S3Store


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
        Local backend: a `dask_lambda.backends.faults.FaultPlan` (for testing).
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
            from .deploy import keys, names

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
        self._saved_env: dict[str, str | None] = {}
        self._local_directory = tempfile.mkdtemp(prefix="dask-lambda-gateway-")

        dashboard = settings.dashboard_address
        scheduler = {"cls": GatewayScheduler, "options": {
            "protocol": "inproc://", "dashboard": dashboard is not None,
            "dashboard_address": dashboard, "worker_saturation": settings.worker_saturation}}
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
            self.stale_runs_removed = await runs.cleanup_stale_runs(
                self.store, self.layout, self._stale_after)
            self._heartbeat_task = asyncio.ensure_future(self._heartbeat())
            self._set_environment(self.backend.client_environment())
            self.executor = LambdaExecutor(
                self.backend, self.store, self.layout, signing_key=self.settings.signing_key,
                inline_max=self._inline_max, retries=self._retries, locality=self._locality,
                max_output=self._max_output, oom_retry_memory=self._oom_retry_memory,
                cost=self.cost)
            self.local_executor = LocalTaskExecutor(self.executor, os.cpu_count() or 1)
            self.worker_spec = {"lambda-gateway": {"cls": Worker, "options": {
                "nthreads": self.settings.concurrency,
                "executor": {"default": self.executor, "local": self.local_executor},
                "metrics": {**DEFAULT_METRICS, **gateway_metrics(self.executor)},
                "memory_limit": 0, "data": self.executor.data,
                "local_directory": self._local_directory,
                "name": "lambda-gateway"}}}
            await super()._start()
        except BaseException:
            await self._release()
            raise

    async def _close(self) -> None:
        try:
            await super()._close()
        finally:
            await self._release()

    async def _heartbeat(self) -> None:
        started = time.time()
        while True:
            await asyncio.sleep(self.config.heartbeat)
            if self.store is not None:
                try:
                    await runs.write_marker(self.store, self.layout, started)
                except Exception:  # a missed beat is harmless; the next one may succeed
                    pass

    async def _release(self) -> None:
        """Delete the run's objects and stop what the backend started (idempotent)."""
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            self._heartbeat_task = None
        try:
            await self.backend.stop()  # nothing may write after the run's objects are deleted
            if self.executor is not None:
                executor, self.executor = self.executor, None
                self._final_stats = executor.stats
                await executor.close()
            if self.store is not None:
                store, self.store = self.store, None
                try:
                    with contextlib.suppress(Exception):  # e.g. a bucket we could never use
                        await store.delete([self.layout.run_marker])
                finally:
                    await store.close()
        finally:
            await self.backend.close()
            self._restore_environment()
            import shutil

            shutil.rmtree(self._local_directory, ignore_errors=True)

    # While open, the client process sees the backend's S3 (so s3:// paths work in graphs
    # built or read here, e.g. dd.read_parquet("s3://...") metadata).
    def _set_environment(self, env: dict[str, str]) -> None:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", *env):
            self._saved_env.setdefault(name, os.environ.get(name))
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            if name not in env:
                os.environ.pop(name, None)
        os.environ.update(env)
        _clear_fs_caches()

    def _restore_environment(self) -> None:
        if not self._saved_env:
            return
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env = {}
        _clear_fs_caches()

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
        return report


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
    """distributed's scheduler, with the gateway's own ``worker_saturation``, no work stealing,
    and no HTTP server when the dashboard is off.

    With one gateway worker whose slots are Lambda functions, holding twice as many tasks as
    slots lets a finished function be refilled from the worker's own queue instead of waiting
    for the scheduler (benchmarks/README.md, scale.py: 10,000 x 1 s at 1,000 finished ~5 %
    sooner). ``None`` keeps ``distributed.scheduler.worker-saturation``.

    Work stealing moves tasks between workers; with one worker it has nothing to do, but its
    hook runs on every transition (about 5 % of the client's CPU in a 10,000-task map).

    ``dashboard_address=None`` means no dashboard; distributed's scheduler would still listen
    on port 8787 (or another) for its HTTP routes (health, metrics), which nobody here reads.
    """

    def __init__(self, *args: Any, worker_saturation: float | None = None, **kwargs: Any):
        from distributed.scheduler import DEFAULT_EXTENSIONS

        self._http = kwargs.get("dashboard") is not False
        kwargs.setdefault("extensions", {name: ext for name, ext in DEFAULT_EXTENSIONS.items()
                                         if name != "stealing"})
        super().__init__(*args, **kwargs)
        if worker_saturation is not None:
            self.WORKER_SATURATION = float(worker_saturation)

    def start_http_server(self, *args: Any, **kwargs: Any) -> None:
        if self._http:
            super().start_http_server(*args, **kwargs)


def _clear_fs_caches() -> None:
    """Forget cached s3fs filesystems (they keep the endpoint and credentials they were made
    with)."""
    import sys

    if "s3fs" in sys.modules:
        sys.modules["s3fs"].S3FileSystem.clear_instance_cache()
