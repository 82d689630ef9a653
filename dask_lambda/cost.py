"""What a client's Lambda work costs: invocations, billed GB-seconds, S3 requests, dollars."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from dask_lambda_handler.records import RunStats

from .errors import BudgetExceededError
from .pricing import US_EAST_1, Prices


@dataclass
class CostMeter:
    """Accumulates billable usage and turns it into a dollar estimate.

    Parameters
    ----------
    memory_mb
        Memory of the function (billing is memory x billed duration).
    budget
        Dollars; dispatching past it raises `BudgetExceededError`. ``None``: no limit.
    arch
        ``"x86_64"`` or ``"arm64"``.
    prices
        Unit prices (default: us-east-1).
    """

    memory_mb: int
    budget: float | None = None
    arch: str = "x86_64"
    prices: Prices = field(default_factory=lambda: US_EAST_1)
    invocations: int = 0
    billed_ms: int = 0
    s3_puts: int = 0
    s3_gets: int = 0
    in_flight: int = 0

    @property
    def gb_seconds(self) -> float:
        return self.billed_ms / 1000 * self.memory_mb / 1024

    @property
    def _gb_second_price(self) -> float:
        return self.prices.gb_second_arm if self.arch == "arm64" else self.prices.gb_second_x86

    def dollars(self) -> float:
        """The estimate so far."""
        p = self.prices
        return (self.invocations * p.request + self.gb_seconds * self._gb_second_price
                + self.s3_puts * p.s3_put + self.s3_gets * p.s3_get)

    def _per_invocation(self) -> float:
        """Expected cost of one more invocation: a request plus the mean billed duration."""
        mean_ms = self.billed_ms / self.invocations if self.invocations else 100.0
        return (self.prices.request + mean_ms / 1000 * self.memory_mb / 1024
                * self._gb_second_price)

    def reserve(self, what: str) -> None:
        """Account for an invocation about to start; refuse it if it would pass the budget."""
        if self.budget is not None:
            projected = self.dollars() + (self.in_flight + 1) * self._per_invocation()
            if projected > self.budget:
                raise BudgetExceededError(
                    f"not starting {what}: the estimated cost would pass the budget of "
                    f"${self.budget:.4f} (spent ${self.dollars():.4f} in {self.invocations} "
                    f"invocations, {self.in_flight} running). Raise it, e.g. "
                    f"LambdaClient(..., cost_budget={max(self.budget * 2, 0.01):.2f}), "
                    "or DASK_LAMBDA__COST_BUDGET.")
        self.in_flight += 1

    def settle(self, billed_ms: int, s3_puts: int = 0, s3_gets: int = 0) -> None:
        """Record a finished invocation (billed per 1 ms, as Lambda does)."""
        self.in_flight = max(0, self.in_flight - 1)
        self.invocations += 1
        self.billed_ms += max(1, int(billed_ms))
        self.s3_puts += s3_puts
        self.s3_gets += s3_gets

    def cancel(self) -> None:
        """An invocation that was reserved never ran (refused before it started)."""
        self.in_flight = max(0, self.in_flight - 1)

    def report(self) -> dict:
        """Usage and the dollar estimate, as a dict."""
        out = {k: v for k, v in asdict(self).items() if k not in ("prices", "in_flight")}
        out.update(gb_seconds=self.gb_seconds, dollars=self.dollars())
        return out


def billed_ms(seconds: float) -> int:
    """Lambda bills duration rounded up to the next millisecond."""
    return max(1, math.ceil(seconds * 1000))


def invocation_ms(stats: RunStats) -> int:
    """What Lambda billed for one invocation, in ms, from its ``stats``.

    The ``Billed Duration`` of the invocation's ``REPORT`` line (``billed_ms``) where the
    backend read it: since 2025-08-01 it includes a cold start's INIT phase for zip packages
    on managed runtimes too (AWS Compute Blog, "AWS Lambda standardizes billing for INIT
    phase"), which the handler cannot time. Else the handler's own duration.

    >>> invocation_ms(RunStats(duration_s=0.0101)), invocation_ms(
    ...     RunStats(duration_s=0.01, billed_ms=900))
    (11, 900)
    """
    if stats.billed_ms is not None:
        return max(1, int(stats.billed_ms))
    return billed_ms(stats.duration_s or 0.0)
