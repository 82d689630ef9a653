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

`start` checks that the function exists and is Active (waking it if Lambda made it
Inactive after weeks without invocations), that this client's signing key is the
function's (by its fingerprint), and that its handler runs the same Python minor
version, cloudpickle, dask and dask-lambda as this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

from dask_lambda_handler import protocol, s3errors, s3keys

from ... import failures
from ...deployment import compat, names, ping
from ...deployment.region import default_region
from ...errors import (
    ConfigurationError,
    PermissionDeniedError,
    VersionMismatchError,
)
from ..base import Backend, FunctionSettings, S3Endpoint
from ..http.lambda_api import LambdaInvoker, user_agent
from ..http.sigv4 import Credentials
from ..http.sockets import keepalive, raise_open_files_limit
from ..invoke import FunctionInvoker
from . import trigger

#: Seconds the invoke client waits beyond the function timeout for an answer.
READ_MARGIN = 60
_CONNECT_TIMEOUT = 10


_code = s3errors.error_code  # of a botocore ClientError
logger = logging.getLogger(__name__)


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
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        self._stack = contextlib.AsyncExitStack()
        session = get_session()
        control = await self._stack.enter_async_context(session.create_client(
            "lambda", region_name=self.region, config=AioConfig(
                retries={"mode": "standard", "max_attempts": 3},
                connect_timeout=_CONNECT_TIMEOUT, read_timeout=60)))
        await self._describe(control)
        connections = max(10, self.settings.concurrency)
        raise_open_files_limit(connections)
        read_timeout = self.function_timeout + READ_MARGIN
        direct = sdk = None
        if self._use_direct(control):
            direct = await self._direct_invoker(session, control, connections, read_timeout)
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
        await self._check_versions()
        if self.mode != "trigger":
            self.invoker = invoker
        else:
            s3 = await self._stack.enter_async_context(session.create_client(
                "s3", region_name=self.region, config=AioConfig(
                    retries={"mode": "standard", "max_attempts": 5},
                    max_pool_connections=max(10, min(256, self.settings.concurrency)))))
            await self._check_trigger(s3)
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

    async def close(self) -> None:
        await super().close()
        if self._stack is not None:  # (the clients, and the invokers again: idempotent)
            stack, self._stack = self._stack, None
            await stack.aclose()

    async def _describe(self, control: Any) -> None:
        """Read the function's configuration: it exists, is Active (woken if it went Inactive),
        and its key is this client's; take its timeout, memory and architecture."""
        from botocore.exceptions import EndpointConnectionError, NoCredentialsError, SSLError

        try:
            conf = await control.get_function_configuration(FunctionName=self.function)
        except NoCredentialsError:
            raise ConfigurationError(
                "no AWS credentials: configure them as for the AWS CLI (`aws configure`, "
                "AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)") from None
        except SSLError as exc:
            raise ConfigurationError(
                f"TLS to AWS Lambda in {self.region} failed ({exc}): if a proxy or firewall "
                "re-signs HTTPS, point AWS_CA_BUNDLE at its CA certificate") from None
        except EndpointConnectionError as exc:
            raise ConfigurationError(
                f"cannot reach AWS Lambda in {self.region} ({exc}): check the network, the "
                "region and AWS_ENDPOINT_URL") from None
        except Exception as exc:
            code = _code(exc)
            if code == "ResourceNotFoundException":
                raise ConfigurationError(
                    f"there is no Lambda function {self.function!r} in {self.region}: deploy it "
                    f"first: `{self.deploy}`") from None
            if code in ("UnrecognizedClientException", "InvalidSignatureException",
                        "ExpiredTokenException", "InvalidClientTokenId"):
                raise ConfigurationError(
                    f"AWS Lambda rejected the credentials ({code}): they are wrong or expired"
                    + (", or this machine's clock is off" if code == "InvalidSignatureException"
                       else "") + ". Check `aws sts get-caller-identity`, refresh them (`aws "
                    "sso login`), or select another profile with AWS_PROFILE=name") from None
            if code == "AccessDeniedException":
                raise PermissionDeniedError(
                    f"AWS refused lambda:GetFunctionConfiguration on {self.function!r} ({code}): "
                    "a user of the function needs lambda:GetFunctionConfiguration and "
                    "lambda:InvokeFunction on it (README, Run on AWS: Permissions; "
                    "`dask-lambda permissions` prints the policy)") from None
            raise
        if (conf.get("State") or "Active") != "Active":
            conf = await asyncio.to_thread(self._wait_active, conf)
        self._check_key(conf)
        self.function_timeout = float(conf.get("Timeout") or self.function_timeout)
        self.function_memory = int(conf.get("MemorySize") or self.function_memory)
        self.function_architecture = (conf.get("Architectures") or [self.function_architecture])[0]
        self.settings = dataclasses.replace(self.settings, timeout=self.function_timeout,
                                            memory=self.function_memory)

    def _wait_active(self, conf: dict) -> dict:
        """Wake an Inactive function, or wait for a Pending one (as deploy does); its
        configuration. Runs in a thread: this happens once, at start."""
        import botocore.session

        from ...deployment import states
        from ...errors import DeployError

        state = conf.get("State")
        if state not in ("Inactive", "Pending"):
            raise ConfigurationError(
                f"the Lambda function {self.function!r} is {state} "
                f"({conf.get('StateReason') or 'no reason given'}): redeploy it with "
                f"`{self.deploy}`")
        lam = botocore.session.get_session().create_client("lambda", region_name=self.region)
        try:
            return states.wake(lam, self.function, out=logger.warning)
        except DeployError as exc:
            raise ConfigurationError(str(exc)) from None

    def _check_key(self, conf: dict) -> None:
        """Refuse to start with a key the function does not have: every job would fail its
        signature check (the configuration carries the key's fingerprint, not the key)."""
        from dask_lambda_handler import env

        wanted = ((conf.get("Environment") or {}).get("Variables") or {}).get(env.KEY_ID_ENV)
        if wanted and wanted != env.key_id(self.settings.signing_key):
            raise ConfigurationError(
                f"the signing key this machine has for the Lambda function {self.function!r} "
                f"({names.key_file(self.function)}, or the setting lambda.aws.signing-key) is "
                "not the function's: it was replaced on another machine (`dask-lambda deploy "
                "--rotate-key`), or the file belongs to another deployment. Copy the key file "
                "from the machine that deployed the function, or run "
                f"`{self.deploy}` here (it writes the function's key to that file)")

    def _use_direct(self, control: Any) -> bool:
        """Whether invokes go through `.http.lambda_api` (see ``invoker``)."""
        if self.invoke_client != "auto":
            return self.invoke_client == "direct"
        return not _proxied(control.meta.endpoint_url, control.meta.config.proxies)

    async def _direct_invoker(self, session: Any, control: Any, connections: int,
                              read_timeout: float) -> LambdaInvoker:
        """An invoker on the endpoint, region, credentials and CA bundle aiobotocore resolved."""
        from botocore.httpsession import get_cert_path

        creds = await session.get_credentials()

        async def credentials() -> Credentials:
            frozen = await creds.get_frozen_credentials()
            return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

        url = control.meta.endpoint_url
        context = None
        if urlsplit(url).scheme == "https":
            context = ssl.create_default_context(
                cafile=session.get_config_variable("ca_bundle") or get_cert_path(True))
        return LambdaInvoker(url, control.meta.region_name, self.function, credentials,
                             max_connections=connections, read_timeout=read_timeout,
                             connect_timeout=_CONNECT_TIMEOUT, ssl_context=context)

    def _fix(self, option: str, value: int) -> str:
        return f"`{self.deploy} --{option} {value}`"

    async def _check_versions(self) -> None:
        # (the describe call has checked the endpoint, TLS and credentials)
        assert self.function_invoker is not None
        body, function_error, _, _ = await self.function_invoker.send(ping.PING, count=False)
        answer = ping.answer(body, function_error)
        if answer is None or "versions" not in answer:
            raise VersionMismatchError(
                f"the Lambda function {self.function!r} did not answer dask-lambda's ping "
                f"({body[:300]!r}): it is not a dask-lambda handler, or a broken one. Redeploy "
                f"it from this environment: `{self.deploy}`")
        self.deployed_versions = answer["versions"]
        diffs = compat.differences(self.deployed_versions)
        if diffs:
            raise VersionMismatchError(
                f"the Lambda function {self.function!r} does not match this environment ("
                + "; ".join(diffs) + "): tasks pickled here may not load there. Redeploy it "
                f"from this environment: `{self.deploy}`")
        from dask_lambda_handler import env

        problem = ping.key_problem(answer, env.key_id(self.settings.signing_key))
        if problem:
            raise ConfigurationError(
                f"the Lambda function {self.function!r} cannot use its signing key, so every "
                f"task would fail: {problem}")

    async def _check_trigger(self, s3: Any) -> None:
        try:
            conf = await s3.get_bucket_notification_configuration(Bucket=self.layout.bucket)
        except Exception as exc:
            if _code(exc) in ("AccessDenied", "403"):
                return  # not allowed to look: the grace timeout reports a missing trigger
            raise
        want = names.jobs_prefix(self.layout.prefix)
        for item in conf.get("LambdaFunctionConfigurations", ()):
            rules = {r["Name"].lower(): r["Value"] for r in
                     item.get("Filter", {}).get("Key", {}).get("FilterRules", ())}
            if (item["LambdaFunctionArn"].split(":")[-1] == self.function.split(":")[-1]
                    and rules.get("prefix") == want
                    and rules.get("suffix") == names.TRIGGER_SUFFIX):
                return
        raise ConfigurationError(
            f"mode=\"trigger\" needs an S3 notification from s3://{self.layout.bucket}/{want} to "
            f"the function {self.function!r}, and there is none: set it up with "
            f"`{self.deploy} --trigger`, or use mode=\"invoke\"")


def sdk_invoke_config(read_timeout: float, connections: int) -> Any:
    """The aiobotocore config of the ``sdk`` invoke client: ``connections`` pooled, nothing
    re-sends an invoke, it waits ``read_timeout`` seconds for an answer, and its sockets send
    TCP keepalives (`.http.sockets.keepalive`).

    botocore's own ``tcp_keepalive`` turns keepalive on with the system's idle time (two
    hours), and aiobotocore does not apply it; aiobotocore >= 3.1 takes a socket factory
    (``connector_args={"socket_factory": ...}``). Older versions get no keepalive.
    """
    from aiobotocore.config import AioConfig
    from botocore.exceptions import ParamValidationError

    options: dict = dict(read_timeout=read_timeout, connect_timeout=_CONNECT_TIMEOUT,
                         retries={"total_max_attempts": 1}, max_pool_connections=connections,
                         user_agent_extra=user_agent().split(" ")[0])
    try:
        return AioConfig(connector_args={"socket_factory": _keepalive_socket}, **options)
    except ParamValidationError:  # aiobotocore < 3.1
        return AioConfig(**options)


def _keepalive_socket(addr_info: tuple) -> socket.socket:
    """aiohttp's socket factory: a socket for ``(family, type, proto, ...)``, keepalive on."""
    family, kind, proto = addr_info[:3]
    sock = socket.socket(family, kind, proto)
    keepalive(sock)
    return sock


def _proxied(url: str, configured: dict | None) -> bool:
    """Whether botocore would reach ``url`` through a proxy (its config, or the environment's
    HTTP(S)_PROXY outside NO_PROXY)."""
    from urllib.request import getproxies, proxy_bypass

    if configured:
        return True
    parts = urlsplit(url)
    return parts.scheme in getproxies() and not proxy_bypass(parts.hostname or "")
