"""dask-lambda's own Lambda Invoke client: botocore's signature, HTTP/1.1 on pooled
connections, and every kind of answer mapped to the error a user sees.

The peer is a real HTTP server on 127.0.0.1 (an asyncio server in the test, scripted
per request); the end-to-end invokes against a real Lambda API (ministack) are in
test_aws_backend.py, and the simulated Lambda endpoint in test_simulated.py.
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import contextlib
import json
import re
import subprocess
import sys
import time
from typing import Any
from urllib.parse import quote

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from dask_lambda.backends.aws.clients import _proxied
from dask_lambda.backends.base import FunctionSettings
from dask_lambda.backends.http.lambda_api import LambdaInvoker
from dask_lambda.backends.http.pool import ConnectionLost, HttpPool, NothingSent, ReadTimeout
from dask_lambda.backends.http.sigv4 import Credentials, SigV4
from dask_lambda.backends.invoke import FunctionInvoker
from dask_lambda.backends.simulated import LambdaModel, SimulatedBackend
from dask_lambda.errors import (
    FunctionError,
    HandlerCrashedError,
    LambdaThrottledError,
    LambdaTimeoutError,
    PermissionDeniedError,
)


@pytest.mark.parametrize("function, token, endpoint", [
    ("my-function", None, "https://lambda.us-east-1.amazonaws.com"),
    ("arn:aws:lambda:eu-west-1:123456789012:function:dask-lambda", "FwoG/session+token=",
     "https://lambda.eu-west-1.amazonaws.com"),
    ("dl-e2e", None, "http://127.0.0.1:4566"),
])
def test_signature_is_botocores(function, token, endpoint):
    region = endpoint.split(".")[1] if "amazonaws" in endpoint else "us-east-1"
    path = f"/2015-03-31/functions/{quote(function, safe='')}/invocations"
    payload = b'{"op": "run", "job": "\xe2\x9c\x93"}'
    request = AWSRequest(method="POST", url=endpoint + path, data=payload, headers={
        "X-Amz-Invocation-Type": "RequestResponse", "X-Amz-Log-Type": "Tail"})
    SigV4Auth(BotoCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG", token), "lambda",
              region).add_auth(request)
    now = calendar.timegm(time.strptime(request.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
    host = endpoint.split("://")[1]
    ours = SigV4(region, "lambda").sign(
        "POST", host, path, {"x-amz-invocation-type": "RequestResponse",
                             "x-amz-log-type": "Tail"}, payload,
        Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG", token), now)
    assert ours["authorization"] == request.headers["Authorization"]
    assert ours.get("x-amz-security-token") == request.headers.get("X-Amz-Security-Token")


class Peer:
    """An HTTP/1.1 server on 127.0.0.1 that answers each request with the next scripted reply.

    A reply is raw bytes to write (then the connection stays open), ``"close"`` (close the
    connection without answering), or ``"hang"`` (never answer).
    """

    def __init__(self, replies: list):
        self.replies = list(replies)
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None
        self.url = ""

    async def __aenter__(self) -> Peer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                self.requests.append((head, await reader.readexactly(length)))
                reply = self.replies.pop(0)
                if reply == "close":
                    break
                if reply == "hang":
                    await asyncio.sleep(3600)
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _reply(status: int, body: bytes = b"{}", **headers: str) -> bytes:
    head = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return (f"HTTP/1.1 {status} X\r\n{head}content-length: {len(body)}\r\n\r\n").encode() + body


async def _creds() -> Credentials:
    return Credentials("testing", "testing", "session-token")


def _invoker(url: str, **options) -> LambdaInvoker:
    return LambdaInvoker(url, "us-east-1", "fn", _creds, **{
        "max_connections": 4, "read_timeout": 5.0, **options})


def test_invokes_reuse_one_connection_and_send_what_botocore_sends():
    async def go():
        async with Peer([_reply(200, b'{"n": 1}'), _reply(200, b'{"n": 2}')]) as peer:
            invoker = _invoker(peer.url)
            first = await invoker.invoke(b'{"op": "run"}')
            second = await invoker.invoke(b'{"op": "run"}')
            await invoker.close()
            return peer, invoker, first, second

    peer, invoker, first, second = asyncio.run(go())
    assert (first.status, first.body, second.body) == (200, b'{"n": 1}', b'{"n": 2}')
    assert peer.connections == 1 and invoker.pool.opened == 1  # kept alive, reused
    head, body = peer.requests[0]
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /2015-03-31/functions/fn/invocations HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    assert headers["x-amz-invocation-type"] == "RequestResponse"
    assert headers["x-amz-log-type"] == "Tail"
    assert headers["x-amz-security-token"] == "session-token"
    assert headers["host"] == peer.url.split("://")[1]
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=testing/")
    assert body == b'{"op": "run"}'


def test_connection_close_and_chunked_answers_are_read_whole():
    chunked = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
               b"5\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\n\r\n")

    async def go():
        async with Peer([_reply(200, b'{"x": 1}', connection="close"), chunked]) as peer:
            invoker = _invoker(peer.url)
            first = await invoker.invoke(b"{}")
            second = await invoker.invoke(b"{}")
            await invoker.close()
            return peer, first, second

    peer, first, second = asyncio.run(go())
    assert first.body == b'{"x": 1}' and second.body == b'{"a": 1}'
    assert peer.connections == 2  # "connection: close" was honoured


def test_transport_failures_say_whether_anything_was_sent():
    async def go():
        with contextlib.closing(__import__("socket").socket()) as s:
            s.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, not listening
            with pytest.raises(NothingSent, match="cannot connect to 127.0.0.1"):
                await _invoker(dead).invoke(b"{}")
        async with Peer(["close", "hang"]) as peer:
            with pytest.raises(ConnectionLost, match="failed before the answer was complete"):
                await _invoker(peer.url).invoke(b"{}")
            with pytest.raises(ReadTimeout, match="no answer from 127.0.0.1"):
                await _invoker(peer.url, read_timeout=0.3).invoke(b"{}")

    asyncio.run(go())


def test_a_full_pool_makes_requests_wait_for_a_connection():
    async def go():
        async with Peer([_reply(200)] * 6) as peer:
            pool = HttpPool(peer.url, max_connections=2)
            await asyncio.gather(*(pool.request("POST", "/", {"host": pool.host}, b"{}", 5.0)
                                   for _ in range(6)))
            await pool.close()
            return peer, pool

    peer, pool = asyncio.run(go())
    assert len(peer.requests) == 6 and pool.opened == peer.connections == 2


def _function_invoker(url: str | None = None, *, sdk: Any = None, read_timeout: float = 120.0,
                      on_sent: Any = lambda: None) -> FunctionInvoker:
    direct = None if url is None else _invoker(url, read_timeout=min(5.0, read_timeout))
    return FunctionInvoker(
        "fn", "AWS Lambda in us-east-1", direct=direct, sdk=sdk, memory=1024, timeout=60.0,
        read_timeout=read_timeout, fix=lambda option, value: f"`deploy --{option} {value}`",
        redeploy="deploy it again with `deploy`", on_sent=on_sent)


def test_every_answer_becomes_the_response_or_an_error_that_names_the_fix():
    log = base64.b64encode(b"REPORT RequestId: r1 Max Memory Used: 1024 MB").decode()
    replies = [
        _reply(200, b'{"status": "ok"}'),
        _reply(429, b'{"Type": "User", "message": "Rate Exceeded."}',
               x_amzn_ErrorType="TooManyRequestsException:http://internal.amazon.com/"),
        _reply(404, b'{"Type": "User", "message": "Function not found: fn"}',
               x_amzn_ErrorType="ResourceNotFoundException"),
        _reply(403, b'{"Message": "not allowed"}', x_amzn_ErrorType="AccessDeniedException"),
        _reply(502, b'{"message": "bad gateway"}', x_amzn_ErrorType="ServiceException"),
        _reply(200, json.dumps({"errorType": "Sandbox.Timedout", "errorMessage":
                                "r0 Task timed out after 60.00 seconds"}).encode(),
               x_amz_function_error="Unhandled", x_amzn_requestid="r0"),
        _reply(200, json.dumps({"errorType": "Runtime.OutOfMemory", "errorMessage":
                                "Runtime exited with error: signal: killed"}).encode(),
               x_amz_function_error="Unhandled", x_amz_log_result=log, x_amzn_requestid="r1"),
    ]

    async def go():
        async with Peer(replies) as peer:
            invoker = _function_invoker(peer.url)
            outcomes = []
            for _ in replies:
                try:
                    outcomes.append(await invoker.invoke({"op": "run"}))
                except Exception as exc:
                    outcomes.append(exc)
            return outcomes

    ok, throttled, gone, denied, crashed, timed_out, oom = asyncio.run(go())
    assert ok == {"status": "ok"}
    assert isinstance(throttled, LambdaThrottledError)
    assert str(throttled).startswith("Rate Exceeded (TooManyRequestsException): Rate Exceeded.")
    assert isinstance(gone, FunctionError) and gone.error_type == "ResourceNotFoundException"
    assert str(gone) == "the Lambda function 'fn' is gone: deploy it again with `deploy`"
    assert isinstance(denied, PermissionDeniedError)
    assert "AWS refused lambda:InvokeFunction on 'fn' (AccessDeniedException)" in str(denied)
    assert isinstance(crashed, HandlerCrashedError)
    assert str(crashed) == "Lambda answered ServiceException: bad gateway (HTTP 502)"
    assert isinstance(timed_out, LambdaTimeoutError)
    assert str(timed_out).startswith("Task timed out after 60.00 seconds (request r0). "
                                     "Raise the function timeout, e.g. `deploy --timeout 120`")
    assert "The task used 1024 MB, the function's 1024 MB (request r1). Give it more, e.g. " \
           "`deploy --memory 2048`" in str(oom)


def test_a_lost_connection_is_a_crash_and_nothing_sent_is_retried_then_a_crash(monkeypatch):
    import dask_lambda.backends.invoke as invoke

    monkeypatch.setattr(invoke, "CONNECT_RETRIES", 1)

    sent = []

    async def go():
        async with Peer(["close", "hang"]) as peer:
            with pytest.raises(HandlerCrashedError, match="the connection to Lambda closed"):
                await _function_invoker(peer.url, on_sent=lambda: sent.append("lost")).invoke({})
            with pytest.raises(HandlerCrashedError, match=(
                    r"^no answer from Lambda 1 s after invoking it \(the function timeout plus "
                    r"a margin\): the connection was lost. The attempt is not re-sent")):
                await _function_invoker(peer.url, read_timeout=0.6,
                                        on_sent=lambda: sent.append("timeout")).invoke({})
        with contextlib.closing(__import__("socket").socket()) as s:
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}"
            with pytest.raises(HandlerCrashedError,
                               match="cannot connect to AWS Lambda in us-east-1: cannot connect"):
                await _function_invoker(url, on_sent=lambda: sent.append("unsent")).invoke({})

    asyncio.run(go())
    assert sent == ["lost", "timeout"]  # both may have run; nothing was sent to a closed port


class _Sdk:
    """An aiobotocore Lambda client's ``invoke`` that fails as ``failure`` says."""

    def __init__(self, failure: Any):
        self.failure = failure

    async def invoke(self, **kwargs: Any) -> dict:
        if isinstance(self.failure, Exception):
            raise self.failure
        failure = self.failure

        class Payload:
            async def read(self) -> bytes:
                raise failure()

        return {"Payload": Payload()}


def test_the_sdk_invokers_failures_read_as_the_direct_ones(monkeypatch):
    from botocore.exceptions import (
        ConnectionClosedError,
        EndpointConnectionError,
        ReadTimeoutError,
    )

    import dask_lambda.backends.invoke as invoke

    monkeypatch.setattr(invoke, "CONNECT_RETRIES", 0)
    url = "https://lambda.us-east-1.amazonaws.com"
    sent = []
    cases = [
        (ConnectionClosedError(endpoint_url=url), "lost",
         f"^the connection to Lambda closed: Connection was closed before we received a valid "
         f"response from endpoint URL: \"{url}\""),
        (ReadTimeoutError(endpoint_url=url), "timeout",
         "^no answer from Lambda 120 s after invoking it"),
        (ConnectionResetError, "broken",
         r"^the connection to Lambda closed: the answer broke off: ConnectionResetError\(\)"),
        (EndpointConnectionError(endpoint_url=url), "unsent",
         f"^cannot connect to AWS Lambda in us-east-1: Could not connect to the endpoint URL: "
         f"\"{url}\""),
    ]
    for failure, name, message in cases:
        invoker = _function_invoker(sdk=_Sdk(failure), on_sent=lambda n=name: sent.append(n))
        with pytest.raises(HandlerCrashedError, match=message):
            asyncio.run(invoker.invoke({}))
    assert sent == ["lost", "timeout", "broken"]  # an invoke that may have run is counted


def test_auto_uses_the_sdk_where_a_proxy_applies(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY",
                 "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    url = "https://lambda.us-east-1.amazonaws.com"
    assert not _proxied(url, None)
    assert _proxied(url, {"https": "http://proxy:3128"})  # botocore's proxies setting
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert _proxied(url, None)
    monkeypatch.setenv("NO_PROXY", ".amazonaws.com")
    assert not _proxied(url, None)


def _with_open_files_limit(soft: int, hard: int, concurrency: int) -> subprocess.CompletedProcess:
    """Run raise_open_files_limit(concurrency) in a process started with these limits."""
    import resource

    script = ("import resource\n"
              "from dask_lambda.backends.http.sockets import raise_open_files_limit\n"
              f"raise_open_files_limit({concurrency})\n"
              "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n")
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))


def test_the_open_files_limit_is_raised_for_the_concurrency_or_names_the_fix():
    assert _with_open_files_limit(300, 300, 40).stdout.strip() == "300"  # enough already
    assert _with_open_files_limit(256, 4096, 1000).stdout.strip() == "1256"  # raised
    refused = _with_open_files_limit(256, 512, 1000)  # macOS's shells start at 256
    assert refused.returncode == 1
    assert ("ConfigurationError: concurrency=1000 needs about 1256 open files (one connection "
            "per invocation in flight) and this process may open at most 512: raise the limit "
            "before starting Python (`ulimit -n 1256`), or lower the concurrency, e.g. "
            "LambdaClient(..., concurrency=256)") in refused.stderr


def test_a_tls_connection_holds_little_memory():
    """1,000 invocations in flight hold 1,000 TLS connections: asyncio's own 256 KiB read
    buffer per connection would be 256 MB of the client's memory (about 300 KB a connection
    in all); ours is 16 KiB (about 70 KB a connection with OpenSSL's state)."""
    import os

    import psutil

    from dask_lambda.backends.base import FunctionSettings
    from dask_lambda.backends.simulated import LambdaModel, SimulatedBackend, constant

    async def go() -> tuple[int, float]:
        backend = SimulatedBackend(LambdaModel(invoke_latency=0.0, cold_start=0.0,
                                               duration=constant(0.5)),
                                   s3_endpoint="http://unused", tls=True)
        backend.configure(FunctionSettings(concurrency=300, memory=1024, timeout=60,
                                           signing_key=os.urandom(32)))
        await backend.start()
        try:
            await backend.invoke({"op": "run"})  # imports, the first connection
            before = psutil.Process().memory_info().rss
            await asyncio.gather(*(backend.invoke({"op": "run"}) for _ in range(300)))
            grown = psutil.Process().memory_info().rss - before
            return backend.invoker.direct.pool.opened, grown / 300
        finally:
            await backend.close()

    opened, per_connection = asyncio.run(go())
    assert opened >= 300  # 300 in flight at once: each on its own connection
    assert per_connection < 150 * 1024, f"{per_connection / 1024:.0f} KB per TLS connection"


def _aws_environment(monkeypatch, endpoint: str | None = None) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                        "AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CA_BUNDLE", "HTTPS_PROXY",
                 "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    if endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)


def test_an_unknown_invoker_setting_shows_the_choices(monkeypatch):
    import dask

    from dask_lambda import LambdaClient
    from dask_lambda.errors import ConfigurationError

    _aws_environment(monkeypatch)
    with dask.config.set({"lambda.aws.signing-key": "ab" * 32, "lambda.aws.invoker": "fast"}), \
            pytest.raises(ConfigurationError) as info:
        LambdaClient("s3://some-bucket", backend="aws", dashboard_address=None)
    assert str(info.value) == (
        "lambda.aws.invoker=\"fast\" is not valid: choose one of 'auto', 'direct', 'sdk'. "
        "Setting lambda.aws.invoker (DASK_LAMBDA__AWS__INVOKER) takes \"auto\", \"direct\" or "
        "\"sdk\"; e.g. dask.config.set({\"lambda.aws.invoker\": \"auto\"})")


def test_a_certificate_this_machine_does_not_trust_names_aws_ca_bundle(monkeypatch):
    """As behind a proxy that re-signs HTTPS: the endpoint's certificate is not trusted."""
    import dask

    from dask_lambda import LambdaClient
    from dask_lambda.backends.simulated import LambdaModel, SimulatedBackend
    from dask_lambda.errors import ConfigurationError

    async def endpoint_up() -> SimulatedBackend:
        backend = SimulatedBackend(LambdaModel(), s3_endpoint="http://unused", tls=True)
        backend.configure(FunctionSettings(concurrency=2, memory=1024, timeout=60,
                                           signing_key=b"k" * 32))
        await backend.start()
        return backend

    loop = asyncio.new_event_loop()
    backend = loop.run_until_complete(endpoint_up())  # an HTTPS server, self-signed
    try:
        _aws_environment(monkeypatch, backend._url)
        with dask.config.set({"lambda.aws.signing-key": "ab" * 32}), \
                pytest.raises(ConfigurationError) as info:
            LambdaClient("s3://some-bucket", backend="aws", dashboard_address=None)
    finally:
        loop.run_until_complete(backend.close())
        loop.close()
    message = str(info.value)
    assert message.startswith("TLS to AWS Lambda in eu-west-1 failed (")
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert message.endswith("if a proxy or firewall re-signs HTTPS, point AWS_CA_BUNDLE at its "
                            "CA certificate")


def test_tls_failures_before_the_request_are_nothing_sent_or_a_certificate_error():
    """The handshake runs in a thread; what goes wrong there still means nothing was sent."""
    import ssl

    async def go():
        async def hang_up(reader, writer):  # accepts, then closes before any TLS answer
            writer.close()

        closer = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = closer.sockets[0].getsockname()[1]
        with pytest.raises(NothingSent, match="cannot connect to 127.0.0.1"):
            await HttpPool(f"https://127.0.0.1:{port}", max_connections=1).request(
                "POST", "/", {}, b"{}", 5.0)
        closer.close()
        async with Peer([]) as plain:  # speaks HTTP, not TLS: the handshake never ends
            pool = HttpPool(plain.url.replace("http:", "https:"), max_connections=1,
                            connect_timeout=0.5)
            with pytest.raises(NothingSent, match="cannot connect to 127.0.0.1"):
                await pool.request("POST", "/", {}, b"{}", 5.0)
        backend = SimulatedBackend(LambdaModel(), s3_endpoint="http://unused", tls=True)
        backend.configure(FunctionSettings(concurrency=2, memory=1024, timeout=60,
                                           signing_key=b"k" * 32))
        await backend.start()
        try:  # a self-signed certificate the system does not trust: not retried, raised
            with pytest.raises(ssl.SSLCertVerificationError, match="self.signed certificate"):
                await HttpPool(backend._url, max_connections=1).request(
                    "POST", "/", {}, b"{}", 5.0)
            trusted = backend.invoker.direct  # trusts it: and reuses its connection
            for _ in range(3):
                assert (await trusted.invoke(b'{"op": "run"}')).status == 200
            assert trusted.pool.opened == 1
        finally:
            await backend.close()

    asyncio.run(go())


def _keepalive_idle(sock: Any) -> tuple[int, int]:
    """(SO_KEEPALIVE, idle seconds before the first probe) of a socket."""
    import socket

    idle = getattr(socket, "TCP_KEEPIDLE", None) or getattr(socket, "TCP_KEEPALIVE", None)  # macOS
    return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            sock.getsockopt(socket.IPPROTO_TCP, idle))


def test_invoke_connections_send_keepalives_well_before_a_nat_forgets_them():
    """NAT gateways and load balancers drop a TCP flow idle for 350 s; a synchronous invoke's
    connection is idle while the function runs. Both transports, and the sdk path, set it."""
    async def go():
        async with Peer([_reply(200)]) as peer:
            pool = HttpPool(peer.url, max_connections=1)
            await pool.request("POST", "/", {"host": pool.host}, b"{}", 5.0)
            plain = _keepalive_idle(pool._idle[0].writer.get_extra_info("socket"))
            await pool.close()
        backend = SimulatedBackend(LambdaModel(), s3_endpoint="http://unused", tls=True)
        backend.configure(FunctionSettings(concurrency=2, memory=1024, timeout=60,
                                           signing_key=b"k" * 32))
        await backend.start()
        try:
            pool = backend.invoker.direct.pool
            assert (await backend.invoker.direct.invoke(b'{"op": "run"}')).status == 200
            tls = _keepalive_idle(pool._idle[0].writer.transport.get_extra_info("socket"))
        finally:
            await backend.close()
        return plain, tls

    for enabled, idle in asyncio.run(go()):
        assert enabled and 0 < idle <= 60  # a probe a minute: far under 350 s


def test_the_sdk_invokers_sockets_send_keepalives_and_name_dask_lambda():
    from aiobotocore.session import get_session

    import dask_lambda
    from dask_lambda.backends.aws.clients import sdk_invoke_config

    config = sdk_invoke_config(30.0, 4)
    made: list = []
    factory = config.connector_args["socket_factory"]  # aiobotocore >= 3.1 takes one
    config.connector_args["socket_factory"] = lambda addr: made.append(factory(addr)) or made[-1]

    async def go():
        async with Peer([_reply(200, b'{"ok": 1}')]) as peer:
            async with get_session().create_client(
                    "lambda", region_name="us-east-1", endpoint_url=peer.url, config=config,
                    aws_access_key_id="x", aws_secret_access_key="x") as lam:
                answer = await lam.invoke(FunctionName="fn", Payload=b"{}")
                body = await answer["Payload"].read()
                return peer, body, [_keepalive_idle(s) for s in made]

    peer, body, sockets = asyncio.run(go())
    assert body == b'{"ok": 1}' and len(sockets) == 1
    enabled, idle = sockets[0]
    assert enabled and 0 < idle <= 60
    assert f"dask-lambda/{dask_lambda.__version__}".encode() in peer.requests[0][0]


def test_interim_and_bodiless_answers_do_not_wait_for_the_read_timeout():
    """A 100 Continue before the answer, or a 204 without a length, used to hang until the
    read timeout (the body was read to the end of the connection)."""
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + _reply(200, b'{"after": "100"}')
    no_content = b"HTTP/1.1 204 No Content\r\nx-amzn-requestid: r\r\n\r\n"

    async def go():
        async with Peer([interim, no_content, _reply(200, b'{"n": 3}')]) as peer:
            invoker = _invoker(peer.url, read_timeout=30.0)
            t0 = time.monotonic()
            answers = [await invoker.invoke(b"{}") for _ in range(3)]
            elapsed = time.monotonic() - t0
            await invoker.close()
            return peer, answers, elapsed

    peer, (first, second, third), elapsed = asyncio.run(go())
    assert (first.status, first.body) == (200, b'{"after": "100"}')
    assert (second.status, second.body) == (204, b"")
    assert third.body == b'{"n": 3}'
    assert elapsed < 10 and peer.connections == 1  # and the connection was kept


def test_invokes_name_dask_lambda_and_its_version():
    import dask_lambda

    async def go():
        async with Peer([_reply(200)]) as peer:
            await _invoker(peer.url).invoke(b"{}")
            return peer

    head = asyncio.run(go()).requests[0][0].decode()
    agent = next(line for line in head.split("\r\n") if line.startswith("user-agent: "))
    assert agent.startswith(f"user-agent: dask-lambda/{dask_lambda.__version__} Python/")


def _error_reply(status: int, code: str, message: str, **extra: Any) -> bytes:
    headers = {k: v for k, v in extra.items() if not k.startswith("body_")}
    body = {"Type": "User", "message": message,
            **{k[5:]: v for k, v in extra.items() if k.startswith("body_")}}
    return _reply(status, json.dumps(body).encode(), x_amzn_ErrorType=code, **headers)


def _outcome(replies: list, reserved: int | None = None) -> Any:
    async def go():
        async with Peer(replies) as peer:
            invoker = _function_invoker(peer.url)
            invoker.reserved_concurrency = reserved
            try:
                return await invoker.invoke({"op": "run"})
            except Exception as exc:
                return exc

    return asyncio.run(go())


def test_refused_credentials_name_what_is_wrong_with_them():
    import email.utils

    expired = _error_reply(403, "ExpiredTokenException",
                           "The security token included in the request is expired")
    outcome = _outcome([expired, expired])  # fetched again once: still expired
    assert isinstance(outcome, PermissionDeniedError)
    assert str(outcome) == (
        "AWS refused the invoke of 'fn': the credentials' session token has expired "
        "(ExpiredTokenException). Renew them (e.g. `aws sso login`, or a new AWS_SESSION_TOKEN)"
        " and run again.")
    outcome = _outcome([_error_reply(403, "UnrecognizedClientException",
                                     "The security token included in the request is invalid.")])
    assert str(outcome) == (
        "AWS does not know the access key these credentials use (UnrecognizedClientException): "
        "it is wrong, deleted, or of another account or partition; check them with `aws sts "
        "get-caller-identity`.")
    aws_now = email.utils.formatdate(time.time() + 600, usegmt=True)  # this clock: 10 min late
    outcome = _outcome([_error_reply(
        403, "InvalidSignatureException", "Signature expired: 20260101T000000Z is now earlier "
        "than 20260101T000500Z (20260101T001000Z - 5 min.)", date=aws_now)])
    assert isinstance(outcome, PermissionDeniedError)
    assert "this machine's clock is off and the request's signature has expired" in str(outcome)
    assert re.search(r"This machine's clock is (599|600|601) s behind AWS's\.", str(outcome))
    assert "set the clock from the network (NTP" in str(outcome)
    outcome = _outcome([_error_reply(
        403, "InvalidSignatureException", "The request signature we calculated does not match "
        "the signature you provided.")])
    assert "the secret access key does not belong to the access key id" in str(outcome)
    assert "lambda:InvokeFunction" not in str(outcome)


def test_expired_credentials_are_fetched_again_once():
    fetched = []

    async def credentials() -> Credentials:
        fetched.append(1)
        return Credentials("testing", "testing", f"token-{len(fetched)}")

    async def go():
        async with Peer([_error_reply(403, "ExpiredTokenException", "expired"),
                         _reply(200, b'{"status": "ok"}')]) as peer:
            invoker = _function_invoker(peer.url)
            invoker.direct._credentials = credentials
            return peer, await invoker.invoke({"op": "run"})

    peer, answer = asyncio.run(go())
    assert answer == {"status": "ok"} and len(fetched) == 2
    assert b"x-amz-security-token: token-2" in peer.requests[1][0]


def test_a_429s_reason_and_retry_after_are_kept_and_advised_on():
    throttled = _outcome([_error_reply(
        429, "TooManyRequestsException", "Rate Exceeded.", retry_after="3",
        body_Reason="ReservedFunctionConcurrentInvocationLimitExceeded")], reserved=5)
    assert isinstance(throttled, LambdaThrottledError)
    assert (throttled.reason, throttled.retry_after) == (
        "ReservedFunctionConcurrentInvocationLimitExceeded", 3.0)
    assert throttled.advice == (
        "The function's reserved concurrency (5) is in use: run fewer at once, e.g. "
        "LambdaClient(..., concurrency=5), or raise it: `aws lambda put-function-concurrency "
        "--function-name fn --reserved-concurrent-executions 10`.")
    account = _outcome([_error_reply(429, "TooManyRequestsException", "Rate Exceeded.",
                                     body_Reason="ConcurrentInvocationLimitExceeded",
                                     body_retryAfterSeconds="1")])
    assert account.retry_after == 1.0 and "The account's concurrency in this region is in use" \
        in account.advice
    off = _outcome([_error_reply(429, "TooManyRequestsException", "Rate Exceeded.",
                                 body_Reason="ReservedFunctionConcurrentInvocationLimitExceeded")],
                   reserved=0)
    assert isinstance(off, FunctionError)  # not retried: it never clears by itself
    assert str(off).startswith("Lambda runs no invocations of 'fn': its reserved concurrency "
                               "is 0")
    assert "`aws lambda delete-function-concurrency --function-name fn`" in str(off)


@pytest.mark.parametrize("code, kind, advice", [
    ("ResourceNotReadyException", FunctionError, "the function is Inactive"),
    ("KMSAccessDeniedException", FunctionError, "(kms:Decrypt)"),
    ("InvalidZipFileException", FunctionError, "deploy it again with `deploy`"),
    ("ENINotReadyException", LambdaThrottledError, "Lambda is not ready to run 'fn'"),
    ("ServiceException", HandlerCrashedError, "Lambda answered ServiceException"),
])
def test_5xx_that_do_not_clear_are_not_retried_as_crashes(code, kind, advice):
    outcome = _outcome([_error_reply(502, code, "it failed")])
    assert type(outcome) is kind
    assert advice in str(outcome)


def test_a_timeout_at_the_memory_limit_is_out_of_memory_and_billed_as_reported():
    from dask_lambda.errors import LambdaOutOfMemoryError

    def report(used: int) -> str:
        return base64.b64encode(
            f"START RequestId: r\nEND RequestId: r\nREPORT RequestId: r\tDuration: 60000.00 "
            f"ms\tBilled Duration: 60000 ms\tMemory Size: 1024 MB\tMax Memory Used: {used} MB"
            "\n".encode()).decode()

    timed_out = json.dumps({"errorType": "Sandbox.Timedout",
                            "errorMessage": "r Task timed out after 60.00 seconds"}).encode()
    full, slow = (_outcome([_reply(200, timed_out, x_amz_function_error="Unhandled",
                                   x_amz_log_result=report(used), x_amzn_requestid="r")])
                  for used in (1024, 300))
    assert isinstance(full, LambdaOutOfMemoryError)
    assert str(full).startswith("Runtime exited: timed out at the memory limit. The task used "
                                "1024 MB, the function's 1024 MB (request r). Give it more, "
                                "e.g. `deploy --memory 2048`")
    assert isinstance(slow, LambdaTimeoutError)
    assert full.billed_ms == slow.billed_ms == 60000


def test_billed_duration_is_read_from_the_report_line():
    """Since 2025-08-01 Lambda bills a cold start's INIT phase: the REPORT line's Billed
    Duration says what was billed, the handler's own timing cannot."""
    from dask_lambda_handler.records import RunStats

    from dask_lambda.cost import CostMeter, invocation_ms

    tail = base64.b64encode(
        b"START RequestId: r Version: $LATEST\nEND RequestId: r\nREPORT RequestId: r\t"
        b"Duration: 395.99 ms\tBilled Duration: 662 ms\tMemory Size: 1024 MB\tMax Memory Used: "
        b"301 MB\tInit Duration: 265.72 ms\t\n").decode()
    answer = _outcome([_reply(200, b'{"status": "ok", "stats": {"duration_s": 0.39}}',
                              x_amz_log_result=tail)])
    assert answer["stats"] == {"duration_s": 0.39, "billed_ms": 662, "max_memory_mb": 301,
                               "init_ms": 265.72}
    meter = CostMeter(1024)
    meter.settle(invocation_ms(RunStats.from_wire(answer["stats"])))
    assert meter.billed_ms == 662
