"""A simulated Lambda endpoint in a process of its own.

``python -m dask_lambda.backends.simulated.server`` reads one line from stdin (base64 of a
cloudpickled `ServerConfig`), binds 127.0.0.1 on a free port, prints ``PORT <n>`` once it
serves, and exits when its stdin closes, so it never outlives the process that started
it.  It answers the Lambda API's synchronous Invoke
(``POST /2015-03-31/functions/<name>/invocations``) as Lambda does, with the timing and
limits of a `~dask_lambda.backends.simulated.LambdaModel`: HTTP 200 with the handler's
response, 200 with ``X-Amz-Function-Error`` for a timeout, 429
``TooManyRequestsException`` past the concurrency limit or the scaling rate.  Tasks never
run: an invocation sleeps for its modelled duration and answers with a signed result.
``GET /_simulator/counters`` returns what it saw, as JSON.

With ``ServerConfig.tls`` it serves HTTPS, as Lambda does, so that clients pay for TLS too.

It is a plain asyncio HTTP/1.1 server (keep-alive, ``Content-Length`` bodies; heads parsed and
written by :mod:`..http.wire`, as the client's pool does), because
at 10,000 invocations a second a framework's per-request cost would compete with the
client it is measuring for this machine's cores.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import sys
import threading
from collections import deque
from dataclasses import asdict
from time import monotonic
from typing import Any

from dask_lambda_handler import protocol, records, s3keys

from ..http import wire
from .model import ServerConfig, SimulatedCounters, sampler

_INVOKE_PREFIX = "/2015-03-31/functions/"
_INVOKE_SUFFIX = "/invocations"


class SimulatedLambda:
    """Lambda's invoke latency, environments, limits and durations for one function."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.model = model = config.model
        rng = random.Random(model.seed)
        self._latency = sampler(model.invoke_latency, rng)
        self._cold_start = sampler(model.cold_start, rng)
        self.stats = SimulatedCounters()
        self._idle = 0  # warm environments not running anything
        self._created: deque[float] = deque()  # creation times within the scaling window
        self._t0: float | None = None
        self._none = protocol.dumps_object(None)
        self._run_keys: dict[str, bytes] = {}
        self.account_concurrency = model.account_concurrency or config.concurrency

    def _encode(self, wire: dict, value: Any) -> records.InvokeResponse:
        """The handler's response for a task that returned ``value`` (inline), sans stats:
        signed with the run's key and bound to the attempt's result key, as the handler's.
        (Benchmarks of the invoke path alone send events without keys: their answers are
        signed for no run and no object.)"""
        from dask.sizeof import sizeof

        event = records.InvokeEvent.from_wire(wire)
        run = s3keys.run_of(event.job_key) if event.job_key else ""
        key = self._run_keys.get(run)
        if key is None:
            key = self._run_keys[run] = protocol.run_key(self.config.signing_key, run)
        name = protocol.type_name(value)
        frames = self._none if value is None else protocol.dumps_object(value)
        blob = protocol.encode({"kind": "result", "type": name}, frames, key,
                               s3keys.identity(event.bucket, event.result_key))
        return records.InvokeResponse(status=records.OK, nbytes=len(blob), size=int(sizeof(value)),
                                      type=name, result=base64.b64encode(blob).decode())

    async def invoke(self, event: dict) -> tuple[int, dict[str, str], bytes]:
        """One invoke request: (HTTP status, headers, body) as Lambda answers."""
        stats = self.stats
        stats.requests += 1
        half = self._latency() / 2
        if half > 0:
            await asyncio.sleep(half)  # the request reaches Lambda
        now = monotonic()
        if self._t0 is None:
            self._t0 = now
        cold = self._idle == 0
        refused = ("concurrency" if stats.in_flight >= self.account_concurrency
                   else "scaling" if cold and not self._may_create(now) else None)
        if refused is not None:
            stats.throttles[refused] += 1
            if half > 0:
                await asyncio.sleep(half)
            return 429, {"x-amzn-errortype": "TooManyRequestsException"}, json.dumps({
                "Type": "User", "Reason": f"simulated {refused} limit",
                "message": f"Rate Exceeded. (simulated: {refused} limit)"}).encode()
        number = self._admit(cold, now)
        run = self.model.duration(event)
        timeout = self.config.timeout
        busy = (self._cold_start() if cold else 0.0) + min(run, timeout)
        stats.busy_s += busy
        try:
            if busy > 0:
                await asyncio.sleep(busy)
        finally:
            stats.in_flight -= 1
            if run <= timeout:  # Lambda replaces an environment that timed out
                self._idle += 1
        if half > 0:
            await asyncio.sleep(half)  # the response travels back
        request_id = f"sim-{number}"
        if run > timeout:
            return 200, {"x-amz-function-error": "Unhandled", "x-amzn-requestid": request_id}, \
                json.dumps({"errorType": "Sandbox.Timedout", "errorMessage": (
                    f"{request_id} Task timed out after {timeout:.2f} seconds")}).encode()
        response = self._encode(event, None if self.model.result is None
                                else self.model.result(event))
        measured = records.RunStats(duration_s=run, cold=cold, request_id=request_id)
        return 200, {"x-amzn-requestid": request_id}, json.dumps(
            response.with_stats(measured).to_wire()).encode()

    def _may_create(self, now: float) -> bool:
        """Whether the scaling rate allows one more new environment now."""
        window = self._created
        while window and window[0] <= now - self.model.scaling_period:
            window.popleft()
        return len(window) < self.model.scaling_rate

    def _admit(self, cold: bool, now: float) -> int:
        """Start an invocation (in a new environment if ``cold``); returns its number."""
        stats = self.stats
        if cold:
            self._created.append(now)
            stats.environments += 1
            stats.cold_starts += 1
            stats.timeline.append((now - (self._t0 or now), stats.environments))
        else:
            self._idle -= 1
        stats.invocations += 1
        stats.in_flight += 1
        if stats.in_flight > stats.peak_in_flight:
            stats.peak_in_flight = stats.in_flight
        return stats.invocations

    def counters(self) -> dict:
        return asdict(self.stats)

    async def handle(self, method: str, path: str, body: bytes) -> tuple[int, dict, bytes]:
        if method == "POST" and path.startswith(_INVOKE_PREFIX) and path.endswith(_INVOKE_SUFFIX):
            name = path[len(_INVOKE_PREFIX):-len(_INVOKE_SUFFIX)]
            if name != self.config.function:
                return 404, {"x-amzn-errortype": "ResourceNotFoundException"}, json.dumps({
                    "Type": "User", "message": f"Function not found: {name}"}).encode()
            return await self.invoke(json.loads(body))
        if method == "GET" and path == "/_simulator/counters":
            return 200, {}, json.dumps(self.counters()).encode()
        return 404, {}, b'{"message": "not a simulated Lambda API path"}'


class _HttpProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive, one request at a time per connection."""

    def __init__(self, app: SimulatedLambda):
        self.app = app
        self.buffer = bytearray()
        self.busy = False
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None  # an invocation in flight runs on, as on Lambda

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._next()

    def _next(self) -> None:
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if self.busy or end < 0:
            return
        (method, path, _), headers = wire.parse_head(bytes(buffer[:end]))
        length = int(headers.get("content-length") or 0)
        if len(buffer) < end + 4 + length:
            return
        body = bytes(buffer[end + 4:end + 4 + length])
        del buffer[:end + 4 + length]
        self.busy = True
        task = asyncio.ensure_future(self.app.handle(method, path, body))
        task.add_done_callback(self._respond)

    def _respond(self, task: asyncio.Future) -> None:
        self.busy = False
        try:
            status, headers, body = task.result()
        except Exception as exc:  # a bug here must show, not hang the client
            status, headers = 500, {"x-amzn-errortype": "ServiceException"}
            body = json.dumps({"message": f"simulator failed: {exc!r}"}).encode()
        if self.transport is None:
            return
        self.transport.write(wire.message(
            f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}",
            {**headers, "content-type": "application/json"}, body))
        self._next()


async def serve(config: ServerConfig) -> None:
    """Serve until stdin closes."""
    import cloudpickle  # noqa: F401  (loaded the config; the model's functions need it)

    loop = asyncio.get_running_loop()
    app = SimulatedLambda(config)
    context = None
    if config.tls is not None:
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*config.tls)
    server = await loop.create_server(lambda: _HttpProtocol(app), "127.0.0.1", 0, backlog=4096,
                                      ssl=context)
    port = server.sockets[0].getsockname()[1]
    closed = loop.create_future()
    threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(
        closed.set_result, None)), daemon=True).start()
    print(f"PORT {port}", flush=True)
    await closed
    server.close()


def main() -> None:
    import cloudpickle

    config = cloudpickle.loads(base64.b64decode(sys.stdin.readline()))
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
