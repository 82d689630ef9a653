"""The aws backend: tasks run in a deployed AWS Lambda function.

Credentials, region and endpoint come from boto's usual chain (profile,
environment, ``AWS_ENDPOINT_URL``), so the same code runs against AWS or a
local emulator.  Two ways to dispatch a job:

``mode="invoke"`` (default)
    one synchronous (``RequestResponse``) invoke per job, on pooled keep-alive
    connections: by :mod:`..http.lambda_api` (about a tenth of aiobotocore's client CPU per
    invoke), or by aiobotocore where a proxy applies to the endpoint or
    ``lambda.aws.invoker`` is ``"sdk"``.  The read timeout is the function timeout
    plus a margin and nothing re-sends an invoke: a long task never runs twice
    (boto's default 60 s read timeout with retries would).  Only connection
    failures, where nothing was sent, are retried here; a 429 is retried with
    backoff by the executor; an answer that leaves unknown whether the task ran is a
    crash, retried by the executor under a new attempt key, so it can never
    overwrite an accepted output.  Asynchronous invokes (which Lambda may deliver
    twice) are never used.
``mode="trigger"``
    the job is written as an S3 object and the bucket's ObjectCreated
    notification invokes the function (:mod:`.trigger`).

`start` makes the clients (:mod:`.clients`) and runs the checks of the deployed
function (:mod:`.function`); the invoker is the Invoke API's (:mod:`..invoke`) or
trigger mode's (:mod:`.trigger`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

from dask_lambda_handler import protocol, s3keys

from ... import failures
from ...deployment import names
from ...deployment.region import default_region
from ...errors import ConfigurationError
from ..base import Backend, FunctionSettings, S3Endpoint
from ..http.sockets import raise_open_files_limit
from ..invoke import FunctionInvoker
from . import clients, trigger
from .clients import READ_MARGIN, sdk_invoke_config
from .function import FunctionChecks


class AwsS3(S3Endpoint):
    """Amazon S3 in ``region``, reached with boto's credentials (profile, environment)."""

    def __init__(self, region: str | None):
        self.region = region

    @property
    def options(self) -> dict[str, Any]:
        return {"endpoint_url": None, "region": self.region, "credentials": None}

    def environment(self) -> dict[str, str]:
        # Keep the user's profile and session token visible while the client is open.
        return {k: os.environ[k] for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN") if k in os.environ}


class AwsBackend(Backend):
    """Invoke a deployed Lambda function for each job.

    The values come checked from `dask_lambda.settings.Settings`.

    Parameters
    ----------
    settings
        Concurrency and the signing key (memory and timeout are the deployed function's).
    layout
        The run's S3 key layout.
    function
        Name or ARN of the function ``dask-lambda deploy`` made.
    region
        AWS region; default: boto's (``AWS_REGION``, the profile).
    mode
        ``"invoke"`` or ``"trigger"``.
    notification_grace
        Trigger mode: seconds an S3 notification may take to start the function.
    invoker
        How invokes are sent: ``"direct"`` (:mod:`..http.lambda_api`), ``"sdk"`` (aiobotocore),
        or ``"auto"``: direct unless a proxy applies to the Lambda endpoint.
    """

    name = "aws"

    def __init__(self, settings: FunctionSettings, *, layout: s3keys.Layout,
                 function: str = names.DEFAULT_FUNCTION, region: str | None = None,
                 mode: str = "invoke", notification_grace: float = 120.0,
                 invoker: str = "auto"):
        super().__init__(settings)
        self.layout = layout
        self.function = function
        self.mode = mode
        self.region = region or default_region()  # Settings checked that boto has one
        self.s3 = AwsS3(self.region)
        self.invoke_client = invoker
        self.deploy = names.deploy_command(layout.bucket, layout.prefix, function, region)
        self.grace = float(notification_grace)
        #: The deployed function's timeout (s), memory (MB) and architecture, read by `start`.
        self.function_timeout = float(settings.timeout)
        self.function_memory = settings.memory
        self.function_architecture = "x86_64"
        self.deployed_versions: dict = {}
        self.checks = FunctionChecks(function, self.region, self.deploy, settings.signing_key,
                                     layout)
        self._stack: contextlib.AsyncExitStack | None = None
        #: The Invoke API's client (version pings; invoke mode's `invoker`).
        self.function_invoker: FunctionInvoker | None = None

    # billed_memory_mb: the base class's settings.memory, which `start` sets to the deployed
    # function's MemorySize.

    @property
    def billed_architecture(self) -> str:
        return self.function_architecture

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        from aiobotocore.session import get_session

        self._stack = contextlib.AsyncExitStack()
        session = get_session()
        control = await self._stack.enter_async_context(
            clients.control_client(session, self.region))
        self._take(await self.checks.describe(control))
        connections = max(10, self.settings.concurrency)
        raise_open_files_limit(connections)
        read_timeout = self.function_timeout + READ_MARGIN
        direct = sdk = None
        if clients.use_direct(self.invoke_client, control):
            direct = await clients.direct_invoker(session, control, self.function,
                                                  connections=connections,
                                                  read_timeout=read_timeout)
        else:
            sdk = await self._stack.enter_async_context(session.create_client(
                "lambda", region_name=self.region,
                config=sdk_invoke_config(read_timeout, connections)))
        self.function_invoker = invoker = FunctionInvoker(
            self.function, f"AWS Lambda in {self.region}", direct=direct, sdk=sdk,
            memory=self.function_memory, timeout=self.function_timeout,
            read_timeout=read_timeout, fix=self._fix,
            redeploy=f"deploy it again with `{self.deploy}`")
        self._stack.push_async_callback(invoker.close)
        limits = await trigger.read_limits(control, self.function,
                                               account=self.mode == "trigger")
        if limits.reserved == 0:
            raise ConfigurationError(failures.switched_off(self.function))
        invoker.reserved_concurrency = limits.reserved
        self.deployed_versions = await self.checks.check_versions(invoker)
        if self.mode != "trigger":
            self.invoker = invoker
        else:
            s3 = await self._stack.enter_async_context(clients.trigger_s3_client(
                session, self.region, self.settings.concurrency))
            await self.checks.check_trigger(s3)
            self.invoker = trigger.TriggerDispatcher(
                s3, self.layout,
                signing_key=protocol.run_key(self.settings.signing_key, self.layout.run),
                timeout=self.function_timeout, grace=self.grace, function=self.function,
                deploy=self.deploy, limit=self._trigger_limit(limits),
                memory=self.function_memory, fix=self._fix)

    def _trigger_limit(self, limits: trigger.Limits) -> int | None:
        """Trigger mode: most jobs out at once. Lambda queues asynchronous invocations it
        cannot run yet (for hours) instead of refusing them, so the client holds back the
        jobs the function may not run now rather than have them time out in the queue."""
        cap = limits.cap()
        if cap is None or cap[0] >= self.settings.concurrency:
            return None
        trigger.logger.warning(
            "mode=\"trigger\": at most %d jobs at once, %s (concurrency=%d asked for more)",
            cap[0], cap[1], self.settings.concurrency)
        return cap[0]

    def _take(self, conf: dict) -> None:
        """Take the deployed function's timeout, memory and architecture from its
        configuration: they are the settings invocations run with."""
        self.function_timeout = float(conf.get("Timeout") or self.function_timeout)
        self.function_memory = int(conf.get("MemorySize") or self.function_memory)
        self.function_architecture = (conf.get("Architectures") or [self.function_architecture])[0]
        self.settings = dataclasses.replace(self.settings, timeout=self.function_timeout,
                                            memory=self.function_memory)

    async def close(self) -> None:
        await super().close()
        if self._stack is not None:  # (the clients, and the invokers again: idempotent)
            stack, self._stack = self._stack, None
            await stack.aclose()

    def _fix(self, option: str, value: int) -> str:
        return f"`{self.deploy} --{option} {value}`"
