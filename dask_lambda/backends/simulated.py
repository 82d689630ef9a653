"""The simulated backend: Lambda's timing and limits at scale, without running any task.

It stands in for Lambda so that what the *client* spends per task (scheduler,
gateway, job encoding, invokes) can be measured at a scale this machine could
never run for real: thousands of concurrent "functions" are coroutines that
``await asyncio.sleep``.  Per invocation it models

* the invoke round trip (`LambdaModel.invoke_latency`, half on the way in and half
  on the way back);
* execution environments: a warm idle one is reused, otherwise a new one is made
  and pays a cold start (`LambdaModel.cold_start`);
* the account's concurrency limit: an invocation arriving while that many run is
  refused with 429 (`LambdaThrottledError`, which the executor backs off from);
* the scaling rate: at most `LambdaModel.scaling_rate` new environments per
  `LambdaModel.scaling_period` seconds (sliding window), beyond which it is 429 too;
* the task's duration, a function of the invoke event (`LambdaModel.duration`), and
  the function timeout (`LambdaTimeoutError`).

The job is never decoded and nothing is unpickled: every invocation returns the
same signed inline result (the value ``None``, built once), in the shape
:func:`dask_lambda_handler.runner.handle` returns, unless `LambdaModel.result`
asks for a value per event.  S3 (for the client's bucket check, run marker and
clean-up) is moto's server, as for the local backend, or an endpoint given.

Examples
--------
>>> from dask_lambda import LambdaClient
>>> from dask_lambda.backends.simulated import LambdaModel, SimulatedBackend, constant
>>> backend = SimulatedBackend(LambdaModel(duration=constant(1.0)))
>>> client = LambdaClient("s3://sim/run", backend=backend, concurrency=1000)  # doctest: +SKIP
>>> client.gather(client.map(str, range(10_000), pure=False))  # doctest: +SKIP
>>> backend.counters()  # doctest: +SKIP
{'requests': 10000, 'invocations': 10000, 'cold_starts': 1000, 'throttles': 0, ...}
"""

from __future__ import annotations

import asyncio
import base64
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from time import monotonic
from typing import Any

from dask_lambda_handler import protocol

from ..errors import (
    ConfigurationError,
    HandlerCrashedError,
    LambdaThrottledError,
    LambdaTimeoutError,
)
from ..scaling import SCALING_PERIOD, SCALING_RATE
from .base import FunctionSettings
from .local_s3 import LocalS3Backend

#: A delay in seconds: a constant, a ``(low, high)`` uniform range, or a function of a
#: `random.Random` returning one (e.g. ``lambda rng: rng.lognormvariate(-3.2, 0.3)``).
Delay = float | tuple[float, float] | Callable[[random.Random], float]


def constant(seconds: float) -> Callable[[dict], float]:
    """A task duration that is the same for every event, e.g. ``constant(1.0)``."""

    def duration(event: dict) -> float:
        return seconds

    return duration


def _no_work(event: dict) -> float:
    return 0.0


@dataclass(frozen=True)
class LambdaModel:
    """How the simulated Lambda behaves (times in seconds).

    Attributes
    ----------
    invoke_latency
        Round trip of one invoke request, outside the function (AWS-FACTS.md: ~50 ms).
    cold_start
        Time a new execution environment takes before it runs its first task.
    duration
        The task's run time, a function of the invoke event (default: none).
    account_concurrency
        Invocations that may run at once before Lambda answers 429; ``None``: the
        client's ``concurrency``.
    scaling_rate, scaling_period
        At most ``scaling_rate`` new environments in any ``scaling_period`` seconds
        (Lambda: 1,000 per 10 s per function).
    result
        The value each task returns, as a function of the event; ``None``: every task
        returns ``None`` (one payload, signed once).
    seed
        Seed of the random delays.
    """

    invoke_latency: Delay = (0.030, 0.050)
    cold_start: Delay = (0.250, 0.400)
    duration: Callable[[dict], float] = _no_work
    account_concurrency: int | None = None
    scaling_rate: int = SCALING_RATE
    scaling_period: float = SCALING_PERIOD
    result: Callable[[dict], Any] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scaling_rate < 1 or self.scaling_period <= 0:
            raise ConfigurationError(
                f"scaling_rate={self.scaling_rate} and scaling_period={self.scaling_period} "
                "must be positive: e.g. LambdaModel(scaling_rate=1000, scaling_period=10.0)")
        if self.account_concurrency is not None and self.account_concurrency < 1:
            raise ConfigurationError(
                f"account_concurrency={self.account_concurrency} must be at least 1 (or None "
                "for the client's concurrency): e.g. LambdaModel(account_concurrency=1000)")


def _sampler(delay: Delay, rng: random.Random) -> Callable[[], float]:
    if callable(delay):
        return lambda: max(0.0, float(delay(rng)))
    if isinstance(delay, tuple):
        low, high = delay
        return lambda: rng.uniform(low, high)
    value = float(delay)
    return lambda: value


@dataclass
class SimulatedCounters:
    """What the simulated Lambda saw.

    Attributes
    ----------
    requests
        Invoke requests received (throttled ones included).
    throttles
        Requests refused with 429: ``concurrency`` (account limit) or ``scaling`` (rate).
    environments
        Execution environments created (each paid one cold start).
    in_flight, peak_in_flight
        Invocations running now, and the most at once.
    busy_s
        Seconds environments spent busy (cold starts and task durations), summed.
    timeline
        ``(seconds since the first request, environments created so far)`` at each
        creation, for checking the ramp-up.
    """

    requests: int = 0
    throttles: dict[str, int] = field(default_factory=lambda: {"concurrency": 0, "scaling": 0})
    environments: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    busy_s: float = 0.0
    timeline: list[tuple[float, int]] = field(default_factory=list)


class SimulatedBackend(LocalS3Backend):
    """Lambda's latencies, cold starts, concurrency limit and scaling rate; tasks only sleep.

    Parameters
    ----------
    model
        How Lambda behaves (default: `LambdaModel()`).
    settings
        The function's settings; ``None`` (usual): the cluster gives them.
    s3_endpoint
        Use this S3 endpoint instead of starting a private moto server.
    """

    name = "simulated"

    def __init__(self, model: LambdaModel | None = None, settings: FunctionSettings | None = None,
                 *, s3_endpoint: str | None = None):
        super().__init__(settings, s3_endpoint=s3_endpoint)
        self.model = model = model or LambdaModel()
        self.scaling_rate, self.scaling_period = model.scaling_rate, model.scaling_period
        rng = random.Random(model.seed)
        self._latency = _sampler(model.invoke_latency, rng)
        self._cold_start = _sampler(model.cold_start, rng)
        self.stats = SimulatedCounters()
        self._idle = 0  # warm environments not running anything
        self._created: deque[float] = deque()  # creation times within the scaling window
        self._t0: float | None = None
        self._result: tuple[str, int, int] = ("", 0, 0)
        self._closed = False

    def counters(self) -> dict[str, Any]:
        """Invocations, cold starts, throttles and peak concurrency, as a flat dict."""
        s = self.stats
        return {"requests": s.requests, "invocations": self.invocations,
                "cold_starts": self.cold_starts, "throttles": sum(s.throttles.values()),
                "throttles_concurrency": s.throttles["concurrency"],
                "throttles_scaling": s.throttles["scaling"],
                "environments": s.environments, "peak_in_flight": s.peak_in_flight,
                "busy_s": s.busy_s}

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        await self.start_s3()
        self._result = self._encode(None)

    async def stop(self) -> None:
        self._closed = True

    async def close(self) -> None:
        await self.stop()
        await self.close_s3()

    def _encode(self, value: Any) -> tuple[str, int, int]:
        """A signed inline result for ``value``: (base64 text, encoded bytes, sizeof)."""
        from dask.sizeof import sizeof

        frames = protocol.dumps_object(value)
        blob = protocol.encode({"kind": "result", "type": _type_name(value)}, frames,
                               self.settings.signing_key)
        return base64.b64encode(blob).decode(), len(blob), int(sizeof(value))

    # -- invoke -----------------------------------------------------------------------

    @property
    def account_concurrency(self) -> int:
        """Invocations Lambda runs at once before it answers 429."""
        return self.model.account_concurrency or self.settings.concurrency

    async def invoke(self, event: dict) -> dict:
        if self._closed:
            raise HandlerCrashedError("the simulated backend is closed")
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
            raise LambdaThrottledError(
                f"Rate Exceeded. (TooManyRequestsException, simulated: {refused} limit)")
        number = self._admit(cold, now)
        run = self.model.duration(event)
        timeout = self.settings.timeout
        busy = (self._cold_start() if cold else 0.0) + min(run, timeout)
        stats.busy_s += busy
        try:
            if busy > 0:
                await asyncio.sleep(busy)
        finally:
            stats.in_flight -= 1
            if run <= timeout:  # Lambda replaces an environment that timed out
                self._idle += 1
        if run > timeout:
            raise LambdaTimeoutError(
                f"Task timed out after {timeout:.2f} seconds (simulated). Raise the function "
                f"timeout, e.g. LambdaClient(..., timeout={int(min(900, timeout * 2))}), or "
                "split the task into smaller ones.")
        if half > 0:
            await asyncio.sleep(half)  # the response travels back
        return self._response(event, run, cold, number)

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
            self.cold_starts += 1
            stats.timeline.append((now - (self._t0 or now), stats.environments))
        else:
            self._idle -= 1
        self.invocations += 1
        stats.in_flight += 1
        if stats.in_flight > stats.peak_in_flight:
            stats.peak_in_flight = stats.in_flight
        return self.invocations

    def _response(self, event: dict, run: float, cold: bool, number: int) -> dict:
        """What the handler returns for a task that ran (see handler/runner.py)."""
        value = None if self.model.result is None else self.model.result(event)
        result, nbytes, size = self._result if self.model.result is None else self._encode(value)
        return {"status": "ok", "result": result, "result_key": None, "nbytes": nbytes,
                "size": size, "type": _type_name(value), "log": None,
                "stats": {"duration_s": run, "cold": cold, "request_id": f"sim-{number}"}}


def _type_name(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"
