"""The aws backend's clients of AWS: the Lambda control client, the invoke client (direct or
through aiobotocore) and trigger mode's S3 client, made from aiobotocore's session so that
boto's usual chain (profile, environment, ``AWS_ENDPOINT_URL``, ``AWS_CA_BUNDLE``) applies.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

from ..http.lambda_api import LambdaInvoker, user_agent
from ..http.sigv4 import Credentials
from ..http.sockets import keepalive

#: Seconds the invoke client waits beyond the function timeout for an answer.
READ_MARGIN = 60
CONNECT_TIMEOUT = 10


def control_client(session: Any, region: str | None) -> Any:
    """The Lambda client of control calls (configuration, limits): a context manager."""
    from aiobotocore.config import AioConfig

    return session.create_client("lambda", region_name=region, config=AioConfig(
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=CONNECT_TIMEOUT, read_timeout=60))


def trigger_s3_client(session: Any, region: str | None, concurrency: int) -> Any:
    """Trigger mode's S3 client (job objects, completion records): a context manager."""
    from aiobotocore.config import AioConfig

    return session.create_client("s3", region_name=region, config=AioConfig(
        retries={"mode": "standard", "max_attempts": 5},
        max_pool_connections=max(10, min(256, concurrency))))


def use_direct(choice: str, control: Any) -> bool:
    """Whether invokes go through `..http.lambda_api`: ``choice`` is the setting
    ``lambda.aws.invoker`` (``"auto"``: direct unless a proxy applies to the endpoint)."""
    if choice != "auto":
        return choice == "direct"
    return not _proxied(control.meta.endpoint_url, control.meta.config.proxies)


async def direct_invoker(session: Any, control: Any, function: str, *, connections: int,
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
    return LambdaInvoker(url, control.meta.region_name, function, credentials,
                         max_connections=connections, read_timeout=read_timeout,
                         connect_timeout=CONNECT_TIMEOUT, ssl_context=context)


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

    options: dict = dict(read_timeout=read_timeout, connect_timeout=CONNECT_TIMEOUT,
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
