"""Lambda's scaling rules, in one place, and the client-side pacing that follows them.

Lambda gives a function at most `SCALING_RATE` new execution environments every
`SCALING_PERIOD` seconds, up to the account's concurrency (1,000 per Region by
default, sometimes less on new accounts); past either it refuses invocations with
429 TooManyRequests ("Lambda scaling behavior",
https://docs.aws.amazon.com/lambda/latest/dg/scaling-behavior.html, and "Lambda quotas",
https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html).

`Governor` paces a client's invocations so that it

* **ramps up within the scaling rate**: an invocation that needs one more
  environment than the client has had in flight so far waits until fewer than
  `SCALING_RATE` were added in the last `SCALING_PERIOD` seconds (warm
  environments are reused, so the most invocations in flight so far is the
  client's estimate of the environments it has);
* **backs off on throttling without losing work**: after a 429 the number of
  invocations it lets run drops to the number Lambda then accepted (those still in
  flight), and grows back by one for every that-many successful invocations
  (additive increase), so a lower account limit makes tasks wait for a slot
  instead of failing after their bounded retries;
* **keeps ``concurrency`` functions busy** otherwise: while nothing is throttled
  and the ramp is done, an invocation starts as soon as a slot is free.
"""

from __future__ import annotations

import asyncio
from collections import deque
from time import monotonic

from . import limits

#: Lambda's scaling rate (the numbers are `dask_lambda.limits`').
SCALING_RATE = limits.SCALING_RATE
SCALING_PERIOD = limits.SCALING_PERIOD_S


class Governor:
    """How many invocations may run now: the scaling ramp and the limit learnt from 429s.

    Parameters
    ----------
    concurrency
        Most invocations in flight at once (the client's ``concurrency``).
    rate, period
        At most ``rate`` new environments in any ``period`` seconds.

    Examples
    --------
    >>> async def one_invocation(governor: Governor) -> None:
    ...     await governor.acquire()
    ...     try:
    ...         ...  # invoke
    ...     finally:
    ...         governor.release(throttled=False)
    """

    def __init__(self, concurrency: int, *, rate: int = SCALING_RATE,
                 period: float = SCALING_PERIOD):
        self.concurrency = concurrency
        self.rate = rate
        self.period = period
        #: Invocations allowed at once now (lowered by 429s, regrown by successes).
        self.limit = float(concurrency)
        self.in_flight = 0
        #: The most invocations in flight so far: the environments the client has warmed.
        self.environments = 0
        #: Times an invocation waited for the ramp or the learnt limit.
        self.waits = 0
        self._created: deque[float] = deque()  # when the estimate grew, within the window
        self._waiters: deque[asyncio.Future] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def set_concurrency(self, concurrency: int) -> None:
        """A new cap on invocations in flight (``cluster.scale``): invocations beyond a lower
        cap finish; waiting ones start as far as a higher cap allows."""
        if self.limit >= self.concurrency:  # not held down by 429s: follow the cap at once
            self.limit = float(concurrency)
        self.limit = min(self.limit, float(concurrency))
        self.concurrency = concurrency
        self._wake()

    def _may_start(self, now: float) -> bool:
        if self.in_flight >= self.limit:
            return False
        if self.in_flight < self.environments:  # a warm environment is free
            return True
        window = self._created
        while window and window[0] <= now - self.period:
            window.popleft()
        return len(window) < self.rate

    def _start(self, now: float) -> None:
        self.in_flight += 1
        if self.in_flight > self.environments:
            self.environments = self.in_flight
            self._created.append(now)

    async def acquire(self) -> None:
        """Wait until one more invocation may start, and count it as started."""
        now = monotonic()
        if not self._waiters and self._may_start(now):
            self._start(now)
            return
        self.waits += 1
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake_later(now)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # it was given a slot: give it back
                self.release(throttled=False, succeeded=False)
            else:
                self._waiters.remove(waiter)
            raise

    def release(self, *, throttled: bool, succeeded: bool = True) -> None:
        """One invocation ended: refused with 429 (``throttled``), or answered."""
        self.in_flight -= 1
        if throttled:
            self.limit = max(1.0, min(self.limit, float(self.in_flight)))
        elif succeeded and self.limit < self.concurrency:
            self.limit = min(float(self.concurrency), self.limit + 1.0 / self.limit)
        self._wake()

    def _wake(self) -> None:
        now = monotonic()
        waiters = self._waiters
        while waiters and self._may_start(now):
            waiter = waiters.popleft()
            if not waiter.done():
                self._start(now)
                waiter.set_result(None)
        self._wake_later(now)

    def _wake_later(self, now: float) -> None:
        """While invocations wait for the ramp only, wake them when the window moves on."""
        if self._timer is not None or not self._waiters or self.in_flight >= self.limit:
            return
        if not self._created:
            return
        delay = max(0.0, self._created[0] + self.period - now) + 1e-3
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._wake()
