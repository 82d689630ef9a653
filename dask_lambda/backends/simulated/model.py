"""What the simulated Lambda models (`LambdaModel`), what it counts (`SimulatedCounters`) and
what its server is told (`ServerConfig`): shared by the backend and the server process
(:mod:`.server`), which imports nothing else of the client."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...errors import ConfigurationError
from ...scaling import SCALING_PERIOD, SCALING_RATE

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


def sampler(delay: Delay, rng: random.Random) -> Callable[[], float]:
    """A function drawing one delay (seconds) from ``delay``."""
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
    invocations, cold_starts
        Invocations that ran (not refused) and those that started a new environment, as
        the simulated Lambda counted them (the backend counts them too, as it sees them).
    """

    requests: int = 0
    throttles: dict[str, int] = field(default_factory=lambda: {"concurrency": 0, "scaling": 0})
    environments: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    busy_s: float = 0.0
    timeline: list[tuple[float, int]] = field(default_factory=list)
    invocations: int = 0
    cold_starts: int = 0


@dataclass(frozen=True)
class ServerConfig:
    """What the server simulates.

    Attributes
    ----------
    model
        How Lambda behaves.
    function
        The function name it answers for.
    signing_key
        The HMAC key results are signed with.
    timeout
        The function timeout, seconds.
    concurrency
        The account concurrency when ``model.account_concurrency`` is ``None``.
    tls
        ``(certificate file, key file)`` to serve HTTPS with, as Lambda does; ``None``: HTTP.
    """

    model: LambdaModel
    function: str
    signing_key: bytes
    timeout: float
    concurrency: int
    tls: tuple[str, str] | None = None
